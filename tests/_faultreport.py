"""Collect fault-test results and render the table in docs/reliability.md.

Tests call :func:`record`; rows go to the JSON-lines file named by
``$FABER_FAULT_REPORT`` (nothing is written when it is unset). Render with::

    FABER_FAULT_REPORT=/tmp/faults.jsonl python -m pytest -q -p no:cacheprovider \\
        tests/test_faults.py tests/test_crash_loop.py tests/test_properties.py tests/test_hostile.py
    python tests/_faultreport.py /tmp/faults.jsonl --write docs/reliability.md
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

BEGIN = "<!-- fault-table:begin -->"
END = "<!-- fault-table:end -->"


def record(test: str, fault: str, injected: int, held: str, **extra: Any) -> None:
    """Append one row: which fault, how many times it was injected, what held."""
    target = os.environ.get("FABER_FAULT_REPORT")
    if not target:
        return
    row = {"test": test, "fault": fault, "injected": injected, "held": held, **extra}
    with open(target, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def render(rows: list[dict[str, Any]]) -> str:
    """A markdown table; rows with the same test and fault are summed."""
    merged: dict[tuple[str, str, str], int] = defaultdict(int)
    for r in rows:
        merged[(r["test"], r["fault"], r["held"])] += int(r["injected"])
    lines = ["| test | fault injected | times | what held |", "|---|---|---:|---|"]
    for (test, fault, held), n in sorted(merged.items()):
        lines.append(f"| `{test}` | {fault} | {n} | {held} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    source = Path(argv[0])
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    table = render(rows)
    if len(argv) >= 3 and argv[1] == "--write":
        doc = Path(argv[2])
        text = doc.read_text(encoding="utf-8")
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        doc.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}", encoding="utf-8")
    else:
        print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
