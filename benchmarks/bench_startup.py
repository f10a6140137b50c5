"""Start-up: the wall time of `faber-runlog --help` next to `python -c pass` (target <= 0.3 s).

The facade loads its names lazily and the CLI imports a command's modules only when it runs,
so `--help` pays for argparse and the event types, not for the archive, analysis, gateway or
fsspec's async machinery.
"""

from __future__ import annotations

import subprocess
import sys

from _common import Row, best_of

HELP_LIMIT_S = 0.3


def _wall(args: list[str]) -> float:
    return best_of(5, lambda: subprocess.run([sys.executable, *args], check=True, capture_output=True))


def run(*, quick: bool) -> list[Row]:  # noqa: ARG001  (every suite's signature; startup has one size)
    bare = _wall(["-c", "pass"])
    cli_help = _wall(["-m", "faber_runlog", "--help"])
    package = _wall(["-c", "import faber_runlog"])
    return [
        Row("start-up: faber-runlog --help (s)", cli_help, "python -c pass", bare, "s", f"<= {HELP_LIMIT_S} s",
            cli_help / bare, cli_help <= HELP_LIMIT_S),
        Row("start-up: import faber_runlog (s)", package, "python -c pass", bare, "s", "", package / bare, None),
    ]  # fmt: skip  # a table: one row per line
