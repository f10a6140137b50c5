"""Run lifecycle: the status machine, approval gates, exclusive runs, leases and the stale-run sweep.

Every transition is one event appended with ``EventLog.append(check=...)``:
the check runs on the exact current state and refuses an illegal action with
:class:`InvalidTransition` before anything is written, and a writer that loses
the race for the sequence number re-runs it on the newer state. So a rule
checked here holds across processes and on S3, with no lock.

Exclusive runs claim objects under ``.faber_runlog/`` by exclusive create (see
:func:`claim_start`); a run that ends releases them, its lease and any heartbeat,
and gets its final report (:func:`on_status_change`, called by the event log).

This module only uses the layers below ``store`` (log, state, storage, lease,
report), so ``store.py`` imports it at module level and delegates to it.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, Protocol, Self, SupportsIndex, TypeVar, overload

import attrs

from faber_runlog._base import codec as _codec
from faber_runlog._base import validate as _validate
from faber_runlog._base.advice import advise, status_advice
from faber_runlog._base.converter import to_dict
from faber_runlog._base.ids import RunId
from faber_runlog._base.retry import AGAIN, Again, optimistic
from faber_runlog._domain.events import Event
from faber_runlog._domain.state import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    ApprovalState,
    PhaseState,
    RunState,
    closes_at_end,
)
from faber_runlog._domain.transitions import (
    ACTIONS,
    APPROVAL_ACTIONS,
    ENDING_APPROVAL_ACTIONS,
    ENDING_EVENT_TYPES,
    RunStatus,
)
from faber_runlog._domain.transitions import Moved as _Moved
from faber_runlog._format.layout import KEYS_DIR, SLOTS_DIR, RunLayout, parse_seq_name, seq_name
from faber_runlog._log.eventlog import Commit, EventLog, append_event
from faber_runlog._log.lease import (
    DEFAULT_LEASE_TTL,
    Lease,
    acquire_lease,
    default_owner,
    fence_out,
    parse_lease,
    read_lease,
    read_lease_versioned,
    release_lease,
    stop_heartbeats,
)
from faber_runlog._services.report import write_report
from faber_runlog._storage.backends import Storage
from faber_runlog.errors import (
    ActiveRunExists,
    ApprovalConflict,
    ApprovalNotFound,
    InvalidArgument,
    InvalidEvent,
    InvalidRunId,
    InvalidTransition,
    LeaseLost,
    TooManyActiveRuns,
    TooMuchContention,
)

__all__ = [
    "FINAL_EVENT_TYPES",
    "SWEEP_REASON",
    "StatusView",
    "SweptRun",
    "SweptRuns",
    "cancel",
    "claim_start",
    "complete",
    "decide",
    "fail",
    "finalize",
    "key_folder",
    "on_commit",
    "pause",
    "release_claims",
    "request_approval",
    "resume",
    "retry_phase",
    "retry_step",
    "skip_phase",
    "skip_step",
    "start",
    "status_view",
    "sweep_run",
    "sweep_stale",
]

log = logging.getLogger("faber_runlog._services.lifecycle")

SWEEP_REASON: Final = "process_restart_unrecovered"
FINAL_EVENT_TYPES: Final = frozenset({*ENDING_EVENT_TYPES, "approval_resolved"})
"""Events that end a run when they leave it terminal: they trigger the final report and releases."""

_T = TypeVar("_T")

OpenLog = Callable[[RunId], EventLog]


class _NotStale(Exception):
    """The run is not (or no longer) stale: nothing to sweep."""


# -- transitions ---------------------------------------------------------------


def _refuse(
    state: RunState, action: str, allowed: Iterable[str], hint: str = "", codes: tuple[str, ...] | None = None
) -> InvalidTransition:
    """The refusal of ``action`` in ``state``; its advice is ``codes``, else what the status asks for."""
    allowed_s = ", ".join(allowed)
    refused = InvalidTransition(
        f"cannot {action} run {state.run_id}: its status is {state.status!r} (at event {state.last_event_id}); "
        f"{action} is allowed only from: {allowed_s}. Nothing was written{('. ' + hint) if hint else ''}",
        run_id=state.run_id,
        status=state.status,
        action=action,
        last_event_id=state.last_event_id,
    )
    return advise(refused, *(status_advice(state.status) if codes is None else codes))


def _require(state: RunState, action: str, hint: str = "", codes: tuple[str, ...] | None = None) -> None:
    allowed = ACTIONS[action][1]
    if state.status not in allowed:
        raise _refuse(state, action, allowed, hint, codes)


Build = Callable[[RunState], "dict[str, Any] | Event"]


def _act(elog: EventLog, build: Build) -> Event:
    """Append what ``build(state)`` returns, on top of the exact state it was built from.

    ``build`` raises to refuse, returns an already stored event to replay it, or
    returns the fields of the event to append. The append re-runs ``build`` on
    the exact state it lands on and retries when the fields would differ.
    """

    def attempt() -> Event | Again:
        got = build(elog.fold_state())
        if isinstance(got, Event):
            return got

        def check(now: RunState, fields: dict[str, Any] = got) -> Event | None:
            again = build(now)
            if isinstance(again, Event):
                return again
            if again != fields:
                raise _Moved
            return None

        try:
            return append_event(elog, got, check=check)
        except _Moved:
            return AGAIN

    return optimistic(attempt, what=f"appending a lifecycle action to run {elog.run_id}", run_id=elog.run_id)


def _fields(etype: str, *, phase: str | None = None, step: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": etype}
    if phase is not None:
        out["phase"] = phase
    if step is not None:
        out["step"] = step
    for k, v in extra.items():
        if v is not None:
            out[k] = v
    out.setdefault("metadata", {})
    return out


def _meta(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def start(elog: EventLog, *, metadata: dict[str, Any] | None = None) -> Event:
    """created -> running (``workflow_start``)."""

    def build(state: RunState) -> dict[str, Any]:
        _require(state, "start")
        return _fields("workflow_start", metadata=dict(metadata or {}))

    return _act(elog, build)


def pause(elog: EventLog, *, reason: str | None = None) -> Event:
    """created / running / awaiting_approval -> paused (``workflow_paused``, remembering where from)."""

    def build(state: RunState) -> dict[str, Any]:
        _require(state, "pause")
        return _fields("workflow_paused", metadata=_meta(paused_from=state.status, reason=reason))

    return _act(elog, build)


def resume(elog: EventLog, *, reason: str | None = None) -> Event:
    """paused -> the status it was paused from (``workflow_resumed``)."""

    def build(state: RunState) -> dict[str, Any]:
        # A failing or failed run is resumed after its failure, which is another action (and command).
        _require(state, "unpause", codes=("resume",) if state.status in ("failing", "failed") else None)
        return _fields(
            "workflow_resumed",
            metadata=_meta(previous_status="paused", resumed_to=state.paused_from or "running", reason=reason),
        )

    return _act(elog, build)


def cancel(elog: EventLog, *, reason: str = "cancelled") -> Event:
    """Any active status -> cancelled (``workflow_cancelled``); pending approvals are closed."""

    def build(state: RunState) -> dict[str, Any]:
        _require(state, "cancel")
        return _fields("workflow_cancelled", metadata={"reason": reason})

    return _act(elog, build)


def open_work(state: RunState) -> list[str]:
    """The phases and steps a run's end would leave open: running, retrying, waiting or planned and not started."""
    found: list[str] = []
    for p in state.phases.values():
        if p.status in ("awaiting_approval", "pending") and not closes_at_end(p):  # closed by the end itself
            found.append(f"phase {p.name} ({p.status})")
        found += [f"step {p.name}/{s.name} ({s.status})" for s in p.steps.values() if s.status in _OPEN_WORK]
    return found


