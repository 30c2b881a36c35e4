"""Carrying ``agent.station_api.StationPort`` between two processes over a Unix socket.

- ``agent.ipc.codec``: a typed JSON codec for every value that crosses the port (frozen dataclasses from an
  allow-list by name, enums by value, tuples, frozensets, dicts, optionals); one JSON object per line.
  Nothing received is executed: unknown type names and bad shapes raise ``CodecError``.
- ``agent.ipc.control_server``: ``ControlServer`` serves a ``Station`` (the control side) on the socket.
- ``agent.ipc.station_proxy``: ``StationProxy`` implements ``StationPort`` on the network side over it.
"""
