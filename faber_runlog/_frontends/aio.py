"""``AsyncRunStore``: the run store as an asyncio API, for agents and frameworks that run on an event loop.

Every call runs the synchronous code (the same files, protocol, checks and errors) on a bounded
thread pool with ``loop.run_in_executor``, so the event loop never waits on storage. Why a pool
rather than s3fs's own async methods: the append protocol (exclusive create, read-back on an
unknown outcome, fencing, transition checks, snapshots) lives in the sync code; an async copy
would be a second implementation of it to keep right, and measured on moto S3 the pool serves
as many appends per second (``benchmarks/bench_async.py``; docs/agents.md has the numbers).

Cancellation: cancelling a task that awaits an append never tears the log. Either the append
had not started (the pool drops the queued call: nothing is written) or it runs to its end in
its thread and is durable; the caller just does not see the result. Retrying with the same
``idempotency_key`` returns the stored event in the second case and appends it in the first.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final, TypeVar

from faber_runlog._base.ids import RunId
from faber_runlog._domain.events import Event
from faber_runlog._domain.transitions import ENDING_EVENT_TYPES
from faber_runlog._services.resume import ParamDiff, ResumePlan, Resumer
from faber_runlog._services.store import Lineage, Run, RunList, RunStore
from faber_runlog.errors import InvalidArgument

if TYPE_CHECKING:
    from faber_runlog._domain.metadata import RunMetadata
    from faber_runlog._domain.state import RunState
    from faber_runlog._log.eventlog import EventLog
    from faber_runlog._log.lease import Lease
    from faber_runlog._services.lifecycle import Approval, StatusView, SweptRun

__all__ = ["DEFAULT_WORKERS", "AsyncEventLog", "AsyncRun", "AsyncRunStore"]

T = TypeVar("T")

DEFAULT_WORKERS: Final = 32
"""Threads of the pool an ``AsyncRunStore`` makes for itself.

A thread spends an append waiting for one S3 round trip (s3fs does the I/O on its own loop
thread), so threads, not cores, bound how many storage calls overlap. 32 keeps 32 runs' appends
in flight, stays under the 64 connections the store's S3 filesystem opens (a listing's batched
reads need some of them) and costs ~32 idle threads at most.
"""

_ENDING: Final = frozenset(ENDING_EVENT_TYPES)


class AsyncEventLog:
    """The append-only event log of one run, awaitable: :class:`EventLog` run on the store's pool."""

    __slots__ = ("_call", "sync")

    def __init__(self, log: EventLog, call: Callable[..., Any]) -> None:
        self.sync = log
        """The synchronous :class:`EventLog` behind this one (the same object, not a copy)."""
        self._call = call

    def __repr__(self) -> str:
        return f"AsyncEventLog({self.sync.run_id!r})"

    @property
    def run_id(self) -> str:
        """The id of the run this log belongs to."""
        return self.sync.run_id

    async def emit(self, type: str, **fields: Any) -> Event:
        """Validate and append one event (the arguments of :meth:`EventLog.emit`); returns it with its id."""
        event: Event = await self._call(self.sync.emit, type, **fields)
        return event

    async def get(self, event_id: int) -> Event:
        """The event with this id."""
        event: Event = await self._call(self.sync.get, event_id)
        return event

    async def read(
        self, since: int = 0, *, until: int | None = None, types: Sequence[str] | None = None, limit: int | None = None
    ) -> list[Event]:
        """Events with ``since < event_id <= until``, in order (see :meth:`EventLog.read`), as a list."""

        def read() -> list[Event]:
            return list(self.sync.read(since, until=until, types=types, limit=limit))

        events: list[Event] = await self._call(read)
        return events

    async def last_event_id(self) -> int:
        """The id of the newest event (0 for an empty log)."""
        last: int = await self._call(self.sync.last_event_id)
        return last

    async def follow(
        self,
        since: int = 0,
        *,
        poll_interval: float = 0.25,
        timeout: float | None = None,
        until_ended: bool = False,
    ) -> AsyncIterator[Event]:
        """Yield the events after ``since`` as any process writes them.

        Between reads of the tail it sleeps ``poll_interval`` seconds on the event loop
        (cancel the task, or break out of the loop, to stop). It ends after ``timeout``
        idle seconds when one is given, and with ``until_ended`` after the event that
        ends the run (``workflow_complete``, ``workflow_error``, ``workflow_cancelled``).
        """
        if not poll_interval > 0:
            raise InvalidArgument(f"poll_interval must be a positive number of seconds, got {poll_interval!r}")
        loop = asyncio.get_running_loop()
        last = since
        idle_since = loop.time()
        while True:
            events = await self.read(last)
            for event in events:
                last = event.event_id
                yield event
                if until_ended and event.type in _ENDING:
                    return
            if events:
                idle_since = loop.time()
            elif timeout is not None and loop.time() - idle_since >= timeout:
                return
            else:
                await asyncio.sleep(poll_interval)


