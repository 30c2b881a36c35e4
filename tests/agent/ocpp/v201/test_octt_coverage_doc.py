"""docs/octt-201-coverage.md against the code: every test a row names exists under that name (a test function
of that file, found with ``ast``: no import, no collection), every OCTT case has one row, and the totals line
is the count of the rows. Pure: reads two kinds of files, runs nothing."""

from __future__ import annotations

import ast
import re
from collections import Counter
from functools import cache

from tests.agent.ocpp.v201.conftest import REPO

DOC = REPO / "docs" / "octt-201-coverage.md"
CASE_TABLES = ("## Core", "## Advanced Security")
REF = re.compile(r"(tests/[\w/]+\.py)(?:::(\w+))?")
TOTALS = re.compile(
    r"Totals: (\d+) cases \((\d+) Core, (\d+) Advanced Security\); (\d+) covered end to end, (\d+) by a unit test "
    r"only, (\d+) by a strict xfail test, (\d+) missing, (\d+) not applicable\.")


def case_rows(text: str) -> dict[str, list[list[str]]]:
    """The rows of the two case tables, by section: the cells of each ``| TC_... |`` line."""
    rows: dict[str, list[list[str]]] = {section: [] for section in CASE_TABLES}
    section = None
    for line in text.splitlines():
        if line.startswith("## "):
            section = line.strip() if line.strip() in CASE_TABLES else None
        elif section is not None and line.startswith("| TC_"):
            rows[section].append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def kind(cells: list[str]) -> str:
    """How a row counts in the totals (the page's own wording)."""
    applies, covered = cells[3], cells[4]
    if applies.startswith("no"):
        return "not applicable"
    if covered == "-":
        return "missing"
    if "xfail" in covered:
        return "xfail"
    if "unit test" in covered:
        return "unit"
    return "end to end"


@cache
def functions_of(path: str) -> frozenset[str]:
    tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
    return frozenset(node.name for node in tree.body
                     if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_"))


def test_every_named_test_exists_under_that_name() -> None:
    text = DOC.read_text(encoding="utf-8")
    refs = REF.findall(text)
    assert len(refs) > 100
    wrong = [f"{path}::{name}" if name else path for path, name in refs
             if not (REPO / path).is_file() or (name and name not in functions_of(path))]
    assert wrong == []


def test_one_row_per_case_and_the_totals_are_the_counts_of_the_rows() -> None:
    text = DOC.read_text(encoding="utf-8")
    rows = case_rows(text)
    cases = [cells[0] for section in CASE_TABLES for cells in rows[section]]
    assert all(re.fullmatch(r"TC_[A-Z]_\d{2}_CS", case) for case in cases), cases
    assert [case for case, n in Counter(cases).items() if n > 1] == []
    assert all(len(cells) == 5 for section in CASE_TABLES for cells in rows[section])
    counts = Counter(kind(cells) for section in CASE_TABLES for cells in rows[section])
    found = TOTALS.search(" ".join(text.split()))
    assert found is not None, "the totals line changed its wording"
    total, core, security, e2e, unit, xfail, missing, not_applicable = map(int, found.groups())
    assert (total, core, security) == (len(cases), len(rows["## Core"]), len(rows["## Advanced Security"]))
    assert (e2e, unit, xfail, missing, not_applicable) == (
        counts["end to end"], counts["unit"], counts["xfail"], counts["missing"], counts["not applicable"])


def test_an_applicable_case_without_a_test_is_listed_as_missing() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = [cells[0] for section in CASE_TABLES for cells in case_rows(text)[section]
               if kind(cells) == "missing"]
    listed = text.split("## Still missing (applicable, no test)", 1)[1]
    assert all(case in listed for case in missing)
    if not missing:
        assert listed.strip().startswith("None.")


def test_the_row_reader_counts_what_the_page_says() -> None:
    """The reader itself on a small page: a wrong total or a duplicated case is seen."""
    page = ("## Core\n\n| OCTT case | a | b | c | d |\n|---|---|---|---|---|\n"
            "| TC_A_01_CS | x | M | yes | `tests/t.py::test_a` |\n"
            "| TC_A_02_CS | x | C | no: reason | - |\n"
            "| TC_A_03_CS | x | C | yes | `tests/t.py::test_b` — unit test of the machine only |\n"
            "## Advanced Security\n\n| TC_A_04_CS | x | M | yes | - |\n")
    rows = case_rows(page)
    assert [len(rows[s]) for s in CASE_TABLES] == [3, 1]
    assert [kind(c) for s in CASE_TABLES for c in rows[s]] == ["end to end", "not applicable", "unit", "missing"]
