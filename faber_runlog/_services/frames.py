"""What every frame shares: its checked filters, the run selection, the runs it skipped, its columns of times.

``events_frame``, ``runs_frame``, ``to_arrow`` (:mod:`faber_runlog._services.analysis`) and
``steps_frame``, ``phases_frame`` (:mod:`faber_runlog._services.steps`) select their runs
here, the one way, so every frame and :meth:`RunStore.list_runs` agree on which
runs a filter means; a frame surfaces the runs it had to leave out the one way
too (:func:`skipped`). pandas and pyarrow are imported only by the frame that
asks for them (:func:`require_extra`).
"""

from __future__ import annotations

import datetime as _dt
import logging
from typing import TYPE_CHECKING, Any, Final

import attrs

from faber_runlog._base import codec as _codec
from faber_runlog._base import validate as _validate
from faber_runlog._base.advice import advise
from faber_runlog._base.ids import RunId
from faber_runlog._domain.events import EventTypes, upcast
from faber_runlog._domain.query import RUN_FILTERS, RunQuery
from faber_runlog._services import resolve as _resolve
from faber_runlog._services.lifecycle import RunProblem
from faber_runlog.errors import CorruptData, MissingExtra

if TYPE_CHECKING:
    from faber_runlog._services.store import RunStore

__all__ = ["checked_line", "query_of", "require_extra", "select_runs", "skipped", "time_column", "with_problems"]

_loads: Final = _codec.loads
_log: Final = logging.getLogger("faber_runlog._services.frames")


def require_extra(module: str) -> Any:
    """``module`` (pandas or pyarrow) imported; :class:`MissingExtra` naming the ``analysis`` extra when it is not."""
    try:
        return __import__(module)
    except ImportError as e:
        raise MissingExtra(
            f"{module} is needed for DataFrames and Arrow tables but is not installed; "
            "install the analysis extra: pip install 'faber_runlog[analysis]'"
        ) from e


def query_of(where: str, filters: dict[str, Any], accepted: tuple[str, ...] = RUN_FILTERS) -> RunQuery:
    """The checked :class:`RunQuery` of a frame's keyword ``filters``; frames list oldest first unless asked."""
    if filters.get("order") is None:
        filters = {**filters, "order": "oldest"}
    return RunQuery.of(where, accepted, **filters)


def select_runs(store: RunStore, query: RunQuery, problems: list[RunProblem] | None = None) -> list[RunId]:
    """The runs a frame reads, in the query's order: the one selection every frame goes through.

    Only org, project and run ids: a listing, nothing read; any other filter
    (status, tags, params, creation time, limit, cursor) goes through
    :meth:`RunStore.list_runs`' summaries, so frames and listings agree.
    Runs the selection had to skip (unsafe folders, damaged runs) go to ``problems``.
    """
    plain = attrs.evolve(query, org=None, project=None, run_ids=None, order="oldest", types=None)
    if plain == RunQuery(order="oldest"):
        if query.run_ids is not None:
            rids = [RunId.parse(r) for r in dict.fromkeys(query.run_ids)]
            return [r for r in rids if query.org in (None, r.org) and query.project in (None, r.project)]
        # A listing only: no metadata or events read.
        return list(_resolve.run_ids(store.storage, query.org, query.project, problems))
    found = store.list_runs(**query.filters(RUN_FILTERS))
    if problems is not None:
        problems += found.problems
    return [RunId.parse(s.run_id) for s in found]


def skipped(where: str, problems: list[RunProblem], failed: dict[RunId, BaseException]) -> list[RunProblem]:
    """``problems`` plus the runs in ``failed`` (each logged as a warning naming the run and why).

    The one way frames surface the runs they skipped: the frame is built from
    the others, and ``frame.attrs["problems"]`` (an Arrow table's schema
    metadata ``problems``) lists these :class:`RunProblem` rows.
    """
    for rid, e in failed.items():
        text = _validate.problem_text(e)
        _log.warning("%s skipped damaged run %s: %s", where, rid, text)
        problems.append(RunProblem(str(rid), text))
    return problems


def with_problems(table: Any, problems: list[RunProblem]) -> Any:
    """``table`` with ``problems`` as JSON in its schema metadata (key ``problems``), when there are any."""
    if not problems:
        return table
    rows = [{"run_id": p.run_id, "error": p.error, "kind": p.kind} for p in problems]
    return table.replace_schema_metadata({**(table.schema.metadata or {}), b"problems": _codec.dumps(rows)})


def checked_line(store: RunStore, rid: RunId, seq: int, line: bytes, types: EventTypes) -> dict[str, Any]:
    """Event ``seq`` of ``rid`` decoded from its stored ``line`` (upcast); else the checked reader's error.

    A line that does not decode, or names another number, is read again the checked
    way, which raises :class:`CorruptEvent` naming the file (or the error below).
    """
    try:
        d = _loads(line)
    except ValueError:
        d = None
    d = upcast(d, types) if d.__class__ is dict else {}
    if d.get("event_id") != seq:
        list(store.get_run(rid).log.read(seq - 1, until=seq))
        raise advise(CorruptData(f"event {seq} of run {rid} is not what its line says"), "verify", run_id=str(rid))
    return d


def time_column(pd: Any, values: Any) -> Any:
    """Stored times as a UTC datetime column; a time stored before times were parsed on write
    (February 30, nanoseconds) is NaT, as in ``events_frame``, instead of stopping the frame."""
    try:
        return pd.to_datetime(values, utc=True, format="ISO8601")
    except (ValueError, OverflowError):
        return pd.to_datetime([moment(v) for v in values], utc=True)


def moment(value: str | None) -> _dt.datetime | None:
    """A stored time as a UTC datetime (to the microsecond); None when it is no real time."""
    return _validate.parse_timestamp(value)
