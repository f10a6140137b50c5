"""The ``faber-runlog`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from faber_runlog.errors import FaberRunlogError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faber-runlog", description="Run ids, event logs and run state.")
    parser.add_argument("--root", help="store root: a folder or any fsspec URL (default: $FABER_RUNLOG_ROOT "
                        "or .fractary/plugins/faber/runs)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="log a short demo run and print its state")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 operation failed, 2 bad usage)."""
    args = _parser().parse_args(argv)
    try:
        from faber_runlog.store import RunStore

        store = RunStore(args.root)
        if args.command == "demo":
            from faber_runlog.demo import run_demo

            run_demo(store)
        return 0
    except FaberRunlogError as e:
        if args.debug:
            raise
        print(f"faber-runlog: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
