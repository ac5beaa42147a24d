"""From a YAML file to a Graph: read with positions, validate, resolve, compile.

`yamldoc` (YAML with FILE:LINE:COL marks and ${VAR} interpolation), `schemadoc`
(the JSON Schema, schema/gateway.schema.json), `validate` and its helpers
(`indentation`, `validpart`), `units` (durations and sizes), `compile` (the pure
compiler), `load` (the one stage with I/O: the file, the environment, secret
files). May import `core` and `adapters`.
"""
