"""The HTTP edge: the app and its path table, the guard, the API and ops handlers.

`connection` (aiohttp's low-level server answering parser errors in JSON),
`paths` (exact paths and prefixes), `app` (the request handler and shutdown's
last word), `runtime` (what serves across reloads), `guard` (app keys, admin
scope, browsers on other origins), `pipeline` (one request's way, whatever its format),
`api` (the OpenAI-compatible endpoints and their codec),
`catalog` (/v1/models), `ops` and `eventstream` (/metrics, /admin/*),
`errors` (the error shape), `jsonsyntax` (why a body is not JSON). May import
every layer below it: `core`, `formats`, `adapters`, `config`, `state`, `routing`, `observe`.
"""
