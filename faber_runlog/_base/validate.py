"""The one home of input validation: one rule per kind of value that enters the library.

Every public function, CLI command and MCP tool checks the values it is given here, before any
I/O, so a bad value fails at once with an :class:`~faber_runlog.errors.InvalidArgument` (or the
narrower error the caller passes) naming the argument, instead of a raw ``ValueError``,
``OverflowError`` or ``RecursionError`` from deep inside a write, or a silent NaN that compares
false with everything:

- integers (:func:`integer`): ``int`` only (no ``bool``, no ``1.0``), within bounds;
- numbers (:func:`number`): finite reals (no ``bool``, NaN or infinity), within bounds;
- durations (:func:`seconds`, :func:`days`): finite, non-negative (or positive), at most a century,
  so that ``now + duration`` never overflows a ``datetime``;
- sizes (:func:`size`): integers bounded *before* anything is allocated for them;
- timestamps (:func:`timestamp`): the stored ISO 8601 shape, then parsed with the calendar's
  rules (February 30 and nine fractional digits are refused), with a UTC offset;
  :func:`parse_timestamp` reads a stored one back (None when damaged, never an exception).

Paths are contained by :class:`~faber_runlog.Storage` (keys are checked before any I/O, local
folders are resolved and refused when a symlink leads out of the root); store-wide loops turn
such a refusal into a reported problem for that one run (see :func:`guarded`).
"""

from __future__ import annotations

import datetime as _dt
import math
import numbers
import re
from collections.abc import Callable
from typing import Any, Final, TypeVar

from faber_runlog.errors import FaberRunlogError, InvalidArgument

__all__ = [
    "DAMAGE",
    "MAX_DAYS",
    "MAX_SECONDS",
    "days",
    "guarded",
    "integer",
    "names",
    "number",
    "optional_integer",
    "parse_timestamp",
    "problem_text",
    "seconds",
    "size",
    "timestamp",
    "timestamp_problem",
]

T = TypeVar("T")

MAX_SECONDS: Final = 100 * 366 * 86400.0
"""The longest duration accepted (a century): ``now`` plus it is always a valid ``datetime``."""
MAX_DAYS: Final = MAX_SECONDS / 86400
""":data:`MAX_SECONDS` in days (for retention and archive ages)."""
MAX_INT: Final = (1 << 63) - 1
"""The largest integer accepted where no narrower bound is given (what every JSON reader holds)."""

# The stored shape: date, time, at most microseconds, and an explicit offset (Z or ±hh:mm).
_TIMESTAMP: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})")

DAMAGE: Final = (FaberRunlogError, ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError)
"""What reading one damaged item can raise: our errors plus what decoding foreign bytes raises."""


def _is_int(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Integral)  # int, numpy integers; never a float, however whole


def integer(
    value: object,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = MAX_INT,
    error: type[InvalidArgument] = InvalidArgument,
    where: str = "",
) -> int:
    """``value`` as an ``int`` when it is one (not a bool, not a float) within ``minimum..maximum``."""
    suffix = f" ({where})" if where else ""
    if not _is_int(value):
        raise error(f"{name} must be an integer, got {type(value).__name__} {value!r}{suffix}")
    n = int(value)  # type: ignore[call-overload]  # an Integral, checked by _is_int
    if minimum is not None and n < minimum:
        raise error(f"{name} must be >= {minimum}, got {n}{suffix}")
    if maximum is not None and n > maximum:
        raise error(f"{name} must be <= {maximum}, got {n}{suffix}")
    return int(n)


def optional_integer(value: object, name: str, **bounds: Any) -> int | None:
    """:func:`integer`, with None passed through."""
    return None if value is None else integer(value, name, **bounds)


def number(
    value: object,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
    error: type[InvalidArgument] = InvalidArgument,
    where: str = "",
) -> float:
    """``value`` as a finite ``float`` (not a bool, NaN or infinity) within bounds (``positive``: > 0)."""
    suffix = f" ({where})" if where else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{name} must be a number, got {type(value).__name__} {value!r}{suffix}")
    try:
        x = float(value)
    except OverflowError:
        raise error(f"{name} is too large, got {value!r}{suffix}") from None
    if not math.isfinite(x):
        raise error(f"{name} must be a finite number, got {value!r}{suffix}")
    if positive and not x > 0:
        raise error(f"{name} must be > 0, got {value!r}{suffix}")
    if minimum is not None and x < minimum:
        raise error(f"{name} must be >= {minimum:g}, got {value!r}{suffix}")
    if maximum is not None and x > maximum:
        raise error(f"{name} must be <= {maximum:g}, got {value!r}{suffix}")
    return x


