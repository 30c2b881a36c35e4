"""OCPP 2.0.1 transport security (A00, TC_A_04_CS / TC_A_05_CS style): security profile 2 (TLS with the
configured CA + HTTP Basic) against the bundled CSMS on a real TLS websocket; a server certificate the CA did
not issue is refused and nothing is sent."""

from __future__ import annotations

import base64
from pathlib import Path

from simulator.csms import Csms
from simulator.rig import Rig, RigOptions
from tests.agent.ocpp.test_octt_security import PASSWORD, Pki, leaf, make_ca
from tests.agent.ocpp.test_octt_security import pki as pki  # the fixture
from tests.agent.ocpp.v201.conftest import CP, Octt201, eventually


async def _harness(tmp_path: Path, pki: Pki) -> Octt201:
    csms = Csms(accept=["DEADBEEF01"], password=PASSWORD, version="2.0.1", ssl_context=pki.server_context())
    await csms.start()
    rig = Rig(RigOptions(directory=tmp_path / "rig", csms_url=csms.url, charge_point_id=CP, ocpp_version="2.0.1",
                         security_profile=2, password=PASSWORD, ca_file=pki.ca_file))
    await rig.start()
    return Octt201(csms, rig)


async def test_tc_a_04_cs_profile_2_tls_and_basic_auth(tmp_path: Path, pki: Pki) -> None:
    octt = await _harness(tmp_path, pki)
    try:
        assert octt.csms.url.startswith("wss://")
        await octt.start_agent()
        await octt.booted()
        expected = "Basic " + base64.b64encode(f"{CP}:{PASSWORD}".encode()).decode()
        assert octt.csms.handshakes[-1].authorization == expected
    finally:
        if octt.agent is not None:
            await octt.agent.stop()
        await octt.rig.stop()
        await octt.csms.stop()


async def test_tc_a_05_cs_untrusted_server_certificate_is_refused(tmp_path: Path, pki: Pki) -> None:
    other = make_ca("Someone Else")
    pki.server = leaf(other, "csms.test", server=True)  # the CSMS presents a chain our CA did not issue
    octt = await _harness(tmp_path, pki)
    try:
        agent = await octt.start_agent()
        await eventually(lambda: agent.service.link.counters.failures >= 1, within=5, what="refused dial")
        assert "certificate" in (agent.service.link.last_error or "").lower()
        assert not octt.csms.handshakes and not octt.msgs()
    finally:
        if octt.agent is not None:
            await octt.agent.stop()
        await octt.rig.stop()
        await octt.csms.stop()