_OPEN_WORK: Final = ("running", "retrying", "awaiting_approval", "pending")


def complete(elog: EventLog, *, summary: str | None = None) -> Event:
    """running -> completed (``workflow_complete``); refused while a phase or step is open.

    A completed run never shows running, retrying or pending work: complete or skip it first; a running
    phase whose steps are all done is closed by ``workflow_complete`` itself (completed in the fold).
    ``fail`` and ``cancel`` end a run with open work instead: their event closes it (running phases and
    steps become failed or cancelled in the fold).
    """

    def build(state: RunState) -> dict[str, Any]:
        pending = [a.approval_id for a in state.approvals.values() if a.status == "pending"]
        _require(state, "complete", f"Pending approvals: {pending}" if pending else "")
        unfinished = open_work(state)
        if unfinished:
            refused = InvalidTransition(
                f"cannot complete run {state.run_id}: {', '.join(unfinished)} not finished (at event "
                f"{state.last_event_id}); nothing was written",
                run_id=state.run_id,
                status=state.status,
                action="complete",
                last_event_id=state.last_event_id,
            )
            raise advise(refused, "finish_open_work")
        return _fields("workflow_complete", metadata=_meta(summary=summary))

    return _act(elog, build)


def fail(elog: EventLog, error: str, *, reason: str | None = None) -> Event:
    """Any active status (or a step failure) -> failed for good (``workflow_error``)."""

    def build(state: RunState) -> dict[str, Any]:
        _require(state, "fail")
        return _fields("workflow_error", error=error, metadata=_meta(reason=reason))

    return _act(elog, build)


