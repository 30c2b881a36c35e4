"""OCPP protocol layers of the agent (1.6J under v16)."""
