"""LogReader: the read paths of one run's log, the base of :class:`~faber_runlog._log.eventlog.EventLog`.

Everything a reader does without appending: the state at an event (a verified snapshot plus
the events after it), the events in order from segments, event files and ``events.jsonl``, one
event by id, and following the log as it grows. Split from the append path so each can be read
on its own; the writer's state and the claim loop stay in ``eventlog``.

The caches are checked before they are used (docs/concurrency.md): a snapshot whose last event is
not the one in the log, a segment whose header, count or checksum fails, ``events.jsonl`` that does
not match its seal, all cost reads of the event files, never a wrong answer; a damaged event file
raises :class:`~faber_runlog.errors.CorruptEvent` and nothing past it is read.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from faber_runlog._base import codec as _codec
from faber_runlog._base import validate as _validate
from faber_runlog._base.advice import advise
from faber_runlog._base.ids import RunId
from faber_runlog._domain.events import Event, _event_from_dict, upcast
from faber_runlog._domain.state import RunState, apply_mappings
from faber_runlog._format.layout import (
    RunLayout,
    decode_segment,
    decode_snapshot,
    fingerprint,
    iter_jsonl,
    parse_segment_name,
    parse_seq_name,
    segment_listing_start,
    seq_name,
)
from faber_runlog._log.hooks import LogHooks
from faber_runlog._log.protocol import jsonl_problem, seal_of
from faber_runlog._storage.backends import Storage
from faber_runlog.errors import CorruptData, CorruptEvent, InvalidArgument, InvalidEventPosition

if TYPE_CHECKING:
    from faber_runlog._domain.events import EventTypes
    from faber_runlog._domain.state import RawHandler

__all__ = ["LogReader", "event_fp", "mapping_fp"]

# One logger for the whole log (reads, caches, bulk reads, appends): the name users and docs configure.
log = logging.getLogger("faber_runlog._log.eventlog")

_BATCH: Final = 256
_PAGE: Final = 1000  # event names listed per request on stores that list after a key
_SEGMENT_BATCH: Final = 8  # segments fetched together (concurrently where reads batch)
_loads: Final = _codec.loads  # bound once: it runs for every event read


def event_fp(event: Event) -> str:
    """What a snapshot records of the event it was folded up to (checked against the log before it is used)."""
    return fingerprint(event.type, event.timestamp, event.nonce)


def mapping_fp(data: dict[str, Any]) -> str:
    """:func:`event_fp` of an event's stored mapping (the fold's path builds no ``Event``)."""
    return fingerprint(data.get("type"), data.get("timestamp"), data.get("nonce"))


T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class _Decode(Protocol[T_co]):
    def __call__(self, seq: int, body: bytes, key: str | None = None, /) -> T_co: ...


def _batched(events: Generator[T, None, int], size: int = _BATCH) -> Generator[list[T], None, int]:
    """``events`` in lists of up to ``size``; the events before an error are yielded before it is raised."""
    batch: list[T] = []
    while True:
        try:
            batch.append(next(events))
        except StopIteration as stop:
            if batch:
                yield batch
            end: int = stop.value
            return end
        except Exception:
            if batch:
                yield batch
            raise
        if len(batch) >= size:
            yield batch
            batch = []


class LogReader:
    """The read paths of one run's log.

    It has no constructor: :class:`~faber_runlog._log.eventlog.EventLog` sets the attributes declared
    here (a reader learns the tail and the seal as it reads, which the writer uses too).
    """

    # Declared for the type checker only (EventLog.__init__ sets them): runtime annotations would make
    # these private types part of the public EventLog's hints.
    if TYPE_CHECKING:
        _storage: Storage
        _rid: RunId
        _run_id: str
        _layout: RunLayout
        _types: EventTypes
        _folds: Mapping[str, RawHandler]
        _segment_every: int
        _hooks: LogHooks[Any] | None
        _tail: int  # highest sequence number known to exist
        _sealed: int | None  # the seal's number, once known
        _seen: set[str] | None  # writer ids of the events folded while a race is learned
        _snap_seq: int  # the last state.json this handle knows of: its event ...
        _snap_size: int  # ... and its size

    def _shown(self, state: RunState) -> RunState:
        return self._hooks.overlay(state) if self._hooks is not None else state

    def load_state(self, at: int | None = None) -> RunState:
        """The state after event ``at`` (default: the last one), from a verified snapshot plus the events after it."""
        if at is not None and (isinstance(at, bool) or not isinstance(at, int) or at < 0):
            raise InvalidArgument(f"at must be an event id >= 0, got {at!r} (run {self._run_id})")
        state, _ = self._load(at)
        if at is not None and state.last_event_id < at:
            raise InvalidEventPosition(
                f"run {self._run_id} has events 1..{state.last_event_id}; cannot show its state at event {at}: "
                f"pass 0..{state.last_event_id}, or leave out at= for the state now",
                run_id=self._run_id,
                at=at,
                last_event_id=state.last_event_id,
            )
        return self._shown(state)

    def _load(self, at: int | None = None) -> tuple[RunState, str | None]:
        """A verified snapshot (the latest, or one at or before ``at``) plus the events after it."""
        state: RunState | None = None
        fp: str | None = None
        newer = False
        if at is not None:
            # Older snapshots first: state.json is the newest and usually past ``at``,
            # so reading it first would cost the whole current state for nothing.
            state, fp, newer = self._older_snapshot(at)
        if state is None and not newer:
            state, fp = self._snapshot(self._layout.state, at)
            if state is not None and at is None:
                self._snap_seq = max(self._snap_seq, state.last_event_id)
        if state is None:
            state, fp = RunState(run_id=self._run_id), None
        else:
            self._tail = max(self._tail, state.last_event_id)  # the snapshot's check read that event
        last = self._catch_up(state, until=at)
        if last is not None:
            fp = last
        if state.sealed_at is not None:
            self._sealed = state.sealed_at
        return state, fp

    def _older_snapshot(self, at: int) -> tuple[RunState | None, str | None, bool]:
        """The newest verified periodic snapshot at or before ``at``, and whether one after ``at`` exists."""
        seqs = sorted(s for n in self._storage.list_names(self._layout.snapshots) if (s := parse_seq_name(n)))
        for seq in reversed([s for s in seqs if s <= at]):
            state, fp = self._snapshot(self._layout.snapshot(seq), at)
            if state is not None:
                return state, fp, True
        return None, None, bool(seqs) and seqs[-1] > at

    def _snapshot(self, key: str, at: int | None) -> tuple[RunState | None, str | None]:
        """The snapshot at ``key`` if it is intact and agrees with the log (and is not past ``at``)."""
        body = self._storage.read(key)
        if body is None:
            return None, None
        if key == self._layout.state:
            self._snap_size = len(body)
        try:
            data, fp = decode_snapshot(body)
            if at is not None and int(data.get("last_event_id", 0)) > at:
                return None, None
            if "fence_epoch" not in data:  # it would hide a fence folded into it (lease rule 8): fold the log instead
                raise CorruptData("it predates fence epochs (written by an older version)")
            state = RunState.from_dict(data)
            if state.run_id != self._run_id:
                raise CorruptData(f"it belongs to run {state.run_id}")
            if state.last_event_id > 0:
                event = self._event_at(state.last_event_id)
                if event_fp(event) != fp:
                    raise CorruptData(f"event {state.last_event_id} in the log is not the one it was folded from")
        except Exception as e:  # noqa: BLE001  (a snapshot is a cache: one that fails any check costs a longer fold)
            # A snapshot is a cache: one that does not agree with the log costs a longer fold, never a wrong answer.
            log.warning("ignoring snapshot %s of run %s: %s", self._storage.path(key), self._run_id, e)
            return None, None
        return state, fp

    def _catch_up(self, state: RunState, until: int | None = None, *, fresh: bool = False) -> str | None:
        """Fold the stored events after ``state`` into it; the last one's fingerprint (None: nothing new).

        Folds the decoded mappings (no ``Event`` per event): a rebuild runs at the speed of the parser.
        """
        last = None
        folds = self._folds
        for batch in self._stored(state.last_event_id, until, self._decode_mapping, fresh=fresh):
            apply_mappings(state, batch, folds)
            last = batch[-1]
            if self._seen is not None:  # a race being learned: whose events went by (for the budget's error)
                self._seen.update(str(m.get("nonce", "")).rpartition("-")[0] for m in batch)
        return None if last is None else mapping_fp(last)

    # -- reading -----------------------------------------------------------

    def _decode(self, seq: int, body: bytes, key: str | None = None) -> Event:
        data = self._decode_mapping(seq, body, key)
        try:
            return _event_from_dict(data)
        except Exception as e:
            raise self._corrupt(seq, key, e) from e

    def _decode_mapping(self, seq: int, body: bytes, key: str | None = None) -> dict[str, Any]:
        """Event ``seq``'s stored mapping, upcast: what the fold reads (and ``Event`` is built from)."""
        try:
            data = _loads(body)
            if data.__class__ is dict and data.get("event_id") == seq and "type" in data and "timestamp" in data:
                return upcast(data, self._types)
            if not isinstance(data, dict):
                raise CorruptData(f"expected a JSON object, found {type(data).__name__}")
            if data.get("event_id") == seq:
                raise CorruptData("it has no type or no timestamp")
            raise CorruptData(f"its event_id is {data.get('event_id')!r}, not {seq}")
        except Exception as e:
            raise self._corrupt(seq, key, e) from e

    def _mappings(self, first: int, lines: list[bytes]) -> list[dict[str, Any]]:
        """What :meth:`_decode_mapping` gives for events ``first, first+1, ...``, checked in bulk (a rebuild's path).

        Raises CorruptData for a line that is not event ``first + i``: the caller then reads the files.
        """
        loads = _loads
        out = [loads(line) for line in lines]
        for seq, data in enumerate(out, first):
            whole = data.__class__ is dict and "type" in data and "timestamp" in data
            if not whole or data.get("event_id") != seq:
                raise CorruptData(f"line {seq - first + 1} is not event {seq}")
        types = self._types
        return [upcast(data, types) for data in out] if types.upcasters else out

    def _corrupt(self, seq: int, key: str | None, e: Exception) -> CorruptEvent:
        path = self._storage.path(key or self._layout.event(seq))
        where = f"line {seq} of {path}" if key else path
        return CorruptEvent(
            f"event {seq} of run {self._run_id} at {where} is unreadable ({e}); "
            "restore the file from a backup or archive, the log is not read past it",
            run_id=self._run_id,
            seq=seq,
            path=path,
        )

    def _stored(self, after: int, until: int | None, dec: _Decode[T], *, fresh: bool = False) -> Iterator[list[T]]:
        """Events after ``after`` (and up to ``until``) in order, in batches, stopping at the end of the log.

        ``dec(seq, body, key)`` decodes each one (an ``Event`` for readers, the mapping for the fold).
        Batches (a segment, a page of files) keep the per-event cost of the generators
        out of a rebuild; a batch cut short by an unreadable event is yielded before the error.
        ``fresh``: a writer that knew the whole log up to ``after`` lately (protocol rule 13), for which a
        missing file is the end without asking ``events.jsonl``.
        """
        d = dec
        listed: list[bool] = []  # set when one listing held the whole log from event 1 (see _stored_page)
        if self._sealed is not None and after < self._sealed - 1 and (until is None or until > after):
            body = self._storage.read(self._layout.jsonl)
            if body is not None:  # absent only while a consolidation is being finished: read the files
                yield from self._stored_jsonl(body, after, until, self._sealed - 1, d)
                after = self._sealed - 1
        if until is not None and after >= until:
            return
        nxt = yield from self._stored_files(after, until, d, listed)
        if (until is not None and nxt > until) or (self._sealed is not None and nxt > self._sealed):
            return
        # File ``nxt`` is missing: the end of the log, unless consolidation removed it.
        if fresh or listed == [True]:
            return
        body = self._storage.read(self._layout.jsonl)  # one GET (an existence check costs two requests on S3)
        if body is None:
            return
        seal = self._learn_seal(body)
        if nxt < seal:
            yield from self._stored_jsonl(body, nxt - 1, until, seal - 1, d)
            if until is None or until >= seal:
                yield from self._stored_files(seal - 1, until, d)

    def _learn_seal(self, body: bytes) -> int:
        """The seal's number, checked against ``events.jsonl`` (one line per event before it; protocol rule 7)."""
        through = body.count(b"\n")
        path = self._storage.path(self._layout.jsonl)
        seal_body = self._storage.read(self._layout.event(through + 1))
        seal = None if seal_body is None else self._decode(through + 1, seal_body)
        record = None if seal is None else seal_of(seal, through + 1)
        # The digest is not re-hashed on every read: each line's JSON and number are checked as it is decoded.
        problem = "it is not a seal" if record is None else jsonl_problem(record, body, check_digest=False)
        if problem is not None:
            bad_seal = CorruptEvent(
                f"{path} of run {self._run_id} holds {through} events but event {through + 1} is not a seal "
                f"that matches it ({problem}); restore the run's files from the archive",
                run_id=self._run_id,
                seq=through + 1,
                path=path,
            )
            raise advise(bad_seal, "verify")
        self._sealed = through + 1
        return through + 1

    def _stored_jsonl(
        self, body: bytes, after: int, until: int | None, last: int, dec: _Decode[T]
    ) -> Iterator[list[T]]:
        stop = last if until is None else min(until, last)
        key = self._layout.jsonl
        first = after + 1
        try:
            for chunk in iter_jsonl(body, after, stop, _PAGE):
                batch, error = self._decode_all(first, chunk, key, dec)
                if batch:
                    yield batch
                if error is not None:
                    raise error
                first += len(chunk)
        except CorruptData as e:
            if isinstance(e, CorruptEvent):
                raise
            path = self._storage.path(key)  # fewer lines than the seal says: cut short
            raise CorruptEvent(
                f"{path} of run {self._run_id} is cut short ({e}); restore it from the archive",
                run_id=self._run_id,
                seq=first,
                path=path,
            ) from e

    def _decode_all(
        self, first: int, bodies: list[bytes], key: str | None, dec: _Decode[T]
    ) -> tuple[list[T], Exception | None]:
        """``dec`` of events ``first, first+1, ...``: those before the first unreadable one, and its error.

        The fold's decoder checks a whole batch at once (a rebuild's hot path);
        when that fails, event-by-event decoding finds the line that is off.
        """
        if dec == self._decode_mapping:
            try:
                return self._mappings(first, bodies), None  # type: ignore[return-value]  # T is the mapping here
            except Exception:  # noqa: BLE001  (the fast path only: the careful path below names what is off)
                pass
        out: list[T] = []
        for seq, body in enumerate(bodies, first):
            try:
                out.append(dec(seq, body, key))
            except CorruptEvent as e:
                return out, e
        return out, None

    def _stored_files(
        self, after: int, until: int | None, dec: _Decode[T], listed: list[bool] | None = None
    ) -> Generator[list[T], None, int]:
        """Events from segments and event files; returns the first sequence number not read.

        Segments serve whole ranges with one read each; the files after the
        last usable segment are read one by one. A handle that knows the tail
        is near ``after`` skips the segment listing for an open-ended read: the
        few new events (usually none) are files.
        """
        cur = after
        near_tail = 0 < after <= self._tail < after + self._segment_every
        check = not near_tail or (until is not None and until - after > 2)
        while True:
            if check:
                cur = yield from self._stored_segments(cur, until, dec)
                if until is not None and cur >= until:
                    return cur + 1
            if not self._storage.capabilities.list_after:
                return (
                    yield from _batched(self._storage.read_numbered(self._layout.events, cur + 1, until, dec, seq_name))
                )
            cur, more = yield from self._stored_page(cur, until, dec, listed)
            if not more:
                return cur + 1
            check = True  # a full page: many events are new, so segments may cover the next ones

    def _stored_segments(self, after: int, until: int | None, dec: _Decode[T]) -> Generator[list[T], None, int]:
        """Events after ``after`` from the chain of segments that starts there; returns the last one served."""
        limit = None if until is None else min(_PAGE, -(-(until - after) // self._segment_every) + 1)
        chain: list[tuple[int, int]] = []
        reach = after
        for name in self._storage.list_after(self._layout.segments, segment_listing_start(after), limit):
            span = parse_segment_name(name)
            if span is None or span[1] <= reach:
                continue
            if span[0] > reach + 1:
                break  # a range without a segment: the event files serve it
            chain.append(span)
            reach = span[1]
            if until is not None and reach >= until:
                break
        cur = after
        for start in range(0, len(chain), _SEGMENT_BATCH):
            part = chain[start : start + _SEGMENT_BATCH]
            bodies = self._storage.read_many(self._layout.segment(f, last) for f, last in part)
            for first, last in part:
                events = self._segment_events(bodies[self._layout.segment(first, last)], first, last, cur, until, dec)
                if not events:
                    return cur
                yield events
                cur += len(events)  # a segment's events after ``cur`` are gapless
                if until is not None and cur >= until:
                    return cur
        return cur

    def _segment_events(
        self, body: bytes | None, first: int, last: int, after: int, until: int | None, dec: _Decode[T]
    ) -> list[T] | None:
        """Events ``after+1..`` of a segment, all decoded before any is used; None when it cannot be trusted."""
        key = self._layout.segment(first, last)
        if body is None:
            return None  # removed since it was listed (cleanup): the files or events.jsonl serve
        stop = last if until is None else min(until, last)
        try:
            # A segment is small (K lines), so splitting it is cheaper than walking it line by line.
            start = max(after, first - 1) + 1
            lines = decode_segment(body, self._run_id, first, last).split(b"\n")[start - first : stop - first + 1]
            events, error = self._decode_all(start, lines, key, dec)
            if error is not None:
                raise error
            return events
        except Exception as e:  # noqa: BLE001  (a segment is a cache: one that fails any check costs the reads of the files)
            # A segment is a cache: one that does not hold costs the reads of the files, never a wrong answer.
            log.warning("ignoring segment %s of run %s: %s", self._storage.path(key), self._run_id, e)
            return None

    def _stored_page(
        self, after: int, until: int | None, dec: _Decode[T], listed: list[bool] | None = None
    ) -> Generator[list[T], None, tuple[int, bool]]:
        """One LIST page of event names after ``after``, their bodies fetched concurrently in batches.

        Returns the last event read and whether more may follow (the page was full). Appends to
        ``listed`` whether this page held the whole log from event 1, every body still there.
        """
        want = _PAGE if until is None else min(_PAGE, until - after)
        names = self._storage.list_after(self._layout.events, seq_name(after), want)
        # One listing from event 1 to the end of the log, none of it gone when read: cleanup removes
        # event 1 first, so nothing had been removed, and its end is the log's (protocol rule 7).
        from_first = after == 0 and until is None and 0 < len(names) < want
        expected = after + 1
        seqs: list[int] = []
        whole = True
        for name in names:
            seq = parse_seq_name(name)
            if seq is None:
                continue
            if seq != expected:
                whole = False
                break
            seqs.append(seq)
            expected += 1
        for start in range(0, len(seqs), _BATCH):
            chunk = seqs[start : start + _BATCH]
            bodies = self._storage.read_many(self._layout.event(s) for s in chunk)
            batch: list[T] = []
            for s in chunk:
                body = bodies[self._layout.event(s)]
                if body is None:
                    if batch:
                        yield batch
                    return s - 1, False
                try:
                    batch.append(dec(s, body, None))
                except CorruptEvent:
                    if batch:
                        yield batch  # the events before an unreadable one are still served
                    raise
            if batch:
                yield batch
        last = expected - 1
        if listed is not None:
            listed.append(from_first and whole)
        return last, whole and len(names) >= want and (until is None or last < until)

    def _event_at(self, seq: int) -> Event:
        body = self._storage.read(self._layout.event(seq))
        if body is not None:
            return self._decode(seq, body)
        jsonl = self._storage.read(self._layout.jsonl)
        if jsonl is not None and seq >= 1 and seq < self._learn_seal(jsonl):
            return next(self._stored_jsonl(jsonl, seq - 1, seq, seq, self._decode))[0]
        missing = CorruptEvent(
            f"event {seq} of run {self._run_id} is missing",
            run_id=self._run_id,
            seq=seq,
            path=self._storage.path(self._layout.event(seq)),
        )
        raise advise(missing, "verify")

    def get(self, event_id: int) -> Event:
        """The event with this id."""
        return self._event_at(_validate.integer(event_id, "event_id", minimum=0, where=f"run {self._run_id}"))

    def read(
        self,
        since: int = 0,
        *,
        until: int | None = None,
        types: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> Iterator[Event]:
        """Events with ``since < event_id <= until`` in order, optionally of some ``types``.

        Keep the last ``event_id`` you saw and pass it as ``since`` next time:
        only the events after it are read.
        """
        where = f"run {self._run_id}"
        since = _validate.integer(since, "since", minimum=0, where=where)
        until = _validate.optional_integer(until, "until", minimum=0, where=where)
        limit = _validate.optional_integer(limit, "limit", where=where)
        wanted = _validate.names(types, "types", where=where)
        n = 0
        if limit is not None and limit <= 0:
            return
        if wanted is None and limit is not None:
            # The log is gapless: the first ``limit`` events after ``since`` end at ``since + limit``,
            # so the read lists and fetches only those.
            until = since + limit if until is None else min(until, since + limit)
        if wanted is None and limit is None:
            for batch in self._stored(since, until, self._decode):  # the rebuild's path: no per-event checks
                yield from batch
            return
        for batch in self._stored(since, until, self._decode):
            for event in batch:
                if wanted is not None and event.type not in wanted:
                    continue
                yield event
                n += 1
                if limit is not None and n >= limit:
                    return

    def read_mappings(self, since: int = 0) -> Iterator[dict[str, Any]]:
        """The stored mappings (upcast) of the events after ``since``: :meth:`read` without building events."""
        for batch in self._stored(since, None, self._decode_mapping):
            yield from batch

    def tail(self, since: int = 0, *, poll_interval: float = 0.25, timeout: float | None = None) -> Iterator[Event]:
        """Yield events after ``since`` as they are written; stop after ``timeout`` idle seconds."""
        where = f"run {self._run_id}"
        last = _validate.integer(since, "since", minimum=0, where=where)
        _validate.seconds(poll_interval, "poll_interval", positive=True, where=where)
        if timeout is not None:
            _validate.seconds(timeout, "timeout", where=where)
        clock = self._storage.clock  # the store's: a test's manual clock moves the timeout on at once
        idle_since = clock.monotonic()
        while True:
            got = False
            for event in self.read(last):
                last = event.event_id
                got = True
                yield event
            if got:
                idle_since = clock.monotonic()
            elif timeout is not None and clock.monotonic() - idle_since >= timeout:
                return
            else:
                clock.sleep(poll_interval)
