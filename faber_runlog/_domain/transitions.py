"""The one transition table: event type -> allowed from-statuses -> resulting run status.

It drives three things, so they cannot drift apart: the fold (``state.apply``
sets the status a row names), the check every append of a listed type passes
(``EventLog.append`` refuses a type whose row does not allow the run's current
status, before anything is written) and the table in docs/lifecycle.md
(:func:`markdown`). Types without a row never change the run's status and are
appended without a status check (one request, even for a writer that is behind).

Statuses:

* ``created``, ``running``, ``paused``, ``awaiting_approval``: active.
* ``failing``: a step or phase failed and the run has not ended: it can be
  retried, resumed, or failed for good. Still active (it holds its claims).
* ``completed``, ``failed``, ``cancelled``: ended (terminal). Only an explicit
  resume (``workflow_resumed``) brings a ``failed`` run back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, TypeGuard

import attrs

__all__ = [
    "ACTIONS",
    "ACTIVE_STATUSES",
    "ENDING_EVENT_TYPES",
    "RUN_STATUSES",
    "SEAL_TYPE",
    "TERMINAL_STATUSES",
    "TRANSITIONS",
    "Moved",
    "RunStatus",
    "Transition",
    "is_status",
    "markdown",
]

RunStatus = Literal["created", "running", "paused", "awaiting_approval", "failing", "completed", "failed", "cancelled"]
RUN_STATUSES: Final[tuple[RunStatus, ...]] = (
    "created", "running", "paused", "awaiting_approval", "failing", "completed", "failed", "cancelled",
)  # fmt: skip  # one status per meaning, in lifecycle order
TERMINAL_STATUSES: Final = frozenset({"completed", "failed", "cancelled"})


def is_status(value: object) -> TypeGuard[RunStatus]:
    """Whether ``value`` is one of the run statuses (narrows a ``str`` read from a file or a caller)."""
    return value in RUN_STATUSES


ACTIVE_STATUSES: Final = frozenset(s for s in RUN_STATUSES if s not in TERMINAL_STATUSES)

ENDING_EVENT_TYPES: Final = ("workflow_complete", "workflow_cancelled", "workflow_error")
"""The event types that end a run (completed, cancelled, failed): the one list of them."""


class Moved(Exception):
    """The run changed between reading its state and appending: read it again and retry."""


SEAL_TYPE: Final = "log_sealed"
"""The event that seals a log for consolidation: nothing is ever appended after it."""

SAME: Final = "="
"""Target meaning: the status stays what it was."""
BACK: Final = "paused_from"
"""Target meaning: the status the run was paused from."""
DECIDED: Final = "decided"
"""Target meaning: set by the event's content (an approval decision), see ``state``."""

_ACTIVE: Final = ("created", "running", "paused", "awaiting_approval", "failing")


@attrs.frozen(slots=True)
class Transition:
    """One row: from which statuses an event type may be appended, and the status after it.

    ``moves`` maps each allowed from-status to the resulting status (or one of
    the target meanings ``=``, ``paused_from``, ``decided``). ``fallback`` is
    what the fold does for a from-status that is not allowed, which only an
    unchecked append (an importer, a repair tool) or an old log can contain.
    """

    event_type: str
    moves: Mapping[str, str]
    fallback: str
    meaning: str

    def allowed(self) -> tuple[str, ...]:
        """The from-statuses, in lifecycle order."""
        return tuple(s for s in RUN_STATUSES if s in self.moves)

    def target(self, status: str) -> str:
        """The status (or target meaning) after this event when the run is ``status``."""
        return self.moves.get(status, self.fallback)


def _row(event_type: str, moves: Mapping[str, str], fallback: str, meaning: str) -> Transition:
    return Transition(event_type, dict(moves), fallback, meaning)


_WORK: Final = {"created": "running", "running": SAME, "failing": "running", "paused": SAME, "awaiting_approval": SAME}
_FAIL_WORK: Final = {
    "created": "failing", "running": "failing", "failing": SAME, "paused": SAME, "awaiting_approval": SAME,
}  # fmt: skip  # a table: one row per line

