"""The compiled graph and the vocabulary every layer speaks.

`graph` (the immutable routing graph and its values), `windows` (time windows as
values), `failures` (the failure taxonomy: what went wrong at an upstream, and the kinds
of error a client is told of), `exchange` (a client's request: operation, wire format,
stream or not, body), `conversation` (a chat request in neutral terms), `replies` (an
answer, embeddings, stream events, usage), `problems` (a located config error). Imports
nothing of gatewayd outside this folder.
"""