# -- phases and steps ------------------------------------------------------------


def _phase_refusal(state: RunState, action: str, what: str, status: str, allowed: tuple[str, ...]) -> InvalidTransition:
    return InvalidTransition(
        f"cannot {action} {what} of run {state.run_id}: its status is {status!r} (at event {state.last_event_id}); "
        f"allowed only from: {', '.join(allowed)}. Nothing was written.",
        run_id=state.run_id,
        status=status,
        action=action,
        last_event_id=state.last_event_id,
    )


def retry_phase(elog: EventLog, phase: str) -> Event:
    """Run a failed or cancelled phase again: a new ``phase_start`` (one more attempt)."""

    def build(state: RunState) -> dict[str, Any]:
        _require(state, "retry_phase")
        p = state.phases.get(phase)
        allowed = ("failed", "cancelled")
        if p is None or p.status not in allowed:
            raise _phase_refusal(state, "retry", f"phase {phase!r}", p.status if p else "absent", allowed)
        return _fields("phase_start", phase=phase, metadata={"attempt": (p.attempts if p else 0) + 1})

    return _act(elog, build)


def skip_phase(elog: EventLog, phase: str, *, reason: str | None = None) -> Event:
    """Mark a phase that has not completed as skipped (``phase_skip``)."""

    def build(state: RunState) -> dict[str, Any]:
        _require(state, "skip_phase")
        p = state.phases.get(phase)
        allowed = ("pending", "failed", "cancelled")
        if p is not None and p.status not in allowed:
            raise _phase_refusal(state, "skip", f"phase {phase!r}", p.status, allowed)
        return _fields("phase_skip", phase=phase, metadata=_meta(reason=reason))

    return _act(elog, build)


def retry_step(elog: EventLog, phase: str, step: str, *, reason: str | None = None) -> Event:
    """Try a failed or cancelled step again (``step_retry``)."""

    def build(state: RunState) -> dict[str, Any]:
        _require(state, "retry_step")
        s = state.step(phase, step)
        allowed = ("failed", "cancelled")
        if s is None or s.status not in allowed:
            raise _phase_refusal(state, "retry", f"step {phase}/{step}", s.status if s else "absent", allowed)
        return _fields("step_retry", phase=phase, step=step, metadata=_meta(attempt=s.attempts + 1, reason=reason))

    return _act(elog, build)


def skip_step(elog: EventLog, phase: str, step: str, *, reason: str | None = None) -> Event:
    """Mark a step that is not running or completed as skipped (``step_skip``)."""

    def build(state: RunState) -> dict[str, Any]:
        _require(state, "skip_step")
        s = state.step(phase, step)
        allowed = ("pending", "failed", "cancelled", "retrying")
        if s is not None and s.status not in allowed:
            raise _phase_refusal(state, "skip", f"step {phase}/{step}", s.status, allowed)
        return _fields("step_skip", phase=phase, step=step, metadata=_meta(reason=reason))

    return _act(elog, build)


# -- approvals -------------------------------------------------------------------


@attrs.frozen(slots=True)
class Approval:
    """A handle on one requested approval: its id, gate and phase, and the ``approval_requested`` event.

    ``Run.request_approval`` returns one; ``Run.decide`` takes it (or its ``approval_id``).
    """

    approval_id: str
    gate: str
    phase: str | None
    event: Event

    @property
    def event_id(self) -> int:
        """The sequence number of the ``approval_requested`` event."""
        return self.event.event_id

    @classmethod
    def from_event(cls, event: Event) -> Approval:
        """The handle for an ``approval_requested`` event."""
        m = event.metadata
        return cls(str(m["approval_id"]), str(m.get("gate", "")), event.phase, event)


def approval_id_of(approval: object, run_id: str) -> str:
    """The id named by ``approval`` (an :class:`Approval` or an id string); anything else is refused."""
    if isinstance(approval, Approval):
        return approval.approval_id
    if isinstance(approval, str) and approval:
        return approval
    hint = ""
    if isinstance(approval, Event):
        hint = f" (this is event {approval.event_id}; pass its metadata['approval_id'] or the Approval handle)"
    raise InvalidArgument(
        f"decide() on run {run_id} takes an Approval from request_approval() or its approval_id string, "
        f"got {type(approval).__name__} {approval!r:.80}{hint}; nothing was written"
    )


