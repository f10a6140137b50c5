"""Every numbered rule of docs/concurrency.md has a test, and every citation of a rule names one that exists.

The rules come in three series, each numbered from 1: the lease rules ("Leases, claims and fencing"),
the protocol rules ("The protocol: the log is the only truth", continued by "Many writers on one run")
and the run index rules ("The run index"). A test proves a rule with ``@pytest.mark.rule(series, number)``;
this module reads the markers from the tests' source with ``ast`` (not from a collection, so it does
not depend on which tests ran or in what order), and reads the rules from the docs as they are now.
Code cites a rule as ``(protocol rule 4)``, ``(lease rules 8 and 9)``, ``(index rule 2)``.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import faber_runlog

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PKG = Path(faber_runlog.__file__).resolve().parent
DOC = ROOT / "docs" / "concurrency.md"

SERIES = {
    "Leases, claims and fencing": "lease",
    "The protocol: the log is the only truth": "protocol",
    "Many writers on one run": "protocol",
    "The run index": "index",
}
"""The sections of docs/concurrency.md that hold numbered rules, and the series each belongs to."""

_ITEM = re.compile(r"^(\d+)\.\s+\*\*(.+?)\*\*", re.MULTILINE | re.DOTALL)
_CITATION = re.compile(
    r"\b(?:(?P<series>[A-Za-z]+)(?:'s)?\s+)?[Rr]ules?\s+(?P<numbers>\d+(?:\s*(?:-|,|and|to)\s*\d+)*)",
)


class Marker(NamedTuple):
    """One ``pytest.mark.rule(...)`` in a test module: where it is, what it names, and what was wrong with it."""

    where: str
    series: str
    number: int
    problem: str = ""


def doc_rules(text: str) -> dict[tuple[str, int], str]:
    """The numbered rules of the docs' rule sections: (series, number) -> title."""
    rules: dict[tuple[str, int], str] = {}
    for section in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        heading, _, body = section.partition("\n")
        series = SERIES.get(heading.strip())
        if series is None:
            continue
        for match in _ITEM.finditer(body):
            key = (series, int(match.group(1)))
            assert key not in rules, f"docs/concurrency.md numbers {series} rule {key[1]} twice"
            rules[key] = " ".join(match.group(2).split())
    return rules


def _is_rule_mark(node: ast.expr) -> bool:
    return ast.unparse(node) in ("pytest.mark.rule", "mark.rule")


def markers_in(source: str, filename: str) -> list[Marker]:
    """Every ``pytest.mark.rule(...)`` call in a module's source, named by the test it marks."""
    tree = ast.parse(source, filename)
    owners: dict[int, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for decorator in node.decorator_list:
                for inner in ast.walk(decorator):
                    owners[id(inner)] = node.name
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and _is_rule_mark(node.func)):
            continue
        where = f"{filename}::{owners.get(id(node), f'line {node.lineno}')}"
        args = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
        if node.keywords or len(args) != 2 or not isinstance(args[0], str) or type(args[1]) is not int:
            found.append(Marker(where, "", 0, f"{ast.unparse(node)}: give a series and a number, as literals"))
            continue
        found.append(Marker(where, args[0], args[1]))
    return found


