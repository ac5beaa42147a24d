"""One codec per wire format: how a format's requests, answers, stream events and errors read and write in
the neutral vocabulary of `core`. Imports only `core`."""