class AsyncRun:
    """A handle on one run for asyncio code; every method that touches storage is awaitable."""

    __slots__ = ("_call", "log", "sync")

    def __init__(self, run: Run, call: Callable[..., Any]) -> None:
        self.sync = run
        """The synchronous :class:`Run` behind this handle (for code that runs in a thread anyway)."""
        self._call = call
        self.log = AsyncEventLog(run.log, call)

    def __repr__(self) -> str:
        return f"AsyncRun({self.sync.id!r})"

    @property
    def id(self) -> str:
        """The run id, ``org/project/uuid``."""
        return self.sync.id

    @property
    def run_id(self) -> RunId:
        """The parsed run id."""
        return self.sync.run_id

    @property
    def metadata(self) -> RunMetadata:
        """The run's metadata (read when the handle was opened; it never changes)."""
        return self.sync.metadata

    async def state(self, at: int | None = None) -> RunState:
        """The run's state now, or right after event ``at`` (see :meth:`Run.state`)."""
        state: RunState = await self._call(self.sync.state, at)
        return state

    async def _event(self, method: Callable[..., Event], *args: Any, **kwargs: Any) -> Event:
        event: Event = await self._call(method, *args, **kwargs)
        return event

    # -- lifecycle: each appends one checked event, as on Run ----------------------------

    async def start(self, **metadata: Any) -> Event:
        """created -> running."""
        return await self._event(self.sync.start, **metadata)

    async def pause(self, reason: str | None = None) -> Event:
        """Pause the run; :meth:`unpause` returns it to the status it was paused from."""
        return await self._event(self.sync.pause, reason)

    async def unpause(self, reason: str | None = None) -> Event:
        """paused -> the status it was paused from."""
        return await self._event(self.sync.unpause, reason)

    async def cancel(self, reason: str = "cancelled") -> Event:
        """Cancel an active run; pending approvals are closed, the final report written."""
        return await self._event(self.sync.cancel, reason)

    async def complete(self, summary: str | None = None) -> Event:
        """Complete a running run; the final report is written."""
        return await self._event(self.sync.complete, summary)

    async def fail(self, error: str, reason: str | None = None) -> Event:
        """Fail the run for good; the final report is written."""
        return await self._event(self.sync.fail, error, reason)

    async def retry_phase(self, phase: str) -> Event:
        """Run a failed or cancelled phase again."""
        return await self._event(self.sync.retry_phase, phase)

    async def skip_phase(self, phase: str, reason: str | None = None) -> Event:
        """Skip a phase that has not completed."""
        return await self._event(self.sync.skip_phase, phase, reason)

    async def retry_step(self, phase: str, step: str, reason: str | None = None) -> Event:
        """Try a failed or cancelled step again."""
        return await self._event(self.sync.retry_step, phase, step, reason)

    async def skip_step(self, phase: str, step: str, reason: str | None = None) -> Event:
        """Skip a step that is not running or completed."""
        return await self._event(self.sync.skip_step, phase, step, reason)

    async def request_approval(
        self,
        gate: str,
        *,
        phase: str | None = None,
        payload: dict[str, Any] | None = None,
        approval_id: str | None = None,
    ) -> Approval:
        """Open an approval gate and return its handle (see :meth:`Run.request_approval`)."""
        approval: Approval = await self._call(
            self.sync.request_approval, gate, phase=phase, payload=payload, approval_id=approval_id
        )
        return approval

    async def decide(
        self,
        approval: Approval | str,
        action: str,
        *,
        client_token: str,
        comment: str | None = None,
        user: str | None = None,
    ) -> Event:
        """Approve, reject, request changes or abort an approval; a repeated token replays."""
        return await self._event(
            self.sync.decide, approval, action, client_token=client_token, comment=comment, user=user
        )

    async def status_view(self, tail: int = 20) -> StatusView:
        """Status, phases, approvals, lease and the last ``tail`` events."""
        view: StatusView = await self._call(self.sync.status_view, tail)
        return view

    async def heartbeat(self, ttl: float | None = None, owner: str | None = None) -> Lease:
        """Write or renew the run's lease once (call it from a periodic task)."""
        lease: Lease = await self._call(self.sync.heartbeat, ttl, owner)
        return lease

    async def release_lease(self, owner: str | None = None) -> None:
        """Drop the run's lease."""
        await self._call(self.sync.release_lease, owner)

    async def write_report(self) -> dict[str, Any]:
        """Write ``report.json`` and ``report.md`` now and return the report."""
        rep: dict[str, Any] = await self._call(self.sync.write_report)
        return rep

    async def read_report(self) -> dict[str, Any] | None:
        """The run's ``report.json``, or None before it ended."""
        rep: dict[str, Any] | None = await self._call(self.sync.read_report)
        return rep


