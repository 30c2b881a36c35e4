"""Fuzzing the 2.0.1 agent from a hostile central system over a real websocket on 127.0.0.1.

The bundled CSMS (speaking ocpp2.0.1) turns hostile both ways, as test_fuzz_ocpp_wire.py does for 1.6:

- its CALLs: every CSMS->station action that acts only locally (device model, reports, availability,
  remote start/stop, triggers, certificates, local list, customer information ...), valid ones and mutated
  ones (a field dropped, an unknown field, a value of the wrong type, huge or non-finite numbers, 40 kB
  strings, deep nesting), unknown actions and 1.6 actions, frames of an unknown message type, NaN in the
  JSON, text that is not JSON, and stray CALLRESULTs / CALLERRORs for ids never sent;
- its *replies* to the station's own CALLs (BootNotification, Heartbeat, StatusNotification,
  TransactionEvent, NotifyReport ... provoked by the CALLs above and by a session charging underneath):
  CALLERRORs of every code, wrong types, junk objects, hostile currentTime/interval/idTokenInfo, text that
  is not JSON.

After every batch: every well-formed CALL got exactly one answer with its MessageId; a CALLERROR uses a
2.0.1 error code; a CALLRESULT is valid against the action's 2.0.1 response schema, and a request that the
2.0.1 request schema refuses never gets a CALLRESULT; an unknown message type gets MessageTypeNotSupported;
the agent's tasks are alive, its event loop stayed responsive and it logged a bounded amount. Then the
CSMS turns honest and the agent must show nothing was wedged: a triggered Heartbeat comes, a GetVariables
is answered (validated by the CSMS), the outbox drains."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ocpp.exceptions import OCPPError
from ocpp.messages import Call, CallResult, validate_payload

from simulator.csms import Csms, CsmsCallError
from simulator.rig import Rig, RigOptions
from tests.agent.ocpp.v201.conftest import CP, TAG, Octt201, eventually
from tests.reliability.harness import SOAK
from tests.reliability.test_fuzz_ocpp import json_value

BATCH = 10
EXAMPLES = 300 if SOAK else 30
ANSWER_WITHIN_S = 20.0
MAX_LOOP_LAG_S = 1.0
MAX_LOG_BYTES = 200_000  # at INFO and above over the whole run
ERROR_CODES_201 = {"FormatViolation", "GenericError", "InternalError", "MessageTypeNotSupported", "NotImplemented",
                   "NotSupported", "OccurrenceConstraintViolation", "PropertyConstraintViolation", "ProtocolError",
                   "RpcFrameworkError", "SecurityError", "TypeConstraintViolation"}

hostile_number = st.one_of(st.integers(-10, 100), st.integers(-(2**80), 2**80),
                           st.sampled_from([1e308, -1e308, 1e-320, 2**63, 2**64, 10**30, 0.5, -0.0]))
hostile_time = st.one_of(st.sampled_from(["9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00",
                                          "2024-02-30T00:00:00Z", "not a time", "", "+275760-09-13T00:00:00Z"]),
                         st.integers(-(2**40), 2**40), st.none())
evse_id = st.integers(-1, 3)
token_types = st.sampled_from(["ISO14443", "ISO15693", "eMAID", "Central", "Local", "KeyCode", "MacAddress",
                               "NoAuthorization", "Bogus"])
id_token = st.fixed_dictionaries({"idToken": st.one_of(st.sampled_from([TAG, "UNKNOWN01", ""]), st.text(max_size=40)),
                                  "type": token_types})
id_token_info = st.one_of(
    st.fixed_dictionaries({"status": st.sampled_from(["Accepted", "Blocked", "Expired", "Invalid", "Unknown",
                                                      "ConcurrentTx", "NoCredit", "Bogus"])},
                          optional={"cacheExpiryDateTime": hostile_time, "groupIdToken": id_token,
                                    "evseId": st.lists(hostile_number, max_size=3)}),
    json_value)
component = st.fixed_dictionaries(
    {"name": st.sampled_from(["OCPPCommCtrlr", "TxCtrlr", "SampledDataCtrlr", "AlignedDataCtrlr", "AuthCtrlr",
                              "AuthCacheCtrlr", "EVSE", "Connector", "ChargingStation", "DeviceDataCtrlr",
                              "NoSuchCtrlr"])},
    optional={"evse": st.fixed_dictionaries({"id": evse_id}, optional={"connectorId": st.integers(-1, 3)}),
              "instance": st.text(max_size=10)})
variable = st.fixed_dictionaries(
    {"name": st.sampled_from(["HeartbeatInterval", "TxUpdatedInterval", "TxUpdatedMeasurands", "TxStartPoint",
                              "TxStopPoint", "Available", "AvailabilityState", "Power", "SupplyPhases",
                              "LocalPreAuthorize", "AuthorizeRemoteStart", "MessageTimeout", "OfflineThreshold",
                              "Enabled", "NoSuchVariable"])},
    optional={"instance": st.sampled_from(["Default", "TransactionEvent", "x"])})
attribute = st.sampled_from(["Actual", "Target", "MinSet", "MaxSet", "Bogus"])
value_text = st.one_of(st.sampled_from(["0", "1", "60", "-1", "1e3", "٣٦٠٠", "true", "EVConnected,Authorized",
                                        "Energy.Active.Import.Register", "99999999999999999999"]),
                       st.text(max_size=30))
certificate_use = st.sampled_from(["V2GRootCertificate", "MORootCertificate", "CSMSRootCertificate",
                                   "ManufacturerRootCertificate", "V2GCertificateChain"])
triggerable = st.sampled_from(["BootNotification", "LogStatusNotification", "FirmwareStatusNotification",
                               "Heartbeat", "MeterValues", "SignChargingStationCertificate", "SignV2GCertificate",
                               "StatusNotification", "TransactionEvent", "SignCombinedCertificate",
                               "PublishFirmwareStatusNotification"])

# CSMS -> station actions that act only locally (no downloads/uploads, no reset, no network profile):
# the network stays on 127.0.0.1 and the test's agent keeps running.
VALID201: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "GetVariables": st.fixed_dictionaries({"getVariableData": st.lists(st.fixed_dictionaries(
        {"component": component, "variable": variable}, optional={"attributeType": attribute}), min_size=1,
        max_size=4)}),
    "SetVariables": st.fixed_dictionaries({"setVariableData": st.lists(st.fixed_dictionaries(
        {"attributeValue": value_text, "component": component, "variable": variable},
        optional={"attributeType": attribute}), min_size=1, max_size=4)}),
    "GetBaseReport": st.fixed_dictionaries({"requestId": st.integers(-5, 2**31 - 1), "reportBase": st.sampled_from(
        ["ConfigurationInventory", "FullInventory", "SummaryInventory", "Bogus"])}),
    "GetReport": st.fixed_dictionaries({"requestId": st.integers(-5, 100)}, optional={
        "componentCriteria": st.lists(st.sampled_from(["Active", "Available", "Enabled", "Problem"]), max_size=4),
        "componentVariable": st.lists(st.fixed_dictionaries({"component": component},
                                                            optional={"variable": variable}), max_size=3)}),
    "ChangeAvailability": st.fixed_dictionaries({"operationalStatus": st.sampled_from(["Operative", "Inoperative"])},
                                                optional={"evse": st.fixed_dictionaries(
                                                    {"id": evse_id}, optional={"connectorId": st.integers(-1, 3)})}),
    "ClearCache": st.just({}),
    "DataTransfer": st.fixed_dictionaries({"vendorId": st.text(max_size=20)},
                                          optional={"messageId": st.text(max_size=10), "data": json_value}),
    "RequestStartTransaction": st.fixed_dictionaries({"idToken": id_token, "remoteStartId": hostile_number},
                                                     optional={"evseId": evse_id}),
    "RequestStopTransaction": st.fixed_dictionaries({"transactionId": st.text(max_size=40)}),
    "UnlockConnector": st.fixed_dictionaries({"evseId": evse_id, "connectorId": st.integers(-1, 3)}),
    "TriggerMessage": st.fixed_dictionaries({"requestedMessage": triggerable}, optional={
        "evse": st.fixed_dictionaries({"id": evse_id}, optional={"connectorId": st.integers(-1, 3)})}),
    "GetTransactionStatus": st.fixed_dictionaries({}, optional={"transactionId": st.text(max_size=40)}),
    "GetLocalListVersion": st.just({}),
    "SendLocalList": st.fixed_dictionaries({"versionNumber": hostile_number, "updateType": st.sampled_from(
        ["Full", "Differential"])}, optional={"localAuthorizationList": st.lists(st.fixed_dictionaries(
            {"idToken": id_token}, optional={"idTokenInfo": id_token_info}), max_size=4)}),
    "CertificateSigned": st.fixed_dictionaries({"certificateChain": st.one_of(st.text(max_size=60), st.just(
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))}, optional={
        "certificateType": st.sampled_from(["ChargingStationCertificate", "V2GCertificate"])}),
    "InstallCertificate": st.fixed_dictionaries({"certificateType": certificate_use,
                                                 "certificate": st.text(max_size=60)}),
    "GetInstalledCertificateIds": st.fixed_dictionaries({}, optional={
        "certificateType": st.lists(st.sampled_from(["V2GRootCertificate", "MORootCertificate", "CSMSRootCertificate",
                                                     "V2GCertificateChain", "ManufacturerRootCertificate"]),
                                    max_size=3)}),
    "CustomerInformation": st.fixed_dictionaries({"requestId": st.integers(-1, 100), "report": st.booleans(),
                                                  "clear": st.booleans()},
                                                 optional={"idToken": id_token,
                                                           "customerIdentifier": st.text(max_size=20)}),
    "CancelReservation": st.fixed_dictionaries({"reservationId": hostile_number}),
    "GetCompositeSchedule": st.fixed_dictionaries({"duration": hostile_number, "evseId": evse_id}),
    "ClearDisplayMessage": st.fixed_dictionaries({"id": hostile_number}),
    "FlyToTheMoon": st.just({}),  # not an action at all
    "RemoteStartTransaction": st.just({"idTag": TAG}),  # a 1.6 action
}


@st.composite
def mutated(draw: st.DrawFn, payload: dict[str, Any]) -> dict[str, Any]:
    kind = draw(st.sampled_from(["keep", "keep", "drop", "add", "retype", "huge", "deep"]))
    out = dict(payload)
    keys = sorted(out)
    if kind == "drop" and keys:
        out.pop(draw(st.sampled_from(keys)))
    elif kind == "add":
        out[draw(st.sampled_from(["extra", "customData", "evse"]))] = draw(json_value)
    elif kind == "retype" and keys:
        out[draw(st.sampled_from(keys))] = draw(st.one_of(json_value, hostile_number, hostile_time))
    elif kind == "huge" and keys:
        out[draw(st.sampled_from(keys))] = "x" * draw(st.integers(1000, 40_000))
    elif kind == "deep" and keys:
        depth = draw(st.integers(10, 2000))
        out[draw(st.sampled_from(keys))] = json.loads("[" * depth + "]" * depth)
    return out


@st.composite
def csms_call(draw: st.DrawFn) -> tuple[str, Any]:
    action = draw(st.sampled_from(sorted(VALID201)))
    return "call", (action, draw(mutated(draw(VALID201[action]))))


# Valid triggers make the station send CALLs of its own, which meet the fuzzed replies.
trigger = st.tuples(st.just("call"), st.tuples(st.just("TriggerMessage"), st.fixed_dictionaries(
    {"requestedMessage": st.sampled_from(["BootNotification", "Heartbeat", "StatusNotification", "MeterValues",
                                          "TransactionEvent"])},
    optional={"evse": st.just({"id": 1, "connectorId": 1})})))

frames = st.one_of(
    csms_call(), csms_call(), csms_call(), csms_call(), trigger, trigger,
    st.tuples(st.just("type"), st.sampled_from([0, 5, 6, 7, 99])),  # unknown message type, readable id
    st.tuples(st.just("nan"), st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"])),
    st.tuples(st.just("garbage"), st.sampled_from(["not json", "[", "{}", "[]", "[2]", '[2, 17, "Heartbeat", {}]',
                                                   '"text"', "null", "[3]"])),
    st.tuples(st.just("stray"), st.sampled_from([3, 4])),
)


def good_reply(action: str) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if action == "BootNotification":
        return {"status": "Accepted", "currentTime": now, "interval": 300}
    if action == "Heartbeat":
        return {"currentTime": now}
    if action == "Authorize":
        return {"idTokenInfo": {"status": "Accepted"}}
    if action in ("DataTransfer", "SignCertificate"):
        return {"status": "Accepted"}
    return {}


@st.composite
def replies(draw: st.DrawFn) -> Callable[[str, str], str]:
    """How the hostile CSMS answers one of the station's CALLs (raw text), as a function of the action."""
    kind = draw(st.sampled_from(["good", "mutated", "mutated", "mutated", "error", "wrong-type", "junk", "text"]))
    fields = {"currentTime": draw(hostile_time), "interval": draw(hostile_number), "idTokenInfo": draw(id_token_info),
              "status": draw(st.sampled_from(["Accepted", "Rejected", "Pending", "Bogus"])), "extra": draw(json_value)}
    code = draw(st.sampled_from([*sorted(ERROR_CODES_201), "NoSuchCode"]))
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3, unique=True))

    def reply(action: str, uid: str) -> str:
        if kind == "good":
            return json.dumps([3, uid, good_reply(action)])
        if kind == "error":
            return json.dumps([4, uid, code, "hostile", {}])
        if kind == "wrong-type":
            return json.dumps([3, uid, [fields["extra"]]])
        if kind == "junk":
            extra = fields["extra"]
            return json.dumps([3, uid, extra if isinstance(extra, dict) else {"x": extra}])
        if kind == "text":
            return "this is not JSON"
        payload = good_reply(action)
        for name in chosen:
            if action == "BootNotification" and name == "status":
                continue  # a Rejected boot silences the station by design (B03): not a defect to look for
            payload[name] = fields[name]
        return json.dumps([3, uid, payload])

    return reply


class LogCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.bytes = 0
        self.recent: deque[str] = deque(maxlen=30)

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        self.bytes += len(message)
        self.recent.append(f"{record.name} {record.levelname} {message[:200]}")


async def schema_error(message: Call | CallResult) -> str | None:
    try:
        await validate_payload(message, "2.0.1")
    except (OCPPError, NotImplementedError, RecursionError, ValueError) as error:
        return f"{type(error).__name__}: {str(error)[:200]}"
    return None


class Target:
    """CSMS (hostile on demand), rig and in-process 2.0.1 agent on an event loop of their own."""

    def __init__(self, directory: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.counter = LogCounter()
        logging.getLogger().addHandler(self.counter)
        self.csms = Csms(accept=[TAG], heartbeat_interval=300, version="2.0.1")
        self.plan: deque[Callable[[str, str], str]] = deque()
        self.csms.hostile_reply = self._hostile_reply
        self.next_id = 0
        self.max_lag = 0.0
        self.calls = 0
        self.hostile_replies = 0  # station CALLs answered by the hostile plan
        self.run(self._start(directory))

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def _hostile_reply(self, _: str, action: str, uid: str, __: dict[str, Any]) -> str | None:
        if action == "BootNotification" and not self.csms.messages(CP, "BootNotification")[:-1]:
            return None  # the first boot is answered honestly: the fuzzing is about an accepted station
        if not self.plan:
            return None
        self.hostile_replies += 1
        return self.plan.popleft()(action, uid)

    async def _start(self, directory: Path) -> None:
        await self.csms.start()
        self.rig = Rig(RigOptions(directory=directory, csms_url=self.csms.url, charge_point_id=CP,
                                  ocpp_version="2.0.1"))
        await self.rig.start()
        self.octt = Octt201(self.csms, self.rig)
        await self.octt.start_agent({"OCPPCommCtrlr/MessageAttempts.TransactionEvent": 2,
                                     "OCPPCommCtrlr/MessageTimeout.Default": 2})
        self.lag_task = asyncio.create_task(self._lag_probe())
        await self.octt.wait_status("Available", within=15)
        # A session charges underneath, so its transaction messages meet the fuzzed replies.
        self.octt.ctl("plug", connector=1)
        await asyncio.sleep(0.5)
        assert self.octt.agent is not None
        await self.octt.agent.tap(TAG)

    async def _lag_probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            self.max_lag = max(self.max_lag, loop.time() - before - 0.01)

    def close(self) -> None:
        async def stop() -> None:
            self.lag_task.cancel()
            if self.octt.agent is not None:
                await self.octt.agent.stop()
            await self.rig.stop()
            await self.csms.stop()

        try:
            self.run(stop())
        finally:
            logging.getLogger().removeHandler(self.counter)
            self.loop.close()

    def encode(self, kind: str, arg: Any) -> tuple[str, str | None, Any]:
        """(text, MessageId an answer must carry or None, what the test expects of the answer)."""
        self.next_id += 1
        uid = f"fz{self.next_id}"
        if kind == "call":
            action, payload = arg
            return json.dumps([2, uid, action, payload]), uid, (action, payload)
        if kind == "type":
            return json.dumps([arg, uid, "Heartbeat", {}]), uid, "type"
        if kind == "nan":
            return f'[2, "{uid}", "GetVariables", {{"getVariableData": {arg}}}]', None, None
        if kind == "garbage":
            return arg, None, None
        text = (json.dumps([3, f"never-{uid}", {"pad": "x" * 100}]) if arg == 3
                else json.dumps([4, f"never-{uid}", "GenericError", "stray", {}]))
        return text, None, None

    async def exchange(self, batch: list[tuple[str, Any]], plan: list[Callable[[str, str], str]]) -> None:
        await eventually(lambda: self.csms.version_of(CP) == "2.0.1", 20, "the station's connection")
        self.plan.extend(plan)
        self.max_lag = 0.0
        expected: dict[str, Any] = {}
        for kind, arg in batch:
            text, uid, expect = self.encode(kind, arg)
            if uid is not None:
                expected[uid] = expect
            await self.csms.send_raw(CP, text)
        self.calls += len(expected)
        answers = self.csms.raw_answers
        try:
            await eventually(lambda: all(uid in answers for uid in expected), ANSWER_WITHIN_S, "answers")
        except AssertionError:
            missing = [(uid, str(expected[uid])[:200]) for uid in expected if uid not in answers]
            recent = "\n".join(self.counter.recent)
            raise AssertionError(f"unanswered frames: {missing}; the agent's last log lines:\n{recent}") from None
        await asyncio.sleep(0.05)  # a second answer to one CALL would arrive right after the first
        for uid, expect in expected.items():
            await self.check_answer(uid, expect, answers[uid])
        assert self.max_lag <= MAX_LOOP_LAG_S, f"event loop lag {self.max_lag:.2f} s"
        assert self.counter.bytes <= MAX_LOG_BYTES, f"{self.counter.bytes} bytes logged at INFO and above"
        agent = self.octt.agent
        assert agent is not None
        for task in agent._tasks:
            assert not task.done(), f"agent task ended: {task}"

    async def check_answer(self, uid: str, expect: Any, got: list[Any]) -> None:
        assert len(got) == 1, f"{len(got)} answers to {str(expect)[:200]}: {got}"
        frame = got[0]
        if expect == "type":
            assert frame[0] == 4 and frame[2] == "MessageTypeNotSupported", frame
            return
        action, payload = expect
        assert frame[0] in (3, 4), frame
        if frame[0] == 4:
            assert len(frame) == 5 and frame[2] in ERROR_CODES_201, f"{action}: {frame}"
            assert isinstance(frame[4], dict), frame
            return
        assert len(frame) == 3 and isinstance(frame[2], dict), frame
        request_problem = await schema_error(Call(uid, action, payload))
        assert request_problem is None, f"CALLRESULT {frame[2]} to {action} {str(payload)[:300]} that the " \
                                        f"request schema refuses ({request_problem})"
        answer_problem = await schema_error(CallResult(uid, frame[2], action))
        assert answer_problem is None, f"{action} {str(payload)[:300]} answered {frame[2]}: {answer_problem}"

    async def honest_again(self) -> None:
        """The CSMS turns honest: the agent must show that nothing was wedged or killed."""
        self.csms.hostile_reply = None
        self.plan.clear()
        await eventually(lambda: self.csms.version_of(CP) == "2.0.1", 20, "the station's connection")
        heartbeats = len(self.csms.messages(CP, "Heartbeat"))
        # Triggered messages still waiting behind a hostile answer's MessageTimeout may hold the station's
        # bound on CALLs in progress for a while (it answers GenericError "too many CALLs" meanwhile).
        deadline = time.monotonic() + 30
        while True:
            try:
                result = await self.csms.send(CP, "TriggerMessage", {"requestedMessage": "Heartbeat"})
                break
            except CsmsCallError as error:
                if error.code != "GenericError" or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        assert result["status"] == "Accepted"
        try:
            await self.csms.wait_for(CP, "Heartbeat", count=heartbeats + 1, within=20)
        except TimeoutError:
            agent = self.octt.agent
            service = agent.service if agent is not None else None
            received = [(m.action, str(m.payload)[:80]) for m in self.csms.messages(CP)[-12:]]
            raise AssertionError(
                f"no Heartbeat after an accepted TriggerMessage; boot status "
                f"{getattr(service, 'boot_status', None)}; last CALLs received: {received}; the agent's last log "
                "lines:\n" + "\n".join(self.counter.recent)) from None
        variables = await self.csms.send(CP, "GetVariables", {"getVariableData": [
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "OfflineThreshold"}}]})
        assert variables["getVariableResult"][0]["attributeStatus"] == "Accepted", variables
        agent = self.octt.agent
        assert agent is not None and agent.service is not None
        outbox = agent.service.outbox
        await eventually(lambda: outbox.depth() == 0, 30, "the outbox to drain")


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    t = Target(tmp_path)
    yield t
    t.close()


def test_hostile_csms_201_cannot_wedge_the_station(target: Target) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=not SOAK, database=None,
              suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(frames, min_size=BATCH // 2, max_size=BATCH), plan=st.lists(replies(), max_size=6))
    def exchange(batch: list[tuple[str, Any]], plan: list[Callable[[str, str], str]]) -> None:
        target.run(target.exchange(batch, plan))

    exchange()
    target.run(target.honest_again())
    assert target.calls >= EXAMPLES, target.calls
    assert target.hostile_replies >= 2, "the station's own CALLs never met a hostile reply"
