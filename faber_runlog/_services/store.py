"""RunStore and Run: create, open and list runs on any fsspec filesystem."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs
import fsspec

from faber_runlog._base import codec as _codec
from faber_runlog._base import validate as _validate
from faber_runlog._base.advice import advise
from faber_runlog._base.clock import SYSTEM_CLOCK, Clock
from faber_runlog._base.ids import RunId, is_slug, validate_slug
from faber_runlog._domain.events import Event, check_json_value
from faber_runlog._domain.hints import did_you_mean
from faber_runlog._domain.metadata import RunMetadata, capture_environment, parse_metadata
from faber_runlog._domain.plan import apply_plan, normalize_plan
from faber_runlog._domain.query import RUN_FILTERS, RunQuery
from faber_runlog._domain.registry import Registry, configured_registry
from faber_runlog._domain.state import RunDigest, RunState, RunStatus
from faber_runlog._domain.transitions import TERMINAL_STATUSES
from faber_runlog._format.layout import PROJECT_DIR, SEGMENT_EVENTS, RunLayout, encode_snapshot, encode_summary
from faber_runlog._log import index as _index
from faber_runlog._log.bulk import current_digests
from faber_runlog._log.eventlog import CLAIM_BUDGET, SEAL_GRACE, Commit, EventLog, with_hooks
from faber_runlog._log.hooks import LogHooks
from faber_runlog._log.index import IndexWriter
from faber_runlog._log.lease import DEFAULT_LEASE_TTL, Heartbeat, Lease, acquire_lease, release_lease
from faber_runlog._log.lease import fence as lease_fence
from faber_runlog._services import analysis as _analysis
from faber_runlog._services import html as _html
from faber_runlog._services import lifecycle as lifecycle
from faber_runlog._services import report as report
from faber_runlog._services import resolve as _resolve
from faber_runlog._services import steps as _steps
from faber_runlog._services import timeline as _timeline
from faber_runlog._services.lifecycle import ProblemList, RunProblem
from faber_runlog._storage.backends import LocalStorage, Storage, open_filesystem
from faber_runlog.errors import (
    FaberRunNotImported,
    InvalidArgument,
    InvalidEventPosition,
    InvalidParams,
    InvalidRunId,
    InvalidStoreUrl,
    RunExists,
    RunNotFound,
)

if TYPE_CHECKING:  # the analysis extra: optional, imported only when a frame is asked for
    import pandas
    import pyarrow

__all__ = ["DEFAULT_ROOT", "Lineage", "Run", "RunList", "RunProblem", "RunStore", "RunSummary"]

DEFAULT_ROOT: Final = f"{PROJECT_DIR}/runs"
"""The embedded default root, under the current folder: our own folder, never one FABER writes to."""

ROOT_ENV: Final = "FABER_RUNLOG_ROOT"

log = logging.getLogger("faber_runlog._services.store")


@attrs.frozen(slots=True)
class RunSummary:
    """One row of :meth:`RunStore.list_runs`: metadata plus the status, position and times its log gives.

    ``started_at`` is the time of the run's start event, ``ended_at`` that of the
    event that ended it (None while it has not ended; a resume clears it).
    """

    run_id: str
    org: str
    project: str
    created_at: str
    status: RunStatus
    last_event_id: int
    updated_at: str | None
    current_phase: str | None
    current_step: str | None
    params: dict[str, Any]
    tags: dict[str, str]
    parent_run_id: str | None
    started_at: str | None = None
    ended_at: str | None = None


def _listed(listing: dict[str, Any] | None) -> dict[str, Any] | None:
    """``listing`` when it has the shape ``RunMetadata.listing()`` gives (a summary is a cache), else None."""
    if (
        isinstance(listing, dict)
        and isinstance(listing.get("created_at"), str)
        and isinstance(listing.get("params"), dict)
        and isinstance(listing.get("tags"), dict)
        and isinstance(listing.get("parent_run_id"), str | None)
    ):
        return listing
    return None


class RunList(ProblemList[RunSummary]):
    """The runs :meth:`RunStore.list_runs` found (a list; ``.runs`` too), plus ``problems``: the runs it skipped.

    ``next_cursor`` is the ``cursor=`` that lists the next page (None when this page is the last).
    A slice is a ``RunList`` with the same ``problems`` (and no ``next_cursor``: a slice is not a page).
    """

    next_cursor: str | None

    def __init__(
        self,
        runs: Iterable[RunSummary] = (),
        problems: Iterable[RunProblem] | None = None,
        next_cursor: str | None = None,
    ) -> None:
        super().__init__(runs, problems)
        self.next_cursor = next_cursor


@attrs.frozen(slots=True)
class Lineage:
    """Where a run sits in its re-run chain (from :meth:`RunStore.lineage`)."""

    run_id: str
    root_run_id: str
    parent_run_id: str | None
    ancestors: tuple[str, ...]  # parent first, root last
    children: tuple[str, ...]  # direct children, oldest first
    descendants: tuple[str, ...]  # children, grandchildren, ... breadth first


class _RunHooks(LogHooks[EventLog]):
    """How a store wires one run's log back into itself: leases, the run index, lifecycle, the run's plan."""

    hook_types = lifecycle.FINAL_EVENT_TYPES  # final reports and lease releases follow these

    def __init__(
        self,
        store: RunStore,
        run_id: RunId,
        metadata: RunMetadata | None,
        overlay: Callable[[RunState], RunState] | None,
    ) -> None:
        self._store = store
        self._rid = run_id
        self._metadata = metadata
        self._overlay = overlay

    def fence(self) -> int | None:
        """The lease epoch this process writes the run under (lease rule 9), or LeaseLost."""
        return lease_fence(self._store.storage, self._rid)

    def index_intent(self) -> str | None:
        """The run index's intent before an append that may move the run's row."""
        return self._store._runindex.intent(self._rid)  # noqa: SLF001  (same module: the store's hooks)

    def index_entry(self, state: RunState, nonce: str) -> None:
        """The run's row at ``state``, closing intent ``nonce``."""
        self._store._index_entry(self._rid, self._metadata, state, nonce)  # noqa: SLF001  (same module: the store's hooks)

    def committed(self, log: EventLog, commit: Commit) -> None:
        """Side effects after commit (final reports, lease releases): the log released its lock."""
        lifecycle.on_commit(self._store.storage, log, commit)

    def overlay(self, state: RunState) -> RunState:
        """``state`` with the run's workflow plan laid over it (a handle opened for a :class:`Run`)."""
        return self._overlay(state) if self._overlay is not None else state