def request_approval(
    elog: EventLog,
    gate: str,
    *,
    phase: str | None = None,
    payload: dict[str, Any] | None = None,
    approval_id: str | None = None,
) -> Event:
    """Open an approval gate: the run waits in ``awaiting_approval`` until a decision.

    Pass ``approval_id`` to make a retried request safe: the same id with the
    same gate and phase returns the stored request; with another gate or phase
    it is an :class:`ApprovalConflict`. Once changes were requested on a gate,
    asking again with its id opens a new gate under that id (the changes were made).
    """
    aid = approval_id or f"{gate}-{uuid.uuid4().hex[:12]}"

    def build(state: RunState) -> dict[str, Any] | Event:
        old = state.approvals.get(aid)
        if old is not None and old.status == "changes_requested" and (old.gate, old.phase) == (gate, phase):
            old = None  # asked again after changes were requested: a new gate under the same id
        if old is not None:
            if (old.gate, old.phase) == (gate, phase) and old.requested_event_id:
                return elog.get(old.requested_event_id)
            raise ApprovalConflict(
                f"approval {aid} of run {state.run_id} was already requested for gate {old.gate!r} "
                f"(phase {old.phase!r}); use another approval_id. Nothing was written.",
                run_id=state.run_id,
                approval_id=aid,
                reason="approval_id_reused",
            )
        _require(state, "request_approval")
        return _fields(
            "approval_requested",
            phase=phase,
            metadata=_meta(approval_id=aid, gate=gate, payload=dict(payload) if payload is not None else None),
        )

    return _act(elog, build)


def decide(
    elog: EventLog,
    approval_id: str,
    action: str,
    *,
    client_token: str,
    comment: str | None = None,
    user: str | None = None,
) -> Event:
    """Record a decision on an approval and return its ``approval_resolved`` event.

    ``approve`` completes the gated phase and the run goes on; ``request_changes``
    sends the phase back to pending and the run goes on; ``reject`` fails the
    run; ``abort`` cancels it. Every decision closes the run's other pending
    approvals when it ends the run. The same ``client_token`` with the same
    action returns the stored decision and writes nothing; with another action
    it is an :class:`ApprovalConflict`. A paused run takes only reject or abort.
    """
    if action not in APPROVAL_ACTIONS:
        raise InvalidEvent(
            f"unknown approval action {action!r} for approval {approval_id} of run {elog.run_id}; "
            f"use one of {', '.join(APPROVAL_ACTIONS)}. Nothing was written.",
            run_id=elog.run_id,
            event_type="approval_resolved",
        )
    if not isinstance(client_token, str) or not client_token:
        raise InvalidEvent(
            f"decision on approval {approval_id} of run {elog.run_id} needs a non-empty client_token "
            "(it makes retries safe). Nothing was written.",
            run_id=elog.run_id,
            event_type="approval_resolved",
        )

    def build(state: RunState) -> dict[str, Any] | Event:
        a = state.approvals.get(approval_id)
        if a is None:
            raise ApprovalNotFound(
                f"run {state.run_id} has no approval {approval_id!r} (known: {sorted(state.approvals) or 'none'}); "
                "check the id. Nothing was written.",
                run_id=state.run_id,
                approval_id=approval_id,
            )
        if a.client_token == client_token and a.resolved_event_id is not None:
            if a.action == action:
                return elog.get(a.resolved_event_id)  # a retry of the same decision
            raise _conflict(state, a, f"client token {client_token!r} was already used to {a.action}, not to {action}")
        if a.status != "pending":
            raise _conflict(state, a, f"the approval is already {a.status} (event {a.resolved_event_id})")
        if state.status == "paused" and action not in ENDING_APPROVAL_ACTIONS:
            raise _refuse(state, f"{action} approval {approval_id} of", ("awaiting_approval",))
        if state.status not in ACTIONS["decide"][1]:
            raise _refuse(state, f"{action} approval {approval_id} of", ACTIONS["decide"][1])
        return _fields(
            "approval_resolved",
            phase=a.phase,
            user=user,
            metadata=_meta(approval_id=approval_id, action=action, client_token=client_token, comment=comment),
        )

    return _act(elog, build)


def _conflict(state: RunState, a: ApprovalState, why: str) -> ApprovalConflict:
    return ApprovalConflict(
        f"decision on approval {a.approval_id} ({a.gate}) of run {state.run_id} conflicts: {why}. Nothing was written.",
        run_id=state.run_id,
        approval_id=a.approval_id,
        reason=why,
    )


# -- exclusive runs: generation-numbered claim objects ---------------------------------
#
# A claim folder holds {gen:020d}.json objects, each created exclusively. The
# holder is the creator of the highest generation. A newcomer reads the top
# one; if its holder is live it refuses, otherwise it creates top+1. Two
# newcomers racing for the same number cannot both create it, and the
# highest object is never deleted (release overwrites it with a tombstone),
# so a number is never handed out twice. A creator that finds a higher
# generation after creating (its listing was stale) deletes its own and retries.


