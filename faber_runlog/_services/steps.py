"""Phases and steps one attempt at a time: the rows of ``steps_frame`` / ``phases_frame``, timelines and reports.

A run's attempts are found by folding its phase and step events with the
run's own fold handlers (:mod:`faber_runlog._domain.state`), and writing down each
phase and step after every event that touches it: a new row when its attempt
count grows, the row updated while that attempt lasts. So the last attempt of
every step is, field for field, what the folded state says (status, start,
end, ``duration_ms``, error), and the earlier attempts are what it said then.
Durations are the fold's: the producer's ``duration_ms`` where given, else
the time from start to end.

Two rules the fold alone does not give: a skip after an ended attempt is a
row of its own (status ``skipped``, no start), so the failure before it stays
visible; and a phase sent back by ``request_changes`` closes its attempt with
status ``changes_requested``. Protocol events (the seal, leases) are never rows.

The frames read events with the bulk reader behind ``events_frame``
(:func:`faber_runlog._log.bulk.read_logs`), over live, consolidated and archived
runs alike, and select runs the same way. pandas is imported only for a frame.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final

import attrs

from faber_runlog._base import validate as _validate
from faber_runlog._base.codec import ms_between
from faber_runlog._base.ids import RunId
from faber_runlog._domain.events import EventTypes, upcast
from faber_runlog._domain.state import PhaseState, RawHandler, RunState, StepState
from faber_runlog._format.layout import RunLayout
from faber_runlog._services import frames as _frames
from faber_runlog._services.frames import checked_line

if TYPE_CHECKING:
    from faber_runlog._services.store import Run, RunStore

__all__ = [
    "PHASE_COLUMNS",
    "STEP_COLUMNS",
    "Attempts",
    "StartTimes",
    "phases_frame",
    "run_attempts",
    "steps_frame",
]

STEP_COLUMNS: Final = (
    "run_id", "org", "project", "phase", "step", "attempt", "status", "started_at", "ended_at",
    "duration_ms", "error", "first_event_id", "last_event_id", "params", "tags",
)  # fmt: skip  # a table: one row per line
"""Columns of :func:`steps_frame`, in order: one row per attempt of a step."""

PHASE_COLUMNS: Final = tuple(c for c in STEP_COLUMNS if c != "step")
"""Columns of :func:`phases_frame`, in order: one row per attempt of a phase."""

_TOUCHING: Final = frozenset(
    {
        "phase_start", "phase_skip", "phase_complete", "phase_error",
        "step_start", "step_complete", "step_error", "step_skip", "step_retry",
        "approval_requested", "approval_resolved", "workflow_complete", "workflow_error", "workflow_cancelled",
    }
)  # fmt: skip  # grouped by what they touch
"""The event types whose folds change a phase or a step."""
_STEP_TYPES: Final = frozenset({"step_start", "step_complete", "step_error", "step_skip", "step_retry"})
_RUN_WIDE: Final = frozenset({"approval_resolved", "workflow_complete", "workflow_error", "workflow_cancelled"})
"""Types whose fold may change phases other than the event's own (gates, a run that ends)."""
_ROW: Final = ("attempt", "status", "started_at", "ended_at", "duration_ms", "error", "first_event_id", "last_event_id")


class StartTimes:
    """When the current phase or step attempt of a run started: the durations of ``events_frame`` rows.

    Fed every event of a run in order (``see``), it answers for a
    ``*_complete`` / ``*_error`` event the duration the fold gives: the
    producer's value where given, else the time since the matching start.
    """

    __slots__ = ("run_id", "starts")

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.starts: dict[tuple[str, str | None], str] = {}

    def see(self, run_id: str, e: Mapping[str, Any], given: float | None) -> float | None:
        """Note ``e`` (an event of ``run_id``, after the previous one); return its duration if it ends something."""
        if run_id != self.run_id:
            self.run_id, self.starts = run_id, {}
        etype = e.get("type")
        phase = e.get("phase")
        if phase is None or etype not in _TOUCHING:
            return given
        ts = e.get("timestamp")
        key = (phase, e.get("step") if etype.startswith("step_") else None)
        if etype == "phase_start" or etype == "step_start":
            if isinstance(ts, str):
                self.starts[key] = ts
                self.starts.setdefault((phase, None), ts)  # a phase without phase_start starts with its first step
            return given
        if given is not None or etype not in ("phase_complete", "phase_error", "step_complete", "step_error"):
            return given
        return ms_between(self.starts.get(key), ts if isinstance(ts, str) else None)


