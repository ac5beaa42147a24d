"""gatewayd: the daemon. The process lives here (server, reload, CLI); its layers live in
the folders below, each importing only from those beneath it (docs/architecture.md):
core < config < state < routing < observe < http, with `gatewayd.adapters` between
core and config."""
