"""The layering shows in the imports (issue 12): a layer never imports a layer above it.

Layers, bottom to top, and who may import whom (``ours`` = the packages hal, drivers, agent, simulator):

- ``hal/``       imports nothing of ours but ``hal``. Roles, value types, the clock, the generic task helpers.
- ``drivers/``   import only ``hal`` and ``drivers``. Codecs and transports implementing the hal roles.
- ``agent/``     imports ``hal`` and ``agent``; never ``drivers`` (drivers are found by name through the
                 ``cpagent.drivers`` entry-point registry in hal/registry.py) and never ``simulator``. The one
                 exception: a lazy, function-level import of ``simulator`` in agent/cli.py, so that
                 ``cpagent sim`` can start the demo without the agent depending on the simulator.
- ``simulator/`` is the top: it may import ``drivers`` (the same codecs at both ends of the wire), ``hal``
                 types, and ``agent`` where it runs the agent (the demos; the rig writing agent.toml).

Every ``import``/``from ... import`` is counted wherever it appears (module level, inside functions, under
``if TYPE_CHECKING:``); relative imports are resolved against the importing module's package. Calls of
``importlib.import_module("...")`` with a literal name count as imports too. A failure names file:line.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = ("hal", "drivers", "agent", "simulator")

# importer layer -> layers of ours it may import
ALLOWED: dict[str, frozenset[str]] = {
    "hal": frozenset({"hal"}),
    "drivers": frozenset({"hal", "drivers"}),
    "agent": frozenset({"hal", "agent"}),
    "simulator": frozenset({"hal", "drivers", "agent", "simulator"}),
}
# (importing file, imported layer) pairs allowed only as function-level (lazy) imports
LAZY_ONLY: frozenset[tuple[str, str]] = frozenset({("agent/cli.py", "simulator")})


@dataclass(frozen=True)
class Import:
    path: str  # relative to ROOT, posix
    line: int
    module: str  # absolute dotted name
    lazy: bool  # inside a function body

    @property
    def layer(self) -> str:
        return self.module.split(".", 1)[0]


def _module_name(path: Path) -> tuple[str, bool]:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        package = module.split(".") if is_package else module.split(".")[:-1]
        if node.level > 1:
            package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, node.module] if node.module else package)
    if node.module is None:  # `from . import x`: each x may be a submodule
        return [f"{base}.{alias.name}" for alias in node.names]
    return [base]


class _Collector(ast.NodeVisitor):
    def __init__(self, rel: str, module: str, is_package: bool) -> None:
        self.rel, self.module, self.is_package = rel, module, is_package
        self.depth = 0
        self.found: list[Import] = []

    def _add(self, node: ast.AST, name: str) -> None:
        self.found.append(Import(self.rel, getattr(node, "lineno", 0), name, self.depth > 0))

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function
    visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for name in _resolve(node, self.module, self.is_package):
            self._add(node, name)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if (name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            self._add(node, node.args[0].value)
        self.generic_visit(node)


def collect(layer: str) -> list[Import]:
    found: list[Import] = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        collector = _Collector(path.relative_to(ROOT).as_posix(), *_module_name(path))
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        found.extend(collector.found)
    return found


def violations(layer: str) -> list[str]:
    bad = []
    for imp in collect(layer):
        if imp.layer not in OURS:
            continue  # stdlib / third-party
        if imp.layer in ALLOWED[layer]:
            continue
        if (imp.path, imp.layer) in LAZY_ONLY and imp.lazy:
            continue
        where = "function-level" if imp.lazy else "module-level"
        bad.append(f"{imp.path}:{imp.line}: {layer}/ imports {imp.module} ({where})")
    return bad


def test_collector_sees_relative_lazy_and_dynamic_imports() -> None:
    """The checker itself: a relative import resolves against the package, a function-level import is lazy,
    a literal import_module counts. (Guards against a collector that silently finds nothing.)"""
    source = ("from . import tasks\nfrom ..agent import clock\n"
              "def f():\n    import simulator.csms\n    importlib.import_module('drivers.x')\n")
    collector = _Collector("hal/sub/mod.py", "hal.sub.mod", False)
    collector.visit(ast.parse(source))
    got = [(i.module, i.lazy) for i in collector.found]
    assert got == [("hal.sub.tasks", False), ("hal.agent", False), ("simulator.csms", True),
                   ("drivers.x", True)]
    # and on the real tree it finds the imports we know are there
    assert any(i.module.startswith("hal") for i in collect("drivers"))
    assert any(i.module.startswith("simulator") and i.lazy and i.path == "agent/cli.py" for i in collect("agent"))


def test_hal_imports_nothing_of_ours() -> None:
    bad = violations("hal")
    assert not bad, "hal/ must import only hal/ (stdlib and third-party are fine):\n" + "\n".join(bad)


def test_drivers_import_only_hal() -> None:
    bad = violations("drivers")
    assert not bad, "drivers/ must import only hal/ and drivers/:\n" + "\n".join(bad)


def test_agent_never_imports_drivers_or_simulator() -> None:
    bad = violations("agent")
    assert not bad, ("agent/ must not import drivers/ (found through hal/registry.py) nor simulator/ (only a "
                     "function-level import in agent/cli.py):\n" + "\n".join(bad))


def test_old_module_paths_are_gone() -> None:
    """The clock and the task helpers moved to hal/ without re-export shims: the old paths do not exist."""
    for old in ("agent/clock.py", "agent/tasks.py", "agent/demo.py", "agent/demo_smart_charging.py"):
        assert not (ROOT / old).exists(), f"{old} should have moved (no shim)"
