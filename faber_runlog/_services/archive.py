"""Consolidate finished runs into ``events.jsonl``, copy them to an archive store, clean up by policy.

Consolidation seals an ended run's log with a ``log_sealed`` event, claimed
like any append (so nothing is acknowledged after it) and carrying the size
and sha256 of ``events.jsonl``, which then holds every event before the seal;
readers take events from it in one read. The seal is the record: re-running an
interrupted consolidation only rewrites ``events.jsonl`` until it matches.

Archiving copies a run to another store in an order that keeps the copy
invisible until it is complete: data files first, verified (S3 ETag or a read
back), then ``metadata.json`` (what ``get_run``/``list_runs`` look for), then
one index object per run, created exclusively, then ``archived.json`` in the
source run. Every step is idempotent, so archiving again after any failure
finishes the job. Retention removes the source's per-event files (never the
seal) only for runs archived and verified more than ``seal_grace`` ago, as the
policy says.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs

from faber_runlog._base import codec as _codec
from faber_runlog._base import validate as _validate
from faber_runlog._base.advice import advise
from faber_runlog._base.converter import converter, to_dict
from faber_runlog._base.ids import RunId
from faber_runlog._base.progress import Progress
from faber_runlog._base.retry import AGAIN, Again, optimistic
from faber_runlog._domain.events import Event
from faber_runlog._domain.metadata import RunMetadata, parse_metadata
from faber_runlog._domain.state import RunDigest, unchanged_since
from faber_runlog._domain.transitions import SEAL_TYPE, TERMINAL_STATUSES, RunStatus
from faber_runlog._domain.transitions import Moved as _Moved
from faber_runlog._format.layout import (
    ARCHIVE_INDEX_DIR,
    ARCHIVE_MARKER,
    ARCHIVE_PROBE,
    REPORT_JSON,
    REPORT_MD,
    RunLayout,
    encode_snapshot,
    encode_summary,
    fingerprint,
    jsonl_line,
    parse_seq_name,
)
from faber_runlog._log.eventlog import append_event
from faber_runlog._log.protocol import SealRecord, file_digest, jsonl_problem, seal_metadata, seal_of
from faber_runlog._services.store import RunStore, cleaner_grace
from faber_runlog._storage.backends import PutResult, Storage
from faber_runlog.errors import (
    ArchiveMismatch,
    ConsolidationError,
    CorruptData,
    FaberRunlogError,
    InvalidArgument,
    RunArchived,
    RunStillActive,
    StorageError,
)

__all__ = [
    "ARCHIVE_MARKER",
    "INDEX_DIR",
    "ArchiveIndexEntry",
    "ArchiveResult",
    "Archiver",
    "CleanupItem",
    "CleanupReport",
    "ConsolidationRecord",
    "RetentionPolicy",
    "consolidate",
    "is_consolidated",
    "read_archive_index",
]

log = logging.getLogger("faber_runlog._services.archive")


INDEX_DIR: Final = ARCHIVE_INDEX_DIR
"""Root of the archive index in the destination store: ``{INDEX_DIR}/{org}/{project}/{uuid}.json``."""

_FORMAT: Final = "jsonl/1"
_READ_BATCH: Final = 256
_REPORT_FILES: Final = (REPORT_JSON, REPORT_MD)


def _marker_key(rid: RunId) -> str:
    return f"{RunLayout(rid).dir}/{ARCHIVE_MARKER}"


def _index_key(rid: RunId) -> str:
    return f"{INDEX_DIR}/{rid.org}/{rid.project}/{rid.uuid}.json"


# -- models ------------------------------------------------------------------------


@attrs.frozen(slots=True)
class ConsolidationRecord:
    """What consolidation checked: ``events.jsonl`` holds events ``1..last_seq`` with this hash."""

    run_id: str
    last_seq: int
    sha256: str  # of the whole events.jsonl
    size: int
    last_event_at: str  # timestamp of the last event (keeps the record identical across archivers)
    format: str = _FORMAT

    @property
    def first_seq(self) -> int:
        """The first event in ``events.jsonl``: always 1 (a log is consolidated whole)."""
        return 1

    @property
    def count(self) -> int:
        """How many events ``events.jsonl`` holds: ``last_seq`` (derived, so it is not stored)."""
        return self.last_seq

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (``first_seq`` and ``count`` are derived and left out; old dicts still load)."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConsolidationRecord:
        """Rebuild from :meth:`to_dict` output."""
        return converter.structure(data, cls)


@attrs.frozen(slots=True)
class ArchiveIndexEntry:
    """One run in the archive index: enough to pick runs without reading their events."""

    run_id: str
    org: str
    project: str
    status: RunStatus
    created_at: str
    ended_at: str | None
    last_event_id: int
    sha256: str
    size: int
    archived_at: str
    source: str
    params: dict[str, Any] = attrs.field(factory=dict)
    tags: dict[str, str] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the index object body)."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchiveIndexEntry:
        """Rebuild from :meth:`to_dict` output."""
        return converter.structure(data, cls)


@attrs.frozen(slots=True)
class ArchiveResult:
    """What archiving did to one run: ``archived``, ``already_archived`` or ``failed`` (with ``error``)."""

    run_id: str
    outcome: str
    record: ConsolidationRecord | None = None
    error: BaseException | None = attrs.field(default=None, eq=False)

    @property
    def ok(self) -> bool:
        """True unless archiving this run failed."""
        return self.error is None


@attrs.frozen(slots=True)
class RetentionPolicy:
    """Which archived runs lose their local per-event files.

    ``keep_days``: runs archived fewer days ago keep them. ``keep_failed``:
    failed runs keep them (handy for debugging on the machine that ran them).
    ``state.json``, ``metadata.json``, ``events.jsonl`` and reports are always kept.
    """

    keep_days: float = 0.0
    keep_failed: bool = False

    def __attrs_post_init__(self) -> None:
        _validate.days(self.keep_days, "RetentionPolicy keep_days")


@attrs.frozen(slots=True)
class CleanupItem:
    """One archived run seen by :meth:`Archiver.cleanup`: ``remove`` (with ``files`` event files) or ``keep``."""

    run_id: str
    action: str
    reason: str
    files: int


@attrs.frozen(slots=True)
class CleanupReport:
    """The outcome of :meth:`Archiver.cleanup`; with ``dry_run`` nothing was deleted."""

    dry_run: bool
    items: tuple[CleanupItem, ...]

    @property
    def removed(self) -> tuple[str, ...]:
        """Ids of the runs whose event files were (or, in a dry run, would be) removed."""
        return tuple(i.run_id for i in self.items if i.action == "remove")

    @property
    def kept(self) -> tuple[str, ...]:
        """Ids of the archived runs the policy keeps as they are."""
        return tuple(i.run_id for i in self.items if i.action == "keep")


# -- consolidation ----------------------------------------------------------------------


def _record_from_seal(rid: RunId, seal: Event) -> ConsolidationRecord:
    record = seal_of(seal)
    if record is None or record.digest is None:
        raise ConsolidationError(
            f"event {seal.event_id} of run {rid} is no seal that describes events.jsonl; "
            "faber-runlog verify shows what is off",
            run_id=str(rid),
        )
    return ConsolidationRecord(str(rid), record.through, record.digest, record.size, record.last_event_at)


def _read_record(store: RunStore, rid: RunId) -> ConsolidationRecord | None:
    """The consolidation record of a sealed run (from its seal event), or None when it is not sealed."""
    elog = store.get_run(rid).log
    state = elog.fold_state()
    if state.sealed_at is None:
        return None
    return _record_from_seal(rid, elog.get(state.sealed_at))


def is_consolidated(store: RunStore, run_id: str | RunId) -> bool:
    """Whether the run's log is sealed by consolidation (a ``log_sealed`` event)."""
    return store.get_run(run_id).state().sealed_at is not None


