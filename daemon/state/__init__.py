"""Runtime state that outlives a graph, keyed by stable identities from `core.graph`.

Each kind of state is an interface and its local implementation, so a shared one
(Redis) can plug in without touching the router: health per deployment
identity is `store` (the interface) and `health` (this process's). Changed only
through its own methods. May import `core`.
"""
