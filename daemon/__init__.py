"""gatewayd: the daemon — config loading, compiler, routing graph, router, HTTP server, reload, CLI."""
