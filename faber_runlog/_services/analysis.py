"""Past runs as pandas DataFrames and Arrow tables, for notebooks (the ``faber_runlog[analysis]`` extra).

Events are read in bulk (:func:`faber_runlog._log.bulk.read_logs`): runs are listed
concurrently, then the segments and event files of many runs are fetched in
one concurrent batch; consolidated runs come from ``events.jsonl``. They are
parsed straight into Arrow record batches (:func:`to_arrow`), and the pandas
frame is a conversion of that table. pandas and pyarrow are imported only
when a frame is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import attrs

from faber_runlog._base import codec as _codec
from faber_runlog._base import validate as _validate
from faber_runlog._base.ids import RunId
from faber_runlog._base.progress import Progress
from faber_runlog._domain.events import EventTypes, error_text, given_duration
from faber_runlog._domain.metadata import parse_metadata
from faber_runlog._domain.query import FILTERS, RunQuery
from faber_runlog._domain.registry import event_types_table
from faber_runlog._domain.transitions import SEAL_TYPE
from faber_runlog._format.layout import RunLayout
from faber_runlog._log.bulk import current_digests, read_logs
from faber_runlog._services.frames import (
    checked_line,
    moment,
    query_of,
    require_extra,
    select_runs,
    skipped,
    time_column,
    with_problems,
)
from faber_runlog._services.lifecycle import RunProblem
from faber_runlog._services.steps import StartTimes
from faber_runlog.errors import InvalidArgument

if TYPE_CHECKING:
    from faber_runlog._services.store import RunStore

__all__ = ["EVENT_COLUMNS", "RUN_COLUMNS", "events_frame", "runs_frame", "to_arrow"]

EVENT_COLUMNS: Final = (
    "run_id", "org", "project", "event_id", "type", "timestamp", "phase", "step", "status",
    "message", "duration_ms", "error", "user", "source", "idempotency_key", "metadata",
)  # fmt: skip  # a table: one row per line
"""Columns of :func:`events_frame`, in order."""

RUN_COLUMNS: Final = (
    "run_id", "org", "project", "status", "created_at", "started_at", "ended_at", "updated_at",
    "duration_ms", "last_event_id", "current_phase", "current_step", "failed_phase", "failed_step",
    "error", "resume_count", "parent_run_id", "consolidated", "params", "tags",
)  # fmt: skip  # a table: one row per line
"""Columns of :func:`runs_frame`, in order."""

_CHUNK: Final = 256
_RUN_CHUNK: Final = 256  # runs listed, then fetched in concurrent batches, per progress step
_BATCH_ROWS: Final = 2048  # rows per Arrow record batch: the Python lists stay small
_NESTED: Final = ("metadata", "params", "tags")


EVENT_FILTERS: Final = FILTERS
"""The filters :func:`events_frame` and ``to_arrow()`` take (``since``/``until`` bound event times there)."""


def events_frame(store: RunStore, *, progress: bool | None = None, **filters: Any) -> Any:
    """One row per event (columns :data:`EVENT_COLUMNS`), runs and events filtered as asked.

    ``filters`` are the vocabulary of :class:`RunQuery` (docs/querying.md):
    runs are selected by ``org``, ``project``, ``run_ids``, ``status``,
    ``tags``, ``params``, ``order``, ``limit`` and ``cursor``; ``since``/``until``
    keep events with ``since <= timestamp < until``; ``types`` keeps those
    event types (the seal, a protocol event, only when ``types`` names it).
    ``timestamp`` is a UTC datetime, ``duration_ms`` a float: the producer's
    value (on the event or in its metadata), else for ``*_complete`` and
    ``*_error`` of a phase or step the time since its start, as the folded
    state gives it; ``error`` the error text, ``metadata`` the dict.
    Built as the Arrow table of :func:`to_arrow` and converted.
    """
    pd = require_extra("pandas")
    pa = require_extra("pyarrow")
    # Text built as large_string, which is what pandas' string columns hold: they wrap it without a copy.
    text = pa.large_string()
    query = query_of("events_frame()", filters, EVENT_FILTERS)
    table, problems = _events_table(store, pa, query, progress=progress, text=text, where="events_frame()")
    chunks = table.column("metadata").chunks
    table = table.drop_columns(["metadata"])
    frame = table.to_pandas(types_mapper={text: pd.StringDtype()}.get)
    del table
    metadata: list[Any] = []
    chunks.reverse()
    while chunks:  # each chunk of JSON text goes as soon as its dicts are built
        metadata += [_codec.loads(t) for t in chunks.pop().to_pylist()]
    frame["metadata"] = metadata
    frame.attrs["problems"] = problems
    return frame


def _event_schema(pa: Any, text: Any) -> Any:
    fields = {c: text for c in EVENT_COLUMNS}
    fields |= {"event_id": pa.int64(), "timestamp": pa.timestamp("us", tz="UTC"), "duration_ms": pa.float64()}
    return pa.schema(list(fields.items()))


def _events_table(
    store: RunStore, pa: Any, query: RunQuery, *, progress: bool | None, text: Any = None, where: str = "to_arrow()"
) -> tuple[Any, list[RunProblem]]:
    """The events as an Arrow table (text columns of type ``text``, default string), streamed into record batches.

    A run that cannot be read is left out whole and returned among the problems (see :func:`skipped`).
    """
    lo, hi = query.since, query.until
    wanted = frozenset(query.types) if query.types is not None else None
    problems: list[RunProblem] = []
    failed: dict[RunId, BaseException] = {}
    # since/until bound event times here
    rids = select_runs(store, attrs.evolve(query, since=None, until=None), problems)
    schema = _event_schema(pa, pa.string() if text is None else text)
    batches: list[Any] = []
    builder = _EventColumns(wanted, lo, hi, event_types_table(store.registry))
    with Progress("reading runs", len(rids), enabled=progress) as bar:
        for start in range(0, len(rids), _RUN_CHUNK):
            chunk = rids[start : start + _RUN_CHUNK]
            pieces = read_logs(
                store.storage,
                chunk,
                segment_every=store.segment_every,
                registry=store.registry,
                budget=_BATCH_ROWS,
                failed=failed,
            )
            for rid, first, lines in pieces:
                if rid in failed:
                    continue
                try:
                    builder.add(store, rid, first, lines)
                except _validate.DAMAGE as e:  # one damaged run must not stop the frame of the others
                    builder.drop_piece()
                    failed[rid] = e
                del lines  # the bodies go as soon as their rows are columns
                if builder.rows >= _BATCH_ROWS:
                    batches.append(builder.flush(pa, schema))
            bar.update(len(chunk))
    if builder.rows:
        batches.append(builder.flush(pa, schema))
    table = pa.Table.from_batches(batches, schema=schema)
    if failed:  # rows read before the damage was met are dropped too: a run is in the frame whole or not at all
        import pyarrow.compute as pc

        bad = pa.array([str(r) for r in failed], type=schema.field("run_id").type)
        table = table.filter(pc.invert(pc.is_in(table.column("run_id"), value_set=bad)))
    return table, skipped(where, problems, failed)


class _EventColumns:
    """Columns of one record batch, filled event by event from parsed lines; no event object or row dict is kept."""

    def __init__(self, wanted: frozenset[str] | None, lo: str | None, hi: str | None, types: EventTypes) -> None:
        self.wanted, self.lo, self.hi, self.types = wanted, lo, hi, types
        self.starts = StartTimes()
        self.hidden = frozenset() if wanted is not None and SEAL_TYPE in wanted else frozenset({SEAL_TYPE})
        self.rows = 0
        self.cols: dict[str, list[Any]] = {c: [] for c in EVENT_COLUMNS}

    def add(self, store: RunStore, rid: RunId, first: int, lines: list[bytes]) -> None:
        """Rows for events ``first, first + 1, ...`` of ``rid`` (the store's upcasters applied), filtered."""
        c = self.cols
        wanted, lo, hi, types, starts, hidden = self.wanted, self.lo, self.hi, self.types, self.starts, self.hidden
        run_id, kept = str(rid), 0
        for seq, line in enumerate(lines, start=first):
            d = checked_line(store, rid, seq, line, types)
            ts = d.get("timestamp", "")
            duration = starts.see(run_id, d, given_duration(d))  # before filtering: starts are needed later
            if (
                d.get("type") in hidden
                or (wanted is not None and d.get("type") not in wanted)
                or (lo is not None and ts < lo)
                or (hi is not None and ts >= hi)
            ):
                continue
            meta = d.get("metadata") or {}
            c["event_id"].append(seq)
            c["timestamp"].append(ts or None)
            for name in _PLAIN:
                c[name].append(d.get(name))
            c["duration_ms"].append(duration)
            c["error"].append(error_text(d.get("error", meta.get("error"))))
            # As text: orjson's bytes keep a 4 KB buffer each, the exact-size str does not.
            c["metadata"].append(_codec.dumps(meta).decode())
            kept += 1
        c["run_id"] += [run_id] * kept
        c["org"] += [rid.org] * kept
        c["project"] += [rid.project] * kept
        self.rows += kept

    def drop_piece(self) -> None:
        """Forget the rows of the piece being added when it failed (the columns are filled one by one)."""
        for values in self.cols.values():
            del values[self.rows :]

    def flush(self, pa: Any, schema: Any) -> Any:
        """The rows so far as one Arrow record batch; the Python lists are dropped."""
        import pyarrow.compute as pc

        # The system allocator gives freed builder buffers back at once; Arrow's default pool keeps them,
        # which would add about the table's size again to the peak.
        pool = pa.system_memory_pool()
        arrays = []
        for field in schema:
            values = self.cols[field.name]
            if field.name == "timestamp":
                stamps = pa.array(values, type=pa.string(), memory_pool=pool)
                try:
                    arrays.append(pc.cast(stamps, field.type, memory_pool=pool))
                except pa.ArrowInvalid:  # a time stored before times were parsed on write (nanoseconds, Feb 30)
                    arrays.append(pa.array([moment(v) for v in values], type=field.type, memory_pool=pool))
            else:
                arrays.append(pa.array(values, type=field.type, memory_pool=pool))
        self.cols = {c: [] for c in EVENT_COLUMNS}
        self.rows = 0
        return pa.RecordBatch.from_arrays(arrays, schema=schema)


_PLAIN: Final = ("type", "phase", "step", "status", "message", "user", "source", "idempotency_key")
_EVENT_TEXT: Final = (
    "run_id",
    "org",
    "project",
    "type",
    "phase",
    "step",
    "status",
    "message",
    "error",
    "user",
    "source",
    "idempotency_key",
)
_RUN_TEXT: Final = (
    "run_id",
    "org",
    "project",
    "status",
    "current_phase",
    "current_step",
    "failed_phase",
    "failed_step",
    "error",
    "parent_run_id",
)


def runs_frame(store: RunStore, *, progress: bool | None = None, **filters: Any) -> Any:
    """One row per run (columns :data:`RUN_COLUMNS`), from metadata and ``summary.json`` (verified); reads no events.

    ``filters`` are the vocabulary of :class:`RunQuery` (docs/querying.md);
    ``since``/``until`` keep runs created in ``[since, until)``; rows come
    oldest first unless ``order="newest"``. ``failed_step``
    and ``error`` name the step that failed last (if any) and why;
    ``consolidated`` says whether the run's events are in ``events.jsonl``.
    """
    pd = require_extra("pandas")
    query = query_of("runs_frame()", filters)
    problems: list[RunProblem] = []
    failed: dict[RunId, BaseException] = {}
    rids = select_runs(store, query, problems)
    cols: dict[str, list[Any]] = {c: [] for c in RUN_COLUMNS}
    storage = store.storage
    with Progress("reading runs", len(rids), enabled=progress) as bar:
        for start in range(0, len(rids), _CHUNK):
            chunk = rids[start : start + _CHUNK]
            bodies = storage.read_many(RunLayout(r).metadata for r in chunk)
            present = [r for r in chunk if bodies.get(RunLayout(r).metadata) is not None]  # others: being created
            states = current_digests(storage, present, snapshot_every=store.snapshot_every, registry=store.registry)
            for rid in present:
                state = states[rid]
                try:
                    meta = parse_metadata(store.storage, rid, bodies[RunLayout(rid).metadata] or b"")
                except _validate.DAMAGE as e:
                    state = e
                if isinstance(state, BaseException):  # one damaged run must not hide the others
                    failed[rid] = state
                    continue
                end = state.ended_at or (state.updated_at if state.is_terminal else None)
                duration = _codec.ms_between(state.started_at, end)
                row = (
                    str(rid),
                    rid.org,
                    rid.project,
                    state.status,
                    meta.created_at,
                    state.started_at,
                    state.ended_at,
                    state.updated_at,
                    duration,
                    state.last_event_id,
                    state.current_phase,
                    state.current_step,
                    state.failed_phase,
                    state.failed_step,
                    state.error,
                    state.resume_count,
                    meta.parent_run_id,
                    state.sealed_at is not None,
                    meta.params,
                    meta.tags,
                )
                for c, v in zip(RUN_COLUMNS, row, strict=True):
                    cols[c].append(v)
            bar.update(len(chunk))
    frame = pd.DataFrame(cols)
    problems = skipped("runs_frame()", problems, failed)
    for c in ("created_at", "started_at", "ended_at", "updated_at"):
        frame[c] = time_column(pd, frame[c])
    frame["duration_ms"] = frame["duration_ms"].astype("float64")
    for c in ("last_event_id", "resume_count"):
        frame[c] = frame[c].astype("int64")
    frame["consolidated"] = frame["consolidated"].astype("bool")
    for c in _RUN_TEXT:
        frame[c] = frame[c].astype("string")
    frame = frame.sort_values(["created_at", "run_id"], ascending=query.order == "oldest", ignore_index=True)
    frame.attrs["problems"] = problems
    return frame


def to_arrow(store: RunStore, kind: str = "events", **filters: Any) -> Any:
    """The events (or ``kind="runs"``: :func:`runs_frame`) as a pyarrow Table; the basis of the frames.

    Events stream into record batches as runs are read (concurrently through
    the storage layer), so memory stays near the Arrow table's own size.
    Nested columns (``metadata``, ``params``, ``tags``) are JSON text, since
    one Arrow column needs one schema and metadata differs between event types;
    DuckDB and pyarrow read them back with their JSON functions.
    """
    pa = require_extra("pyarrow")
    if kind not in ("events", "runs"):
        raise InvalidArgument(f"kind must be 'events' or 'runs', got {kind!r}")
    progress = filters.pop("progress", None)
    if kind != "runs":  # the events table
        return with_problems(
            *_events_table(store, pa, query_of("to_arrow()", filters, EVENT_FILTERS), progress=progress)
        )
    query_of('to_arrow(kind="runs")', filters)  # checked here, so the message names this call
    frame = runs_frame(store, progress=progress, **filters)
    for c in _NESTED:
        if c in frame.columns:
            frame[c] = [_codec.dumps(v).decode() for v in frame[c]]
    problems = frame.attrs.pop("problems")  # pandas would try to store attrs as JSON itself
    return with_problems(pa.Table.from_pandas(frame, preserve_index=False), problems)
