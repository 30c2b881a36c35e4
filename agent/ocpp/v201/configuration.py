"""OCPP 2.0.1 provisioning of the device model (B05-B08): GetVariables, SetVariables, GetBaseReport
(ConfigurationInventory, FullInventory, SummaryInventory) and GetReport (componentVariable and
componentCriteria filters), the reports sent as NotifyReport messages in ``tbc`` / ``seqNo`` chunks.

Cost is bounded for any request: a Get/SetVariables request of more bytes than
DeviceDataCtrlr.BytesPerMessage.<Action> is refused with a CALLERROR FormatViolation before anything is
looked at, its entries beyond ItemsPerMessage.<Action> are Rejected (TooManyElements) unread (B06.FR.05,
TC_B_08_CS); a GetReport with more componentVariable entries than ItemsPerMessage.GetReport is refused
with a CALLERROR OccurrenceConstraintViolation; each NotifyReport carries
at most ItemsPerMessage.GetReport entries and BytesPerMessage.GetReport bytes; at most
``MAX_QUEUED_REPORTS`` reports wait to be sent (more are Rejected).

Each setting the CSMS changes takes effect through ``DeviceModel.on_change`` listeners (the heartbeat
timer, connection retries, transaction points, connector settings ...), at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ocpp.charge_point import snake_to_camel_case
from ocpp.exceptions import FormatViolationError, OccurrenceConstraintViolationError
from ocpp.v201 import call

from agent.authcache import LocalAuthList
from agent.ocpp.v201.device_model import ACTUAL, DeviceModel, Entry, GetResult, Mutability, SetResult
from agent.ocpp.v201.reports import send_report

if TYPE_CHECKING:
    from agent.ocpp.v201.service import OcppService

log = logging.getLogger("cpagent.ocpp.v201.configuration")

MAX_QUEUED_REPORTS = 2
SUMMARY_VARIABLES = frozenset({"AvailabilityState", "Available", "Problem"})
SUMMARY_COMPONENTS = frozenset({"ChargingStation", "EVSE", "Connector"})
CRITERIA = ("Active", "Available", "Enabled", "Problem")
_ENVELOPE_BYTES = 200  # a NotifyReport frame without its reportData entries: [2,"<id>","NotifyReport",{...}]


# -- pure parts ------------------------------------------------------------------------------------------


def request_size(payload: Mapping[str, Any]) -> int:
    """Bytes of a request payload as it came on the wire (camelCase JSON, compact)."""
    return len(json.dumps(snake_to_camel_case(dict(payload)), separators=(",", ":")).encode())


def check_request(dm: DeviceModel, action: str, payload: Mapping[str, Any]) -> None:
    """CALLERROR FormatViolation for a request larger than BytesPerMessage.<action>."""
    max_bytes = dm.integer("DeviceDataCtrlr", "BytesPerMessage", instance=action)
    size = request_size(payload)
    if size > max_bytes:
        raise FormatViolationError(description=f"{size} bytes, BytesPerMessage{action} is {max_bytes}")


def _status_info(reason: str | None, info: str | None) -> dict[str, str] | None:
    if reason is None:
        return None
    out = {"reasonCode": reason}
    if info:
        out["additionalInfo"] = info[:500]
    return out


def _address(component: Mapping[str, Any], variable: Mapping[str, Any]) -> dict[str, Any]:
    evse = component.get("evse") or {}
    return {
        "component": str(component.get("name", "")),
        "variable": str(variable.get("name", "")),
        "component_instance": component.get("instance"),
        "evse": evse.get("id"),
        "connector": evse.get("connector_id"),
        "instance": variable.get("instance"),
    }


def _too_many(action: str, limit: int) -> str:
    return f"more than ItemsPerMessage{action}={limit} entries"


def get_variables(dm: DeviceModel, data: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """getVariableResult for each getVariableData entry (snake_case in, camelCase out). Entries beyond
    ItemsPerMessage.GetVariables are Rejected with TooManyElements, unread (B06.FR.05, TC_B_08_CS)."""
    limit = dm.integer("DeviceDataCtrlr", "ItemsPerMessage", instance="GetVariables")
    results: list[dict[str, Any]] = []
    for index, item in enumerate(data):
        component, variable = item["component"], item["variable"]
        attribute = item.get("attribute_type") or ACTUAL
        if index >= limit:
            got = GetResult("Rejected", None, "TooManyElements", _too_many("GetVariables", limit))
        else:
            got = dm.get(attribute=attribute, **_address(component, variable))
        result: dict[str, Any] = {
            "attributeStatus": got.status,
            "attributeType": attribute,
            "component": snake_to_camel_case(dict(component)),
            "variable": snake_to_camel_case(dict(variable)),
        }
        if got.value is not None:
            result["attributeValue"] = got.value
        info = _status_info(got.reason, got.info)
        if info is not None:
            result["attributeStatusInfo"] = info
        results.append(result)
    return results


def set_variables(dm: DeviceModel, data: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """setVariableResult for each setVariableData entry, applied in order; entries beyond
    ItemsPerMessage.SetVariables are Rejected with TooManyElements, not applied."""
    limit = dm.integer("DeviceDataCtrlr", "ItemsPerMessage", instance="SetVariables")
    results: list[dict[str, Any]] = []
    for index, item in enumerate(data):
        component, variable = item["component"], item["variable"]
        attribute = item.get("attribute_type") or ACTUAL
        if index >= limit:
            done = SetResult("Rejected", "TooManyElements", _too_many("SetVariables", limit))
        else:
            done = dm.set(value=str(item["attribute_value"]), attribute=attribute, **_address(component, variable))
        result: dict[str, Any] = {
            "attributeStatus": done.status,
            "attributeType": attribute,
            "component": snake_to_camel_case(dict(component)),
            "variable": snake_to_camel_case(dict(variable)),
        }
        info = _status_info(done.reason, done.info)
        if info is not None:
            result["attributeStatusInfo"] = info
        results.append(result)
    return results


def base_entries(dm: DeviceModel, report_base: str) -> list[Entry]:
    entries = list(dm.entries())
    if report_base == "ConfigurationInventory":
        return [e for e in entries if e.spec.mutability is not Mutability.READ_ONLY]
    if report_base == "SummaryInventory":
        return [e for e in entries if e.spec.component in SUMMARY_COMPONENTS and e.spec.name in SUMMARY_VARIABLES]
    return entries  # FullInventory


def _matches(entry: Entry, selector: Mapping[str, Any]) -> bool:
    component = selector.get("component") or {}
    if str(component.get("name", "")).lower() != entry.spec.component.lower():
        return False
    if component.get("instance"):
        return False  # no component of this station has instances other than EVSE / connector ids
    evse = component.get("evse")
    if evse is not None:
        if entry.evse != evse.get("id"):
            return False
        if evse.get("connector_id") is not None and entry.connector != evse.get("connector_id"):
            return False
    variable = selector.get("variable")
    if variable is None:
        return True
    if str(variable.get("name", "")).lower() != entry.spec.name.lower():
        return False
    instance = variable.get("instance")
    return instance is None or str(instance).lower() == (entry.spec.instance or "").lower()


def _instance(entry: Entry) -> tuple[str, int | None, int | None]:
    return entry.spec.component, entry.evse, entry.connector


def select_entries(
    dm: DeviceModel,
    component_variable: Sequence[Mapping[str, Any]] | None,
    component_criteria: Sequence[str] | None,
) -> list[Entry]:
    """GetReport: the entries of the components matching every criterion (a component matches "Enabled"
    when its Enabled variable is true, likewise Active / Available / Problem), narrowed to the
    componentVariable selectors if any."""
    entries = list(dm.entries())
    if component_criteria:
        flags: dict[tuple[str, int | None, int | None], set[str]] = {}
        for entry in entries:
            if entry.spec.name in CRITERIA and entry.spec.instance is None:
                if dm.attribute_value(entry) == "true":
                    flags.setdefault(_instance(entry), set()).add(entry.spec.name)
        wanted = set(component_criteria)
        entries = [e for e in entries if wanted & flags.get(_instance(e), set())]
    if component_variable:
        entries = [e for e in entries if any(_matches(e, s) for s in component_variable)]
    return entries


def report_item(dm: DeviceModel, entry: Entry, *, characteristics: bool = True) -> dict[str, Any]:
    """One ReportDataType (camelCase) for an entry. Write-only values are never included."""
    spec = entry.spec
    component: dict[str, Any] = {"name": spec.component}
    if entry.evse is not None:
        component["evse"] = {"id": entry.evse}
        if entry.connector is not None:
            component["evse"]["connectorId"] = entry.connector
    variable: dict[str, Any] = {"name": spec.name}
    if spec.instance:
        variable["instance"] = spec.instance
    limit = dm.integer("DeviceDataCtrlr", "ReportingValueSize")
    attributes: list[dict[str, Any]] = []
    for attribute in spec.attributes:
        mutability = spec.mutability.value if attribute == ACTUAL else Mutability.READ_ONLY.value
        item: dict[str, Any] = {
            "type": attribute,
            "mutability": mutability,
            "persistent": spec.source is None,
            "constant": spec.source is None and spec.mutability is Mutability.READ_ONLY,
        }
        if not spec.secret:
            item["value"] = (dm.attribute_value(entry, attribute) or "")[:limit]
        attributes.append(item)
    out: dict[str, Any] = {"component": component, "variable": variable, "variableAttribute": attributes}
    if characteristics:
        chars: dict[str, Any] = {"dataType": spec.type.value, "supportsMonitoring": spec.monitorable}
        if spec.unit:
            chars["unit"] = spec.unit
        if spec.min is not None:
            chars["minLimit"] = spec.min
        max_limit = dm.max_limit(entry)
        if max_limit is not None:
            chars["maxLimit"] = max_limit
        values = dm.values_list(spec)
        if values is not None:
            chars["valuesList"] = ",".join(values)[:1000]
        out["variableCharacteristics"] = chars
    return out


def chunks(items: Sequence[dict[str, Any]], max_items: int, max_bytes: int) -> list[list[dict[str, Any]]]:
    """Split report entries into NotifyReport bodies of at most ``max_items`` entries and about
    ``max_bytes`` bytes (an entry larger than that alone still goes, alone)."""
    out: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = _ENVELOPE_BYTES
    for item in items:
        item_size = len(json.dumps(item, separators=(",", ":")).encode()) + 1
        if current and (len(current) >= max_items or size + item_size > max_bytes):
            out.append(current)
            current, size = [], _ENVELOPE_BYTES
        current.append(item)
        size += item_size
    if current:
        out.append(current)
    return out


def notify_reports(
    dm: DeviceModel, request_id: int, entries: Iterable[Entry], generated_at: str, *, summary: bool = False
) -> list[call.NotifyReport]:
    items = [report_item(dm, e, characteristics=not summary) for e in entries]
    parts = chunks(
        items,
        dm.integer("DeviceDataCtrlr", "ItemsPerMessage", instance="GetReport"),
        dm.integer("DeviceDataCtrlr", "BytesPerMessage", instance="GetReport"),
    )
    return [
        call.NotifyReport(
            request_id=request_id, generated_at=generated_at, seq_no=seq, tbc=seq < len(parts) - 1, report_data=part
        )
        for seq, part in enumerate(parts)
    ]


# -- cpctl config get / set ----------------------------------------------------------------------------


def _diag_entry(dm: DeviceModel, key: str) -> Entry | str:
    """``Component[@evse[.connector]]/Variable[.instance]`` (as ``DeviceModel.export`` names them)."""
    component, sep, variable = key.partition("/")
    if not sep or not component or not variable:
        return "UnknownComponent"
    name, _, where = component.partition("@")
    evse_text, _, connector_text = where.partition(".")
    try:
        evse = int(evse_text) if evse_text else None
        connector = int(connector_text) if connector_text else None
    except ValueError:
        return "UnknownComponent"
    return dm.resolve(name, variable, evse=evse, connector=connector)


def diag_config_get(dm: DeviceModel, keys: Sequence[str] | None) -> dict[str, Any]:
    """cpctl config get: every readable variable, or the ones named; a write-only one (BasicAuthPassword) as
    ``secret`` and whether it is ``set``, never its value."""
    if not keys:
        rows = [{"key": key, "readonly": _readonly(dm, key), "value": value} for key, value in dm.export().items()]
        rows += [_secret_row(dm, entry) for entry in dm.entries() if entry.spec.secret]
        return {"configurationKey": rows, "unknownKey": []}
    known: list[dict[str, Any]] = []
    unknown: list[str] = []
    for key in keys[:100]:
        entry = _diag_entry(dm, key)
        if not isinstance(entry, Entry):
            unknown.append(key)
            continue
        if entry.spec.secret:
            known.append(_secret_row(dm, entry))
            continue
        row: dict[str, Any] = {"key": entry.storage_key, "readonly": entry.spec.mutability is Mutability.READ_ONLY}
        got = dm.get_entry(entry)
        if got.value is not None:
            row["value"] = got.value
        known.append(row)
    return {"configurationKey": known, "unknownKey": unknown}


def _secret_row(dm: DeviceModel, entry: Entry) -> dict[str, Any]:
    return {"key": entry.storage_key, "readonly": False, "secret": True, "set": bool(dm.attribute_value(entry))}


def _readonly(dm: DeviceModel, key: str) -> bool:
    entry = _diag_entry(dm, key)
    return not isinstance(entry, Entry) or entry.spec.mutability is Mutability.READ_ONLY


def diag_config_set(dm: DeviceModel, key: str, value: str) -> str:
    """cpctl config set: validated as SetVariables; a local technician may do what the CSMS may."""
    entry = _diag_entry(dm, key)
    if not isinstance(entry, Entry):
        return entry
    result = dm.set_entry(entry, value, source="local")
    if result.status == "Rejected":
        return f"Rejected ({result.reason}: {result.info})" if result.info else f"Rejected ({result.reason})"
    return result.status


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- the feature -----------------------------------------------------------------------------------------


class Provisioning:
    """Get/SetVariables, GetBaseReport, GetReport over the service's DeviceModel."""

    def __init__(self, service: OcppService) -> None:
        from agent.ocpp.v201.diagnostics import OcppDiagnosticsAdapter

        self.service = service
        # cpctl (the diagnostic socket, on this network side) reads and sets the device model through this.
        service.station.attach_network_diagnostics(OcppDiagnosticsAdapter(service))
        # What [ocpp] says about security is what the device model reports until the CSMS changes it.
        ocpp = service.config.ocpp
        try:
            service.variables.preset("SecurityCtrlr", "SecurityProfile", str(ocpp.security_profile))
            if ocpp.password:
                service.variables.preset("SecurityCtrlr", "BasicAuthPassword", ocpp.password)
        except ValueError as exc:  # e.g. a password shorter than the 16 characters 2.0.1 asks for
            log.warning("[ocpp] setting not taken into the device model: %s", exc)  # names no value of a string
        # Facts other parts keep: the Local Authorization List's size, the installed CA certificates.
        local_list = LocalAuthList(service.db, service.clock)
        service.variables.bind("local_list_entries", lambda: len(local_list))
        service.variables.bind("certificate_entries", self._certificate_entries)
        # The time as the CSMS sees it (the local clock + the offset learnt from its currentTime); the network
        # profile in use (slot 1, the [ocpp] endpoint, unless the service keeps others).
        service.variables.bind("date_time", lambda: _iso(service.wall()))
        service.variables.bind("active_network_profile", lambda: getattr(service, "active_network_profile", 1))
        # The connectors follow EVConnectionTimeOut / StopTxOnEVSideDisconnect / UnlockOnEVSideDisconnect from
        # the start (presets and stored values), and on every change (DeviceModel does that).
        try:
            service.variables.apply_connector_settings()
        except Exception as exc:  # the control side not there (yet): its connectors keep their settings
            log.warning("connector settings not applied: %s", exc)
        self._reports: dict[int, tuple[list[Entry], bool]] = {}  # accepted, waiting for its after-hook
        self._in_flight: set[int] = set()  # being sent
        self._sending = asyncio.Lock()

    def _certificate_entries(self) -> int:
        from agent.certificates import CertificateStore

        return CertificateStore(self.service.config.state_dir / "certificates").count()

    @property
    def dm(self) -> DeviceModel:
        return self.service.variables

    async def on_get_variables(self, get_variable_data: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        check_request(self.dm, "GetVariables", {"get_variable_data": get_variable_data, **extra})
        return {"getVariableResult": get_variables(self.dm, get_variable_data)}

    async def on_set_variables(self, set_variable_data: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        check_request(self.dm, "SetVariables", {"set_variable_data": set_variable_data, **extra})
        return {"setVariableResult": set_variables(self.dm, set_variable_data)}

    async def on_get_base_report(self, request_id: int, report_base: str, **_: Any) -> dict[str, Any]:
        entries = base_entries(self.dm, report_base)
        return self._accept(request_id, entries, summary=report_base == "SummaryInventory")

    async def after_get_base_report(self, request_id: int, **_: Any) -> None:
        await self._send_report(request_id)

    async def on_get_report(
        self,
        request_id: int,
        component_variable: list[dict[str, Any]] | None = None,
        component_criteria: list[str] | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        if component_variable:
            limit = self.dm.integer("DeviceDataCtrlr", "ItemsPerMessage", instance="GetReport")
            if len(component_variable) > limit:
                raise OccurrenceConstraintViolationError(
                    description=f"{len(component_variable)} componentVariable entries, ItemsPerMessageGetReport "
                    f"is {limit}"
                )
        entries = select_entries(self.dm, component_variable, component_criteria)
        if not entries:
            return {"status": "EmptyResultSet"}
        return self._accept(request_id, entries, summary=False)

    async def after_get_report(self, request_id: int, **_: Any) -> None:
        await self._send_report(request_id)

    @staticmethod
    def _payload(message: call.NotifyReport) -> dict[str, Any]:
        # The report items are camelCase already: sent as they are, not through the dataclass and back.
        return {"requestId": message.request_id, "generatedAt": message.generated_at, "seqNo": message.seq_no,
                "tbc": message.tbc, "reportData": message.report_data}

    def _accept(self, request_id: int, entries: list[Entry], *, summary: bool) -> dict[str, Any]:
        if request_id in self._reports or request_id in self._in_flight:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "DuplicateRequestId"}}
        if len(self._reports) + len(self._in_flight) >= MAX_QUEUED_REPORTS:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "OutOfMemory",
                                                         "additionalInfo": "a report is still being sent"}}
        self._reports[request_id] = (entries, summary)
        return {"status": "Accepted"}

    async def _send_report(self, request_id: int) -> None:
        pending = self._reports.pop(request_id, None)
        if pending is None:
            return
        self._in_flight.add(request_id)
        try:
            async with self._sending:
                entries, summary = pending
                messages = notify_reports(self.dm, request_id, entries, _iso(self.service.wall()), summary=summary)
                # A cut report: dropped with one warning, or queued with QueueAllMessages (agent/ocpp/v201/
                # reports.py, as the other reports). B02 (TC_B_02_CS): while the boot is Pending the CSMS may
                # ask for reports, and the station sends them (handlers are never reached while Rejected).
                if await send_report(self.service, "NotifyReport", request_id,
                                     [self._payload(m) for m in messages], while_pending=not self.service.accepted):
                    log.info("report %d sent: %d entries in %d NotifyReport", request_id, len(entries), len(messages))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # building the report failed: logged once, the feature goes on
            log.warning("report %d not built: %s", request_id, exc)
        finally:
            self._in_flight.discard(request_id)


__all__ = [
    "CRITERIA", "MAX_QUEUED_REPORTS", "Provisioning", "base_entries", "check_request", "chunks", "diag_config_get",
    "diag_config_set",
    "get_variables", "notify_reports", "report_item", "request_size", "select_entries", "set_variables",
]