def seconds(
    value: object,
    name: str,
    *,
    positive: bool = False,
    error: type[InvalidArgument] = InvalidArgument,
    where: str = "",
) -> float:
    """A duration in seconds (a number or a ``timedelta``): finite, >= 0 (> 0 if ``positive``), at most a century."""
    if isinstance(value, _dt.timedelta):
        value = value.total_seconds()
    return number(
        value, f"{name} (seconds)", minimum=0.0, maximum=MAX_SECONDS, positive=positive, error=error, where=where
    )


def days(value: object, name: str, *, error: type[InvalidArgument] = InvalidArgument, where: str = "") -> float:
    """A duration in days (a number or a ``timedelta``): finite, >= 0, at most a century."""
    if isinstance(value, _dt.timedelta):
        value = value.total_seconds() / 86400
    return number(value, f"{name} (days)", minimum=0.0, maximum=MAX_DAYS, error=error, where=where)


def size(
    value: object, name: str, *, maximum: int, error: type[InvalidArgument] = InvalidArgument, where: str = ""
) -> int:
    """A count that something is allocated for: an integer in ``0..maximum``, checked before the allocation."""
    return integer(value, name, minimum=0, maximum=maximum, error=error, where=where)


def names(value: object, name: str, *, where: str = "") -> frozenset[str] | None:
    """A collection of names (event types, ids) as a frozenset; None passes; a lone string is refused."""
    suffix = f" ({where})" if where else ""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)):
        raise InvalidArgument(f"{name} must be a list of names, got {type(value).__name__} {value!r}{suffix}")
    bad = next((v for v in value if not isinstance(v, str)), None)
    if bad is not None:
        raise InvalidArgument(f"{name} must hold names (strings), got {type(bad).__name__} {bad!r}{suffix}")
    return frozenset(value)


def timestamp_problem(value: object) -> str | None:
    """None when ``value`` is a timestamp we store, else why not (in words a message can carry)."""
    if not isinstance(value, str):
        return f"a timestamp must be a string, got {type(value).__name__}"
    if _TIMESTAMP.fullmatch(value) is None:
        return (
            f"{value!r} is not an ISO 8601 time such as 2026-01-31T12:00:00.000000Z "
            "(date, time, at most 6 fractional digits, Z or an offset)"
        )
    try:
        moment = _dt.datetime.fromisoformat(value)
    except ValueError as e:
        return f"{value!r} is no real time ({e})"
    if moment.utcoffset() is None or abs(moment.utcoffset() or _dt.timedelta()) >= _dt.timedelta(hours=24):
        return f"{value!r} has an impossible UTC offset"
    try:
        moment.astimezone(_dt.UTC)
    except OverflowError:
        return f"{value!r} is outside the years 1..9999 once taken to UTC"
    return None


def timestamp(value: object, name: str = "timestamp", *, error: type[InvalidArgument] = InvalidArgument) -> str:
    """``value`` when it is a real ISO 8601 time in the stored shape; else ``error`` saying why."""
    problem = timestamp_problem(value)
    if problem is not None:
        raise error(f"{name}: {problem}")
    return str(value)


def parse_timestamp(value: object) -> _dt.datetime | None:
    """A stored timestamp as an aware UTC ``datetime``; None when it is missing or damaged (never raises)."""
    if not isinstance(value, str):
        return None
    try:
        moment = _dt.datetime.fromisoformat(value)
        if moment.utcoffset() is None:
            return None
        return moment.astimezone(_dt.UTC)
    except (ValueError, OverflowError):
        return None


def guarded(item: str, work: Callable[[], T], problems: list[tuple[str, str]]) -> T | None:
    """``work()``; when reading or changing one damaged ``item`` fails, record it in ``problems`` and return None.

    For store-wide loops (list, sweep, cleanup, recover, frames): one bad run is reported and the
    loop goes on, whatever category of our errors (or decoding error of its bytes) it raised.
    """
    try:
        return work()
    except DAMAGE as e:
        problems.append((item, problem_text(e)))
        return None


def problem_text(e: BaseException) -> str:
    """An error as one line for a problem list: its type and message."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"
