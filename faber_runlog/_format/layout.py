"""The on-disk format of a run, in one place: key names, snapshots and ``events.jsonl``.

Every module that reads or writes a run's files asks this one for the key
and the codec, so the format has a single owner. No I/O happens here.

A run's folder::

    metadata.json            identity, params, lineage (written once)
    events/<seq:020d>.json   event ``seq``, created exclusively (the log: the only truth)
    events.jsonl             after consolidation: events 1..S-1, one per line (S is the seal)
    state.json               latest snapshot (a verified cache)
    summary.json             a few hundred bytes for listings (a verified cache)
    snapshots/<seq>.json     a few older snapshots, for ``state(at=...)`` (verified caches)
    segments/<last>-<first>.jsonl   events first..last in one object, for reads (verified caches)
    lease.json, report.json, report.md, archived.json, children/   (see their modules)

A snapshot is ``{"snapshot": 3, "last_event": <fingerprint>, "checksum": ..., "state": {...}}``:
it is used only when the event at ``state.last_event_id`` has that fingerprint
and the checksum of the state body holds, so an edited, stale or foreign
snapshot costs time (a longer fold), never a wrong answer.

A summary is ``{"summary": 1, "checksum": ..., "run": {...}}`` where ``run``
holds what a listing shows (status, timestamps, current phase and step,
``last_event_id``, the last event's fingerprint, counts). Listings trust it
only when its checksum holds and event ``last_event_id + 1`` does not exist;
otherwise they fold the run's log (docs/concurrency.md).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from faber_runlog._base import codec as _codec
from faber_runlog._base.ids import RunId
from faber_runlog._storage.backends import INTERNAL_DIR
from faber_runlog.errors import CorruptData, InvalidArgument

__all__ = [
    "ARCHIVE_INDEX_DIR",
    "ARCHIVE_MARKER",
    "ARCHIVE_PROBE",
    "CONFIG_ENV",
    "CONFIG_NAME",
    "CONFIG_PATH",
    "INTERNAL_DIR",
    "KEYS_DIR",
    "LEASE_NAME",
    "LEGACY_CONFIG_PATH",
    "PROJECT_DIR",
    "REPORT_JSON",
    "REPORT_MD",
    "SEGMENT_EVENTS",
    "SEQ_WIDTH",
    "SIZE_TAGS",
    "SLOTS_DIR",
    "SNAPSHOTS_KEPT",
    "SUMMARY_NAME",
    "RunLayout",
    "decode_segment",
    "decode_snapshot",
    "decode_summary",
    "encode_segment",
    "encode_snapshot",
    "encode_summary",
    "event_body",
    "fingerprint",
    "iter_jsonl",
    "jsonl_line",
    "may_move_by_size",
    "parse_segment_name",
    "parse_seq_name",
    "segment_listing_start",
    "segment_name",
    "seq_name",
    "tag_by_size",
]

SEQ_WIDTH: Final = 20
assert f"{1:020d}" == f"{1:0{SEQ_WIDTH}d}"  # the literal 020 below is SEQ_WIDTH
"""Zero-padding of event file names, so names sort numerically for ever."""

SNAPSHOT_FORMAT: Final = 3
"""3: bounded lists with ``totals`` (issue 15); older snapshots are ignored (refolded), never misread."""
SUMMARY_FORMAT: Final = 1
SUMMARY_NAME: Final = "summary.json"
SNAPSHOTS_KEPT: Final = 2
"""Older periodic snapshots kept besides ``state.json``: bytes stay a small multiple of the log."""

SEGMENT_EVENTS: Final = 1000
"""Events per segment by default: a read costs about one GET per this many events (a store option)."""
SEGMENT_FORMAT: Final = 2
"""2: a CRC-32 checksum (format 1's sha256 cost a third of a rebuild's time); format 1 is still read."""

ARCHIVE_MARKER: Final = "archived.json"
PROJECT_DIR: Final = ".faber_runlog"
"""The folder in a project that holds the default store (``runs/``) and ``gateway.json``."""
CONFIG_NAME: Final = "gateway.json"
CONFIG_PATH: Final = f"{PROJECT_DIR}/{CONFIG_NAME}"
"""Where ``faber-runlog init`` writes the config, under the project folder (our folder, not FABER's)."""
LEGACY_CONFIG_PATH: Final = f".fractary/plugins/faber/{CONFIG_NAME}"
"""Where ``init`` wrote it before the store moved out of FABER's folder; still found (with a notice)."""
CONFIG_ENV: Final = "FABER_RUNLOG_CONFIG"
"""Environment variable naming a gateway.json to use instead of searching for one."""
KEYS_DIR: Final = f"{INTERNAL_DIR}/keys"
"""Concurrency-key claims of exclusive runs (``_lifecycle``), under a store root."""
SLOTS_DIR: Final = f"{INTERNAL_DIR}/slots"
"""Active-run slots of exclusive runs (``_lifecycle``), under a store root."""
ARCHIVE_INDEX_DIR: Final = f"{INTERNAL_DIR}/archive-index"
"""The archive index in a destination store (``_archive``): ``{dir}/{org}/{project}/{uuid}.json``."""
ARCHIVE_PROBE: Final = f"{INTERNAL_DIR}/archive-probe"
"""Prefix of the object an archiver creates and removes in a destination before it seals anything (``_archive``)."""
LEASE_NAME: Final = "lease.json"
REPORT_JSON: Final = "report.json"
REPORT_MD: Final = "report.md"
LEGACY_CONSOLIDATION: Final = "consolidation.json"


def seq_name(seq: int) -> str:
    """The file name of event ``seq``: ``00000000000000000042.json``."""
    return f"{seq:020d}.json"  # SEQ_WIDTH, spelled out: a nested format spec costs µs on the rebuild path


def parse_seq_name(name: str) -> int | None:
    """The sequence number of an event file name, or None for anything else."""
    if len(name) == SEQ_WIDTH + 5 and name.endswith(".json") and name[:SEQ_WIDTH].isdigit():
        return int(name[:SEQ_WIDTH])
    return None


class RunLayout:
    """Keys of one run's files, relative to the store root."""

    __slots__ = (
        "_prefix",
        "archived",
        "children",
        "dir",
        "events",
        "jsonl",
        "lease",
        "metadata",
        "report_json",
        "report_md",
        "segments",
        "snapshots",
        "state",
        "summary",
    )

    def __init__(self, run_id: RunId) -> None:
        self.dir = str(run_id)
        self.metadata = f"{self.dir}/metadata.json"
        self.state = f"{self.dir}/state.json"
        self.summary = f"{self.dir}/{SUMMARY_NAME}"
        self.events = f"{self.dir}/events"
        self.jsonl = f"{self.dir}/events.jsonl"
        self.children = f"{self.dir}/children"
        self.snapshots = f"{self.dir}/snapshots"
        self.segments = f"{self.dir}/segments"
        self.lease = f"{self.dir}/{LEASE_NAME}"
        self.report_json = f"{self.dir}/{REPORT_JSON}"
        self.report_md = f"{self.dir}/{REPORT_MD}"
        self.archived = f"{self.dir}/{ARCHIVE_MARKER}"
        self._prefix = self.events + "/"

    def event(self, seq: int) -> str:
        """Key of event ``seq``."""
        return f"{self._prefix}{seq:020d}.json"  # SEQ_WIDTH

    def snapshot(self, seq: int) -> str:
        """Key of the older snapshot taken after event ``seq``."""
        return f"{self.snapshots}/{seq:020d}.json"  # SEQ_WIDTH

    def segment(self, first: int, last: int) -> str:
        """Key of the segment holding events ``first..last`` (named by its last event, so names sort by it)."""
        return f"{self.segments}/{segment_name(first, last)}"


def segment_name(first: int, last: int) -> str:
    """``<last>-<first>.jsonl``: listing after ``segment_listing_start(n)`` finds the segments ending after n."""
    return f"{last:0{SEQ_WIDTH}d}-{first:0{SEQ_WIDTH}d}.jsonl"


def segment_listing_start(after: int) -> str:
    """The name to list segments after so that exactly those whose last event is after ``after`` come back."""
    return f"{after:0{SEQ_WIDTH}d}~"  # '-' sorts before '~': segments ending at ``after`` itself are left out


def parse_segment_name(name: str) -> tuple[int, int] | None:
    """``(first, last)`` of a segment name, or None for anything else."""
    w = SEQ_WIDTH
    if len(name) != 2 * w + 7 or not name.endswith(".jsonl") or name[w] != "-":
        return None
    last, first = name[:w], name[w + 1 : 2 * w + 1]
    if not (last.isdigit() and first.isdigit()) or not 1 <= int(first) <= int(last):
        return None
    return int(first), int(last)


# -- snapshots ---------------------------------------------------------------------------


def fingerprint(event_type: Any, timestamp: Any, nonce: Any) -> str:
    """What a snapshot records of its last event, to check it still agrees with the log.

    Type, timestamp and the writer's nonce: two different events never share all three.
    """
    return f"{event_type}|{timestamp}|{nonce}"


def _checksum(state_body: bytes) -> str:
    return hashlib.sha256(state_body).hexdigest()[:32]


def _crc(body: bytes) -> str:
    # Segments guard against damage, not forgery (anyone who can write them can write the event
    # files too), and a checksum runs over every byte a rebuild reads: CRC-32 is six times cheaper.
    return f"crc32:{zlib.crc32(body):08x}"


_SEGMENT_CHECKSUMS: Final[Mapping[object, Callable[[bytes], str]]] = {1: _checksum, SEGMENT_FORMAT: _crc}


def _encode_checksummed(kind: str, version: int, field: str, inner: Mapping[str, Any], **head: Any) -> bytes:
    """``{kind: version, **head, "checksum": ..., field: inner}``, the checksum over ``inner``'s bytes.

    Built by hand so the checksum covers exactly the bytes of ``inner`` as stored.
    """
    body = _codec.dumps(inner)
    top = _codec.dumps({kind: version, **head, "checksum": _checksum(body)})
    return top[:-1] + b',"' + field.encode() + b'":' + body + b"}"


def _decode_checksummed(body: bytes, kind: str, version: int, field: str) -> tuple[dict[str, Any], Any]:
    """``(head, inner)`` of a body built by :func:`_encode_checksummed`; raises CorruptData unless it is intact.

    Trailing blanks are JSON whitespace: a cache rewritten in place over a longer body keeps them.
    """
    body = body.rstrip()
    marker = b',"' + field.encode() + b'":'
    at = body.find(marker)
    if not body.startswith(b'{"' + kind.encode() + b'":') or at < 0 or not body.endswith(b"}"):
        raise CorruptData(f"not a {kind} of this format")
    head = _codec.loads(body[:at] + b"}")
    inner = body[at + len(marker) : -1]
    if not isinstance(head, dict) or head.get(kind) != version:
        raise CorruptData(f"unknown {kind} format")
    if head.get("checksum") != _checksum(inner):
        raise CorruptData("its checksum does not match its content (edited or damaged)")
    return head, _codec.loads(inner)


def encode_snapshot(state: Mapping[str, Any], last_event: str | None) -> bytes:
    """A snapshot body for ``state`` (a ``RunState.to_dict()``) whose last event has fingerprint ``last_event``."""
    # Always present (even 0): a snapshot without it predates fencing by the log and is not used (lease rule 8).
    state = {**state, "fence_epoch": state.get("fence_epoch", 0)}
    return _encode_checksummed("snapshot", SNAPSHOT_FORMAT, "state", state, last_event=last_event)


def decode_snapshot(body: bytes) -> tuple[dict[str, Any], str | None]:
    """``(state dict, last event fingerprint)``; raises ValueError for anything that is not an intact snapshot."""
    head, state = _decode_checksummed(body, "snapshot", SNAPSHOT_FORMAT, "state")
    if not isinstance(state, dict):
        raise CorruptData("its state is not a JSON object")
    last = head.get("last_event")
    return state, last if isinstance(last, str) else None


# -- segments --------------------------------------------------------------------------


def encode_segment(run_id: str, first: int, lines: list[bytes]) -> bytes:
    """A segment of events ``first..first+len(lines)-1``: a checksummed header line, then one event per line.

    Built only from the event files' bytes (each as :func:`jsonl_line`), so any
    writer builds the same bytes for the same range: a put-if-absent race is harmless.
    """
    body = b"\n".join(lines) + b"\n"
    head = _codec.dumps(
        {
            "segment": SEGMENT_FORMAT,
            "run_id": run_id,
            "first": first,
            "last": first + len(lines) - 1,
            "count": len(lines),
            "checksum": _crc(body),
        }
    )
    return head + b"\n" + body


def decode_segment(body: bytes, run_id: str, first: int, last: int) -> bytes:
    """The event lines of a segment (``body`` after the header), checked against what its name says.

    Raises ValueError for a segment of another run or range, a wrong count or
    a checksum that does not match (edited, damaged or cut short).
    """
    end = body.find(b"\n")
    if end < 0 or not body.startswith(b'{"segment":'):
        raise CorruptData("not a segment of this format")
    head = _codec.loads(body[:end])
    rest = body[end + 1 :]
    checksum = _SEGMENT_CHECKSUMS.get(head.get("segment")) if isinstance(head, dict) else None
    if checksum is None:
        raise CorruptData("unknown segment format")
    if head.get("run_id") != run_id:
        raise CorruptData(f"it belongs to run {head.get('run_id')!r}")
    if (head.get("first"), head.get("last"), head.get("count")) != (first, last, last - first + 1):
        raise CorruptData(f"its header says events {head.get('first')}..{head.get('last')}, not {first}..{last}")
    if head.get("checksum") != checksum(rest):
        raise CorruptData("its checksum does not match its content (edited, damaged or cut short)")
    if rest.count(b"\n") != last - first + 1:
        raise CorruptData(f"it does not hold {last - first + 1} lines")
    return rest


# -- summaries ---------------------------------------------------------------------------


def encode_summary(run: Mapping[str, Any]) -> bytes:
    """A summary body for ``run`` (the listing fields, including ``last_event_id`` and ``last_event``)."""
    return _encode_checksummed("summary", SUMMARY_FORMAT, "run", run)


def decode_summary(body: bytes) -> dict[str, Any]:
    """The summary's ``run`` fields; raises CorruptData for anything that is not an intact summary."""
    _, run = _decode_checksummed(body, "summary", SUMMARY_FORMAT, "run")
    if not isinstance(run, dict) or not isinstance(run.get("last_event_id"), int):
        raise CorruptData("its body is not a run summary")
    return run


# -- events.jsonl ------------------------------------------------------------------------


SIZE_TAGS: Final = 16
"""Writers' size tags (protocol rule 22): an event file's length mod ``2 * SIZE_TAGS`` is ``2 * tag + mark``."""


def event_body(body: bytes, *, may_move: bool, tag: int = 0) -> bytes:
    """An event file's bytes: ``body`` padded with trailing blanks so its length says two things.

    Its parity is odd iff ``may_move`` (protocol rule 21): the length is the one fact besides the
    name that a listing returns, so a writer whose append checks only the run's status learns from
    one sized listing that the events it missed moved no status, without reading them. Its
    remainder mod ``2 * SIZE_TAGS`` is ``2 * tag + parity`` (protocol rule 22): a writer whose create
    met a taken name learns from the same listing that bytes of another tag are not its own. JSON
    ignores the blanks and :func:`jsonl_line` strips them, so nothing else sees them.
    """
    if not 0 <= tag < SIZE_TAGS:
        raise InvalidArgument(f"a size tag is in 0..{SIZE_TAGS - 1}, got {tag}")
    modulus = 2 * SIZE_TAGS
    want = 2 * tag + (1 if may_move else 0)
    return body + b" " * ((want - len(body)) % modulus)


def tag_by_size(size: int) -> int:
    """The size tag (protocol rule 22) of the writer of an event file of ``size`` bytes."""
    return (size % (2 * SIZE_TAGS)) // 2


def may_move_by_size(size: int) -> bool:
    """Whether an event file of ``size`` bytes may have moved its run's status (protocol rule 21)."""
    return size % 2 == 1


def jsonl_line(body: bytes) -> bytes:
    """One stored event file's bytes as one line of ``events.jsonl`` (no newline inside)."""
    line = body.strip()
    if b"\n" in line or b"\r" in line:
        line = _codec.dumps(_codec.loads(line))
    return line


def iter_jsonl(body: bytes, after: int, last: int, size: int = 1000) -> Iterator[list[bytes]]:
    """Lines ``after+1..last`` of an ``events.jsonl`` body (line n holds event n), in lists of up to ``size``.

    Raises CorruptData, after the complete lines, when the body holds fewer than ``last``.
    Splits one window of the body at a time: splitting it whole would hold a second copy of the log.
    """
    pos, seq = 0, 1
    while seq <= after:
        end = body.find(b"\n", pos)
        if end < 0:
            raise CorruptData(f"it holds {seq - 1} complete lines, fewer than {last}")
        pos, seq = end + 1, seq + 1
    window = 256 * size
    while seq <= last:
        want = min(size, last - seq + 1)
        piece = body[pos : pos + window]
        lines = piece.split(b"\n", want)
        if len(lines) <= want:  # fewer than ``want`` line ends in the window
            if pos + window < len(body):
                window *= 2
                continue
            if len(lines) > 1:
                yield lines[:-1]
            raise CorruptData(f"it holds {seq + len(lines) - 2} complete lines, fewer than {last}")
        used = len(piece) - len(lines.pop())
        yield lines
        pos, seq = pos + used, seq + want
        window = max(window, used + used // 4)