class Attempts:
    """The attempt rows of one run's phases and steps, built event by event (see the module docstring)."""

    __slots__ = ("_phase_now", "_step_now", "handlers", "phases", "state", "steps")

    def __init__(self, run_id: str, handlers: Mapping[str, RawHandler]) -> None:
        self.state = RunState(run_id=run_id)
        self.handlers = handlers
        self.phases: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []
        self._phase_now: dict[str, dict[str, Any]] = {}
        self._step_now: dict[tuple[str, str], dict[str, Any]] = {}

    def add(self, e: Mapping[str, Any]) -> None:
        """Fold ``e`` (the run's next event, upcast) if it touches a phase or step, and note what changed."""
        etype = e.get("type")
        if etype not in _TOUCHING:
            return
        state = self.state
        handler = self.handlers.get(etype)
        if handler is None:
            return
        # The handler alone: phases and steps do not depend on the run's status, which apply_mappings
        # would also move (and count); the attempt rows read phases and steps only.
        state.last_event_id = e["event_id"]
        handler(state, e)
        eid = e["event_id"]
        if etype in _RUN_WIDE:
            for p in state.phases.values():
                if p.last_event_id == eid:
                    self._note(self._phase_now, p.name, p, e, self.phases)
                for s in p.steps.values():
                    if s.last_event_id == eid:
                        self._note(self._step_now, (p.name, s.name), s, e, self.steps)
            return
        phase = state.phases.get(e.get("phase"))  # type: ignore[arg-type]  # None finds nothing
        if phase is None:
            return
        if etype in _STEP_TYPES:
            step = phase.steps.get(e.get("step"))  # type: ignore[arg-type]
            if step is not None:
                self._note(self._step_now, (phase.name, step.name), step, e, self.steps)
            row = self._phase_now.get(phase.name)
            if (
                row is not None
                and row["status"] == phase.status
                and row["_starts"] == phase.attempts
                and row["ended_at"] is None
                and phase.ended_at is None
            ):
                row["last_event_id"] = eid  # most step events leave their phase as it was: the fast path
                return
        self._note(self._phase_now, phase.name, phase, e, self.phases)

    @staticmethod
    def _note(
        now: dict[Any, dict[str, Any]], key: Any, o: PhaseState | StepState, e: Mapping[str, Any], out: list[Any]
    ) -> None:
        row = now.get(key)
        eid = e["event_id"]
        if row is None or o.attempts > row["_starts"]:
            row = now[key] = _new_row(o, eid, row["attempt"] + 1 if row else 1)
            row["_key"] = key
            out.append(row)
            return
        if o.status == "pending":  # a phase sent back by request_changes: this attempt ends here
            if row["ended_at"] is None:
                row["status"], row["ended_at"], row["last_event_id"] = "changes_requested", e["timestamp"], eid
                row["duration_ms"] = ms_between(row["started_at"], e["timestamp"])
            return
        if row["ended_at"] is not None:
            if o.status == "skipped" and row["status"] != "skipped":  # a skip after an ended attempt
                skip = now[key] = _new_row(o, eid, row["attempt"] + 1)
                skip.update(_key=key, started_at=None, duration_ms=None, error=None)
                out.append(skip)
            elif o.ended_at != row["ended_at"] and o.status not in ("retrying", "skipped"):
                _fill(row, o, eid)  # ended again without a new start (a complete after an error)
            return
        _fill(row, o, eid)


