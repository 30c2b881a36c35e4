"""Power loss under OCPP 2.0.1: kill -9 the real agent (`cpagent run`, both processes) at random moments of
charging sessions (boot, authorize, Started, Updated, the unplug, every 4th trial the replay of a queue
after an outage), restart it on the same state directory, and check at the CSMS that every transaction has
exactly one Started and one Ended, and seqNo 0..n without gaps; nothing after the Ended. Delivery is
at-least-once: a message whose CALLRESULT a kill or drop ate is sent again, byte-identical (same seqNo,
same timestamp); two *different* messages with one seqNo are a defect. `make test` runs one trial,
`make soak` (CPAGENT_SOAK=1) a hundred."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.agent.ocpp.v201.conftest import TAG, Octt201, eventually, new_csms, octt_on
from tests.reliability.harness import trials

TRIALS = trials(1, 100)
SESSION_S = 4.0  # plug .. unplug of one undisturbed session


@dataclass
class Verdict:
    transactions: int = 0
    resends: int = 0
    open: list[str] = field(default_factory=list)  # transactions without an Ended yet
    problems: list[str] = field(default_factory=list)


def check(events: list[dict[str, Any]]) -> Verdict:
    """The 2.0.1 transaction rules over the TransactionEvents the CSMS received, in arrival order."""
    verdict = Verdict()
    by_tx: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for event in events:
        by_tx[event["transactionInfo"]["transactionId"]][event["seqNo"]].append(json.dumps(event, sort_keys=True))
    verdict.transactions = len(by_tx)
    for tx, by_seq in by_tx.items():
        distinct = {seq: sorted(set(copies)) for seq, copies in by_seq.items()}
        verdict.resends += sum(len(copies) - 1 for copies in by_seq.values())
        for seq, copies in distinct.items():
            if len(copies) > 1:
                verdict.problems.append(f"{tx}: {len(copies)} different messages with seqNo {seq}")
        seqs = sorted(by_seq)
        if seqs != list(range(len(seqs))):
            verdict.problems.append(f"{tx}: seqNo {seqs} has gaps or does not start at 0")
        kinds = Counter(json.loads(copies[0])["eventType"] for copies in distinct.values())
        if kinds["Started"] != 1:
            verdict.problems.append(f"{tx}: {kinds['Started']} Started")
        if kinds["Ended"] > 1:
            verdict.problems.append(f"{tx}: {kinds['Ended']} Ended")
        if kinds["Ended"] == 0:
            verdict.open.append(tx)
            continue
        ended = next(seq for seq, copies in distinct.items() if json.loads(copies[0])["eventType"] == "Ended")
        if ended != seqs[-1]:
            verdict.problems.append(f"{tx}: seqNo {seqs[-1]} after the Ended (seqNo {ended})")
    return verdict


@pytest.fixture
async def octt(tmp_path: Path) -> AsyncIterator[Octt201]:
    server = new_csms()
    await server.start()
    try:
        async with octt_on(tmp_path, server) as harness:
            yield harness
    finally:
        await server.stop()


def power_off_plant(octt: Octt201) -> None:
    for sim in octt.rig.connectors.values():
        sim.plant.relay_commanded_closed = False
        sim.plant.pwm_duty = None


async def session(octt: Octt201, started_before: int) -> None:
    octt.ctl("plug")
    await asyncio.sleep(0.3)
    octt.ctl("tap", id_tag=TAG)
    await octt.wait_tx_event("Started", count=started_before + 1, within=10)
    await asyncio.sleep(1.5)
    octt.ctl("unplug")


def started_count(octt: Octt201) -> int:
    return len({e["transactionInfo"]["transactionId"] for e in octt.tx_events() if e["eventType"] == "Started"})


def test_check_finds_what_it_must() -> None:
    def event(tx: str, seq: int, kind: str, t: str = "T") -> dict[str, Any]:
        return {"eventType": kind, "seqNo": seq, "timestamp": t, "transactionInfo": {"transactionId": tx}}

    good = [event("a", 0, "Started"), event("a", 1, "Updated"), event("a", 1, "Updated"), event("a", 2, "Ended"),
            event("b", 0, "Started")]
    verdict = check(good)
    assert (verdict.transactions, verdict.resends, verdict.open, verdict.problems) == (2, 1, ["b"], [])
    bad = [event("a", 0, "Started"), event("a", 0, "Started", "T2"), event("a", 2, "Ended"),
           event("b", 0, "Started"), event("b", 1, "Ended"), event("b", 2, "Updated"), event("c", 0, "Updated"),
           event("c", 1, "Ended"), event("c", 2, "Ended")]
    problems = check(bad).problems
    assert any("2 different messages with seqNo 0" in p for p in problems)
    assert any(p.startswith("a: seqNo [0, 2] has gaps") for p in problems)
    assert any(p.startswith("b: seqNo 2 after the Ended") for p in problems)
    assert "c: 0 Started" in problems and "c: 2 Ended" in problems


async def test_kill_9_at_random_moments_every_transaction_one_started_one_ended(octt: Octt201) -> None:
    rng = random.Random(2013)
    kills = drops = 0
    t0 = time.monotonic()
    process = None
    for trial in range(TRIALS):
        boots = len(octt.msgs("BootNotification"))
        process = octt.start_process()
        if rng.random() < 0.15:  # during boot
            await asyncio.sleep(rng.uniform(0.2, 0.9))
            process.kill()
            kills += 1
            power_off_plant(octt)
            boots = len(octt.msgs("BootNotification"))
            process = octt.start_process()
        await octt.wait("BootNotification", count=boots + 1, within=20)
        flow = asyncio.create_task(session(octt, started_count(octt)))
        if trial % 4 == 3:  # queue up during an outage, kill during the replay
            await asyncio.sleep(1.2)
            await octt.csms.outage(1.5)
            drops += 1
            await asyncio.sleep(1.5)
            await octt.csms.wait_connected("CP1", within=10)
            await asyncio.sleep(rng.uniform(0.0, 0.6))
        else:
            await asyncio.wait({flow}, timeout=rng.uniform(0.5, SESSION_S))
        process.kill()
        kills += 1
        flow.cancel()
        await asyncio.gather(flow, return_exceptions=True)
        power_off_plant(octt)
        boots = len(octt.msgs("BootNotification"))
        process = octt.start_process()
        await octt.wait("BootNotification", count=boots + 1, within=20)
        octt.ctl("unplug")
        try:
            await eventually(lambda: not check(octt.tx_events()).open, 20, "every transaction Ended at the CSMS")
        except AssertionError:
            verdict = check(octt.tx_events())
            raise AssertionError(f"trial {trial}: open {verdict.open}, problems {verdict.problems}\n"
                                 f"{process.log()[-3000:]}") from None
        process.kill()
    verdict = check(octt.tx_events())
    print(f"\npower loss (2.0.1): {TRIALS} trials, {kills} kills, {drops} drops in {time.monotonic() - t0:.0f} s, "
          f"{verdict.transactions} transactions, {verdict.resends} byte-identical resends")
    assert verdict.problems == [], verdict.problems
    assert verdict.transactions >= 1
