"""What an error tells its reader to do, in the terms of the surface they are on: one table, three renderings.

An error that advises carries stable codes in ``error.advice`` (keys of :data:`ADVICE`), given where
it is raised with :func:`advise`, which also ends its message with the Python wording (so
``str(error)`` reads as before for Python callers). The CLI's error printer and the MCP server's
tool errors render the same error through :func:`advice`: the message as it was before the advice,
then the advice worded for that surface (``faber-runlog rerun acme/web/...`` on the command line,
the ``rerun_run`` tool in MCP, ``Resumer(store).rerun(run_id)`` in Python). Nothing is matched by
text: an error without codes is shown as it is.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Final, Literal, TypeVar

import attrs

from faber_runlog.errors import FaberRunlogError

__all__ = ["ADVICE", "STATUS_ADVICE", "Advice", "Surface", "advice", "advise", "render", "status_advice"]

Surface = Literal["python", "cli", "mcp"]

E = TypeVar("E", bound=FaberRunlogError)


@attrs.frozen(slots=True)
class Advice:
    """One piece of advice in each surface's words; ``{run_id}``/``{approval_id}`` come from the error."""

    python: str
    cli: str
    mcp: str

    def words(self, surface: Surface) -> str:
        """The wording for ``surface``."""
        return self.python if surface == "python" else self.cli if surface == "cli" else self.mcp


ADVICE: Final[Mapping[str, Advice]] = {
    "start": Advice(
        "start it first (run.start())",
        "start it first (`faber-runlog start {run_id}`)",
        "start it first (change_run_status with action 'start')",
    ),
    "failing": Advice(
        "retry the failed step (run.retry_step()), resume the run (Resumer(store).resume(run_id)) "
        "or fail it for good (run.fail())",
        "retry the failed step (`faber-runlog retry-step {run_id} PHASE STEP`), resume the run "
        "(`faber-runlog resume {run_id}`) or fail it for good (`faber-runlog fail {run_id} --error TEXT`)",
        "retry the failed step (change_step with action 'retry_step'), resume the run (the resume_run tool) "
        "or fail it for good (change_run_status with action 'fail')",
    ),
    "decide": Advice(
        "decide a pending approval first (run.decide(approval_id, action))",
        "decide a pending approval first (`faber-runlog approve {run_id} APPROVAL_ID` or `faber-runlog reject "
        "{run_id} APPROVAL_ID`; `faber-runlog show {run_id}` lists them)",
        "decide a pending approval first (the decide_approval tool; get_state lists them)",
    ),
    "unpause": Advice(
        "unpause it first (run.unpause())",
        "unpause it first (`faber-runlog unpause {run_id}`)",
        "unpause it first (change_run_status with action 'unpause')",
    ),
    "resume": Advice(
        "resume it (Resumer(store).resume(run_id))",
        "resume it (`faber-runlog resume {run_id}`)",
        "resume it (the resume_run tool)",
    ),
    "rerun": Advice(
        "re-run it (Resumer(store).rerun(run_id))",
        "re-run it (`faber-runlog rerun {run_id}`)",
        "re-run it (the rerun_run tool)",
    ),
    "resume_or_rerun": Advice(
        "resume it (Resumer(store).resume(run_id)) or re-run it (Resumer(store).rerun(run_id))",
        "resume it (`faber-runlog resume {run_id}`) or re-run it (`faber-runlog rerun {run_id}`)",
        "resume it (the resume_run tool) or re-run it (the rerun_run tool)",
    ),
    "allow_cancelled": Advice(
        "pass allow_cancelled=True to resume it anyway, or re-run it (Resumer(store).rerun(run_id))",
        "pass --allow-cancelled to resume it anyway, or re-run it (`faber-runlog rerun {run_id}`)",
        "pass allow_cancelled: true to resume_run to resume it anyway, or re-run it (the rerun_run tool)",
    ),
    "open_run": Advice(
        "open it with store.get_run(run_id) instead",
        "see it with `faber-runlog show {run_id}`",
        "read it with the get_state tool",
    ),
    "list_runs": Advice(
        "check the id, or store.list_runs() to see what exists",
        "check the id, or `faber-runlog list` to see what exists",
        "check the id, or the list_runs tool to see what exists",
    ),
    "declare_type": Advice(
        "use a built-in type (faber_runlog.event_types() lists them) or register it first "
        "(faber_runlog.register_event_type(), or event_types in gateway.json)",
        "use a built-in type (`faber-runlog event-types` lists them) or declare it in gateway.json's event_types",
        "use a built-in type or declare it in the event_types of the server's gateway.json",
    ),
    "sweep": Advice(
        "let store.sweep_stale() fail it if its writer died",
        "let `faber-runlog sweep` fail it if its writer died",
        "let the sweep_stale_runs tool fail it if its writer died",
    ),
    "verify": Advice(
        "Resumer(store).verify(run_id) lists every problem",
        "`faber-runlog verify {run_id}` lists every problem",
        "`faber-runlog verify {run_id}` lists every problem",
    ),
    "finish_open_work": Advice(
        "complete or skip them first (emit step_complete/phase_complete, or run.skip_step()/run.skip_phase()), "
        "or end the run otherwise (run.fail(), run.cancel())",
        "complete or skip them first (`faber-runlog emit {run_id} step_complete --phase PHASE --step STEP`, "
        "`faber-runlog skip-step {run_id} PHASE STEP`, `faber-runlog skip-phase {run_id} PHASE`), or end the run "
        "otherwise (`faber-runlog fail {run_id} --error TEXT`, `faber-runlog cancel {run_id}`)",
        "complete or skip them first (emit_event step_complete/phase_complete, or change_step with action "
        "'skip_step'/'skip_phase'), or end the run otherwise (change_run_status with action 'fail' or 'cancel')",
    ),
    "overwrite": Advice(
        "pass overwrite=True to replace it, or export somewhere else",
        "pass --overwrite to replace it, or export somewhere else",
        "pass overwrite: true to replace it, or export somewhere else",
    ),
}
"""Every piece of advice an error may carry, by its stable code, in Python, CLI and MCP words."""

