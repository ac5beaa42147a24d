"""One codec per wire format: how a format's requests, answers, stream events and errors
read and write in the neutral vocabulary of `core`. A client's format and an upstream's are
the same codec seen from two sides: `openai` (chat completions and embeddings: a client's
requests decoded, answers, events and errors written; a `Chat` written for an OpenAI
upstream), `anthropic` (Messages: a `Chat` written for an Anthropic upstream, its answers,
events and errors read). Imports only `core`.
"""