class AsyncRunStore:
    """A :class:`RunStore` for asyncio code: the same runs, files, protocol and errors, awaitable.

    ``AsyncRunStore("s3://bucket/runs")`` opens a store as ``RunStore(...)`` would (keyword
    options go to it); ``AsyncRunStore(store)`` wraps one you have, so sync and async code share
    it. Storage calls run on a thread pool of ``max_workers`` threads (default
    :data:`DEFAULT_WORKERS`) that the store owns and shuts down in :meth:`aclose`, or on the
    ``executor`` you pass (and keep owning).
    """

    def __init__(
        self,
        store: RunStore | str | os.PathLike[str] | None = None,
        *,
        max_workers: int | None = None,
        executor: ThreadPoolExecutor | None = None,
        **options: Any,
    ) -> None:
        if isinstance(store, RunStore):
            if options:
                raise InvalidArgument(
                    f"AsyncRunStore(store, ...) wraps an open RunStore; options {sorted(options)} belong to "
                    "RunStore(...): pass them there, or pass a URL here instead"
                )
            self.sync = store
        else:
            self.sync = RunStore(store, **options)
        if executor is not None and max_workers is not None:
            raise InvalidArgument("give AsyncRunStore either executor= or max_workers=, not both")
        bad = isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        if max_workers is not None and bad:
            raise InvalidArgument(f"max_workers must be a positive number of threads, got {max_workers!r}")
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=max_workers or DEFAULT_WORKERS, thread_name_prefix="faber-runlog-async"
        )
        self._resumer = Resumer(self.sync)

    def __repr__(self) -> str:
        return f"AsyncRunStore({self.sync.url!r})"

    @property
    def url(self) -> str:
        """The store root as a URL (a plain path for local folders)."""
        return self.sync.url

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the pool, with the caller's context variables."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        return await loop.run_in_executor(self._executor, functools.partial(ctx.run, fn, *args, **kwargs))

    def run(self, run: Run) -> AsyncRun:
        """The async handle of a sync :class:`Run` of this store (no I/O)."""
        return AsyncRun(run, self._call)

    async def aclose(self) -> None:
        """Shut down the pool this store made (waiting for calls in flight); a given executor is left alone."""
        if self._owns_executor:
            await asyncio.get_running_loop().run_in_executor(None, functools.partial(self._executor.shutdown, True))

    async def __aenter__(self) -> AsyncRunStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- runs ----------------------------------------------------------------------

    async def create_run(
        self,
        org: str,
        project: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        **options: Any,
    ) -> AsyncRun:
        """Create a run (the arguments of :meth:`RunStore.create_run`) and return its async handle."""
        return self.run(await self._call(self.sync.create_run, org, project, params, tags, **options))

    async def get_run(self, run_id: str | RunId) -> AsyncRun:
        """Open an existing run; raises :class:`RunNotFound` if there is none."""
        return self.run(await self._call(self.sync.get_run, run_id))

    async def has_run(self, run_id: str | RunId) -> bool:
        """Whether a run with this id exists."""
        return await self._call(self.sync.has_run, run_id)

    async def list_runs(self, *args: Any, **filters: Any) -> RunList:
        """:meth:`RunStore.list_runs` with the same filters, on the pool."""
        return await self._call(self.sync.list_runs, *args, **filters)

    async def children(self, run_id: str | RunId) -> list[str]:
        """Ids of the runs re-run from ``run_id``, oldest first."""
        return await self._call(self.sync.children, run_id)

    async def lineage(self, run_id: str | RunId) -> Lineage:
        """The re-run chain of ``run_id``."""
        return await self._call(self.sync.lineage, run_id)

    async def sweep_stale(self, older_than: float = 0.0, **options: Any) -> list[SweptRun]:
        """Fail active runs whose lease expired (see :meth:`RunStore.sweep_stale`)."""
        return await self._call(self.sync.sweep_stale, older_than, **options)

    # -- resume and re-run (Resumer) ---------------------------------------------------------

    async def plan(self, run_id: str | RunId, **options: Any) -> ResumePlan:
        """Where a resume would start, what it would skip, or why it cannot (:meth:`Resumer.plan`)."""
        return await self._call(self._resumer.plan, run_id, **options)

    async def resume(self, run_id: str | RunId, **options: Any) -> AsyncRun:
        """Resume ``run_id`` under the same id (:meth:`Resumer.resume`) and return its handle."""
        return self.run(await self._call(self._resumer.resume, run_id, **options))

    async def rerun(self, run_id: str | RunId, params: Mapping[str, Any] | None = None, **options: Any) -> AsyncRun:
        """Start a new run from a finished one with ``params`` merged over its own (:meth:`Resumer.rerun`)."""
        return self.run(await self._call(self._resumer.rerun, run_id, params, **options))

    async def diff(self, run_a: str | RunId, run_b: str | RunId) -> ParamDiff:
        """The parameter differences between two runs."""
        return await self._call(self._resumer.diff, run_a, run_b)
