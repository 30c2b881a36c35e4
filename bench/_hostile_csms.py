"""Hostile central system of `bench/safety_latency.py --hostile`, in a process of its own so that its
work never runs in the process that measures. A raw websockets OCPP 1.6J server on 127.0.0.1 that
answers every charge-point CALL at once and, in parallel lanes (each with one CALL outstanding, five
in all: within the agent's MAX_CONCURRENT_INCOMING), keeps the network side busy:

- composite: a Daily recurring TxDefaultProfile with ChargingScheduleMaxPeriods periods on every
  connector plus a ChargePointMaxProfile on connector 0, then GetCompositeSchedule with duration
  2^31-1 s (the largest the 1.6 integer allows) round the connectors, in a loop;
- frames: DataTransfer CALLs just under the agent's 64 KiB frame cap, back to back, and every
  BIG_FRAME_EVERY_S one 1 MB frame (the agent closes with 1009 and redials; reconnects are counted);
- triggers: TriggerMessage (Heartbeat / StatusNotification / MeterValues) as fast as the agent answers,
  at most TRIGGER_RATE per second;
- local list: SendLocalList Full with SendLocalListMaxLength entries, at most LOCAL_LIST_RATE per second;
- diagnostics: GetDiagnostics to an HTTP and an FTP server on 127.0.0.1 (tests/agent/ocpp/fileservers.py),
  alternately, the next one when the agent has reported Uploaded/UploadFailed.

Prints {"port": P} on stdout when listening; on SIGTERM stops and prints the load it achieved as one
JSON line. Usage: python bench/_hostile_csms.py TAG WORKDIR
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.agent.ocpp.fileservers import ftp_server, http_server

MAX_FRAME = 64 * 1024  # agent.ocpp.v16.rpc.MAX_FRAME_BYTES
NEAR_CAP = MAX_FRAME - 256  # bytes of a "just under the cap" frame
BIG_FRAME = 1024 * 1024
BIG_FRAME_EVERY_S = 10.0
TRIGGER_RATE = 1000.0
# Which lanes run (comma-separated), to see which load hurts: all of them unless HOSTILE_LANES says otherwise.
ALL_LANES = ("composite", "frames", "triggers", "local_list", "diagnostics")
LANES = [lane for lane in os.environ.get("HOSTILE_LANES", ",".join(ALL_LANES)).split(",") if lane]
LOCAL_LIST_RATE = 10.0
COMPOSITE_DURATION = 2**31 - 1
CALL_TIMEOUT_S = 30.0


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Peer:
    """One websocket connection to the agent: answers its CALLs, matches answers to our CALLs."""

    def __init__(self, ws: ServerConnection, csms: HostileCsms) -> None:
        self.ws = ws
        self.csms = csms
        self.pending: dict[str, asyncio.Future[Any]] = {}

    async def call(self, action: str, payload: dict[str, Any], *, pad_to: int = 0) -> Any:
        uid = uuid.uuid4().hex
        text = json.dumps([2, uid, action, payload], separators=(",", ":"))
        if pad_to:  # one DataTransfer whose data fills the frame to pad_to bytes
            filler = "x" * max(0, pad_to - len(text))
            payload = {**payload, "data": filler}
            text = json.dumps([2, uid, action, payload], separators=(",", ":"))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[uid] = future
        try:
            await self.ws.send(text)
            self.csms.count("frames_out", len(text))
            async with asyncio.timeout(CALL_TIMEOUT_S):
                return await future
        finally:
            self.pending.pop(uid, None)

    async def serve(self) -> None:
        async for raw in self.ws:
            self.csms.count("frames_in", len(raw))
            try:
                frame = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(frame, list) or len(frame) < 3:
                continue
            if frame[0] == 2 and len(frame) == 4:
                reply = self.csms.answer(str(frame[2]), frame[3] if isinstance(frame[3], dict) else {})
                text = json.dumps([3, frame[1], reply], separators=(",", ":"))
                await self.ws.send(text)
                self.csms.count("frames_out", len(text))
            elif frame[0] in (3, 4):
                future = self.pending.get(str(frame[1]))
                if future is not None and not future.done():
                    future.set_result(frame[2] if frame[0] == 3 else {"_error": frame[2]})


class HostileCsms:
    def __init__(self, tag: str, workdir: Path) -> None:
        self.tag = tag
        self.workdir = workdir
        self.counters: Counter[str] = Counter()
        self.booted = asyncio.Event()
        self.peer: Peer | None = None
        self.connected = asyncio.Event()
        self.transaction_id = 0
        self.limits: dict[str, int] = {}
        self.connector_ids: set[int] = set()
        self.diag_done = asyncio.Event()
        self.load_started: float | None = None
        self.http_uploads = 0
        self.ftp_root = workdir / "ftp"

    def count(self, what: str, size: int | None = None) -> None:
        self.counters[what] += 1
        if size is not None:
            self.counters[what + "_bytes"] += size

    # -- the agent's CALLs ------------------------------------------------------------------------

    def answer(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.counters["in_" + action] += 1
        accepted = {"status": "Accepted"}
        if action == "BootNotification":
            self.booted.set()
            return {"status": "Accepted", "currentTime": now_iso(), "interval": 300}
        if action == "Heartbeat":
            return {"currentTime": now_iso()}
        if action == "Authorize":
            return {"idTagInfo": accepted}
        if action == "StartTransaction":
            self.transaction_id += 1
            return {"transactionId": self.transaction_id, "idTagInfo": accepted}
        if action == "StatusNotification":
            if isinstance(payload.get("connectorId"), int) and payload["connectorId"] > 0:
                self.connector_ids.add(payload["connectorId"])
            return {}
        if action == "DiagnosticsStatusNotification":
            if payload.get("status") in ("Uploaded", "UploadFailed"):
                self.counters["diagnostics_" + str(payload["status"])] += 1
                self.diag_done.set()
            return {}
        if action in ("DataTransfer", "SignCertificate"):
            return accepted
        return {}  # StopTransaction, MeterValues, notifications: all fields optional

    # -- connections ------------------------------------------------------------------------------

    async def handler(self, ws: ServerConnection) -> None:
        peer = Peer(ws, self)
        self.peer = peer
        self.counters["connections"] += 1
        self.connected.set()
        try:
            await peer.serve()
        except ConnectionClosed:
            pass
        finally:
            if ws.close_code == 1009:
                self.counters["closed_1009"] += 1
            if self.peer is peer:
                self.peer = None
                self.connected.clear()
            for future in peer.pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("connection closed"))

    async def call(self, action: str, payload: dict[str, Any], *, pad_to: int = 0) -> Any:
        """One CALL on the current connection (waits for one); None when the connection went away."""
        while True:
            await self.connected.wait()
            peer = self.peer
            if peer is None:
                continue
            try:
                answer = await peer.call(action, payload, pad_to=pad_to)
                if "_error" in answer:  # CALLERROR, e.g. GenericError "too many CALLs"
                    self.counters[f"callerror {action} {answer['_error']}"] += 1
                else:
                    self.counters["answered_" + action] += 1
                return answer
            except (ConnectionClosed, ConnectionError):
                self.counters["calls_lost_" + action] += 1
                return None
            except TimeoutError:
                self.counters["calls_timed_out_" + action] += 1
                return None

    # -- load lanes -------------------------------------------------------------------------------

    async def setup(self) -> None:
        await self.booted.wait()
        conf = await self.call("GetConfiguration", {"key": [
            "ChargingScheduleMaxPeriods", "SendLocalListMaxLength", "LocalAuthListMaxLength",
            "MaxChargingProfilesInstalled", "NumberOfConnectors"]})
        for kv in (conf or {}).get("configurationKey", []):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                self.limits[kv["key"]] = int(kv["value"])
        n = self.limits.get("NumberOfConnectors", 1)
        self.connector_ids.update(range(1, n + 1))
        periods = self.limits.get("ChargingScheduleMaxPeriods", 24)
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        start = midnight.isoformat().replace("+00:00", "Z")

        def schedule(limits: tuple[float, ...], shift: int) -> dict[str, Any]:
            step = 86400 // periods
            return {"startSchedule": start, "chargingRateUnit": "A", "duration": 86400,
                    "chargingSchedulePeriod": [
                        {"startPeriod": 0 if i == 0 else i * step - shift, "limit": limits[i % len(limits)]}
                        for i in range(periods)]}

        # Limits never below 16 A per connector: the board player's sessions must keep charging.
        for cid in sorted(self.connector_ids):
            answer = await self.call("SetChargingProfile", {"connectorId": cid, "csChargingProfiles": {
                "chargingProfileId": 1000 + cid, "stackLevel": 1, "chargingProfilePurpose": "TxDefaultProfile",
                "chargingProfileKind": "Recurring", "recurrencyKind": "Daily",
                "chargingSchedule": schedule((32.0, 24.0, 20.0, 16.0), 0)}})
            self.counters["profiles_" + str((answer or {}).get("status"))] += 1
        answer = await self.call("SetChargingProfile", {"connectorId": 0, "csChargingProfiles": {
            "chargingProfileId": 999, "stackLevel": 1, "chargingProfilePurpose": "ChargePointMaxProfile",
            "chargingProfileKind": "Recurring", "recurrencyKind": "Daily",
            "chargingSchedule": schedule((500.0, 480.0), 7)}})
        self.counters["profiles_" + str((answer or {}).get("status"))] += 1
        self.counters["schedule_periods"] = periods
        self.load_started = time.monotonic()

    async def composite_lane(self) -> None:
        for cid in itertools.cycle(range(0, max(self.connector_ids) + 1)):
            answer = await self.call("GetCompositeSchedule", {
                "connectorId": cid, "duration": COMPOSITE_DURATION, "chargingRateUnit": "A"})
            if answer and answer.get("status") == "Accepted":
                self.counters["composite_accepted"] += 1
                periods = len(answer.get("chargingSchedule", {}).get("chargingSchedulePeriod", []))
                self.counters["composite_periods_max"] = max(self.counters["composite_periods_max"], periods)
            elif answer is not None and "_error" not in answer:
                self.counters["composite_rejected"] += 1

    async def frame_lane(self) -> None:
        last_big = time.monotonic()
        while True:
            if time.monotonic() - last_big >= BIG_FRAME_EVERY_S and self.peer is not None:
                last_big = time.monotonic()
                peer = self.peer
                text = json.dumps([2, uuid.uuid4().hex, "DataTransfer",
                                   {"vendorId": "bench.hostile", "data": "y" * BIG_FRAME}])
                with contextlib.suppress(ConnectionClosed):
                    await peer.ws.send(text)
                    self.count("big_frames", len(text))
                await self.connected.wait()
                continue
            answer = await self.call("DataTransfer", {"vendorId": "bench.hostile", "messageId": "fill"},
                                     pad_to=NEAR_CAP)
            if answer is not None and "_error" not in answer:
                self.counters["near_cap_frames"] += 1

    async def trigger_lane(self) -> None:
        kinds: list[tuple[str, int | None]] = [("Heartbeat", None)]
        for n in sorted(self.connector_ids):
            kinds += [("StatusNotification", n), ("MeterValues", n)]
        due = time.monotonic()
        for message, connector_id in itertools.cycle(kinds):
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            due = max(due, time.monotonic() - 0.01) + 1.0 / TRIGGER_RATE  # no catching up beyond 10 ms
            payload: dict[str, Any] = {"requestedMessage": message}
            if connector_id is not None:
                payload["connectorId"] = connector_id
            answer = await self.call("TriggerMessage", payload)
            if answer is not None and "_error" not in answer:
                self.counters["triggers_" + str(answer.get("status"))] += 1

    async def local_list_lane(self) -> None:
        size = self.limits.get("SendLocalListMaxLength", 100)
        if "LocalAuthListMaxLength" in self.limits:
            size = min(size, self.limits["LocalAuthListMaxLength"])
        expiry = "2099-12-31T23:59:59.000Z"
        for version in itertools.count(1):
            started = time.monotonic()
            entries = [{"idTag": self.tag, "idTagInfo": {"status": "Accepted"}}] + [
                {"idTag": f"H{version % 1000:03d}{i:016d}", "idTagInfo": {
                    "status": "Accepted", "expiryDate": expiry, "parentIdTag": f"P{i:019d}"}}
                for i in range(size - 1)]
            answer = await self.call("SendLocalList", {"listVersion": version, "updateType": "Full",
                                                       "localAuthorizationList": entries})
            if answer is not None and "_error" not in answer:
                self.counters["local_lists_" + str(answer.get("status"))] += 1
            self.counters["local_list_entries"] = size
            if (wait := 1.0 / LOCAL_LIST_RATE - (time.monotonic() - started)) > 0:
                await asyncio.sleep(wait)

    async def diagnostics_lane(self, http_url: str, ftp_url: str) -> None:
        for location in itertools.cycle((http_url, ftp_url)):
            self.diag_done.clear()
            answer = await self.call("GetDiagnostics", {"location": location, "retries": 0})
            if answer is None or "fileName" not in answer:
                self.counters["diagnostics_refused"] += 1
                await asyncio.sleep(1.0)
                continue
            self.counters["diagnostics_requested"] += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    await self.diag_done.wait()

    # -- run --------------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        with http_server() as http, ftp_server(self.ftp_root) as ftp:
            async with serve(self.handler, "127.0.0.1", 0, subprotocols=[Subprotocol("ocpp1.6")],
                             compression=None, max_size=None, ping_interval=None) as server:
                port = server.sockets[0].getsockname()[1]
                print(json.dumps({"port": port}), flush=True)
                lanes: list[asyncio.Task[None]] = []

                async def start_lanes() -> None:
                    await self.setup()
                    coroutines: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
                        "composite": self.composite_lane, "frames": self.frame_lane, "triggers": self.trigger_lane,
                        "local_list": self.local_list_lane,
                        "diagnostics": functools.partial(self.diagnostics_lane, http.url("/diag/"), ftp.url("/"))}
                    lanes.extend(asyncio.create_task(coroutines[lane]()) for lane in LANES)

                starter = asyncio.create_task(start_lanes())
                await stop.wait()
                stopped = time.monotonic()
                for task in (starter, *lanes):
                    task.cancel()
                await asyncio.gather(starter, *lanes, return_exceptions=True)
                self.http_uploads = len(http.uploads)
        ftp_files = sum(1 for p in self.ftp_root.rglob("*") if p.is_file())
        return self.report(stopped, ftp_files)

    def report(self, stopped: float, ftp_files: int) -> dict[str, Any]:
        c = self.counters
        window = stopped - self.load_started if self.load_started is not None else 0.0

        def rate(n: float) -> float:
            return round(n / window, 1) if window > 0 else 0.0

        return {
            **({} if LANES == list(ALL_LANES) else {"lanes": ",".join(LANES) or "none"}),
            "load_window_s": round(window, 1),
            "frames_in_per_s": rate(c["frames_in"]),
            "frames_out_per_s": rate(c["frames_out"] + c["big_frames"]),
            "mb_out_per_s": round((c["frames_out_bytes"] + c["big_frames_bytes"]) / 1e6 / window, 2) if window else 0,
            "near_cap_frames_per_s": rate(c["near_cap_frames"]),
            "near_cap_frame_bytes": NEAR_CAP,
            "big_frames_1mb": c["big_frames"],
            "closed_1009": c["closed_1009"],
            "reconnects": max(0, c["connections"] - 1),
            "schedule_periods": c["schedule_periods"],
            "profiles_accepted": c["profiles_Accepted"],
            "composite_per_s": rate(c["composite_accepted"]),
            "composite_periods_max": c["composite_periods_max"],
            "triggers_per_s": rate(c["answered_TriggerMessage"]),
            "triggers_accepted": c["triggers_Accepted"],
            "triggered_messages_in": sum(c["in_" + a] for a in ("Heartbeat", "MeterValues", "StatusNotification")),
            "local_lists_accepted": c["local_lists_Accepted"],
            "local_list_entries": c["local_list_entries"],
            "local_lists_per_s": rate(c["local_lists_Accepted"]),
            "diagnostics_requested": c["diagnostics_requested"],
            "diagnostics_uploaded": c["diagnostics_Uploaded"],
            "diagnostics_failed": c["diagnostics_UploadFailed"],
            "upload_files_on_servers": self.http_uploads + ftp_files,  # distinct names: a second's uploads share one
            "start_transactions_received": c["in_StartTransaction"],
            "stop_transactions_received": c["in_StopTransaction"],
            "calls_lost": sum(v for k, v in c.items() if k.startswith("calls_lost_")),
            "calls_timed_out": sum(v for k, v in c.items() if k.startswith("calls_timed_out_")),
            "callerrors": sum(v for k, v in c.items() if k.startswith("callerror ")),
            "callerrors_by_kind": {k.removeprefix("callerror "): v for k, v in c.items() if k.startswith("callerror ")},
        }


def main() -> None:
    tag, workdir = sys.argv[1], Path(sys.argv[2])
    report = asyncio.run(HostileCsms(tag, workdir).run())
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
