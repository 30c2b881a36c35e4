"""OCPP 2.0.1 TC_B_50_CS (success) and TC_B_47_CS (fallback) - moving to a new CSMS whose server certificate
comes from a new root, over real TLS websockets on 127.0.0.1: InstallCertificate (CSMSRootCertificate, the new
root), SetNetworkProfile to a free slot with the new CSMS's URL (security profile 2), NetworkConfigurationPriority
with that slot first, Reset (a restart of the agent on the same state), then the station connects to the new CSMS
(B_50) or, when that fails NetworkProfileConnectionAttempts times, uses the old profile again (B_47).

In B_47 the new CSMS's TLS handshake fails: it presents a certificate of a root the station was never given,
the same failure the OCTT's new CSMS produces before its root is right; B_50 then has it present a certificate
of the installed new root. AdditionalRootCertificateCheck stays false (its default), so the old root stays
trusted next to the new one and the old profile remains usable for the fallback."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

from simulator.csms import Csms
from tests.agent.ocpp.test_octt_security import PASSWORD, Issued, Pki, leaf, make_ca
from tests.agent.ocpp.test_octt_security import pki as pki  # the fixture
from tests.agent.ocpp.v201.conftest import CP, Octt201, eventually
from tests.agent.ocpp.v201.test_tc_a_b_security import closing as closing  # the fixture
from tests.agent.ocpp.v201.test_tc_a_b_security import (
    get_variable,
    harness,
    network_profile,
    security_events,
    set_variable,
)


def server_context(root: Issued, directory: Path, name: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert_path, key_path = leaf(root, "csms.test", server=True).write(directory, name)
    context.load_cert_chain(cert_path, key_path)
    return context


async def test_tc_b_47_b_50_cs_new_csms_with_new_root(tmp_path: Path, pki: Pki, closing: list[Octt201]) -> None:
    octt = await harness(tmp_path, profile=2, pki=pki)  # the old CSMS: wss://, Basic auth, the old root
    closing.append(octt)
    old = octt.csms
    first = await octt.start_agent({"OCPPCommCtrlr/NetworkProfileConnectionAttempts": 2})
    await octt.booted()
    await eventually(lambda: not first.service.features["Security"].in_trial, 5, "slot 1 confirmed")

    new_root, rogue_root = make_ca("New CPO Root"), make_ca("Not Installed Root")
    new = Csms(accept=["DEADBEEF01"], password=PASSWORD, version="2.0.1",
               ssl_context=server_context(rogue_root, pki.dir, "new-csms"))
    await new.start()
    try:
        installed = await octt.send("InstallCertificate", {"certificateType": "CSMSRootCertificate",
                                                           "certificate": new_root.pem})
        assert installed["status"] == "Accepted"

        # TC_B_47_CS: the new CSMS cannot be connected to (its certificate is not of an installed root)
        answer = await octt.send("SetNetworkProfile",
                                 {"configurationSlot": 2, "connectionData": network_profile(new.url, 2)})
        assert answer["status"] == "Accepted"
        assert await set_variable(octt, "OCPPCommCtrlr", "NetworkConfigurationPriority", "2,1") == "RebootRequired"
        agent = await octt.restart_agent()  # what Reset OnIdle does
        await eventually(lambda: agent.service.online and agent.service.endpoint == old.url, 10,
                         "fallback to the old CSMS")
        assert len(new.handshakes) == 0  # TLS refused before any websocket upgrade
        assert CP not in new.connected_ids
        await octt.wait_status("Available", count=2)
        assert await get_variable(octt, "OCPPCommCtrlr", "ActiveNetworkProfile") == "1"
        await eventually(lambda: "InvalidCsmsCertificate" in security_events(octt), 5, "the refused CSMS reported")
        await eventually(lambda: any("network profile 2 could not connect" in (m.payload.get("techInfo") or "")
                                     for m in octt.msgs("SecurityEventNotification")), 5, "the fallback reported")

        # TC_B_50_CS: the new CSMS presents a certificate of the installed new root
        assert new.ssl_context is not None
        cert_path, key_path = leaf(new_root, "csms.test", server=True).write(pki.dir, "new-csms-good")
        new.ssl_context.load_cert_chain(cert_path, key_path)
        answer = await octt.send("SetNetworkProfile",
                                 {"configurationSlot": 3, "connectionData": network_profile(new.url, 2)})
        assert answer["status"] == "Accepted"
        assert await set_variable(octt, "OCPPCommCtrlr", "NetworkConfigurationPriority", "3,1") == "RebootRequired"
        agent = await octt.restart_agent()
        await eventually(lambda: agent.service.online and CP in new.connected_ids, 10, "on the new CSMS")
        assert agent.service.endpoint == new.url
        octt.csms = new  # the new CSMS drives the rest
        await octt.booted()
        await eventually(lambda: not agent.service.features["Security"].in_trial, 5, "slot 3 confirmed")
        assert await get_variable(octt, "OCPPCommCtrlr", "ActiveNetworkProfile") == "3"
        assert await get_variable(octt, "SecurityCtrlr", "SecurityProfile") == "2"
        assert CP not in old.connected_ids
    finally:
        octt.csms = old
        with contextlib.suppress(Exception):
            await new.stop()
