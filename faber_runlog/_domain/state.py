"""Run state and the pure fold that rebuilds it from events.

``fold(state, event)`` returns a new :class:`RunState`; the store folds many
events into one private working copy (``apply``) so rebuilding a long run
costs one handler call per event, not one state copy per event. Each event
type has one small handler; types without one are counted and ignored.

The built-in handlers read the stored event mapping (what ``orjson.loads``
gives), so a rebuild folds decoded files directly (:func:`apply_mapping`)
without building an :class:`~faber_runlog.Event` per event; handlers added
with :func:`register_fold` still receive an ``Event``.

The state stays bounded when the workflow is bounded: lists that would grow
with every event of a kind (errors, artifacts, commits, ...) keep the latest
:data:`LATEST_KEPT` records, and ``totals`` counts all of them; the full
history is a query over the events (``run.log.read(types=...)``).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import attrs

from faber_runlog._base import codec as _codec
from faber_runlog._base.codec import ms_between
from faber_runlog._base.converter import converter, to_dict
from faber_runlog._domain.events import Event, _event_from_dict, _event_to_dict, given_duration
from faber_runlog._domain.transitions import (
    ACTIVE_STATUSES,
    BACK,
    DECIDED,
    RUN_STATUSES,
    SAME,
    SEAL_TYPE,
    TERMINAL_STATUSES,
    TRANSITIONS,
    Moved,
    RunStatus,
)
from faber_runlog.errors import InvalidArgument

__all__ = [
    "ACTIVE_STATUSES",
    "LATEST_KEPT",
    "RUN_STATUSES",
    "TERMINAL_STATUSES",
    "ApprovalState",
    "ArtifactRecord",
    "ErrorRecord",
    "PhaseState",
    "PullRequest",
    "RunDigest",
    "RunState",
    "RunStatus",
    "StepState",
    "apply",
    "apply_mapping",
    "apply_mappings",
    "fold",
    "fold_all",
    "register_fold",
    "set_html_view",
    "unchanged_since",
]

LATEST_KEPT: Final = 20
"""Records kept per growing list of the state (errors, artifacts, ...); ``RunState.totals`` counts them all.

