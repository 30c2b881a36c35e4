"""Link against the bundled CSMS and small hostile servers, all on 127.0.0.1 with real sockets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import random
import re
import socket
import ssl
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call, call_result
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from agent.ocpp.v16.link import Backoff, Link, LinkState, build_url
from agent.ocpp.v16.rpc import OcppSession
from simulator.csms import Csms, CsmsCallError
from tests.agent.ocpp.test_octt_security import leaf, make_ca

WAIT = 5.0
FAST = Backoff(base=0.02, cap=0.1, jitter=0.5, stable_after=3600)


async def until(predicate: Callable[[], bool], within: float = WAIT) -> None:
    """Poll plain attributes with a deadline (nothing to wait on: counters are plain ints)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


class Recorder:
    def __init__(self) -> None:
        self.sessions: list[OcppSession] = []
        self.reasons: list[str] = []
        self.boots: list[Any] = []

    async def connected(self, session: OcppSession) -> None:
        self.sessions.append(session)
        self.boots.append(await session.request(call.BootNotification(charge_point_model="M",
                                                                      charge_point_vendor="V")))

    def disconnected(self, reason: str) -> None:
        self.reasons.append(reason)


@asynccontextmanager
async def running(link: Link) -> AsyncIterator[Link]:
    task = asyncio.create_task(link.run())
    try:
        yield link
    finally:
        await asyncio.wait_for(link.stop(), WAIT)
        await asyncio.wait_for(task, WAIT)  # run() returns normally after stop()
        assert link.state is LinkState.DISCONNECTED


@pytest.fixture
async def csms() -> AsyncIterator[Csms]:
    server = Csms(accept=["TAG1"])
    await server.start()
    yield server
    await server.stop()


def make_link(endpoint: str, recorder: Recorder, **options: Any) -> Link:
    async def clear_cache() -> call_result.ClearCache:
        return call_result.ClearCache(status="Accepted")

    options.setdefault("backoff", FAST)
    return Link(endpoint, options.pop("charge_point_id", "CP1"), on_connected=recorder.connected,
                on_disconnected=recorder.disconnected, handlers={"ClearCache": clear_cache},
                message_timeout=WAIT, close_timeout=0.5, **options)


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    backoff = Backoff(base=1.0, cap=300.0)
    assert [backoff.ceiling(n) for n in range(10)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert backoff.ceiling(10_000) == 300.0  # no float overflow after days offline
    rng = random.Random(7)
    for attempt in range(40):
        delay = backoff.delay(attempt, rng)
        assert backoff.ceiling(attempt) / 2 <= delay <= backoff.ceiling(attempt) <= 300.0
    spread = {round(backoff.delay(12, rng), 3) for _ in range(20)}
    assert len(spread) > 10  # jitter: chargers after a CSMS outage do not redial in lockstep


async def test_link_redials_refused_connection_with_growing_capped_delays() -> None:
    closed = socket.socket()  # bound but not listening: every dial is refused at once
    closed.bind(("127.0.0.1", 0))
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)
        await asyncio.sleep(0)

    recorder = Recorder()
    link = make_link(f"ws://127.0.0.1:{closed.getsockname()[1]}", recorder, sleep=fake_sleep,
                     backoff=Backoff(base=1.0, cap=8.0, jitter=0.0))
    try:
        async with running(link):
            await until(lambda: len(delays) >= 6)
    finally:
        closed.close()
    assert delays[:6] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert link.counters.failures >= 6 and link.counters.connects == 0
    assert link.last_error is not None and "connection failed" in link.last_error
    assert recorder.sessions == []


def test_url_percent_encodes_the_charge_point_id() -> None:
    assert build_url("ws://h:9/ocpp/", "CP 1/ä") == "ws://h:9/ocpp/CP%201%2F%C3%A4"
    with pytest.raises(ValueError):
        Link("http://h/ocpp", "CP1", on_connected=Recorder().connected)
    with pytest.raises(ValueError):
        Link("ws://h/ocpp", "CP1", on_connected=Recorder().connected, security_profile=2)


