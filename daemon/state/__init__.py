"""Runtime state that outlives a graph: health per deployment identity.

Mutable, keyed by stable identities from `core.graph`, and changed only through
its own methods. May import `core`.
"""
