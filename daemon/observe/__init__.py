"""What operators see: metrics, the access log, log lines and the event bus.

Nothing here decides anything; it records and publishes. May import `core`.
"""
