"""The seal and ``events.jsonl``: what a seal records and the one check that a file matches it.

Consolidation (docs/concurrency.md, protocol rules 4 to 7) claims the next number with a ``log_sealed``
event whose metadata records ``through`` (the last event in ``events.jsonl``), ``size`` and ``sha256``
of the file. Readers trust ``events.jsonl`` only through that record: the event log's checked reader,
the bulk reader, archiving and ``verify`` all ask :func:`jsonl_problem`, so the rule is written once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs

from faber_runlog._domain.transitions import SEAL_TYPE

if TYPE_CHECKING:
    from faber_runlog._domain.events import Event

__all__ = ["SealRecord", "file_digest", "jsonl_problem", "seal_metadata", "seal_of", "seal_record"]

_ALGORITHM: Final = "sha256"


def file_digest(data: bytes) -> str:
    """The digest a seal records for ``events.jsonl`` (``sha256:<hex>``)."""
    return f"{_ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


@attrs.frozen(slots=True)
class SealRecord:
    """What a seal says of ``events.jsonl``: it holds events ``1..through``, ``size`` bytes, this digest."""

    seq: int  # the seal's own number: through + 1
    through: int
    size: int
    digest: str | None  # None: a seal written without one (the check then skips the hash)
    last_event_at: str = ""


def seal_metadata(data: bytes, through: int, last_event_at: str) -> dict[str, Any]:
    """The metadata of the seal that describes ``data`` as ``events.jsonl`` through event ``through``."""
    return {"through": through, "size": len(data), "sha256": file_digest(data), "last_event_at": last_event_at}


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def seal_record(seal: Mapping[str, Any] | None, seq: int | None = None) -> SealRecord | None:
    """The record of a seal event given as a mapping (``type``, ``event_id``, ``metadata``); None if it is none.

    ``seq`` is the number the seal was read at, when the mapping may not carry it.
    """
    if seal is None or seal.get("type") != SEAL_TYPE:
        return None
    meta = seal.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    through, size = _count(meta.get("through")), _count(meta.get("size"))
    at = _count(seal.get("event_id", seq))
    if through is None or size is None or at is None or at != through + 1 or (seq is not None and seq != at):
        return None
    digest = meta.get("sha256")
    last_at = meta.get("last_event_at")
    return SealRecord(at, through, size, digest if isinstance(digest, str) else None, str(last_at or ""))


def seal_of(event: Event, seq: int | None = None) -> SealRecord | None:
    """:func:`seal_record` of a decoded event (None unless it is a seal that describes ``events.jsonl``)."""
    return seal_record({"type": event.type, "event_id": event.event_id, "metadata": event.metadata}, seq)


def jsonl_problem(record: SealRecord, data: bytes, *, check_digest: bool = True) -> str | None:
    """Why ``data`` is not the ``events.jsonl`` that ``record`` describes; None when it is.

    Size and line count always; the digest too unless ``check_digest`` is False (a reader that trusts
    the size and lines and re-checks each line's JSON and sequence number as it decodes them).
    """
    lines = data.count(b"\n")
    if len(data) != record.size:
        return f"it is {len(data)} bytes, the seal says {record.size}"
    if lines != record.through or (data and not data.endswith(b"\n")):
        return f"it holds {lines} lines, the seal says {record.through}"
    if check_digest and record.digest is not None and file_digest(data) != record.digest:
        return f"its digest {file_digest(data)} differs from the seal's {record.digest}"
    return None
