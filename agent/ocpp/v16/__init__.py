"""OCPP 1.6J: RPC session over the mobilityhouse ``ocpp`` library (rpc) and the websocket link (link)."""