def _as_seal(record: ConsolidationRecord) -> SealRecord:
    return SealRecord(record.last_seq + 1, record.last_seq, record.size, record.sha256, record.last_event_at)


def _check_jsonl(rid: RunId, path: str, data: bytes, record: ConsolidationRecord) -> None:
    """Raise unless ``data`` is exactly what ``record`` describes."""
    problem = jsonl_problem(_as_seal(record), data)
    if problem is not None:
        raise ConsolidationError(
            f"events.jsonl of run {rid} at {path} does not match its seal: {problem}; "
            "consolidate the run again (it rewrites the file from the event files)",
            run_id=str(rid),
        )


def consolidate(store: RunStore, run_id: str | RunId) -> ConsolidationRecord:
    """Seal an ended run's log and write its events to ``events.jsonl``, verified.

    The seal is an event (``log_sealed``) that claims the next sequence number
    like any append, so nothing can be acknowledged after it; ``events.jsonl``
    then holds exactly the events before it. Idempotent and safe to re-run
    after any interruption: a sealed run only gets its ``events.jsonl``
    (re)written from the event files. Refuses runs that have not ended
    (:class:`RunStillActive`) and runs with a missing or damaged event
    (:class:`ConsolidationError` naming the sequence number); then nothing is written.
    """
    return consolidate_from(store, run_id, [], "")