def key_folder(concurrency_key: str) -> str:
    """Folder of the claim objects of a concurrency key (named by its SHA-256)."""
    return f"{KEYS_DIR}/{hashlib.sha256(concurrency_key.encode()).hexdigest()}"


def _slot_folder(index: int) -> str:
    return f"{SLOTS_DIR}/{index}"


@attrs.frozen(slots=True)
class _Holder:
    run_id: str
    status: str
    live: bool
    expired: bool  # active but its lease (and claim) expired: may be swept and taken over


def _now(storage: Storage) -> _dt.datetime:
    return storage.clock.now()


_iso = _codec.iso


def _judge(storage: Storage, body: dict[str, Any] | None, open_log: OpenLog, key: str) -> _Holder:
    if body is None:
        # A damaged claim object names no holder: treat it as released, loudly,
        # rather than block the key for ever.
        log.warning("claim %s in %s is unreadable; treating it as released", key, storage.url)
        return _Holder("unknown", "unreadable", False, False)
    run_id = str(body.get("run_id"))
    if body.get("released"):
        return _Holder(run_id, "released", False, False)
    try:
        rid = RunId.parse(run_id)
    except InvalidRunId:
        return _Holder(run_id, "unknown", False, False)
    try:
        status = open_log(rid).fold_state().status
    except _validate.DAMAGE as e:
        # The holder's log is damaged: its lease and claim decide whether it is alive.
        log.warning("holder %s of claim %s is unreadable (%s); judging it by its lease", rid, key, e)
        status = "running"
    if status not in ACTIVE_STATUSES:
        return _Holder(run_id, status, False, False)
    # A damaged expiry (``"soon"``) counts as expired now: it cannot keep the key held for ever.
    expiries = [_validate.parse_timestamp(body.get("expires_at")) or _now(storage)]
    lease = read_lease(storage, rid)
    if lease is not None:
        expiries.append(_validate.parse_timestamp(lease.expires_at) or _now(storage))
    live = max(expiries) > _now(storage)
    return _Holder(run_id, status, live, not live)


def _generations(storage: Storage, folder: str) -> list[int]:
    return sorted(g for n in storage.list_names(folder) if (g := parse_seq_name(n)) is not None)


def _claim(
    storage: Storage, folder: str, body: dict[str, Any], open_log: OpenLog, ttl: float
) -> tuple[str | None, _Holder | None]:
    """Claim ``folder`` for ``body['run_id']``: (claim key, None) or (None, live holder)."""

    def attempt() -> tuple[str | None, _Holder | None] | Again:
        gens = _generations(storage, folder)
        top = gens[-1] if gens else 0
        if top:
            raw = storage.read(f"{folder}/{seq_name(top)}")
            if raw is None:
                return AGAIN  # a loser removed its object between our list and read: look again
            holder = _judge(storage, _codec.load_object(raw), open_log, f"{folder}/{seq_name(top)}")
            if holder.live:
                return None, holder
            if holder.expired and _sweep_holder(storage, holder.run_id, open_log):
                # Judge again: the key passes on only once the holder lost its lease for
                # certain (the sweep fenced it out and failed it); a holder whose late
                # heartbeat won the race is live again and keeps its key.
                return AGAIN
        gen = top + 1
        key = f"{folder}/{seq_name(gen)}"
        now = _now(storage)
        data = dict(body, generation=gen, claimed_at=_iso(now), expires_at=_iso(now + _dt.timedelta(seconds=ttl)))
        if not storage.create(key, _codec.dumps(data)):
            return AGAIN
        if storage.list_after(folder, seq_name(gen)):
            storage.delete(key)  # we claimed from a stale listing: a newer claim exists
            return AGAIN
        for old in gens:
            if old < top:  # keep the last two; older ones are history nobody reads
                storage.delete(f"{folder}/{seq_name(old)}")
        return key, None

    rid = body.get("run_id")
    return optimistic(
        attempt,
        what=f"claiming {folder} in {storage.url} for run {rid}",
        run_id=None if rid is None else str(rid),
        advice="too many processes are starting runs at once, retry later",
    )


def _sweep_holder(storage: Storage, run_id: str, open_log: OpenLog) -> bool:
    """Fence out and fail a holder whose lease expired; False when its run was never created.

    Whether the sweep happened or not (the holder renewed in time, another
    sweeper was first), the caller must judge the holder again.
    """
    rid = RunId.parse(run_id)
    if not storage.exists(RunLayout(rid).metadata):
        return False
    sweep_run(storage, open_log(rid), include_unleased=True)
    return True