async def test_connects_offering_ocpp16_to_the_encoded_url_and_boots(csms: Csms) -> None:
    recorder = Recorder()
    async with running(make_link(csms.url + "/ocpp/", recorder, charge_point_id="CP 1/ä")) as link:
        await until(lambda: len(recorder.boots) == 1)
        assert link.state is LinkState.CONNECTED and link.counters.connects == 1
        assert link.last_contact_monotonic is not None and link.last_contact_wall is not None
        assert recorder.boots[0].status == "Accepted"
        handshake = csms.handshakes[-1]
        assert handshake.path == "/ocpp/CP%201%2F%C3%A4" and handshake.charge_point_id == "CP 1/ä"
        assert "ocpp1.6" in handshake.subprotocols and handshake.authorization is None
        # Handlers given to the link answer the CSMS; unregistered known actions are NotSupported.
        assert await csms.send("CP 1/ä", "ClearCache", {}) == {"status": "Accepted"}
        with pytest.raises(CsmsCallError) as caught:
            await csms.send("CP 1/ä", "Reset", {"type": "Soft"})
        assert caught.value.code == "NotSupported"


async def test_basic_auth_header_is_right_and_password_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    password = "Sup3r-Secret-Key-0815"
    csms = Csms(password=password)
    await csms.start()
    try:
        recorder = Recorder()
        async with running(make_link(csms.url, recorder, security_profile=1, password=lambda: password)):
            await until(lambda: len(recorder.boots) == 1)
        credentials = base64.b64encode(f"CP1:{password}".encode()).decode()
        assert csms.handshakes[-1].authorization == "Basic " + credentials
        assert password not in caplog.text and credentials not in caplog.text
        assert "> Authorization: Basic ***" in caplog.text  # websockets logged the header: the filter caught it

        wrong = Recorder()
        async with running(make_link(csms.url, wrong, security_profile=1, password=lambda: "wrong")) as link:
            await until(lambda: link.counters.failures >= 2)
        assert wrong.sessions == [] and link.last_error == "HTTP 401 on websocket upgrade"
    finally:
        await csms.stop()


async def test_redials_after_clean_close(csms: Csms) -> None:
    recorder = Recorder()
    async with running(make_link(csms.url, recorder)) as link:
        await until(lambda: len(recorder.boots) == 1)
        await csms.drop("CP1")
        await until(lambda: len(recorder.boots) == 2)
        assert link.counters.connects == 2 and link.counters.disconnects == 1
    assert recorder.reasons[0] == "closed by the CSMS with code 1000"


async def test_redials_after_server_outage(csms: Csms) -> None:
    recorder = Recorder()
    async with running(make_link(csms.url, recorder)) as link:
        await until(lambda: len(recorder.boots) == 1)
        await csms.outage(0.4)
        await until(lambda: link.counters.failures >= 1)
        assert link.state is not LinkState.CONNECTED
        await until(lambda: len(recorder.boots) == 2)
    assert recorder.reasons[0] == "connection lost (no close frame from the CSMS)"


async def test_redials_after_http_503_on_upgrade(csms: Csms) -> None:
    recorder = Recorder()
    async with running(make_link(csms.url, recorder)) as link:
        await until(lambda: len(recorder.boots) == 1)
        await csms.outage(0.4, http_status=503)
        await until(lambda: link.counters.failures >= 1)
        assert link.last_error == "HTTP 503 on websocket upgrade"
        await until(lambda: len(recorder.boots) == 2)


