"""Hints for error messages: the close matches of a mistyped name ("did you mean ...?") and the status filter check."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from faber_runlog._domain.transitions import RunStatus

__all__ = ["check_status_filter", "did_you_mean"]


def did_you_mean(word: object, choices: Iterable[str], *, cutoff: float = 0.6) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``choices`` to ``word``, or ``""`` when none is close."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=3, cutoff=cutoff)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def check_status_filter(status: str | None) -> RunStatus | None:
    """``status`` as a run status; one no run can match (``"failure"``) is refused, so a typo is no empty answer."""
    from faber_runlog._domain.transitions import RUN_STATUSES, is_status
    from faber_runlog.errors import InvalidFilter

    if status is None or is_status(status):
        return status
    raise InvalidFilter(
        f"unknown run status {status!r}{did_you_mean(status, RUN_STATUSES)}; use one of {', '.join(RUN_STATUSES)}"
    )
