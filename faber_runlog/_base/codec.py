"""JSON bytes in and out (orjson), and the canonical hash of a value."""

from __future__ import annotations

import datetime as _dt
import hashlib
from typing import Any, Final

import orjson

__all__ = [
    "DECODE_ERRORS",
    "JSONDecodeError",
    "canonical_hash",
    "dumps",
    "dumps_indented",
    "iso",
    "load_object",
    "loads",
    "now_iso",
]

DECODE_ERRORS: Final = (ValueError, TypeError, LookupError, AttributeError, ExceptionGroup)
"""What turning stored bytes into our types may raise when they are damaged or foreign: bad JSON
(``orjson.JSONDecodeError``), a missing key or index, a value of the wrong type, an attrs/cattrs
structure error (an ``ExceptionGroup``), or our own ``CorruptData`` / ``InvalidArgument`` (both ``ValueError``).
A reader that treats damaged bytes as absent catches exactly these, never a blind ``Exception``."""

JSONDecodeError = orjson.JSONDecodeError
loads = orjson.loads


def load_object(body: bytes | None) -> dict[str, Any] | None:
    """A stored JSON object, or None when it is absent, not JSON or not an object.

    For files that are caches or hints (snapshots, reports, claims), where a
    damaged copy means "not there" rather than an error.
    """
    if body is None:
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def dumps(value: Any) -> bytes:
    """Serialise to compact JSON bytes; refuses NaN-free non-JSON values."""
    return orjson.dumps(value)


def dumps_indented(value: Any) -> bytes:
    """JSON for files people read and edit (two-space indent, trailing newline)."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n"


def canonical_hash(value: Any) -> str:
    """A stable ``sha256:`` digest of a JSON value (sorted keys)."""
    return "sha256:" + hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


def iso(moment: _dt.datetime) -> str:
    """A UTC time as ISO 8601 with microseconds and a ``Z``: the one timestamp format of stored files."""
    return moment.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_NO_OFFSET: Final = _dt.timedelta(0)


def now_iso(moment: _dt.datetime | None = None) -> str:
    """``moment`` (default: the system clock now) in the stored timestamp format.

    What :func:`iso` writes, without ``strftime``'s cost; callers pass their store's clock
    (``now_iso(storage.clock.now())``) so an injected clock dates what they write.
    """
    if moment is None:
        moment = _dt.datetime.now(_dt.UTC)
    elif moment.utcoffset() != _NO_OFFSET:
        moment = moment.astimezone(_dt.UTC)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"  # drops "+00:00"


_ONE_MS: Final = _dt.timedelta(milliseconds=1)


def ms_between(start: str | None, end: str | None) -> float | None:
    """Milliseconds from ISO time ``start`` to ``end`` (never negative); None if either is missing or unparsable."""
    if start is None or end is None:
        return None
    try:
        ms: float = (_dt.datetime.fromisoformat(end) - _dt.datetime.fromisoformat(start)) / _ONE_MS
    except ValueError:
        return None
    return ms if ms > 0.0 else 0.0
