"""Hints for error messages: the close matches of a mistyped name ("did you mean ...?")."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["check_status_filter", "did_you_mean"]


def did_you_mean(word: object, choices: Iterable[str], *, cutoff: float = 0.6) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``choices`` to ``word``, or ``""`` when none is close."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=3, cutoff=cutoff)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def check_status_filter(status: str | None) -> None:
    """Refuse a run-status filter no run can match (``"failure"``), so a typo is not an empty answer."""
    from faber_runlog._state import RUN_STATUSES
    from faber_runlog.errors import InvalidFilter

    if status is not None and status not in RUN_STATUSES:
        raise InvalidFilter(
            f"unknown run status {status!r}{did_you_mean(status, RUN_STATUSES)}; use one of {', '.join(RUN_STATUSES)}"
        )