def claim_start(
    storage: Storage,
    run_id: RunId,
    *,
    open_log: OpenLog,
    concurrency_key: str | None = None,
    max_active_runs: int | None = None,
    ttl: float = DEFAULT_LEASE_TTL,
    owner: str | None = None,
) -> tuple[str, ...]:
    """Claim the concurrency key and an active-run slot for a new run; returns the claim keys.

    Raises :class:`ActiveRunExists` when a live run holds the key and
    :class:`TooManyActiveRuns` when every slot is held; nothing stays claimed
    then. With claims, the run's lease is written (listing them) so that
    whoever ends the run releases them.
    """
    if concurrency_key is None and max_active_runs is None:
        return ()
    if concurrency_key is not None and (not isinstance(concurrency_key, str) or not 0 < len(concurrency_key) <= 1024):
        raise InvalidArgument(
            f"concurrency_key for run {run_id} must be a non-empty string of at most 1024 characters, "
            f"got {concurrency_key!r}; nothing was written"
        )
    if max_active_runs is not None:
        _validate.integer(max_active_runs, "max_active_runs", minimum=1, maximum=1_000_000)
    base: dict[str, Any] = {"run_id": str(run_id), "released": False}
    claims: list[str] = []
    try:
        if concurrency_key is not None:
            key, holder = _claim(
                storage, key_folder(concurrency_key), dict(base, kind="key", key=concurrency_key), open_log, ttl
            )
            if holder is not None:
                held = ActiveRunExists(
                    f"run {holder.run_id} (status {holder.status!r}) already holds concurrency key "
                    f"{concurrency_key!r} in {storage.url}; no run was created (wait for it to end, or cancel it)",
                    run_id=holder.run_id,
                    status=holder.status,
                    concurrency_key=concurrency_key,
                )
                raise advise(held, "sweep")
            assert key is not None
            claims.append(key)
        if max_active_runs is not None:
            holders: list[_Holder] = []
            for i in range(max_active_runs):
                key, holder = _claim(storage, _slot_folder(i), dict(base, kind="slot", slot=i), open_log, ttl)
                if key is not None:
                    claims.append(key)
                    break
                assert holder is not None
                holders.append(holder)
            else:
                active = ", ".join(f"{h.run_id} ({h.status})" for h in holders)
                raise TooManyActiveRuns(
                    f"{max_active_runs} runs are already active in {storage.url} (max_active_runs="
                    f"{max_active_runs}): {active}; wait for one to end. No run was created.",
                    limit=max_active_runs,
                    active_run_ids=tuple(h.run_id for h in holders),
                )
        acquire_lease(storage, run_id, ttl=ttl, owner=owner, claims=tuple(claims))
    except BaseException:
        release_claims(storage, run_id, claims)
        raise
    return tuple(claims)


def release_claims(storage: Storage, run_id: RunId, claims: Iterable[str]) -> list[str]:
    """Mark the run's claim objects released (a tombstone, never a delete); returns those released."""

    def attempt(key: str) -> bool | Again:
        got = storage.read_versioned(key)
        body = _codec.load_object(got.data if got is not None else None)
        if got is None or body is None:
            return False
        if body.get("run_id") != str(run_id) or body.get("released"):
            return False  # taken over already, or released before
        body.update(released=True, released_at=_codec.now_iso(storage.clock.now()))
        return True if storage.swap(key, _codec.dumps(body), got.version) is not None else AGAIN

    released: list[str] = []
    for key in claims:
        try:
            if optimistic(
                functools.partial(attempt, key), what=f"releasing claim {key} of run {run_id}", run_id=str(run_id)
            ):
                released.append(key)
        except TooMuchContention as e:  # best effort: the claim lapses with the run's lease (sweep)
            log.warning("%s", e)
    return released


# -- ending a run --------------------------------------------------------------------


def on_commit(storage: Storage, elog: EventLog, commit: Commit) -> None:
    """After-commit work: when an ending event left the run terminal, finalize it (report, releases)."""
    if commit.event.type in FINAL_EVENT_TYPES and commit.status_after in TERMINAL_STATUSES:
        finalize(storage, elog, epoch=max(commit.event.lease_epoch or 0, elog.fence_epoch()))


def finalize(storage: Storage, elog: EventLog, state: RunState | None = None, *, epoch: int | None = None) -> list[str]:
    """Write the final report, stop this process's heartbeat, release claims and the lease.

    Returns the claim keys released. Each part is best effort and repeatable:
    a crash half-way leaves claims a newcomer may take over (their run has
    ended) and a report :func:`report.recover_missing_reports` writes.

    The lease is released only at the epoch that ended the run (``epoch``: the
    highest lease epoch in the log up to the ending event; None: whatever is
    current): a lease taken since (a resumer that took it a moment ago) has a
    higher epoch and is left alone,
    and a writer of this process that a sweep fenced out learns it lost its
    lease instead of forgetting it had one.
    """
    rid = RunId.parse(elog.run_id)
    write_report(storage, elog, state)
    stop_heartbeats(storage, rid)
    lease, _ = read_lease_versioned(storage, rid)  # a sweep's tombstone still lists the claims
    released: list[str] = []
    if lease is not None:
        released = release_claims(storage, rid, lease.claims)
        release_lease(storage, rid, epoch=epoch)
    return released