STATUS_ADVICE: Final[Mapping[str, str]] = {
    "created": "start",
    "failing": "failing",
    "awaiting_approval": "decide",
    "paused": "unpause",
    "completed": "rerun",
    "failed": "resume_or_rerun",
    "cancelled": "rerun",
}
"""What to do with a run whose status refuses an action: the advice code by status."""


def status_advice(status: str) -> tuple[str, ...]:
    """The advice codes for a run in ``status`` that refused an action (none for an active status)."""
    code = STATUS_ADVICE.get(status)
    return () if code is None else (code,)


class _Fields(string.Formatter):
    """Fills ``{run_id}`` and friends from the error's attributes; an unknown one stays a placeholder."""

    def get_value(self, key: int | str, args: object, kwargs: Mapping[str, object]) -> object:  # noqa: ARG002  (string.Formatter's signature)
        value = kwargs.get(str(key))
        return value if value is not None else str(key).upper()


_FIELDS: Final = _Fields()


def render(error: BaseException, surface: Surface) -> str:
    """The advice ``error`` carries, worded for ``surface`` ("" when it carries none)."""
    codes: tuple[str, ...] = getattr(error, "advice", ())
    fields = {"run_id": getattr(error, "run_id", None), "approval_id": getattr(error, "approval_id", None)}
    return "; ".join(_FIELDS.format(ADVICE[code].words(surface), **fields) for code in codes)


def advise(error: E, *codes: str, run_id: str | None = None) -> E:
    """Give ``error`` the advice ``codes`` (keys of :data:`ADVICE`); its message gains the Python wording.

    Returns ``error``, for ``raise advise(RunExists(...), "open_run", run_id=rid)``; ``run_id`` names
    the run in the CLI's commands for an error that does not carry one itself.
    """
    unknown = [c for c in codes if c not in ADVICE]
    assert not unknown, unknown  # a programming error of ours, caught by the tests of every code
    if run_id is not None and getattr(error, "run_id", None) is None:
        error.run_id = run_id  # type: ignore[attr-defined]  # kept (and pickled) with the error's other fields
    error.advice = tuple(codes)
    if codes and error.args:
        error.args = (f"{error.args[0]}; {render(error, 'python')}", *error.args[1:])
    return error


def _one_line(text: str) -> str:
    return " ".join(text.split())


def advice(error: BaseException | str, surface: Surface) -> str:
    """``error``'s message on one line, its advice worded for ``surface`` (``python``: the message as it is)."""
    if isinstance(error, str):
        return _one_line(error)
    text = str(error)
    codes: tuple[str, ...] = getattr(error, "advice", ())
    if surface == "python" or not codes:
        return _one_line(text)
    said = render(error, "python")
    situation = text[: -len(said) - 2] if said and text.endswith(f"; {said}") else text
    return _one_line(f"{situation}; {render(error, surface)}")
