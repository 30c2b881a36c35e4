"""OCPP protocol layers of the agent (1.6J under v16).

The network side: every module here uses the station only through ``agent.station_api.StationPort``
(commands by connector id, frozen ``ConnectorView`` / ``StationFacts`` snapshots, station events) and
never imports or touches a connector, its controller or the ``Station`` itself
(``tests/test_station_boundary.py`` checks it)."""