# -- heartbeats and the sweep ------------------------------------------------------------


@attrs.frozen(slots=True)
class SweptRun:
    """A run the sweep failed because its writer's lease expired."""

    run_id: str
    previous_status: RunStatus
    event_id: int
    failed_phases: tuple[str, ...]
    closed_approvals: tuple[str, ...]
    released_claims: tuple[str, ...]
    lease_owner: str | None
    lease_expired_at: str | None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return to_dict(self)


def _stale(
    lease: Lease | None, state: RunState, older_than: float, *, include_unleased: bool, now: _dt.datetime
) -> bool:
    if lease is not None:
        return not lease.is_live(now) and lease.expired_for(now) >= older_than
    if not include_unleased:
        return False
    last = _validate.parse_timestamp(state.updated_at)
    if last is None:
        return True  # no (readable) time of a last event: idle as far as anyone can tell
    return (now - last).total_seconds() >= older_than


def sweep_run(
    storage: Storage, elog: EventLog, *, older_than: float = 0.0, include_unleased: bool = False
) -> SweptRun | None:
    """Fail one run whose lease expired at least ``older_than`` seconds ago; None if it is not stale.

    The ``workflow_error`` (reason ``process_restart_unrecovered``) is appended
    with a check on the exact state and a fresh read of the lease, so
    concurrent sweepers fail a run once and a writer that heartbeated in the
    meantime is left alone. Its fold fails the active phases and closes the
    pending approvals; the log's hook then releases claims and writes the report.
    """
    rid = RunId.parse(elog.run_id)
    state = elog.fold_state()
    if state.status not in ACTIVE_STATUSES:
        return None
    stored, version = read_lease_versioned(storage, rid)
    lease = stored if stored is not None and not stored.released else None
    if not _stale(lease, state, older_than, include_unleased=include_unleased, now=_now(storage)):
        return None
    # Take the lease from the holder we judged dead, by compare-and-swap: if it
    # renewed since, this fails and the run is left alone. Once it succeeds, the
    # holder's renewals fail and its next event is refused (fencing).
    fenced = fence_out(storage, rid, stored, version, reason="swept", by=f"sweeper {default_owner()}")
    if fenced is None:
        return None
    epoch, tomb = fenced
    seen: dict[str, Any] = {}

    def check(now: RunState) -> Event | None:
        if now.status not in ACTIVE_STATUSES or read_lease_versioned(storage, rid)[1] != tomb:
            raise _NotStale  # it ended, or was resumed under a newer lease since we fenced it out
        seen.update(state=now.copy())
        return None

    fields = _fields(
        "workflow_error",
        error="the run's writer stopped renewing its lease and no process recovered the run",
        metadata={"reason": SWEEP_REASON},
        lease_epoch=epoch,
    )
    try:
        event = append_event(elog, fields, check=check)
    except (_NotStale, LeaseLost):  # LeaseLost: another sweeper (or a takeover) fenced this one out and acts
        return None
    before: RunState = seen["state"]
    return SweptRun(
        run_id=str(rid),
        previous_status=before.status,
        event_id=event.event_id,
        failed_phases=tuple(p.name for p in before.phases.values() if p.status in ("running", "awaiting_approval")),
        closed_approvals=tuple(a.approval_id for a in before.approvals.values() if a.status == "pending"),
        released_claims=lease.claims if lease is not None else (),
        lease_owner=lease.owner if lease is not None else None,
        lease_expired_at=lease.expires_at if lease is not None else None,
    )


@attrs.frozen(slots=True)
class RunProblem:
    """A run a store-wide operation skipped because it is damaged (or is a FABER run, ``kind="faber"``), and why.

    It unpacks as ``run_id, error`` (what ``SweptRuns.problems`` held before it was a ``RunProblem``).
    """

    run_id: str
    error: str
    kind: str = "damaged"

    def __iter__(self) -> Iterator[str]:
        return iter((self.run_id, self.error))


