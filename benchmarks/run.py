"""Run every benchmark and print one table: each figure next to its limit or peer.

    python benchmarks/run.py            # full sizes
    python benchmarks/run.py --quick    # small sizes, for a smoke test

Ratios are what to read: ours / peer, measured in the same run on the same
machine (these machines are shared and noisy; absolute rates drift).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import Row

SUITES = [
    "bench_startup",
    "bench_core",
    "bench_resume",
    "bench_archive",
    "bench_reads",
    "bench_scale",
    "bench_contention",
    "bench_see",
    "bench_async",
    "bench_index",
]


def _fmt(value: float, unit: str) -> str:
    if unit.endswith("/s") or unit in ("ev/s",):
        return f"{value:,.0f} {unit}"
    return f"{value:,.2f} {unit}"


def render(rows: list[Row]) -> str:
    """The table as Markdown, so it can be pasted into notes as is."""
    head = "| benchmark | ours | limit / peer | peer figure | ratio | target | ok |"
    lines = [head, "|---|---:|---|---:|---:|---|---|"]
    for r in rows:
        ok = "" if r.ok is None else ("yes" if r.ok else "NO")
        lines.append(
            f"| {r.name} | {_fmt(r.ours, r.unit)} | {r.peer_name} | {_fmt(r.peer, r.unit)} | "
            f"{r.ratio:.2f}x | {r.target} | {ok} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test, not a measurement)")
    parser.add_argument("--only", nargs="*", help="run only these suites", default=None)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    rows: list[Row] = []
    failed = False
    for suite in args.only or SUITES:
        try:
            module = importlib.import_module(suite)
        except ModuleNotFoundError as e:
            print(f"(skipping {suite}: {e})", file=sys.stderr)
            continue
        t = time.perf_counter()
        try:
            got = module.run(quick=args.quick)
        except Exception as e:  # noqa: BLE001  (one broken suite must not hide the others' rows)
            traceback.print_exc()
            print(f"{suite}: FAILED ({type(e).__name__}: {e})", file=sys.stderr)
            failed = True
            continue
        print(f"{suite}: {len(got)} rows in {time.perf_counter() - t:.0f}s", file=sys.stderr)
        rows.extend(got)
    print(render(rows))
    return 0 if not failed and all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
