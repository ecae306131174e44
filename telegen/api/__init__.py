"""The self-telemetry REST API (Klein): probes, status, config, admin, debug, OpenAPI."""
