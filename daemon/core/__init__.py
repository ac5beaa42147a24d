"""The compiled graph and the vocabulary every layer speaks.

`graph` (the immutable routing graph and its values), `windows` (time windows as
values), `failures` (the failure taxonomy: what went wrong at an upstream),
`replies` (a complete answer, a stream, usage), `problems` (a located config
error). Imports nothing of gatewayd outside this folder.
"""