async def test_redials_after_pong_timeout() -> None:
    """A server that completes the upgrade and then never answers a ping."""
    accepted = 0

    async def mute_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        request = await reader.readuntil(b"\r\n\r\n")
        match = re.search(rb"sec-websocket-key:\s*(\S+)", request, re.IGNORECASE)
        assert match is not None
        digest = hashlib.sha1(match.group(1) + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + base64.b64encode(digest) + b"\r\n"
                     b"Sec-WebSocket-Protocol: ocpp1.6\r\n\r\n")
        await writer.drain()
        while await reader.read(4096):  # swallow pings, answer nothing
            pass
        writer.close()

    async def no_boot(session: OcppSession) -> None:
        return None

    server = await asyncio.start_server(mute_peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    recorder = Recorder()
    link = make_link(f"ws://127.0.0.1:{port}", recorder, ping_interval=0.1, ping_timeout=0.1)
    link._on_connected = no_boot
    try:
        async with running(link):
            await until(lambda: accepted >= 2)
    finally:
        server.close()
    assert recorder.reasons[0] == "pong timeout (keepalive ping unanswered)"


async def test_fails_clearly_when_server_does_not_select_ocpp16() -> None:
    async def handler(connection: ServerConnection) -> None:
        await connection.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:  # no subprotocols: none selected
        recorder = Recorder()
        port = server.sockets[0].getsockname()[1]
        async with running(make_link(f"ws://127.0.0.1:{port}", recorder)) as link:
            await until(lambda: link.counters.failures >= 2)
        assert link.counters.connects == 0 and recorder.sessions == []
        assert link.last_error is not None and "did not accept subprotocol ocpp1.6" in link.last_error


async def test_failing_on_connected_hook_closes_and_redials(csms: Csms) -> None:
    calls = 0

    async def flaky_boot(session: OcppSession) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boot logic bug")
        await session.request(call.Heartbeat())

    recorder = Recorder()
    link = make_link(csms.url, recorder)
    link._on_connected = flaky_boot
    async with running(link):
        await until(lambda: len(csms.messages("CP1", "Heartbeat")) == 1)
        assert link.counters.connects == 2
    # The agent closed this one itself (issue 11 item 18: it used to be logged as closed by the CSMS).
    assert recorder.reasons[0].startswith("closed by the charge point with code 1011"), recorder.reasons


async def test_cancelling_run_propagates_and_closes(csms: Csms) -> None:
    recorder = Recorder()
    link = make_link(csms.url, recorder)
    task = asyncio.create_task(link.run())
    await until(lambda: len(recorder.boots) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert link.state is LinkState.DISCONNECTED
    await until(lambda: csms.connected_ids == [])


# -- issue 11 items 13 and 18: frame size bound; who closed; why a dial failed -------------------------------


async def test_oversized_frame_is_refused_and_the_close_is_ours() -> None:
    """A CSMS frame above MAX_FRAME_BYTES: the agent closes with 1009 and says that it closed, not the CSMS."""
    from agent.ocpp.v16.rpc import MAX_FRAME_BYTES

    sent_big = asyncio.Event()

    async def handler(connection: ServerConnection) -> None:
        await connection.recv()  # the BootNotification
        await connection.send('[3, "stray", {"junk": "' + "x" * (MAX_FRAME_BYTES + 1000) + '"}]')
        sent_big.set()
        await connection.wait_closed()

    async with serve(handler, "127.0.0.1", 0, subprotocols=[Subprotocol("ocpp1.6")], max_size=None) as server:
        recorder = Recorder()
        port = server.sockets[0].getsockname()[1]
        link = make_link(f"ws://127.0.0.1:{port}", recorder)
        link._on_connected = lambda session: session.request(call.Heartbeat())
        async with running(link):
            await until(lambda: len(recorder.reasons) >= 1)
    assert sent_big.is_set()
    assert recorder.reasons[0].startswith("closed by the charge point with code 1009"), recorder.reasons


async def test_tls_11_only_server_failure_names_type_and_reason(tmp_path: Path) -> None:
    """An asyncio TLS server that only speaks TLS 1.1 resets the handshake without an alert: the OSError
    has no text at all. The log used to say "connection failed: " and nothing else."""
    ca = make_ca("Test CA")
    server_cert = leaf(ca, "127.0.0.1", server=True)
    cert_path, key_path = server_cert.write(tmp_path, "server")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_path, key_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_context.set_ciphers("DEFAULT:@SECLEVEL=0")
        server_context.minimum_version = ssl.TLSVersion.TLSv1
        server_context.maximum_version = ssl.TLSVersion.TLSv1_1
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.load_verify_locations(cadata=ca.pem)
    client_context.minimum_version = ssl.TLSVersion.TLSv1_2

    async def handler(connection: ServerConnection) -> None:
        await connection.wait_closed()

    async with serve(handler, "127.0.0.1", 0, ssl=server_context) as server:
        recorder = Recorder()
        port = server.sockets[0].getsockname()[1]
        link = make_link(f"wss://127.0.0.1:{port}", recorder, security_profile=3, ssl_context=client_context)
        async with running(link):
            await until(lambda: link.counters.failures >= 1)
    error = link.last_error
    assert error is not None and not error.rstrip().endswith(":"), error
    assert "ConnectionResetError" in error or "SSL" in error, error
    assert len(error.split(":", 1)[1].strip()) > 10, error  # a reason, not just a label
