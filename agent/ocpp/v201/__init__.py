"""OCPP 2.0.1 adapter."""
