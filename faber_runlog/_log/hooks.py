"""LogHooks: the one object through which whoever opens a log wires its own work into appends and reads.

The log sits below the services (lifecycle, leases held by a process, the run index, a run's
plan), so it cannot call them; the store hands each log one hooks object
(:func:`~faber_runlog._log.eventlog.with_hooks`) instead of a callback per concern. A log without
hooks (a plain ``EventLog(storage, run_id)``) does none of this work and pays nothing for it; a
subclass overrides only what it needs, the rest are no-ops.

When each hook runs (docs/concurrency.md):

- :meth:`LogHooks.fence` before an append's number is claimed: the lease epoch this process
  writes under, or :class:`~faber_runlog.errors.LeaseLost` to refuse the append.
- :meth:`LogHooks.index_intent` before the claim of an append that may move the run's index row
  (raising refuses the append); :meth:`LogHooks.index_entry` after it, with the state it made.
- :meth:`LogHooks.committed` after the append returned its lock, only when it changed the
  status or its type is in :attr:`LogHooks.hook_types` (final reports, lease releases).
- :meth:`LogHooks.overlay` over every state the log hands out (never over the fold the
  transition checks and the snapshots on disk use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

import attrs

if TYPE_CHECKING:
    from faber_runlog._domain.events import Event
    from faber_runlog._domain.state import RunState

__all__ = ["Commit", "LogHooks"]

L = TypeVar("L")
"""The log a hooks object is handed back in :meth:`LogHooks.committed` (an ``EventLog``, which sits above)."""


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


class LogHooks(Generic[L]):
    """What a log calls back into, all no-ops here: subclass and override what the opener needs."""

    hook_types: ClassVar[frozenset[str]] = frozenset()
    """Event types after which :meth:`committed` runs even when the status did not change."""

    def fence(self) -> int | None:
        """The lease epoch this process writes under (None: it holds no lease); raise to refuse the append."""
        return None

    def index_intent(self) -> str | None:
        """Announce an append that may move the run's index row; the intent's nonce (None: no index)."""
        return None

    def index_entry(self, state: RunState, nonce: str) -> None:
        """Close intent ``nonce`` with the run's row at ``state`` (the state right after the append)."""

    def committed(self, log: L, commit: Commit) -> None:
        """Work after a durable append (its lock released): a raise is logged, the event stays appended."""

    def overlay(self, state: RunState) -> RunState:
        """``state`` as handed out (e.g. with the run's workflow plan laid over it)."""
        return state
