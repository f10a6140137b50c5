"""What an error tells its reader to do, in the terms of the surface they are on: one table, three renderings.

The library's messages are written for Python callers ("re-run it (Resumer(store).rerun /
faber-runlog rerun)", "pass allow_cancelled=True"); :func:`advice` renders the same message for
the command line (``faber-runlog rerun RUN_ID``, ``--allow-cancelled``) or an MCP client (the
tool to call), and drops pointers to ``docs/`` pages, which are not installed with the package.
Python callers keep ``str(error)`` as it is. Each row of :data:`ADVICE` is one piece of advice:
its key, the Python phrase as messages spell it, and its CLI and MCP wording; the CLI's error
printer and the MCP server's tool errors both render through it.
"""

from __future__ import annotations

import re
from typing import Final, Literal

import attrs

__all__ = ["ADVICE", "Advice", "Surface", "advice", "advice_keys"]

Surface = Literal["python", "cli", "mcp"]


@attrs.frozen(slots=True)
class Advice:
    """One piece of advice: ``pattern`` finds its Python wording in a message; ``cli``/``mcp`` replace it."""

    key: str
    pattern: re.Pattern[str]
    cli: str
    mcp: str


def _row(key: str, pattern: str, cli: str, mcp: str) -> Advice:
    return Advice(key, re.compile(pattern), cli, mcp)


# Order matters: the longer forms (with "/ faber-runlog ..." or "(run_id)") come before their prefixes.
ADVICE: Final[tuple[Advice, ...]] = (
    _row(
        "rerun",
        r"(?:Resumer\(store\)\.rerun(?:\(run_id\))?|\brerun\(\))(?: / faber-runlog rerun)?",
        "`faber-runlog rerun RUN_ID`",
        "the rerun_run tool",
    ),
    _row(
        "resume",
        r"Resumer\(store\)\.resume(?:\(run_id\))?(?: / faber-runlog resume| \(faber-runlog resume\))?",
        "`faber-runlog resume RUN_ID`",
        "the resume_run tool",
    ),
    _row(
        "unpause",
        r"\b(?:run|Run)\.(?:unpause|resume)(?:\(\))?(?: / faber-runlog resume)?",
        "`faber-runlog resume RUN_ID`",
        "change_run_status with action 'unpause'",
    ),
    _row(
        "fail",
        r"\brun\.fail(?:\(\))?(?: / faber-runlog fail)?",
        "`faber-runlog fail RUN_ID --error TEXT`",
        "change_run_status with action 'fail'",
    ),
    _row(
        "retry_step",
        r"\brun\.retry_step(?:\(\))?(?: / faber-runlog retry-step)?",
        "`faber-runlog retry-step RUN_ID PHASE STEP`",
        "the change_step tool (retry)",
    ),
    _row(
        "decide",
        r"\brun\.decide(?:\(\))?(?: / faber-runlog approve or reject)?",
        "`faber-runlog approve` or `faber-runlog reject`",
        "the decide_approval tool",
    ),
    _row(
        "start",
        r"workflow_start, or run\.start\(\)",
        "`faber-runlog start RUN_ID`",
        "change_run_status with action 'start'",
    ),
    _row("allow_cancelled", r"pass allow_cancelled=True", "pass --allow-cancelled", "pass allow_cancelled: true"),
    _row("list_runs", r"\blist_runs\(\)", "`faber-runlog list`", "the list_runs tool"),
    _row("verify", r"\bverify(?:_run)?\(\)", "`faber-runlog verify RUN_ID`", "`faber-runlog verify RUN_ID`"),
    _row("sweep", r"\bsweep_stale\(\)", "`faber-runlog sweep`", "the sweep_stale_runs tool"),
    _row(
        "open_run",
        r"open it with get_run\(\) instead",
        "see it with `faber-runlog show RUN_ID`",
        "read it with the get_state tool",
    ),
    _row(
        "event_types",
        r"types \(listed in docs/layout-and-events\.md\)",
        "types (`faber-runlog event-types` lists them)",
        "types",
    ),
    _row(
        "register_event_type",
        r"(?:faber_runlog\.)?register_event_type\(\)",
        "a declaration in gateway.json",
        "a declaration in gateway.json",
    ),
    # Pages of docs/ are not installed with the package: on the CLI and in MCP the pointer goes.
    _row("docs", r" ?\((?:see |listed in )?docs/[\w-]+\.md(?:#[\w-]+)?\)", "", ""),
)
"""The advice table: every piece of advice a message may carry, with its CLI and MCP wording."""


def _text(error: BaseException | str) -> str:
    text = error if isinstance(error, str) else str(error)
    return " ".join(text.split())


def advice_keys(error: BaseException | str) -> list[str]:
    """The keys of the advice ``error``'s message carries (``["rerun", "list_runs"]``), in table order."""
    text = _text(error)
    return [row.key for row in ADVICE if row.pattern.search(text)]


def advice(error: BaseException | str, surface: Surface) -> str:
    """``error``'s message on one line, its advice worded for ``surface`` (``python`` leaves it as it is)."""
    text = _text(error)
    if surface == "python":
        return text
    for row in ADVICE:
        text = row.pattern.sub(row.cli if surface == "cli" else row.mcp, text)
    return text