Twenty covers what a status page or a resume decision looks at (the last
failure, the latest artifacts) while keeping ``state.json`` a few tens of KB
for a bounded workflow however long it runs.
"""
BOUNDED_LISTS: Final = ("errors", "artifacts", "commits", "branches", "decisions", "tests", "specs", "checkpoints")


@attrs.define(slots=True)
class StepState:
    """One step of a phase: status, attempts and timing."""

    name: str
    phase: str
    status: str = "pending"
    attempts: int = 0
    started_at: str | None = None
    ended_at: str | None = None
    duration_ms: float | None = None
    error: str | None = None
    first_event_id: int = 0
    last_event_id: int = 0


@attrs.define(slots=True)
class PhaseState:
    """One phase: status, attempts, timing and its steps in the order they first ran."""

    name: str
    status: str = "pending"
    attempts: int = 0
    started_at: str | None = None
    ended_at: str | None = None
    duration_ms: float | None = None
    error: str | None = None
    steps: dict[str, StepState] = attrs.field(factory=dict)
    first_event_id: int = 0
    last_event_id: int = 0


@attrs.frozen(slots=True)
class ErrorRecord:
    """An error reported by an event, with where it happened."""

    event_id: int
    type: str
    timestamp: str
    message: str
    phase: str | None = None
    step: str | None = None


@attrs.frozen(slots=True)
class ArtifactRecord:
    """An artifact created or modified during the run."""

    event_id: int
    path: str
    action: str
    phase: str | None = None
    step: str | None = None
    kind: str | None = None


@attrs.define(slots=True)
class PullRequest:
    """A pull request opened (and maybe merged) by the run."""

    number: int
    event_id: int
    url: str | None = None
    title: str | None = None
    branch: str | None = None
    status: str = "open"
    merge_sha: str | None = None


@attrs.define(slots=True)
class ApprovalState:
    """One approval gate: who asked, for which phase, and the decision once made."""

    approval_id: str
    gate: str
    phase: str | None = None
    status: str = "pending"  # pending, approved, rejected, changes_requested, aborted, closed
    payload: dict[str, Any] = attrs.field(factory=dict)
    requested_at: str | None = None
    requested_event_id: int = 0
    action: str | None = None
    client_token: str | None = None
    comment: str | None = None
    decided_by: str | None = None
    resolved_at: str | None = None
    resolved_event_id: int | None = None


_HTML_VIEW: list[Callable[[RunState], str] | None] = [None]
"""The renderer of :meth:`RunState._repr_html_`, handed down by the HTML views (``_html``) when they load."""


def set_html_view(view: Callable[[RunState], str]) -> None:
    """Render :meth:`RunState._repr_html_` with ``view`` (the HTML views call this when they load)."""
    _HTML_VIEW[0] = view


@attrs.define(slots=True)
class RunState:
    """Everything known about a run after folding its events up to ``last_event_id``."""

    run_id: str
    status: RunStatus = "created"
    current_phase: str | None = None
    current_step: str | None = None
    phases: dict[str, PhaseState] = attrs.field(factory=dict)
    errors: list[ErrorRecord] = attrs.field(factory=list)
    artifacts: list[ArtifactRecord] = attrs.field(factory=list)
    commits: list[dict[str, Any]] = attrs.field(factory=list)
    branches: list[dict[str, Any]] = attrs.field(factory=list)
    pull_requests: dict[str, PullRequest] = attrs.field(factory=dict)
    decisions: list[dict[str, Any]] = attrs.field(factory=list)
    tests: list[dict[str, Any]] = attrs.field(factory=list)
    specs: list[dict[str, Any]] = attrs.field(factory=list)
    checkpoints: list[dict[str, Any]] = attrs.field(factory=list)
    invocations: dict[str, int] = attrs.field(factory=dict)
    retry_loops: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    started_at: str | None = None
    ended_at: str | None = None
    updated_at: str | None = None
    last_event_id: int = 0
    event_counts: dict[str, int] = attrs.field(factory=dict)
    unknown_events: int = 0
    resume_count: int = 0
    rerun: dict[str, Any] | None = None
    idempotency_keys: dict[str, int] = attrs.field(factory=dict)
    paused_from: str | None = None
    status_reason: str | None = None
    approvals: dict[str, ApprovalState] = attrs.field(factory=dict)
    sealed_at: int | None = None
    fence_epoch: int = 0
    """The highest lease epoch any event so far carries: a writer of a lower epoch is fenced out (lease rule 8)."""
    # How many records each bounded list has seen in all (the lists keep the latest LATEST_KEPT).
    totals: dict[str, int] = attrs.field(factory=dict)

    @property
    def is_terminal(self) -> bool:
        """True once the run has ended: completed, failed or cancelled."""
        return self.status in TERMINAL_STATUSES

    @property
    def is_sealed(self) -> bool:
        """True once consolidation sealed the log (event ``sealed_at``): nothing can be appended."""
        return self.sealed_at is not None

    @property
    def is_resumable(self) -> bool:
        """True when a step or phase failed (``failing``) or the run failed: resume or retry can go on."""
        return self.status in ("failing", "failed") and self.sealed_at is None

    def step(self, phase: str, step: str) -> StepState | None:
        """The state of ``phase``/``step``, or None if it never appeared."""
        p = self.phases.get(phase)
        return None if p is None else p.steps.get(step)

    @property
    def failed_step(self) -> StepState | None:
        """The most recently failed step that has not since succeeded, if any."""
        found: StepState | None = None
        for p in self.phases.values():
            for s in p.steps.values():
                if s.status == "failed" and (found is None or s.last_event_id > found.last_event_id):
                    found = s
        return found

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the ``state.json`` body)."""
        return to_dict(self)

    def _repr_html_(self) -> str | None:
        # The HTML views sit layers above this one and hand their renderer down (set_html_view) when
        # they load, as every store does; before that Jupyter shows the plain repr (None: no HTML).
        view = _HTML_VIEW[0]
        return None if view is None else view(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        """Rebuild from :meth:`to_dict` output."""
        return converter.structure(data, cls)

    def copy(self) -> RunState:
        """A deep copy that shares nothing mutable with this state.

        Hand-written for the large parts (phases and steps: a state can hold
        thousands): ``copy.deepcopy`` costs ~10x more. Anything else is deep-copied.
        """
        new = RunState(*_RUN_GET(self))
        new.phases = {k: _copy_phase(p) for k, p in self.phases.items()}
        for name in _RUN_DEEP:
            setattr(new, name, copy.deepcopy(getattr(self, name)))
        for name in _RUN_FLAT:
            setattr(new, name, dict(getattr(self, name)))
        for name in BOUNDED_LISTS:
            records = getattr(self, name)
            setattr(new, name, list(records) if name in ("errors", "artifacts") else copy.deepcopy(records))
        return new


_STEP_GET: Final = operator.attrgetter(*(a.name for a in attrs.fields(StepState)))
_PHASE_GET: Final = operator.attrgetter(*(a.name for a in attrs.fields(PhaseState)))
_RUN_GET: Final = operator.attrgetter(*(a.name for a in attrs.fields(RunState)))
_RUN_FLAT: Final = ("invocations", "event_counts", "idempotency_keys", "totals")  # str -> int: a flat copy is deep
_RUN_DEEP: Final = tuple(
    a.name
    for a in attrs.fields(RunState)
    if a.name not in ("phases", *_RUN_FLAT)
    and a.name not in ("errors", "artifacts", "commits", "branches", "decisions", "tests", "specs", "checkpoints")
    and str(a.type) not in ("str", "str | None", "int", "int | None")
)


def _copy_phase(p: PhaseState) -> PhaseState:
    new = PhaseState(*_PHASE_GET(p))
    new.steps = {k: StepState(*_STEP_GET(s)) for k, s in p.steps.items()}
    return new


@attrs.frozen(slots=True)
class RunDigest:
    """What listings show of a run (the body of ``summary.json``): a few hundred bytes, whatever the run's size.

    ``last_event`` is the fingerprint of event ``last_event_id`` (None when
    built from a fold, where it is not needed). ``listing`` holds what a
    listing shows of the run's metadata (``created_at``, ``params``, ``tags``,
    ``parent_run_id``), copied by writers that know it so that a listing need
    not read ``metadata.json`` as well; None when unknown or too large.
    """

    run_id: str
    status: RunStatus
    last_event_id: int
    last_event: str | None = None
    status_reason: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    updated_at: str | None = None
    current_phase: str | None = None
    current_step: str | None = None
    failed_phase: str | None = None
    failed_step: str | None = None
    error: str | None = None
    resume_count: int = 0
    sealed_at: int | None = None
    totals: dict[str, int] = attrs.field(factory=dict)
    listing: dict[str, Any] | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the run has ended: completed, failed or cancelled."""
        return self.status in TERMINAL_STATUSES

    @classmethod
    def of(cls, state: RunState, last_event: str | None, listing: dict[str, Any] | None = None) -> RunDigest:
        """The digest of ``state``, whose last event has fingerprint ``last_event`` (``listing``: see the class)."""
        failed = state.failed_step
        error = failed.error if failed is not None else (state.errors[-1].message if state.errors else None)
        if state.status not in ("failing", "failed"):
            # The run's error is the error it is in now: a run that was resumed and then went on or
            # completed has none (its history keeps every error: ``RunState.errors``, events_frame).
            failed, error = None, None
        if error is not None and len(error) > _DIGEST_ERROR_CHARS:
            error = error[: _DIGEST_ERROR_CHARS - 1] + "\u2026"  # a listing shows a line; the state has it all
        return cls(
            **{name: getattr(state, name) for name in _DIGEST_COPIED},
            last_event=last_event,
            failed_phase=failed.phase if failed is not None else None,
            failed_step=failed.name if failed is not None else None,
            error=error,
            totals=dict(state.totals),  # a copy: the state goes on changing, the digest is frozen
            listing=listing,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the ``summary.json`` body)."""
        return converter.unstructure(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunDigest:
        """Rebuild from :meth:`to_dict` output."""
        digest: RunDigest = converter.structure(data, cls)
        return digest


_DIGEST_ERROR_CHARS: Final = 500
_DIGEST_COPIED: Final = tuple(
    a.name for a in attrs.fields(RunDigest) if a.name in attrs.fields_dict(RunState) and a.name not in ("totals",)
)
"""The digest's fields that mean the same as the state's field of that name, so are copied as they are."""

Handler = Callable[[RunState, Event], None]
Ev = Mapping[str, Any]
"""A stored event as decoded from its file (after upcasting): what the built-in handlers read."""
RawHandler = Callable[[RunState, Ev], None]
"""A fold on the stored mapping: the built-ins, and registered handlers wrapped so that they receive an ``Event``."""
_HANDLERS: dict[str, RawHandler] = {}


def register_fold(event_type: str, handler: Handler, *, replace: bool = False) -> None:
    """Fold events of ``event_type`` with ``handler(state, event)``, which mutates ``state`` (default registry).

    Handlers must be deterministic and depend only on the state and the event,
    so that every reader rebuilds the same state.
    """
    add_fold(_HANDLERS, event_type, handler, replace=replace)


def add_fold(table: dict[str, RawHandler], event_type: str, handler: Handler, *, replace: bool = False) -> None:
    """:func:`register_fold` into ``table`` (a registry's): ``handler`` is wrapped to receive an ``Event``."""
    if event_type in table and not replace:
        raise InvalidArgument(f"a fold handler for {event_type!r} is already registered; pass replace=True")

    def on_mapping(state: RunState, e: Ev) -> None:
        handler(state, _event_from_dict(e))  # user handlers get the public, immutable Event

    table[event_type] = on_mapping
    _GENERATION[0] += 1  # states folded before this are stale: logs refold on their next read


_GENERATION: list[int] = [0]


def fold_generation() -> int:
    """A counter bumped by every :func:`register_fold`: a cached state folded under an older one is stale."""
    return _GENERATION[0]


_BUILTIN_FOLDS: Final[set[RawHandler]] = set()


def is_builtin_fold(handler: RawHandler) -> bool:
    """Whether ``handler`` is one of the library's own folds, which change a run's status only as the
    transition table says (protocol rule 21); a registered fold may change anything."""
    return handler in _BUILTIN_FOLDS


def _handles(*types: str) -> Callable[[RawHandler], RawHandler]:
    def deco(fn: RawHandler) -> RawHandler:
        for t in types:
            _HANDLERS[t] = fn
        _BUILTIN_FOLDS.add(fn)
        return fn

    return deco


def apply(state: RunState, event: Event, handlers: Mapping[str, RawHandler] = _HANDLERS) -> None:
    """Fold ``event`` into ``state`` in place with ``handlers`` (a registry's folds; the fast path of :func:`fold`)."""
    apply_mapping(state, _event_to_dict(event), handlers)


def apply_mapping(state: RunState, e: Ev, handlers: Mapping[str, RawHandler] = _HANDLERS) -> None:
    """Fold one stored event mapping (a decoded, upcast event file) into ``state`` in place.

    The same fold as :func:`apply` without building an ``Event``: rebuilds run
    at the speed of the JSON parser. ``e`` must hold ``event_id``, ``type`` and
    ``timestamp`` (every stored event does). ``handlers`` are a registry's folds.
    """
    apply_mappings(state, (e,), handlers)


def apply_mappings(state: RunState, events: Iterable[Ev], handlers: Mapping[str, RawHandler] = _HANDLERS) -> None:
    """:func:`apply_mapping` for each of ``events`` in order: one loop, so a rebuild pays no call per event."""
    counts = state.event_counts
    keys = state.idempotency_keys
    rows = TRANSITIONS
    handler_for = handlers.get
    for e in events:
        etype = e["type"]
        eid = state.last_event_id = e["event_id"]
        state.updated_at = e["timestamp"]
        counts[etype] = counts.get(etype, 0) + 1
        key = e.get("idempotency_key")
        if key is not None:
            keys.setdefault(key, eid)
        epoch = e.get("lease_epoch")
        if epoch is not None and epoch > state.fence_epoch:
            state.fence_epoch = epoch
        row = rows.get(etype)
        before = state.status
        target = SAME if row is None else row.moves.get(before, row.fallback)  # row.target(), inlined
        if target == BACK:
            target = state.paused_from or "running"
        handler = handler_for(etype)
        if handler is None:
            state.unknown_events += 1
        else:
            handler(state, e)
        if target != SAME and target != DECIDED:
            state.status = target  # type: ignore[assignment]  # the transition table holds only statuses
            if before in TERMINAL_STATUSES and target not in TERMINAL_STATUSES:
                # An ended run that runs again has no end time (yet).
                state.ended_at = None
                state.status_reason = None


def fold(state: RunState, event: Event) -> RunState:
    """Return the state after ``event``; ``state`` itself is left unchanged."""
    new = state.copy()
    apply(new, event)
    return new


def fold_all(state: RunState, events: Iterable[Event]) -> RunState:
    """Return the state after all ``events`` (one copy, then in-place folding)."""
    new = state.copy()
    for event in events:
        apply(new, event)
    return new


# -- helpers ---------------------------------------------------------------

_NO_METADATA: Final[Mapping[str, Any]] = {}


def _meta(e: Ev) -> Mapping[str, Any]:
    return e.get("metadata") or _NO_METADATA


def _error_message(e: Ev) -> str | None:
    # Event.error_message, on the mapping.
    err: Any = e.get("error")
    if err is None:
        err = _meta(e).get("error")
    if err is None:
        return None
    if isinstance(err, dict):
        return str(err.get("message", _codec.dumps(err).decode()))
    return str(err)


def _keep(state: RunState, name: str, record: Any) -> None:
    """Append ``record`` to the bounded list ``name``, dropping the oldest beyond LATEST_KEPT, and count it."""
    records: list[Any] = getattr(state, name)
    records.append(record)
    if len(records) > LATEST_KEPT:
        del records[: len(records) - LATEST_KEPT]
    totals = state.totals
    totals[name] = totals.get(name, 0) + 1


def _phase(state: RunState, e: Ev) -> PhaseState | None:
    name = e.get("phase")
    if name is None:
        return None
    p = state.phases.get(name)
    if p is None:
        p = state.phases[name] = PhaseState(name=name, first_event_id=e["event_id"])
    p.last_event_id = e["event_id"]
    return p


def _step(state: RunState, e: Ev) -> StepState | None:
    # _phase(), inlined: a step event is most of a log, and this runs for each one.
    phase = e.get("phase")
    name = e.get("step")
    if phase is None:
        return None
    eid = e["event_id"]
    p = state.phases.get(phase)
    if p is None:
        p = state.phases[phase] = PhaseState(name=phase, first_event_id=eid)
    p.last_event_id = eid
    if name is None:
        return None
    s = p.steps.get(name)
    if s is None:
        s = p.steps[name] = StepState(name=name, phase=p.name, first_event_id=eid)
    s.last_event_id = eid
    return s


def _record_error(state: RunState, e: Ev) -> str:
    message = _error_message(e) or e.get("message") or e["type"]
    _keep(
        state, "errors", ErrorRecord(e["event_id"], e["type"], e["timestamp"], message, e.get("phase"), e.get("step"))
    )
    return message


def _finish(obj: PhaseState | StepState, e: Ev, status: str) -> None:
    obj.status = status
    obj.ended_at = e["timestamp"]
    given = given_duration(e)  # the producer's value where given, as in the frames and reports
    obj.duration_ms = given if given is not None else ms_between(obj.started_at, e["timestamp"])


def _close_pending(state: RunState, e: Ev, status: str = "closed") -> None:
    # A run that ends leaves no gate open: its pending approvals are closed with it.
    for a in state.approvals.values():
        if a.status == "pending":
            a.status = status
            a.resolved_at = e["timestamp"]
            a.resolved_event_id = e["event_id"]


def _stop_active_work(state: RunState, e: Ev, status: str, error: str | None) -> None:
    # Phases and steps still running (or waiting at a gate) end with the run.
    for p in state.phases.values():
        for s in p.steps.values():
            if s.status in ("running", "retrying"):
                _finish(s, e, status)
                s.error = error
                s.last_event_id = e["event_id"]
        if p.status in ("running", "awaiting_approval"):
            _finish(p, e, status)
            p.error = error
            p.last_event_id = e["event_id"]


def _end_run(state: RunState, e: Ev, status: RunStatus) -> None:
    state.status = status
    state.ended_at = e["timestamp"]
    state.paused_from = None
    reason = _meta(e).get("reason")
    state.status_reason = reason if isinstance(reason, str) else None


# -- workflow --------------------------------------------------------------


@_handles("workflow_start")
def _workflow_start(state: RunState, e: Ev) -> None:
    if state.started_at is None:
        state.started_at = e["timestamp"]
    state.ended_at = None


def closes_at_end(phase: PhaseState) -> bool:
    """Whether ``workflow_complete`` closes ``phase``: it runs, or its steps ran without a ``phase_start``, all done."""
    done = all(s.status not in ("running", "retrying", "awaiting_approval", "pending") for s in phase.steps.values())
    return done and (phase.status == "running" or (phase.status == "pending" and bool(phase.steps)))


@_handles("workflow_complete")
def _workflow_complete(state: RunState, e: Ev) -> None:
    _end_run(state, e, "completed")
    state.current_phase = state.current_step = None
    for p in state.phases.values():  # the run's end closes a phase whose steps are done
        if closes_at_end(p):
            _finish(p, e, "completed")
            p.last_event_id = e["event_id"]
    _close_pending(state, e)


@_handles("workflow_error")
def _workflow_error(state: RunState, e: Ev) -> None:
    _end_run(state, e, "failed")
    message = _record_error(state, e)
    _stop_active_work(state, e, "failed", message)
    _close_pending(state, e)


@_handles("workflow_cancelled")
def _workflow_cancelled(state: RunState, e: Ev) -> None:
    _end_run(state, e, "cancelled")
    _stop_active_work(state, e, "cancelled", None)
    _close_pending(state, e, "aborted")


@_handles("workflow_resumed")
def _workflow_resumed(state: RunState, _e: Ev) -> None:
    # The status comes from the transition table (a paused run goes back where it was).
    state.paused_from = None
    state.status_reason = None
    state.ended_at = None
    state.resume_count += 1


@_handles("workflow_paused")
def _workflow_paused(state: RunState, _e: Ev) -> None:
    if state.status != "paused":
        state.paused_from = state.status


# -- approvals ---------------------------------------------------------------

_DECIDED: Final = {
    "approve": "approved", "reject": "rejected", "request_changes": "changes_requested", "abort": "aborted",
}  # fmt: skip  # a table: one row per line


@_handles("approval_requested")
def _approval_requested(state: RunState, e: Ev) -> None:
    m = _meta(e)
    approval_id = str(m["approval_id"])
    payload = m.get("payload")
    state.approvals[approval_id] = ApprovalState(
        approval_id=approval_id,
        gate=str(m["gate"]),
        phase=e.get("phase"),
        payload=dict(payload) if isinstance(payload, dict) else {},
        requested_at=e["timestamp"],
        requested_event_id=e["event_id"],
        decided_by=None,
    )
    p = _phase(state, e)
    if p is not None:
        p.status = "awaiting_approval"
    if state.status == "paused":
        state.paused_from = "awaiting_approval"


@_handles("approval_resolved")
def _approval_resolved(state: RunState, e: Ev) -> None:
    m = _meta(e)
    approval_id = str(m["approval_id"])
    action = str(m["action"])
    a = state.approvals.get(approval_id)
    if a is None:  # a decision on a gate this log never opened: keep it anyway
        a = state.approvals[approval_id] = ApprovalState(approval_id=approval_id, gate="", phase=e.get("phase"))
    a.status = _DECIDED.get(action, action)
    a.action = action
    a.client_token = m.get("client_token")
    a.comment = m.get("comment")
    a.decided_by = e.get("user")
    a.resolved_at = e["timestamp"]
    a.resolved_event_id = e["event_id"]
    p = state.phases.get(a.phase) if a.phase is not None else None
    if p is not None:
        p.last_event_id = e["event_id"]
    if action in ("approve", "request_changes"):
        if p is not None and action == "approve":
            _finish(p, e, "completed")
            if state.current_phase == p.name:
                state.current_phase = state.current_step = None
        elif p is not None:
            # Changes requested: the phase runs again from the start.
            p.status = "pending"
            p.started_at = p.ended_at = p.duration_ms = p.error = None
            state.current_phase, state.current_step = p.name, None
        if any(x.status == "pending" for x in state.approvals.values()):
            return  # other gates still wait
        if state.status == "awaiting_approval":
            state.status = "running"
        elif state.status == "paused" and state.paused_from == "awaiting_approval":
            state.paused_from = "running"
        return
    comment = a.comment or ""
    message = f"approval {approval_id} ({a.gate}) {'rejected' if action == 'reject' else 'aborted'}"
    message += f": {comment}" if comment else ""
    if p is not None and p.status not in ("completed", "skipped"):
        _finish(p, e, "failed" if action == "reject" else "cancelled")
        p.error = message
    if action == "reject":
        _keep(state, "errors", ErrorRecord(e["event_id"], e["type"], e["timestamp"], message, a.phase, None))
    _end_run(state, e, "failed" if action == "reject" else "cancelled")
    state.status_reason = f"approval_{action}"
    _stop_active_work(state, e, "cancelled", None)
    _close_pending(state, e, "aborted")


@_handles("workflow_rerun")
def _workflow_rerun(state: RunState, e: Ev) -> None:
    state.rerun = dict(_meta(e))


# -- phases and steps --------------------------------------------------------


@_handles("phase_start")
def _phase_start(state: RunState, e: Ev) -> None:
    p = _phase(state, e)
    assert p is not None  # schema requires phase
    p.status = "running"
    p.attempts += 1
    p.started_at = e["timestamp"]
    p.ended_at = p.duration_ms = p.error = None
    state.current_phase = p.name
    state.current_step = None


@_handles("phase_skip")
def _phase_skip(state: RunState, e: Ev) -> None:
    p = _phase(state, e)
    assert p is not None
    p.status = "skipped"
    p.ended_at = e["timestamp"]


@_handles("phase_complete")
def _phase_complete(state: RunState, e: Ev) -> None:
    p = _phase(state, e)
    assert p is not None
    _finish(p, e, "completed")
    if state.current_phase == p.name:
        state.current_phase = state.current_step = None


@_handles("phase_error")
def _phase_error(state: RunState, e: Ev) -> None:
    p = _phase(state, e)
    assert p is not None
    _finish(p, e, "failed")
    p.error = _record_error(state, e)


@_handles("step_start")
def _step_start(state: RunState, e: Ev) -> None:
    s = _step(state, e)
    assert s is not None
    p = state.phases[s.phase]
    if p.status in ("pending", "failed"):
        p.status = "running"
        if p.attempts == 0:
            p.attempts = 1
            p.started_at = e["timestamp"]
    s.status = "running"
    s.attempts += 1
    s.started_at = e["timestamp"]
    s.ended_at = s.duration_ms = s.error = None
    state.current_phase = s.phase
    state.current_step = s.name


@_handles("step_complete")
def _step_complete(state: RunState, e: Ev) -> None:
    s = _step(state, e)
    assert s is not None
    _finish(s, e, "completed")
    if state.current_step == s.name:
        state.current_step = None


@_handles("step_error")
def _step_error(state: RunState, e: Ev) -> None:
    s = _step(state, e)
    assert s is not None
    _finish(s, e, "failed")
    s.error = _record_error(state, e)
    p = state.phases[s.phase]
    p.status = "failed"
    p.error = s.error


@_handles("step_skip")
def _step_skip(state: RunState, e: Ev) -> None:
    s = _step(state, e)
    assert s is not None
    s.status = "skipped"
    s.ended_at = e["timestamp"]
    s.error = None
    if state.current_step == s.name and state.current_phase == s.phase:
        state.current_step = None


@_handles("step_retry")
def _step_retry(state: RunState, e: Ev) -> None:
    s = _step(state, e)
    assert s is not None
    s.status = "retrying"
    p = state.phases[s.phase]
    if p.status == "failed":
        p.status = "running"


# -- artifacts, git, the rest ---------------------------------------------------


@_handles("artifact_create", "artifact_modify")
def _artifact(state: RunState, e: Ev) -> None:
    action = "create" if e["type"] == "artifact_create" else "modify"
    path = _meta(e).get("path")
    if isinstance(path, str):
        _keep(
            state,
            "artifacts",
            ArtifactRecord(e["event_id"], path, action, e.get("phase"), e.get("step"), _meta(e).get("kind")),
        )
    for item in e.get("artifacts") or ():
        p = item if isinstance(item, str) else item.get("path")
        if isinstance(p, str) and p != path:
            _keep(state, "artifacts", ArtifactRecord(e["event_id"], p, action, e.get("phase"), e.get("step")))


@_handles("commit_create")
def _commit(state: RunState, e: Ev) -> None:
    _keep(state, "commits", {"event_id": e["event_id"], **_meta(e)})


@_handles("branch_create")
def _branch(state: RunState, e: Ev) -> None:
    _keep(state, "branches", {"event_id": e["event_id"], **_meta(e)})


@_handles("pr_create")
def _pr_create(state: RunState, e: Ev) -> None:
    m = _meta(e)
    number = int(m["number"])
    state.pull_requests[str(number)] = PullRequest(number, e["event_id"], m.get("url"), m.get("title"), m.get("branch"))


@_handles("pr_merge")
def _pr_merge(state: RunState, e: Ev) -> None:
    number = int(_meta(e)["number"])
    pr = state.pull_requests.get(str(number))
    if pr is None:
        pr = state.pull_requests[str(number)] = PullRequest(number, e["event_id"])
    pr.status = "merged"
    pr.merge_sha = _meta(e).get("sha")


@_handles("decision_point")
def _decision(state: RunState, e: Ev) -> None:
    _keep(state, "decisions", {"event_id": e["event_id"], "phase": e.get("phase"), "step": e.get("step"), **_meta(e)})


@_handles("test_run")
def _test_run(state: RunState, e: Ev) -> None:
    _keep(state, "tests", {"event_id": e["event_id"], "phase": e.get("phase"), "step": e.get("step"), **_meta(e)})


@_handles("spec_generate", "spec_validate", "docs_update")
def _spec(state: RunState, e: Ev) -> None:
    _keep(state, "specs", {"event_id": e["event_id"], "type": e["type"], **_meta(e)})


@_handles("checkpoint")
def _checkpoint(state: RunState, e: Ev) -> None:
    _keep(
        state,
        "checkpoints",
        {"event_id": e["event_id"], "label": _meta(e).get("label"), "phase": e.get("phase"), "step": e.get("step")},
    )


@_handles("skill_invoke", "agent_invoke")
def _invoke(state: RunState, e: Ev) -> None:
    key = (
        ("skill:" + str(_meta(e).get("skill")))
        if e["type"] == "skill_invoke"
        else ("agent:" + str(_meta(e).get("agent")))
    )
    state.invocations[key] = state.invocations.get(key, 0) + 1


@_handles("retry_loop_enter")
def _loop_enter(state: RunState, e: Ev) -> None:
    loop = str(_meta(e).get("loop"))
    state.retry_loops[loop] = {"active": True, "entered_event_id": e["event_id"], **_meta(e)}


@_handles("retry_loop_exit")
def _loop_exit(state: RunState, e: Ev) -> None:
    loop = str(_meta(e).get("loop"))
    entry = state.retry_loops.setdefault(loop, {"loop": loop})
    entry.update(_meta(e))
    entry["active"] = False
    entry["exited_event_id"] = e["event_id"]


@_handles(SEAL_TYPE)
def _sealed(state: RunState, e: Ev) -> None:
    state.sealed_at = e["event_id"]


def default_folds() -> dict[str, RawHandler]:
    """The process-wide fold handlers (the default registry's; ``register_fold`` fills them)."""
    return _HANDLERS


def unchanged_since(last_event_id: int) -> Callable[[RunState], None]:
    """An append ``check`` that raises :class:`Moved` unless the run is still at ``last_event_id``."""

    def check(now: RunState) -> None:
        if now.last_event_id != last_event_id:
            raise Moved

    return check
