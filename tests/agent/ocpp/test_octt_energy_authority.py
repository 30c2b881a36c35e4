"""One authority for "energy allowed" (issue 11 item 2), end to end: real websocket to the bundled CSMS,
the simulator's pilot board, contactor, meter and EV underneath.

OCPP 1.6 section 9.1 (Core Profile keys) StopTransactionOnInvalidId=false with MaxEnergyOnInvalidId: when the
CSMS answers StartTransaction.conf with a non-Accepted idTagInfo, the transaction stays open but the charge
point stops the energy (once MaxEnergyOnInvalidId Wh are delivered). Nothing on the charge point may grant
it again: not the pilot changes that follow (the EV falls back to C1/B1), not the end of the 3 s X1 hold,
not a pause/charge cycle of the EV, not an unplug and re-plug into the transaction kept open by
StopTransactionOnEVSideDisconnect=false. The connector reports SuspendedEVSE meanwhile (section 7.7
ChargePointStatus: the EVSE is not offering energy "as the result of StartTransaction.conf indicating that
charging is not allowed"). Keys are set at run time with ChangeConfiguration, as a CSMS does.
"""

from __future__ import annotations

import asyncio

from agent.charge_control import EnergyHold
from tests.agent.ocpp.conftest import CP, TAG, Octt, eventually
from tests.agent.ocpp.test_octt_offline import go_offline, plug

STRANGER = "STRANGER1"  # unknown to the CSMS: StartTransaction.conf says Invalid
MAX_ENERGY_WH = 6  # about a second of the simulated EV's 22 kW


async def _configure(octt: Octt, **keys: str) -> None:
    for key, value in keys.items():
        answer = await octt.csms.send(CP, "ChangeConfiguration", {"key": key, "value": value})
        assert answer == {"status": "Accepted"}, (key, answer)


async def _no_energy_for(octt: Octt, seconds: float) -> None:
    """Relay open, no current and no PWM offer for the whole period (sampled every 10 ms)."""
    plant = octt.rig.connectors[1].plant
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        assert not plant.relay_commanded_closed and not plant.relay_closed, "relay closed again"
        assert plant.current_a == 0
        assert plant.pwm_duty in (None, 0.0), f"PWM offered again ({plant.pwm_duty} %)"
        await asyncio.sleep(0.01)


async def test_invalid_id_hold_survives_x1_hold_and_ev_b_c_cycle(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    await _configure(octt, AllowOfflineTxForUnknownId="true", StopTransactionOnInvalidId="false",
                     MaxEnergyOnInvalidId=str(MAX_ENERGY_WH), StopTransactionOnEVSideDisconnect="false")
    plant = octt.rig.connectors[1].plant
    await go_offline(octt, agent, 1.0)
    await plug(octt, agent)
    assert (await agent.tap(STRANGER)).accepted  # offline, unknown id allowed
    await eventually(lambda: plant.relay_closed and plant.current_a > 0, 8, "charging offline")
    start = await octt.wait("StartTransaction", within=10)  # back online: .conf Invalid
    assert start.payload["idTag"] == STRANGER
    c = agent.connector
    await eventually(lambda: EnergyHold.INVALID_ID in c.energy_holds, 20, "energy held for the invalid idTag")
    await eventually(lambda: not plant.relay_closed, 7, "relay open")  # X1, the EV leaves C within 6 s
    session = c.session
    assert session is not None

    await _no_energy_for(octt, 4.0)  # past the 3 s X1 hold, with the pilot changes the stop caused (C -> B)
    octt.ctl("ev", connector=1, action="pause")
    await _no_energy_for(octt, 0.5)
    octt.ctl("ev", connector=1, action="charge")  # the EV wants energy again: it gets no PWM to answer
    await _no_energy_for(octt, 4.0)
    assert c.controller.cp_state is not None and c.controller.cp_state.value == "B1"

    octt.ctl("unplug")  # the transaction stays open (StopTransactionOnEVSideDisconnect=false)
    await eventually(lambda: c.controller.cp_state is not None and c.controller.cp_state.letter == "A", 3, "A")
    await _no_energy_for(octt, 0.5)
    await plug(octt, agent)  # re-plugged into the open transaction: still the invalid idTag's
    await _no_energy_for(octt, 4.0)

    assert c.session is session and octt.msgs("StopTransaction") == []  # the transaction goes on
    assert c.energy_holds == {EnergyHold.INVALID_ID}
    assert c.view().energy_holds == {EnergyHold.INVALID_ID}  # what cpctl --json status shows (agent/diag.py)
    await octt.wait_status("SuspendedEVSE")
    assert c.status().value == "SuspendedEVSE"

    # The hold belonged to that session: after it ends, a valid card charges again.
    assert (await agent.tap(STRANGER)).accepted  # the session's own card stops it
    stop = await octt.wait("StopTransaction", within=8)
    assert stop.payload["reason"] == "Local"
    assert c.energy_holds == {EnergyHold.NOT_AUTHORIZED}
    await octt.charging(TAG)
    await eventually(lambda: plant.relay_closed and plant.current_a > 0, 8, "charging with a valid card")