def _new_row(o: PhaseState | StepState, eid: int, attempt: int) -> dict[str, Any]:
    row: dict[str, Any] = {"attempt": attempt, "_starts": o.attempts, "first_event_id": eid}
    _fill(row, o, eid)
    return row


def _fill(row: dict[str, Any], o: PhaseState | StepState, eid: int) -> None:
    row["status"], row["started_at"], row["ended_at"] = o.status, o.started_at, o.ended_at
    row["duration_ms"], row["error"], row["last_event_id"] = o.duration_ms, o.error, eid
    row["_starts"] = o.attempts


def run_attempts(run: Run) -> Attempts:
    """The attempts of one run, read the checked way (``run.log.read_mappings``); no pandas needed."""
    from faber_runlog._domain.registry import event_types_table

    types = event_types_table(run.store.registry)
    found = Attempts(run.id, run.store.registry.folds)
    for d in run.log.read_mappings():
        found.add(upcast(d, types) if d.__class__ is dict else d)
    return found


def _read_attempts(
    store: RunStore, rids: list[RunId], *, progress: bool | None, failed: dict[RunId, BaseException]
) -> Iterator[tuple[RunId, Attempts, dict[str, Any]]]:
    """Each run's attempts and metadata, read in bulk like ``events_frame`` reads events.

    A run that cannot be read (a damaged event or metadata file) is not yielded but put in ``failed``.
    """
    from faber_runlog._base.progress import Progress
    from faber_runlog._domain.metadata import parse_metadata
    from faber_runlog._domain.registry import event_types_table
    from faber_runlog._log.bulk import read_logs

    def done(
        rid: RunId, found: Attempts, metas: Mapping[str, bytes | None]
    ) -> Iterator[tuple[RunId, Attempts, dict[str, Any]]]:
        if rid in failed:
            return
        try:
            meta = _meta_of(store, rid, metas, parse_metadata)
        except _validate.DAMAGE as e:
            failed[rid] = e
            return
        yield rid, found, meta

    types = event_types_table(store.registry)
    folds = store.registry.folds
    with (
        Progress("reading runs", len(rids), enabled=progress) as bar,
        ThreadPoolExecutor(1) as pool,
    ):
        for start in range(0, len(rids), _RUN_CHUNK):
            chunk = rids[start : start + _RUN_CHUNK]
            # The runs' metadata (params, tags) is read while their events are: one more round trip hidden.
            pending = pool.submit(store.storage.read_many, [RunLayout(r).metadata for r in chunk])
            metas: Mapping[str, bytes | None] | None = None
            current: Attempts | None = None
            rid_now: RunId | None = None
            for rid, first, lines in read_logs(
                store.storage, chunk, segment_every=store.segment_every, registry=store.registry, failed=failed
            ):
                if rid != rid_now:
                    if current is not None and rid_now is not None:
                        metas = metas if metas is not None else pending.result()
                        yield from done(rid_now, current, metas)
                    rid_now, current = rid, Attempts(str(rid), folds)
                assert current is not None
                if rid in failed:
                    continue
                try:
                    _add_lines(store, rid, first, lines, current, types)
                except _validate.DAMAGE as e:  # one damaged run must not stop the frame of the others
                    failed[rid] = e
            if current is not None and rid_now is not None:
                metas = metas if metas is not None else pending.result()
                yield from done(rid_now, current, metas)
            bar.update(len(chunk))


_RUN_CHUNK: Final = 256


def _add_lines(store: RunStore, rid: RunId, first: int, lines: list[bytes], into: Attempts, types: EventTypes) -> None:
    touching = _TOUCHING
    for seq, line in enumerate(lines, start=first):
        d = checked_line(store, rid, seq, line, types)
        if d.get("type") in touching:
            into.add(d)


