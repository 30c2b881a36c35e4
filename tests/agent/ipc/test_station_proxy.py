"""StationPort carried over the station socket (agent/ipc): a real Station on the bus-level simulator
behind a ControlServer on a real Unix socket, and a StationProxy using it as the network side would."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import random
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.authorize import AuthDecision
from agent.events import (
    ConnectorStatus,
    MeterUpdate,
    SessionStarted,
    SessionStopped,
    StationEvent,
    StatusChanged,
    StopReason,
)
from agent.ipc.codec import MAX_LINE_BYTES, encode
from agent.ipc.control_server import ControlServer
from agent.ipc.protocol import StationUnavailable
from agent.ipc.station_proxy import LINK_TASK, StationProxy
from agent.sessions import Session
from agent.station_api import ConnectorReservation, ConnectorSettings, EnergyHold, OperatorMessage, StationPort
from hal.types import Fault
from tests.integration.conftest import Bench, start_bench, stop_bench

TAG = "DEADBEEF01"  # in the rig's allow-list
STRANGER = "CAFE000001"  # known only to the network side's authority


@dataclass
class Ipc:
    bench: Bench
    server: ControlServer
    proxy: StationProxy
    sock: Path
    events: list[StationEvent] = field(default_factory=list)

    async def until(self, predicate: Callable[[], object], limit_s: float = 8.0, what: str = "condition") -> float:
        return await self.bench.wait_for(predicate, limit_s, what)

    async def new_server(self, **options: float) -> ControlServer:
        self.server = ControlServer(self.bench.station, self.sock, refresh_s=0.1, **options)  # type: ignore[arg-type]
        await self.server.start()
        return self.server


@pytest.fixture
async def ipc(tmp_path: Path) -> AsyncIterator[Ipc]:
    async with running_ipc(tmp_path) as h:
        yield h


@contextlib.asynccontextmanager
async def running_ipc(tmp_path: Path, **rig_options: object) -> AsyncIterator[Ipc]:
    bench = await start_bench(tmp_path / "rig", **rig_options)
    short = Path(tempfile.mkdtemp(prefix="cpipc", dir="/tmp"))  # Unix socket paths are limited to 107 bytes
    sock = short / "station.sock"
    server = ControlServer(bench.station, sock, refresh_s=0.1, ask_timeout_s=1.0)
    await server.start()
    proxy = StationProxy(sock, bench.station.config.state_dir / "state.db", reconnect_min_s=0.05, reconnect_max_s=0.2)
    h = Ipc(bench, server, proxy, sock)
    proxy.subscribe(h.events.append)
    await proxy.start(timeout_s=5)
    try:
        yield h
    finally:
        await proxy.close()
        await h.server.stop()
        await stop_bench(bench)
        shutil.rmtree(short, ignore_errors=True)


async def test_the_socket_is_private_and_the_proxy_mirrors_the_station(ipc: Ipc) -> None:
    mode = os.stat(ipc.sock).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert [p.name for p in ipc.sock.parent.iterdir()] == ["station.sock"]  # no scratch left behind
    port: StationPort = ipc.proxy
    station = ipc.bench.station
    assert port.facts().charge_point_id == station.facts().charge_point_id
    assert port.connector_ids() == station.connector_ids() == (1,)
    assert port.connector_view(1).id == 1
    assert port.connector_view(1).max_current_a == station.connector_view(1).max_current_a
    with pytest.raises(KeyError):
        port.connector_view(9)
    with pytest.raises(KeyError):
        port.set_available(9, False)
    with pytest.raises(KeyError, match="9"):
        await port.clear_faults(9)  # the control side's own KeyError, carried back


async def test_a_session_through_the_proxy(ipc: Ipc) -> None:
    port: StationPort = ipc.proxy
    station = ipc.bench.station
    seen: list[str] = []

    def consistent(event: StationEvent) -> None:
        """A listener reading the mirror sees the state the event describes (the view comes with it)."""
        if isinstance(event, StatusChanged) and event.connector_id == 1:
            seen.append("ok" if port.connector_view(1).status is event.status else f"stale {event.status}")
        elif isinstance(event, SessionStarted | SessionStopped):
            session = port.connector_view(1).session
            expected = event.session.ref if isinstance(event, SessionStarted) else None
            seen.append("ok" if (session.ref if session else None) == expected else f"stale {type(event).__name__}")

    port.subscribe(consistent)
    ipc.bench.ctl(cmd="plug", connector=1)
    await ipc.until(lambda: port.connector_view(1).status is ConnectorStatus.PREPARING, 5, "Preparing at the proxy")
    assert port.begin_authorized(1, TAG) is True
    await ipc.until(lambda: port.connector_view(1).relay_feedback_closed is True, 8, "relay closed (proxy view)")
    started = [e for e in ipc.events if isinstance(e, SessionStarted)]
    assert len(started) == 1 and started[0].session.id_tag == TAG
    ref = started[0].session.ref
    assert port.connector_view(1).session is not None and port.connector_view(1).session.ref == ref  # type: ignore[union-attr]
    # Energy flows, and the meter samples come through as events with the session's ref.
    await ipc.until(lambda: sum(1 for e in ipc.events if isinstance(e, MeterUpdate) and e.session_ref == ref
                                and e.sample.power_w > 1000) >= 2, 8, "MeterUpdates while charging")
    await ipc.until(lambda: port.connector_view(1).session_energy_wh > 0, 8, "session energy rises in the mirror")
    assert port.connector_view(1).status is ConnectorStatus.CHARGING

    # An energy hold given through the proxy acts on the real connector; its release too.
    port.hold_energy(1, EnergyHold.INVALID_ID)
    await ipc.until(lambda: EnergyHold.INVALID_ID in station.connector_view(1).energy_holds, 2, "hold at the station")
    await ipc.until(lambda: port.connector_view(1).offered_current_a == 0
                    and port.connector_view(1).status is ConnectorStatus.SUSPENDED_EVSE, 3, "hold in the mirror")
    port.release_energy(1, EnergyHold.INVALID_ID)
    await ipc.until(lambda: EnergyHold.INVALID_ID not in port.connector_view(1).energy_holds, 3, "released")

    stopped = port.stop_session(1, StopReason.REMOTE)
    assert stopped is not None and stopped.ref == ref
    await ipc.until(lambda: any(isinstance(e, SessionStopped) for e in ipc.events), 3, "SessionStopped at the proxy")
    stop = next(e for e in ipc.events if isinstance(e, SessionStopped))
    assert stop.reason is StopReason.REMOTE and stop.session.ref == ref and stop.session.stop_reason == "Remote"
    assert stop.session.energy_wh > 0
    await ipc.until(lambda: port.connector_view(1).session is None, 2, "no session in the mirror")
    assert station.connector_view(1).session is None
    assert port.stop_session(1, StopReason.REMOTE) is None  # nothing left to stop
    assert len(seen) >= 5 and set(seen) == {"ok"}, seen
    await ipc.until(lambda: ipc.bench.rig.connectors[1].plant.relay_closed is False, 5, "plant relay open")
    # The proxy's own connection to the state database sees the finished record.
    record = port.shared.sessions.get(ref)
    assert record is not None and record.stop_wall is not None and record.stop_reason == "Remote"


async def test_availability_reservation_settings_and_awaited_commands(ipc: Ipc) -> None:
    port: StationPort = ipc.proxy
    station = ipc.bench.station
    port.set_available(1, False)
    await ipc.until(lambda: port.connector_view(1).status is ConnectorStatus.UNAVAILABLE, 3, "Unavailable")
    assert EnergyHold.UNAVAILABLE in station.connector_view(1).energy_holds
    assert any(isinstance(e, StatusChanged) and e.status is ConnectorStatus.UNAVAILABLE for e in ipc.events)
    # Technician actuation waits for the control side's verdict: allowed in maintenance without an EV...
    port.set_maintenance(1, True)
    await ipc.until(lambda: port.connector_view(1).maintenance, 3, "maintenance")
    await port.manual_pwm(1, 100.0)
    await port.manual_relay(1, False)
    port.set_maintenance(1, False)
    port.set_available(1, True)
    await ipc.until(lambda: port.connector_view(1).status is ConnectorStatus.AVAILABLE, 3, "Available again")
    # ... and refused (the station's RuntimeError, carried back) outside maintenance.
    with pytest.raises(RuntimeError, match="manual"):
        await port.manual_relay(1, True)

    hold = ConnectorReservation(42, "OTHERTAG")
    port.set_reservation(1, hold)
    assert port.begin_authorized(1, TAG) is False  # exact at once: the mirror took the reservation when sent
    await ipc.until(lambda: port.connector_view(1).status is ConnectorStatus.RESERVED, 3, "Reserved")
    assert station.connector_view(1).reservation == hold
    port.set_reservation(1, None)
    await ipc.until(lambda: station.connector_view(1).reservation is None
                    and port.connector_view(1).status is ConnectorStatus.AVAILABLE, 3, "reservation cleared")

    settings = ConnectorSettings(connection_timeout_s=0.3, stop_on_ev_disconnect=False, unlock_on_ev_disconnect=False)
    port.configure_connector(1, settings)
    port.set_display_extra(1, (("price", "0.30/kWh"),))
    port.set_current_limit(1, 10.0)
    assert port.begin_authorized(1, TAG) is True
    await ipc.until(lambda: port.connector_view(1).pending_id_tag == TAG, 3, "authorization pending")
    assert station.connector_view(1).settings == settings == port.connector_view(1).settings
    assert port.connector_view(1).display_extra == (("price", "0.30/kWh"),)
    await ipc.until(lambda: port.connector_view(1).pending_id_tag is None, 3, "authorization expired (0.3 s)")

    assert await port.clear_faults(1) is True
    assert await port.unlock(1) is station.connector_view(1).has_lock


async def test_token_decisions_are_asked_over_the_socket(ipc: Ipc) -> None:
    asked: list[str] = []

    class Authority:
        async def authorize(self, id_tag: str) -> AuthDecision:
            asked.append(id_tag)
            if id_tag == STRANGER:
                return AuthDecision(True, "Accepted", "GROUP")
            return AuthDecision(False, "Invalid")

        async def may_stop(self, session: Session, id_tag: str) -> bool:
            asked.append(f"stop:{id_tag}")
            return id_tag == "GROUPMATE1"

    port: StationPort = ipc.proxy
    port.register_authority(Authority())
    station = ipc.bench.station
    ipc.bench.ctl(cmd="plug", connector=1)
    await ipc.until(lambda: port.connector_view(1).status is ConnectorStatus.PREPARING, 5, "Preparing")
    # The allow-list knows TAG but the network side's authority is asked and refuses it...
    assert (await station.present_token(TAG)).accepted is False
    # ... and accepts a card the allow-list does not know.
    assert (await station.present_token(STRANGER)).accepted is True
    assert asked[:2] == [TAG, STRANGER]
    await ipc.until(lambda: any(isinstance(e, SessionStarted) and e.session.id_tag == STRANGER for e in ipc.events),
                    3, "session for the card the network side accepted")
    # Another card of the group stops it: the station asks may_stop over the socket.
    assert (await station.present_token("GROUPMATE1")).accepted
    assert "stop:GROUPMATE1" in asked
    await ipc.until(lambda: any(isinstance(e, SessionStopped) for e in ipc.events), 3, "stopped by the group mate")


async def test_a_slow_or_absent_network_side_does_not_hold_token_decisions(ipc: Ipc) -> None:
    class Slow:
        async def authorize(self, id_tag: str) -> AuthDecision:
            await asyncio.sleep(30)
            return AuthDecision(True)

        async def may_stop(self, session: Session, id_tag: str) -> bool:
            await asyncio.sleep(30)
            return True

    ipc.proxy.register_authority(Slow())
    station = ipc.bench.station
    await ipc.until(lambda: ipc.server.connected, 2, "client registered")
    await asyncio.sleep(0.1)  # the registration has reached the server
    t0 = time.monotonic()
    assert (await station.present_token(STRANGER)).accepted is False  # the allow-list decides after the timeout
    assert 0.9 <= time.monotonic() - t0 < 2.5  # ask_timeout_s = 1.0, not the authority's 30 s
    assert (await station.present_token(TAG)).accepted is True
    # No client at all: the station decides at once, as it does without an authority.
    await ipc.proxy.close()
    await ipc.until(lambda: not ipc.server.connected, 2, "client gone")
    t0 = time.monotonic()
    assert (await station.present_token("ANOTHER001")).accepted is False
    assert time.monotonic() - t0 < 0.5  # not the 1 s ask timeout


async def test_control_side_restart_proxy_reconnects_and_resyncs(ipc: Ipc) -> None:
    port: StationPort = ipc.proxy
    station = ipc.bench.station
    settings = ConnectorSettings(connection_timeout_s=7.0, stop_on_ev_disconnect=True, unlock_on_ev_disconnect=False)
    port.configure_connector(1, settings)
    port.set_current_limit(1, 8.0)
    await ipc.until(lambda: station.connector_view(1).settings == settings, 2, "settings applied")
    assert port.connector_view(1).status is ConnectorStatus.AVAILABLE

    await ipc.server.stop()
    # Disconnected: every connector is reported Faulted (InternalError), commands fail fast.
    await ipc.until(lambda: port.connector_view(1).status is ConnectorStatus.FAULTED, 2, "Faulted while disconnected")
    assert Fault.INTERNAL in port.connector_view(1).faults
    faulted = [e for e in ipc.events if isinstance(e, StatusChanged) and e.status is ConnectorStatus.FAULTED]
    assert faulted and Fault.INTERNAL in faulted[-1].faults
    assert any(t.name == LINK_TASK and not t.alive for t in port.facts().tasks)
    t0 = time.monotonic()
    with pytest.raises(StationUnavailable, match="not connected"):
        port.set_available(1, False)
    with pytest.raises(StationUnavailable):
        await port.clear_faults(1)
    assert time.monotonic() - t0 < 0.5  # not the 5 s command timeout

    # A restarted control side starts without what the network side configured.
    station.configure_connector(1, ConnectorSettings())
    events_before = len(ipc.events)
    await ipc.new_server()
    await ipc.until(lambda: ipc.proxy.connected and port.connector_view(1).status is ConnectorStatus.AVAILABLE,
                    5, "reconnected and resynced")
    assert Fault.INTERNAL not in port.connector_view(1).faults
    assert any(isinstance(e, StatusChanged) and e.status is ConnectorStatus.AVAILABLE and not e.faults
               for e in ipc.events[events_before:])
    assert not any(t.name == LINK_TASK for t in port.facts().tasks)
    await ipc.until(lambda: station.connector_view(1).settings == settings, 2, "settings given again")
    await ipc.until(lambda: port.connector_view(1).settings == settings, 2, "and mirrored")
    port.set_available(1, False)  # commands work again
    await ipc.until(lambda: port.connector_view(1).status is ConnectorStatus.UNAVAILABLE, 2, "Unavailable")


async def test_availability_is_given_again_to_a_restarted_control_side(ipc: Ipc) -> None:
    """A connector the CSMS made Unavailable stays so when the control side restarts (it starts Available)."""
    port: StationPort = ipc.proxy
    station = ipc.bench.station
    port.set_available(1, False)
    await ipc.until(lambda: station.connector_view(1).status is ConnectorStatus.UNAVAILABLE, 2, "Unavailable")
    await ipc.server.stop()
    await ipc.until(lambda: port.connector_view(1).status is ConnectorStatus.FAULTED, 2, "Faulted while disconnected")
    station.set_available(1, True)  # as a restarted control side would start
    await ipc.new_server()
    await ipc.until(lambda: station.connector_view(1).status is ConnectorStatus.UNAVAILABLE, 5, "Unavailable again")
    await ipc.until(lambda: port.connector_view(1).status is ConnectorStatus.UNAVAILABLE, 2, "and mirrored")


def _raw_client(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    s.setblocking(False)
    return s


async def _read_until_closed(s: socket.socket, limit_s: float = 3.0) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(s, 65536), deadline - time.monotonic())
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            return data + b"<EOF>"
        data += chunk
    return data


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not json\n",
        b"[1, 2, 3]\n",
        b'{"k": "call", "id": 1, "op": "os.system", "args": {"command": "true"}}\n',
        b'{"k": "call", "id": 1, "op": "set_available", "args": {"connector_id": 1, "available": "no"}}\n',
        b'{"k": "call", "id": 1, "op": "set_reservation", "args": {"connector_id": 1, "reservation": '
        b'{"$t": "subprocess.Popen", "args": ["sh"]}}}\n',
        b'{"k": "call", "id": 1, "op": "hold_energy", "args": {"connector_id": 1, "reason": "pizza"}}\n',
        b'{"k": "answer", "id": 99, "result": true}\n',
        b'{"k": "call", "id": 1, "op": "set_available", "args": {"connector_id": 1, "available": NaN}}\n',
        b"x" * (MAX_LINE_BYTES + 10),
    ],
    ids=["text", "array", "unknown-op", "bad-arg", "unknown-type", "bad-enum", "stray-answer", "nan", "too-long"],
)
async def test_a_client_sending_garbage_is_dropped_and_the_server_survives(ipc: Ipc, garbage: bytes) -> None:
    await ipc.proxy.close()
    await ipc.until(lambda: not ipc.server.connected, 2, "proxy gone")
    loop = asyncio.get_running_loop()
    s = _raw_client(ipc.sock)
    try:
        await loop.sock_sendall(s, garbage)
        received = await _read_until_closed(s)
    finally:
        s.close()
    assert received.startswith(b'{"k":"hello"') and received.endswith(b"<EOF>")  # the hello, then closed
    assert ipc.bench.station.connector_view(1).available  # nothing happened at the station
    # The server goes on serving: a well-behaved client gets a reply, including to a refused command.
    s = _raw_client(ipc.sock)
    try:
        call = {"k": "call", "id": 7, "op": "set_available", "args": {"connector_id": 9, "available": False}}
        await loop.sock_sendall(s, json.dumps(call).encode() + b"\n")
        reply = b""
        deadline = time.monotonic() + 3
        while b'"k":"reply"' not in reply and time.monotonic() < deadline:
            reply += await asyncio.wait_for(loop.sock_recv(s, 65536), 3)
        line = next(x for x in reply.split(b"\n") if b'"k":"reply"' in x)
        assert json.loads(line) == {"k": "reply", "id": 7, "error": {"type": "KeyError", "message": "9"}}
        ok = {"k": "call", "id": 8, "op": "set_reservation",
              "args": {"connector_id": 1, "reservation": encode(ConnectorReservation(5, "ABC"))}}
        await loop.sock_sendall(s, json.dumps(ok).encode() + b"\n")
        await ipc.until(lambda: ipc.bench.station.connector_view(1).reservation == ConnectorReservation(5, "ABC"),
                        2, "a valid command after the garbage")
    finally:
        s.close()


async def test_a_client_that_does_not_read_is_dropped_not_buffered(ipc: Ipc) -> None:
    await ipc.proxy.close()
    await ipc.server.stop()
    await ipc.new_server(max_buffer=64 * 1024)
    ipc.server.refresh_s = 0.005

    async def keep_changing() -> None:  # an unchanged refresh is not sent again: give it news every time
        for n in itertools.count():
            ipc.bench.station.set_display_extra(1, (("n", str(n)),))
            await asyncio.sleep(0.002)

    changing = asyncio.create_task(keep_changing())
    s = _raw_client(ipc.sock)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        await ipc.until(lambda: ipc.server.clients_served == 1 and not ipc.server.connected, 20,
                        "the reader-less client dropped")
    finally:
        s.close()
        changing.cancel()
    # The loop was never blocked and the server still serves.
    proxy = StationProxy(ipc.sock, ipc.bench.station.config.state_dir / "state.db")
    try:
        await proxy.start(timeout_s=3)
        assert proxy.connector_view(1).id == 1
    finally:
        await proxy.close()


async def test_the_proxy_survives_a_bad_control_side_and_times_out_commands(tmp_path: Path) -> None:
    """A control side that sends garbage is dropped and redialled; one that never answers makes an awaited
    command fail with StationUnavailable after command_timeout_s, not hang."""
    from tests.agent.ipc.test_codec import FACTS, VIEW

    short = Path(tempfile.mkdtemp(prefix="cpipc", dir="/tmp"))
    sock = short / "s.sock"
    mode = {"garbage": True}
    connections: list[asyncio.StreamWriter] = []
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        if mode["garbage"]:
            writer.write(b'{"k": "hello", "v": 1, "facts": {"$t": "Popen"}, "views": []}\n')
            await reader.read()  # until the proxy hangs up
            return
        hello = {"k": "hello", "v": 1, "facts": encode(FACTS), "views": [encode(dataclasses.replace(VIEW, id=1))]}
        writer.write(json.dumps(hello).encode() + b"\n")
        while line := await reader.readline():
            received.append(line)  # read, never answer

    server = await asyncio.start_unix_server(serve, path=str(sock))
    proxy = StationProxy(sock, tmp_path / "state.db", command_timeout_s=0.3, reconnect_min_s=0.05,
                         reconnect_max_s=0.1)
    try:
        await proxy.start()
        await asyncio.sleep(0.6)
        assert len(connections) >= 3 and not proxy.connected  # dropped and redialled, never accepted the hello
        assert "unknown type 'Popen'" in proxy.last_error
        with pytest.raises(StationUnavailable):
            proxy.facts()
        with pytest.raises(StationUnavailable):
            await proxy.unlock(1)
        mode["garbage"] = False
        await proxy.wait_connected(3)
        assert proxy.facts() == FACTS and proxy.connector_view(1).status is VIEW.status
        t0 = time.monotonic()
        with pytest.raises(StationUnavailable, match="no answer"):
            await proxy.clear_faults(1)
        assert 0.25 <= time.monotonic() - t0 < 1.0
        assert any(b'"op":"clear_faults"' in line for line in received)
    finally:
        await proxy.close()
        server.close()
        for w in connections:
            w.transport.abort()
        shutil.rmtree(short, ignore_errors=True)


async def test_a_reservation_holds_in_the_mirror_while_older_views_are_in_flight(ipc: Ipc) -> None:
    """begin_authorized answers from the mirror: a view sent before the control side applied a
    set_reservation must not undo it there (views stream back to back here)."""
    port: StationPort = ipc.proxy
    ipc.server.refresh_s = 0.0
    hold = ConnectorReservation(7, "OTHERTAG")
    for _ in range(40):
        port.set_reservation(1, hold)
        for _ in range(30):  # every loop iteration: each may have processed a view
            await asyncio.sleep(0)
            assert port.connector_view(1).reservation == hold
            assert port.begin_authorized(1, TAG) is False
        port.set_reservation(1, None)
        for _ in range(30):
            await asyncio.sleep(0)
            assert port.connector_view(1).reservation is None
    await ipc.until(lambda: ipc.bench.station.connector_view(1).reservation is None, 2, "last clear applied")


async def test_charging_goes_on_while_the_network_side_is_gone(ipc: Ipc) -> None:
    """The network side going away is no reason to stop: the session keeps its energy, and a new network
    side finds it running (and gets its meter values)."""
    port: StationPort = ipc.proxy
    station = ipc.bench.station
    ipc.bench.ctl(cmd="plug", connector=1)
    await ipc.until(lambda: port.connector_view(1).status is ConnectorStatus.PREPARING, 5, "Preparing")
    port.begin_authorized(1, TAG)
    await ipc.until(lambda: port.connector_view(1).status is ConnectorStatus.CHARGING, 8, "Charging")
    ref = port.connector_view(1).session.ref  # type: ignore[union-attr]
    await ipc.proxy.close()
    await ipc.until(lambda: not ipc.server.connected, 2, "network side gone")
    energy = station.connector_view(1).session_energy_wh
    await asyncio.sleep(1.5)
    view = station.connector_view(1)
    assert view.status is ConnectorStatus.CHARGING and view.relay_feedback_closed is True
    assert view.session is not None and view.session.ref == ref and view.session_energy_wh > energy

    again = StationProxy(ipc.sock, station.config.state_dir / "state.db")
    samples: list[StationEvent] = []
    again.subscribe(samples.append)
    try:
        await again.start(timeout_s=3)
        mirrored = again.connector_view(1)
        assert mirrored.status is ConnectorStatus.CHARGING and mirrored.session is not None
        assert mirrored.session.ref == ref
        await ipc.until(lambda: any(isinstance(e, MeterUpdate) and e.session_ref == ref for e in samples), 5,
                        "meter values to the new network side")
    finally:
        await again.close()


def _random_frame(rng: random.Random) -> bytes:
    from agent.ipc.protocol import COMMANDS

    def value(depth: int = 0) -> object:
        pick = rng.randrange(12 if depth < 3 else 7)
        if pick == 0:
            return None
        if pick == 1:
            return rng.choice([True, False])
        if pick == 2:
            return rng.choice([0, 1, -1, 9, 2**31, 2**70, 1.5, -0.0])
        if pick == 3:
            return rng.choice(["", "x", "rcd", "Charging", "Remote", "reserved", "DEADBEEF01", "\u0000", "é" * 50])
        if pick == 4:
            return encode(rng.choice([ConnectorReservation(1, "A"), ConnectorSettings(0.1), EnergyHold.MAINTENANCE,
                                      StopReason.LOCAL, (("a", "b"),)]))
        if pick == 5:
            return {"$t": rng.choice(["ConnectorReservation", "Session", "Nope", "ConnectorSettings"])}
        if pick == 6:
            return {"$float": rng.choice(["nan", "inf", "x"])}
        if pick in (7, 8):
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        keys = ["connector_id", "reservation", "settings", "reason", "amps", "available", "on", "extra", "id_tag",
                "closed", "duty_percent", "which", "session_ref", "$t", "zz"]
        return {rng.choice(keys): value(depth + 1) for _ in range(rng.randrange(4))}

    if rng.random() < 0.4:  # a well-formed call with typed arguments (some of them refused by the station)
        samples: dict[object, list[object]] = {
            int: [1, 1, 2, 0], str: ["DEADBEEF01", "x", "start", "stop"], bool: [True, False],
            float: [0.0, 6.0, 100.0, 55.5], float | None: [None, 10.0], str | None: [None, "GROUP"],
            StopReason: list(StopReason), EnergyHold: list(EnergyHold),
            ConnectorReservation | None: [None, ConnectorReservation(3, "ABC")],
            ConnectorSettings: [ConnectorSettings(), ConnectorSettings(0.2, False, False)],
            tuple[tuple[str, str], ...]: [(), (("price", "1"),)],
            tuple[OperatorMessage, ...]: [(), (OperatorMessage(1, "hello"),)],
        }
        name = rng.choice(sorted(COMMANDS))
        call_args = {p: encode(rng.choice(samples[tp])) for p, tp in COMMANDS[name].params.items()}
        return json.dumps({"k": "call", "id": rng.randrange(1, 100), "op": name, "args": call_args}).encode() + b"\n"
    ops = [*COMMANDS, "register_authority", "os.system", "", None, 3]
    message: dict[str, object] = {"k": rng.choice(["call", "call", "call", "answer", "ask", "hello", None, 5])}
    if rng.random() < 0.9:
        message["id"] = rng.choice([1, 2, -5, "1", None, 1.0, True])
    if rng.random() < 0.9:
        message["op"] = rng.choice(ops)
    if rng.random() < 0.9:
        args = {k: value() for k in rng.sample(["connector_id", "reservation", "settings", "reason", "amps",
                                                 "available", "on", "extra", "id_tag", "closed", "duty_percent",
                                                 "which", "session_ref", "parent_id_tag", "zz"], rng.randrange(5))}
        if rng.random() < 0.7:
            args["connector_id"] = rng.choice([1, 1, 1, 0, 2, "1"])
        message["args"] = args if rng.random() < 0.95 else [args]
    if rng.random() < 0.2:
        message["result"] = value()
    return json.dumps(message).encode() + b"\n"


async def test_fuzzed_frames_never_raise_out_of_the_server(ipc: Ipc, caplog: pytest.LogCaptureFixture) -> None:
    """Random frames, one connection each: the server answers or drops that connection, never fails
    internally, and keeps serving the station."""
    await ipc.proxy.close()
    await ipc.until(lambda: not ipc.server.connected, 2, "proxy gone")
    loop = asyncio.get_running_loop()
    rng = random.Random(12)
    outcomes = {"reply": 0, "dropped": 0}
    for _ in range(int(os.environ.get("CPAGENT_IPC_FUZZ", "150"))):
        s = _raw_client(ipc.sock)
        try:
            await loop.sock_sendall(s, _random_frame(rng))
            data = b""
            while b"<EOF>" not in data and b'"k":"reply"' not in data:
                chunk = await asyncio.wait_for(loop.sock_recv(s, 65536), 3)
                data += chunk or b"<EOF>"
            outcomes["reply" if b'"k":"reply"' in data else "dropped"] += 1
        finally:
            s.close()
    assert outcomes["reply"] > 10 and outcomes["dropped"] > 10, outcomes
    assert not [r for r in caplog.records if r.name.startswith("cpagent.ipc") and r.exc_info], "internal failure"
    proxy = StationProxy(ipc.sock, ipc.bench.station.config.state_dir / "state.db")
    try:
        await proxy.start(timeout_s=3)
        assert proxy.connector_ids() == (1,)
        assert await proxy.clear_faults(1) in (True, False)
    finally:
        await proxy.close()


async def test_signed_meter_readings_through_the_proxy(tmp_path: Path) -> None:
    """With a signing (OCMF) meter: the proxy knows a signed start/stop reading is in progress when the
    session event arrives, and awaits the record from the control side."""
    async with running_ipc(tmp_path, meter_model="ocmf") as ipc:
        port: StationPort = ipc.proxy
        pending_at_event: list[tuple[str, bool]] = []

        def on_event(event: StationEvent) -> None:
            if isinstance(event, SessionStarted):
                pending_at_event.append(("start", port.signed_reading_pending(1, event.session.ref, "start")))
            elif isinstance(event, SessionStopped):
                pending_at_event.append(("stop", port.signed_reading_pending(1, event.session.ref, "stop")))

        port.subscribe(on_event)
        ipc.bench.ctl(cmd="plug", connector=1)
        await ipc.until(lambda: port.connector_view(1).plugged_in, 5, "EV plugged in")
        port.begin_authorized(1, TAG)
        await ipc.until(lambda: port.connector_view(1).session is not None, 5, "session")
        ref = port.connector_view(1).session.ref  # type: ignore[union-attr]
        start = await port.signed_reading(1, ref, "start")
        assert start is not None and start.startswith("OCMF|")
        assert port.signed_reading_pending(1, ref, "stop") is False
        await ipc.until(lambda: port.connector_view(1).status is ConnectorStatus.CHARGING, 8, "Charging")
        port.stop_session(1, StopReason.LOCAL)
        await ipc.until(lambda: len(pending_at_event) == 2, 5, "SessionStopped")
        assert pending_at_event == [("start", True), ("stop", True)]
        end = await port.signed_reading(1, ref, "stop")
        assert end is not None and end.startswith("OCMF|") and end != start
        assert await port.signed_reading(1, "no-such-session", "stop") is None