def consolidate_from(store: RunStore, run_id: str | RunId, lines: list[bytes], last_at: str) -> ConsolidationRecord:
    """:func:`consolidate`, given the ``events.jsonl`` lines of events ``1..len(lines)`` already read (and verified)."""
    rid = RunId.parse(run_id)
    storage = store.storage
    layout = RunLayout(rid)
    elog = store.get_run(rid).log
    # The lines read so far: events are immutable, so a retry after losing the race to an
    # append reads only the events since, and a busy run cannot starve its consolidation.
    known = list(lines)
    known_at = [last_at]

    def attempt() -> ConsolidationRecord | Again:
        state = elog.fold_state()
        if state.sealed_at is not None:
            record = _record_from_seal(rid, elog.get(state.sealed_at))
            data = storage.read(layout.jsonl)
            if data is None or jsonl_problem(_as_seal(record), data):
                sealed, _ = _jsonl_lines(storage, rid, 1, record.last_seq)
                _write_jsonl(storage, rid, b"\n".join(sealed) + b"\n", record)
            return record
        if state.status not in TERMINAL_STATUSES:
            raise RunStillActive(
                f"run {rid} is {state.status} (last event {state.last_event_id}); only completed, failed or "
                "cancelled runs can be consolidated or archived: finish, fail or cancel it first",
                run_id=str(rid),
                status=state.status,
            )
        last = state.last_event_id
        if last == 0:
            raise ConsolidationError(f"run {rid} has no events to consolidate", run_id=str(rid))
        more, more_at = _jsonl_lines(storage, rid, len(known) + 1, last)
        known.extend(more)
        known_at[0] = more_at or known_at[0]
        data = b"\n".join(known) + b"\n"
        meta = seal_metadata(data, last, known_at[0])
        try:
            seal = append_event(elog, {"type": SEAL_TYPE, "metadata": meta}, check=unchanged_since(last), sealing=True)
        except (_Moved, RunArchived):  # another consolidation sealed it first: look again
            return AGAIN
        record = _record_from_seal(rid, seal)
        _write_jsonl(storage, rid, data, record)
        return record

    return optimistic(
        attempt,
        what=f"consolidating run {rid}: it kept gaining events, nothing was sealed",
        run_id=str(rid),
        advice="consolidate again once no process writes to it",
    )


def _jsonl_lines(storage: Storage, rid: RunId, first: int, last: int) -> tuple[list[bytes], str]:
    """Events first..last from their files as ``events.jsonl`` lines, and the last one's timestamp ("" if none)."""
    layout = RunLayout(rid)
    lines: list[bytes] = []
    last_at = ""
    for start in range(first, last + 1, _READ_BATCH):
        chunk = range(start, min(start + _READ_BATCH, last + 1))
        bodies = storage.read_many(layout.event(s) for s in chunk)
        for seq in chunk:
            body = bodies[layout.event(seq)]
            if body is None:
                _gap(storage, rid, seq)
            line, last_at = _event_line(storage, rid, seq, body)
            lines.append(line)
    return lines, last_at


def _write_jsonl(storage: Storage, rid: RunId, data: bytes, record: ConsolidationRecord) -> None:
    layout = RunLayout(rid)
    storage.replace(layout.jsonl, data)
    back = storage.read(layout.jsonl)
    _check_jsonl(rid, storage.path(layout.jsonl), back or b"", record)


def _gap(storage: Storage, rid: RunId, seq: int) -> None:
    path = storage.path(RunLayout(rid).event(seq))
    gap = ConsolidationError(
        f"event {seq} of run {rid} is missing ({path}); consolidation refused and nothing was written: "
        "restore the file before consolidating",
        run_id=str(rid),
        seq=seq,
    )
    raise advise(gap, "verify")


def _event_line(storage: Storage, rid: RunId, seq: int, body: bytes | None) -> tuple[bytes, str]:
    try:
        data = _codec.loads(body or b"")
        if not isinstance(data, dict) or data.get("event_id") != seq or data.get("run_id") != str(rid):
            raise CorruptData(f"it is not event {seq} of run {rid}")
    except Exception as e:
        path = storage.path(RunLayout(rid).event(seq))
        raise ConsolidationError(
            f"event {seq} of run {rid} at {path} is damaged ({e}); consolidation refused and nothing "
            "was written: restore the file before consolidating",
            run_id=str(rid),
            seq=seq,
        ) from e
    return jsonl_line(body or b""), str(data.get("timestamp", ""))


# -- writing many objects ---------------------------------------------------------------


def _put_many(storage: Storage, items: dict[str, bytes], *, create: bool) -> dict[str, PutResult]:
    """Write many keys through the storage layer (concurrently where the store can), each result apart."""
    return storage.put_many(items, create=create) if items else {}


def _etag_matches(etag: str | None, body: bytes) -> bool | None:
    """True/False when the ETag is a plain MD5 of the body (single-part PUT), None when it says nothing."""
    if etag is None:
        return None
    tag = etag.strip('"')
    if "-" in tag or len(tag) != 32:
        return None
    return tag == hashlib.md5(body, usedforsecurity=False).hexdigest()


