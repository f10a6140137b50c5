"""EventLog: append typed events to one run and read them back in order.

This module holds the append path (the claim loop, the transition and approval checks, the
writer's state); the read paths are its base :class:`~faber_runlog._log.reader.LogReader`, the
caches a writer writes are :class:`~faber_runlog._log.caches.LogCaches`, what the store wires in
is one :class:`~faber_runlog._log.hooks.LogHooks`, and reads of many runs are in ``bulk``.

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

import contextlib
import logging
import os
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import attrs

from faber_runlog._base import codec as _codec
from faber_runlog._base.advice import advise, status_advice
from faber_runlog._base.clock import Clock
from faber_runlog._base.ids import RunId
from faber_runlog._domain.events import Event, type_version, validate_event_dict
from faber_runlog._domain.metadata import USER
from faber_runlog._domain.registry import Registry, event_types_table
from faber_runlog._domain.state import RunState, apply, apply_mappings, fold_generation, is_builtin_fold
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
    SIZE_TAGS,
    RunLayout,
    event_body,
    may_move_by_size,
    parse_seq_name,
    seq_name,
    tag_by_size,
)
from faber_runlog._log.caches import LogCaches
from faber_runlog._log.hooks import Commit, LogHooks
from faber_runlog._log.reader import event_fp, mapping_fp
from faber_runlog._storage.backends import Storage
from faber_runlog.errors import (
    ApprovalConflict,
    ApprovalNotFound,
    FaberRunlogError,
    InvalidArgument,
    InvalidEvent,
    InvalidTransition,
    LeaseLost,
    RunArchived,
    SequenceConflict,
    StorageError,
)

__all__ = ["CLAIM_BUDGET", "SEAL_GRACE", "Commit", "EventLog", "append_event", "with_hooks"]

log = logging.getLogger("faber_runlog._log.eventlog")

SEAL_GRACE: Final = 3600.0
"""Seconds a sealed run keeps its event files before cleanup may remove them (protocol rule 6)."""

CLAIM_BUDGET: Final = 30.0
"""Seconds an append may spend losing sequence-number races before :class:`SequenceConflict` (see the loop's rules)."""
_WAIT_CAP: Final = 32  # the wait after a loss grows with the numbers that went by, up to this many round trips
_YIELD_TRIPS: Final = 3.0  # a writer that saw others append recently waits up to this many round trips first
_CONTENDED_TRIPS: Final = 64  # ... for this many round trips after it last saw them (protocol rule 20)
_TURN_WAIT_MIN: Final = 0.05  # seconds a contended writer waits for its turn at least (protocol rule 23) ...
_TURN_WAIT_MAX: Final = 1.0  # ... and at most, before it claims without one (a stalled holder is not waited out)
_ORDER_WINDOW: Final = 32  # the tags of this many events before the tail: the writers in turn (protocol rule 24)
_ORDER_TRIPS: Final = 2.0  # round trips one writer's turn in that order takes: learn the tail, then claim
_ORDER_WAIT_MAX: Final = 2.0  # seconds one waits for its turn in that order at most (a slow store is not waited out)
_PROBE_STAMP: Final = "2000-01-01T00:00:00.000000Z"  # what an append's fields are validated with, before its stamp


_LOGS: Final[weakref.WeakSet[EventLog]] = weakref.WeakSet()


def _new_identity_in_child() -> None:
    # A forked child shares its parent's handles: without a fresh writer id both
    # would stamp the same nonces, and the lost-reply check would confuse them.
    for elog in list(_LOGS):
        elog._writer = uuid.uuid4().hex[:12]  # noqa: SLF001  (same module: EventLog's fork hook)
        elog._counter = 0  # noqa: SLF001
        elog._lock = threading.RLock()  # noqa: SLF001


def _moves_status(etype: str, row: Transition | None, state: RunState) -> bool:
    """Whether appending ``etype`` after ``state`` may move the run's status, by the transition table.

    A checked append (``row``) moves it when its target from the exact state it follows differs from
    that status; an unchecked append of a type in the table (an importer's copy, whose state was not
    checked) counts as a move without asking.
    """
    if row is None:
        return etype in TRANSITIONS
    target = row.target(state.status)
    return target != SAME and target != state.status


def _may_move(etype: str, row: Transition | None, state: RunState) -> bool:
    """Whether appending ``etype`` after ``state`` may change the run's index row.

    That is: it may change the status, or the run has ended (an ended run's index row is shown as it
    is, so every later event updates it).
    """
    return state.status in TERMINAL_STATUSES or _moves_status(etype, row, state)


_LIST_PAGE: Final = 1000  # names one S3 LIST returns

# Types whose check reads more than the status (the run's approvals): never appended on word (protocol rule 21).
_CHECKS_MORE: Final = frozenset({"approval_requested", "approval_resolved"})


def _type_of(body: bytes) -> object:
    """The type an event file names, or None when it does not decode (its readers report it; an append
    only asks whether it is a seal, and consolidation writes seals whole)."""
    try:
        data = _codec.loads(body)
    except ValueError:
        return None
    return data.get("type") if isinstance(data, dict) else None


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


class EventLog(LogCaches):
    """The append-only, gapless event log of one run."""

    def __init__(
        self,
        storage: Storage,
        run_id: RunId,
        *,
        snapshot_every: int = 100,
        source: str | None = None,
        user: str | None = None,
        seal_grace: float = SEAL_GRACE,
        segment_every: int = SEGMENT_EVENTS,
        registry: Registry | None = None,
        listing: dict[str, Any] | None = None,
        claim_budget: float = CLAIM_BUDGET,
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
        self._listed: dict[int, int] | None = None  # this lost round's listing: event number -> size
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
        # Protocol rule 21: every event after the writer state's last one, through this number, is known
        # (by its size) to move no status; below the state's last event it means nothing.
        self._neutral = 0
        # The snapshot policy (see _snapshot_due): the last state.json this handle knows of
        # (its event and size) and the mean size of the events this writer appended.
        self._snap_seq = 0
        self._snap_size = 0
        self._older_at: int | None = None  # see LogCaches._keep_older
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
        self._tags: dict[int, int] = {}  # event number -> its writer's tag, lately listed (protocol rule 24)
        # Tags that let their turn go by unused, with the tail then: out of the order until they write
        # after it; and the turns this writer last waited for, judged by its next listing (protocol rule 24).
        self._idle: dict[int, int] = {}
        self._awaited: tuple[int, list[int]] | None = None
        self._lock = threading.RLock()
        # What the opener wires in (faber_runlog._log.hooks, set by with_hooks): the lease fence before a
        # claim, the run index around an append that may move the status, work after a commit that changed
        # the status or has a type in hook_types (never for other appends, so the hot path pays nothing),
        # and the overlay on every state handed out. None: none of it, at no cost.
        self._hooks: LogHooks[EventLog] | None = None
        _LOGS.add(self)

    def __repr__(self) -> str:
        return f"EventLog({self._run_id!r} on {self._storage.url})"

    @property
    def _tag(self) -> int:
        """This writer's size tag (protocol rule 22), from its id (a forked child gets a new one)."""
        return int(self._writer[:4], 16) % SIZE_TAGS

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
        # An append whose check reads the status alone may follow events it has not read, when their
        # sizes say none of them moved the status (protocol rule 21).
        by_word = row is not None and key is None and check is None and epoch is None and etype not in _CHECKS_MORE
        handler = self._folds.get(etype)
        custom_fold = handler is not None and not is_builtin_fold(handler)
        clock = self._storage.clock
        with self._lock:
            state = self._writer_state()
            began = clock.monotonic()
            race: _Race | None = None  # made on the first lost race: a writer that wins pays nothing for it
            intent: str | None = None
            self._yield(clock, began)
            while True:
                # None unless contended on a backend with turns (protocol rule 23); a first try learns the tail
                # anyway when contended (a lost one's round just learned it).
                turn = self._take_turn(clock, learn=race is None)
                try:
                    on_word = by_word and self._on_word()
                    if exact:
                        # On word, the writer state's status holds through the tail (protocol rule 21): no fold.
                        state = self._writer_state() if on_word else self._sync()
                        verdict = self._check(state, fields, row=row, check=check, epoch=epoch)
                        if isinstance(verdict, Commit):
                            return verdict
                        if not verdict:
                            continue
                        # The state it was checked against ends right before it (or, on word, its status
                        # holds through the tail).
                        seq = self._tail + 1 if on_word else state.last_event_id + 1
                    else:
                        self._refuse_if_sealed()
                        seq = self._tail + 1
                    self._counter += 1
                    nonce = f"{self._writer}-{self._counter}"
                    data = {"timestamp": _codec.now_iso(clock.now()), **fields, "event_id": seq, "nonce": nonce}
                    started = time.monotonic()
                    # Protocol rule 21's mark: a seal, a type a registered fold handles (it may change
                    # anything) and what the transition table moves are odd-sized.
                    moves = sealing or custom_fold or _moves_status(etype, row, state)
                    # Protocol rule 22's tag: bytes of another writer's tag are not ours, by their size alone.
                    body = event_body(_codec.dumps(data), may_move=moves, tag=self._tag)
                    intent = self._announce(intent, etype, row, state)
                    sent = clock.monotonic()
                    won = self._storage.claim(self._layout.event(seq), body)
                    self._trip += (min(clock.monotonic() - sent, 4 * self._trip) - self._trip) / 4
                finally:
                    if turn is not None:
                        turn.close()
                if not won:
                    # Another writer took this number (or, unsettled, a retry of ours met our own bytes):
                    # learn the new tail (and, for an exact append, the events missed, in one round),
                    # after a wait sized by the contention seen.
                    race = race if race is not None else _Race(began)
                    mine = body if won is None else None
                    won = self._lost(race, seq, exact=exact, by_word=by_word, clock=clock, mine=mine)
                if won:
                    self._note_tags([(seq, self._tag)])
                    self._after_create(seq, started)
                    if not moves and max(self._neutral, state.last_event_id) == seq - 1:
                        self._neutral = seq
                    commit = self._after_claim(Event.from_dict(data), len(body))
                    self._keep_own(seq, body)
                    break
        if intent is not None:
            self._index_entry(seq, intent)
        hooks = self._hooks
        if hooks is not None and (commit.changed_status or etype in hooks.hook_types):
            try:
                hooks.committed(self, commit)
            except Exception as e:  # noqa: BLE001  (the hook is anyone's code; the event is durable, what it missed can be recovered)
                log.warning("after-commit work for run %s at event %d failed: %s", self._run_id, seq, e)
        return commit

    def _check(
        self,
        state: RunState,
        fields: dict[str, Any],
        *,
        row: Transition | None,
        check: Callable[[RunState], Event | None] | None,
        epoch: int | None,
    ) -> Commit | bool:
        """An exact append's checks on ``state``: the stored event to hand back, True to claim, False to look again.

        Raises to refuse (nothing is written), but only against the state at the tail.
        """
        self._refuse_if_sealed()
        if epoch is not None and state.fence_epoch > epoch:
            self._fenced(state, epoch)
        key = fields.get("idempotency_key")
        if key is not None and key in state.idempotency_keys:
            return Commit(self._event_at(state.idempotency_keys[key]), None, None)
        try:
            if check is not None:
                existing = check(state)
                if existing is not None:
                    return Commit(existing, None, None)
            if row is not None:
                self._check_transition(state, fields["type"], fields)
        except FaberRunlogError:
            # A refusal stands only against the state at the tail: another handle (in this
            # process or another) may have moved the run since this one last looked.
            if not self._moved_on(state):
                raise
            return False
        return True

    def _take_turn(self, clock: Clock, *, learn: bool) -> contextlib.ExitStack | None:
        """Protocol rule 23: a contended writer waits its turn where the backend has turns, then learns the tail.

        Held through the checks and the create: no other writer taking turns creates meanwhile, so
        the tail learned here (one sized round, protocol rule 21) is the tail its create meets. None when
        the writer saw no contention lately, or the backend has no turns, or none came in time.
        """
        now = clock.monotonic()
        if now >= self._contended_until:
            return None
        stack = contextlib.ExitStack()
        try:
            wait = min(_TURN_WAIT_MAX, max(_TURN_WAIT_MIN, _CONTENDED_TRIPS * self._trip))
            if not stack.enter_context(self._storage.turn(self._layout.events, wait)):
                stack.close()
                if learn:
                    # No turn: its tail is as stale as the others' appends made it; a create at it
                    # would lose (one request) and learn it after all.
                    self._learn_tail(self._tail + 1, fold=False)
                return None
            known = self._tail
            self._learn_tail(known + 1, fold=False)
            if self._tail > known:  # others appended since it looked: still contended
                self._contended_until = clock.monotonic() + _CONTENDED_TRIPS * self._trip
        except BaseException:
            stack.close()
            raise
        return stack

    def _yield(self, clock: Clock, now: float) -> None:
        """Protocol rule 20: a writer that saw others append lately waits a moment before it claims.

        The writer that just won knows the tail first and would win again, so it lets a loser in.
        Where it knows the order of the writers' tags (protocol rule 24), it waits for the writers between
        the tail's writer and itself in that order; else a random moment. A lone writer never waits.
        """
        if now < self._contended_until:
            ahead = self._ahead()
            clock.sleep(random.uniform(0.0, _YIELD_TRIPS * self._trip) if ahead is None else self._turns(ahead))

    def _turns(self, ahead: list[int]) -> float:
        """The wait for the turns of the writers of ``ahead`` (protocol rule 24), noted to be judged after it.

        ``2 t`` a writer, plus a random half ``t`` that parts two writers of one tag; capped, so a slow
        store is not waited out. The turns the wait covers whole are judged by the listing that follows.
        """
        wait = min(_ORDER_WAIT_MAX, (len(ahead) * _ORDER_TRIPS + random.uniform(0.0, 0.5)) * self._trip)
        covered = int(wait / (_ORDER_TRIPS * self._trip)) if self._trip > 0 else len(ahead)
        self._awaited = (self._tail, ahead[:covered])
        return wait

    def _ahead(self) -> list[int] | None:
        """Protocol rule 24: the tags of the writers before this one after the tail, in the order of their tags.

        The writers are the tags of the last ``_ORDER_WINDOW`` events before the tail, with this
        writer's, less those that let their turn go by since they last wrote (:meth:`_judge_turns`);
        they take turns in the cyclic order of their tags, starting after the tag that wrote the
        tail. None when the tail's writer is not known (this writer did not list or write it), or
        when every writer seen has this writer's tag.
        """
        tail = self._tail
        last = self._tags.get(tail)
        if last is None:
            return None
        newest: dict[int, int] = {}
        for n, t in self._tags.items():
            if n > tail - _ORDER_WINDOW and n > newest.get(t, 0):
                newest[t] = n
        idle = self._idle
        order = sorted({t for t, n in newest.items() if n > idle.get(t, -1)} | {self._tag, last})
        if len(order) == 1:
            return None  # only its own tag: writers that share it have no order to take (protocol rule 20's wait)
        start = order.index(last)
        count = ((order.index(self._tag) - start) % len(order) or len(order)) - 1
        return [order[(start + 1 + i) % len(order)] for i in range(count)]

    def _judge_turns(self, found: list[tuple[int, int]]) -> None:
        """After a wait for turns, take the tags that wrote nothing meanwhile out of the order (protocol rule 24).

        A writer that finished its work, or went quiet, would otherwise cost every writer after it
        ``2 t`` on every emit for the last ``_ORDER_WINDOW`` events. Back in the order with its next event.
        """
        awaited, self._awaited = self._awaited, None
        if awaited is None:
            return
        since, tags = awaited
        wrote = {tag_by_size(size) for seq, size in found if seq > since}
        tail = max((seq for seq, _ in found), default=since)
        for tag in tags:
            if tag not in wrote:
                self._idle[tag] = tail

    def _announce(self, intent: str | None, etype: str, row: Transition | None, state: RunState) -> str | None:
        """The index intent for this append: written once, before the claim, when it may move the status."""
        if intent is None and self._hooks is not None and _may_move(etype, row, state):
            return self._hooks.index_intent()  # raises: nothing is appended unannounced
        return intent

    def _index_entry(self, seq: int, intent: str) -> None:
        """Close ``intent`` with the run's row at event ``seq`` (left open when this writer did not fold it)."""
        state = self._state
        if self._hooks is not None and state is not None and state.last_event_id == seq:
            self._hooks.index_entry(state, intent)

    def _moved_on(self, state: RunState) -> bool:
        """Whether the log has events after ``state`` (read to the tail, folded into it): a check must be redone.

        An acceptance needs no such read (the claim of ``state.last_event_id + 1`` fails when
        another event holds that number); a refusal does, so it is never made against a stale state.
        """
        last = state.last_event_id
        self._catch_up_writer()
        return state.last_event_id != last

    def _on_word(self) -> bool:
        """Whether this writer may claim after its tail unread: nothing after its state moved the status.

        Protocol rule 21.
        """
        state = self._writer_state()
        return self._confirmed is not None and state.last_event_id < self._tail <= self._neutral

    def _lost(self, race: _Race, seq: int, *, exact: bool, by_word: bool, clock: Clock, mine: bytes | None) -> bool:
        """After losing number ``seq``: check the time budget, wait, learn what was missed (the loop's rules).

        ``mine``: the bytes this writer sent, when the create left it unsettled whether they are what
        took ``seq`` (a retried request that met its own write). True: they are, the number is ours
        (protocol rule 22, settled from this round's listing, or one read where it cannot tell).
        """
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
        self._listed = None
        if by_word and self._learn_word(race, seq):
            return self._settle(seq, mine)
        if exact and mine is not None:
            # The fold below must not take our own event for another's: settle first (from the
            # listing just made, if any).
            if self._settle(seq, mine):
                return True
            mine = None
        if exact and self._fold_ahead(race, seq):
            return False
        if not exact and mine is None and race.losses == 1 and not self._writer_state().is_terminal:
            # A plain append guesses the number after the one it lost (no request): the writer that took
            # it is the only one ahead as often as not. Only an ended run can be sealed, so a writer that
            # knows its run ended lists first; for the rest, the create after a guess reads the number it
            # guessed past (a seal?) and, unless it knew the whole log lately, asks for events.jsonl
            # (protocol rules 6 and 13).
            self._guessed_over = seq  # the create after the guess checks that this one is no seal
            self._tail = max(self._tail, seq)
            race.went_by = 1
            race.missed += 1
            return False
        self._guessed_over = None
        self._seen = race.writers if exact else None
        try:
            self._learn_tail(seq, fold=exact)
        finally:
            self._seen = None
        race.went_by = max(1, self._tail - seq + 1)
        race.missed += race.went_by
        return self._settle(seq, mine)  # a plain round listed (a folding one settled first)

    def _settle(self, seq: int, mine: bytes | None) -> bool:
        """Whether the taken number ``seq`` holds ``mine``, this writer's own bytes (protocol rule 22).

        False when nothing is unsettled, or when this round's listing shows ``seq`` with another size
        (another tag or body: not ours, no request); else one read compares the bytes.
        """
        if mine is None:
            return False
        listed = self._listed
        if listed is not None and listed.get(seq, len(mine)) != len(mine):
            return False
        return self._storage.read(self._layout.event(seq)) == mine

    def _sizes_after(self, after: int) -> list[tuple[int, int]]:
        """The event numbers after ``after`` that exist, with their sizes: one sized LIST, or a probe per number."""
        folder = self._layout.events
        found: list[tuple[int, int]] = []
        if self._storage.capabilities.list_after:
            listed = self._storage.sizes_after(folder, seq_name(after))
            found = [(seq, size) for n, size in listed if (seq := parse_seq_name(n)) is not None]
        else:
            while (size := self._storage.size(self._layout.event(after + len(found) + 1))) is not None:
                found.append((after + len(found) + 1, size))
        self._listed = dict(found)  # what a lost create's round settles from (protocol rule 22)
        self._note_tags((seq, tag_by_size(size)) for seq, size in found)
        self._judge_turns(found)
        return found

    def _note_tags(self, tags: Iterable[tuple[int, int]]) -> None:
        """Remember whose tag wrote which numbers, for a window before the tail (protocol rule 24)."""
        self._tags.update(tags)
        if len(self._tags) > 4 * _ORDER_WINDOW:  # pruned now and then: amortized nothing per append
            floor = max(self._tags) - 2 * _ORDER_WINDOW
            self._tags = {n: t for n, t in self._tags.items() if n > floor}

    def _learn_word(self, race: _Race, lost: int) -> bool:
        """Protocol rule 21's round: the new tail, and that no event after the writer state moved the status.

        One sized listing from what the writer knows, no event read. True when every event there
        is even-sized (none moved the status) and they run without a gap from what it knew: the tail
        is then known, and the append claims after it on the status it holds. False (the careful
        round, which folds) at an odd-sized event, a gap, a lost number that is gone, or when the
        writer has not known the whole log lately (cleanup may have removed files: protocol rule 13).
        """
        state = self._writer_state()
        started = time.monotonic()
        if self._sealed is not None or not self._knows_all(started):
            return False
        after = max(self._neutral, state.last_event_id)
        if after >= lost:
            return False
        found = self._sizes_after(after)
        tail = after
        for number, size in found:
            if number != tail + 1 or may_move_by_size(size):
                return False  # a gap (cleanup at work) or an event that may have moved the status: fold
            tail = number
        if tail < lost:
            return False  # the number it lost is gone: only cleanup removes files
        self._neutral = tail
        self._tail = max(self._tail, tail)
        self._confirmed = started  # read up to the end of the log, and no seal in it (a seal is odd-sized)
        race.went_by = max(1, tail - lost + 1)
        race.missed += race.went_by
        return True

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
            self._state_fp = mapping_fp(batch[-1])
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
        if self._hooks is not None and "lease_epoch" not in fields:
            epoch = self._hooks.fence()  # a writer whose lease was taken is refused here, before any write
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
        confirmed = self._confirmed
        if confirmed is not None and started - confirmed <= self._post_check_after:
            # It knew the whole log lately: no file after its tail was removed since (protocol rule 13).
            self._confirmed = started
            self._tail = max(self._tail, seq)
            return
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
        self._tail = max(self._tail, seq)

    def _is_seal(self, seq: int) -> bool:
        """Whether event ``seq`` is a seal (one GET; a missing file is none: cleanup keeps the seal).

        Read whatever its size: a seal written by a version before protocol rule 21 may be even-sized.
        An even-sized event right after what this writer knows moved no status (protocol rule 21).
        """
        body = self._storage.read(self._layout.event(seq))
        if body is None:
            return False
        if not may_move_by_size(len(body)) and max(self._neutral, self._writer_state().last_event_id) == seq - 1:
            self._neutral = seq
        return self._decode_mapping(seq, body).get("type") == SEAL_TYPE

    def _remove_stray(self, seq: int) -> None:
        """Remove our event ``seq``, which is not part of the log (it follows a seal); logged if that fails."""
        try:
            self._storage.delete(self._layout.event(seq))
        except StorageError as e:
            log.warning("could not remove stray event %d of sealed run %s: %s", seq, self._run_id, e)

    def _learn_tail(self, lost: int, *, fold: bool) -> None:
        """After losing number ``lost``: find the new tail, and whether a seal is among the events that went by.

        The plain round (``fold=False``) is one sized listing: an even-sized event is no seal and
        moved no status (protocol rule 21), so only odd-sized ones are read, all at once. A writer
        that knew the whole log less than half ``seal_grace`` ago keeps that knowledge (cleanup has
        removed no file since, so the listing is the log: protocol rule 13); otherwise the create
        after this round asks for ``events.jsonl`` (protocol rule 6).
        """
        fresh = self._knows_all(time.monotonic())
        if not fresh:
            self._confirmed = None
        if fold:
            self._catch_up_writer(fresh=fresh)  # folds every event up to the tail, the seal included
            return
        state = self._writer_state()
        after = max(self._neutral, state.last_event_id)
        # From what it knows (so an even-sized run of events extends what it knows moved no status,
        # protocol rule 21) when that is within a page of names, else from the number it lost.
        start = after if lost - after <= _LIST_PAGE else lost - 1
        tail, odd = start, []
        for number, size in self._sizes_after(start):
            if number != tail + 1:
                break
            tail = number
            if may_move_by_size(size):
                odd.append(number)
        if start == after:
            self._neutral = odd[0] - 1 if odd else tail
        self._tail = max(self._tail, tail)
        unread = [n for n in odd if n > state.last_event_id]
        if unread:
            bodies = self._storage.read_many(self._layout.event(n) for n in unread)
            for n in unread:
                body = bodies[self._layout.event(n)]
                if body is not None and _type_of(body) == SEAL_TYPE:
                    self._sealed = n  # nothing may follow it: the append is refused (protocol rule 4)
                    return

    def _after_claim(self, event: Event, size: int = _EVENT_BYTES_GUESS) -> Commit:
        """Fold our own event when the state is current, and write the summary and snapshots when due. Never raises.

        The summary (a few hundred bytes) is written when the status changes and
        with every snapshot, and after every append where a write costs no
        request (``cheap_writes``: a listing then reads an active run's summary
        instead of folding its events); ``state.json`` only when :meth:`_snapshot_due`.
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
                if seq - 1 - state.last_event_id > self._snapshot_every:
                    state = self._adopt_snapshot(state, seq)
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
            self._state_fp = event_fp(event)
            after = state.status
        if event.type == SEAL_TYPE:
            self._sealed = seq
            self._write_snapshot(state, periodic=False)  # archiving reads state.json of the sealed run
            self._write_summary(state)
            return Commit(event, before, after)
        if periodic:
            self._write_snapshot(state, periodic=True)
        if before is not None and (before != after or self._storage.capabilities.cheap_writes):
            self._write_summary(state)
        return Commit(event, before, after)

    def _adopt_snapshot(self, state: RunState, seq: int) -> RunState:
        """The newest ``state.json`` as the writer state when it is ahead of ``state`` (checked as an open checks it).

        A writer whose appends went on word or unfolded (protocol rule 21) may be far behind when it
        claims a snapshot's number: folding from ``state.json``, about ``snapshot_every`` events back, costs
        a snapshot's worth of reads, where folding from its own state would cost all it skipped.
        """
        newest, fp = self._snapshot(self._layout.state, seq - 1)
        if newest is None or newest.last_event_id <= state.last_event_id:
            return state
        self._state, self._state_fp = newest, fp
        self._snap_seq = max(self._snap_seq, newest.last_event_id)
        return newest

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

    def last_event_id(self) -> int:
        """The id of the newest event (0 for an empty log)."""
        return self.fold_state().last_event_id


def with_hooks(elog: EventLog, hooks: LogHooks[EventLog]) -> EventLog:
    """``elog`` wired to ``hooks`` (leases, the run index, lifecycle, the plan overlay): the store's door.

    Not a parameter of :class:`EventLog`: the class is public and its signature names public types
    only, while hooks are the library's own wiring (as :func:`append_event` is its own door to append).
    Call it before the log is used.
    """
    elog._hooks = hooks  # noqa: SLF001  (same module)
    return elog


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


os.register_at_fork(after_in_child=_new_identity_in_child)
