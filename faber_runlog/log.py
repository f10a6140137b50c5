"""EventLog: append typed events to one run and read them back in order.

A sequence number is claimed only by exclusively creating ``events/<seq>``.
The writer keeps the run's state folded exactly up to the last event it knows;
it tries ``last + 1`` and, when another writer got there first, folds what that
writer wrote and tries again. Because a claim only succeeds on top of an
exactly known state, checks made against that state (idempotency keys,
lifecycle transitions) hold across processes without locks.
"""

from __future__ import annotations

import getpass
import logging
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, Final

from faber_runlog import _codec
from faber_runlog.errors import CorruptEvent, InvalidEvent, RunArchived, SequenceConflict, StorageError
from faber_runlog.events import Event, _event_from_dict, type_version, upcast, validate_event_dict
from faber_runlog.ids import RunId
from faber_runlog.layout import RunLayout, parse_seq_name, seq_name
from faber_runlog.state import RunState, apply, fold_generation
from faber_runlog.storage import Storage

__all__ = ["EventLog"]

log = logging.getLogger("faber_runlog.log")

_MAX_CLAIMS: Final = 10_000
_BATCH: Final = 256
_loads: Final = _codec.loads  # bound once: it runs for every event read
CONSOLIDATED_KEY: Final = "consolidated_through"
"""Key in ``state.json`` naming the last event held by ``events.jsonl`` (set by consolidation)."""
CONSOLIDATION_RECORD: Final = "consolidation.json"
"""The record of a consolidation (count, first/last sequence, hash), in the run's folder."""
# Types whose fold never changes the run's status: a writer that is behind
# may append them without catching up first.
_STATUS_NEUTRAL: Final = frozenset({
    "artifact_create", "artifact_modify", "commit_create", "branch_create", "pr_create", "pr_merge",
    "spec_generate", "spec_validate", "test_run", "docs_update", "checkpoint", "skill_invoke",
    "agent_invoke", "decision_point", "retry_loop_enter", "retry_loop_exit", "workflow_rerun",
})  # fmt: skip


def _default_user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return None


