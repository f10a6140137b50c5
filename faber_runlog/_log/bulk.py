"""Bulk reads of many runs: the digests listings show, and every event of many runs for the frames.

:func:`current_digests` answers a listing with two small reads per run (its summary and a probe
for the event after it) and folds only the runs whose summary is behind; :func:`read_logs` reads
the events of many runs in bounded groups of objects fetched together. Both trust a cache only
as a single run's reader would (a summary not superseded, a segment whose checksum holds,
``events.jsonl`` that matches its seal), and hand any other run to :class:`EventLog`'s checked
reader, so the answer is always the log's. Split from ``eventlog``: they read many logs, not one.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final

import attrs

from faber_runlog._base import codec as _codec
from faber_runlog._base import validate as _validate
from faber_runlog._base.ids import RunId
from faber_runlog._domain.events import upcast
from faber_runlog._domain.registry import Registry, event_types_table
from faber_runlog._domain.state import RunDigest
from faber_runlog._format.layout import (
    SEGMENT_EVENTS,
    RunLayout,
    decode_segment,
    decode_summary,
    iter_jsonl,
    parse_segment_name,
    parse_seq_name,
    seq_name,
)
from faber_runlog._log.eventlog import EventLog
from faber_runlog._log.protocol import jsonl_problem, seal_record
from faber_runlog._storage.backends import Storage

__all__ = ["current_digests", "read_logs"]

# One logger for the whole log (reads, caches, bulk reads, appends): the name users and docs configure.
log = logging.getLogger("faber_runlog._log.eventlog")

_loads: Final = _codec.loads


def current_digests(
    storage: Storage, run_ids: Iterable[RunId], *, snapshot_every: int = 100, registry: Registry | None = None
) -> dict[RunId, RunDigest | Exception]:
    """What a listing shows of many runs (status, timestamps, phase and step...), or the error that stopped one.

    Reads each run's ``summary.json`` and probes for the event after it, in
    batches (concurrently on S3): two small reads per run. A summary is used
    as it is only when its checksum holds, it names this run and event
    ``last_event_id + 1`` does not exist; any other run is folded from its log
    (snapshot plus the events after it) with ``registry``'s folds and upcasters
    (the store's), so the status is always the log's.
    """
    rids = list(run_ids)
    layouts = {rid: RunLayout(rid) for rid in rids}
    bodies = storage.read_many(layouts[r].summary for r in rids)
    decoded: dict[RunId, RunDigest] = {}
    for rid in rids:
        body = bodies.get(layouts[rid].summary)
        if body is None:
            continue
        try:
            digest = RunDigest.from_dict(decode_summary(body))
        except _codec.DECODE_ERRORS as e:  # a cache: a damaged one costs a fold, never a wrong answer
            log.warning("ignoring summary %s: %s", storage.path(layouts[rid].summary), e)
            continue
        if digest.run_id == str(rid):
            decoded[rid] = digest
    found = storage.read_many(layouts[r].event(d.last_event_id + 1) for r, d in decoded.items())
    # "No event after it" must not be satisfiable by a deletion: cleanup removes event files only once
    # events.jsonl exists (and never removes it), so a summary that is not the seal's own is trusted
    # only if, after the probe above missed, the run has no events.jsonl (protocol rule 11).
    unsealed = [
        r
        for r, d in decoded.items()
        if found.get(layouts[r].event(d.last_event_id + 1)) is None and d.sealed_at != d.last_event_id
    ]
    consolidated = _exist(storage, [layouts[r].jsonl for r in unsealed])
    out: dict[RunId, RunDigest | Exception] = {}
    for rid in rids:
        got = decoded.get(rid)
        if (
            got is not None
            and found.get(layouts[rid].event(got.last_event_id + 1)) is None
            and layouts[rid].jsonl not in consolidated
        ):
            out[rid] = got
            continue
        try:
            log_ = EventLog(storage, rid, snapshot_every=snapshot_every, registry=registry)
            # A summary that is behind still carries the run's metadata, which never changes.
            out[rid] = RunDigest.of(log_.load_state(), None, got.listing if got is not None else None)
        except Exception as e:  # noqa: BLE001  (reported per run: one damaged run must not hide the others)
            out[rid] = e
    return out


def _exist(storage: Storage, keys: list[str]) -> set[str]:
    """Which of ``keys`` exist (concurrently where reads batch)."""
    if not keys:
        return set()
    if storage.capabilities.batched_reads and len(keys) > 1:
        with ThreadPoolExecutor(min(_FALLBACK_READERS, len(keys))) as pool:
            there = list(pool.map(storage.exists, keys))
    else:
        there = [storage.exists(k) for k in keys]
    return {k for k, e in zip(keys, there, strict=True) if e}


@attrs.frozen
class _Part:
    """One object of a bulk read: a segment, an event file, or ``events.jsonl`` with its seal (``sealed``)."""

    run: int  # index of the run in the caller's list
    first: int  # the first event it holds
    count: int  # how many events it holds (0: the run is read the checked way)
    shape: str  # "segment", "file", "sealed" or "checked"
    keys: tuple[str, ...] = ()


_FALLBACK_READERS: Final = 16


def read_logs(
    storage: Storage,
    run_ids: Iterable[RunId],
    *,
    segment_every: int = SEGMENT_EVENTS,
    registry: Registry | None = None,
    listers: int = 32,
    budget: int = 2048,
    failed: dict[RunId, BaseException] | None = None,
) -> Iterator[tuple[RunId, int, list[bytes]]]:
    """Every event of many runs as stored JSON lines, in pieces ``(run, first, lines)`` (line i: event first + i).

    The bulk reader behind the frames. Each run's event names are listed (its
    segments too when it is longer than one segment), then the objects of
    many runs are fetched in groups of about ``budget`` events, one batch per
    group (concurrent GETs on S3), so memory stays bounded however many and
    however long the runs. Segments are verified like any reader does, and a
    consolidated run is read from ``events.jsonl`` checked against its seal. A
    run that is not such a plain chain (a damaged segment, a file removed
    meanwhile, a gap) is read from where it stopped through
    :meth:`EventLog.read_mappings`, so the answer is always the log's. A run's
    pieces come in order, one after another; lines are not decoded here.

    With ``failed`` given, a run that cannot be read (a damaged event file, a
    listing refused) is recorded there with its error and not read further,
    and the others go on; its pieces yielded before are the caller's to drop.
    Without it, the first such error is raised.
    """
    rids = list(run_ids)
    if not rids:
        return
    types = event_types_table(registry if registry is not None else Registry.default())

    def fallback(rid: RunId, since: int) -> list[bytes]:
        try:
            found = EventLog(storage, rid, segment_every=segment_every, registry=registry).read_mappings(since)
            return [_codec.dumps(m) for m in found]
        except _validate.DAMAGE as e:
            if failed is None:
                raise
            failed.setdefault(rid, e)
            return []

    def plan(i: int) -> list[_Part]:
        try:
            return _plan(storage, rids[i], i, segment_every)
        except _validate.DAMAGE:
            return [_Part(i, 1, 0, "checked")]  # the checked reader raises (or records) what is wrong

    def fetch(group: list[_Part]) -> tuple[list[_Part], dict[str, bytes | None]]:
        return group, storage.read_many(k for p in group for k in p.keys)

    stopped: set[int] = set()  # runs handed to the checked reader: their later parts are skipped
    # Listings, fetches and decoding overlap: a group is fetched as soon as its runs are listed, a few
    # groups ahead of the one being yielded where reads have round trips (batched reads), so round trips
    # overlap while memory stays a few groups; elsewhere one group at a time, which costs nothing.
    depth = _GROUPS_AHEAD if storage.capabilities.batched_reads else 0
    with ThreadPoolExecutor(min(listers, len(rids))) as lists, ThreadPoolExecutor(max(1, depth)) as fetches:
        ahead: deque[Future[tuple[list[_Part], dict[str, bytes | None]]]] = deque()
        plans = lists.map(plan, range(len(rids)))
        for group in _groups(plans, budget):
            ahead.append(fetches.submit(fetch, group))
            while len(ahead) > depth:
                yield from _read_parts(storage, rids, *ahead.popleft().result(), stopped, types, fallback, budget)
        while ahead:
            yield from _read_parts(storage, rids, *ahead.popleft().result(), stopped, types, fallback, budget)


_GROUPS_AHEAD: Final = 3


def _plan(storage: Storage, rid: RunId, i: int, segment_every: int) -> list[_Part]:
    """What to fetch for run ``rid`` (number ``i``) from its listing: segments, files, or ``events.jsonl``."""
    layout = RunLayout(rid)
    checked = [_Part(i, 1, 0, "checked")]
    # Most active runs are shorter than a segment: one page of names says so, and no segment is listed.
    head = [s for n in storage.list_after(layout.events, "", segment_every + 1) if (s := parse_seq_name(n))]
    parts: list[_Part] = []
    if len(head) < segment_every:  # no range of K events is complete, so no segment exists
        if head and head[0] > 1:  # consolidated and cleaned up: events.jsonl holds 1..S-1, file S is the seal
            parts.append(_Part(i, 1, head[0], "sealed", (layout.jsonl, layout.event(head[0]))))
        reach = head[0] if head and head[0] > 1 else 0
        rest = head[1:] if parts else head
    else:
        reach = 0
        for name in storage.list_after(layout.segments, ""):
            span = parse_segment_name(name)
            if span is not None and span[0] == reach + 1:  # names sort by last event: a chain from event 1
                parts.append(_Part(i, span[0], span[1] - span[0] + 1, "segment", (layout.segment(*span),)))
                reach = span[1]
        rest = [s for n in storage.list_after(layout.events, seq_name(reach)) if (s := parse_seq_name(n))]
    if rest != list(range(reach + 1, reach + 1 + len(rest))):
        return checked  # a gap or a stray name: the log's reader decides
    return parts + [_Part(i, s, 1, "file", (layout.event(s),)) for s in rest]


def _groups(plans: Iterable[list[_Part]], budget: int) -> Iterator[list[_Part]]:
    """The parts of all runs, in order, in groups of about ``budget`` events (a part is never split)."""
    group: list[_Part] = []
    weight = 0
    for part in (p for plan in plans for p in plan):
        if group and weight + part.count > budget:
            yield group
            group, weight = [], 0
        group.append(part)
        weight += max(1, part.count)
    if group:
        yield group


def _read_parts(
    storage: Storage,
    rids: list[RunId],
    parts: list[_Part],
    bodies: dict[str, bytes | None],
    stopped: set[int],
    types: Any,
    fallback: Callable[[RunId, int], list[bytes]],
    budget: int,
) -> Iterator[tuple[RunId, int, list[bytes]]]:
    """One group of a bulk read, its objects fetched in one batch: verified, then yielded in order."""
    ready: list[tuple[_Part, tuple[bytes, ...] | None]] = []
    for p in parts:
        if p.run in stopped:
            continue
        got = _verified(storage, rids[p.run], p, [bodies.pop(k, None) for k in p.keys], types)
        if got is None:
            stopped.add(p.run)  # read from here on the checked way, concurrently with the group's others
        ready.append((p, got))
    todo = [p for p, got in ready if got is None]
    rest: dict[int, list[bytes]] = {}
    if todo:
        with ThreadPoolExecutor(min(_FALLBACK_READERS, len(todo))) as pool:
            slow = pool.map(lambda p: fallback(rids[p.run], p.first - 1), todo)
            rest = {p.run: lines for p, lines in zip(todo, slow, strict=True)}
    run, first = -1, 0
    lines: list[bytes] = []
    for p, got in ready:
        if got is None or p.run != run or first + len(lines) != p.first:
            if lines:
                yield rids[run], first, lines
            run, first, lines = p.run, p.first, []
        if got is None:
            found = rest.pop(p.run)
            for start in range(0, len(found), budget):
                yield rids[p.run], p.first + start, found[start : start + budget]
            run = -1
            continue
        for line in _part_lines(p, got):
            lines.append(line)
            if len(lines) >= budget:  # pieces stay small: the caller's columns are built per piece
                yield rids[run], first, lines
                first, lines = first + len(lines), []
    if lines:
        yield rids[run], first, lines


def _verified(
    storage: Storage, rid: RunId, part: _Part, bodies: list[bytes | None], types: Any
) -> tuple[bytes, ...] | None:
    """The part's content when it can be used as it is; None sends the run to the checked reader."""
    if part.shape == "checked" or any(b is None for b in bodies):
        return None  # a file or a segment removed since it was listed (cleanup after archiving)
    found = [b for b in bodies if b is not None]
    if part.shape == "segment":
        try:
            return (decode_segment(found[0], str(rid), part.first, part.first + part.count - 1),)
        except ValueError as e:
            # A segment is a cache: one that does not hold costs the reads of the files, never a wrong answer.
            log.warning("ignoring segment %s of run %s: %s", storage.path(part.keys[0]), rid, e)
            return None
    if part.shape == "sealed":
        body, seal_body = found
        try:
            seal = _loads(seal_body)
        except ValueError:
            return None
        record = seal_record(upcast(seal, types) if isinstance(seal, dict) else None, part.count)
        if record is None or jsonl_problem(record, body, check_digest=False) is not None:
            return None  # the checked reader says what is wrong (or reads a consolidation being finished)
    return tuple(found)


def _part_lines(part: _Part, got: tuple[bytes, ...]) -> Iterator[bytes]:
    """The event lines of a verified part, in order (a segment or ``events.jsonl`` walked in place)."""
    if part.shape == "file":
        yield got[0]
        return
    last = part.count if part.shape == "segment" else part.count - 1
    for lines in iter_jsonl(got[0], 0, last):
        yield from lines
    if part.shape == "sealed":
        yield got[1]
