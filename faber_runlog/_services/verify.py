"""Check a run's stored files: every event against its schema, every snapshot against the fold.

``verify_run`` is the one place that lists a run's whole events folder and
re-validates every event (the write path validates once, at the edge).
``reconstruct_state`` rebuilds the state from events alone, compares it with
``state.json`` and the historical snapshots, and can rewrite the bad ones.
"""

from __future__ import annotations

import math
from typing import Any, Final

import attrs

from faber_runlog._base import codec as _codec
from faber_runlog._base.ids import RunId
from faber_runlog._domain.events import EventTypes, upcast, validate_event_dict
from faber_runlog._domain.registry import event_types_table
from faber_runlog._domain.state import RunDigest, RunState, apply
from faber_runlog._format.layout import (
    RunLayout,
    decode_segment,
    decode_snapshot,
    decode_summary,
    encode_segment,
    encode_snapshot,
    encode_summary,
    fingerprint,
    jsonl_line,
    parse_segment_name,
    parse_seq_name,
)
from faber_runlog._log.protocol import seal_record
from faber_runlog._services.store import RunStore
from faber_runlog._storage.backends import Storage
from faber_runlog.errors import InvalidEvent

__all__ = [
    "ReconstructReport",
    "StateDifference",
    "VerifyProblem",
    "VerifyReport",
    "reconstruct_state",
    "verify_run",
]

_BATCH: Final = 256