TRANSITIONS: Final[Mapping[str, Transition]] = {
    t.event_type: t
    for t in (
        _row("workflow_start", {"created": "running"}, "running", "the run starts"),
        _row("workflow_paused", {s: "paused" for s in _ACTIVE if s != "paused"}, "paused", "pause; remembers where"),
        _row(
            "workflow_resumed",
            {
                "created": "running",
                "running": SAME,
                "paused": BACK,
                "failing": "running",
                "failed": "running",
                "cancelled": "running",
            },
            "running",
            "a paused run goes back; any other runs (again) under a new writer (Resumer.resume)",
        ),
        _row("workflow_complete", {"running": "completed"}, "completed", "the run ended well"),
        _row("workflow_error", {s: "failed" for s in (*_ACTIVE, "failed")}, "failed", "the run ended in failure"),
        _row("workflow_cancelled", dict.fromkeys(_ACTIVE, "cancelled"), "cancelled", "the run was stopped"),
        _row(
            "approval_requested",
            {"running": "awaiting_approval", "awaiting_approval": SAME},
            SAME,
            "a gate opens",
        ),
        _row(
            "approval_resolved",
            {"awaiting_approval": DECIDED, "paused": DECIDED},
            DECIDED,
            "approve or request_changes: running; reject: failed; abort: cancelled",
        ),
        _row("phase_start", _WORK, SAME, "work starts or is retried"),
        _row("step_start", _WORK, SAME, "work starts or is retried"),
        _row("step_retry", _WORK, SAME, "work starts or is retried"),
        _row("phase_error", _FAIL_WORK, SAME, "work failed; the run can still retry, resume or fail"),
        _row("step_error", _FAIL_WORK, SAME, "work failed; the run can still retry, resume or fail"),
        _row(SEAL_TYPE, dict.fromkeys(sorted(TERMINAL_STATUSES), SAME), SAME, "consolidation seals an ended log"),
    )
}
"""Every event type that can change a run's status (or needs a given status), by type."""


APPROVAL_ACTIONS: Final = ("approve", "reject", "request_changes", "abort")
"""The decisions on a pending approval (``approval_resolved``'s ``action``): ``Run.decide``, CLI and MCP."""

ENDING_APPROVAL_ACTIONS: Final = ("reject", "abort")
"""The decisions that end the run (reject: failed, abort: cancelled), the only ones allowed while it is paused."""


ACTIONS: Final[Mapping[str, tuple[str, tuple[str, ...]]]] = {
    "start": ("workflow_start", TRANSITIONS["workflow_start"].allowed()),
    "pause": ("workflow_paused", TRANSITIONS["workflow_paused"].allowed()),
    "unpause": ("workflow_resumed", ("paused",)),
    "resume": ("workflow_resumed", ("created", "running", "failing", "failed", "cancelled")),
    "cancel": ("workflow_cancelled", TRANSITIONS["workflow_cancelled"].allowed()),
    "complete": ("workflow_complete", TRANSITIONS["workflow_complete"].allowed()),
    "fail": ("workflow_error", TRANSITIONS["workflow_error"].allowed()),
    "request_approval": ("approval_requested", TRANSITIONS["approval_requested"].allowed()),
    "decide": ("approval_resolved", TRANSITIONS["approval_resolved"].allowed()),
    "retry_phase": ("phase_start", ("running", "failing")),
    "retry_step": ("step_retry", ("running", "failing")),
    "skip_phase": ("phase_skip", ("created", "running", "failing")),
    "skip_step": ("step_skip", ("created", "running", "failing")),
}
"""Each lifecycle action (``Run`` methods, CLI and MCP commands): its event type and the statuses it is
allowed from (the type's row, narrowed where the action means less than the type can)."""


def markdown() -> str:
    """The table as Markdown, for docs/lifecycle.md (a test keeps the page in sync)."""
    lines = [
        "| event type | allowed from | resulting status | meaning |",
        "|---|---|---|---|",
    ]
    for row in TRANSITIONS.values():
        targets = []
        for status in row.allowed():
            to = row.moves[status]
            to = {SAME: "unchanged", BACK: "the status it was paused from", DECIDED: "by the decision"}.get(to, to)
            targets.append(f"{status} → {to}")
        lines.append(f"| `{row.event_type}` | {', '.join(row.allowed())} | {'; '.join(targets)} | {row.meaning} |")
    lines += ["", "| action | event type | allowed from |", "|---|---|---|"]
    lines += [f"| `{a}` | `{t}` | {', '.join(allowed)} |" for a, (t, allowed) in ACTIONS.items()]
    return "\n".join(lines) + "\n"