# -- archiving ----------------------------------------------------------------------------


@attrs.frozen
class _Early:
    """What of an unsealed run is copied before its seal: its lines (read once) and files."""

    lines: list[bytes]
    last_at: str
    files: dict[str, bytes]


def _not_sealed(rid: RunId, e: BaseException) -> BaseException:
    """``e`` of a copy that failed before the seal, saying the run was left as it was (still resumable)."""
    error = StorageError(
        f"copying run {rid} to the archive failed before it was sealed ({type(e).__name__}: {e}); the run was "
        "left as it was (a cancelled or failed run can still be resumed): archive it again "
        f"(faber-runlog archive {rid} / Archiver.archive) once the archive is writable"
    )
    error.__cause__ = e
    return error


def _sealed_not_copied(rid: RunId, e: BaseException) -> BaseException:
    """``e`` of a copy that failed after the seal: the run is sealed locally, archiving again finishes the copy."""
    text = (
        f"run {rid} is sealed locally (it can no longer be resumed; re-run it instead) but copying it to the "
        f"archive failed ({type(e).__name__}: {e}); nothing is lost: archive it again "
        f"(faber-runlog archive {rid} / Archiver.archive) once the archive is writable, which finishes the copy"
    )
    error = (
        ArchiveMismatch(text, run_id=e.run_id, path=e.path) if isinstance(e, ArchiveMismatch) else StorageError(text)
    )
    error.__cause__ = e
    return error


@attrs.define(slots=True)
class _Staged:
    rid: RunId
    record: ConsolidationRecord
    files: dict[str, bytes]  # everything but metadata.json, keyed like the source
    metadata: bytes
    entry: ArchiveIndexEntry
    error: BaseException | None = None


def read_archive_index(store: RunStore, org: str | None = None, project: str | None = None) -> list[ArchiveIndexEntry]:
    """The archive index of ``store`` (a destination), oldest run first; reads no events."""
    storage = store.storage
    keys: list[str] = []
    orgs = [org] if org is not None else storage.list_names(INDEX_DIR)
    for o in orgs:
        projects = [project] if project is not None else storage.list_names(f"{INDEX_DIR}/{o}")
        for p in projects:
            folder = f"{INDEX_DIR}/{o}/{p}"
            keys.extend(f"{folder}/{n}" for n in storage.list_names(folder) if n.endswith(".json"))
    entries: list[ArchiveIndexEntry] = []
    for start in range(0, len(keys), _READ_BATCH):
        for key, body in storage.read_many(keys[start : start + _READ_BATCH]).items():
            if body is None:
                continue
            try:
                entries.append(ArchiveIndexEntry.from_dict(_codec.loads(body)))
            except _codec.DECODE_ERRORS as e:
                log.warning("skipping unreadable archive index entry %s: %s", key, e)
    entries.sort(key=lambda e: (e.created_at, e.run_id))
    return entries


def _older_than(older_than: _dt.timedelta | float | None, now: _dt.datetime) -> str | None:
    if older_than is None:
        return None
    delta = _dt.timedelta(days=_validate.days(older_than, "older_than"))
    return _codec.iso(now - delta)


