"""Delivering one request: the plan walk, retry decisions, strategies, deadlines.

`router` (the walk over a snapshot's plan), `retry` (what to do after a failure:
a pure table), `strategies` (ordering a tier), `deadlines` (one timer sweeping
every attempt's deadline), `snapshot` (a graph with the adapters built for it,
and the holder a reload swaps), `status` and `explain` (why a deployment is
usable or not). May import `core`, `state` and `adapters`.
"""
