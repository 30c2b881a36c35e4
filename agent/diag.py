"""The local diagnostic server behind `cpctl`: a Unix socket (mode 0660, group `cpagent` where that
group exists) speaking versioned JSON lines. One request per line, one reply per line:

    -> {"v": 1, "cmd": "status"}
    <- {"v": 1, "ok": true, "data": {...}}
    <- {"v": 1, "ok": false, "error": "...", "problem": "usage" | "refused" | "internal"}

Reading is open to anyone who can open the socket. Commands that actuate hardware (relay, pwm) are
refused unless the connector is in maintenance mode and no EV is connected.

This is the network side: it sees the station only through ``agent.station_api.StationPort`` (frozen
views, commands, the shared event log and session records), never a connector or its controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent import __version__
from agent.faults import FAULTS
from agent.redact import mask
from agent.station_api import ConnectorView, NetworkDiagnostics, StationPort
from hal.types import Fault

PROTOCOL_VERSION = 1
log = logging.getLogger("cpagent.diag")


class DiagRefused(Exception):
    """The command is understood but not allowed now (the reply says why)."""


class DiagUsage(Exception):
    """The request is malformed."""


OcppDiagnostics = NetworkDiagnostics  # what the OCPP service offers to the diagnostic server


class DiagServer:
    def __init__(self, station: StationPort, path: Path, ocpp: OcppDiagnostics | None = None) -> None:
        self.station = station
        self.path = path
        self._ocpp = ocpp
        self._server: asyncio.AbstractServer | None = None
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "status": self._status,
            "faults": self._faults,
            "events": self._events,
            "meter": self._meter,
            "sessions": self._sessions,
            "config_get": self._config_get,
            "config_set": self._config_set,
            "outbox": self._outbox,
            "selftest": self._selftest,
            "maintenance": self._maintenance,
            "relay": self._relay,
            "pwm": self._pwm,
            "trigger": self._trigger,
            "clear": self._clear,
        }

    @property
    def ocpp(self) -> OcppDiagnostics | None:
        # The OCPP service may come up after the diagnostic server: look it up on every request.
        return self._ocpp or self.station.network_diagnostics()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o117)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=1 << 20)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)
        try:
            os.chown(self.path, -1, grp.getgrnam("cpagent").gr_gid)
        except (KeyError, PermissionError):
            pass  # no such group here (development machine): owner-only access remains

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                reply = await self.handle_line(line)
                if reply.get("stream"):
                    await self._stream_events(reply["stream"], writer)
                    break
                writer.write(json.dumps(reply, default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def handle_line(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise DiagUsage("a request is a JSON object")
            if request.get("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
                raise DiagUsage(f"protocol version {request.get('v')} not supported (server speaks {PROTOCOL_VERSION})")
            cmd = request.get("cmd")
            handler = self._handlers.get(str(cmd))
            if handler is None:
                raise DiagUsage(f"unknown command {cmd!r}")
            if cmd == "events" and request.get("follow"):
                return {"stream": request}
            data = await handler(request)
            return {"v": PROTOCOL_VERSION, "ok": True, "data": data}
        except DiagUsage as exc:
            return {"v": PROTOCOL_VERSION, "ok": False, "problem": "usage", "error": str(exc)}
        except DiagRefused as exc:
            return {"v": PROTOCOL_VERSION, "ok": False, "problem": "refused", "error": str(exc)}
        except json.JSONDecodeError:
            return {"v": PROTOCOL_VERSION, "ok": False, "problem": "usage", "error": "not JSON"}
        except Exception as exc:
            log.exception("diagnostic command failed")
            return {"v": PROTOCOL_VERSION, "ok": False, "problem": "internal", "error": f"{type(exc).__name__}: {exc}"}

    # ----------------------------------------------------------------- helpers
    def _connector(self, request: dict[str, Any]) -> ConnectorView:
        try:
            n = int(request["connector"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DiagUsage("missing or bad 'connector'") from exc
        ids = self.station.connector_ids()
        if n not in ids:
            raise DiagUsage(f"no connector {n} (this station has 1..{len(ids)})")
        return self.station.connector_view(n)

    def _connector_status(self, c: ConnectorView) -> dict[str, Any]:
        sample = c.last_sample
        session = c.session
        # The CSMS's id arrives after the session began: read it from the store, not the in-memory copy.
        stored = self.station.shared.sessions.get(session.ref) if session else None
        return {
            "connector": c.id,
            "status": c.status.value,
            "cp_state": c.cp_state.value if c.cp_state else None,
            "charge_state": c.charge_state,
            "offered_a": c.offered_current_a,
            "limit_a": c.effective_limit_a,
            "binding_limit": c.binding_limit,
            "site_limit_a": c.site_limit_a,
            "duty": c.duty_percent,
            "relay_commanded": c.relay_commanded_closed,
            "relay_feedback": c.relay_feedback_closed,
            "power_w": sample.power_w if sample else None,
            "energy_wh": sample.energy_import_wh if sample else None,
            "session": session.ref if session else None,
            "id_tag": mask(session.id_tag if session else None),
            "faults": sorted(f.value for f in c.faults),
            "energy_holds": sorted(h.value for h in c.energy_holds),
            "maintenance": c.maintenance,
            "transaction_id": stored.transaction_id if stored else None,
            "session_energy_wh": round(c.session_energy_wh, 1),
            "display_extra": dict(c.display_extra),  # e.g. price / running or final cost from the CSMS
        }

    def _fault_list(self) -> list[dict[str, Any]]:
        out = []
        facts = self.station.facts()
        for c in self.station.connector_views().values():
            for fault in sorted(c.faults):
                fi = FAULTS[fault]
                out.append({"connector": c.id, "fault": fault.value, "error_code": fi.ocpp_error_code,
                            "explanation": fi.explanation, "remedy": fi.remedy})
        for fault in sorted(facts.reader_faults):
            fi = FAULTS[fault]
            out.append({"connector": 0, "fault": fault.value, "error_code": fi.ocpp_error_code,
                        "explanation": fi.explanation, "remedy": fi.remedy})
        for task in facts.tasks:
            if task.gave_up:
                out.append({"connector": 0, "fault": "task-down", "error_code": "InternalError",
                            "explanation": f"task {task.name} crashed repeatedly and was left down: {task.last_error}",
                            "remedy": "See `cpctl events`; restart the service (systemctl restart cpagent)."})
        return out

    # ----------------------------------------------------------------- read-only commands
    async def _status(self, request: dict[str, Any]) -> dict[str, Any]:
        facts = self.station.facts()
        station: dict[str, Any] = {
            "id": facts.charge_point_id,
            "version": __version__,
            "uptime_s": round(time.time() - facts.started_wall, 1),
            "tasks": {t.name: ("down" if t.gave_up else "alive" if t.alive else "restarting")
                      for t in facts.tasks},
            "faults": len(self._fault_list()),
        }
        station["ocpp"] = self.ocpp.diag_status() if self.ocpp else {"link": "not configured"}
        views = self.station.connector_views().values()
        return {"station": station, "connectors": [self._connector_status(c) for c in views]}

    async def _faults(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        return self._fault_list()

    async def _events(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        since = request.get("since")
        limit = int(request.get("limit", 200))
        return [e.as_dict() for e in self.station.shared.eventlog.query(
            since_wall=float(since) if since is not None else None, limit=limit)]

    async def _stream_events(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        since = request.get("since")
        eventlog = self.station.shared.eventlog
        events = eventlog.query(since_wall=float(since) if since is not None else None, limit=50)
        last = events[-1].id if events else max(0, self._last_event_id())
        for e in events:
            writer.write(json.dumps(e.as_dict()).encode() + b"\n")
        await writer.drain()
        while True:
            await asyncio.sleep(0.5)
            for e in eventlog.query(after_id=last, limit=500):
                last = e.id
                writer.write(json.dumps(e.as_dict()).encode() + b"\n")
            await writer.drain()

    def _last_event_id(self) -> int:
        events = self.station.shared.eventlog.query(limit=1)
        return events[-1].id if events else 0

    async def _meter(self, request: dict[str, Any]) -> dict[str, Any]:
        c = self._connector(request)
        if not c.has_meter:
            raise DiagRefused(f"connector {c.id} has no meter configured")
        s = c.meter_latest
        if s is None:
            return {"connector": c.id, "fresh": False, "explanation": "the meter is silent: no fresh value"}
        return {"connector": c.id, "fresh": True, "timestamp": s.timestamp, "energy_import_wh": s.energy_import_wh,
                "power_w": s.power_w, "voltage_v": list(s.voltage_v), "current_a": list(s.current_a),
                "signed": s.signed_data is not None}

    async def _sessions(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        last = int(request.get("last", 10))
        ocpp = self.ocpp
        return [{"ref": s.ref, "connector": s.connector_id, "id_tag": mask(s.id_tag), "start": s.start_wall,
                 "stop": s.stop_wall, "energy_wh": round(s.energy_wh, 1), "reason": s.stop_reason,
                 "transaction_id": s.transaction_id,
                 # the cost the CSMS gave (or the station computed offline), kept with the transaction
                 "cost": ocpp.diag_session_cost(str(s.transaction_id)) if ocpp and s.transaction_id else None}
                for s in self.station.shared.sessions.recent(last)]

    def _need_ocpp(self) -> OcppDiagnostics:
        if self.ocpp is None:
            raise DiagRefused("OCPP is not configured on this station ([ocpp] endpoint)")
        return self.ocpp

    async def _config_get(self, request: dict[str, Any]) -> dict[str, Any]:
        keys = request.get("keys")
        return self._need_ocpp().diag_config_get(list(keys) if keys else None)

    async def _config_set(self, request: dict[str, Any]) -> dict[str, Any]:
        key, value = request.get("key"), request.get("value")
        if not isinstance(key, str) or not isinstance(value, str):
            raise DiagUsage("config_set needs string 'key' and 'value'")
        result = self._need_ocpp().diag_config_set(key, value)
        if result not in ("Accepted", "RebootRequired"):  # 1.6 Rejected/NotSupported; 2.0.1 also Unknown*
            raise DiagRefused(f"{key}: {result}")
        return {"key": key, "result": result}

    async def _outbox(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._need_ocpp().diag_outbox(int(request.get("limit", 20)))

    async def _selftest(self, request: dict[str, Any]) -> dict[str, Any]:
        checks: list[dict[str, Any]] = []
        for c in self.station.connector_views().values():
            board_ok = c.cp_state is not None
            checks.append({"check": f"connector {c.id} pilot board", "ok": board_ok,
                           "detail": f"CP state {c.cp_state}" if board_ok else "no answer from the board"})
            if c.has_meter:
                s = c.meter_latest
                checks.append({"check": f"connector {c.id} meter", "ok": s is not None,
                               "detail": f"{s.energy_import_wh:.0f} Wh" if s else "no fresh value"})
            if c.ev_connected:
                checks.append({"check": f"connector {c.id} relay weld", "ok": True, "skipped": True,
                               "detail": "EV connected: weld check skipped"})
            else:
                fb = c.relay_feedback_closed
                checks.append({"check": f"connector {c.id} relay weld", "ok": fb is not True,
                               "detail": "contactor open as commanded" if fb is False
                               else "contactor reports CLOSED while commanded open" if fb else "no feedback"})
        facts = self.station.facts()
        if facts.has_reader:
            ok = Fault.READER_SILENT not in facts.reader_faults  # reader_faults: every connector-0 fault
            checks.append({"check": "card reader", "ok": ok, "detail": "ok" if ok else "reader silent"})
        return {"ok": all(ch["ok"] for ch in checks), "checks": checks}

    # ----------------------------------------------------------------- actuating commands
    async def _maintenance(self, request: dict[str, Any]) -> dict[str, Any]:
        c = self._connector(request)
        on = request.get("on")
        if not isinstance(on, bool):
            raise DiagUsage("maintenance needs 'on': true|false")
        self.station.set_maintenance(c.id, on)
        self.station.shared.eventlog.add(time.time(), "info", "diag",
                                         f"connector {c.id} maintenance {'on' if on else 'off'}")
        c = self.station.connector_view(c.id)
        return {"connector": c.id, "maintenance": c.maintenance, "status": c.status.value}

    def _actuation_allowed(self, c: ConnectorView) -> None:
        if not c.maintenance:
            raise DiagRefused(f"connector {c.id} is not in maintenance mode (cpctl maintenance on {c.id})")
        # The controller remembers the EV through state F (where the pilot cannot see it) and uses PP.
        if c.cp_state is None or c.ev_connected:
            raise DiagRefused(f"connector {c.id}: an EV is connected (or the CP state is unknown); refusing")

    async def _relay(self, request: dict[str, Any]) -> dict[str, Any]:
        c = self._connector(request)
        action = request.get("action")
        if action not in ("open", "close"):
            raise DiagUsage("relay needs 'action': open|close")
        # Both directions: outside maintenance the controller owns the relay and "open" would be a no-op
        # reported as done; in maintenance with an EV the controller already holds it open.
        self._actuation_allowed(c)
        await self.station.manual_relay(c.id, action == "close")
        self.station.shared.eventlog.add(time.time(), "warning", "diag", f"connector {c.id} relay {action} (manual)")
        await asyncio.sleep(0.3)
        feedback = self.station.connector_view(c.id).relay_feedback_closed
        return {"connector": c.id, "commanded": action, "feedback_closed": feedback}

    async def _pwm(self, request: dict[str, Any]) -> dict[str, Any]:
        c = self._connector(request)
        try:
            duty = float(request["duty"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DiagUsage("pwm needs a numeric 'duty' (0 = F, 100 = X1, else percent)") from exc
        if not 0.0 <= duty <= 100.0:
            raise DiagUsage("duty must be within 0..100")
        self._actuation_allowed(c)
        await self.station.manual_pwm(c.id, duty)
        self.station.shared.eventlog.add(time.time(), "warning", "diag", f"connector {c.id} PWM {duty:g} % (manual)")
        return {"connector": c.id, "duty": duty}

    async def _clear(self, request: dict[str, Any]) -> dict[str, Any]:
        """Operator clear of latched faults (RCD, ground, weld, over-current) once the cause is checked."""
        c = self._connector(request)
        cleared = await self.station.clear_faults(c.id)  # those whose cause persists stay latched
        c = self.station.connector_view(c.id)
        left = sorted(f.value for f in c.faults)
        self.station.shared.eventlog.add(time.time(), "warning", "diag",
                                         f"connector {c.id} faults cleared by operator; still active: {left or 'none'}")
        return {"connector": c.id, "cleared": cleared, "faults": left, "status": c.status.value}

    async def _trigger(self, request: dict[str, Any]) -> dict[str, Any]:
        what = request.get("what")
        if what not in ("boot", "status", "heartbeat"):
            raise DiagUsage("trigger needs 'what': boot|status|heartbeat")
        return {"trigger": what, "result": await self._need_ocpp().diag_trigger(str(what))}