class Run:
    """A handle on one run: its id, metadata, event log and folded state."""

    __slots__ = ("_metadata", "_rid", "_store", "log")

    def __init__(self, store: RunStore, run_id: RunId, metadata: RunMetadata | None = None) -> None:
        self._store = store
        self._rid = run_id
        self._metadata = metadata
        self.log: EventLog = store._event_log(run_id, metadata, overlay=self._with_plan)  # noqa: SLF001  (same module: a Run is its store's handle)

    def _with_plan(self, state: RunState) -> RunState:
        """``state`` with the workflow plan laid over it: planned phases that never started show as pending."""
        meta = self.metadata
        return apply_plan(state, meta.phases, meta.steps) if meta.phases else state

    def __repr__(self) -> str:
        return f"Run({str(self._rid)!r})"

    @property
    def id(self) -> str:
        """The run id, ``org/project/uuid``."""
        return str(self._rid)

    @property
    def run_id(self) -> RunId:
        """The parsed run id."""
        return self._rid

    @property
    def store(self) -> RunStore:
        """The store this run lives in."""
        return self._store

    @property
    def metadata(self) -> RunMetadata:
        """The run's metadata (read once, then cached: it never changes)."""
        if self._metadata is None:
            self._metadata = self._store._read_metadata(self._rid)  # noqa: SLF001  (same module)
        return self._metadata

    @property
    def path(self) -> str:
        """Where the run's folder is, as a backend path."""
        return self._store.storage.path(str(self._rid))

    def state(self, at: int | None = None) -> RunState:
        """The run's state now, or as it was right after event ``at``."""
        if at is None:
            state = self.log.current_state()
        else:
            last = self.log.current_state().last_event_id
            if isinstance(at, bool) or not isinstance(at, int) or not 0 <= at <= last:
                raise InvalidEventPosition(
                    f"run {self.id} has events 1..{last}; cannot show its state at event {at!r}: pass 0..{last}, "
                    "or leave out at= for the state now",
                    run_id=self.id,
                    at=at if isinstance(at, int) else -1,
                    last_event_id=last,
                )
            state = self.log.load_state(at=at)
        return state  # the log lays the workflow plan over every state it hands out

    # -- lifecycle (logic in lifecycle.py; each appends one checked event) -------------

    def start(self, **metadata: Any) -> Event:
        """created -> running."""
        return lifecycle.start(self.log, metadata=metadata)

    def pause(self, reason: str | None = None) -> Event:
        """Pause the run; :meth:`unpause` returns it to the status it was paused from."""
        return lifecycle.pause(self.log, reason=reason)

    def unpause(self, reason: str | None = None) -> Event:
        """paused -> the status it was paused from (a failing or failed run is resumed with ``Resumer.resume``)."""
        return lifecycle.resume(self.log, reason=reason)

    def cancel(self, reason: str = "cancelled") -> Event:
        """Cancel an active run; pending approvals are closed, the final report written."""
        return lifecycle.cancel(self.log, reason=reason)

    def complete(self, summary: str | None = None) -> Event:
        """Complete a running run; the final report is written."""
        return lifecycle.complete(self.log, summary=summary)

    def fail(self, error: str, reason: str | None = None) -> Event:
        """Fail the run for good; the final report is written."""
        return lifecycle.fail(self.log, error, reason=reason)

    def retry_phase(self, phase: str) -> Event:
        """Run a failed or cancelled phase again (one more attempt)."""
        return lifecycle.retry_phase(self.log, phase)

    def skip_phase(self, phase: str, reason: str | None = None) -> Event:
        """Skip a phase that has not completed."""
        return lifecycle.skip_phase(self.log, phase, reason=reason)

    def retry_step(self, phase: str, step: str, reason: str | None = None) -> Event:
        """Try a failed or cancelled step again."""
        return lifecycle.retry_step(self.log, phase, step, reason=reason)

    def skip_step(self, phase: str, step: str, reason: str | None = None) -> Event:
        """Skip a step that is not running or completed."""
        return lifecycle.skip_step(self.log, phase, step, reason=reason)

    def request_approval(
        self,
        gate: str,
        *,
        phase: str | None = None,
        payload: dict[str, Any] | None = None,
        approval_id: str | None = None,
    ) -> lifecycle.Approval:
        """Open an approval gate and return its handle (``.approval_id``, ``.event``) for :meth:`decide`."""
        event = lifecycle.request_approval(self.log, gate, phase=phase, payload=payload, approval_id=approval_id)
        return lifecycle.Approval.from_event(event)

    def decide(
        self,
        approval: lifecycle.Approval | str,
        action: str,
        *,
        client_token: str,
        comment: str | None = None,
        user: str | None = None,
    ) -> Event:
        """Approve, reject, request changes or abort an approval (its handle or id); a repeated token replays."""
        aid = lifecycle.approval_id_of(approval, self.id)
        return lifecycle.decide(self.log, aid, action, client_token=client_token, comment=comment, user=user)

    def status_view(self, tail: int = 20) -> lifecycle.StatusView:
        """Status, phases, approvals, lease and the last ``tail`` events, for a UI or a CLI."""
        view = lifecycle.status_view(self._store.storage, self.log, tail=tail)
        meta = self.metadata
        if not meta.phases:
            return view
        planned = apply_plan(RunState(run_id=self.id, phases={p.name: p for p in view.phases}), meta.phases, meta.steps)
        return attrs.evolve(view, phases=tuple(planned.phases.values()))

    def heartbeat(self, ttl: float | None = None, owner: str | None = None) -> Lease:
        """Write or renew the run's lease once (for writers that beat by hand)."""
        ttl = self._store.lease_ttl if ttl is None else ttl
        return acquire_lease(self._store.storage, self._rid, ttl=ttl, owner=owner)

    def start_heartbeat(
        self, interval: float | None = None, ttl: float | None = None, owner: str | None = None
    ) -> Heartbeat:
        """Keep the run's lease live from a background thread until ``stop()`` or the run ends."""
        ttl = self._store.lease_ttl if ttl is None else ttl
        hb = Heartbeat(self._store.storage, self._rid, ttl=ttl, interval=interval, owner=owner)
        return hb.start()

    def release_lease(self, owner: str | None = None) -> None:
        """Drop the run's lease: no writer claims it any more, so the sweep leaves it alone."""
        release_lease(self._store.storage, self._rid, owner=owner)

    def write_report(self) -> dict[str, Any]:
        """Write ``report.json`` and ``report.md`` for the run now and return the report."""
        return report.write_report(self._store.storage, self.log)

    def timeline(self) -> Any:
        """A plotly figure: phases and step attempts as bars on a time axis, coloured by status (``plot`` extra)."""
        return _timeline.run_timeline(self)

    def report_html(self, path: str | os.PathLike[str] | None = None) -> str:
        """The run's report as one self-contained HTML page (nothing loaded from the network); written to ``path``."""
        text = _html.run_report_html(self)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        return text

    def _repr_html_(self) -> str:
        return _html.repr_html(self.state())

    def read_report(self) -> dict[str, Any] | None:
        """The run's ``report.json``, or None before it ended."""
        return report.read_report(self._store.storage, self._rid)


