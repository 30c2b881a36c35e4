"""A persistent EV diode fault (issue 11 item 8), end to end: the simulator's EV loses its pilot diode while
charging (`cpsim ctl fault 1 diode`), the real pilot board reports it over its pty, the agent reports it to the
bundled CSMS over a real websocket.

The board can check the diode only while PWM is on, so its flag drops as soon as the agent withdraws the PWM;
that drop says nothing about the EV. The connector must stay Faulted with the real errorCode
(EVCommunicationError, OCPP 1.6 section 7.6 ChargePointErrorCode; status Faulted, section 7.7) until the EV
is unplugged, and must not retry the PWM meanwhile (no Faulted/SuspendedEV flapping, no InternalError).
ReserveNow on a Faulted connector answers Faulted (section 5.13).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from simulator.csms import Received
from tests.agent.ocpp.conftest import CP, TAG, Octt, eventually

WINDOW_S = 8.0  # more than two of the old 3.3 s retry cycles


def _notes(octt: Octt, since: int) -> list[Received]:
    return [m for m in octt.msgs("StatusNotification")[since:] if m.payload["connectorId"] == 1]


async def test_persistent_diode_fault_is_reported_once_and_holds_until_unplug(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    await octt.charging(TAG)
    plant = octt.rig.connectors[1].plant
    since = len(octt.msgs("StatusNotification"))

    octt.ctl("fault", connector=1, name="diode")
    await eventually(lambda: any(m.payload["status"] == "Faulted" for m in _notes(octt, since)), 5, "Faulted")
    # Over the window: PWM stays off, the relay open, and no retry of the PWM.
    loop = asyncio.get_running_loop()
    end = loop.time() + WINDOW_S
    while loop.time() < end:
        assert plant.pwm_duty in (None, 0.0), f"PWM retried ({plant.pwm_duty} %) with a diode fault"
        assert not plant.relay_closed
        await asyncio.sleep(0.005)

    notes = [(m.payload["status"], m.payload["errorCode"]) for m in _notes(octt, since)]
    assert notes == [("Faulted", "EVCommunicationError")], notes
    assert agent.connector.session is not None  # the transaction is not ended by the fault

    expiry = (datetime.now(UTC) + timedelta(minutes=5)).isoformat(timespec="seconds").replace("+00:00", "Z")
    answer = await octt.csms.send(
        CP, "ReserveNow", {"connectorId": 1, "expiryDate": expiry, "idTag": TAG, "reservationId": 9}
    )
    assert answer == {"status": "Faulted"}

    # Unplugging ends it: the session stops (EV disconnected) and the connector is Available with NoError.
    octt.ctl("unplug")
    stop = await octt.wait("StopTransaction", within=8)
    assert stop.payload["reason"] == "EVDisconnected"
    await eventually(lambda: (n := _notes(octt, since)) and n[-1].payload["status"] == "Available"
                     and n[-1].payload["errorCode"] == "NoError", 5, "Available/NoError after unplug")
    notes = [(m.payload["status"], m.payload["errorCode"]) for m in _notes(octt, since)]
    assert ("Faulted", "InternalError") not in notes, notes
