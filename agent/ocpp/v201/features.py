"""2.0.1 functional blocks beyond the service's own (boot, heartbeat, status, availability, reset, trigger,
unlock, data transfer: agent/ocpp/v201/handlers.py). Each is one class, listed here as "module:Class" and
imported when the service starts. A feature class:

    class Transactions:
        def __init__(self, service: OcppService) -> None: ...
        async def on_request_start_transaction(self, id_token, remote_start_id, **_) -> dict: ...
        async def after_request_start_transaction(self, ...) -> None: ...  # optional, once the answer is sent
        async def run(self) -> None: ...                                    # optional background task

Handlers take the library's snake_case keyword arguments and return a camelCase dict or an
``ocpp.v201.call_result`` dataclass. Handlers of two features must not share an action name. Each helper adds
ONE line for its class.
"""

from __future__ import annotations

from typing import Any

from agent.ocpp.v16.features import load_classes

FEATURES: tuple[str, ...] = (
    "agent.ocpp.v201.configuration:Provisioning",
    "agent.ocpp.v201.transactions:Transactions",
    "agent.ocpp.v201.external_limits:ExternalLimits",
    "agent.ocpp.v201.smart_charging:SmartCharging",
    "agent.ocpp.v201.security:Security",
    "agent.ocpp.v201.firmware:FirmwareManagement",
    "agent.ocpp.v201.customer_information:CustomerInformation",
    "agent.ocpp.v201.local_list:LocalAuthListManagement",
    "agent.ocpp.v201.reservation:Reservation",
    "agent.ocpp.v201.display:DisplayMessages",
    "agent.ocpp.v201.pricing:Pricing",
    "agent.ocpp.v201.monitoring:Monitoring",
)


def load_feature_classes() -> list[type[Any]]:
    return load_classes(FEATURES)