def _check_mapping(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidParams(f"{what} must be a mapping, got {type(value).__name__}")
    out = dict(value)
    check_json_value(out, what, error=InvalidParams)
    return out


class RunStore:
    """All runs under one root: a local folder, ``memory://``, ``s3://`` or any fsspec URL.

    ``RunStore()`` uses ``$FABER_RUNLOG_ROOT`` or ``.fractary/plugins/faber/runs``
    under the current folder. Pass ``fs=`` and ``root=`` to use a filesystem
    object you already have, or ``storage=`` to use any :class:`Storage`
    (your own backend included); a storage brings its root and its options
    (``fsync``, ``allow_unsafe_writers``), so ``storage=`` is refused together
    with ``url``, ``fs``, ``root``, ``storage_options``, ``fsync`` or
    ``allow_unsafe_writers``. ``fsync`` defaults to True and
    ``allow_unsafe_writers`` to False.
    """

    def __init__(
        self,
        url: str | os.PathLike[str] | None = None,
        *,
        fs: fsspec.AbstractFileSystem | None = None,
        root: str | None = None,
        storage: Storage | None = None,
        storage_options: dict[str, Any] | None = None,
        fsync: bool | None = None,
        snapshot_every: int = 100,
        source: str | None = None,
        allow_unsafe_writers: bool | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        max_active_runs: int | None = None,
        seal_grace: float = SEAL_GRACE,
        segment_every: int = SEGMENT_EVENTS,
        registry: Registry | None = None,
        clock: Clock | None = None,
        claim_budget: float = CLAIM_BUDGET,
    ) -> None:
        if registry is not None and not isinstance(registry, Registry):
            raise InvalidArgument(f"registry= takes a faber_runlog.Registry, got {type(registry).__name__}")
        if clock is not None and not isinstance(clock, Clock):
            raise InvalidArgument(f"clock= takes a faber_runlog.Clock (now, monotonic, sleep), got {clock!r}")
        if storage is not None:
            _check_given_storage(
                storage,
                clock,
                url=url,
                fs=fs,
                root=root,
                storage_options=storage_options,
                fsync=fsync,
                allow_unsafe_writers=allow_unsafe_writers,
            )
            self.storage = storage
        else:
            self.storage = _build_storage(
                url, fs, root, storage_options, fsync=fsync, allow_unsafe_writers=allow_unsafe_writers
            )
        _validate.integer(snapshot_every, "snapshot_every", minimum=1)
        if clock is not None:
            self.storage.clock = clock
        if isinstance(claim_budget, bool) or not isinstance(claim_budget, int | float) or not 0 < claim_budget < 1e9:
            raise InvalidArgument(f"claim_budget must be a number of seconds > 0, got {claim_budget!r}")
        self.claim_budget = float(claim_budget)
        """Seconds an append may spend losing races to other writers before it gives up (SequenceConflict)."""
        self.snapshot_every = snapshot_every
        _validate.integer(segment_every, "segment_every (events)", minimum=1, maximum=1_000_000)
        self.segment_every = segment_every
        self.source = source
        _validate.seconds(lease_ttl, "lease_ttl", positive=True)
        _validate.optional_integer(max_active_runs, "max_active_runs", minimum=1, maximum=1_000_000)
        self.lease_ttl = lease_ttl
        self.max_active_runs = max_active_runs
        _validate.seconds(seal_grace, "seal_grace")
        self.seal_grace = float(seal_grace)
        if registry is None:
            registry = configured_registry(self.storage.root if isinstance(self.storage, LocalStorage) else None)
        self.registry: Registry = registry
        """Event types, upcasters, folds and gateway backends this store uses: the given registry, else the
        default one plus the event types the store's gateway.json declares (``_registry.configured_registry``)."""
        self._runindex = IndexWriter(self.storage)
        self._index_warned: set[tuple[str, str]] = set()

    def __repr__(self) -> str:
        return f"RunStore({self.storage.url!r})"

    @property
    def url(self) -> str:
        """The store root as a URL (a plain path for local folders)."""
        return self.storage.url

    def _event_log(
        self,
        run_id: RunId,
        metadata: RunMetadata | None = None,
        overlay: Callable[[RunState], RunState] | None = None,
    ) -> EventLog:
        elog = EventLog(
            self.storage,
            run_id,
            snapshot_every=self.snapshot_every,
            source=self.source,
            seal_grace=writer_grace(self.seal_grace, metadata),
            segment_every=self.segment_every,
            registry=self.registry,
            listing=metadata.summary_listing() if metadata is not None else None,
            claim_budget=self.claim_budget,
        )
        return with_hooks(elog, _RunHooks(self, run_id, metadata, overlay))

    def _index_entry(self, rid: RunId, metadata: RunMetadata | None, state: RunState, nonce: str) -> None:
        if metadata is None:  # a handle opened by id alone: the row needs what the run was created with
            with contextlib.suppress(Exception):
                metadata = self._read_metadata(rid)
        listing = metadata.listing() if metadata is not None else None
        self._runindex.entry(rid, RunDigest.of(state, None), listing, nonce)

    # -- creating --------------------------------------------------------------

    def create_run(
        self,
        org: str,
        project: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        *,
        run_id: str | RunId | None = None,
        parent_run_id: str | None = None,
        root_run_id: str | None = None,
        lineage: Mapping[str, Any] | None = None,
        concurrency_key: str | None = None,
        phases: Sequence[str | Mapping[str, Any]] | None = None,
        steps: Mapping[str, Sequence[str]] | None = None,
    ) -> Run:
        """Create a run with a fresh id (or ``run_id``) and return its handle.

        With ``concurrency_key`` (or the store's ``max_active_runs``) the run is
        exclusive: :class:`ActiveRunExists` (or :class:`TooManyActiveRuns`) is
        raised while another active run holds the key (or every slot).

        ``phases`` is the workflow plan: the phases the run means to go through,
        in order (a name, or ``{"name": ..., "steps": [...]}``); ``steps`` maps a
        planned phase to its planned steps. Phases not started yet show as
        ``pending`` in :meth:`Run.state` and a resume starts at the first one
        that is not done.
        """
        validate_slug(org, "org")
        validate_slug(project, "project")
        params_d = _check_mapping(params, "params")
        tags_d = _check_mapping(tags, "tags")
        lineage_d = _check_mapping(lineage, "lineage")
        for k, v in tags_d.items():
            if not isinstance(v, str):
                raise InvalidParams(f"tag {k!r} must be a string, got {type(v).__name__}")
        plan_phases, plan_steps = normalize_plan(phases, steps)
        rid = RunId.new(org, project) if run_id is None else RunId.parse(run_id)
        if (rid.org, rid.project) != (org, project):
            raise InvalidRunId(f"run id {rid} is not in {org}/{project}")
        meta = RunMetadata(
            seal_grace=self.seal_grace,
            org=rid.org,
            project=rid.project,
            uuid=rid.uuid,
            created_at=_codec.now_iso(self.storage.clock.now()),
            params=params_d,
            params_hash=_codec.canonical_hash(params_d),
            tags=tags_d,
            environment=capture_environment(),
            parent_run_id=parent_run_id,
            root_run_id=root_run_id,
            lineage=lineage_d,
            phases=plan_phases,
            steps=plan_steps,
        )
        return self._create(meta, concurrency_key=concurrency_key, id_given=run_id is not None)

    def create_run_from(self, meta: RunMetadata) -> Run:
        """Create a run with exactly ``meta``: its run id and ``created_at`` are given (an importer's way in).

        ``seal_grace`` defaults to the store's. Raises :class:`RunExists` when the run exists already.
        """
        if meta.seal_grace is None:
            meta = attrs.evolve(meta, seal_grace=self.seal_grace)
        return self._create(meta)

    def _create(self, meta: RunMetadata, *, concurrency_key: str | None = None, id_given: bool = True) -> Run:
        """Write a new run from complete metadata (also the importer's way in, with its own times)."""
        rid = RunId.parse(meta.run_id)
        parent_run_id, root_run_id = meta.parent_run_id, meta.root_run_id
        # Everything is validated and encoded before anything is claimed or written.
        meta_body = _codec.dumps(meta.to_dict())
        layout = RunLayout(rid)
        child_key = None if parent_run_id is None else self._child_key(parent_run_id, root_run_id, rid)
        # The run index: an intent before the run exists, an entry once it does (docs/concurrency.md).
        indexed = self._runindex.start(rid.org, rid.project)
        nonce = self._runindex.intent(rid) if indexed else None
        self.storage.makedirs(layout.events)  # first, so an unsafe (symlinked) folder is refused before any claim
        exclusive = concurrency_key is not None or self.max_active_runs is not None
        if exclusive and id_given and self.has_run(rid):
            raise advise(RunExists(f"run {rid} already exists in {self.url}"), "open_run", run_id=str(rid))
        try:
            claims = lifecycle.claim_start(
                self.storage,
                rid,
                open_log=self._event_log,
                concurrency_key=concurrency_key,
                max_active_runs=self.max_active_runs,
                ttl=self.lease_ttl,
            )
        except Exception:  # refused (key held, slots full) or failed: leave no empty run folder behind
            self.storage.remove_empty(layout.events, layout.dir)
            raise
        # The parent's record is written first, so a crash in between leaves a
        # listed child that does not exist yet (skipped), never an unlisted one.
        linked = child_key is not None and self.storage.create(
            child_key, _codec.dumps({"run_id": str(rid), "created_at": meta.created_at})
        )
        if not self.storage.create(layout.metadata, meta_body):
            if linked and child_key is not None:
                self.storage.delete(child_key)
            lifecycle.release_claims(self.storage, rid, claims)
            raise advise(RunExists(f"run {rid} already exists in {self.url}"), "open_run", run_id=str(rid))
        empty = RunState(run_id=str(rid))
        self.storage.replace(layout.state, encode_snapshot(empty.to_dict(), None))
        digest = RunDigest.of(empty, None, meta.summary_listing())
        self.storage.replace(layout.summary, encode_summary(digest.to_dict()))
        if nonce is not None or self._runindex.indexed(rid.org, rid.project):  # a reindex may have started it
            self._runindex.entry(rid, digest, meta.listing(), nonce)
        return Run(self, rid, meta)

    def _child_key(self, parent_run_id: str, root_run_id: str | None, child: RunId) -> str:
        """Where ``child`` is listed under its parent; refuses a parent that does not exist."""
        parent = RunId.parse(parent_run_id)
        if root_run_id is not None:
            RunId.parse(root_run_id)
        if not self.has_run(parent):
            raise RunNotFound(
                f"parent run {parent} of new run {child} not found in {self.url}; "
                "check parent_run_id, nothing was written",
                run_id=str(parent),
            )
        # One object per child, created exclusively: concurrent children never overwrite each other.
        return f"{RunLayout(parent).children}/{child.uuid}.json"

    # -- opening ---------------------------------------------------------------

    def _read_metadata(self, rid: RunId) -> RunMetadata:
        layout = RunLayout(rid)
        body = self.storage.read(layout.metadata)
        if body is None:
            raise advise(RunNotFound(f"run {rid} not found in {self.url}", run_id=str(rid)), "list_runs")
        return self._parse_metadata(rid, body)

    def _parse_metadata(self, rid: RunId, body: bytes) -> RunMetadata:
        return parse_metadata(self.storage, rid, body)

    def get_run(self, run_id: str | RunId) -> Run:
        """Open an existing run; raises :class:`RunNotFound` if there is none."""
        rid = RunId.parse(run_id)
        return Run(self, rid, self._read_metadata(rid))

    def resolve_run_id(self, text: str | RunId) -> str:
        """The full id of the one run ``text`` names: a full id, ``org/project/<uuid prefix>``, a bare uuid,
        or a uuid prefix of at least 6 hex digits.

        Reads folder listings only, never events. An ambiguous prefix raises :class:`InvalidRunId`
        listing the candidates; no such run raises :class:`RunNotFound` with the close matches
        (``acme/wbe/<uuid>``: did you mean ``acme/web/<uuid>``?). :meth:`get_run` stays exact.
        """
        return _resolve.resolve_run_id(self.storage, text)

    def has_run(self, run_id: str | RunId) -> bool:
        """Whether a run with this id exists."""
        return self.storage.exists(RunLayout(RunId.parse(run_id)).metadata)

    # -- listing ---------------------------------------------------------------

    def _from_index(
        self, query: RunQuery, problems: list[RunProblem]
    ) -> tuple[list[RunId], dict[RunId, RunDigest | Exception], list[RunSummary]]:
        """The runs a listing reads and their digests, and the rows it shows as they are: chosen from each
        project's index, else every run.

        Only the index parts the query needs are read (its statuses, its time
        range, its page: ``limit`` after ``cursor``). An ended run's row is the
        answer as it is (every append to an ended run updates it; the index's
        filters have passed it); an active run of the page is read the way a
        scan reads it, so its position is the log's, and so is every run an
        open intent names (its row may lag).
        """
        candidates: list[tuple[str, str, str, str, dict[str, Any]]] = []  # created_at, run id, org, project, row
        chosen: list[RunId] = []
        need = None if query.limit is None else query.limit + 1  # one more: is there a next page?
        for o, p in self._projects(query, problems):
            rows = self._index_rows(o, p, query, need)
            if rows is None:
                chosen.extend(_resolve.run_ids(self.storage, o, p, problems))
                continue
            found, lagging = rows
            prefix = f"{o}/{p}/"
            candidates.extend((r["listing"]["created_at"], prefix + r["u"], o, p, r) for r in found)
            chosen.extend(RunId(o, p, u) for u in sorted(lagging))
        wider = attrs.evolve(query, limit=need)
        page, _ = wider.page(candidates, lambda c: (c[0], c[1]))
        ready: list[RunSummary] = []
        for created_at, rid_text, o, p, row in page:
            if row["status"] not in TERMINAL_STATUSES or "ended_at" not in row:
                # An active run's position is its log's; a row of an older index format lacks the times.
                chosen.append(RunId(o, p, row["u"]))
                continue
            listing = row["listing"]
            ready.append(
                RunSummary(
                    run_id=rid_text,
                    org=o,
                    project=p,
                    created_at=created_at,
                    status=row["status"],
                    last_event_id=int(row["last_event_id"]),
                    updated_at=row.get("updated_at"),
                    current_phase=row.get("current_phase"),
                    current_step=row.get("current_step"),
                    params=listing["params"],
                    tags=listing["tags"],
                    parent_run_id=listing["parent_run_id"],
                    started_at=row.get("started_at"),
                    ended_at=row["ended_at"],
                )
            )
        rids = [rid for rid in dict.fromkeys(chosen) if self._safe(rid, problems)]
        digests = current_digests(self.storage, rids, snapshot_every=self.snapshot_every, registry=self.registry)
        return rids, digests, ready

    def _index_rows(
        self, org: str, project: str, query: RunQuery, need: int | None
    ) -> tuple[list[dict[str, Any]], set[str]] | None:
        """The index rows ``query`` wants from ``org/project`` and the runs to read instead (None: no index)."""
        prefix = f"{org}/{project}/"
        newest = query.order == "newest"
        cursor = query.cursor

        def keep(row: dict[str, Any]) -> bool:
            listing = row["listing"]
            if "ended_at" in row and not query.wants_end(row["ended_at"]):
                return False  # (a row of an older format lacks the time: its run is read and filtered then)
            return query.wants_run(prefix + row["u"], listing["created_at"], listing["params"], listing["tags"])

        def beyond(key: tuple[str, str]) -> bool:
            if cursor is None:
                return True
            at = (key[0], prefix + key[1])
            return at < cursor if newest else at > cursor

        for attempt in (1, 2):  # a part retired under a slow reader: read the index again, once
            snap = self._index_view(org, project)
            if snap is None:
                return None
            try:
                found = _index.select(
                    self.storage,
                    org,
                    project,
                    snap,
                    statuses=query.status,
                    keep=keep,
                    beyond=beyond,
                    newest=newest,
                    need=need,
                    since=query.since,
                    until=query.until,
                    ended=(query.ended_since, query.ended_until) if query.by_end else None,
                )
                return found, snap.lagging()
            except _index.Stale as e:
                if attempt == 2:
                    self._index_damaged(org, project, e)
            except Exception as e:  # noqa: BLE001  (the index is a cache: a damaged one falls back to the scan)
                self._index_damaged(org, project, e)
                return None
        return None

    def _safe(self, rid: RunId, problems: list[RunProblem]) -> bool:
        why = self.storage.unsafe(RunLayout(rid).dir)
        if why is not None:
            log.warning("skipping run %s: %s", rid, why)
            problems.append(RunProblem(str(rid), f"UnsafePath: {why}"))
        return why is None

    def _projects(self, query: RunQuery, problems: list[RunProblem]) -> Iterator[tuple[str, str]]:
        storage = self.storage
        orgs = [query.org] if query.org is not None else storage.list_names("")
        for o in (o for o in orgs if is_slug(o)):
            projects = [query.project] if query.project is not None else _resolve.folder_names(storage, o, problems)
            yield from ((o, p) for p in projects if is_slug(p))

    def _index_view(self, org: str, project: str) -> _index.IndexSnapshot | None:
        """The index of ``org/project`` before its parts, or None (no index, or a damaged one: said once)."""
        try:
            return _index.load(self.storage, org, project)
        except _index.NoIndex:
            return None
        except Exception as e:  # noqa: BLE001  (the index is a cache: a damaged one falls back to reading every run)
            self._index_damaged(org, project, e)
            return None

    def _index_damaged(self, org: str, project: str, e: BaseException) -> None:
        if (org, project) not in self._index_warned:
            self._index_warned.add((org, project))
            log.warning(
                "the run index of %s/%s in %s is damaged (%s: %s); listings read every run until "
                "RunStore.reindex() (faber-runlog reindex) rebuilds it",
                org,
                project,
                self.url,
                type(e).__name__,
                e,
            )

    def list_runs(
        self,
        org: str | None = None,
        project: str | None = None,
        status: RunStatus | Sequence[RunStatus] | None = None,
        tags: Mapping[str, str] | None = None,
        *,
        run_ids: str | Iterable[str] | None = None,
        params: Mapping[str, Any] | None = None,
        since: str | datetime.date | None = None,
        until: str | datetime.date | None = None,
        ended_since: str | datetime.date | None = None,
        ended_until: str | datetime.date | None = None,
        order: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        **unknown: Any,
    ) -> RunList:
        """Runs under the root, newest first (``order="oldest"``: oldest first), with the status their logs give.

        The filters are the vocabulary of :class:`RunQuery` (docs/querying.md):
        ``status`` one status or several, ``tags`` and ``params`` all matching,
        ``since``/``until`` on the creation time, ``ended_since``/``ended_until``
        on the end time (runs still going match neither), ``limit`` and ``cursor`` for
        pages (the answer's ``next_cursor`` lists the next one). A misspelt
        keyword or a value that cannot match is an :class:`InvalidArgument`.

        Reads each project's run index (docs/querying.md, "What a query costs"):
        only the parts the query needs; an ended run is shown from its row, an
        active run from its ``summary.json`` after a probe that no event follows
        it (folded from its log when the summary is behind, damaged or missing).
        A project without an index is listed by reading every run. A damaged
        run is skipped with a warning and listed in ``.problems``.
        """
        query = RunQuery.of(
            "list_runs()",
            RUN_FILTERS,
            **unknown,
            org=org,
            project=project,
            status=status,
            tags=tags,
            run_ids=run_ids,
            params=params,
            since=since,
            until=until,
            ended_since=ended_since,
            ended_until=ended_until,
            order=order,
            limit=limit,
            cursor=cursor,
        )
        return self._list(query)

    def _list(self, query: RunQuery) -> RunList:
        problems: list[RunProblem] = []
        if query.run_ids is not None:
            rids = [
                rid
                for rid in (RunId.parse(r) for r in dict.fromkeys(query.run_ids))
                if query.org in (None, rid.org) and query.project in (None, rid.project)
            ]
            states = current_digests(self.storage, rids, snapshot_every=self.snapshot_every, registry=self.registry)
            ready: list[RunSummary] = []
        else:
            rids, states, ready = self._from_index(query, problems)
        # Summaries carry the metadata a listing shows; only runs whose summary does not read metadata.json.
        unknown = [r for r in rids if not isinstance(d := states[r], Exception) and _listed(d.listing) is None]
        metas = self.storage.read_many(RunLayout(rid).metadata for rid in unknown)
        out: list[RunSummary] = ready
        for rid in rids:
            state = states[rid]
            if isinstance(state, Exception):
                problems.append(RunProblem(str(rid), f"{type(state).__name__}: {state}"))
                continue
            listing = _listed(state.listing)
            if listing is None:
                mbody = metas.get(RunLayout(rid).metadata)
                if mbody is None:
                    continue  # a run being created right now (or an id given that names no run)
                try:
                    listing = self._parse_metadata(rid, mbody).listing()
                except FaberRunNotImported as e:
                    problems.append(RunProblem(str(rid), str(e), kind="faber"))
                    continue
                except _validate.DAMAGE as e:
                    problems.append(RunProblem(str(rid), str(e)))
                    continue
            if (
                not query.wants_status(state.status)
                or not query.wants_end(state.ended_at)
                or not query.wants_run(str(rid), listing["created_at"], listing["params"], listing["tags"])
            ):
                continue
            out.append(
                RunSummary(
                    run_id=str(rid),
                    org=rid.org,
                    project=rid.project,
                    created_at=listing["created_at"],
                    status=state.status,
                    last_event_id=state.last_event_id,
                    updated_at=state.updated_at,
                    current_phase=state.current_phase,
                    current_step=state.current_step,
                    params=listing["params"],
                    tags=listing["tags"],
                    parent_run_id=listing["parent_run_id"],
                    started_at=state.started_at,
                    ended_at=state.ended_at,
                )
            )
        for p in problems:
            if p.kind == "faber":
                log.warning("list_runs skipped %s", p.error)
            else:
                log.warning("list_runs skipped damaged run %s: %s", p.run_id, p.error)
        page, next_cursor = query.page(out, lambda s: (s.created_at, s.run_id))
        return RunList(page, problems, next_cursor)

    # -- the run index (docs/concurrency.md, "The run index") ------------------

    def reindex(self, org: str | None = None, project: str | None = None) -> list[_index.IndexReport]:
        """Rebuild the run index of each project (or of ``org``/``project``) from the runs' logs; what it fixed.

        Reads every run the way a scan does, commits an entry for each run the
        index misses or shows wrongly, drops rows naming no run, closes intents
        older than the store's ``seal_grace`` and ``claim_budget``, then writes a
        checkpoint. A project without an index (runs from before it) gets one; a
        damaged index is replaced by a checkpoint of the runs as read.
        """
        reports = []
        for o, p in self._projects(RunQuery.of("reindex()", ("org", "project"), org=org, project=project), []):
            reports.append(self._reindex(o, p, write=True))
        return reports

    def verify_index(self, org: str | None = None, project: str | None = None) -> list[_index.IndexReport]:
        """Compare each project's run index with its runs' logs, changing nothing (``report.ok`` when they agree)."""
        return [
            self._reindex(o, p, write=False)
            for o, p in self._projects(RunQuery.of("verify_index()", ("org", "project"), org=org, project=project), [])
        ]

    def _reindex(self, org: str, project: str, *, write: bool) -> _index.IndexReport:
        view = _index.read(self.storage, org, project)
        damaged = view is None and self._runindex.indexed(org, project)
        if view is None and write and not damaged:
            self._runindex.genesis(org, project)  # first, so writers from now on commit what this read misses
        grace = max(self.seal_grace, self.claim_budget)
        older = _codec.iso(self.storage.clock.now() - datetime.timedelta(seconds=grace))
        report, records = _index.compare(org, project, view, self._truth(org, project), older)
        if not write:
            if view is not None and view.uncopied:
                report = attrs.evolve(report, copied=view.uncopied)
            return report
        if damaged:
            records = _index.compare(org, project, None, self._truth(org, project))[1]
        if records or report.started:
            n = self._runindex.commit(org, project, records)
            if damaged:
                _index.rebuild(self.storage, org, project, n, records)
            else:
                self._runindex.checkpoint(org, project, n)
        if view is not None and view.uncopied:
            report = attrs.evolve(report, copied=view.uncopied)
            if write:
                self._recopy(org, project)
        if report.started and not damaged:
            # Writers that checked for an index just before the genesis: a second read catches their runs.
            again = _index.read(self.storage, org, project)
            extra = _index.compare(org, project, again, self._truth(org, project))[1]
            extra = [r for r in extra if r["op"] != "close"]
            if extra:
                self._runindex.commit(org, project, extra)
        if not report.ok:
            log.warning(
                "reindex of %s/%s: %d added, %d corrected, %d removed, %d intents closed%s",
                org,
                project,
                len(report.added),
                len(report.corrected),
                len(report.removed),
                report.closed,
                " (index started)" if report.started else "",
            )
        self._index_warned.discard((org, project))
        return report

    def _recopy(self, org: str, project: str) -> None:
        """Write a checkpoint that rewrites the parts without a Parquet copy, with one (a compaction like any)."""
        for _ in range(2):  # a commit on a boundary checkpoints by itself: the next one is ours
            n = self._runindex.commit(org, project, [])
            if self._runindex.checkpoint(org, project, n, recopy=True):
                return

    def _truth(self, org: str, project: str) -> dict[str, tuple[RunDigest, Mapping[str, Any]]]:
        """Every readable run of ``org/project``: uuid -> (the log's digest, what a listing shows of its metadata)."""
        rids = list(_resolve.run_ids(self.storage, org, project))
        states = current_digests(self.storage, rids, snapshot_every=self.snapshot_every, registry=self.registry)
        need = [r for r in rids if not isinstance(d := states[r], Exception) and _listed(d.listing) is None]
        metas = self.storage.read_many(RunLayout(rid).metadata for rid in need)
        out: dict[str, tuple[RunDigest, Mapping[str, Any]]] = {}
        for rid in rids:
            d = states[rid]
            if isinstance(d, Exception):
                continue
            listing = _listed(d.listing)
            if listing is None:
                body = metas.get(RunLayout(rid).metadata)
                if body is None:
                    continue
                try:
                    listing = self._parse_metadata(rid, body).listing()
                except _codec.DECODE_ERRORS:
                    continue  # damaged or FABER: listings skip it too
            out[rid.uuid] = (d, listing)
        return out

    # -- lifecycle across runs (logic in lifecycle.py and report.py) ----------------

    def sweep_stale(
        self,
        older_than: float | datetime.timedelta = 0.0,
        *,
        run_ids: list[str] | None = None,
        include_unleased: bool = False,
    ) -> list[lifecycle.SweptRun]:
        """Fail active runs whose lease expired ``older_than`` ago (reason process_restart_unrecovered).

        Safe from several processes at once: each run is swept once.
        """
        return lifecycle.sweep_stale(
            self.storage,
            self._event_log,
            self.list_runs(),
            older_than=older_than,
            run_ids=run_ids,
            include_unleased=include_unleased,
        )

    def recover_missing_reports(self, run_ids: list[str] | None = None) -> list[str]:
        """Write final reports for ended runs that lack one; returns their ids."""
        ids = run_ids if run_ids is not None else [s.run_id for s in self.list_runs()]
        return report.recover_missing_reports(self.storage, self._event_log, ids)

    # -- analysis (pandas / pyarrow, the ``faber_runlog[analysis]`` extra) ------

    def events_frame(self, **filters: Any) -> pandas.DataFrame:
        """A pandas DataFrame, one row per event; see :func:`faber_runlog._services.analysis.events_frame`."""
        return _analysis.events_frame(self, **filters)

    def runs_frame(self, **filters: Any) -> pandas.DataFrame:
        """A pandas DataFrame, one row per run; see :func:`faber_runlog._services.analysis.runs_frame`."""
        return _analysis.runs_frame(self, **filters)

    def steps_frame(self, **filters: Any) -> pandas.DataFrame:
        """A pandas DataFrame, one row per attempt of a step; see :func:`faber_runlog._services.steps.steps_frame`."""
        return _steps.steps_frame(self, **filters)

    def phases_frame(self, **filters: Any) -> pandas.DataFrame:
        """A pandas DataFrame, one row per attempt of a phase; see :func:`faber_runlog._services.steps.phases_frame`."""
        return _steps.phases_frame(self, **filters)

    def timeline(self, **filters: Any) -> Any:
        """A plotly figure of many runs' phases and step attempts (filters as :meth:`steps_frame`; ``plot`` extra)."""
        return _timeline.store_timeline(self, **filters)

    def to_arrow(self, kind: str = "events", **filters: Any) -> pyarrow.Table:
        """A pyarrow Table of events (or ``kind="runs"``); see :func:`faber_runlog._services.analysis.to_arrow`."""
        return _analysis.to_arrow(self, kind, **filters)

    # -- lineage ---------------------------------------------------------------

    def children(self, run_id: str | RunId) -> list[str]:
        """Ids of the runs created with ``run_id`` as their parent, oldest first."""
        folder = RunLayout(RunId.parse(run_id)).children
        keys = [f"{folder}/{n}" for n in self.storage.list_names(folder) if n.endswith(".json")]
        found: list[tuple[str, RunId]] = []
        for body in self.storage.read_many(keys).values():
            try:
                record = _codec.loads(body or b"null")
                found.append((str(record["created_at"]), RunId.parse(record["run_id"])))
            except _codec.DECODE_ERRORS:
                continue  # a foreign or damaged file is not a child
        metas = self.storage.read_many(RunLayout(rid).metadata for _, rid in found)
        # A record whose run has no metadata is a creation that crashed half-way.
        return [str(rid) for _, rid in sorted(found) if metas.get(RunLayout(rid).metadata) is not None]

    def lineage(self, run_id: str | RunId) -> Lineage:
        """The re-run chain of ``run_id``: its ancestors up to the root and every descendant."""
        rid = RunId.parse(run_id)
        meta = self._read_metadata(rid)
        ancestors: list[str] = []
        seen = {str(rid)}
        parent = meta.parent_run_id
        while parent is not None and parent not in seen:
            ancestors.append(parent)
            seen.add(parent)
            body = self.storage.read(RunLayout(RunId.parse(parent)).metadata)
            if body is None:
                break  # the ancestor was deleted; the chain above it is unknown
            parent = self._parse_metadata(RunId.parse(parent), body).parent_run_id
        children = self.children(rid)
        descendants: list[str] = []
        queue = list(children)
        while queue:
            child = queue.pop(0)
            if child in seen:
                continue
            seen.add(child)
            descendants.append(child)
            queue.extend(self.children(child))
        root = meta.root_run_id or (ancestors[-1] if ancestors else str(rid))
        return Lineage(str(rid), root, meta.parent_run_id, tuple(ancestors), tuple(children), tuple(descendants))


def _check_given_storage(storage: object, clock: Clock | None, **others: object) -> None:
    """Refuse ``RunStore(storage=...)`` with what is no :class:`Storage`, or with options the storage owns."""
    if not isinstance(storage, Storage):
        raise InvalidArgument(
            f"storage= takes a faber_runlog.Storage (or a subclass of it), got {type(storage).__name__}; "
            "wrap an fsspec filesystem as Storage(fs, root), or pass fs= and root= instead"
        )
    given = [f"{name}=" for name, value in others.items() if value is not None]
    if given:
        raise InvalidArgument(
            f"RunStore(storage=...) got {', '.join(given)} too: the storage brings its root and its options; "
            "pass them when building the storage (Storage(fs, root, fsync=..., allow_unsafe_writers=...)) "
            "or drop storage="
        )
    if clock is not None and storage.clock is not SYSTEM_CLOCK and storage.clock is not clock:
        raise InvalidArgument(
            f"RunStore(storage=..., clock=...): the storage already reads time from {storage.clock!r}; "
            "pass one clock (a store's clock is its storage's)"
        )


def _build_storage(
    url: str | os.PathLike[str] | None,
    fs: fsspec.AbstractFileSystem | None,
    root: str | None,
    storage_options: dict[str, Any] | None,
    *,
    fsync: bool | None,
    allow_unsafe_writers: bool | None,
) -> Storage:
    """The :class:`Storage` of ``RunStore(url)`` or ``RunStore(fs=..., root=...)``."""
    if fs is not None:
        if root is None and url is None:
            raise InvalidArgument("RunStore(fs=...) needs root= (the folder or bucket/prefix of the runs)")
        root_path = str(root if root is not None else url)
    else:
        if root is not None and url is not None:
            raise InvalidArgument("give either a URL or root=, not both")
        target = url if url is not None else root
        if target is None:
            target = os.environ.get(ROOT_ENV) or DEFAULT_ROOT
        fs, root_path = _open_root(target, storage_options)
    return Storage(
        fs,
        root_path,
        fsync=True if fsync is None else fsync,
        allow_unsafe_writers=bool(allow_unsafe_writers),
    )


def _open_root(target: object, storage_options: dict[str, Any] | None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Open a store root, refusing what is no URL with :class:`InvalidStoreUrl` (before any I/O)."""
    if not isinstance(target, (str, os.PathLike)):
        raise InvalidStoreUrl(
            f"RunStore needs a folder or an fsspec URL such as 's3://bucket/runs', got {type(target).__name__} "
            f"{target!r}"
        )
    url = os.fspath(target)
    if not isinstance(url, str) or not url.strip():
        raise InvalidStoreUrl(
            "RunStore got an empty URL; pass a folder or an fsspec URL such as 's3://bucket/runs', or leave it "
            f"out to use ${ROOT_ENV} or {DEFAULT_ROOT}"
        )
    check_store_url(url)
    chain = url.split("://", 1)[0].split("::") if "://" in url else []
    known = list(fsspec.available_protocols())
    for protocol in chain:
        if protocol not in known:
            raise InvalidStoreUrl(
                f"unknown storage protocol {protocol!r} in {url!r}{did_you_mean(protocol, known, cutoff=0.5)}; "
                "use a folder, s3://, memory:// or another fsspec protocol"
            )
    try:
        return open_filesystem(url, storage_options)
    except (ImportError, ValueError) as e:
        raise InvalidStoreUrl(f"cannot open store {url!r}: {e}") from e


# A scheme name followed by a broken separator: ``s3:/bucket``, ``s3:bucket``, ``S3//bucket``, ``S3://bucket``.
_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)(:/*|//+)(.*)", re.DOTALL)


def check_store_url(url: str) -> None:
    """Refuse a store URL whose scheme is mistyped (``s3:/team-logs/runs``) instead of opening a local folder ``s3:``.

    Only names of known fsspec protocols count, so ``C:/runs`` and ordinary folders pass; a
    ``file:``/``local:`` URL is a local path as written. Raises :class:`InvalidStoreUrl` with the fix.
    """
    match = _SCHEME.fullmatch(url)
    if match is None or (match.group(2).startswith("://") and match.group(1).islower()):
        return  # no scheme, or a well-formed one (an unknown protocol is refused by the caller)
    scheme, rest = match.group(1), match.group(3).lstrip("/")
    if scheme.lower() not in fsspec.available_protocols() or scheme.lower() in ("file", "local"):
        return
    fixed = f"{scheme.lower()}://{rest}"
    raise InvalidStoreUrl(
        f"store URL {url!r} looks like a mistyped {scheme.lower()}:// URL (did you mean {fixed}?): a store URL "
        "is a lowercase scheme, '://', then the path; a local folder cannot start with a storage scheme"
    )


# -- for the package's other modules (a RunStore's internals they need, named once) -------------


def writer_grace(own: float, metadata: RunMetadata | None) -> float:
    """The ``seal_grace`` a writer of a run uses: never more than the run recorded (the default when it did not)."""
    recorded = metadata.seal_grace if metadata is not None else None
    return min(own, recorded if recorded is not None else SEAL_GRACE)


def cleaner_grace(own: float, metadata: RunMetadata | None) -> float:
    """The ``seal_grace`` a cleanup of a run waits: never less than the run recorded (the default when it did not)."""
    recorded = metadata.seal_grace if metadata is not None else None
    return max(own, recorded if recorded is not None else SEAL_GRACE)
