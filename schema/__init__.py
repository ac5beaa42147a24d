"""The JSON Schema of gateway.yaml (gateway.schema.json), the config language's single source of truth."""
