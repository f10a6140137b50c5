"""The workflow plan: phases (and steps) a run intends to go through, from its metadata.

The plan lives in ``metadata.json`` (written once, at creation); the folded state
only knows what the events say. :func:`apply_plan` lays the plan over a state so
that phases and steps that never started show as ``pending``, in planned order,
and a resume plan can start at a phase that never began.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from faber_runlog._domain.state import PhaseState, RunState, StepState
from faber_runlog.errors import InvalidParams

__all__ = ["DONE_STATUSES", "apply_plan", "normalize_plan", "progress_text"]

DONE_STATUSES = frozenset({"completed", "skipped"})
"""Phase statuses that count as done in progress lines."""

_MAX_NAME = 128  # the event schema's limit for phase and step names
_MAX_PHASES = 1000  # a plan is read whole by every listing and resume: bounded before it is stored


def _invalid(message: str) -> InvalidParams:
    """A bad plan is bad input: the same error as bad params or tags."""
    return InvalidParams(message)


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME:
        raise _invalid(f"{what} must be a non-empty string of at most {_MAX_NAME} characters, got {value!r}")
    return value


def _unique(names: Iterable[str], what: str) -> list[str]:
    out: list[str] = []
    for n in names:
        if n in out:
            raise _invalid(f"{what} {n!r} is listed twice; each name appears once in a plan")
        out.append(n)
    return out


def normalize_plan(
    phases: Sequence[str | Mapping[str, Any]] | None, steps: Mapping[str, Sequence[str]] | None
) -> tuple[list[str], dict[str, list[str]]]:
    """Check a plan and return it as ``(phases, steps)``; bad input raises ``InvalidParams``.

    A phase may be a name or ``{"name": ..., "steps": [...]}``; ``steps`` maps a
    planned phase to its planned steps. Both ways may be mixed, not repeated.
    """
    if phases is not None and (isinstance(phases, (str, bytes)) or not isinstance(phases, Sequence)):
        raise _invalid(f"phases must be a list of phase names, got {type(phases).__name__} {phases!r}")
    if steps is not None and not isinstance(steps, Mapping):
        raise _invalid(f"steps must map a planned phase to its step names, got {type(steps).__name__} {steps!r}")
    if len(phases or ()) > _MAX_PHASES:
        raise _invalid(f"a plan holds at most {_MAX_PHASES} phases, got {len(phases or ())}")
    names: list[str] = []
    planned_steps: dict[str, list[str]] = {}
    for item in phases or ():
        if isinstance(item, Mapping):
            name = _name(item.get("name"), "a planned phase's name")
            own = item.get("steps")
            if own is not None:
                if isinstance(own, (str, bytes)) or not isinstance(own, Sequence):
                    raise _invalid(f"steps of planned phase {name!r} must be a list of names, got {own!r}")
                planned_steps[name] = _unique((_name(s, f"a step of phase {name!r}") for s in own), "step")
        else:
            name = _name(item, "a planned phase")
        names.append(name)
    names = _unique(names, "planned phase")
    for phase, own in (steps or {}).items():
        if phase not in names:
            raise _invalid(f"steps are given for phase {phase!r}, which is not in the planned phases {names}")
        if phase in planned_steps:
            raise _invalid(f"steps of phase {phase!r} are given twice (in phases and in steps)")
        if isinstance(own, (str, bytes)) or not isinstance(own, Sequence):
            raise _invalid(f"steps of planned phase {phase!r} must be a list of names, got {own!r}")
        planned_steps[phase] = _unique((_name(s, f"a step of phase {phase!r}") for s in own), "step")
    return names, planned_steps


def _merged_order(seen: Iterable[str], planned: Sequence[str]) -> list[str]:
    """Planned names in planned order, with names that ran unplanned placed where they first ran."""
    position = {n: i for i, n in enumerate(planned)}
    out: list[str] = []
    done = 0  # planned names before this index are placed
    for name in seen:
        if name in position:
            while done <= position[name]:
                if planned[done] not in out:
                    out.append(planned[done])
                done += 1
        elif name not in out:
            out.append(name)
    out.extend(n for n in planned[done:] if n not in out)
    return out


def apply_plan(state: RunState, phases: Sequence[str], steps: Mapping[str, Sequence[str]]) -> RunState:
    """Lay the plan over ``state`` in place: missing phases and steps appear as ``pending``, in order."""
    if not phases:
        return state
    old = state.phases
    merged: dict[str, PhaseState] = {}
    for name in _merged_order(old, phases):
        p = old.get(name)
        if p is None:
            p = PhaseState(name=name)
        planned_steps = steps.get(name)
        if planned_steps:
            ordered: dict[str, StepState] = {}
            for s in _merged_order(p.steps, planned_steps):
                ordered[s] = p.steps.get(s) or StepState(name=s, phase=name)
            p.steps = ordered
        merged[name] = p
    state.phases = merged
    return state


def progress_text(phases: Iterable[PhaseState]) -> str:
    """``"2 of 5 phases done"`` (completed or skipped phases of all known ones)."""
    items = list(phases)
    done = sum(1 for p in items if p.status in DONE_STATUSES)
    return f"{done} of {len(items)} phases done"