_USER: Final = _default_user()
_HOST: Final = socket.gethostname()


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
        on_status_change: Callable[[EventLog, Event, str, RunState], None] | None = None,
        hook_types: frozenset[str] = frozenset(),
    ) -> None:
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every must be at least 1, got {snapshot_every}")
        self._storage = storage
        self._rid = run_id
        self._run_id = str(run_id)
        self._layout = RunLayout(run_id)
        self._snapshot_every = snapshot_every
        self._source = source
        self._user = user if user is not None else _USER
        self._writer = uuid.uuid4().hex[:12]
        self._counter = 0
        self._state: RunState | None = None
        self._fold_gen = fold_generation()  # of the fold handlers self._state was folded with
        self._tail = 0  # highest sequence number known to exist
        # Consolidated runs read from events.jsonl. Learned from state.json whenever
        # it is read anyway; otherwise from consolidation.json, at most once per log.
        self._jsonl_last: int | None = None
        self._format_known = False
        self._seen_last = 0  # last_event_id of the newest state.json read
        self._backoff = 0.0002 if storage.kind in ("local", "memory") else 0.005
        self._lock = threading.RLock()
        # Called as hook(log, event, status_before, state) after an append that changed
        # the run's status or has a type in hook_types (final reports, releasing
        # leases); never for other appends, so the hot path pays nothing.
        self._on_status_change = on_status_change
        self._hook_types = hook_types

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
    ) -> Event:
        """Validate and append one event; returns it with its ``event_id``.

        With ``idempotency_key``, the event is appended at most once per run:
        a repeat (from any process) returns the event already stored.
        """
        fields: dict[str, Any] = {
            "type": type,
            "run_id": self._run_id,
            "phase": phase,
            "step": step,
            "user": user if user is not None else self._user,
            "source": source if source is not None else self._source,
            "status": status,
            "message": message,
            "duration_ms": duration_ms,
            "error": error,
            "artifacts": artifacts,
            "metadata": metadata if metadata is not None else {},
            "idempotency_key": idempotency_key,
        }
        return self.append({k: v for k, v in fields.items() if v is not None})

    def append(self, fields: dict[str, Any], check: Callable[[RunState], Event | None] | None = None) -> Event:
        """Append an event built from ``fields``; returns it with its ``event_id``.

        Like :meth:`emit`, a ``user`` or ``source`` that is missing or None is
        filled from the log's defaults; ``fields`` itself is not modified.

        ``check(state)`` runs against the exact state the event will follow; it
        may raise to refuse the append (nothing is written) or return an
        already stored event to hand back instead. On a lost race it runs
        again on the newer state, so rules checked this way hold across
        processes. Without ``check`` or an idempotency key, a writer that loses
        a race only learns the new tail (one LIST on S3), not the events.
        """
        etype = fields.get("type")
        if not isinstance(etype, str):
            raise InvalidEvent(f"event for run {self._run_id} needs a string 'type'", run_id=self._run_id)
        # A copy: the caller's dict stays as given, whatever we fill in.
        fields = dict(fields)
        fields.setdefault("run_id", self._run_id)
        fields.setdefault("metadata", {})
        for name, default in (("user", self._user), ("source", self._source)):
            if fields.get(name) is None and default is not None:
                fields[name] = default
        fields["schema_version"] = type_version(etype)
        if fields["run_id"] != self._run_id:
            raise InvalidEvent(
                f"event names run {fields['run_id']!r} but is being appended to {self._run_id}", run_id=self._run_id
            )
        probe = dict(fields, event_id=1, timestamp=_codec.now_iso(), nonce="x")
        validate_event_dict(probe, run_id=self._run_id)
        key = fields.get("idempotency_key")
        exact = key is not None or check is not None
        seq = 0
        losses = 0
        with self._lock:
            state = self._writer_state()
            self._refuse_if_sealed()
            for _ in range(_MAX_CLAIMS):
                if exact:
                    state = self._refresh()
                    self._refuse_if_sealed()
                    if key is not None and key in state.idempotency_keys:
                        return self._event_at(state.idempotency_keys[key])
                    if check is not None:
                        existing = check(state)
                        if existing is not None:
                            return existing
                seq = self._tail + 1
                self._counter += 1
                data = dict(fields, event_id=seq, timestamp=_codec.now_iso(), nonce=f"{self._writer}-{self._counter}")
                if self._storage.create(self._layout.event(seq), _codec.dumps(data)):
                    self._tail = seq
                    event = Event.from_dict(data)
                    self._after_claim(event)
                    return event
                # Another writer took this number: back off a random while (so
                # racing writers stop colliding), learn the new tail, go again.
                losses += 1
                time.sleep(random.uniform(0, self._backoff * (1 << min(losses, 6))))
                self._tail = self._find_tail(seq)
        raise SequenceConflict(
            f"could not claim a sequence number for run {self._run_id} after {_MAX_CLAIMS} tries "
            f"(last tried {seq}); too many concurrent writers, retry later",
            run_id=self._run_id,
            seq=seq,
        )

    def _find_tail(self, known: int) -> int:
        """The highest contiguous sequence number at or after ``known`` (which exists)."""
        if self._storage.kind == "s3":
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

    def _after_claim(self, event: Event) -> None:
        """Keep the writer's state exact when cheap, and write snapshots when due."""
        seq = event.event_id
        periodic = seq % self._snapshot_every == 0
        state = self._writer_state()
        if state.last_event_id != seq - 1:
            # Others wrote since our state: only catch up when a snapshot may be due.
            if not (periodic or event.type not in _STATUS_NEUTRAL):
                return
            state = self._refresh(until=seq - 1)
        before = state.status
        apply(state, event)
        notify = state.status != before or event.type in self._hook_types
        if not (periodic or notify):
            return
        # The event is already durable; a failed snapshot only costs a later reader time.
        try:
            body = _codec.dumps(state.to_dict())
            self._storage.replace(self._layout.state, body)
            if periodic:
                self._storage.replace(self._layout.snapshot(seq), body)
        except (StorageError, OSError) as e:
            log.warning("snapshot of run %s at event %d not written: %s", self._run_id, seq, e)
        if notify and self._on_status_change is not None:
            try:
                self._on_status_change(self, event, before, state)
            except Exception as e:  # the event is durable; what the hook missed can be recovered
                log.warning("status-change hook for run %s at event %d failed: %s", self._run_id, seq, e)

    def snapshot(self) -> RunState:
        """Write ``state.json`` for the current state now and return that state."""
        with self._lock:
            state = self._refresh()
            body = state.to_dict()
            if self._jsonl_last is not None:
                body[CONSOLIDATED_KEY] = self._jsonl_last  # keep readers on events.jsonl
            self._storage.replace(self._layout.state, _codec.dumps(body))
            return state.copy()

    def _refuse_if_sealed(self) -> None:
        if self._jsonl_last is not None:
            raise RunArchived(
                f"run {self._run_id} is consolidated (events.jsonl holds events 1..{self._jsonl_last}), "
                "so its log is sealed and nothing can be appended; archived runs cannot be resumed: "
                "re-run it instead (Resumer(store).rerun(run_id))",
                run_id=self._run_id,
                last_event_id=self._jsonl_last,
            )

    # -- state -------------------------------------------------------------

    def _writer_state(self) -> RunState:
        if self._state is not None and self._fold_gen != fold_generation():
            # A fold handler was registered since this state was folded: fold every event again,
            # from the first (a stored snapshot may predate the handler too).
            self._fold_gen = fold_generation()
            fresh = RunState(run_id=self._run_id)
            self._catch_up(fresh)
            self._state = fresh
        if self._state is None:
            self._fold_gen = fold_generation()
            self._state = self.load_state()
            self._tail = max(self._tail, self._state.last_event_id)
        return self._state

    def _refresh(self, until: int | None = None) -> RunState:
        """Bring the writer's state exactly up to ``until`` (default: the current tail)."""
        state = self._writer_state()
        if until is None or until - state.last_event_id > self._snapshot_every:
            # Far behind: a newer snapshot saves reading what it already folded.
            snap = self._read_snapshot(self._layout.state)
            if snap is not None and snap.last_event_id > state.last_event_id and (
                until is None or snap.last_event_id <= until
            ):
                state = self._state = snap
        self._catch_up(state, until=until)
        self._tail = max(self._tail, state.last_event_id)
        return state

    def current_state(self) -> RunState:
        """The exact current state (a private copy), folding only events not yet seen."""
        with self._lock:
            return self._refresh().copy()

    def load_state(self, at: int | None = None) -> RunState:
        """Snapshot plus the events after it; ``at`` stops after that event."""
        if at is not None and at < 0:
            raise ValueError(f"at must be >= 0, got {at} (run {self._run_id})")
        state = self._read_snapshot(self._layout.state)
        if at is not None and state is not None and state.last_event_id > at:
            # A consolidated run folds from events.jsonl (one read), not from historical snapshots.
            state = None if self._jsonl_last is not None else self._snapshot_at_or_before(at)
        if state is None:
            state = RunState(run_id=self._run_id)
        self._catch_up(state, until=at)
        if at is not None and state.last_event_id < at:
            raise CorruptEvent(
                f"run {self._run_id} has only {state.last_event_id} events; cannot show the state at event {at}",
                run_id=self._run_id,
                seq=at,
                path=self._storage.path(self._layout.event(at)),
            )
        return state

    def _read_snapshot(self, key: str) -> RunState | None:
        body = self._storage.read(key)
        if body is None:
            return None
        try:
            data = _codec.loads(body)
            state = RunState.from_dict(data)
            if key == self._layout.state:
                through = data.get(CONSOLIDATED_KEY)
                self._jsonl_last = through if isinstance(through, int) and through >= 0 else None
                self._format_known = True
                self._seen_last = state.last_event_id
        except Exception as e:
            # A snapshot is a cache: a damaged one costs a full fold, never a wrong answer.
            log.warning("ignoring unreadable snapshot %s of run %s: %s", key, self._run_id, e)
            return None
        if state.run_id != self._run_id:
            log.warning("ignoring snapshot %s: it belongs to run %s", key, state.run_id)
            return None
        return state

    def _snapshot_at_or_before(self, at: int) -> RunState | None:
        k = self._snapshot_every
        seq = (at // k) * k
        for _ in range(3):
            if seq <= 0:
                return None
            state = self._read_snapshot(self._layout.snapshot(seq))
            if state is not None and state.last_event_id == seq:
                return state
            seq -= k
        names = [n for n in self._storage.list_names(self._layout.snapshots) if (s := parse_seq_name(n)) and s <= at]
        for name in reversed(names):
            state = self._read_snapshot(f"{self._layout.snapshots}/{name}")
            if state is not None:
                return state
        return None

    def _catch_up(self, state: RunState, until: int | None = None) -> int:
        n = 0
        for event in self._stored(state.last_event_id, until):
            apply(state, event)
            n += 1
        return n

    # -- reading -----------------------------------------------------------

    def _decode(self, seq: int, body: bytes) -> Event:
        try:
            data = _loads(body)
            if data.__class__ is dict and data.get("event_id") == seq:
                return _event_from_dict(upcast(data))
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, found {type(data).__name__}")
            raise ValueError(f"its event_id is {data.get('event_id')!r}, not {seq}")
        except Exception as e:
            path = self._storage.path(self._layout.event(seq))
            raise CorruptEvent(
                f"event {seq} of run {self._run_id} at {path} is unreadable ({e}); "
                "restore the file from a backup or archive, the log is not read past it",
                run_id=self._run_id,
                seq=seq,
                path=path,
            ) from e

    def _stored(self, after: int, until: int | None = None) -> Iterator[Event]:
        """Events after ``after`` (and up to ``until``) in order, stopping at the first missing one."""
        if self._jsonl_last is None:
            nxt = yield from self._stored_files(after, until)
            if (until is not None and nxt > until) or not self._consolidated_past(nxt):
                return
            after = nxt - 1
        # A consolidated log is sealed: events.jsonl holds all of it, the event files may be gone.
        yield from self._stored_jsonl(after, until)

    def _consolidated_past(self, missing: int) -> bool:
        """Whether event ``missing`` (not found as a file) is held by events.jsonl.

        Costs a read of consolidation.json only when state.json was never read by
        this log, or when it claimed the missing event exists; at most once per log.
        """
        if self._jsonl_last is None and (not self._format_known or missing <= self._seen_last):
            body = self._storage.read(f"{self._layout.dir}/{CONSOLIDATION_RECORD}")
            self._format_known = True
            self._seen_last = min(self._seen_last, missing - 1)  # do not look again for this gap
            if body is not None:
                try:
                    last = _codec.loads(body)["last_seq"]
                except Exception as e:
                    raise CorruptEvent(
                        f"{CONSOLIDATION_RECORD} of run {self._run_id} is unreadable ({e}); "
                        "consolidate the run again from its event files, or restore it from the archive",
                        run_id=self._run_id,
                        seq=missing,
                        path=self._storage.path(f"{self._layout.dir}/{CONSOLIDATION_RECORD}"),
                    ) from e
                self._jsonl_last = int(last)
        return self._jsonl_last is not None and missing <= self._jsonl_last

    def _stored_jsonl(self, after: int, until: int | None) -> Iterator[Event]:
        last = self._jsonl_last if until is None else min(until, self._jsonl_last or 0)
        if last is None or after >= last:
            return
        path = self._storage.path(self._layout.jsonl)
        body = self._storage.read(self._layout.jsonl)
        if body is None:
            raise CorruptEvent(
                f"run {self._run_id} is consolidated but {path} is missing; restore it from the archive "
                "(the archive's copy of the run has it)",
                run_id=self._run_id,
                seq=after + 1,
                path=path,
            )
        lines = body.count(b"\n")  # the file ends with a newline; a cut-off last line does not count
        if lines < last:
            raise CorruptEvent(
                f"{path} of run {self._run_id} holds {lines} events, fewer than {last}; restore it from the archive",
                run_id=self._run_id,
                seq=lines + 1,
                path=path,
            )
        # Walk the lines in place: splitting would hold a second copy of the whole log.
        pos, seq = 0, 1
        while seq <= last:
            end = body.find(b"\n", pos)
            if seq <= after:  # before the cursor: skip without parsing
                pos, seq = end + 1, seq + 1
                continue
            try:
                data = _codec.loads(body[pos:end])
                if not isinstance(data, dict) or data.get("event_id") != seq:
                    raise ValueError(f"line {seq} is not event {seq}")
                event = Event.from_dict(upcast(data))
            except Exception as e:
                raise CorruptEvent(
                    f"line {seq} of {path} (run {self._run_id}) is unreadable ({e}); restore it from the archive",
                    run_id=self._run_id,
                    seq=seq,
                    path=path,
                ) from e
            yield event
            pos = end + 1
            seq += 1

    def _stored_files(self, after: int, until: int | None = None) -> Generator[Event, None, int]:
        """Events from their files; returns the first sequence number not read."""
        if self._storage.kind == "s3":
            return (yield from self._stored_listed(after, until))
        return (yield from self._storage.read_numbered(self._layout.events, after + 1, until, self._decode))

    def _stored_listed(self, after: int, until: int | None) -> Generator[Event, None, int]:
        # One LIST finds the tail; bodies are then fetched concurrently in batches.
        names = self._storage.list_after(self._layout.events, seq_name(after))
        expected = after + 1
        seqs: list[int] = []
        for name in names:
            seq = parse_seq_name(name)
            if seq is None:
                continue
            if seq != expected or (until is not None and seq > until):
                break
            seqs.append(seq)
            expected += 1
        for start in range(0, len(seqs), _BATCH):
            chunk = seqs[start : start + _BATCH]
            bodies = self._storage.read_many(self._layout.event(s) for s in chunk)
            for s in chunk:
                body = bodies[self._layout.event(s)]
                if body is None:
                    return s
                yield self._decode(s, body)
        return expected

    def _event_at(self, seq: int) -> Event:
        body = self._storage.read(self._layout.event(seq))
        if body is None and seq >= 1 and self._consolidated_past(seq):
            return next(self._stored_jsonl(seq - 1, seq))
        if body is None:
            raise CorruptEvent(
                f"event {seq} of run {self._run_id} is missing; run verify() to see what else is",
                run_id=self._run_id,
                seq=seq,
                path=self._storage.path(self._layout.event(seq)),
            )
        return self._decode(seq, body)

    def get(self, event_id: int) -> Event:
        """The event with this id."""
        return self._event_at(event_id)

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
        if since < 0:
            raise ValueError(f"since must be >= 0, got {since} (run {self._run_id})")
        wanted = frozenset(types) if types is not None else None
        n = 0
        if limit is not None and limit <= 0:
            return
        if wanted is None and limit is None:
            yield from self._stored(since, until)  # the rebuild's path: no per-event checks here
            return
        for event in self._stored(since, until):
            if wanted is not None and event.type not in wanted:
                continue
            yield event
            n += 1
            if limit is not None and n >= limit:
                return

    def last_event_id(self) -> int:
        """The id of the newest event (0 for an empty log)."""
        return self.current_state().last_event_id

    def tail(
        self, since: int = 0, *, poll_interval: float = 0.25, timeout: float | None = None
    ) -> Iterator[Event]:
        """Yield events after ``since`` as they are written; stop after ``timeout`` idle seconds."""
        last = since
        idle_since = time.monotonic()
        while True:
            got = False
            for event in self.read(last):
                last = event.event_id
                got = True
                yield event
            if got:
                idle_since = time.monotonic()
            elif timeout is not None and time.monotonic() - idle_since >= timeout:
                return
            else:
                time.sleep(poll_interval)
