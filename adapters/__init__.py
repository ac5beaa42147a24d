"""gatewayd provider adapters: one small interface, one module per provider type."""
