"""Resume a stopped run at the failed step, re-run a finished one, compare parameters.

Resuming keeps the run id and appends ``workflow_resumed``; the caller then
asks the :class:`ResumePlan` which steps to skip. Re-running creates a child
run whose metadata and first event (``workflow_rerun``) link it to its parent
and carry the parameter diff. Both only read what they need: the snapshot plus
the events after it, the metadata and the lease.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs

from faber_runlog._base import codec as _codec
from faber_runlog._base.advice import advise
from faber_runlog._base.ids import RunId
from faber_runlog._base.retry import AGAIN, Again, optimistic
from faber_runlog._domain.events import Event
from faber_runlog._domain.state import TERMINAL_STATUSES, RunState, RunStatus, unchanged_since
from faber_runlog._domain.transitions import Moved as _Moved
from faber_runlog._format.layout import ARCHIVE_MARKER, RunLayout
from faber_runlog._log.eventlog import append_event
from faber_runlog._log.lease import default_owner, read_lease, try_acquire_lease
from faber_runlog._services.store import Run, RunStore
from faber_runlog._services.verify import ReconstructReport, VerifyReport, reconstruct_state, verify_run
from faber_runlog._storage.backends import Storage
from faber_runlog.errors import InvalidRerun, RunNotRerunnable, RunNotResumable

__all__ = ["ARCHIVE_MARKERS", "ParamDiff", "ResumePlan", "Resumer", "diff_params", "is_archived", "merge_params"]

ARCHIVE_MARKERS: Final = (ARCHIVE_MARKER,)
"""Files in a run's folder that mark it archived (written by the archiving code)."""

RERUN_MODES: Final = ("all", "from_failure", "from_event")
_RESUME_WAIT: Final = 3.0  # seconds a resumer waits for one that took the lease a moment before it


def is_archived(storage: Storage, run_id: RunId) -> bool:
    """Whether the run is archived (its archive marker file exists)."""
    folder = RunLayout(run_id).dir
    return any(storage.exists(f"{folder}/{name}") for name in ARCHIVE_MARKERS)


# -- parameters ------------------------------------------------------------------