class ProblemList(list[_T]):
    """Runs (a list; ``.runs`` too) plus ``problems``: the damaged runs the operation skipped.

    A slice is of the same class with the same ``problems``: slicing a listing keeps what it skipped.
    """

    def __init__(self, runs: Iterable[_T] = (), problems: Iterable[RunProblem] | None = None) -> None:
        super().__init__(runs)
        self.problems: list[RunProblem] = list(problems or ())

    @property
    def runs(self) -> list[_T]:
        """The runs as a plain list."""
        return list(self)

    @overload
    def __getitem__(self, index: SupportsIndex) -> _T: ...
    @overload
    def __getitem__(self, index: slice) -> Self: ...
    def __getitem__(self, index: SupportsIndex | slice) -> _T | Self:
        if isinstance(index, slice):
            return type(self)(super().__getitem__(index), self.problems)
        return super().__getitem__(index)


class SweptRuns(ProblemList[SweptRun]):
    """The runs a sweep failed (a list; ``.runs`` too), plus ``problems``: the damaged runs it skipped.

    A slice is a ``SweptRuns`` with the same ``problems``.
    """


class _Summary(Protocol):
    @property
    def run_id(self) -> str: ...

    @property
    def status(self) -> str: ...


def sweep_stale(
    storage: Storage,
    open_log: OpenLog,
    runs: Iterable[_Summary],
    *,
    older_than: float | _dt.timedelta = 0.0,
    run_ids: Iterable[str] | None = None,
    include_unleased: bool = False,
) -> list[SweptRun]:
    """Fail every active run among ``runs`` whose lease expired ``older_than`` ago; returns them.

    Runs without a lease are left alone unless ``include_unleased`` (then they
    are swept when their last event is older than ``older_than``).
    """
    grace = _validate.seconds(older_than, "older_than")
    wanted = None if run_ids is None else {str(RunId.parse(r)) for r in run_ids}
    candidates = [
        RunId.parse(s.run_id) for s in runs if s.status in ACTIVE_STATUSES and (wanted is None or s.run_id in wanted)
    ]
    bodies = storage.read_many(RunLayout(rid).lease for rid in candidates)
    now = _now(storage)
    swept = SweptRuns()
    for rid in candidates:
        raw = bodies.get(RunLayout(rid).lease)
        lease = parse_lease(raw) if raw is not None else None
        if lease is not None and lease.released:
            lease = None  # released or swept before: no live writer claims the run
        if lease is None and not include_unleased:
            continue
        if lease is not None and (lease.is_live(now) or lease.expired_for(now) < grace):
            continue
        try:
            result = sweep_run(storage, open_log(rid), older_than=grace, include_unleased=include_unleased)
        except _validate.DAMAGE as e:  # one damaged run must not stop the sweep of the others
            log.warning("sweep skipped damaged run %s: %s", rid, e)
            swept.problems.append(RunProblem(str(rid), _validate.problem_text(e)))
            continue
        if result is not None:
            swept.append(result)
    return swept


# -- status view -----------------------------------------------------------------------


@attrs.frozen(slots=True)
class StatusView:
    """One read of a run for a UI or a CLI: status, phases, approvals, lease and the latest events."""

    run_id: str
    status: RunStatus
    status_reason: str | None
    paused_from: str | None
    current_phase: str | None
    current_step: str | None
    started_at: str | None
    ended_at: str | None
    updated_at: str | None
    last_event_id: int
    phases: tuple[PhaseState, ...]
    approvals: tuple[ApprovalState, ...]
    events_tail: tuple[Event, ...]
    lease: Lease | None

    @property
    def pending_approvals(self) -> tuple[ApprovalState, ...]:
        """Approvals still waiting for a decision."""
        return tuple(a for a in self.approvals if a.status == "pending")

    @property
    def progress(self) -> str:
        """``"2 of 5 phases done"``: completed or skipped phases of the planned and started ones."""
        from faber_runlog._domain.plan import progress_text

        return progress_text(self.phases)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return to_dict(self)


def status_view(storage: Storage, elog: EventLog, *, tail: int = 20) -> StatusView:
    """The run's status, phases, approvals, lease and its last ``tail`` events."""
    tail = _validate.integer(tail, "tail", minimum=0, where=f"run {elog.run_id}")
    state = elog.fold_state()
    events = tuple(elog.read(max(0, state.last_event_id - tail), until=state.last_event_id)) if tail else ()
    return StatusView(
        run_id=state.run_id,
        status=state.status,
        status_reason=state.status_reason,
        paused_from=state.paused_from,
        current_phase=state.current_phase,
        current_step=state.current_step,
        started_at=state.started_at,
        ended_at=state.ended_at,
        updated_at=state.updated_at,
        last_event_id=state.last_event_id,
        phases=tuple(state.phases.values()),
        approvals=tuple(state.approvals.values()),
        events_tail=events,
        lease=read_lease(storage, RunId.parse(elog.run_id)),
    )
