"""The one filter vocabulary of run listings and frames: :class:`RunQuery`, checked once for every entry point.

``list_runs``, ``runs_frame``, ``events_frame``, ``to_arrow`` and ``faber-runlog
list`` take the same keyword filters; each builds a :class:`RunQuery` with
:meth:`RunQuery.of`, which refuses what cannot mean anything (a misspelt keyword,
a status no run can have, ``limit=-1``, a date that is no date) with an
:class:`InvalidArgument` naming what is accepted, and reads a single string
where a list is accepted as one value (``types="step_error"`` is
``types=["step_error"]``, never its characters).
"""

from __future__ import annotations

import base64
import datetime as _dt
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import attrs

from faber_runlog._base import codec as _codec
from faber_runlog._base.ids import RunId, validate_slug
from faber_runlog._domain.hints import check_status_filter, did_you_mean
from faber_runlog.errors import InvalidArgument, InvalidFilter, InvalidRunId

if TYPE_CHECKING:
    from faber_runlog._domain.transitions import RunStatus

__all__ = ["FILTERS", "RUN_FILTERS", "Order", "RunQuery", "check_filters", "encode_cursor", "moment"]

Order = Literal["newest", "oldest"]

FILTERS: Final = (
    "org",
    "project",
    "run_ids",
    "status",
    "types",
    "tags",
    "params",
    "since",
    "until",
    "ended_since",
    "ended_until",
    "order",
    "limit",
    "cursor",
)
"""Every filter keyword of the vocabulary, in the order the docs list them."""

RUN_FILTERS: Final = tuple(f for f in FILTERS if f != "types")
"""The filters of run listings (``list_runs``, ``runs_frame``): all but the event ``types``."""

_T = TypeVar("_T")


def _one_or_many(value: object, name: str, kind: type[_T] = str) -> tuple[Any, ...] | None:  # type: ignore[assignment]
    """``value`` as a tuple: None stays None, a single string is one value (never its characters)."""
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise InvalidArgument(
            f"{name} takes one {kind.__name__} or a list of them, got {type(value).__name__} {value!r}"
        )
    out = tuple(value)
    for v in out:
        if not isinstance(v, kind):
            raise InvalidArgument(f"{name} takes {kind.__name__} values, got {type(v).__name__} {v!r}")
    return out


