"""Past runs as pandas DataFrames and Arrow tables, for notebooks (the ``faber_runlog[analysis]`` extra).

Events of consolidated runs come from ``events.jsonl`` (one read per run,
many runs fetched concurrently on S3); other runs are read from their event
files. pandas and pyarrow are imported only when a frame is asked for.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from faber_runlog import _codec
from faber_runlog._format import RunLayout
from faber_runlog._hints import check_status_filter
from faber_runlog._ids import RunId
from faber_runlog._log import current_digests
from faber_runlog._progress import Progress
from faber_runlog._store import RunStore
from faber_runlog.errors import MissingExtra

__all__ = ["EVENT_COLUMNS", "RUN_COLUMNS", "events_frame", "runs_frame", "to_arrow"]

EVENT_COLUMNS: Final = (
    "run_id", "org", "project", "event_id", "type", "timestamp", "phase", "step", "status",
    "message", "duration_ms", "error", "user", "source", "idempotency_key", "metadata",
)  # fmt: skip
"""Columns of :func:`events_frame`, in order."""

RUN_COLUMNS: Final = (
    "run_id", "org", "project", "status", "created_at", "started_at", "ended_at", "updated_at",
    "duration_ms", "last_event_id", "current_phase", "current_step", "failed_phase", "failed_step",
    "error", "resume_count", "parent_run_id", "consolidated", "params", "tags",
)  # fmt: skip
"""Columns of :func:`runs_frame`, in order."""

_CHUNK: Final = 256
_READERS: Final = 16
_NESTED: Final = ("metadata", "params", "tags")


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as e:
        raise MissingExtra(
            f"{module} is needed for DataFrames and Arrow tables but is not installed; "
            "install the analysis extra: pip install 'faber_runlog[analysis]'"
        ) from e


def _iso(value: Any, name: str) -> str | None:
    """``value`` (ISO text, date, datetime, pandas Timestamp) as our UTC timestamp text, for comparisons."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as e:
            raise ValueError(f"{name}={value!r} is not an ISO 8601 date or time") from e
    if isinstance(value, _dt.date) and not isinstance(value, _dt.datetime):
        value = _dt.datetime(value.year, value.month, value.day)
    if not isinstance(value, _dt.datetime):
        raise ValueError(f"{name} must be an ISO string, a date or a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.UTC)
    text: str = value.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return text


def _error_text(err: Any) -> str | None:
    if err is None:
        return None
    if isinstance(err, dict):
        return str(err.get("message", _codec.dumps(err).decode()))
    return str(err)


def _select(
    store: RunStore, org: str | None, project: str | None, status: str | None, run_ids: Iterable[str] | None
) -> list[RunId]:
    if run_ids is not None:
        return [RunId.parse(r) for r in run_ids]
    if status is not None:
        return [RunId.parse(s.run_id) for s in store.list_runs(org=org, project=project, status=status)]
    return list(store._run_ids(org, project))  # a listing only: no metadata or events read


def events_frame(
    store: RunStore,
    *,
    org: str | None = None,
    project: str | None = None,
    status: str | None = None,
    since: Any = None,
    until: Any = None,
    types: Iterable[str] | None = None,
    run_ids: Iterable[str] | None = None,
    progress: bool | None = None,
) -> Any:
    """One row per event (columns :data:`EVENT_COLUMNS`), runs and events filtered as asked.

    ``status`` keeps runs whose latest status is that; ``since``/``until`` keep
    events with ``since <= timestamp < until``; ``types`` keeps those event
    types. ``timestamp`` is a UTC datetime, ``duration_ms`` a float (from the
    event or its metadata), ``error`` the error text, ``metadata`` the dict.
    """
    pd = _require("pandas")
    return pd.DataFrame(_event_columns(store, org, project, status, since, until, types, run_ids, progress)).pipe(
        _event_dtypes, pd
    )


def _event_columns(
    store: RunStore,
    org: str | None,
    project: str | None,
    status: str | None,
    since: Any,
    until: Any,
    types: Iterable[str] | None,
    run_ids: Iterable[str] | None,
    progress: bool | None,
) -> dict[str, list[Any]]:
    lo, hi = _iso(since, "since"), _iso(until, "until")
    wanted = frozenset(types) if types is not None else None
    rids = _select(store, org, project, status, run_ids)
    cols: dict[str, list[Any]] = {c: [] for c in EVENT_COLUMNS}
    def events_of(rid: RunId) -> list[dict[str, Any]]:
        # Through the log, like every reader: the same upcasters, the seal, events.jsonl when sealed.
        return [e.to_dict() for e in store.get_run(rid).log.read()]

    with Progress("reading runs", len(rids), enabled=progress) as bar, ThreadPoolExecutor(_READERS) as pool:
        for start in range(0, len(rids), _CHUNK):
            chunk = rids[start : start + _CHUNK]
            for rid, events in zip(chunk, pool.map(events_of, chunk), strict=True):
                filtered = wanted is not None or lo is not None or hi is not None
                kept = events if not filtered else [
                    d for d in events
                    if (wanted is None or d.get("type") in wanted)
                    and (lo is None or d.get("timestamp", "") >= lo)
                    and (hi is None or d.get("timestamp", "") < hi)
                ]  # fmt: skip
                _add_events(cols, rid, kept)
            bar.update(len(chunk))
    return cols


def _add_events(cols: dict[str, list[Any]], rid: RunId, ds: list[dict[str, Any]]) -> None:
    # Column by column (one comprehension each): many times faster than a row loop.
    n = len(ds)
    cols["run_id"].extend([str(rid)] * n)
    cols["org"].extend([rid.org] * n)
    cols["project"].extend([rid.project] * n)
    for c in ("event_id", "type", "phase", "step", "status", "message", "user", "source", "idempotency_key"):
        cols[c].extend([d.get(c) for d in ds])
    cols["timestamp"].extend([d.get("timestamp", "") for d in ds])
    metas = [d.get("metadata") or {} for d in ds]
    cols["metadata"].extend(metas)
    durations = [d.get("duration_ms", m.get("duration_ms")) for d, m in zip(ds, metas, strict=True)]
    cols["duration_ms"].extend([v if isinstance(v, (int, float)) else None for v in durations])
    cols["error"].extend([_error_text(d.get("error", m.get("error"))) for d, m in zip(ds, metas, strict=True)])


_EVENT_TEXT: Final = ("run_id", "org", "project", "type", "phase", "step", "status", "message", "error", "user",
                      "source", "idempotency_key")  # fmt: skip
_RUN_TEXT: Final = ("run_id", "org", "project", "status", "current_phase", "current_step", "failed_phase",
                    "failed_step", "error", "parent_run_id")  # fmt: skip


def _event_dtypes(frame: Any, pd: Any) -> Any:
    for c in _EVENT_TEXT:  # one text dtype even where a column is all missing, so Arrow sees strings
        frame[c] = frame[c].astype("string")
    frame["event_id"] = frame["event_id"].astype("int64")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    frame["duration_ms"] = frame["duration_ms"].astype("float64")
    return frame


def runs_frame(
    store: RunStore,
    *,
    org: str | None = None,
    project: str | None = None,
    status: str | None = None,
    since: Any = None,
    until: Any = None,
    run_ids: Iterable[str] | None = None,
    progress: bool | None = None,
) -> Any:
    """One row per run (columns :data:`RUN_COLUMNS`), from metadata and ``summary.json`` (verified); reads no events.

    ``since``/``until`` keep runs created in ``[since, until)``. ``failed_step``
    and ``error`` name the step that failed last (if any) and why;
    ``consolidated`` says whether the run's events are in ``events.jsonl``.
    """
    pd = _require("pandas")
    check_status_filter(status)
    lo, hi = _iso(since, "since"), _iso(until, "until")
    rids = [RunId.parse(r) for r in run_ids] if run_ids is not None else list(store._run_ids(org, project))
    cols: dict[str, list[Any]] = {c: [] for c in RUN_COLUMNS}
    storage = store.storage
    with Progress("reading runs", len(rids), enabled=progress) as bar:
        for start in range(0, len(rids), _CHUNK):
            chunk = rids[start : start + _CHUNK]
            bodies = storage.read_many(RunLayout(r).metadata for r in chunk)
            present = [r for r in chunk if bodies.get(RunLayout(r).metadata) is not None]  # others: being created
            states = current_digests(storage, present, snapshot_every=store.snapshot_every)
            for rid in present:
                meta = store._parse_metadata(rid, bodies[RunLayout(rid).metadata] or b"")
                state = states[rid]
                if isinstance(state, Exception):  # one damaged run must not hide the others
                    logging.getLogger("faber_runlog._analysis").warning("runs_frame skipped run %s: %s", rid, state)
                    continue
                if (status is not None and state.status != status) or (lo is not None and meta.created_at < lo) or (
                    hi is not None and meta.created_at >= hi
                ):
                    continue
                duration = None
                end = state.ended_at or (state.updated_at if state.is_terminal else None)
                if state.started_at is not None and end is not None:
                    a, b = pd.Timestamp(state.started_at), pd.Timestamp(end)
                    duration = (b - a).total_seconds() * 1000.0
                row = (
                    str(rid), rid.org, rid.project, state.status, meta.created_at, state.started_at, state.ended_at,
                    state.updated_at, duration, state.last_event_id, state.current_phase, state.current_step,
                    state.failed_phase, state.failed_step, state.error, state.resume_count,
                    meta.parent_run_id, state.sealed_at is not None, meta.params, meta.tags,
                )  # fmt: skip
                for c, v in zip(RUN_COLUMNS, row, strict=True):
                    cols[c].append(v)
            bar.update(len(chunk))
    frame = pd.DataFrame(cols)
    for c in ("created_at", "started_at", "ended_at", "updated_at"):
        frame[c] = pd.to_datetime(frame[c], utc=True, format="ISO8601")
    frame["duration_ms"] = frame["duration_ms"].astype("float64")
    for c in ("last_event_id", "resume_count"):
        frame[c] = frame[c].astype("int64")
    frame["consolidated"] = frame["consolidated"].astype("bool")
    for c in _RUN_TEXT:
        frame[c] = frame[c].astype("string")
    return frame.sort_values(["created_at", "run_id"], ignore_index=True)


def to_arrow(store: RunStore, kind: str = "events", **filters: Any) -> Any:
    """:func:`events_frame` (or ``kind="runs"``: :func:`runs_frame`) as a pyarrow Table.

    Nested columns (``metadata``, ``params``, ``tags``) become JSON text, since
    one Arrow column needs one schema and metadata differs between event types;
    DuckDB and pyarrow read them back with their JSON functions.
    """
    pa = _require("pyarrow")
    if kind not in ("events", "runs"):
        raise ValueError(f"kind must be 'events' or 'runs', got {kind!r}")
    frame = {"events": events_frame, "runs": runs_frame}[kind](store, **filters)
    for c in _NESTED:
        if c in frame.columns:
            frame[c] = [_codec.dumps(v).decode() for v in frame[c]]
    return pa.Table.from_pandas(frame, preserve_index=False)
