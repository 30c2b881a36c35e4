"""The security profile never goes down (issue 11 item 16): not below the TOML's ocpp.security_profile and
not below the profile in use, whether the request comes from the CSMS (ChangeConfiguration) or from cpctl
(any member of the socket's group). Security whitepaper 1.6 ed. 2, 2.4 "It is NOT allowed to downgrade
the security profile"; the only way down is the charge point's own fallback to the last working settings
after the new ones failed to connect."""

from __future__ import annotations

import asyncio
import base64
import sys
from pathlib import Path

from agent.ocpp.v16.security import APPLY_LOCAL_CHANGE_AFTER_S
from tests.agent.ocpp.conftest import CP, Octt, eventually

PASSWORD = "InitialPassword-01"


async def cpctl(socket: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.ctl", "--socket", str(socket), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"{CP}:{password}".encode()).decode()


def write_toml(octt: Octt, profile: int) -> None:
    octt.rig.options.password = PASSWORD
    octt.rig.options.security_profile = profile
    (octt.rig.dir / "agent.toml").write_text(octt.rig.agent_toml())


async def profile_key(octt: Octt) -> str:
    got = await octt.csms.send(CP, "GetConfiguration", {"key": ["SecurityProfile"]})
    value: str = got["configurationKey"][0]["value"]
    return value


async def test_cpctl_cannot_lower_the_profile_below_the_toml(octt: Octt) -> None:
    write_toml(octt, 1)
    octt.csms.password = PASSWORD
    agent = await octt.start_agent()
    await octt.booted()
    assert agent.station is not None and agent.service is not None
    socket = agent.station.config.diag_socket
    code, out = await cpctl(socket, "config", "set", "SecurityProfile", "0")
    assert code != 0 and "Rejected" in out, (code, out)
    assert agent.service.store.get_int("SecurityProfile") == 1
    # A cpctl change is applied after APPLY_LOCAL_CHANGE_AFTER_S: wait past it; no redial, no bare handshake.
    await asyncio.sleep(APPLY_LOCAL_CHANGE_AFTER_S + 0.8)
    assert [h.authorization for h in octt.csms.handshakes] == [basic(PASSWORD)]
    assert await profile_key(octt) == "1"


async def test_a_raised_profile_is_not_lowered_by_cpctl_or_the_csms(octt: Octt) -> None:
    write_toml(octt, 0)  # the TOML allows 0; the CSMS raises it to 1 at run time
    octt.csms.password = None
    agent = await octt.start_agent()
    await octt.booted()
    assert agent.station is not None and agent.service is not None
    security = agent.service.features["Security"]
    octt.csms.password = PASSWORD  # from now on the CSMS wants Basic auth
    raised = await octt.csms.send(CP, "ChangeConfiguration", {"key": "SecurityProfile", "value": "1"})
    assert raised == {"status": "Accepted"}
    await eventually(lambda: security.confirmed.profile == 1 and agent.service and agent.service.online, 8,
                     "profile 1 confirmed")
    handshakes = len(octt.csms.handshakes)
    assert octt.csms.handshakes[-1].authorization == basic(PASSWORD)

    code, out = await cpctl(agent.station.config.diag_socket, "config", "set", "SecurityProfile", "0")
    assert code != 0 and "Rejected" in out, (code, out)
    lowered = await octt.csms.send(CP, "ChangeConfiguration", {"key": "SecurityProfile", "value": "0"})
    assert lowered == {"status": "Rejected"}
    await asyncio.sleep(APPLY_LOCAL_CHANGE_AFTER_S + 0.8)
    assert len(octt.csms.handshakes) == handshakes  # no redial
    assert await profile_key(octt) == "1"

    # After a restart the raised profile still holds, although the TOML says 0.
    await octt.restart_agent()
    await octt.csms.wait_connected(CP, within=8)
    assert octt.csms.handshakes[-1].authorization == basic(PASSWORD)
    assert await profile_key(octt) == "1"
