"""service_base.compact_handlers: the CSMS-request handlers as one action table shared by services whose owners
are of the same classes, each method bound when looked up; anything else stays the plain dict."""

from __future__ import annotations

from typing import Any

from agent.ocpp.service_base import BoundHandlers, WrappedHandlers, compact_handlers


class _Core:
    def __init__(self, tag: str) -> None:
        self.tag = tag

    async def on_reset(self, **kwargs: Any) -> str:
        return f"reset by {self.tag}"


class _Feature:
    def __init__(self, tag: str) -> None:
        self.tag = tag

    async def on_reserve_now(self, **kwargs: Any) -> str:
        return f"reserved by {self.tag} {kwargs}"


def _on(core: _Core, feature: _Feature) -> dict[str, Any]:
    return {"Reset": core.on_reset, "ReserveNow": feature.on_reserve_now}


async def test_methods_become_one_shared_table_bound_per_lookup() -> None:
    first_core, first_feature = _Core("a"), _Feature("a")
    second_core, second_feature = _Core("b"), _Feature("b")
    first = compact_handlers(_on(first_core, first_feature), (first_core, first_feature))
    second = compact_handlers(_on(second_core, second_feature), (second_core, second_feature))
    assert isinstance(first, BoundHandlers) and isinstance(second, BoundHandlers)
    assert first._table is second._table  # one table for the process
    assert sorted(first) == ["ReserveNow", "Reset"] and len(first) == 2 and "Reset" in first and "Nope" not in first
    assert await first["Reset"]() == "reset by a" and await second["Reset"]() == "reset by b"
    assert await second["ReserveNow"](id=3) == "reserved by b {'id': 3}"
    assert first.get("Nope") is None
    gated = WrappedHandlers(first, lambda action, handler: handler)  # as the services wrap it
    assert await gated["ReserveNow"]() == "reserved by a {}"


def test_an_instance_level_handler_or_a_closure_keeps_the_plain_dict() -> None:
    core, feature = _Core("c"), _Feature("c")

    async def on_reset(**kwargs: Any) -> str:
        return "patched"

    core.on_reset = on_reset  # type: ignore[method-assign]
    on = _on(core, feature)
    assert compact_handlers(on, (core, feature)) is on
    other = {"Reset": _Core("d").on_reset}  # its owner is not one of the owners given
    assert compact_handlers(other, (core, feature)) is other
