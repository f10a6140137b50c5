"""EventLog: append typed events to one run and read them back in order.

The numbered event files are the only truth. A sequence number is claimed
only by exclusively creating ``events/<seq>``; everything else (``state.json``,
older snapshots, ``events.jsonl``) is a cache that is checked against those
files before it is used. The protocol, with the reason for each rule, is in
docs/concurrency.md; in short:

1. A writer appends ``tail + 1`` and learns its tail from the event files,
   never from a snapshot's word.
2. An append of a type in the transition table is checked against the exact
   state it will follow; the claim itself proves that state was current (a
   writer that loses the number folds what it missed and checks again).
3. Consolidation claims the next number with a ``log_sealed`` event; nothing is
   acknowledged after it, and a writer that meets it gets :class:`RunArchived`.
4. Event files are removed only after the seal is older than ``seal_grace``;
   a writer whose knowledge of the tail is older than half that checks for a
   consolidated log after its create, so a stalled writer that recreated a
   removed number is refused instead of acknowledged.
5. Once a number is claimed the append has succeeded: what follows (snapshots,
   segments, reports, releases) is logged on failure, never raised.
6. A segment (events ``first..last`` in one object) is written put-if-absent,
   only from the bytes of event files that exist, once ``last`` is claimed; a
   reader uses it only when its header, count and checksum hold, else reads
   the files. So a segment never changes what a reader sees, only its cost.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final, Protocol, TypeVar

import attrs

from faber_runlog._base import codec as _codec
from faber_runlog._base import validate as _validate
from faber_runlog._base.advice import advise, status_advice
from faber_runlog._base.clock import Clock
from faber_runlog._base.ids import RunId
from faber_runlog._domain.events import Event, _event_from_dict, type_version, upcast, validate_event_dict
from faber_runlog._domain.metadata import USER
from faber_runlog._domain.registry import Registry, event_types_table
from faber_runlog._domain.state import RunDigest, RunState, apply, apply_mappings, fold_generation
from faber_runlog._domain.transitions import (
    APPROVAL_ACTIONS,
    ENDING_APPROVAL_ACTIONS,
    SAME,
    SEAL_TYPE,
    TERMINAL_STATUSES,
    TRANSITIONS,
    Transition,
)
from faber_runlog._format.layout import (
    SEGMENT_EVENTS,
    SNAPSHOTS_KEPT,
    RunLayout,
    decode_segment,
    decode_snapshot,
    decode_summary,
    encode_segment,
    encode_snapshot,
    encode_summary,
    fingerprint,
    iter_jsonl,
    jsonl_line,
    parse_segment_name,
    parse_seq_name,
    segment_listing_start,
    seq_name,
)
from faber_runlog._log.protocol import jsonl_problem, seal_record
from faber_runlog._storage.backends import Storage
from faber_runlog.errors import (
    ApprovalConflict,
    ApprovalNotFound,
    CorruptData,
    CorruptEvent,
    FaberRunlogError,
    InvalidArgument,
    InvalidEvent,
    InvalidEventPosition,
    InvalidTransition,
    LeaseLost,
    RunArchived,
    SequenceConflict,
    StorageError,
)

__all__ = ["CLAIM_BUDGET", "SEAL_GRACE", "Commit", "EventLog", "append_event", "current_digests", "read_logs"]

log = logging.getLogger("faber_runlog._log.eventlog")

SEAL_GRACE: Final = 3600.0
"""Seconds a sealed run keeps its event files before cleanup may remove them (protocol rule 6)."""

CLAIM_BUDGET: Final = 30.0
"""Seconds an append may spend losing sequence-number races before :class:`SequenceConflict` (see the loop's rules)."""
_WAIT_CAP: Final = 32  # the wait after a loss grows with the numbers that went by, up to this many round trips
_YIELD_TRIPS: Final = 3.0  # a writer that saw others append recently waits up to this many round trips first
_CONTENDED_TRIPS: Final = 64  # ... for this many round trips after it last saw them (protocol rule 20)
_BATCH: Final = 256
_PAGE: Final = 1000  # event names listed per request on stores that list after a key
_OLDER_SPACING: Final = 4  # an older snapshot at most every this many K events (see _keep_older)
_SEGMENT_BATCH: Final = 8  # segments fetched together (concurrently where reads batch)
_loads: Final = _codec.loads  # bound once: it runs for every event read
_PROBE_STAMP: Final = "2000-01-01T00:00:00.000000Z"  # what an append's fields are validated with, before its stamp


_LOGS: Final[weakref.WeakSet[EventLog]] = weakref.WeakSet()


def _new_identity_in_child() -> None:
    # A forked child shares its parent's handles: without a fresh writer id both
    # would stamp the same nonces, and the lost-reply check would confuse them.
    for elog in list(_LOGS):
        elog._writer = uuid.uuid4().hex[:12]  # noqa: SLF001  (same module: EventLog's fork hook)
        elog._counter = 0  # noqa: SLF001
        elog._lock = threading.RLock()  # noqa: SLF001


@attrs.frozen(slots=True)
class Commit:
    """An append that is durable: the event, and the run's status before and after it.

    ``status_before``/``status_after`` are None when this writer had not folded
    the log up to the event (a neutral append by a writer that other writers
    got ahead of); they are always set for types in the transition table.
    """

    event: Event
    status_before: str | None
    status_after: str | None

    @property
    def changed_status(self) -> bool:
        """Whether this event changed the run's status."""
        return self.status_before is not None and self.status_before != self.status_after


def _may_move(etype: str, row: Transition | None, state: RunState) -> bool:
    """Whether appending ``etype`` after ``state`` may change the run's index row.

    That is: it may change the status (an unchecked append: by its type), or the run has ended (an ended
    run's index row is shown as it is, so every later event updates it).
    """
    if state.status in TERMINAL_STATUSES:
        return True
    if row is None:
        return etype in TRANSITIONS
    target = row.target(state.status)
    return target != SAME and target != state.status


def _seal_mapping(seal: Event) -> dict[str, Any]:
    return {"type": seal.type, "event_id": seal.event_id, "metadata": seal.metadata}


def _event_fp(event: Event) -> str:
    return fingerprint(event.type, event.timestamp, event.nonce)


def _mapping_fp(data: dict[str, Any]) -> str:
    return fingerprint(data.get("type"), data.get("timestamp"), data.get("nonce"))


T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class _Decode(Protocol[T_co]):
    def __call__(self, seq: int, body: bytes, key: str | None = None, /) -> T_co: ...


_EVENT_BYTES_GUESS: Final = 300  # a typical event file, until this writer has written one


@attrs.define(slots=True)
class _Race:
    """One append's claim attempts: when it began, how often it lost, what went by, whose events."""

    started: float
    losses: int = 0
    missed: int = 0
    went_by: int = 1  # numbers that went by in the last round learned (1 before any: the one lost)
    writers: set[str] = attrs.field(factory=set)


def _contention_wait(trip: float, went_by: int, losses: int) -> float:
    """The wait after a lost race: random (losers do not retry in lockstep), sized by the numbers that
    went by (the contention seen, not the count of losses), and shorter the longer a writer has
    been losing (aging: the writer that waited longest comes back first)."""
    return random.uniform(0.0, trip * min(went_by, _WAIT_CAP) * 2.0 / (1 + losses))


class EventLog:
    """The append-only, gapless event log of one run."""

    def __init__(
        self,
        storage: Storage,
        run_id: RunId,
        *,
        snapshot_every: int = 100,
        source: str | None = None,
        user: str | None = None,
        on_commit: Callable[[EventLog, Commit], None] | None = None,
        hook_types: frozenset[str] = frozenset(),
        seal_grace: float = SEAL_GRACE,
        fence: Callable[[], int | None] | None = None,
        segment_every: int = SEGMENT_EVENTS,
        registry: Registry | None = None,
        listing: dict[str, Any] | None = None,
        claim_budget: float = CLAIM_BUDGET,
        overlay: Callable[[RunState], RunState] | None = None,
        index_intent: Callable[[], str | None] | None = None,
        index_entry: Callable[[RunState, str], None] | None = None,
    ) -> None:
        if snapshot_every < 1:
            raise InvalidArgument(f"snapshot_every must be at least 1, got {snapshot_every}")
        if segment_every < 1:
            raise InvalidArgument(f"segment_every must be at least 1, got {segment_every}")
        if not claim_budget > 0 or claim_budget == float("inf"):
            raise InvalidArgument(f"claim_budget must be a finite number of seconds > 0, got {claim_budget!r}")
        self._claim_budget = float(claim_budget)
        self._seen: set[str] | None = None  # writer ids of the events folded while a race is learned
        self._guessed_over: int | None = None  # the number a plain append lost and guessed past (protocol rule 13)
        self._storage = storage
        # What listings show of the run's metadata, carried in each summary (None: a listing reads
        # metadata.json, which costs a request, never a wrong answer).
        self._listing = listing
        # The store's registry: event types and upcasters to write and read with, folds to fold with.
        self._registry = registry = registry if registry is not None else Registry.default()
        self._types = event_types_table(registry)
        self._folds = registry.folds
        self._rid = run_id
        self._run_id = str(run_id)
        self._layout = RunLayout(run_id)
        self._snapshot_every = snapshot_every
        self._segment_every = segment_every
        # Bodies this writer created since the last segment boundary, so the
        # writer that claims a boundary builds the segment without reading them back.
        self._own: dict[int, bytes] = {}
        self._source = source
        self._user = user if user is not None else USER
        self._writer = uuid.uuid4().hex[:12]
        self._counter = 0
        self._state: RunState | None = None
        self._state_fp: str | None = None  # fingerprint of the writer state's last event
        self._fold_gen = fold_generation()  # of the fold handlers self._state was folded with
        self._tail = 0  # highest sequence number known to exist
        # The snapshot policy (see _snapshot_due): the last state.json this handle knows of
        # (its event and size) and the mean size of the events this writer appended.
        self._snap_seq = 0
        self._snap_size = 0
        self._event_bytes = float(_EVENT_BYTES_GUESS)
        self._sealed: int | None = None  # the seal's number, once known
        # Monotonic time from which this writer's tail is known to be current
        # (protocol rule 6); None: unknown, check after the next create.
        self._confirmed: float | None = None
        self._post_check_after = max(0.0, seal_grace / 2)
        # This writer's claim round trip (a running mean, seeded with the backend's figure; one slow
        # request, a retried fault or a stall, moves it little) and the
        # moment until which it yields before claiming: it saw another writer append lately (protocol rule 20).
        self._trip = storage.contention_backoff
        self._contended_until = float("-inf")
        self._lock = threading.RLock()
        # Called as on_commit(log, commit) after the lock is released, when the
        # append changed the status or has a type in hook_types (final reports,
        # releases); never for other appends, so the hot path pays nothing.
        self._on_commit = on_commit
        self._hook_types = hook_types
        # The run index (docs/concurrency.md): an intent before an append that may move the status, an entry after.
        self._index_intent = index_intent
        self._index_entry_hook = index_entry
        # fence() returns the lease epoch this process writes under (None: it holds no
        # lease) or raises LeaseLost; it runs before a number is claimed (docs/concurrency.md).
        self._fence = fence
        # Laid over every state this log hands out (the run's workflow plan: planned phases show as
        # pending), never over the fold the transition checks and the snapshots on disk use.
        self._overlay = overlay
        _LOGS.add(self)

    def __repr__(self) -> str:
        return f"EventLog({self._run_id!r} on {self._storage.url})"

    @property
    def run_id(self) -> str:
        """The id of the run this log belongs to."""
        return self._run_id

    # -- writing -----------------------------------------------------------

    def emit(
        self,
        type: str,
        *,
        phase: str | None = None,
        step: str | None = None,
        status: str | None = None,
        message: str | None = None,
        duration_ms: float | None = None,
        error: str | dict[str, Any] | None = None,
        artifacts: list[Any] | None = None,
        metadata: dict[str, Any] | None = None,
        user: str | None = None,
        source: str | None = None,
        idempotency_key: str | None = None,
        timestamp: str | None = None,
        unchecked: bool = False,
    ) -> Event:
        """Validate and append one event; returns it with its ``event_id``. The one way to append.

        Types that can change the run's status are checked against the
        transition table first (:class:`InvalidTransition`, nothing written).
        With ``idempotency_key``, the event is appended at most once per run:
        a repeat (from any process) returns the event already stored. A ``user``
        or ``source`` left out is the log's default.

        ``timestamp`` is the event's time (default: now); importers pass the time an
        event happened elsewhere. ``unchecked=True`` skips the transition table (never
        the schema or the seal): the escape hatch for importers and repair tools that
        copy a log as it was, documented in docs/lifecycle.md.
        """
        fields: dict[str, Any] = {
            "type": type,
            "phase": phase,
            "step": step,
            "user": user,
            "source": source,
            "status": status,
            "message": message,
            "duration_ms": duration_ms,
            "error": error,
            "artifacts": artifacts,
            "metadata": metadata,
            "idempotency_key": idempotency_key,
        }
        given = {k: v for k, v in fields.items() if v is not None}
        return self._commit(given, unchecked=unchecked, timestamp=timestamp).event

    def _commit(
        self,
        fields: dict[str, Any],
        check: Callable[[RunState], Event | None] | None = None,
        *,
        unchecked: bool = False,
        timestamp: str | None = None,
        sealing: bool = False,
    ) -> Commit:
        """Append an event built from ``fields`` and return the :class:`Commit` (see :func:`append_event`).

        A ``user`` or ``source`` that is missing or None is filled from the
        log's defaults; ``fields`` itself is not modified. A type in the
        transition table is refused unless the run's exact current status
        allows it. ``check(state)`` runs against the exact state the event will
        follow; it may raise to refuse the append (nothing is written) or
        return an already stored event to hand back instead.

        ``unchecked=True`` skips the transition table (never the schema or the
        seal): the escape hatch for importers and repair tools that copy a log
        as it was, documented in docs/lifecycle.md. ``timestamp`` is the event's
        time (default: now); importers pass the time an event happened elsewhere.
        ``sealing=True`` is consolidation's alone: a ``log_sealed`` event is
        refused otherwise, since a seal that no ``events.jsonl`` backs would
        close the run to appends while every check that verifies seals ignores it.
        """
        fields = self._prepare(fields, timestamp)
        etype: str = fields["type"]
        if (etype == SEAL_TYPE) != sealing:
            raise InvalidEvent(
                f"{SEAL_TYPE} is written by consolidation only (faber_runlog.consolidate / faber-runlog archive); "
                f"nothing was appended to run {self._run_id}"
                if not sealing
                else f"sealing=True is for {SEAL_TYPE} events only; nothing was appended to run {self._run_id}",
                run_id=self._run_id,
                event_type=etype,
            )
        row = None if unchecked else TRANSITIONS.get(etype)
        key = fields.get("idempotency_key")
        # A writer under a lease epoch claims only after reading every event before its number (lease rule 9):
        # so it is an exact append, and one that finds a higher epoch ahead of it stops.
        epoch: int | None = None if unchecked else fields.get("lease_epoch")
        exact = key is not None or check is not None or row is not None or epoch is not None
        clock = self._storage.clock
        with self._lock:
            state = self._writer_state()
            began = clock.monotonic()
            race: _Race | None = None  # made on the first lost race: a writer that wins pays nothing for it
            intent: str | None = None
            self._yield(clock, began)
            while True:
                if exact:
                    state = self._sync()
                    self._refuse_if_sealed()
                    if epoch is not None and state.fence_epoch > epoch:
                        self._fenced(state, epoch)
                    if key is not None and key in state.idempotency_keys:
                        stored = self._event_at(state.idempotency_keys[key])
                        return Commit(stored, None, None)
                    try:
                        if check is not None:
                            existing = check(state)
                            if existing is not None:
                                return Commit(existing, None, None)
                        if row is not None:
                            self._check_transition(state, etype, fields)
                    except FaberRunlogError:
                        # A refusal stands only against the state at the tail: another handle (in this
                        # process or another) may have moved the run since this one last looked.
                        if not self._moved_on(state):
                            raise
                        continue
                    seq = state.last_event_id + 1  # the state it was checked against ends right before it
                else:
                    self._refuse_if_sealed()
                    seq = self._tail + 1
                self._counter += 1
                nonce = f"{self._writer}-{self._counter}"
                data = {"timestamp": _codec.now_iso(clock.now()), **fields, "event_id": seq, "nonce": nonce}
                started = time.monotonic()
                body = _codec.dumps(data)
                intent = self._announce(intent, etype, row, state)
                sent = clock.monotonic()
                won = self._storage.create(self._layout.event(seq), body)
                self._trip += (min(clock.monotonic() - sent, 2 * self._trip) - self._trip) / 8
                if won:
                    self._after_create(seq, started)
                    commit = self._after_claim(Event.from_dict(data), len(body))
                    self._keep_own(seq, body)
                    break
                # Another writer took this number: learn the new tail (and, for an exact append, the
                # events missed, in one round), then wait a moment sized by the contention seen.
                race = race if race is not None else _Race(began)
                self._lost(race, seq, exact=exact, clock=clock)
        if intent is not None:
            self._index_entry(seq, intent)
        if self._on_commit is not None and (commit.changed_status or etype in self._hook_types):
            try:
                self._on_commit(self, commit)
            except Exception as e:  # noqa: BLE001  (the hook is anyone's code; the event is durable, what it missed can be recovered)
                log.warning("after-commit work for run %s at event %d failed: %s", self._run_id, seq, e)
        return commit

    def _yield(self, clock: Clock, now: float) -> None:
        """Protocol rule 20: a writer that saw others append lately waits a moment before it claims.

        The writer that just won knows the tail first and would win again, so it lets a loser in.
        A lone writer never waits.
        """
        if now < self._contended_until:
            clock.sleep(random.uniform(0.0, _YIELD_TRIPS * self._trip))

    def _announce(self, intent: str | None, etype: str, row: Transition | None, state: RunState) -> str | None:
        """The index intent for this append: written once, before the claim, when it may move the status."""
        if intent is None and self._index_intent is not None and _may_move(etype, row, state):
            return self._index_intent()  # raises: nothing is appended unannounced
        return intent

    def _index_entry(self, seq: int, intent: str) -> None:
        """Close ``intent`` with the run's row at event ``seq`` (left open when this writer did not fold it)."""
        state = self._state
        if self._index_entry_hook is not None and state is not None and state.last_event_id == seq:
            self._index_entry_hook(state, intent)

    def _moved_on(self, state: RunState) -> bool:
        """Whether the log has events after ``state`` (read to the tail, folded into it): a check must be redone.

        An acceptance needs no such read (the claim of ``state.last_event_id + 1`` fails when
        another event holds that number); a refusal does, so it is never made against a stale state.
        """
        last = state.last_event_id
        self._catch_up_writer()
        return state.last_event_id != last

    def _lost(self, race: _Race, seq: int, *, exact: bool, clock: Clock) -> None:
        """After losing number ``seq``: check the time budget, wait, learn what was missed (the loop's rules)."""
        race.losses += 1
        now = clock.monotonic()
        self._contended_until = now + _CONTENDED_TRIPS * self._trip
        waited = now - race.started
        if waited >= self._claim_budget:
            seen = len(race.writers - {self._writer})
            who = f"{seen} other writers" if seen else "other writers"
            raise SequenceConflict(
                f"could not append to run {self._run_id} within its claim budget of {self._claim_budget:g}s: "
                f"{who} appended {race.missed + 1} events meanwhile and won each of its {race.losses} tries "
                f"(last tried event {seq}). Nothing was written. Retry, give it more time "
                "(RunStore(claim_budget=...)), or have fewer processes append to one run at once",
                run_id=self._run_id,
                seq=seq,
            )
        # Wait first, then learn: a writer that learned the tail and then slept would try a number
        # that went by while it slept.
        wait = _contention_wait(self._trip, race.went_by, race.losses)
        log.debug(
            "run %s: event %d went to another writer (%d numbers went by, loss %d, %.3fs waited); waiting %.4fs",
            self._run_id,
            seq,
            race.went_by,
            race.losses,
            waited,
            wait,
        )
        clock.sleep(wait)
        if exact and self._fold_ahead(race, seq):
            return
        if not exact and race.losses == 1 and not self._writer_state().is_terminal:
            # A plain append guesses the number after the one it lost (no request): the writer that took
            # it is the only one ahead as often as not. Only an ended run can be sealed, so a writer that
            # knows its run ended lists first; for the rest, the create after a loss checks (protocol rule 6).
            self._confirmed = None
            self._guessed_over = seq  # the create after the guess checks that this one is no seal
            self._tail = max(self._tail, seq)
            race.went_by = 1
            race.missed += 1
            return
        self._guessed_over = None
        self._seen = race.writers if exact else None
        try:
            self._learn_tail(seq, fold=exact)
        finally:
            self._seen = None
        race.went_by = max(1, self._tail - seq + 1)
        race.missed += race.went_by

    def _knows_all(self, now: float) -> bool:
        """Whether this writer knew the whole log less than half ``seal_grace`` before ``now`` (protocol rule 13).

        Every event up to its tail then, and no seal after them: a seal written since is younger
        than half the grace, so cleanup has removed no file after that tail, and a missing file
        there is the end of the log without asking ``events.jsonl``.
        """
        confirmed = self._confirmed
        return confirmed is not None and now - confirmed <= self._post_check_after

    def _fold_ahead(self, race: _Race, lost: int) -> bool:
        """Protocol rule 13's round for an exact append: fetch the lost number and the next few at once, no LIST.

        Reads events ``lost ..`` (as many as went by last round, and one more) in one batch and folds
        them, with ``events.jsonl`` unless the writer knew the whole log less than half ``seal_grace``
        ago (protocol rule 13). True when a missing file ended the log there (the tail is known); False when
        every guessed file existed, the lost number is gone, or the state is not where the race left
        it: the listing round (:meth:`_learn_tail`) goes on from what was folded.
        """
        state = self._writer_state()
        if state.last_event_id != lost - 1 or self._sealed is not None:
            return False
        count = min(race.went_by + 1, _WAIT_CAP)
        keys = [self._layout.event(s) for s in range(lost, lost + count)]
        started = time.monotonic()  # protocol rule 6's clock, as in _catch_up_writer and _after_create
        fresh = self._knows_all(started)  # then no file from lost on was removed: no events.jsonl to ask
        bodies = self._storage.read_many(keys if fresh else [*keys, self._layout.jsonl])
        if bodies.get(self._layout.jsonl) is not None:
            return False  # consolidated: the careful path reads the seal
        if bodies[keys[0]] is None:  # the number it just lost is gone: only cleanup removes files
            self._confirmed = None
            return False
        batch: list[dict[str, Any]] = []
        for seq, key in enumerate(keys, lost):
            body = bodies[key]
            if body is None:
                break
            batch.append(self._decode_mapping(seq, body))
        if batch:
            apply_mappings(state, batch, self._folds)
            self._state_fp = _mapping_fp(batch[-1])
            race.writers.update(str(m.get("nonce", "")).rpartition("-")[0] for m in batch)
            self._tail = max(self._tail, state.last_event_id)
            if state.sealed_at is not None:
                self._sealed = state.sealed_at
        race.went_by = max(1, len(batch))
        race.missed += len(batch)
        if len(batch) == count:
            return False  # the listing round goes on (knowing the log as recently as before)
        self._confirmed = started  # read up to a missing file that is the end of the log: the tail (protocol rule 6)
        return True

    def fence_epoch(self) -> int:
        """The highest lease epoch of the events this handle has folded (0: none carries one)."""
        return self._state.fence_epoch if self._state is not None else 0

    def _fenced(self, state: RunState, epoch: int) -> None:
        fenced = LeaseLost(
            f"run {self._run_id} was fenced: an event of lease epoch {state.fence_epoch} (a sweep or a takeover) "
            f"is in its log before event {state.last_event_id + 1}, and this writer appends under epoch {epoch}; "
            "nothing was written. This writer must stop",
            run_id=self._run_id,
            epoch=epoch,
        )
        raise advise(fenced, "resume")

    def _prepare(self, fields: dict[str, Any], timestamp: str | None) -> dict[str, Any]:
        etype = fields.get("type")
        if not isinstance(etype, str):
            raise InvalidEvent(f"event for run {self._run_id} needs a string 'type'", run_id=self._run_id)
        # A copy: the caller's dict stays as given, whatever we fill in.
        fields = dict(fields)
        fields.setdefault("run_id", self._run_id)
        if fields.get("metadata") is None:
            fields["metadata"] = {}
        for name, default in (("user", self._user), ("source", self._source)):
            if fields.get(name) is None:
                fields.pop(name, None)
                if default is not None:
                    fields[name] = default
        fields["schema_version"] = type_version(etype, self._types)
        if fields["run_id"] != self._run_id:
            raise InvalidEvent(
                f"event names run {fields['run_id']!r} but is being appended to {self._run_id}", run_id=self._run_id
            )
        # The stamp is checked for shape only (the real one is taken at the claim): a fixed one is checked once.
        probe = dict(fields, event_id=1, timestamp=timestamp or _PROBE_STAMP, nonce="x")
        validate_event_dict(probe, run_id=self._run_id, table=self._types)
        if timestamp is not None:
            fields["timestamp"] = timestamp
        if self._fence is not None and "lease_epoch" not in fields:
            epoch = self._fence()  # a writer whose lease was taken is refused here, before any write
            if epoch is not None:
                fields["lease_epoch"] = epoch
        return fields

    def _check_transition(self, state: RunState, etype: str, fields: dict[str, Any]) -> None:
        """Refuse ``etype`` unless the transition table allows it from the exact current status."""
        row = TRANSITIONS[etype]
        if state.status not in row.moves:
            allowed = ", ".join(row.allowed())
            refused = InvalidTransition(
                f"cannot append {etype} to run {self._run_id}: its status is {state.status!r} "
                f"(at event {state.last_event_id}); {etype} is allowed only from: {allowed}. Nothing was "
                "written",
                run_id=self._run_id,
                status=state.status,
                action=etype,
                last_event_id=state.last_event_id,
            )
            raise advise(refused, *status_advice(state.status))
        meta = fields.get("metadata") or {}
        if etype == "approval_requested":
            aid = str(meta.get("approval_id"))
            if aid in state.approvals and state.approvals[aid].status != "changes_requested":
                raise ApprovalConflict(
                    f"approval {aid} of run {self._run_id} was already requested (event "
                    f"{state.approvals[aid].requested_event_id}); use another approval_id. Nothing was written.",
                    run_id=self._run_id,
                    approval_id=aid,
                    reason="approval_id_reused",
                )
        elif etype == "approval_resolved":
            aid = str(meta.get("approval_id"))
            action = meta.get("action")
            gate = state.approvals.get(aid)
            if gate is None or gate.status != "pending":
                pending = sorted(a.approval_id for a in state.approvals.values() if a.status == "pending")
                missing = ApprovalNotFound(
                    f"run {self._run_id} has no pending approval {aid!r} (pending: {pending or 'none'}); "
                    "nothing was written",
                    run_id=self._run_id,
                    approval_id=aid,
                )
                raise advise(missing, "decide")
            if action not in APPROVAL_ACTIONS or (state.status == "paused" and action not in ENDING_APPROVAL_ACTIONS):
                allowed_actions = ENDING_APPROVAL_ACTIONS if state.status == "paused" else APPROVAL_ACTIONS
                raise InvalidTransition(
                    f"cannot {action} approval {aid} of run {self._run_id} while it is {state.status!r}; "
                    f"allowed: {', '.join(allowed_actions)}. Nothing was written.",
                    run_id=self._run_id,
                    status=state.status,
                    action=str(action),
                    last_event_id=state.last_event_id,
                )

    def _after_create(self, seq: int, started: float) -> None:
        """Protocol rule 6: a writer whose tail knowledge is old checks that the log was not consolidated meanwhile."""
        guessed, self._guessed_over = self._guessed_over, None
        confirmed = self._confirmed
        if confirmed is not None and started - confirmed <= self._post_check_after:
            self._confirmed = started
            self._tail = seq
            return
        if guessed == seq - 1 and self._is_seal(guessed):
            # A guess past the number it lost, and that number is a seal whose events.jsonl is not
            # written yet (protocol rule 4): ours would follow the seal, so it is not part of the log.
            self._remove_stray(seq)
            self._sealed = guessed
            sealed = RunArchived(
                f"run {self._run_id} was sealed (event {guessed}) while this writer appended; "
                f"event {seq} was not appended",
                run_id=self._run_id,
                last_event_id=guessed,
            )
            raise advise(sealed, "rerun")
        if self._storage.exists(self._layout.jsonl):
            # The log was consolidated and its files removed: this number was
            # someone else's event once. Ours is not part of the log.
            self._remove_stray(seq)
            self._sealed = self._sealed or seq + 1
            sealed = RunArchived(
                f"run {self._run_id} was consolidated and archived while this writer was stalled; "
                f"event {seq} was not appended",
                run_id=self._run_id,
                last_event_id=seq,
            )
            raise advise(sealed, "rerun")
        self._confirmed = started
        self._tail = seq

    def _is_seal(self, seq: int) -> bool:
        """Whether event ``seq`` is a seal (one GET; a missing file is none: cleanup keeps the seal)."""
        body = self._storage.read(self._layout.event(seq))
        return body is not None and self._decode_mapping(seq, body).get("type") == SEAL_TYPE

    def _remove_stray(self, seq: int) -> None:
        """Remove our event ``seq``, which is not part of the log (it follows a seal); logged if that fails."""
        try:
            self._storage.delete(self._layout.event(seq))
        except StorageError as e:
            log.warning("could not remove stray event %d of sealed run %s: %s", seq, self._run_id, e)

    def _learn_tail(self, lost: int, *, fold: bool) -> None:
        """After losing number ``lost``: find the new tail, and whether it is the seal."""
        fresh = fold and self._knows_all(time.monotonic())
        self._confirmed = None
        if fold:
            self._catch_up_writer(fresh=fresh)  # folds every event up to the tail, the seal included
            return
        self._tail = self._find_tail(lost)
        if self._tail > (self._state.last_event_id if self._state is not None else 0):
            # Anything after a seal is refused, so the seal can only be the tail.
            last = self._event_at(self._tail)
            if last.type == SEAL_TYPE:
                self._sealed = last.event_id

    def _find_tail(self, known: int) -> int:
        """The highest contiguous sequence number at or after ``known`` (which exists)."""
        if self._storage.capabilities.list_after:
            tail = known
            for name in self._storage.list_after(self._layout.events, seq_name(known)):
                if parse_seq_name(name) != tail + 1:
                    break
                tail += 1
            return tail
        tail = known
        while self._storage.exists(self._layout.event(tail + 1)):
            tail += 1
        return tail

    def _after_claim(self, event: Event, size: int = _EVENT_BYTES_GUESS) -> Commit:
        """Fold our own event when the state is current, and write the summary and snapshots when due. Never raises.

        The summary (a few hundred bytes) is written when the status changes and
        with every snapshot; ``state.json`` only when :meth:`_snapshot_due`.
        """
        seq = event.event_id
        state = self._writer_state()
        self._event_bytes += (size - self._event_bytes) / 16  # a running mean: cheap and steady
        periodic = self._snapshot_due(seq)
        if state.last_event_id != seq - 1:
            # Others wrote since our state. Catch up only when a snapshot is due;
            # a failure here must not turn a durable append into an error.
            if not periodic:
                return Commit(event, None, None)
            try:
                self._catch_up_writer(until=seq)
            except Exception as e:  # noqa: BLE001  (a snapshot is a cache: skipping it costs a longer fold)
                log.warning("snapshot of run %s at event %d skipped: %s", self._run_id, seq, e)
                return Commit(event, None, None)
            if state.last_event_id != seq:
                return Commit(event, None, None)
            before = after = None
        else:
            before = state.status
            apply(state, event, self._folds)
            self._state_fp = _event_fp(event)
            after = state.status
        if event.type == SEAL_TYPE:
            self._sealed = seq
            self._write_snapshot(state, periodic=False)  # archiving reads state.json of the sealed run
            self._write_summary(state)
            return Commit(event, before, after)
        if periodic:
            self._write_snapshot(state, periodic=True)
        if before is not None and before != after:
            self._write_summary(state)
        return Commit(event, before, after)

    def _keep_own(self, seq: int, body: bytes) -> None:
        """Remember our event for the segment of its range; the claimer of a boundary writes that segment."""
        k = self._segment_every
        # Our claims only grow, so the first key is the smallest (min() would cost O(K) per append).
        if self._own and next(iter(self._own)) <= seq - k:  # ranges already closed (by us or by others)
            self._own = {s: b for s, b in self._own.items() if s > (seq - 1) // k * k}
        self._own[seq] = body
        if seq % k == 0:
            self._write_segment(seq)

    def _write_segment(self, last: int) -> None:
        """Write the segment of events ``last - K + 1 .. last`` (protocol rule 12).

        Failures cost reads later, never an error.
        """
        first = max(1, last - self._segment_every + 1)
        try:
            bodies = {s: self._own[s] for s in range(first, last + 1) if s in self._own}
            missing = [s for s in range(first, last + 1) if s not in bodies]
            if missing:  # other writers' events: read them (from the immutable files, never from a cache)
                found = self._storage.read_many(self._layout.event(s) for s in missing)
                for s in missing:
                    b = found[self._layout.event(s)]
                    if b is None:
                        raise CorruptEvent(
                            f"event {s} of run {self._run_id} is missing",
                            run_id=self._run_id,
                            seq=s,
                            path=self._storage.path(self._layout.event(s)),
                        )
                    self._decode(s, b)  # a damaged file is never copied into a segment
                    bodies[s] = b
            lines = [jsonl_line(bodies[s]) for s in range(first, last + 1)]
            self._storage.create(self._layout.segment(first, last), encode_segment(self._run_id, first, lines))
        except Exception as e:  # noqa: BLE001  (a segment is a cache: not writing it costs reads)
            log.warning("segment %d..%d of run %s not written (reads cost more): %s", first, last, self._run_id, e)
        finally:
            self._own = {s: b for s, b in self._own.items() if s > last}

    def _snapshot_due(self, seq: int) -> bool:
        """Whether event ``seq`` should be followed by a full snapshot.

        On multiples of ``snapshot_every``, and only once the events appended
        since the last snapshot hold at least as many bytes as that snapshot:
        the snapshot bytes written per append then never exceed the event bytes
        however large the state grows, and a fresh open folds at most a
        snapshot's worth of events after reading it (docs/concurrency.md).
        """
        if seq % self._snapshot_every:
            return False
        return (seq - self._snap_seq) * self._event_bytes >= self._snap_size

    def _write_summary(self, state: RunState) -> None:
        """Write ``summary.json`` for ``state`` (listings read it). Failures cost time only."""
        try:
            digest = RunDigest.of(state, self._state_fp, self._listing)
            self._storage.replace_cache(self._layout.summary, encode_summary(digest.to_dict()))
        except Exception as e:  # noqa: BLE001  (a summary is a cache: not writing it costs a fold)
            log.warning("summary of run %s at event %d not written: %s", self._run_id, state.last_event_id, e)

    def _write_snapshot(self, state: RunState, *, periodic: bool) -> None:
        """Write ``state.json`` (and now and then an older snapshot, pruning the oldest). Failures cost time only.

        Periodic snapshots leave the summary alone: the run is active, so the
        next event makes any summary stale; a listing then starts its fold here.
        """
        seq = state.last_event_id
        try:
            body = encode_snapshot(state.to_dict(), self._state_fp)
            self._storage.replace_cache(self._layout.state, body)
            self._snap_seq, self._snap_size = seq, len(body)
            if periodic:
                self._keep_older(seq, body)
        except Exception as e:  # noqa: BLE001  (a snapshot is a cache: not writing it costs a longer fold)
            log.warning("snapshot of run %s at event %d not written: %s", self._run_id, seq, e)

    def _keep_older(self, seq: int, body: bytes) -> None:
        """Keep ``body`` as the older snapshot at ``seq`` when the newest one is far enough back; prune the rest.

        Decided from one listing of ``snapshots/``, never from what this handle
        remembers, so "at most ``SNAPSHOTS_KEPT`` older snapshots, at least
        ``_OLDER_SPACING`` x K events apart" holds across handles and processes:
        each one that writes a periodic snapshot prunes what others left behind
        (two racing at once may leave one extra until the next periodic snapshot).
        """
        spacing = _OLDER_SPACING * self._snapshot_every
        listed = sorted(
            n for n in (parse_seq_name(name) for name in self._storage.list_names(self._layout.snapshots)) if n
        )
        taken = [n for n in listed if n < seq]
        if not taken or seq - taken[-1] >= spacing:
            self._storage.replace_cache(self._layout.snapshot(seq), body)
            taken.append(seq)
        taken += [n for n in listed if n > seq]  # written meanwhile by a handle further on
        kept: list[int] = []
        for n in taken:  # oldest first: keep those at least one spacing after the last kept
            if not kept or n - kept[-1] >= spacing:
                kept.append(n)
        kept = kept[-SNAPSHOTS_KEPT:]
        for n in taken:
            if n not in kept:
                self._storage.delete(self._layout.snapshot(n))

    def snapshot(self) -> RunState:
        """Write ``state.json`` and ``summary.json`` for the current state now and return that state."""
        with self._lock:
            state = self._sync()
            self._write_snapshot(state, periodic=False)
            self._write_summary(state)
            return self._shown(state.copy())

    def _refuse_if_sealed(self) -> None:
        if self._sealed is not None:
            sealed = RunArchived(
                f"run {self._run_id} is consolidated (sealed at event {self._sealed}), so nothing can be "
                "appended to it",
                run_id=self._run_id,
                last_event_id=self._sealed,
            )
            raise advise(sealed, "rerun")

    # -- state -------------------------------------------------------------

    def _writer_state(self) -> RunState:
        if self._state is not None and self._fold_gen != fold_generation():
            # A fold handler was registered since this state was folded: fold every event again,
            # from the first (a stored snapshot may predate the handler too).
            self._fold_gen = fold_generation()
            fresh = RunState(run_id=self._run_id)
            self._state, self._state_fp = fresh, self._catch_up(fresh)
        if self._state is None:
            started = time.monotonic()
            self._fold_gen = fold_generation()
            self._state, self._state_fp = self._load()
            self._tail = max(self._tail, self._state.last_event_id)
            self._confirmed = started
        return self._state

    def _sync(self) -> RunState:
        """The writer's state folded up to the tail (reads only when others wrote since we looked)."""
        state = self._writer_state()
        if self._confirmed is None or state.last_event_id < self._tail:
            self._catch_up_writer()
        return state

    def _catch_up_writer(self, until: int | None = None, *, fresh: bool = False) -> None:
        """Fold what this writer missed; ``fresh``: it knew the whole log lately, so a missing file ends it."""
        state = self._writer_state()
        started = time.monotonic()
        last = self._catch_up(state, until=until, fresh=fresh)
        if last is not None:
            self._state_fp = last
        self._tail = max(self._tail, state.last_event_id)
        if until is None:
            self._confirmed = started  # the fold read up to the first missing file
        if state.sealed_at is not None:
            self._sealed = state.sealed_at

    def current_state(self) -> RunState:
        """The exact current state (a private copy, with the run's plan), folding only events not yet seen."""
        return self._shown(self.fold_state())

    def fold_state(self) -> RunState:
        """The exact current fold of the events alone (a private copy): what transitions are checked against.

        :meth:`current_state` is this with the run's workflow plan laid over it (planned phases
        that never started show as ``pending``).
        """
        with self._lock:
            # A state loaded (or refolded) just now was folded to the tail: a second catch-up would
            # probe the tail again for nothing (a LIST and a GET of events.jsonl on S3).
            loaded = self._state is None or self._fold_gen != fold_generation()
            state = self._writer_state()
            if not loaded:
                self._catch_up_writer()
            return state.copy()

    def _shown(self, state: RunState) -> RunState:
        return self._overlay(state) if self._overlay is not None else state

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
                if _event_fp(event) != fp:
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
        return None if last is None else _mapping_fp(last)

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
        if self._sealed is not None and after < self._sealed - 1 and (until is None or until > after):
            body = self._storage.read(self._layout.jsonl)
            if body is not None:  # absent only while a consolidation is being finished: read the files
                yield from self._stored_jsonl(body, after, until, self._sealed - 1, d)
                after = self._sealed - 1
        if until is not None and after >= until:
            return
        nxt = yield from self._stored_files(after, until, d)
        if (until is not None and nxt > until) or (self._sealed is not None and nxt > self._sealed):
            return
        # File ``nxt`` is missing: the end of the log, unless consolidation removed it.
        if fresh:
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
        record = None if seal is None else seal_record(_seal_mapping(seal), through + 1)
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

    def _stored_files(self, after: int, until: int | None, dec: _Decode[T]) -> Generator[list[T], None, int]:
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
            cur, more = yield from self._stored_page(cur, until, dec)
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
        self, after: int, until: int | None, dec: _Decode[T]
    ) -> Generator[list[T], None, tuple[int, bool]]:
        """One LIST page of event names after ``after``, their bodies fetched concurrently in batches.

        Returns the last event read and whether more may follow (the page was full).
        """
        want = _PAGE if until is None else min(_PAGE, until - after)
        names = self._storage.list_after(self._layout.events, seq_name(after), want)
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

    def last_event_id(self) -> int:
        """The id of the newest event (0 for an empty log)."""
        return self.fold_state().last_event_id

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


def append_event(
    elog: EventLog,
    fields: Mapping[str, Any],
    *,
    check: Callable[[RunState], Event | None] | None = None,
    unchecked: bool = False,
    timestamp: str | None = None,
    sealing: bool = False,
) -> Event:
    """Append an event built from ``fields`` to ``elog``: the library's own writers' door (users call ``emit``).

    ``check(state)`` runs against the exact state the event will follow (lifecycle
    actions, resume, consolidation); ``sealing`` is consolidation's; ``unchecked`` and
    ``timestamp`` are an importer's copy of a log as it was. See :meth:`EventLog.emit`.
    """
    commit = elog._commit(dict(fields), check, unchecked=unchecked, timestamp=timestamp, sealing=sealing)  # noqa: SLF001  (same module)
    return commit.event


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


os.register_at_fork(after_in_child=_new_identity_in_child)
