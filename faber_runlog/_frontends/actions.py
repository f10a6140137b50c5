"""The checked lifecycle actions by name, shared by the CLI and the MCP server.

Each action calls the same ``Run`` method a Python caller would (so the same
transition checks, idempotent replays and refusals apply), and then hands the
event to the gateway's other backends, exactly as :meth:`Gateway.emit` does for
raw events (so an auto-archive on ``workflow_complete`` also fires here).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from faber_runlog._domain.events import Event
from faber_runlog._domain.hints import did_you_mean
from faber_runlog._domain.transitions import APPROVAL_ACTIONS
from faber_runlog._services.gateway import BackendFailure, Gateway, emit_reporting, route
from faber_runlog._services.store import Run
from faber_runlog.errors import InvalidEvent

__all__ = [
    "DECISIONS",
    "RUN_ACTIONS",
    "STEP_ACTIONS",
    "BackendFailure",
    "decide",
    "emit",
    "perform",
    "request_approval",
    "rerun",
    "resume",
]

RUN_ACTIONS: Final[dict[str, Callable[..., Event]]] = {
    "start": lambda run, **_: run.start(),
    "pause": lambda run, reason=None, **_: run.pause(reason),
    "unpause": lambda run, reason=None, **_: run.unpause(reason),
    "cancel": lambda run, reason=None, **_: run.cancel(reason or "cancelled"),
    "complete": lambda run, summary=None, **_: run.complete(summary),
    "fail": lambda run, error=None, reason=None, **_: run.fail(_needed(run, "fail", "error", error), reason),
}
"""Run-level transitions: ``start``, ``pause``, ``unpause`` (a paused run), ``cancel``, ``complete``, ``fail``.

"Resume" means going on after a failure (``Resumer.resume``, the MCP tool ``resume_run``), not leaving a pause.
"""

STEP_ACTIONS: Final[dict[str, Callable[..., Event]]] = {
    "retry_step": lambda run, phase, step=None, reason=None: run.retry_step(
        phase, _needed(run, "retry_step", "step", step), reason
    ),
    "skip_step": lambda run, phase, step=None, reason=None: run.skip_step(
        phase, _needed(run, "skip_step", "step", step), reason
    ),
    "retry_phase": lambda run, phase, step=None, reason=None: run.retry_phase(phase),  # noqa: ARG005  (one signature for every step action)
    "skip_phase": lambda run, phase, step=None, reason=None: run.skip_phase(phase, reason),  # noqa: ARG005  (one signature for every step action)
}
"""Step- and phase-level transitions."""

DECISIONS: Final = APPROVAL_ACTIONS
"""Decisions on an approval (``Run.decide``'s actions; owned by ``_transitions``)."""


def _needed(run: Run, action: str, name: str, value: Any) -> Any:
    if value is None or value == "":
        raise InvalidEvent(f"{action} run {run.id} needs {name}; nothing was written", run_id=run.id)
    return value


def _route(gateway: Gateway, run: Run, event: Event, failures: list[BackendFailure] | None = None) -> Event:
    """Give ``event`` to every backend but the recorder (the event is already durable).

    A backend that fails never turns the recorded action into an error; its failure is logged and,
    with ``failures`` given, added there, so a caller (the CLI) can say so and exit non-zero.
    """
    failed = route(gateway, run, event)
    if failures is not None:
        failures.extend(failed)
    return event


def _open(gateway: Gateway, run_id: str) -> Run | None:
    """The run to act on, or None when logging is off (then nothing is written)."""
    if not gateway.enabled:
        return None
    _ = gateway.backends  # a misconfigured backend is reported before anything is written
    return gateway.store.get_run(run_id)


def perform(
    gateway: Gateway,
    run_id: str,
    action: str,
    *,
    among: Mapping[str, Callable[..., Event]] | None = None,
    failures: list[BackendFailure] | None = None,
    **fields: Any,
) -> Event | None:
    """Apply the action ``action`` (one of ``among``, default all) to ``run_id``; None when logging is off.

    Raises ``InvalidTransition`` when the run's status does not allow it, and
    ``InvalidEvent`` for an unknown action (with the close matches) or a missing argument.
    Backends that failed after the event was recorded go to ``failures`` (see :func:`_route`).
    """
    table = among if among is not None else {**RUN_ACTIONS, **STEP_ACTIONS}
    fn = table.get(action)
    if fn is None:
        raise InvalidEvent(
            f"unknown action {action!r}{did_you_mean(action, table)}; use one of {', '.join(table)}. "
            "Nothing was written."
        )
    run = _open(gateway, run_id)
    if run is None:
        return None
    return _route(gateway, run, fn(run, **{k: v for k, v in fields.items() if v is not None}), failures)


def emit(
    gateway: Gateway, run_id: str, type: str, *, failures: list[BackendFailure] | None = None, **fields: Any
) -> Event | None:
    """Record a raw event through :meth:`Gateway.emit`; backends that failed on it go to ``failures``."""
    event, failed = emit_reporting(gateway, run_id, type, **fields)
    if failures is not None:
        failures.extend(failed)
    return event


def decide(
    gateway: Gateway,
    run_id: str,
    approval_id: str,
    action: str,
    *,
    client_token: str,
    comment: str | None = None,
    user: str | None = None,
    failures: list[BackendFailure] | None = None,
) -> Event | None:
    """Decide an approval through ``Run.decide``; None (nothing written) when logging is off."""
    run = _open(gateway, run_id)
    if run is None:
        return None
    event = run.decide(approval_id, action, client_token=client_token, comment=comment, user=user)
    return _route(gateway, run, event, failures)


def request_approval(
    gateway: Gateway,
    run_id: str,
    gate: str,
    *,
    phase: str | None = None,
    payload: dict[str, Any] | None = None,
    approval_id: str | None = None,
    failures: list[BackendFailure] | None = None,
) -> Event | None:
    """Open an approval gate through ``Run.request_approval``; None when logging is off."""
    run = _open(gateway, run_id)
    if run is None:
        return None
    event = run.request_approval(gate, phase=phase, payload=payload, approval_id=approval_id).event
    return _route(gateway, run, event, failures)


def resume(gateway: Gateway, run_id: str, *, allow_cancelled: bool = False) -> tuple[Run, Any, Event] | None:
    """Resume a stopped run after a failure (``Resumer.resume_with_plan``); None when logging is off."""
    from faber_runlog._services.resume import Resumer

    if _open(gateway, run_id) is None:
        return None
    run, plan, event = Resumer(gateway.store).resume_with_plan(run_id, allow_cancelled=allow_cancelled)
    _route(gateway, run, event)
    return run, plan, event


def rerun(gateway: Gateway, run_id: str, params: Mapping[str, Any] | None = None, **options: Any) -> Run | None:
    """Re-run a finished run as a new one (``Resumer.rerun``); None when logging is off."""
    from faber_runlog._services.resume import Resumer

    if _open(gateway, run_id) is None:
        return None
    child = Resumer(gateway.store).rerun(run_id, params, **{k: v for k, v in options.items() if v is not None})
    for event in child.log.read(0, limit=1):
        _route(gateway, child, event)
    return child