def suite_markers() -> list[Marker]:
    """The rule markers of every test module."""
    found = []
    for path in sorted(TESTS.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        if "mark.rule" in source:  # parse only the modules that can hold one: the suite is large
            found.extend(markers_in(source, path.name))
    return found


def _numbers(text: str) -> list[int]:
    """The rule numbers of a citation: ``4``, ``8 and 9``, ``13 to 19``, ``8-9``, ``3, 4 and 9``."""
    out: list[int] = []
    for part in re.split(r"\s*(?:,|and)\s*", text):
        ends = [int(n) for n in re.split(r"\s*(?:-|to)\s*", part) if n]
        out.extend(range(ends[0], ends[-1] + 1))
    return out


def citation_problems(text: str, where: str, rules: dict[tuple[str, int], str]) -> list[str]:
    """Citations of rules in ``text`` that name no series or a rule the docs do not have."""
    series_names = set(SERIES.values())
    problems = []
    for match in _CITATION.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        series = (match.group("series") or "").lower()
        if series not in series_names:
            problems.append(f"{where}:{line}: {match.group(0)!r} names no series ({', '.join(sorted(series_names))})")
            continue
        missing = [n for n in _numbers(match.group("numbers")) if (series, n) not in rules]
        if missing:
            problems.append(f"{where}:{line}: {match.group(0)!r}: docs/concurrency.md has no {series} rule {missing}")
    return problems


def test_the_docs_number_rules_in_every_series_from_one_without_gaps() -> None:
    rules = doc_rules(DOC.read_text(encoding="utf-8"))
    by_series: dict[str, list[int]] = defaultdict(list)
    for series, number in rules:
        by_series[series].append(number)
    expected = {series: list(range(1, len(numbers) + 1)) for series, numbers in by_series.items()}
    assert (sorted(set(SERIES.values())), expected) == (sorted(by_series), dict(by_series))


def test_every_rule_of_the_docs_has_a_test_and_every_marker_names_a_rule() -> None:
    rules = doc_rules(DOC.read_text(encoding="utf-8"))
    markers = suite_markers()
    proved = {(m.series, m.number) for m in markers if not m.problem}
    untested = [
        f"{series} rule {number} ({rules[series, number]})"
        for series, number in rules
        if (series, number) not in proved
    ]
    unknown = [
        f"{m.where}: {m.problem or f'{m.series} rule {m.number} is not in docs/concurrency.md'}"
        for m in markers
        if m.problem or (m.series, m.number) not in rules
    ]
    assert ([], []) == (untested, unknown), (
        "rules with no test marked @pytest.mark.rule(series, number):\n  "
        + "\n  ".join(untested)
        + "\nmarkers naming no rule:\n  "
        + "\n  ".join(unknown)
    )


def test_every_rule_the_package_cites_names_its_series_and_exists() -> None:
    rules = doc_rules(DOC.read_text(encoding="utf-8"))
    problems = []
    for path in sorted(PKG.rglob("*.py")):
        problems.extend(citation_problems(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)), rules))
    assert [] == problems, "cite rules as (protocol rule 4), (lease rules 8 and 9), (index rule 2):\n" + "\n".join(
        problems
    )


def test_the_checks_of_this_module_find_what_they_look_for() -> None:
    # The checks above pass vacuously if a parser finds nothing: pin each on a small sample.
    doc = (
        "# t\n## Leases, claims and fencing\n\n1. **Renew.** x\n2. **Never\n   delete.** y\n"
        "## The run index\n\n1. **One log.** z\n## Costs\n\n1. **Not a rule.** w\n"
    )
    rules = doc_rules(doc)
    assert {("lease", 1): "Renew.", ("lease", 2): "Never delete.", ("index", 1): "One log."} == rules
    source = (
        "import pytest\n"
        "@pytest.mark.rule('lease', 2)\ndef test_a(): pass\n"
        "@pytest.mark.slow\n@pytest.mark.rule('index', number=1)\ndef test_b(): pass\n"
        "pytestmark = pytest.mark.rule('protocol', 3)\n"
    )
    assert [
        Marker("m.py::test_a", "lease", 2),
        Marker("m.py::test_b", "", 0, "pytest.mark.rule('index', number=1): give a series and a number, as literals"),
        Marker("m.py::line 7", "protocol", 3),
    ] == markers_in(source, "m.py")
    text = "x (lease rules 1 and 2) y (rule 2) z (index rule 4) (lease rules 1-3) Rule 1: w\n(protocol's rule 1)"
    assert [
        "f.py:1: 'rule 2' names no series (index, lease, protocol)",
        "f.py:1: 'index rule 4': docs/concurrency.md has no index rule [4]",
        "f.py:1: 'lease rules 1-3': docs/concurrency.md has no lease rule [3]",
        "f.py:1: 'Rule 1' names no series (index, lease, protocol)",
        'f.py:2: "protocol\'s rule 1": docs/concurrency.md has no protocol rule [1]',
    ] == citation_problems(text, "f.py", rules)