def moment(value: object, name: str) -> str | None:
    """``value`` (ISO text, date, datetime, pandas Timestamp) as the stored UTC timestamp text, for comparisons."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as e:
            raise InvalidArgument(
                f"{name}={value!r} is not an ISO 8601 date or time; write it as 2026-01-31 or 2026-01-31T12:00:00Z"
            ) from e
    if isinstance(value, _dt.date) and not isinstance(value, _dt.datetime):
        value = _dt.datetime(value.year, value.month, value.day)
    if not isinstance(value, _dt.datetime):
        raise InvalidArgument(
            f"{name} takes an ISO 8601 string, a date or a datetime, got {type(value).__name__} {value!r}"
        )
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.UTC)
    return _codec.iso(value)


def _str_map(value: object, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"{name} takes a mapping such as {{'work_id': '220'}}, got {type(value).__name__}")
    out = dict(value)
    for k, v in out.items():
        if not isinstance(k, str):
            raise InvalidArgument(f"{name} keys are strings, got {type(k).__name__} {k!r}")
        if isinstance(v, float) and math.isnan(v):
            raise InvalidArgument(f"{name}[{k!r}] is NaN, which equals nothing; pass the value the runs carry")
    return out


def _limit(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"limit takes a whole number >= 0 (or None for all), got {value!r}")
    return value


def _statuses(value: object) -> tuple[RunStatus, ...] | None:
    found = _one_or_many(value, "status")
    if found is None:
        return None
    return tuple(s for s in (check_status_filter(v) for v in found) if s is not None)


def encode_cursor(created_at: str, run_id: str) -> str:
    """The opaque cursor that resumes a listing right after the run ``run_id`` created at ``created_at``."""
    return base64.urlsafe_b64encode(_codec.dumps([created_at, run_id])).decode().rstrip("=")


def _cursor(value: object) -> tuple[str, str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            body = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            created_at, run_id = _codec.loads(body)
            if isinstance(created_at, str) and isinstance(run_id, str):
                return created_at, run_id
        except _codec.DECODE_ERRORS:
            pass
    raise InvalidArgument(
        f"cursor={value!r} is not a cursor this library handed out; pass the next_cursor of the previous page "
        "(RunList.next_cursor, or 'next_cursor' in faber-runlog list --json), or leave it out for the first page"
    )


@attrs.frozen(slots=True)
class RunQuery:
    """Which runs (and events) a listing or frame wants: the one checked filter vocabulary.

    Build it with :meth:`of` (which checks and normalises every value).
    ``status``, ``run_ids`` and ``types`` hold any of several values;
    ``tags`` and ``params`` must all match (params compare as given, or as
    text when the run's value is not a string: ``params={"work_id": "220"}``
    matches ``220`` and ``"220"``); ``since``/``until`` keep runs created in
    ``[since, until)`` (for events: events timed in it); ``ended_since``/
    ``ended_until`` keep runs that ended (completed, failed or were cancelled)
    in ``[ended_since, ended_until)``, so a run still going matches neither; ``order`` is
    ``"newest"`` (the default) or ``"oldest"`` first; ``limit`` and ``cursor``
    page through the answer.
    """

    org: str | None = None
    project: str | None = None
    run_ids: tuple[str, ...] | None = None
    status: tuple[RunStatus, ...] | None = None
    types: tuple[str, ...] | None = None
    tags: dict[str, Any] = attrs.field(factory=dict)
    params: dict[str, Any] = attrs.field(factory=dict)
    since: str | None = None
    until: str | None = None
    ended_since: str | None = None
    ended_until: str | None = None
    order: Order = "newest"
    limit: int | None = None
    cursor: tuple[str, str] | None = None

    @classmethod
    def of(cls, where: str = "list_runs()", accepted: Sequence[str] = FILTERS, **filters: Any) -> RunQuery:
        """Check ``filters`` for the entry point ``where`` (which takes ``accepted``) and build the query."""
        check_filters(where, filters, accepted)
        org, project = filters.get("org"), filters.get("project")
        if org is not None:
            validate_slug(org, "org")
        if project is not None:
            validate_slug(project, "project")
        ids = _one_or_many(filters.get("run_ids"), "run_ids")
        if ids is not None:
            for r in ids:
                try:
                    RunId.parse(r)
                except InvalidRunId as e:
                    raise InvalidArgument(f"run_ids holds {r!r}, which is no run id ({e})") from e
        order = filters.get("order")
        if order is None:
            order = "newest"
        if order not in ("newest", "oldest"):
            raise InvalidArgument(
                f"order takes 'newest' or 'oldest', got {order!r}{did_you_mean(order, ('newest', 'oldest'))}"
            )
        tags = _str_map(filters.get("tags"), "tags")
        for k, v in tags.items():
            if not isinstance(v, str):
                raise InvalidArgument(f"tags[{k!r}] must be a string (tags are text), got {type(v).__name__}")
        since, until = moment(filters.get("since"), "since"), moment(filters.get("until"), "until")
        if since is not None and until is not None and until < since:
            raise InvalidFilter(f"until={until} is before since={since}, so nothing can match; swap them")
        ended_since = moment(filters.get("ended_since"), "ended_since")
        ended_until = moment(filters.get("ended_until"), "ended_until")
        if ended_since is not None and ended_until is not None and ended_until < ended_since:
            raise InvalidFilter(
                f"ended_until={ended_until} is before ended_since={ended_since}, so nothing can match; swap them"
            )
        return cls(
            org=org,
            project=project,
            run_ids=tuple(str(RunId.parse(r)) for r in ids) if ids is not None else None,
            status=_statuses(filters.get("status")),
            types=_one_or_many(filters.get("types"), "types"),
            tags=tags,
            params=_str_map(filters.get("params"), "params"),
            since=since,
            until=until,
            ended_since=ended_since,
            ended_until=ended_until,
            order="newest" if order == "newest" else "oldest",
            limit=_limit(filters.get("limit")),
            cursor=_cursor(filters.get("cursor")),
        )

    def filters(self, accepted: Sequence[str] = FILTERS) -> dict[str, Any]:
        """The keyword filters that build this query again with :meth:`of` (those in ``accepted``).

        Values come back in their checked form (times as stored text, the cursor encoded), so
        ``RunQuery.of(where, accepted, **q.filters(accepted))`` equals ``q`` but for the filters left out.
        """
        values: dict[str, Any] = {
            "org": self.org,
            "project": self.project,
            "run_ids": self.run_ids,
            "status": self.status,
            "types": self.types,
            "tags": self.tags,
            "params": self.params,
            "since": self.since,
            "until": self.until,
            "ended_since": self.ended_since,
            "ended_until": self.ended_until,
            "order": self.order,
            "limit": self.limit,
            "cursor": encode_cursor(*self.cursor) if self.cursor is not None else None,
        }
        return {k: v for k, v in values.items() if k in accepted}

    def wants_run(self, run_id: str, created_at: str, params: Mapping[str, Any], tags: Mapping[str, Any]) -> bool:
        """Whether a run with these facts (which never change) passes the filters other than status and paging."""
        if self.run_ids is not None and run_id not in self.run_ids:
            return False
        if self.since is not None and created_at < self.since:
            return False
        if self.until is not None and created_at >= self.until:
            return False
        if any(tags.get(k) != v for k, v in self.tags.items()):
            return False
        return all(_param_matches(params, k, v) for k, v in self.params.items())

    @property
    def by_end(self) -> bool:
        """Whether the query filters on the end time (so only runs that ended can match)."""
        return self.ended_since is not None or self.ended_until is not None

    def wants_end(self, ended_at: str | None) -> bool:
        """Whether a run that ended at ``ended_at`` (None: it has not ended) passes the end-time filters."""
        if not self.by_end:
            return True
        if ended_at is None:
            return False
        if self.ended_since is not None and ended_at < self.ended_since:
            return False
        return self.ended_until is None or ended_at < self.ended_until

    def wants_status(self, status: str) -> bool:
        """Whether a run of this status passes the status filter."""
        return self.status is None or status in self.status

    def page(self, rows: list[_T], key: Any) -> tuple[list[_T], str | None]:
        """``rows`` in this query's order after its cursor, cut to its limit; and the cursor of the next page.

        ``key(row)`` gives ``(created_at, run_id)``; rows come back sorted by it,
        newest or oldest first.
        """
        newest = self.order == "newest"
        rows = sorted(rows, key=key, reverse=newest)
        if self.cursor is not None:
            after = self.cursor
            rows = [r for r in rows if (key(r) < after if newest else key(r) > after)]
        if self.limit is None or len(rows) <= self.limit:
            return rows, None
        rows = rows[: self.limit]
        last = key(rows[-1]) if rows else self.cursor
        return rows, (encode_cursor(*last) if last is not None else None)


def _param_matches(params: Mapping[str, Any], key: str, wanted: Any) -> bool:
    if key not in params:
        return False
    have = params[key]
    if have == wanted and type(have) is type(wanted):
        return True
    # From a command line every value is text: "220" matches 220 (and True matches "true").
    as_text = have if isinstance(have, str) else _codec.dumps(have).decode()
    return (isinstance(wanted, str) and as_text == wanted) or (not isinstance(wanted, str) and have == wanted)


def check_filters(where: str, filters: Mapping[str, Any], accepted: Sequence[str]) -> None:
    """Refuse a keyword ``where`` does not take, naming the ones it does (a typo is never silently ignored)."""
    unknown = [k for k in filters if k not in accepted]
    if unknown:
        k = unknown[0]
        raise InvalidArgument(
            f"{where} got an unknown filter {k!r}{did_you_mean(k, accepted)}; it accepts: {', '.join(accepted)}"
        )