class Archiver:
    """Copies finished runs from ``source`` to ``destination`` (typically local to S3) and cleans up.

    ``progress`` draws a progress bar on stderr for batch calls and cleanup (None:
    only when stderr is a terminal, or as ``$FABER_RUNLOG_PROGRESS`` says); ``batch_size``
    runs are uploaded together (concurrently on S3).
    """

    def __init__(
        self, source: RunStore, destination: RunStore, *, progress: bool | None = None, batch_size: int = 64
    ) -> None:
        if source.url == destination.url:
            raise InvalidArgument(f"source and destination are the same store ({source.url}); archive to another one")
        if batch_size < 1:
            raise InvalidArgument(f"batch_size must be at least 1, got {batch_size}")
        self.source = source
        self.destination = destination
        self.progress = progress
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"Archiver({self.source.url!r} -> {self.destination.url!r})"

    # -- public -------------------------------------------------------------------

    def archive(self, run_id: str | RunId) -> ArchiveResult:
        """Consolidate, copy, verify and index one run; raises what went wrong (run it again to finish)."""
        result = self.archive_many([run_id], progress=False)[0]
        if result.error is not None:
            raise result.error
        return result

    def archive_many(self, run_ids: Iterable[str | RunId], *, progress: bool | None = None) -> list[ArchiveResult]:
        """Archive several runs, in batches; one run's failure does not stop the others."""
        rids = [RunId.parse(r) for r in run_ids]
        results: list[ArchiveResult] = []
        with Progress("archiving", len(rids), enabled=self.progress if progress is None else progress) as bar:
            for start in range(0, len(rids), self.batch_size):
                chunk = rids[start : start + self.batch_size]
                results.extend(self._archive_chunk(chunk))
                bar.update(len(chunk))
        return results

    def archive_finished(
        self,
        *,
        older_than: _dt.timedelta | float | None = None,
        org: str | None = None,
        project: str | None = None,
        progress: bool | None = None,
    ) -> list[ArchiveResult]:
        """Archive every finished run not archived yet; ``older_than`` (days or timedelta) since its last event."""
        cutoff = _older_than(older_than, self.source.storage.clock.now())
        finished = [
            s
            for s in self.source.list_runs(org=org, project=project)
            if s.status in TERMINAL_STATUSES and (cutoff is None or (s.updated_at or s.created_at) < cutoff)
        ]
        markers = self.source.storage.read_many(_marker_key(RunId.parse(s.run_id)) for s in finished)
        todo = [s.run_id for s in finished if markers.get(_marker_key(RunId.parse(s.run_id))) is None]
        return self.archive_many(todo, progress=progress)

    def index(self, org: str | None = None, project: str | None = None) -> list[ArchiveIndexEntry]:
        """The destination's archive index (see :func:`read_archive_index`)."""
        return read_archive_index(self.destination, org, project)

    def is_archived(self, run_id: str | RunId) -> bool:
        """Whether the source run carries the ``archived.json`` marker (one existence check)."""
        return self.source.storage.exists(_marker_key(RunId.parse(run_id)))

    # -- one batch ------------------------------------------------------------------

    def _archive_chunk(self, rids: list[RunId]) -> list[ArchiveResult]:
        src, dst = self.source.storage, self.destination.storage
        done: dict[str, ArchiveResult] = {}
        markers = src.read_many(_marker_key(r) for r in rids)
        marked = [r for r in rids if markers.get(_marker_key(r)) is not None]
        indexed = dst.read_many(_index_key(r) for r in marked)
        for r in marked:
            if indexed.get(_index_key(r)) is not None:
                done[str(r)] = ArchiveResult(str(r), "already_archived")
        todo = [r for r in rids if str(r) not in done]
        unreachable = self._unwritable() if todo else None
        if unreachable is not None:
            # Consolidation seals a run for good: never seal one that cannot be copied (a cancelled
            # run must stay resumable). Nothing of these runs was touched; archive them again later.
            for r in todo:
                done[str(r)] = ArchiveResult(str(r), "failed", error=_not_sealed(r, unreachable))
            return [done[str(r)] for r in rids]
        early, sent = self._copy_unsealed([r for r in rids if str(r) not in done], done)
        staged: list[_Staged] = []
        for r in rids:
            if str(r) in done:
                continue
            try:
                x = early.get(r)
                staged.append(self._stage(r, x.lines if x is not None else [], x.last_at if x is not None else ""))
            except Exception as e:  # noqa: BLE001  (one run's failure is its result; the others go on)
                done[str(r)] = ArchiveResult(str(r), "failed", error=e)
        self._upload(staged, sent)
        self._create(staged, lambda s: RunLayout(s.rid).metadata, lambda s: s.metadata, compare=True)
        self._create(staged, lambda s: _index_key(s.rid), lambda s: _codec.dumps(s.entry.to_dict()), compare=False)
        now = _codec.now_iso(self.source.storage.clock.now())
        for s in staged:
            if s.error is None:
                marker = {
                    "run_id": str(s.rid),
                    "archive": dst.url,
                    "archived_at": now,
                    "index": _index_key(s.rid),
                    "last_seq": s.record.last_seq,
                    "sha256": s.record.sha256,
                }
                try:
                    src.replace(_marker_key(s.rid), _codec.dumps(marker))
                except Exception as e:  # noqa: BLE001  (the run's result carries it; archiving again finishes the copy)
                    s.error = e
            if s.error is not None:  # consolidation sealed the run; archiving again finishes what this copy began
                s.error = _sealed_not_copied(s.rid, s.error)
            outcome = "archived" if s.error is None else "failed"
            done[str(s.rid)] = ArchiveResult(str(s.rid), outcome, s.record, s.error)
        return [done[str(r)] for r in rids]

    def _unwritable(self) -> FaberRunlogError | None:
        """None when the destination answers a listing and takes a probe write; else the error it raised.

        The probe (an object created exclusively under the destination's own folder, then removed) checks
        credentials, bucket, network and write permission, and runs the store's capability check, before
        anything is sealed. Its removal may fail (a store that allows no deletes): the write was shown.
        """
        dst = self.destination.storage
        probe = f"{ARCHIVE_PROBE}-{uuid.uuid4().hex}"
        try:
            dst.list_names(INDEX_DIR)
            dst.create(probe, b"probe")
        except FaberRunlogError as e:
            return e
        except OSError as e:
            return StorageError(f"the archive {self.destination.url} cannot be written ({e}); nothing was sealed")
        try:
            dst.delete(probe)
        except Exception as e:  # noqa: BLE001  (cleanup of a probe: whatever the store says, it is logged)
            log.debug("could not remove the archive probe %s: %s", dst.path(probe), e)
        return None

    def _copy_unsealed(
        self, rids: list[RunId], done: dict[str, ArchiveResult]
    ) -> tuple[dict[RunId, _Early], dict[str, bytes]]:
        """Copy what does not depend on the seal (events.jsonl, reports, children) of the unsealed runs first.

        A run whose copy fails is not sealed (so a cancelled run stays resumable) and goes to ``done``
        as failed; only the seal's own files follow the seal. Returns what was read and what was sent.
        """
        early: dict[RunId, _Early] = {}
        for r in rids:
            try:
                found = self._unsealed(r)
            except Exception as e:  # noqa: BLE001  (one run's failure is its result; the others go on)
                done[str(r)] = ArchiveResult(str(r), "failed", error=e)
                continue
            if found is not None:
                early[r] = found
        for r, error in self._copy({r: x.files for r, x in early.items()}).items():
            done[str(r)] = ArchiveResult(str(r), "failed", error=_not_sealed(r, error))
        sent = {k: b for r, x in early.items() if str(r) not in done for k, b in x.files.items()}
        return early, sent

    def _unsealed(self, rid: RunId) -> _Early | None:
        """What of an ended, unsealed run goes to the archive before its seal; None when sealed or still active."""
        src = self.source.storage
        state = self.source.get_run(rid).log.current_state()
        if state.sealed_at is not None or state.status not in TERMINAL_STATUSES or state.last_event_id == 0:
            return None  # consolidation finishes, or refuses, in _stage
        lines, last_at = _jsonl_lines(src, rid, 1, state.last_event_id)
        layout = RunLayout(rid)
        files = {layout.jsonl: b"\n".join(lines) + b"\n"}
        files.update((k, v) for k, v in src.read_many(self._side_keys(rid)).items() if v is not None)
        return _Early(lines, last_at, files)

    def _side_keys(self, rid: RunId) -> list[str]:
        """The reports and children records of ``rid``: copied with it, whatever its seal."""
        layout = RunLayout(rid)
        children = self.source.storage.list_names(layout.children)
        keys = [f"{layout.dir}/{name}" for name in _REPORT_FILES]
        return keys + [f"{layout.children}/{n}" for n in children if n.endswith(".json")]

    def _stage(self, rid: RunId, lines: list[bytes], last_at: str) -> _Staged:
        """Consolidate ``rid`` (its first ``lines`` already read) and read everything that goes to the archive."""
        src = self.source.storage
        record = consolidate_from(self.source, rid, lines, last_at)
        layout = RunLayout(rid)
        # The seal's file travels with events.jsonl: readers of the copy check one against the other.
        keys = [layout.metadata, layout.jsonl, layout.event(record.last_seq + 1), *self._side_keys(rid)]
        bodies = src.read_many(keys)
        metadata, jsonl = bodies[layout.metadata], bodies[layout.jsonl]
        if metadata is None or jsonl is None:
            raise ConsolidationError(
                f"run {rid} lost metadata.json or events.jsonl while being archived; archive it again",
                run_id=str(rid),
            )
        _check_jsonl(rid, src.path(layout.jsonl), jsonl, record)
        meta = parse_metadata(self.source.storage, rid, metadata)
        # The archive's state.json is the fold at the seal, encoded afresh: every archiver of
        # the run writes the same bytes, whatever snapshot the source holds at the moment.
        elog = self.source.get_run(rid).log
        state = elog.fold_state()
        seal = elog.get(record.last_seq + 1)
        files = {k: v for k, v in bodies.items() if v is not None and k != layout.metadata}
        seal_fp = fingerprint(seal.type, seal.timestamp, seal.nonce)
        files[layout.state] = encode_snapshot(state.to_dict(), seal_fp)
        # And the summary at the seal, so listings of the archive (and verify --reconstruct) find it current.
        files[layout.summary] = encode_summary(RunDigest.of(state, seal_fp, meta.summary_listing()).to_dict())
        files[_marker_key(rid)] = _codec.dumps(
            {"run_id": str(rid), "archived_from": src.url, "last_seq": record.last_seq, "sha256": record.sha256}
        )
        entry = ArchiveIndexEntry(
            run_id=str(rid),
            org=rid.org,
            project=rid.project,
            status=state.status,
            created_at=meta.created_at,
            ended_at=state.ended_at,
            last_event_id=record.last_seq,
            sha256=record.sha256,
            size=record.size,
            archived_at=_codec.now_iso(src.clock.now()),
            source=src.url,
            params=meta.params,
            tags=meta.tags,
        )
        return _Staged(rid, record, files, metadata, entry)

    def _upload(self, staged: list[_Staged], sent: dict[str, bytes]) -> None:
        """Copy and verify every data file (all but metadata.json) of the staged runs not ``sent`` as they are."""
        files = {s.rid: {k: b for k, b in s.files.items() if sent.get(k) != b} for s in staged}
        failed = self._copy(files)
        for s in staged:
            s.error = s.error or failed.get(s.rid)

    def _copy(self, files: dict[RunId, dict[str, bytes]]) -> dict[RunId, BaseException]:
        """Write and verify each run's ``files`` in the archive (concurrently); the first error of each failed run."""
        dst = self.destination.storage
        owner = {key: rid for rid, some in files.items() for key in some}
        items = {key: body for some in files.values() for key, body in some.items()}
        errors: dict[RunId, BaseException] = {}
        puts = _put_many(dst, items, create=False)
        unknown: list[str] = []
        for key, put in puts.items():
            rid = owner[key]
            if put.error is not None:
                errors.setdefault(rid, put.error)
                continue
            match = _etag_matches(put.etag, items[key])
            if match is None:
                unknown.append(key)
            elif not match:
                errors.setdefault(rid, self._mismatch(rid, key, "its ETag is not the MD5 of what was sent"))
        for key, body in self._read_back(unknown).items():
            rid = owner[key]
            if body != items[key] and rid not in errors:
                got = "nothing" if body is None else f"{len(body)} bytes, {file_digest(body)}"
                sent = f"{len(items[key])} bytes, {file_digest(items[key])}"
                errors[rid] = self._mismatch(rid, key, f"it holds {got}, not the {sent} sent")
        return errors

    def _read_back(self, keys: list[str]) -> dict[str, bytes | None]:
        out: dict[str, bytes | None] = {}
        for start in range(0, len(keys), _READ_BATCH):
            try:
                out.update(self.destination.storage.read_many(keys[start : start + _READ_BATCH]))
            except Exception as e:  # noqa: BLE001  (a read-back that fails counts as missing: it is logged and re-checked)
                log.warning("read-back verification failed: %s", e)
                out.update((k, None) for k in keys[start : start + _READ_BATCH])
        return out

    def _create(
        self,
        staged: list[_Staged],
        key_of: Callable[[_Staged], str],
        body_of: Callable[[_Staged], bytes],
        *,
        compare: bool,
    ) -> None:
        """Exclusively create one object per healthy staged run; an existing equal object is fine."""
        live = [s for s in staged if s.error is None]
        items = {key_of(s): body_of(s) for s in live}
        puts = _put_many(self.destination.storage, items, create=True)
        existing: list[str] = []
        for s in live:
            put = puts[key_of(s)]
            if put.error is not None:
                s.error = put.error
            elif not put.created and compare:
                existing.append(key_of(s))
            elif put.created and compare and _etag_matches(put.etag, items[key_of(s)]) is False:
                s.error = self._mismatch(s.rid, key_of(s), "its ETag is not the MD5 of what was sent")
        found = self._read_back(existing)
        for s in live:
            key = key_of(s)
            if key in found and found[key] != items[key]:
                s.error = self._mismatch(s.rid, key, "a different object with this name is already in the archive")

    def _mismatch(self, rid: RunId, key: str, what: str) -> ArchiveMismatch:
        path = self.destination.storage.path(key)
        return ArchiveMismatch(
            f"archiving run {rid}: {path} {what}; the local run is untouched, archive it again",
            run_id=str(rid),
            path=path,
        )

    # -- retention ------------------------------------------------------------------------

    def cleanup(
        self,
        policy: RetentionPolicy | None = None,
        *,
        dry_run: bool = True,
        org: str | None = None,
        project: str | None = None,
        progress: bool | None = None,
    ) -> CleanupReport:
        """Remove per-event files of archived source runs, as ``policy`` says; ``dry_run`` only lists.

        A run is only cleaned when its ``archived.json`` marker, its archive
        index entry and its local ``events.jsonl`` (hash as recorded) all check
        out, and nothing was appended after consolidation.
        """
        policy = policy if policy is not None else RetentionPolicy()
        src = self.source.storage
        summaries = self.source.list_runs(org=org, project=project)
        rids = [RunId.parse(s.run_id) for s in summaries]
        markers = src.read_many(_marker_key(r) for r in rids)
        archived = [(s, r) for s, r in zip(summaries, rids, strict=True) if markers.get(_marker_key(r)) is not None]
        indexed = self.destination.storage.read_many(_index_key(r) for _, r in archived)
        cutoff = _older_than(policy.keep_days, src.clock.now())
        items: list[CleanupItem] = []
        now = src.clock.now()
        metas = src.read_many(RunLayout(r).metadata for _, r in archived)
        bar = Progress("cleaning up", len(archived), enabled=self.progress if progress is None else progress)
        with bar:
            for summary, rid in archived:
                # The grace the run recorded when it was created (its writers skip their check within half
                # of it), never less: a cleaner opened with a shorter seal_grace cannot hide their events.
                try:
                    grace = cleaner_grace(self.source.seal_grace, self._metadata_of(rid, metas))
                    grace_cutoff = (_codec.iso(now - _dt.timedelta(seconds=grace)), grace)
                    self._clean_one(
                        summary, rid, markers, indexed, policy, cutoff, grace_cutoff, items, dry_run=dry_run
                    )
                except _validate.DAMAGE as e:  # one damaged run (its archived.json, its log) never stops the rest
                    log.warning("cleanup of run %s skipped: %s", rid, e)
                    items.append(CleanupItem(str(rid), "keep", f"not removed: {_validate.problem_text(e)}", 0))
                bar.update()
        return CleanupReport(dry_run, tuple(items))

    def _clean_one(
        self,
        summary: Any,
        rid: RunId,
        markers: dict[str, bytes | None],
        indexed: dict[str, bytes | None],
        policy: RetentionPolicy,
        cutoff: str | None,
        grace_cutoff: tuple[str, float],
        items: list[CleanupItem],
        *,
        dry_run: bool,
    ) -> None:
        src = self.source.storage
        marker = _codec.loads(markers[_marker_key(rid)] or b"{}")
        if not isinstance(marker, dict):
            raise ConsolidationError(
                f"archived.json of run {rid} is not a JSON object; archive the run again", run_id=str(rid)
            )
        sealed_at = int(marker.get("last_seq", 0)) + 1
        files = [n for n in src.list_names(RunLayout(rid).events) if (parse_seq_name(n) or 0) not in (0, sealed_at)]
        reason = None
        if not files:
            reason = "no event files left"
        elif indexed.get(_index_key(rid)) is None:
            reason = f"not in the archive index of {self.destination.url}; archive it again"
        elif policy.keep_failed and summary.status == "failed":
            reason = "failed runs are kept (keep_failed)"
        elif cutoff is not None and str(marker.get("archived_at", "")) > cutoff:
            reason = f"archived {marker.get('archived_at')}, within keep_days={policy.keep_days:g}"
        elif str(marker.get("archived_at", "")) > grace_cutoff[0]:
            reason = f"sealed less than seal_grace={grace_cutoff[1]:g}s ago; writers may still be stalled"
        if reason is not None:
            items.append(CleanupItem(str(rid), "keep", reason, len(files)))
            return
        if not dry_run:
            try:
                self._remove_events(rid, files)
            except FaberRunlogError as e:  # one damaged run does not stop the cleanup of the others
                log.warning("cleanup of run %s skipped: %s", rid, e)
                items.append(CleanupItem(str(rid), "keep", f"not removed: {e}", len(files)))
                return
        items.append(CleanupItem(str(rid), "remove", "archived and verified", len(files)))

    def _metadata_of(self, rid: RunId, bodies: dict[str, bytes | None]) -> RunMetadata | None:
        body = bodies.get(RunLayout(rid).metadata)
        try:
            return parse_metadata(self.source.storage, rid, body) if body is not None else None
        except FaberRunlogError:
            return None  # unreadable: the default grace (the longest wait unless the cleaner's is longer)

    def _remove_events(self, rid: RunId, names: list[str]) -> None:
        src = self.source.storage
        layout = RunLayout(rid)
        record = _read_record(self.source, rid)
        data = src.read(layout.jsonl)
        if record is None or data is None:
            raise ConsolidationError(
                f"run {rid} is marked archived but its log is not sealed or has no events.jsonl; "
                "archive it again before cleaning up",
                run_id=str(rid),
            )
        _check_jsonl(rid, src.path(layout.jsonl), data, record)
        seal = record.last_seq + 1
        # Event 1 goes first, alone: a reader that then misses it looks in events.jsonl, never at half a
        # log. The rest go in batches (one request per 1,000 on S3). The seal itself stays: it is the
        # boundary every later writer runs into.
        doomed = sorted((s, n) for n in names if (s := parse_seq_name(n) or 0) < seal)
        if doomed and doomed[0][0] == 1:
            src.delete(f"{layout.events}/{doomed.pop(0)[1]}")
        src.delete_many(f"{layout.events}/{name}" for _, name in doomed)
        # Segments are caches of events now in events.jsonl: gone with the files (the seal stays).
        src.delete_many(f"{layout.segments}/{name}" for name in src.list_names(layout.segments))
