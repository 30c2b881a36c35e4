"""`cpsim fleet --loop`: uvloop when installed (auto), asyncio's own loop on request, and a precise error
when uvloop is asked for but missing. The 50-station kill -9 test runs its first fleet on uvloop and the rerun
on asyncio's loop, over the same state files."""

from __future__ import annotations

import asyncio
import builtins
from typing import Any

import pytest

from simulator.fleet.cli import choose_loop, main


def test_asyncio_is_its_own_loop_and_uvloop_is_a_factory_of_uvloop_loops() -> None:
    assert choose_loop("asyncio") is None
    for choice in ("auto", "uvloop"):
        factory = choose_loop(choice)
        assert factory is not None
        loop = factory()
        try:
            assert type(loop).__module__.startswith("uvloop")
            assert loop.run_until_complete(asyncio.sleep(0, "ran")) == "ran"
        finally:
            loop.close()


def test_uvloop_missing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real_import = builtins.__import__

    def no_uvloop(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvloop":
            raise ImportError("No module named 'uvloop'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    assert choose_loop("auto") is None  # falls back, with a warning
    with pytest.raises(RuntimeError, match=r"--loop uvloop: the uvloop package is not installed"):
        choose_loop("uvloop")
    assert main(["--csms", "ws://127.0.0.1:9/", "--stations", "1", "--loop", "uvloop"]) == 2
    assert "pip install 'chargepoint-agent[fleet]'" in capsys.readouterr().err