def _meta_of(store: RunStore, rid: RunId, metas: Mapping[str, bytes | None], parse: Any) -> dict[str, Any]:
    body = metas.get(RunLayout(rid).metadata)
    if body is None:
        return {"params": {}, "tags": {}}
    meta = parse(store.storage, rid, body)
    return {"params": meta.params, "tags": meta.tags}


def _frame(store: RunStore, which: str, *, progress: bool | None, filters: dict[str, Any]) -> Any:
    pd = _frames.require_extra("pandas")
    query = _frames.query_of(f"{which[:-1]}s_frame()", filters)
    lo, hi = query.since, query.until
    # since/until bound the attempts' times here, not the runs' creation.
    problems: list[Any] = []
    failed: dict[RunId, BaseException] = {}
    rids = _frames.select_runs(store, attrs.evolve(query, since=None, until=None), problems)
    columns = STEP_COLUMNS if which == "steps" else PHASE_COLUMNS
    cols: dict[str, list[Any]] = {c: [] for c in columns}
    for rid, found, meta in _read_attempts(store, rids, progress=progress, failed=failed):
        rows = found.steps if which == "steps" else found.phases
        for row in rows:
            when = row["started_at"] or row["ended_at"] or ""
            if (lo is not None and when < lo) or (hi is not None and when >= hi):
                continue
            cols["run_id"].append(str(rid))
            cols["org"].append(rid.org)
            cols["project"].append(rid.project)
            cols["phase"].append(row["_key"] if which == "phases" else row["_key"][0])
            if which == "steps":
                cols["step"].append(row["_key"][1])
            for c in _ROW:
                cols[c].append(row[c])
            cols["params"].append(meta["params"])
            cols["tags"].append(meta["tags"])
    frame = pd.DataFrame(cols, columns=list(columns))
    for c in ("started_at", "ended_at"):
        frame[c] = _frames.time_column(pd, frame[c])
    frame["duration_ms"] = frame["duration_ms"].astype("float64")
    for c in ("attempt", "first_event_id", "last_event_id"):
        frame[c] = frame[c].astype("int64")
    for c in ("run_id", "org", "project", "phase", "step", "status", "error"):
        if c in frame.columns:
            frame[c] = frame[c].astype("string")
    frame.attrs["problems"] = _frames.skipped(f"{which}_frame()", problems, failed)
    return frame


def steps_frame(store: RunStore, *, progress: bool | None = None, **filters: Any) -> Any:
    """One row per attempt of a step (columns :data:`STEP_COLUMNS`), over the runs the filters select.

    Filters are the vocabulary of :class:`RunQuery` (docs/querying.md) but
    ``types``: runs are selected by ``org``, ``project``, ``run_ids``,
    ``status`` (the run's), ``tags``, ``params``, ``order``, ``limit`` and
    ``cursor``; ``since``/``until`` keep attempts whose start (else end) is in
    ``[since, until)``. ``attempt``
    counts from 1; ``duration_ms`` is the producer's value where given, else
    the time from start to end (None while running); ``params`` and ``tags``
    are the run's, as dicts.
    """
    return _frame(store, "steps", progress=progress, filters=filters)


def phases_frame(store: RunStore, *, progress: bool | None = None, **filters: Any) -> Any:
    """One row per attempt of a phase (columns :data:`PHASE_COLUMNS`); filters as :func:`steps_frame`."""
    return _frame(store, "phases", progress=progress, filters=filters)


def attempt_rows(found: Attempts, which: str) -> Iterable[dict[str, Any]]:
    """The rows of ``found`` (``"steps"`` or ``"phases"``) with ``phase`` (and ``step``) named, for renderers."""
    for row in found.steps if which == "steps" else found.phases:
        named = {k: v for k, v in row.items() if not k.startswith("_")}
        if which == "steps":
            named["phase"], named["step"] = row["_key"]
        else:
            named["phase"] = row["_key"]
        yield named
