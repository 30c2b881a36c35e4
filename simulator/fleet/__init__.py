"""`cpsim fleet`: many real agents (station, connectors, IEC 61851 machine, OCPP service, durable outbox) in one
process, over in-process device models (simulator/fleet/devices.py). See simulator/fleet/fleet.py."""
