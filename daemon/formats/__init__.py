"""One codec per wire format: how a format's requests, answers, stream events and errors
read and write in the neutral vocabulary of `core`. A client's format and an upstream's are
the same codec seen from two sides: `openai` (chat completions and embeddings) and
`anthropic` (Messages) each decode a client's request into a `Chat` and write answers,
stream events and errors for that client, and write a `Chat` for an upstream of their format
and read its answers, events and errors back. Imports only `core`.
"""