def merge_params(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied: nested dicts merge, ``None`` removes a key."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_params(out[key], value)
        else:
            out[key] = value
    return out


@attrs.frozen(slots=True)
class ParamDiff:
    """Parameters added, removed and changed between two runs, keyed by dotted path."""

    added: dict[str, Any] = attrs.field(factory=dict)
    removed: dict[str, Any] = attrs.field(factory=dict)
    changed: dict[str, tuple[Any, Any]] = attrs.field(factory=dict)  # path -> (old, new)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: ``changed`` values become ``{"old": ..., "new": ...}``."""
        return {
            "added": dict(self.added),
            "removed": dict(self.removed),
            "changed": {k: {"old": old, "new": new} for k, (old, new) in self.changed.items()},
        }


def diff_params(old: Mapping[str, Any], new: Mapping[str, Any]) -> ParamDiff:
    """Compare two parameter mappings; nested dicts are walked, other values compared whole."""
    diff = ParamDiff()
    _diff_into(diff, old, new, "")
    return diff


def _diff_into(diff: ParamDiff, old: Mapping[str, Any], new: Mapping[str, Any], prefix: str) -> None:
    for key in old:
        path = prefix + key
        if key not in new:
            diff.removed[path] = old[key]
        elif isinstance(old[key], Mapping) and isinstance(new[key], Mapping):
            _diff_into(diff, old[key], new[key], path + ".")
        elif old[key] != new[key] or type(old[key]) is not type(new[key]):
            diff.changed[path] = (old[key], new[key])
    for key in new:
        if key not in old:
            diff.added[prefix + key] = new[key]


# -- plans -----------------------------------------------------------------------


def _progress(state: RunState) -> dict[str, dict[str, Any]]:
    """Phase and step statuses in workflow order: the part of a state a plan needs."""
    return {
        p.name: {"status": p.status, "steps": {s.name: s.status for s in p.steps.values()}}
        for p in state.phases.values()
    }


@attrs.frozen(slots=True)
class ResumePlan:
    """Whether a run can be resumed (and why not), where it resumes and what to skip."""

    run_id: str
    status: RunStatus
    last_event_id: int
    last_event_type: str | None
    reason: str | None  # why it is not resumable; None when it is
    resume_phase: str | None
    resume_step: str | None
    skip: tuple[tuple[str, str], ...]  # completed (phase, step) pairs, in workflow order
    completed_phases: tuple[str, ...]
    skipped_phases: tuple[str, ...]
    failed_phase: str | None = None
    failed_step: str | None = None
    error: str | None = None
    parent_run_id: str | None = None
    rerun_mode: str | None = None

    @property
    def resumable(self) -> bool:
        """Whether the run can be resumed now (no ``reason`` against it)."""
        return self.reason is None

    def should_run(self, phase: str, step: str | None = None) -> bool:
        """False for a completed or skipped phase and for a completed step; True otherwise."""
        if phase in self.skipped_phases or phase in self.completed_phases:
            return False
        return step is None or (phase, step) not in self.skip

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        fields: dict[str, Any] = _codec.loads(_codec.dumps(attrs.asdict(self)))  # tuples become lists
        out: dict[str, Any] = {}
        for key, value in fields.items():
            if key == "reason":  # ``resumable`` is derived, not stored: the JSON gives it next to the reason
                out["resumable"] = self.resumable
            out[key] = value
        return out

    def error_for_refusal(self) -> RunNotResumable:
        """The :class:`RunNotResumable` describing why this plan is not resumable."""
        last = f"event {self.last_event_id} ({self.last_event_type})" if self.last_event_type else "no events"
        refused = RunNotResumable(
            f"run {self.run_id} cannot be resumed: {self.reason} (status {self.status!r}, last {last})",
            run_id=self.run_id,
            status=self.status,
            last_event_id=self.last_event_id,
            last_event_type=self.last_event_type,
            reason=self.reason or "",
        )
        # What to do instead, by why: an ended run is re-run, a cancelled one may be resumed on purpose.
        ended = self.reason in ("it is archived", "it completed")
        codes = {"it was cancelled": ("allow_cancelled",), "it is waiting for an approval decision": ("decide",)}
        return advise(refused, *(("rerun",) if ended else codes.get(self.reason or "", ())))


def _build_plan(
    run: Run,
    state: RunState,
    last_event_type: str | None,
    refusal: str | None,
) -> ResumePlan:
    lineage = run.metadata.lineage
    view: dict[str, dict[str, Any]] = {}
    base = lineage.get("base")
    if isinstance(base, dict):
        # A re-run starts from its parent's progress; its own events override it step by step.
        for name, p in base.get("phases", {}).items():
            view[name] = {"status": p["status"], "steps": dict(p["steps"])}
    for name, p in _progress(state).items():
        merged = view.setdefault(name, {"status": p["status"], "steps": {}})
        if p["status"] != "pending":
            merged["status"] = p["status"]
        merged["steps"].update(p["steps"])
    skip: list[tuple[str, str]] = []
    completed: list[str] = []
    skipped: list[str] = []
    start: tuple[str, str | None] | None = None
    for name, p in view.items():
        if p["status"] == "skipped":
            skipped.append(name)
        elif p["status"] == "completed":
            completed.append(name)
            skip.extend((name, s) for s in p["steps"])
        else:
            for step, status in p["steps"].items():
                if status == "completed":
                    skip.append((name, step))
                elif start is None:
                    start = (name, step)
            if start is None:
                start = (name, None)
    failed = state.failed_step
    failed_phase = next((p.name for p in state.phases.values() if p.status == "failed"), None)
    error = state.errors[-1].message if state.errors and state.status == "failed" else None
    if failed is not None:
        failed_phase, error = failed.phase, failed.error
    return ResumePlan(
        run_id=run.id,
        status=state.status,
        last_event_id=state.last_event_id,
        last_event_type=last_event_type,
        reason=refusal,
        resume_phase=start[0] if start else None,
        resume_step=start[1] if start else None,
        skip=tuple(skip),
        completed_phases=tuple(completed),
        skipped_phases=tuple(skipped),
        failed_phase=failed_phase,
        failed_step=failed.name if failed else None,
        error=error,
        parent_run_id=run.metadata.parent_run_id,
        rerun_mode=lineage.get("mode"),
    )


class Resumer:
    """Resume, re-run, compare, reconstruct and verify runs of one store."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"Resumer({self.store!r})"

    # -- resume ------------------------------------------------------------------

    def _refusal(self, run: Run, state: RunState, *, allow_cancelled: bool, owner: str | None) -> str | None:
        status = state.status
        if is_archived(self.store.storage, run.run_id):
            return "it is archived"
        if status == "completed":
            return "it completed"
        if status == "cancelled" and not allow_cancelled:
            return "it was cancelled"
        if status == "awaiting_approval":
            return "it is waiting for an approval decision"
        lease = read_lease(self.store.storage, run.run_id)
        if lease is not None and lease.is_live(self.store.storage.clock.now()) and lease.owner != owner:
            where = f" on {lease.host} (pid {lease.pid})" if lease.host else ""
            return (
                f"it is owned by the live writer {lease.owner!r}{where} until {lease.expires_at}; "
                "wait for it to finish or for its lease to expire"
            )
        return None

    def _plan(
        self, run: Run, state: RunState, *, allow_cancelled: bool, owner: str | None
    ) -> tuple[ResumePlan, Event | None]:
        last = run.log.get(state.last_event_id) if state.last_event_id else None
        refusal = self._refusal(run, state, allow_cancelled=allow_cancelled, owner=owner)
        return _build_plan(run, state, last.type if last else None, refusal), last

    def plan(self, run_id: str | RunId, *, allow_cancelled: bool = False, owner: str | None = None) -> ResumePlan:
        """Where a resume of ``run_id`` would start, what it would skip, or why it cannot.

        ``owner`` names a lease holder that does not count as another live writer
        (pass your own lease owner when you hold the run's lease).
        """
        run = self.store.get_run(run_id)
        return self._plan(run, run.state(), allow_cancelled=allow_cancelled, owner=owner)[0]

    def resume_with_plan(
        self, run_id: str | RunId, *, allow_cancelled: bool = False, owner: str | None = None
    ) -> tuple[Run, ResumePlan, Event]:
        """Resume ``run_id``: returns the run, its plan and the ``workflow_resumed`` event.

        Resumers racing on the same stopped run append one event between them:
        its idempotency key names the last event before the resume, so the
        losers get the winner's event back (also when they only look after the
        winner wrote it, as long as nothing else was written since).
        """
        run = self.store.get_run(run_id)
        owner = owner or default_owner()  # this process's own lease is not "another live writer"

        def attempt() -> tuple[Run, ResumePlan, Event] | Again:
            state = run.state()
            plan, last = self._plan(run, state, allow_cancelled=allow_cancelled, owner=owner)
            replay = last is not None and last.type == "workflow_resumed" and last.idempotency_key
            if replay and last is not None and not plan.resumable and plan.status not in ("completed", "cancelled"):
                # Resumed a moment ago and nothing ran since: that resume is this one
                # (its resumer holds the lease now, so we hand its event back).
                return run, _build_plan(run, state, last.type, None), last
            if not plan.resumable:
                replayed = self._await_concurrent_resume(run, state, allow_cancelled=allow_cancelled)
                if replayed is not None:
                    return run, _build_plan(run, state, replayed.type, None), replayed
                raise plan.error_for_refusal()
            seen = state.last_event_id
            key = f"resume:{seen}"
            if last is not None and last.type == "workflow_resumed" and last.idempotency_key:
                # Resumed a moment ago and nothing ran since: that resume is this one.
                key = last.idempotency_key

            # Take the run's lease before resuming it (a compare-and-swap): a sweeper that
            # judged the old lease dead cannot fail the run again once it is ours.
            lease = try_acquire_lease(self.store.storage, run.run_id, ttl=self.store.lease_ttl, owner=owner)
            if lease is None:
                return AGAIN  # a live writer took it since the plan: plan again (and refuse)

            fields: dict[str, Any] = {
                "type": "workflow_resumed",
                "idempotency_key": key,
                "lease_epoch": lease.epoch,
                "metadata": {
                    "resume_phase": plan.resume_phase,
                    "resume_step": plan.resume_step,
                    "skip": [list(pair) for pair in plan.skip],
                    "previous_status": plan.status,
                },
            }
            try:
                given = {k: v for k, v in fields.items() if v is not None}
                event = append_event(run.log, given, check=unchanged_since(seen))
            except _Moved:
                return AGAIN
            return run, plan, event

        return optimistic(
            attempt,
            what=f"resuming run {run.id}: it kept changing",
            run_id=run.id,
            advice="another process is still writing to it, stop it first",
        )

    def _await_concurrent_resume(self, run: Run, state: RunState, *, allow_cancelled: bool) -> Event | None:
        """The event of a resumer that took the lease a moment ago and is appending now, if one is.

        A resumer takes the lease before it appends ``workflow_resumed``; one
        that lost that race finds a live lease taken after the run's last
        event and waits (briefly) for the winner's event, which it hands back
        as its own, as if both had appended the same idempotent event.
        """
        lease = read_lease(self.store.storage, run.run_id)
        if lease is None or not lease.is_live(self.store.storage.clock.now()) or state.updated_at is None:
            return None
        if lease.acquired_at < state.updated_at or self._refusal(
            run, state, allow_cancelled=allow_cancelled, owner=lease.owner
        ):
            return None  # a writer that was running already, or a refusal beyond the lease
        key = f"resume:{state.last_event_id}"
        clock = self.store.storage.clock
        deadline = clock.monotonic() + _RESUME_WAIT
        while clock.monotonic() < deadline:
            now = run.state()
            if key in now.idempotency_keys:
                return run.log.get(now.idempotency_keys[key])
            if now.last_event_id != state.last_event_id:
                return None
            clock.sleep(0.02)
        return None

    def resume(self, run_id: str | RunId, *, allow_cancelled: bool = False, owner: str | None = None) -> Run:
        """Resume ``run_id`` under the same id (appends ``workflow_resumed``) and return it.

        Raises :class:`RunNotResumable` when the run is completed, archived,
        cancelled (unless ``allow_cancelled``), awaiting approval, or owned by a
        live writer. Use :meth:`plan` or :meth:`resume_with_plan` to learn what to skip.
        """
        return self.resume_with_plan(run_id, allow_cancelled=allow_cancelled, owner=owner)[0]

    # -- re-run ------------------------------------------------------------------

    def rerun(
        self,
        run_id: str | RunId,
        params: Mapping[str, Any] | None = None,
        *,
        mode: str = "all",
        from_event: int | None = None,
        org: str | None = None,
        project: str | None = None,
        tags: Mapping[str, str | None] | None = None,
    ) -> Run:
        """Start a new run from a finished one, with ``params`` merged over the parent's.

        ``mode="all"`` starts fresh; ``"from_failure"`` skips the steps the parent
        completed; ``from_event=N`` starts from the parent's state after event N.
        In ``params`` (and ``tags``) nested dicts merge and ``None`` removes a key.
        The child's first event is ``workflow_rerun`` with the parameter diff.
        """
        parent = self.store.get_run(run_id)
        pid = parent.id
        if from_event is not None:
            if mode not in ("all", "from_event"):
                raise InvalidRerun(f"re-run of {pid}: from_event cannot be combined with mode={mode!r}", run_id=pid)
            mode = "from_event"
        elif mode not in RERUN_MODES:
            raise InvalidRerun(f"re-run of {pid}: unknown mode {mode!r}; use one of {RERUN_MODES}", run_id=pid)
        elif mode == "from_event":
            raise InvalidRerun(f"re-run of {pid}: mode='from_event' needs from_event=N", run_id=pid)
        state = parent.state()
        self._check_rerunnable(parent, state)
        base: dict[str, Any] | None = None
        if mode == "from_failure":
            base = {"run_id": pid, "event_id": state.last_event_id, "phases": _progress(state)}
        elif mode == "from_event":
            if (
                not isinstance(from_event, int)
                or isinstance(from_event, bool)
                or not (1 <= from_event <= state.last_event_id)
            ):
                raise InvalidRerun(
                    f"re-run of {pid}: from_event={from_event!r} is not an event of the run; "
                    f"use a number from 1 to {state.last_event_id}",
                    run_id=pid,
                )
            base = {"run_id": pid, "event_id": from_event, "phases": _progress(parent.state(at=from_event))}
        meta = parent.metadata
        new_params = merge_params(meta.params, params or {})
        new_tags = merge_params(meta.tags, tags or {})
        root = meta.root_run_id or pid
        lineage: dict[str, Any] = {"mode": mode, "from_event": from_event, "base": base}
        child = self.store.create_run(
            org or parent.run_id.org,
            project or parent.run_id.project,
            new_params,
            new_tags,
            parent_run_id=pid,
            root_run_id=root,
            lineage={k: v for k, v in lineage.items() if v is not None},
        )
        info: dict[str, Any] = {
            "parent_run_id": pid,
            "root_run_id": root,
            "mode": mode,
            "from_event": from_event,
            "diff": diff_params(meta.params, new_params).to_dict(),
            "base": base,
        }
        child.log.emit(
            "workflow_rerun", metadata={k: v for k, v in info.items() if v is not None}, idempotency_key="rerun"
        )
        return child

    def _check_rerunnable(self, parent: Run, state: RunState) -> None:
        """Refuse a re-run of a run that may still be going.

        A finished run (completed, failed, cancelled) is re-run; so is a ``failing`` one (a step failed
        and the run never ended, usually because its tool died) unless a live writer (another process) still holds its
        lease: users re-run failing runs, and the parent is left as it was.
        """
        if state.status in TERMINAL_STATUSES:
            return
        lease = read_lease(self.store.storage, parent.run_id)
        live = lease is not None and lease.is_live() and lease.owner != default_owner()
        if state.status == "failing" and not live:
            return
        why = "a live writer still holds its lease" if live else "it has not finished"
        raise RunNotRerunnable(
            f"run {parent.id} cannot be re-run: its status is {state.status!r} at event {state.last_event_id} "
            f"and {why}; a completed, failed, cancelled or failing run can be: wait for it to finish",
            run_id=parent.id,
            status=state.status,
            last_event_id=state.last_event_id,
        )

    # -- compare, rebuild, check ---------------------------------------------------

    def diff(self, run_a: str | RunId, run_b: str | RunId) -> ParamDiff:
        """How the parameters of ``run_b`` differ from those of ``run_a``."""
        return diff_params(self.store.get_run(run_a).metadata.params, self.store.get_run(run_b).metadata.params)

    def reconstruct(self, run_id: str | RunId, *, repair: bool = False) -> tuple[RunState, ReconstructReport]:
        """Fold the run from its events alone and compare with the stored snapshots."""
        return reconstruct_state(self.store, run_id, repair=repair)

    def verify(self, run_id: str | RunId) -> VerifyReport:
        """Check every stored event: gapless ids, names matching ids, valid against its schema."""
        return verify_run(self.store, run_id)
