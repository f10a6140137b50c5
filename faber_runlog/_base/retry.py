"""The one optimistic-retry loop: an attempt that lost a race (compare-and-swap, exclusive create) runs again.

Every read-decide-write loop of the package (taking, renewing and releasing a lease, claiming an
exclusive run's slot, a lifecycle action, a resume, sealing a log, claiming an index commit) runs
through :func:`optimistic`: the attempt reads what is stored, decides, writes conditionally, and returns
:data:`AGAIN` when another process changed what it read first. After :data:`TRIES` lost races it gives
up with :class:`~faber_runlog.errors.TooMuchContention`, one error for every such loop. (The append claim
loop of ``_log`` is not one of these: it has a time budget of its own.)
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final, TypeVar

from faber_runlog.errors import TooMuchContention

__all__ = ["AGAIN", "TRIES", "Again", "optimistic"]

TRIES: Final = 50
"""Attempts before an optimistic loop gives up: far more races than a handful of processes lose in a row."""

_T = TypeVar("_T")


class Again(enum.Enum):
    """The type of :data:`AGAIN` (an enum, so type checkers narrow ``T | Again`` on ``is AGAIN``)."""

    AGAIN = "again"


AGAIN: Final = Again.AGAIN
"""What an attempt returns when it lost a race and should run again on fresh reads."""


def optimistic(attempt: Callable[[], _T | Again], *, what: str, run_id: str | None = None, advice: str = "") -> _T:
    """Run ``attempt`` until it returns something other than :data:`AGAIN`, at most :data:`TRIES` times.

    Raises :class:`TooMuchContention` naming ``what`` (for example ``"taking the lease of run X"``) and
    ``run_id`` when every try lost; ``advice`` replaces the default "retry when fewer processes write to it".
    """
    for _ in range(TRIES):
        got = attempt()
        if not isinstance(got, Again):
            return got
    raise TooMuchContention(
        f"{what}: other processes changed it first {TRIES} times in a row; nothing more was written; "
        f"{advice or 'retry when fewer processes write to it'}",
        run_id=run_id,
        tries=TRIES,
    )
