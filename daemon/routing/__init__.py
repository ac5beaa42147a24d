"""Delivering one request: the plan walk, retry decisions, strategies, deadlines.

`router` (the walk over a snapshot's plan), `retry` (what to do after a failure:
a pure table), `strategies` (ordering a tier), `deadlines` (one timer sweeping
every attempt's deadline), `snapshot` (a graph with the adapters built for it,
and the holder a reload swaps), `admission` (the one check of whether a
deployment is usable now, and why not), `status` and `explain` (what operators
see of it). May import `core`, `state` and `adapters`.
"""