def _plain(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = _codec.loads(_codec.dumps(attrs.asdict(obj)))  # tuples become lists
    return out


@attrs.frozen(slots=True)
class VerifyProblem:
    """One thing wrong with a stored event (``seq`` is None for a stray file)."""

    seq: int | None
    path: str
    kind: str  # "missing", "unreadable", "mismatch", "invalid" or "stray"
    message: str


@attrs.frozen(slots=True)
class VerifyReport:
    """What :func:`verify_run` found; ``problems`` are ordered by sequence number."""

    run_id: str
    events: int
    last_event_id: int
    problems: tuple[VerifyProblem, ...]
    unknown_types: tuple[str, ...] = ()
    """Event types in the log that the store's registry does not know: fine (only the base schema is
    checked for them); declare them (gateway.json ``event_types``, an entry point, ``register_event_type``)
    to have their own schema checked too."""

    @property
    def ok(self) -> bool:
        """True when every event is present, readable and valid."""
        return not self.problems

    @property
    def first(self) -> VerifyProblem | None:
        """The problem with the lowest sequence number: where readers stop trusting the log."""
        return self.problems[0] if self.problems else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return _plain(self)


def verify_run(store: RunStore, run_id: str | RunId) -> VerifyReport:
    """Re-validate every stored event of ``run_id`` and check the ids are gapless from 1."""
    run = store.get_run(run_id)
    rid, storage = run.run_id, store.storage
    layout = RunLayout(rid)
    problems: list[VerifyProblem] = []
    seqs: list[int] = []
    check = _Checker(run.id, event_types_table(store.registry))
    for name in storage.list_names(layout.events):
        seq = parse_seq_name(name)
        if seq is not None and seq >= 1:
            seqs.append(seq)
        elif not name.startswith(".tmp-"):  # a local writer's temp file, never an event
            path = storage.path(f"{layout.events}/{name}")
            problems.append(VerifyProblem(None, path, "stray", f"{path} is not an event file name; move it away"))
    seqs.sort()
    present = set(seqs)
    # A consolidated run keeps its events in events.jsonl (line n is event n).
    # Readers turn to it at the first event file that is missing, so from there
    # on its lines are what gets read, and what is checked.
    jsonl_seqs = _check_jsonl_lines(storage, layout, check, present, problems, seqs[-1] if seqs else 0)
    last = max(seqs[-1] if seqs else 0, jsonl_seqs[-1] if jsonl_seqs else 0)
    present.update(jsonl_seqs)
    for seq in range(1, last + 1):
        if seq not in present:
            path = storage.path(layout.event(seq))
            problems.append(
                VerifyProblem(
                    seq,
                    path,
                    "missing",
                    f"event {seq} of run {run.id} is missing ({path}); readers stop at event {seq - 1}: "
                    "restore the file from a backup or archive",
                )
            )
    for start in range(0, len(seqs), _BATCH):
        chunk = seqs[start : start + _BATCH]
        bodies = storage.read_many(layout.event(s) for s in chunk)
        for seq in chunk:
            problem = check(seq, storage.path(layout.event(seq)), bodies[layout.event(seq)])
            if problem is not None:
                problems.append(problem)
    problems.sort(key=lambda p: (math.inf if p.seq is None else p.seq, p.path))
    return VerifyReport(run.id, len(present), last, tuple(problems), tuple(sorted(check.unknown)))


def _sealed_last(storage: Storage, layout: RunLayout, highest: int) -> int | None:
    """The last event held by events.jsonl: from the seal, which is the highest event file (None: not sealed)."""
    if highest < 1:
        return None
    record = seal_record(_codec.load_object(storage.read(layout.event(highest))), highest)
    return None if record is None else record.through


def _check_jsonl_lines(
    storage: Storage,
    layout: RunLayout,
    check: _Checker,
    present: set[int],
    problems: list[VerifyProblem],
    highest: int,
) -> list[int]:
    """Check the events.jsonl lines readers use; returns the sequence numbers they cover."""
    run_id = check.run_id
    sealed = _sealed_last(storage, layout, highest)
    if sealed is None:
        return []  # an events.jsonl without its record (a consolidation cut short) is never read
    first = next((s for s in range(1, sealed + 1) if s not in present), None)
    if first is None:
        return []  # every event file is there: readers never open events.jsonl
    path = storage.path(layout.jsonl)
    body = storage.read(layout.jsonl)
    if body is None:
        problems.append(
            VerifyProblem(
                first,
                path,
                "missing",
                f"run {run_id} is consolidated through event {sealed} but {path} is missing and event {first} "
                "has no file either: restore events.jsonl from the archive",
            )
        )
        return []
    covered: list[int] = []
    pos = 0
    for seq in range(1, sealed + 1):
        end = body.find(b"\n", pos)
        if end < 0:
            tail = "ends in an unterminated line" if pos < len(body) else f"holds only {seq - 1} lines"
            problems.append(
                VerifyProblem(
                    seq,
                    f"{path} line {seq}",
                    "missing",
                    f"{path} of run {run_id} {tail}, but its seal says it holds events 1..{sealed}: "
                    "restore it from the archive",
                )
            )
            break
        if seq >= first:
            covered.append(seq)
            problem = check(seq, f"{path} line {seq}", body[pos:end])
            if problem is not None:
                problems.append(problem)
        pos = end + 1
    return covered


class _Checker:
    """Checks stored events of one run against the store's event types; remembers the types it does not know."""

    def __init__(self, run_id: str, table: EventTypes) -> None:
        self.run_id, self.table = run_id, table
        self.unknown: set[str] = set()

    def __call__(self, seq: int, path: str, body: bytes | None) -> VerifyProblem | None:
        problem = _check_event(self.run_id, seq, path, body, self.table)
        if problem is None and body is not None:
            etype = _codec.loads(body).get("type")
            if isinstance(etype, str) and etype not in self.table.types:
                self.unknown.add(etype)
        return problem


def _check_event(run_id: str, seq: int, path: str, body: bytes | None, table: EventTypes) -> VerifyProblem | None:
    if body is None:
        return VerifyProblem(seq, path, "missing", f"event {seq} of run {run_id} vanished while verifying ({path})")
    try:
        data = _codec.loads(body)
    except _codec.JSONDecodeError as e:
        return VerifyProblem(seq, path, "unreadable", f"event {seq} of run {run_id} at {path} is not JSON: {e}")
    if not isinstance(data, dict):
        return VerifyProblem(seq, path, "unreadable", f"event {seq} of run {run_id} at {path} is not a JSON object")
    if data.get("event_id") != seq or data.get("run_id") != run_id:
        return VerifyProblem(
            seq,
            path,
            "mismatch",
            f"event file {path} holds event_id {data.get('event_id')!r} of run {data.get('run_id')!r}, "
            f"not event {seq} of run {run_id}",
        )
    try:
        validate_event_dict(upcast(data, table), run_id=run_id, table=table, stored=True)
    except InvalidEvent as e:
        return VerifyProblem(seq, path, "invalid", f"event {seq} at {path}: {e}")
    except Exception as e:  # noqa: BLE001  (an upcaster is anyone's code: one that fails is as bad as an invalid event)
        return VerifyProblem(seq, path, "invalid", f"event {seq} at {path} could not be upcast: {e!r}")
    return None


# -- reconstruct -------------------------------------------------------------------


@attrs.frozen(slots=True)
class StateDifference:
    """One value that differs between a stored snapshot and the fold of the events."""

    path: str  # e.g. "phases.build.steps.compile.status" or "errors[0].message"
    stored: Any
    rebuilt: Any


@attrs.frozen(slots=True)
class ReconstructReport:
    """How ``state.json`` (and the historical snapshots) compare with the fold of the events."""

    run_id: str
    last_event_id: int  # events folded (the log is read up to its first gap)
    stored: str  # "ok", "missing", "unreadable" or "different"
    stored_last_event_id: int | None  # what state.json claims; lower than last_event_id is only stale
    differences: tuple[StateDifference, ...]
    bad_snapshots: tuple[int, ...]  # snapshots/<seq>.json that are unreadable or differ
    repaired: bool
    # summary.json: "ok" (the fold at its event, which is the last), "stale" (the fold at an
    # earlier event: listings fold the run until the next status change), "missing", "unreadable", "different".
    summary: str = "ok"
    # segments/<last>-<first>.jsonl that are unreadable or do not hold exactly their event files' lines
    bad_segments: tuple[tuple[int, int], ...] = ()

    @property
    def ok(self) -> bool:
        """True when state.json, every snapshot, summary.json and every segment agree with the events."""
        return (
            self.stored == "ok" and not self.bad_snapshots and not self.bad_segments and self.summary in ("ok", "stale")
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return _plain(self)


def _parse_state(body: bytes | None) -> RunState | None:
    if body is None:
        return None
    try:
        data, _ = decode_snapshot(body)
        state = RunState.from_dict(data)
    except _codec.DECODE_ERRORS:
        return None
    return state


def _full(state: RunState) -> dict[str, Any]:
    # Every field, defaults included, so a hand-set default value is still compared.
    return attrs.asdict(state)


def _differences(stored: Any, rebuilt: Any, path: str, out: list[StateDifference]) -> None:
    if isinstance(stored, dict) and isinstance(rebuilt, dict):
        for key in [*rebuilt, *(k for k in stored if k not in rebuilt)]:
            sub = f"{path}.{key}" if path else str(key)
            _differences(stored.get(key), rebuilt.get(key), sub, out)
    elif isinstance(stored, list) and isinstance(rebuilt, list) and len(stored) == len(rebuilt):
        for i, (a, b) in enumerate(zip(stored, rebuilt, strict=True)):
            _differences(a, b, f"{path}[{i}]", out)
    elif stored != rebuilt or not _same_kind(stored, rebuilt):
        out.append(StateDifference(path, stored, rebuilt))


def _same_kind(a: Any, b: Any) -> bool:
    # 5 and 5.0 are one duration (JSON does not keep the difference); True and 1 are not.
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers):
        return isinstance(a, bool) == isinstance(b, bool)
    return type(a) is type(b)


def reconstruct_state(
    store: RunStore, run_id: str | RunId, *, repair: bool = False
) -> tuple[RunState, ReconstructReport]:
    """Fold ``run_id`` from its events alone; compare with ``state.json`` and the snapshots.

    ``state.json`` is compared with the fold at the event it claims to follow,
    so a snapshot that merely lags is not a difference. ``repair=True``
    rewrites a missing, unreadable or different ``state.json`` (with the state
    after the last event) and every bad historical snapshot.
    """
    run = store.get_run(run_id)
    storage, layout = store.storage, RunLayout(run.run_id)
    # state.json first: whatever it claims was written before the events we then read.
    body = storage.read(layout.state)
    stored = _parse_state(body)
    summary_body = storage.read(layout.summary)
    try:
        summary: dict[str, Any] | None = decode_summary(summary_body or b"")
    except ValueError:
        summary = None
    summary_status = "missing" if summary_body is None else "unreadable" if summary is None else "different"
    snap_seqs = {s for n in storage.list_names(layout.snapshots) if (s := parse_seq_name(n)) is not None}
    state = RunState(run_id=run.id)
    differences: list[StateDifference] = []
    bad: dict[int, bytes] = {}
    last_fp: str | None = None

    def compare_at(seq: int) -> None:
        nonlocal summary_status
        if summary is not None and summary.get("last_event_id") == seq:
            # A summary carries the run's listing fields when its writer knew them (None otherwise).
            listing = run.metadata.summary_listing() if summary.get("listing") is not None else None
            same = summary == RunDigest.of(state, last_fp if seq else None, listing).to_dict()
            summary_status = "stale" if same else "different"  # "ok" below if seq is the last event
        if stored is not None and stored.last_event_id == seq:
            _differences(_full(stored), _full(state), "", differences)
        if seq in snap_seqs:
            snap = _parse_state(storage.read(layout.snapshot(seq)))
            if snap is None or _full(snap) != _full(state):
                bad[seq] = encode_snapshot(state.to_dict(), last_fp)

    compare_at(0)
    for event in run.log.read():
        apply(state, event)
        last_fp = fingerprint(event.type, event.timestamp, event.nonce)
        compare_at(event.event_id)
    if stored is not None and stored.last_event_id > state.last_event_id:
        # It claims events the log does not have (lost, or never written).
        _differences(_full(stored), _full(state), "", differences)
    if summary_status == "stale" and summary is not None and summary.get("last_event_id") == state.last_event_id:
        summary_status = "ok"
    status = "missing" if body is None else "unreadable" if stored is None else "different" if differences else "ok"
    bad_segments = _bad_segments(storage, run.run_id)
    rewrites: dict[str, bytes] = {layout.segment(a, b): body for (a, b), body in bad_segments.items()}
    if summary_status != "ok":
        digest = RunDigest.of(state, last_fp, run.metadata.summary_listing())
        rewrites[layout.summary] = encode_summary(digest.to_dict())
    if status != "ok":
        # The seal is an event, so the fold keeps a consolidated run sealed.
        rewrites[layout.state] = encode_snapshot(state.to_dict(), last_fp)
    rewrites.update((layout.snapshot(seq), snap_body) for seq, snap_body in bad.items())
    if repair:
        for key, fixed in rewrites.items():
            storage.replace(key, fixed)
    repaired = repair and bool(rewrites)
    report = ReconstructReport(
        run_id=run.id,
        last_event_id=state.last_event_id,
        stored=status,
        stored_last_event_id=None if stored is None else stored.last_event_id,
        differences=tuple(differences),
        bad_snapshots=tuple(sorted(bad)),
        repaired=repaired,
        summary=summary_status,
        bad_segments=tuple(sorted(bad_segments)),
    )
    return state, report


def _bad_segments(storage: Storage, rid: RunId) -> dict[tuple[int, int], bytes]:
    """Segments that do not hold exactly their event files' lines, each with the segment those files make.

    Readers ignore such a segment (a warning, then the files), but put-if-absent
    never replaces it, so only an explicit repair does. A range whose event files
    are gone (cleaned up after the seal) cannot be checked and is left alone.
    """
    layout = RunLayout(rid)
    bad: dict[tuple[int, int], bytes] = {}
    listed = {s for n in storage.list_names(layout.events) if (s := parse_seq_name(n)) is not None}
    for name in storage.list_names(layout.segments):
        span = parse_segment_name(name)
        if span is None:
            continue
        first, last = span
        # Bounded by the listing before anything is read: a name may claim events 1 to 10**12.
        if last - first + 1 > len(listed) or first not in listed or last not in listed:
            continue
        files = storage.read_many(layout.event(s) for s in range(first, last + 1))
        bodies = [files[layout.event(s)] for s in range(first, last + 1)]
        if any(b is None for b in bodies):
            continue
        lines = [jsonl_line(b or b"") for b in bodies]
        try:
            held = decode_segment(storage.read(layout.segment(first, last)) or b"", str(rid), first, last)
        except (*_codec.DECODE_ERRORS, OSError):
            held = None
        if held is None or held.splitlines() != lines:
            bad[span] = encode_segment(str(rid), first, lines)
    return bad
