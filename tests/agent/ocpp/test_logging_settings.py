"""The [logging] table of a real `cpagent run` against the bundled CSMS (issue 11 item 3): the README's
`"cpagent.ocpp" = "debug"` shows the OCPP frames, `transitions` stays quiet unless asked for, and no fault is
reported as recovered that was never raised."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator

from tests.agent.ocpp.conftest import CP, Octt

BOOTED = "BootNotification: Accepted"


class AgentProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def wait_line(self, text: str, within: float = 15.0) -> None:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + within
        while not any(text in line for line in self.lines):
            try:
                raw = await asyncio.wait_for(self.proc.stderr.readline(), max(deadline - time.monotonic(), 0.01))
            except TimeoutError:
                raise AssertionError(f"no {text!r} in the agent's log:\n" + self.text()) from None
            if not raw:
                raise AssertionError(f"agent exited ({await self.proc.wait()}):\n" + self.text())
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)


@contextlib.asynccontextmanager
async def cpagent_run(octt: Octt, logging_table: str) -> AsyncIterator[AgentProcess]:
    """`python -m agent.cli run` on the rig's agent.toml plus `logging_table`; SIGTERM at the end, and the
    rest of its stderr is added to `lines`."""
    config = octt.rig.dir / "agent.toml"
    toml = config.read_text()
    assert "[logging]" not in toml
    config.write_text(toml + "\n" + logging_table)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "run", "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    agent = AgentProcess(proc)
    try:
        yield agent
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(proc.communicate(), 15)
        agent.lines += rest.decode(errors="replace").splitlines() if rest else []


async def test_cpagent_ocpp_debug_shows_the_frames(octt: Octt) -> None:
    # README "Configuration reference": logging.COMPONENT, e.g. "cpagent.ocpp" = "debug".
    async with cpagent_run(octt, '[logging]\n"cpagent.ocpp" = "debug"\n') as agent:
        await agent.wait_line(BOOTED)
    frames = [line for line in agent.lines if " DEBUG cpagent.ocpp." in line and '"BootNotification"' in line]
    assert frames, agent.text()
    assert f"{CP} > [2," in frames[0]  # the CALL frame as sent
    # The board answers at once: its BOARD_SILENT fault was never raised, so nothing has "recovered".
    assert not [line for line in agent.lines if "recovered" in line], agent.text()


async def test_transitions_lines_only_when_asked_for(octt: Octt) -> None:
    async with cpagent_run(octt, "") as agent:
        await agent.wait_line(BOOTED)
        octt.ctl("plug")  # A -> B: a state change of the IEC 61851 machine
        await octt.wait_status("Preparing")
    assert not [line for line in agent.lines if " DEBUG " in line], agent.text()  # root level INFO
    assert not [line for line in agent.lines if " transitions" in line], agent.text()
    octt.rig.dir.joinpath("agent.toml").write_text(octt.rig.agent_toml())  # without the [logging] table
    async with cpagent_run(octt, '[logging]\ntransitions = "info"\n') as agent:
        await agent.wait_line(BOOTED)
        octt.ctl("unplug")  # B -> A
        await agent.wait_line(" INFO transitions")
