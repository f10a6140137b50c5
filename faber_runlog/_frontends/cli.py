"""The ``faber-runlog`` command line: create and inspect runs, emit events, resume, archive, serve MCP.

Exit codes: 0 the command did what was asked; 1 the operation failed (a run
not found, a run not resumable, verify found problems, storage trouble);
2 bad usage (unknown options, a malformed run id, bad ``k=v`` or JSON, an
event that fails its schema). Errors are one line on stderr; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn, TextIO

from faber_runlog._base import codec as _codec
from faber_runlog._base import validate as _validate
from faber_runlog._base.advice import advice
from faber_runlog._base.progress import is_terminal
from faber_runlog._domain.events import Event
from faber_runlog.errors import (
    FaberRunlogError,
    InvalidArgument,
    InvalidEvent,
    InvalidEventPosition,
    InvalidFilter,
    InvalidRerun,
    InvalidRunId,
    InvalidStoreUrl,
    UnsafePath,
)

__all__ = ["STORAGE_OPTIONS_ENV", "main"]

STORAGE_OPTIONS_ENV: Final = "FABER_RUNLOG_STORAGE_OPTIONS"
"""Environment variable holding fsspec storage options as JSON (endpoint, region; never needed for secrets)."""

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2


class UsageError(Exception):
    """The command line is wrong (exit code 2)."""


# -- argument helpers --------------------------------------------------------------------------


def _json_arg(text: str, what: str) -> Any:
    import json

    from faber_runlog._domain.events import check_json_value

    try:
        # The stdlib parser keeps big integers exact (orjson would turn them into floats), so the
        # same check as the Python API refuses what JSON readers cannot share.
        value = json.loads(text, parse_constant=lambda c: _refuse_constant(c, what))
    except ValueError as e:
        raise UsageError(f"{what} is not valid JSON ({e}): {text!r}") from e
    except RecursionError as e:  # the stdlib parser recurses once per level of nesting
        raise UsageError(f"{what} is nested too deeply to be a JSON value we store (at most 100 levels)") from e
    try:
        check_json_value(value, what)
    except InvalidEvent as e:
        raise UsageError(str(e)) from e
    return value


def _seconds(value: float | None, flag: str, *, positive: bool = False) -> None:
    """Refuse a duration option that is NaN, infinite, negative (or zero with ``positive``) or beyond a century."""
    if value is not None:
        try:
            _validate.seconds(value, flag, positive=positive)
        except InvalidArgument as e:
            raise UsageError(str(e)) from e


def _refuse_constant(name: str, what: str) -> Any:
    raise UsageError(f"{what} holds {name}; JSON has no NaN or Infinity, use null or a string")


def _json_object(text: str, what: str) -> dict[str, Any]:
    value = _json_arg(text, what)
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a JSON object, got {text!r}")
    return value


def _pairs(items: Sequence[str] | None, what: str, *, typed: bool = True) -> dict[str, Any]:
    """``k=v`` (v is a string) and ``k:=JSON`` (v is parsed) items as a dict."""
    out: dict[str, Any] = {}
    for item in items or ():
        if typed and ":=" in item and ("=" not in item or item.index(":=") < item.index("=")):
            key, _, raw = item.partition(":=")
            value = _json_arg(raw, f"{what} {key!r}")
        elif "=" in item:
            key, _, value = item.partition("=")
        else:
            hint = "k=v or k:=JSON" if typed else "k=v"
            raise UsageError(f"{what} {item!r} is not {hint}")
        if not key:
            raise UsageError(f"{what} {item!r} has an empty name")
        out[key] = value
    return out


def _storage_options(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.storage_options is not None:
        return _json_object(args.storage_options, "--storage-options")
    env = os.environ.get(STORAGE_OPTIONS_ENV)
    if env:
        return _json_object(env, f"${STORAGE_OPTIONS_ENV}")
    return None


# -- output helpers --------------------------------------------------------------------------------


def _dump(value: Any, out: TextIO) -> None:
    out.write(_codec.dumps_indented(value).decode())


def _where(phase: str | None, step: str | None) -> str:
    return "/".join(x for x in (phase, step) if x)


def _event_line(event: Event) -> str:
    detail = event.error_message or event.message or ""
    parts = [f"#{event.event_id:<5}", event.timestamp, f"{event.type:<18}", _where(event.phase, event.step)]
    line = " ".join(p for p in parts if p).rstrip()
    return f"{line}  {detail}" if detail else line


def _table(rows: list[list[str]], headers: list[str], out: TextIO) -> None:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        out.write("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


# -- context ----------------------------------------------------------------------------------------


class _Ctx:
    """The parsed arguments plus the gateway, opened on first use."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self._gateway: Any = None

    @property
    def gateway(self) -> Any:
        if self._gateway is None:
            from faber_runlog._services.gateway import Gateway

            options = _storage_options(self.args)
            self._gateway = Gateway.open(self.args.config, root=self.args.root, storage_options=options)
        return self._gateway

    @property
    def store(self) -> Any:
        return self.gateway.store

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    def close(self) -> None:
        if self._gateway is not None:
            self._gateway.close()


# -- the store and the run ids a command names (checked before the command runs) ---------------------

_CREATES_RUNS: Final = frozenset({"new", "import", "demo", "mcp"})
"""Commands that may create the store's folder (``init`` creates it too, and says so itself)."""
_NO_STORE: Final = frozenset({"init", "event-types"})
"""Commands that do not read the store named by --root."""
_RUN_ID_ARGS: Final = ("run_id", "run_a", "run_b")
_RUN_ID_LISTS: Final = ("run_ids", "run")


def _missing_local_root(ctx: _Ctx) -> str | None:
    """The store's folder when the store is a local folder that does not exist; else None."""
    from faber_runlog._storage.backends import LocalStorage

    storage = ctx.store.storage
    if isinstance(storage, LocalStorage) and not os.path.isdir(storage.root):
        return str(storage.root)
    return None


def _root_origin(ctx: _Ctx) -> str:
    if ctx.args.root is not None:
        return "--root"
    if ctx.gateway.config_path is not None:
        return f"the root in {ctx.gateway.config_path}"
    if os.environ.get("FABER_RUNLOG_ROOT"):
        return "$FABER_RUNLOG_ROOT"
    return "the default store folder"


def _check_root(ctx: _Ctx) -> str | None:
    """Refuse a store folder that does not exist, unless the command creates runs (then: the folder to report)."""
    if ctx.args.command in _NO_STORE:
        return None
    missing = _missing_local_root(ctx)
    if missing is None or ctx.args.command in _CREATES_RUNS:
        return missing
    from faber_runlog.errors import NotFound

    raise NotFound(
        f"no store at {missing} ({_root_origin(ctx)}): the folder does not exist; check the path, or create a "
        "run there with `faber-runlog new ORG PROJECT` (or `faber-runlog init` to set up a project)"
    )


def _resolve_run_ids(ctx: _Ctx) -> None:
    """Every RUN_ID argument as the full id it names (unique uuid prefix, bare uuid; close matches when none)."""
    a = ctx.args
    try:
        for name in _RUN_ID_ARGS:
            if isinstance(getattr(a, name, None), str):
                setattr(a, name, ctx.store.resolve_run_id(getattr(a, name)))
        for name in _RUN_ID_LISTS:
            if isinstance(getattr(a, name, None), list):
                setattr(a, name, [ctx.store.resolve_run_id(r) for r in getattr(a, name)])
    except FaberRunlogError:
        if ctx.gateway.enabled:
            raise
        # Logging is off: a writing command writes nothing and exits 0 whatever the id.


# -- commands -----------------------------------------------------------------------------------------


def _init_settings(a: argparse.Namespace, config_dir: Path) -> dict[str, Any]:
    """The gateway.json settings this ``init`` command line names (dotted paths); the others stay as they are."""
    from faber_runlog._services.store import check_store_url

    given: dict[str, Any] = {}
    if a.root is not None:
        root = str(a.root)
        check_store_url(root)
        if "://" not in root and not os.path.isabs(os.path.expanduser(root)):
            # Relative roots in gateway.json are read from its folder, not from where init ran.
            root = os.path.relpath(os.path.abspath(root), config_dir)
        given["root"] = root
    options = _storage_options(a)
    if options is not None:
        given["storage_options"] = options
    for key, value in (
        ("enabled", a.enabled),
        ("fsync", a.fsync),
        ("snapshot_every", a.snapshot_every),
        ("source", a.source),
        ("backends.s3_archive.prefix", a.s3_prefix),
        ("backends.s3_archive.auto_archive", a.auto_archive),
        ("backends.s3_archive.archive_on", a.archive_on),
    ):
        if value is not None:
            given[key] = value
    if a.s3_bucket is not None:
        given["backends.s3_archive.bucket"] = a.s3_bucket
        given["backends.s3_archive.enabled"] = True
    if a.s3_storage_options:
        given["backends.s3_archive.storage_options"] = _json_object(a.s3_storage_options, "--s3-storage-options")
    return given


def _merged_config(path: Path, given: dict[str, Any]) -> tuple[Any, str | None]:
    """The config to write: the old file's settings with ``given`` laid over them; and why an old one was dropped."""
    import copy

    from faber_runlog._services.gateway import GatewayConfig, load_config
    from faber_runlog.errors import InvalidGatewayConfig

    body = GatewayConfig().to_dict()
    dropped = None
    if path.exists():
        try:
            body = load_config(path).to_dict()
        except InvalidGatewayConfig as e:
            dropped = f"the old file was unusable ({e}); started from the defaults"
    body = copy.deepcopy(body)
    for dotted, value in given.items():
        *parents, leaf = dotted.split(".")
        node = body
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return GatewayConfig.from_dict(body, path=str(path)), dropped


def _cmd_init(ctx: _Ctx) -> int:
    import shutil

    from faber_runlog._services.gateway import CONFIG_PATH, Gateway, write_config
    from faber_runlog._storage.backends import LocalStorage

    a = ctx.args
    path = Path(a.config) if a.config else Path.cwd() / CONFIG_PATH
    config_dir = path.resolve().parent
    config, dropped = _merged_config(path, _init_settings(a, config_dir))
    backup = path.with_name(path.name + ".bak")
    existed = path.exists()
    old_body = path.read_bytes() if existed else None
    if existed and old_body != _codec.dumps_indented(config.to_dict()):
        shutil.copyfile(path, backup)  # the old file, byte for byte, before it is replaced
        changes = write_config(config, path)
    elif existed:
        changes = []
    else:
        changes = write_config(config, path)
    gateway = Gateway(config, base_dir=config_dir, config_path=path)
    storage = gateway.store.storage
    new_folder = isinstance(storage, LocalStorage) and not os.path.isdir(storage.root)
    storage.ensure_root()
    if new_folder:
        ctx.err.write(f"faber-runlog: created the store at {storage.root}\n")
    kept = str(backup) if changes else None
    if ctx.json:
        body = {"config": str(path), "created": changes is None, "changes": changes or [], "root": storage.url}
        _dump({**body, "backup": kept}, ctx.out)
        return EXIT_OK
    if dropped:
        ctx.err.write(f"faber-runlog: {path}: {dropped}\n")
    if changes is None:
        ctx.out.write(f"wrote {path}\n")
    elif changes:
        ctx.out.write(f"updated {path} (the old file is {backup}); changed:\n" + "".join(f"  {c}\n" for c in changes))
    else:
        ctx.out.write(f"kept {path} (no setting changed)\n")
    ctx.out.write(f"runs:    {storage.url}\nlogging: {'enabled' if config.enabled else 'disabled'}\n")
    return EXIT_OK


def _disabled(ctx: _Ctx, what: str) -> int:
    from faber_runlog._format.layout import CONFIG_NAME

    where = ctx.gateway.config_path or CONFIG_NAME
    ctx.err.write(f"faber-runlog: logging is disabled in {where}; {what}\n")
    if ctx.json:  # a script still gets one document: nothing was done, and why
        _dump({"logging": "disabled", "config": str(where), "written": False, "message": what}, ctx.out)
    return EXIT_OK


def _plan_args(items: Sequence[str] | None) -> dict[str, Any]:
    """``--phase NAME`` or ``--phase NAME:step1,step2`` items as create_run's ``phases``/``steps``."""
    if not items:
        return {}
    phases: list[str] = []
    steps: dict[str, list[str]] = {}
    for item in items:
        name, colon, rest = item.partition(":")
        if not name:
            raise UsageError(f"--phase {item!r} has no phase name; use NAME or NAME:step1,step2")
        phases.append(name)
        if colon:
            steps[name] = [s for s in rest.split(",") if s]
    return {"phases": phases, "steps": steps}


def _cmd_new(ctx: _Ctx) -> int:
    a = ctx.args
    run = ctx.gateway.new_run(
        a.org,
        a.project,
        _pairs(a.param, "--param"),
        _pairs(a.tag, "--tag", typed=False),
        concurrency_key=a.concurrency_key,
        **_plan_args(a.phase),
    )
    if run is None:
        return _disabled(ctx, "no run was created")
    if ctx.json:
        body = {"run_id": run.id, "params": run.metadata.params, "tags": run.metadata.tags}
        if run.metadata.phases:
            body.update(phases=run.metadata.phases, steps=run.metadata.steps)
        _dump(body, ctx.out)
    else:
        ctx.out.write(run.id + "\n")
    return EXIT_OK


def _cmd_emit(ctx: _Ctx) -> int:
    a = ctx.args
    metadata = _json_object(a.metadata, "--metadata") if a.metadata else {}
    metadata.update(_pairs(a.meta, "--meta"))
    fields: dict[str, Any] = {
        "phase": a.phase,
        "step": a.step,
        "status": a.status,
        "message": a.message,
        "error": a.error,
        "duration_ms": a.duration_ms,
        "metadata": metadata or None,
        "idempotency_key": a.idempotency_key,
        "user": a.user,
        "source": a.source,
    }
    from faber_runlog._frontends import actions as _actions

    failures: list[_actions.BackendFailure] = []
    event = _actions.emit(ctx.gateway, a.run_id, a.type, failures=failures, **fields)
    if event is None:
        return _disabled(ctx, "nothing was written")
    # A backend (the auto-archive) that failed after the event was recorded: the event stands, the command fails.
    problems = [f.message() for f in failures]
    if ctx.json:
        body = event.to_dict()
        _dump({**body, "backend_errors": problems} if problems else body, ctx.out)
    else:
        ctx.out.write(f"{event.event_id}\n")
    return _backend_errors(ctx, problems)


_FILTER_VALUE = re.compile(r"\b(since|until|ended_since|ended_until|limit|order|cursor)=")


def _flags(message: str) -> str:
    """A filter error in the command line's terms: ``ended_until='soon'`` becomes ``--ended-until 'soon'``."""
    return _FILTER_VALUE.sub(lambda m: "--" + m.group(1).replace("_", "-") + " ", message)


def _cmd_list(ctx: _Ctx) -> int:
    a = ctx.args
    try:
        runs = ctx.store.list_runs(
            org=a.org,
            project=a.project,
            status=a.status,
            tags=_pairs(a.tag, "--tag", typed=False),
            params=_pairs(a.param, "--param"),
            since=a.since,
            until=a.until,
            ended_since=a.ended_since,
            ended_until=a.ended_until,
            order=a.order,
            limit=a.limit,
            cursor=a.cursor,
        )
    except InvalidFilter:
        raise
    except InvalidArgument as e:  # a filter's value: the command line's mistake (exit 2)
        raise UsageError(_flags(str(e)).replace("list_runs()", "faber-runlog list")) from e
    if ctx.json:
        from faber_runlog._base.converter import converter

        rows = [converter.unstructure(r) for r in runs]
        # Paging asked for: the page and the cursor of the next one; else the plain list, as always.
        _dump({"runs": rows, "next_cursor": runs.next_cursor} if _paged(a) else rows, ctx.out)
        return EXIT_OK
    if runs.next_cursor is not None:
        ctx.err.write(f"more runs: add --cursor {runs.next_cursor} for the next page\n")
    if not runs:
        ctx.out.write(f"no runs in {ctx.store.url}\n")
        return EXIT_OK
    from faber_runlog._services.report import duration_text

    rows = [
        [
            r.run_id,
            r.status,
            str(r.last_event_id),
            _where(r.current_phase, r.current_step) or "-",
            r.created_at[:19],
            duration_text(_codec.ms_between(r.started_at, r.ended_at)) if r.ended_at is not None else "-",
        ]
        for r in runs
    ]
    _table(rows, ["RUN ID", "STATUS", "EVENTS", "AT", "CREATED", "TOOK"], ctx.out)
    return EXIT_OK


def _paged(a: argparse.Namespace) -> bool:
    """Whether ``faber-runlog list`` was asked for a page (``--limit`` or ``--cursor``)."""
    return a.limit is not None or a.cursor is not None


def _cmd_show(ctx: _Ctx) -> int:
    a = ctx.args
    if a.events < 0:
        raise UsageError(f"--events must be >= 0, got {a.events}")
    run = ctx.store.get_run(a.run_id)
    view = run.status_view(tail=a.events)
    meta = run.metadata
    if ctx.json:
        body = view.to_dict()
        body["events_tail"] = [e.to_dict() for e in view.events_tail]
        body["metadata"] = meta.to_dict()
        body["progress"] = view.progress
        _dump(body, ctx.out)
        return EXIT_OK
    w = ctx.out.write
    w(f"run:      {run.id}\n")
    reason = f" ({view.status_reason})" if view.status_reason else ""
    w(f"status:   {view.status}{reason}\n")
    if meta.parent_run_id:
        w(f"parent:   {meta.parent_run_id}\n")
    w(f"params:   {_codec.dumps(meta.params).decode()}\n")
    if meta.tags:
        w(f"tags:     {_codec.dumps(meta.tags).decode()}\n")
    w(f"created:  {meta.created_at}\nupdated:  {view.updated_at or '-'}\nevents:   {view.last_event_id}\n")
    if view.lease is not None:
        w(f"lease:    {view.lease.owner} until {view.lease.expires_at}\n")
    if view.phases:
        w(f"progress: {view.progress}\n")
        w("phases:\n")
        for phase in view.phases:
            steps = ", ".join(f"{s.name}={s.status}" for s in phase.steps.values())
            w(f"  {phase.name:<12} {phase.status:<12} {steps}\n".rstrip() + "\n")
    state = run.state()
    failed = state.failed_step
    if failed is not None:
        w(f"failed:   {failed.phase}/{failed.name}: {failed.error}\n")
    for approval in view.pending_approvals:
        w(f"waiting:  approval {approval.approval_id} ({approval.gate})\n")
    if view.events_tail:
        w("last events:\n")
        for event in view.events_tail:
            w(f"  {_event_line(event)}\n")
    return EXIT_OK


_UNTIL_END_STATUSES: Final = frozenset({"completed", "failed", "cancelled", "failing"})
"""Where ``tail --until-end`` stops: the run ended, or failed and waits for a resume or retry ("failing")."""


def _run_stopped(state: Any) -> bool:
    """Whether a follower should stop: no more events will come without someone acting on the run."""
    return state.status in _UNTIL_END_STATUSES


def _cmd_tail(ctx: _Ctx) -> int:
    from faber_runlog._domain.state import fold

    a = ctx.args
    if a.lines < 0:
        raise UsageError(f"-n/--lines must be >= 0, got {a.lines}: it counts the last events to show")
    if a.since is not None and a.since < 0:
        raise UsageError(f"--since must be an event id >= 0, got {a.since}")
    _seconds(a.poll, "--poll", positive=True)
    _seconds(a.timeout, "--timeout")
    run = ctx.store.get_run(a.run_id)
    since = a.since if a.since is not None else max(0, run.state().last_event_id - a.lines)
    emit_line: Callable[[Event], None]
    if ctx.json:

        def emit_line(event: Event) -> None:
            ctx.out.write(_codec.dumps(event.to_dict()).decode() + "\n")
            ctx.out.flush()

    else:

        def emit_line(event: Event) -> None:
            ctx.out.write(_event_line(event) + "\n")
            ctx.out.flush()

    last = since
    for event in run.log.read(since):
        emit_line(event)
        last = event.event_id
    if not a.follow:
        return EXIT_OK
    # The state is folded along as events arrive, so --until-end needs no extra reads.
    state = run.state(at=last)
    if a.until_end and _run_stopped(state):
        return EXIT_OK
    if is_terminal(ctx.err):
        ctx.err.write(f"following {run.id}; press Ctrl-C to stop\n")
        ctx.err.flush()
    try:
        for event in run.log.tail(last, poll_interval=a.poll, timeout=a.timeout):
            emit_line(event)
            state = fold(state, event)
            if a.until_end and _run_stopped(state):
                break
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a follow normally ends
    return EXIT_OK


def _plan_lines(plan: Any) -> list[str]:
    last = f"event {plan.last_event_id} ({plan.last_event_type})" if plan.last_event_type else "no events"
    lines = [f"run:        {plan.run_id}", f"status:     {plan.status}, last {last}"]
    lines.append(f"resumable:  {'yes' if plan.resumable else 'no: ' + str(plan.reason)}")
    if plan.failed_step or plan.failed_phase:
        lines.append(f"failed at:  {_where(plan.failed_phase, plan.failed_step)}: {plan.error or ''}".rstrip(": "))
    start = _where(plan.resume_phase, plan.resume_step)
    lines.append(f"resume at:  {start or '(nothing left to run)'}")
    if plan.skip:
        lines.append("skip:       " + ", ".join(f"{p}/{s}" for p, s in plan.skip))
    return lines


def _cmd_resume(ctx: _Ctx) -> int:
    from faber_runlog._services.resume import Resumer

    a = ctx.args
    resumer = Resumer(ctx.store)  # resume means one thing here: go on after a failure (a pause ends with unpause)
    if a.dry_run:
        plan = resumer.plan(a.run_id, allow_cancelled=a.allow_cancelled)
        event = None
    else:
        if not ctx.gateway.enabled:
            return _disabled(ctx, "the run was not resumed")
        _, plan, event = resumer.resume_with_plan(a.run_id, allow_cancelled=a.allow_cancelled)
    if ctx.json:
        body = plan.to_dict()
        body["resumed_event_id"] = None if event is None else event.event_id
        _dump(body, ctx.out)
        return EXIT_OK
    lines = _plan_lines(plan)
    if event is not None:
        lines.insert(0, f"resumed: workflow_resumed is event {event.event_id}")
    ctx.out.write("\n".join(lines) + "\n")
    return EXIT_OK


def _cmd_rerun(ctx: _Ctx) -> int:
    from faber_runlog._services.resume import Resumer

    a = ctx.args
    if a.mode == "from_event" and a.from_event is None:
        raise UsageError("--mode from_event needs --from-event N")
    if not ctx.gateway.enabled:
        return _disabled(ctx, "no run was created")
    child = Resumer(ctx.store).rerun(
        a.run_id,
        _pairs(a.param, "--param"),
        mode=a.mode or "all",
        from_event=a.from_event,
        tags=_pairs(a.tag, "--tag"),
    )
    first = next(iter(child.log.read(0, limit=1)), None)
    diff = (first.metadata.get("diff") if first is not None else None) or {}
    if ctx.json:
        _dump({"run_id": child.id, "parent_run_id": a.run_id, "mode": a.mode or "all", "diff": diff}, ctx.out)
        return EXIT_OK
    ctx.out.write(child.id + "\n")
    _write_diff(ctx.out, diff)
    return EXIT_OK


def _cmd_reindex(ctx: _Ctx) -> int:
    a = ctx.args
    reports = (ctx.store.verify_index if a.check else ctx.store.reindex)(org=a.org, project=a.project)
    if ctx.json:
        keys = ("org", "project", "added", "corrected", "removed", "closed", "started", "copied", "ok")
        _dump([{k: getattr(r, k) for k in keys} for r in reports], ctx.out)
    else:
        for r in reports:
            verb = "differs" if a.check else "fixed"
            what = f"{len(r.added)} added, {len(r.corrected)} corrected, {len(r.removed)} removed, {r.closed} closed"
            state = "ok" if r.ok else f"{verb}: {what}{' (no index yet)' if r.started else ''}"
            if r.copied:
                done = "would get" if a.check else "got"
                state += f"; {r.copied} index part(s) {done} their Parquet copy"
            ctx.out.write(f"{r.org}/{r.project}: {state}\n")
    return EXIT_FAILED if a.check and not all(r.ok for r in reports) else EXIT_OK


def _cmd_verify(ctx: _Ctx) -> int:
    from faber_runlog._services.resume import Resumer

    a = ctx.args
    resumer = Resumer(ctx.store)
    report = resumer.verify(a.run_id)
    rebuilt = resumer.reconstruct(a.run_id, repair=a.repair)[1] if a.reconstruct or a.repair else None
    ok = report.ok and (rebuilt is None or rebuilt.ok or rebuilt.repaired)
    if ctx.json:
        body: dict[str, Any] = {"ok": ok, "events": report.to_dict()}
        if rebuilt is not None:
            body["state"] = rebuilt.to_dict()
        _dump(body, ctx.out)
        return EXIT_OK if ok else EXIT_FAILED
    w = ctx.out.write
    if report.ok:
        w(f"run {report.run_id}: {report.events} events, ids 1..{report.last_event_id} gapless and valid\n")
        if report.unknown_types:  # never an error: declare them (gateway.json event_types) to check their schema
            w(f"  types not declared here (base schema checked): {', '.join(report.unknown_types)}\n")
    else:
        w(f"run {report.run_id}: {len(report.problems)} problem(s) in {report.events} event files\n")
        for p in report.problems:
            w(f"  {p.kind}: {p.message}\n")
    if rebuilt is not None:
        if rebuilt.ok:
            w(f"state.json and snapshots agree with the events (through event {rebuilt.last_event_id})\n")
        else:
            fixed = " (repaired)" if rebuilt.repaired else "; run with --repair to rewrite them"
            summary = "" if rebuilt.summary in ("ok", "stale") else f"summary.json is {rebuilt.summary}, "
            w(
                f"state.json is {rebuilt.stored}, {summary}bad snapshots: {list(rebuilt.bad_snapshots)}, "
                f"bad segments: {[f'{a}..{b}' for a, b in rebuilt.bad_segments]}{fixed}\n"
            )
            for d in rebuilt.differences[:20]:
                w(f"  {d.path}: stored {d.stored!r}, events say {d.rebuilt!r}\n")
    return EXIT_OK if ok else EXIT_FAILED


def _cmd_archive(ctx: _Ctx) -> int:
    from faber_runlog._services.archive import Archiver

    a = ctx.args
    if not a.run_ids and not a.all_finished:
        raise UsageError("name the runs to archive, or pass --all-finished")
    if a.run_ids and a.all_finished:
        raise UsageError("pass run ids or --all-finished, not both")
    destination = _archive_destination(ctx)
    if a.older_than is not None:
        try:
            _validate.days(a.older_than, "--older-than")
        except InvalidArgument as e:
            raise UsageError(str(e)) from e
    archiver = Archiver(ctx.store, destination, progress=False if ctx.json else None)
    results = archiver.archive_finished(older_than=a.older_than) if a.all_finished else archiver.archive_many(a.run_ids)
    failed = [r for r in results if not r.ok]
    if ctx.json:
        _dump(
            [
                {
                    "run_id": r.run_id,
                    "outcome": r.outcome,
                    "error": None if r.error is None else str(r.error),
                    "record": None if r.record is None else r.record.to_dict(),
                }
                for r in results
            ],
            ctx.out,
        )
    else:
        for r in results:
            detail = f": {r.error}" if r.error is not None else ""
            ctx.out.write(f"{r.outcome:<17} {r.run_id}{detail}\n")
        ctx.out.write(f"{len(results) - len(failed)} of {len(results)} run(s) in {destination.url}\n")
    return EXIT_FAILED if failed else EXIT_OK


def _cmd_report(ctx: _Ctx) -> int:
    from faber_runlog._domain.state import TERMINAL_STATUSES
    from faber_runlog._services.report import compose_report, render_markdown

    a = ctx.args
    run = ctx.store.get_run(a.run_id)
    if a.write:
        status = run.state().status
        if status not in TERMINAL_STATUSES:
            raise FaberRunlogError(
                f"run {run.id} is {status}: its final report is written when it ends (completed, failed or "
                "cancelled); leave out --write to see the report so far"
            )
        report = run.write_report()
    else:
        report = run.read_report() or compose_report(ctx.store.storage, run.log)
    if a.format == "html":
        text = run.report_html()
        if a.output:
            with open(a.output, "w", encoding="utf-8") as f:
                f.write(text)
            if ctx.json:
                _dump({"run_id": run.id, "format": "html", "path": a.output, "bytes": len(text.encode())}, ctx.out)
            else:
                ctx.out.write(f"wrote {a.output}\n")
        elif ctx.json:
            _dump({"run_id": run.id, "format": "html", "html": text}, ctx.out)
        else:
            ctx.out.write(text)
        return EXIT_OK
    if ctx.json:
        _dump(report, ctx.out)
    else:
        ctx.out.write(render_markdown(report))
    return EXIT_OK


def _cmd_ui(ctx: _Ctx) -> int:
    from faber_runlog._frontends.viewer import serve

    serve(ctx.store, host=ctx.args.host, port=ctx.args.port, out=ctx.err)
    return EXIT_OK


def _cmd_demo(ctx: _Ctx) -> int:
    from faber_runlog._frontends.demo import run_demo

    if not ctx.json:
        run_demo(ctx.store, out=ctx.out)
        return EXIT_OK
    import io

    run = ctx.store.get_run(run_demo(ctx.store, out=io.StringIO()))
    view = run.status_view(tail=0)
    events = [e.to_dict() for e in run.log.read()]
    _dump({"store": ctx.store.url, "run_id": run.id, "status": view.status, "events": events}, ctx.out)
    return EXIT_OK


def _cmd_import(ctx: _Ctx) -> int:
    from faber_runlog._faber.convert import import_faber

    a = ctx.args
    options = _json_object(a.source_storage_options, "--source-storage-options") if a.source_storage_options else None
    report = import_faber(
        a.path, ctx.store, plan_org=a.plan_org, storage_options=options, progress=not ctx.json and sys.stderr.isatty()
    )
    if ctx.json:
        _dump(report.to_dict(), ctx.out)
    else:
        ctx.out.write("".join(line + "\n" for line in report.lines()))
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_export_otlp(ctx: _Ctx) -> int:
    from faber_runlog.otel import send_otlp

    a = ctx.args
    run = ctx.store.get_run(a.run_id)
    trace_id = send_otlp(run, a.endpoint)
    if ctx.json:
        _dump({"run_id": run.id, "trace_id": trace_id, "endpoint": a.endpoint}, ctx.out)
    else:
        ctx.out.write(f"sent run {run.id} as trace {trace_id}\n")
    return EXIT_OK


def _cmd_export(ctx: _Ctx) -> int:
    from faber_runlog._faber.convert import export_faber

    a = ctx.args
    if a.format == "otlp":
        return _cmd_export_otlp(ctx)
    if a.format in ("jsonl", "csv"):
        return _cmd_export_events(ctx)
    if a.dest is None:
        raise UsageError("export --format faber needs DEST, the FABER base folder to write the run into")
    options = _json_object(a.dest_storage_options, "--dest-storage-options") if a.dest_storage_options else None
    result = export_faber(
        ctx.store, a.run_id, a.dest, storage_options=options, overwrite=a.overwrite, id_form=a.id_form
    )
    if ctx.json:
        _dump(result.to_dict(), ctx.out)
    else:
        ctx.out.write(f"exported {result.events} events of {result.run_id} to {result.path}\n")
    return EXIT_OK


def _cmd_mcp(ctx: _Ctx) -> int:
    from faber_runlog._frontends.mcp_server import serve

    serve(ctx.gateway)
    return EXIT_OK


# -- lifecycle: every checked transition and approval decision (faber_runlog._frontends.actions) -------------------
#
# Each command goes through the same Run.* method as Python code, so a refused
# transition writes nothing and says why; the event then reaches the gateway's
# other backends as an emitted one would.


def _done(
    ctx: _Ctx, action: str, event: Event | None, failures: list[Any] | None = None, extra: dict[str, Any] | None = None
) -> int:
    if event is None:
        return _disabled(ctx, "nothing was written")
    status = ctx.store.get_run(ctx.args.run_id).state().status
    # A backend (the archive) that failed after the event was recorded: the action stands, the command fails.
    problems: list[str] = [f.message() for f in failures or ()]
    if ctx.json:
        body = {
            "run_id": ctx.args.run_id,
            "action": action,
            "event_id": event.event_id,
            "status": status,
            "event": event.to_dict(),
            **(extra or {}),
        }
        _dump({**body, "backend_errors": problems} if problems else body, ctx.out)
    else:
        ctx.out.write(f"{action}: {event.type} is event {event.event_id}; the run is now {status}\n")
    return _backend_errors(ctx, problems)


def _backend_errors(ctx: _Ctx, problems: list[str]) -> int:
    """Each backend failure on stderr (run, recorded event, what failed, what to do); exit 1 when there are any."""
    for problem in problems:
        ctx.err.write(f"faber-runlog: error: {problem}\n")
    return EXIT_FAILED if problems else EXIT_OK


def _cmd_transition(ctx: _Ctx) -> int:
    from faber_runlog._frontends import actions as _actions

    a = ctx.args
    fields = {k: getattr(a, k, None) for k in ("reason", "summary", "error", "phase", "step")}
    failures: list[_actions.BackendFailure] = []
    event = _actions.perform(ctx.gateway, a.run_id, a.action, failures=failures, **fields)
    return _done(ctx, a.action, event, failures)


def _cmd_request_approval(ctx: _Ctx) -> int:
    from faber_runlog._frontends import actions as _actions

    a = ctx.args
    payload = _json_object(a.payload, "--payload") if a.payload else None
    failures: list[_actions.BackendFailure] = []
    event = _actions.request_approval(
        ctx.gateway, a.run_id, a.gate, phase=a.phase, payload=payload, approval_id=a.approval_id, failures=failures
    )
    extra = {"approval_id": event.metadata["approval_id"]} if event is not None else None
    code = _done(ctx, "request_approval", event, failures, extra=extra)
    if event is not None and not ctx.json:
        ctx.out.write(f"approval id: {event.metadata['approval_id']}\n")
    return code


def _cmd_decide(ctx: _Ctx) -> int:
    import uuid

    from faber_runlog._frontends import actions as _actions

    a = ctx.args
    # Without --token each call is a new decision; pass one to make a retried command safe.
    token = a.token or f"cli-{uuid.uuid4().hex}"
    failures: list[_actions.BackendFailure] = []
    event = _actions.decide(
        ctx.gateway,
        a.run_id,
        a.approval_id,
        a.action,
        client_token=token,
        comment=a.comment,
        user=a.user,
        failures=failures,
    )
    return _done(ctx, a.action, event, failures)


def _cmd_sweep(ctx: _Ctx) -> int:
    a = ctx.args
    _seconds(a.older_than, "--older-than")
    if not ctx.gateway.enabled:
        return _disabled(ctx, "nothing was swept")
    swept = ctx.store.sweep_stale(a.older_than, run_ids=a.run or None, include_unleased=a.include_unleased)
    if ctx.json:
        _dump([s.to_dict() for s in swept], ctx.out)
        return EXIT_OK
    for s in swept:
        owner = f" (lease of {s.lease_owner} expired {s.lease_expired_at})" if s.lease_owner else ""
        ctx.out.write(f"failed {s.run_id}: was {s.previous_status}, workflow_error is event {s.event_id}{owner}\n")
    ctx.out.write(f"{len(swept)} stale run(s) failed\n")
    return EXIT_OK


def _add_lifecycle_commands(sub: Any, js: argparse.ArgumentParser) -> None:
    """The lifecycle commands: start, pause, cancel, complete, fail, retry/skip, approvals, sweep."""
    simple = {
        "start": "created -> running (appends workflow_start)",
        "pause": "pause a run; unpause returns it to where it was",
        "unpause": "paused -> where it was paused (appends workflow_resumed)",
        "cancel": "cancel an active run (closes pending approvals, writes the final report)",
        "complete": "complete a running run (writes the final report)",
        "fail": "fail a run for good (writes the final report)",
    }
    for name, text in simple.items():
        p = sub.add_parser(name, parents=[js], help=text, description=text)
        p.add_argument("run_id")
        if name in ("pause", "unpause", "cancel", "fail"):
            p.add_argument("--reason", help="why, recorded on the event")
        if name == "complete":
            p.add_argument("--summary", help="a closing summary, recorded on the event")
        if name == "fail":
            p.add_argument("--error", required=True, help="what went wrong")
        p.set_defaults(func=_cmd_transition, action=name)
    for name, text in {
        "retry-step": "try a failed or cancelled step again",
        "skip-step": "skip a step that is not running or completed",
        "retry-phase": "run a failed or cancelled phase again",
        "skip-phase": "skip a phase that has not completed",
    }.items():
        p = sub.add_parser(name, parents=[js], help=text, description=text)
        p.add_argument("run_id")
        p.add_argument("phase")
        if name.endswith("-step"):
            p.add_argument("step")
        if name != "retry-phase":
            p.add_argument("--reason", help="why, recorded on the event")
        p.set_defaults(func=_cmd_transition, action=name.replace("-", "_"))

    p = sub.add_parser("request-approval", parents=[js], help="open an approval gate; prints its approval id")
    p.add_argument("run_id")
    p.add_argument("gate", help="what is being approved, e.g. deploy")
    p.add_argument("--phase", help="the phase the gate belongs to")
    p.add_argument("--payload", metavar="JSON", help="what the approver sees, as a JSON object")
    p.add_argument("--approval-id", help="a stable id: asking again with it is safe")
    p.set_defaults(func=_cmd_request_approval)
    for name, text in {
        "approve": "approve a pending approval (the run goes on)",
        "reject": "reject a pending approval (the run fails)",
        "request-changes": "send the gated phase back (the run goes on)",
    }.items():
        p = sub.add_parser(name, parents=[js], help=text, description=text)
        p.add_argument("run_id")
        p.add_argument("approval_id", help="as printed by request-approval or show")
        p.add_argument("--token", help="client token: the same token repeats the same decision safely")
        p.add_argument("--comment")
        p.add_argument("--user", help="who decided")
        p.set_defaults(func=_cmd_decide, action=name.replace("-", "_"))

    p = sub.add_parser("sweep", parents=[js], help="fail active runs whose writer's lease expired")
    p.add_argument("--older-than", type=_finite, default=0.0, metavar="S", help="lease expired S seconds ago or more")
    p.add_argument("--run", action="append", metavar="RUN_ID", help="only this run (repeatable)")
    p.add_argument("--include-unleased", action="store_true", help="also runs with no lease, idle for --older-than")
    p.set_defaults(func=_cmd_sweep)


# -- lineage, leases, retention, event types and event files (issue 21: what Python has, the CLI has) -----


def _cmd_diff(ctx: _Ctx) -> int:
    from faber_runlog._services.resume import Resumer

    a = ctx.args
    diff = Resumer(ctx.store).diff(a.run_a, a.run_b)
    if ctx.json:
        _dump({"run_a": a.run_a, "run_b": a.run_b, **diff.to_dict()}, ctx.out)
        return EXIT_OK
    if not diff:
        ctx.out.write(f"same params in {a.run_a} and {a.run_b}\n")
    _write_diff(ctx.out, diff.to_dict())
    return EXIT_OK


def _write_diff(out: TextIO, diff: dict[str, Any]) -> None:
    """``+ added``, ``- removed``, ``~ changed: old -> new`` lines of a parameter diff (as ``rerun`` prints)."""
    for key, value in sorted((diff.get("added") or {}).items()):
        out.write(f"  + {key} = {_codec.dumps(value).decode()}\n")
    for key, value in sorted((diff.get("removed") or {}).items()):
        out.write(f"  - {key} (was {_codec.dumps(value).decode()})\n")
    for key, change in sorted((diff.get("changed") or {}).items()):
        old, new = _codec.dumps(change["old"]).decode(), _codec.dumps(change["new"]).decode()
        out.write(f"  ~ {key}: {old} -> {new}\n")


def _cmd_children(ctx: _Ctx) -> int:
    a = ctx.args
    ids = list(ctx.store.lineage(a.run_id).descendants) if a.all else ctx.store.children(a.run_id)
    if ctx.json:
        _dump(ids, ctx.out)
    else:
        ctx.out.write("".join(f"{i}\n" for i in ids) or f"no runs were re-run from {a.run_id}\n")
    return EXIT_OK


def _cmd_heartbeat(ctx: _Ctx) -> int:
    import socket

    from faber_runlog._base.ids import RunId
    from faber_runlog._log.lease import try_acquire_lease

    a = ctx.args
    if a.ttl is not None:
        _seconds(a.ttl, "--ttl", positive=True)
    if not ctx.gateway.enabled:
        return _disabled(ctx, "no lease was written")
    run = ctx.store.get_run(a.run_id)
    owner = a.owner or f"faber-runlog@{socket.gethostname()}"
    ttl = ctx.store.lease_ttl if a.ttl is None else a.ttl
    if a.take_over:
        lease = run.heartbeat(ttl=ttl, owner=owner)
    else:
        lease = try_acquire_lease(ctx.store.storage, RunId.parse(run.id), ttl=ttl, owner=owner)
        if lease is None:
            from faber_runlog.errors import Refused

            holder = run.status_view(tail=0).lease
            who = f"{holder.owner} until {holder.expires_at}" if holder is not None else "another writer"
            raise Refused(
                f"run {run.id} is leased by {who}; pass --owner with that name to renew it, or --take-over to "
                "fence that writer out"
            )
    if ctx.json:
        from faber_runlog._base.converter import converter

        _dump({"run_id": run.id, "lease": converter.unstructure(lease)}, ctx.out)
    else:
        ctx.out.write(f"lease of {lease.owner} on {run.id} until {lease.expires_at} (epoch {lease.epoch})\n")
    return EXIT_OK


def _archive_destination(ctx: _Ctx) -> Any:
    """The archive store: ``--to URL`` (``--to-storage-options``), else gateway.json's ``s3_archive``."""
    from faber_runlog._services.store import RunStore

    a = ctx.args
    if a.to is not None:
        options = _json_object(a.to_storage_options, "--to-storage-options") if a.to_storage_options else None
        return RunStore(a.to, storage_options=options)
    settings = ctx.gateway.config.s3_archive
    if settings.url is None:
        raise UsageError("no archive destination: pass --to URL, or set backends.s3_archive.bucket in gateway.json")
    return RunStore(settings.url, storage_options=dict(settings.storage_options) or None)


def _cmd_cleanup(ctx: _Ctx) -> int:
    from faber_runlog._services.archive import Archiver, RetentionPolicy

    a = ctx.args
    try:
        policy = RetentionPolicy(keep_days=a.keep_days, keep_failed=a.keep_failed)
    except InvalidArgument as e:
        raise UsageError(str(e).replace("RetentionPolicy keep_days", "--keep-days")) from e
    archiver = Archiver(ctx.store, _archive_destination(ctx), progress=False if ctx.json else None)
    report = archiver.cleanup(policy, dry_run=not a.yes, org=a.org, project=a.project)
    if ctx.json:
        items = [{"run_id": i.run_id, "action": i.action, "reason": i.reason, "files": i.files} for i in report.items]
        _dump({"dry_run": report.dry_run, "items": items}, ctx.out)
        return EXIT_OK
    for i in report.items:
        verb = ("would remove" if report.dry_run else "removed") if i.action == "remove" else "keep"
        ctx.out.write(f"{verb:<13} {i.run_id}: {i.files} event file(s); {i.reason}\n")
    n = len(report.removed)
    if report.dry_run:
        ctx.out.write(f"dry run: {n} archived run(s) would lose their event files; pass --yes to remove them\n")
    else:
        ctx.out.write(f"{n} archived run(s) cleaned up (events.jsonl, state and reports kept)\n")
    return EXIT_OK


def _cmd_event_types(ctx: _Ctx) -> int:
    from faber_runlog._domain.events import BUILTIN_EVENT_TYPES, type_version
    from faber_runlog._domain.registry import event_types_table

    registry = ctx.gateway.registry  # the built-in types, entry points and gateway.json's declarations
    table = event_types_table(registry)
    builtin = set(BUILTIN_EVENT_TYPES)
    rows = [
        {"type": name, "version": type_version(name, table), "builtin": name in builtin}
        for name in registry.event_types()
    ]
    if ctx.json:
        _dump(rows, ctx.out)
    else:
        cells = [[str(r["type"]), str(r["version"]), "built-in" if r["builtin"] else "registered"] for r in rows]
        _table(cells, ["TYPE", "VERSION", "KIND"], ctx.out)
    return EXIT_OK


_CSV_FIELDS: Final = (
    "event_id", "timestamp", "type", "phase", "step", "status", "message", "error", "duration_ms", "user",
    "source", "idempotency_key", "metadata",
)  # fmt: skip  # a table of column names


def _cmd_export_events(ctx: _Ctx) -> int:
    """``export RUN --format jsonl|csv [DEST]``: the run's events, one per line or row, to DEST or stdout."""
    import csv
    import io

    a = ctx.args
    run = ctx.store.get_run(a.run_id)
    buffer = io.StringIO()
    count = 0
    if a.format == "jsonl":
        for event in run.log.read(0):
            buffer.write(_codec.dumps(event.to_dict()).decode() + "\n")
            count += 1
    else:
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(_CSV_FIELDS)
        for event in run.log.read(0):
            body = event.to_dict()
            cells = [body.get(f) for f in _CSV_FIELDS]
            writer.writerow(
                ["" if c is None else _codec.dumps(c).decode() if isinstance(c, dict | list) else c for c in cells]
            )
            count += 1
    to_stdout = a.dest is None or a.dest == "-"
    if to_stdout and ctx.json:  # one JSON document: the events themselves (CSV is no JSON: give DEST for it)
        if a.format == "csv":
            raise UsageError("export --format csv --json: CSV is not JSON; give DEST to write the CSV to a file")
        _dump({"run_id": run.id, "format": a.format, "events": [e.to_dict() for e in run.log.read(0)]}, ctx.out)
        return EXIT_OK
    if to_stdout:
        ctx.out.write(buffer.getvalue())
        return EXIT_OK
    with open(a.dest, "w", encoding="utf-8", newline="") as f:
        f.write(buffer.getvalue())
    if ctx.json:
        _dump({"run_id": run.id, "format": a.format, "path": a.dest, "events": count}, ctx.out)
    else:
        ctx.err.write(f"wrote {count} events of {run.id} to {a.dest}\n")
    return EXIT_OK


def _add_more_commands(sub: Any, js: argparse.ArgumentParser) -> None:
    """diff, children, heartbeat, cleanup, event-types: what the Python API has, on the command line."""
    p = sub.add_parser("diff", parents=[js], help="how the params of RUN_B differ from those of RUN_A")
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    p.set_defaults(func=_cmd_diff)

    p = sub.add_parser("children", parents=[js], help="the runs re-run from a run (its children), oldest first")
    p.add_argument("run_id")
    p.add_argument("--all", action="store_true", help="every descendant, not only the direct children")
    p.set_defaults(func=_cmd_children)

    p = sub.add_parser("heartbeat", parents=[js], help="take or renew a run's writer lease once")
    p.add_argument("run_id")
    p.add_argument("--owner", help="the lease owner (default faber-runlog@HOSTNAME); the same owner renews")
    p.add_argument("--ttl", type=_finite, metavar="S", help="seconds the lease lasts (default: the store's)")
    p.add_argument("--take-over", action="store_true", help="take the lease from another live owner (fences it)")
    p.set_defaults(func=_cmd_heartbeat)

    p = sub.add_parser("cleanup", parents=[js], help="remove event files of archived runs (dry run unless --yes)")
    p.add_argument("--keep-days", type=_finite, default=0.0, metavar="DAYS", help="keep runs archived < DAYS ago")
    p.add_argument("--keep-failed", action="store_true", help="keep failed runs' event files")
    p.add_argument("--org")
    p.add_argument("--project")
    p.add_argument("--yes", action="store_true", help="really remove them (default: only list what would go)")
    p.add_argument("--to", metavar="URL", help="the archive (default: gateway.json's s3_archive)")
    p.add_argument("--to-storage-options", metavar="JSON", help="storage options of --to (no secrets)")
    p.set_defaults(func=_cmd_cleanup)

    p = sub.add_parser("event-types", parents=[js], help="the event types this process knows, with their versions")
    p.set_defaults(func=_cmd_event_types)


# -- the parser -------------------------------------------------------------------------------------------


class _BadCommandLine(Exception):
    """argparse refused the command line; the one line to print on the caller's stderr (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line of stderr like every other error (``--help`` shows the usage)."""

    def error(self, message: str) -> NoReturn:
        where = f"{self.prog.split()[0]}: error: "  # the same prefix as every other error, in any command
        raise _BadCommandLine(f"{where}{' '.join(message.split())} (see {self.prog} --help)\n")


class _IntermixedParser(_Parser):
    """A command whose optional positional may follow its options (``export RUN --format faber DEST``).

    Plain argparse assigns positionals in the first run of them it meets, so an optional
    ``DEST`` after ``--format faber`` was "unrecognized"; intermixed parsing assigns them last.
    """

    _mixing = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._mixing:  # parse_known_intermixed_args calls back here for its two passes
            return super().parse_known_args(args, namespace)
        self._mixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False


def _add_global_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """The options every command takes, before the command (``faber-runlog --root X list``) or after it.

    One definition for both places: after the command their default is ``SUPPRESS``, so a value
    given before the command is not overwritten by the command's own default.
    """
    keep: dict[str, Any] = {"default": argparse.SUPPRESS} if after_command else {}
    group = parser.add_argument_group("global options (before or after the command)")
    group.add_argument(
        "--root",
        help="store root: a folder or any fsspec URL (default: gateway.json's root, "
        "else $FABER_RUNLOG_ROOT, else .faber_runlog/runs)",
        **keep,
    )
    group.add_argument(
        "--storage-options",
        metavar="JSON",
        help="fsspec storage options as JSON, e.g. "
        f'\'{{"endpoint_url": "http://..."}}\' (or ${STORAGE_OPTIONS_ENV}); credentials come '
        "from the environment",
        **keep,
    )
    group.add_argument(
        "--config",
        metavar="PATH",
        help="gateway.json to use (default: $FABER_RUNLOG_CONFIG, else the nearest .faber_runlog/gateway.json)",
        **keep,
    )
    group.add_argument("--debug", action="store_true", help="show tracebacks", **keep)


def _whole(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number >= ``minimum`` (a negative count or limit is bad usage)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _finite(text: str) -> float:
    """An argparse ``type``: a finite number >= 0 (no NaN, no infinity, no negative duration)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or not 0 <= value <= _validate.MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 and at most a century, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="faber-runlog",
        description="Run ids, event logs and run state on a local folder or any fsspec URL.",
        epilog="Exit codes: 0 ok, 1 the operation failed, 2 bad usage. `faber-runlog COMMAND --help` shows a "
        "command's options.",
    )
    _add_global_options(parser, after_command=False)
    from faber_runlog._version import __version__

    parser.add_argument("--version", action="version", version=f"faber-runlog {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    js = _Parser(add_help=False)
    js.add_argument("--json", action="store_true", help="print JSON for scripts")

    p = sub.add_parser(
        "init", parents=[js], help="write gateway.json (merging into an existing one) and create the runs folder"
    )
    p.add_argument("--disabled", dest="enabled", action="store_false", default=None, help="turn logging off")
    p.add_argument("--enabled", dest="enabled", action="store_true", default=None, help="turn logging back on")
    p.add_argument("--snapshot-every", type=_whole(1), metavar="N", help="write state.json every N events")
    p.add_argument(
        "--fsync", action=argparse.BooleanOptionalAction, help="fsync event files (--no-fsync: faster, less durable)"
    )
    p.add_argument("--source", help="the 'source' of events written through the gateway")
    p.add_argument("--s3-bucket", help="enable the s3_archive backend with this bucket")
    p.add_argument("--s3-prefix", help="key prefix in the archive bucket (default faber/runs)")
    p.add_argument("--s3-storage-options", metavar="JSON", help="storage options of the archive (no secrets)")
    p.add_argument(
        "--auto-archive",
        action=argparse.BooleanOptionalAction,
        help="archive finished runs at once (--no-auto-archive: only when asked, faber-runlog archive)",
    )
    p.add_argument(
        "--archive-on",
        nargs="+",
        choices=["workflow_complete", "workflow_cancelled", "workflow_error"],
        help="events that archive a run automatically",
    )
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser("new", parents=[js], help="create a run and print its id")
    p.add_argument("org")
    p.add_argument("project")
    p.add_argument("--param", action="append", metavar="K=V", help="a parameter (K:=JSON for a typed value)")
    p.add_argument("--tag", action="append", metavar="K=V", help="a tag")
    p.add_argument("--concurrency-key", help="refuse to start while another active run holds this key")
    p.add_argument(
        "--phase",
        action="append",
        metavar="NAME[:STEPS]",
        help="a planned phase, in order (repeat it); NAME:step1,step2 also plans its steps",
    )
    p.set_defaults(func=_cmd_new)

    p = sub.add_parser("emit", parents=[js], help="append one event to a run and print its id")
    p.add_argument("run_id")
    p.add_argument("type", help="event type, e.g. step_start")
    for name in ("phase", "step", "status", "message", "error", "user", "source"):
        p.add_argument(f"--{name}")
    p.add_argument("--duration-ms", type=_finite)
    p.add_argument("--metadata", metavar="JSON", help="metadata object as JSON")
    p.add_argument("--meta", action="append", metavar="K=V", help="one metadata entry (K:=JSON for a typed value)")
    p.add_argument("--idempotency-key", help="append at most once per key")
    p.set_defaults(func=_cmd_emit)

    p = sub.add_parser("list", parents=[js], help="list runs (reads no events)")
    p.add_argument("--org")
    p.add_argument("--project")
    p.add_argument("--status", help="e.g. running, failed, completed")
    p.add_argument("--tag", action="append", metavar="K=V")
    p.add_argument("--param", action="append", metavar="K=V", help="runs with this param (K:=JSON for a typed value)")
    p.add_argument("--since", metavar="TIME", help="runs created at or after TIME (ISO 8601, e.g. 2026-01-31)")
    p.add_argument("--until", metavar="TIME", help="runs created before TIME")
    p.add_argument("--ended-since", metavar="TIME", help="runs that ended at or after TIME (runs still going: never)")
    p.add_argument("--ended-until", metavar="TIME", help="runs that ended before TIME")
    p.add_argument("--order", choices=("newest", "oldest"), help="newest first (default) or oldest first")
    p.add_argument("--limit", type=_whole(0), metavar="N", help="at most N runs (--json then also gives next_cursor)")
    p.add_argument("--cursor", metavar="CURSOR", help="the next page: the cursor the previous page gave")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("show", parents=[js], help="state, phases, steps and the last events of a run")
    p.add_argument("run_id")
    p.add_argument("--events", type=_whole(0), default=10, metavar="N", help="how many recent events (default 10)")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("tail", parents=[js], help="print a run's events; --follow waits for new ones")
    p.add_argument("run_id")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing events as they are written")
    p.add_argument("-n", "--lines", type=_whole(0), default=10, metavar="N", help="start with the last N events")
    p.add_argument("--since", type=_whole(0), metavar="ID", help="start after this event id instead")
    p.add_argument(
        "--until-end",
        action="store_true",
        help="with --follow: stop once the run has ended or failed (also a step failure)",
    )
    p.add_argument("--timeout", type=_finite, metavar="S", help="stop following after S idle seconds")
    p.add_argument("--poll", type=_finite, default=0.25, metavar="S", help="poll interval (default 0.25 s)")
    p.set_defaults(func=_cmd_tail)

    p = sub.add_parser("resume", parents=[js], help="go on with a failed or stopped run (same id) and print the plan")
    p.add_argument("run_id")
    p.add_argument("--dry-run", action="store_true", help="only print the plan; write nothing")
    p.add_argument("--allow-cancelled", action="store_true", help="resume a cancelled run too")
    p.set_defaults(func=_cmd_resume)

    p = sub.add_parser("rerun", parents=[js], help="start a new run from a finished one, with changed params")
    p.add_argument("run_id")
    p.add_argument("--param", action="append", metavar="K=V", help="override (K:=JSON typed, K:=null removes)")
    p.add_argument("--tag", action="append", metavar="K=V")
    p.add_argument("--mode", choices=["all", "from_failure", "from_event"], help="default: all")
    p.add_argument("--from-event", type=_whole(0), metavar="N", help="start from the parent's state after event N")
    p.set_defaults(func=_cmd_rerun)

    p = sub.add_parser("verify", parents=[js], help="check a run's events (exit 1 if anything is wrong)")
    p.add_argument("run_id")
    p.add_argument("--reconstruct", action="store_true", help="also compare state.json and snapshots with the fold")
    p.add_argument("--repair", action="store_true", help="rewrite a bad state.json or snapshot (implies --reconstruct)")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("reindex", parents=[js], help="rebuild the run index of each project from the runs' logs")
    p.add_argument("--org")
    p.add_argument("--project")
    p.add_argument("--check", action="store_true", help="only compare the index with the logs (exit 1 if they differ)")
    p.set_defaults(func=_cmd_reindex)

    p = sub.add_parser("archive", parents=[js], help="consolidate finished runs and copy them to the archive")
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID")
    p.add_argument("--all-finished", action="store_true", help="every finished run not archived yet")
    p.add_argument("--older-than", type=_finite, metavar="DAYS", help="with --all-finished: ended DAYS ago or more")
    p.add_argument("--to", metavar="URL", help="archive store (default: gateway.json's s3_archive)")
    p.add_argument("--to-storage-options", metavar="JSON", help="storage options of --to (no secrets)")
    p.set_defaults(func=_cmd_archive)

    p = sub.add_parser("report", parents=[js], help="a run's report (Markdown, or --json)")
    p.add_argument("run_id")
    p.add_argument("--write", action="store_true", help="write report.json and report.md now")
    p.add_argument("--format", choices=["markdown", "html"], default="markdown", help="html: one self-contained page")
    p.add_argument("--output", metavar="FILE", help="with --format html: write the page to FILE")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("ui", help="serve a read-only run viewer on 127.0.0.1 (needs faber_runlog[ui])")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_whole(0), default=8080, help="port (default 8080; 0 picks a free one)")
    p.set_defaults(func=_cmd_ui)

    p = sub.add_parser(
        "import",
        parents=[js],
        help="import FABER run folders (a project, a FABER base folder or one run folder); idempotent",
    )
    p.add_argument(
        "path",
        nargs="?",
        default=".",
        help="a project (only its FABER base paths and $FABER_RUNS_PATH are searched; default: the current "
        "folder), a FABER base folder, one run folder, or an fsspec URL",
    )
    p.add_argument("--plan-org", default="local", help="org of runs whose FABER id is plan-based (default: local)")
    p.add_argument("--source-storage-options", metavar="JSON", help="fsspec storage options of PATH (no secrets)")
    p.set_defaults(func=_cmd_import)

    p = sub.add_parser("export", parents=[js], help="write a run as a FABER run folder, or send it over OTLP")
    p.add_argument("run_id")
    p.add_argument(
        "dest",
        metavar="DEST",
        nargs="?",
        help="FABER base folder (or fsspec URL); the run goes to DEST/org/project/uuid (--format faber)",
    )
    p.add_argument(
        "--format",
        choices=["faber", "otlp", "jsonl", "csv"],
        required=True,
        help="faber: a FABER run folder; otlp: one trace; jsonl/csv: the events, to DEST or stdout",
    )
    p.add_argument(
        "--endpoint", metavar="URL", help="OTLP/HTTP receiver for --format otlp (default: $OTEL_EXPORTER_OTLP_ENDPOINT)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a FABER folder already there")
    p.add_argument(
        "--id-form",
        choices=["uuid", "plan"],
        default="uuid",
        help="faber: DEST/org/project/uuid (uuid, default) or FABER v5's DEST/{plan_id}/{ts} with plan.json (plan)",
    )
    p.add_argument("--dest-storage-options", metavar="JSON", help="fsspec storage options of DEST (no secrets)")
    p.set_defaults(func=_cmd_export)
    p.__class__ = _IntermixedParser

    _add_lifecycle_commands(sub, js)
    _add_more_commands(sub, js)

    p = sub.add_parser("demo", parents=[js], help="log a short demo run and print its state")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("mcp", help="serve the MCP gateway over stdio (needs faber_runlog[mcp])")
    p.set_defaults(func=_cmd_mcp)
    for command in sub.choices.values():  # every command takes the global options after its name too
        _add_global_options(command, after_command=True)
    return parser


def _exit_code(exc: BaseException) -> int:
    usage = (
        UsageError,
        InvalidRunId,
        UnsafePath,
        InvalidEvent,
        InvalidRerun,
        InvalidFilter,
        InvalidStoreUrl,
        InvalidEventPosition,
    )
    if isinstance(exc, usage):
        return EXIT_USAGE
    return EXIT_FAILED


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 operation failed, 2 bad usage)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        args = _parser().parse_args(argv)
    except _BadCommandLine as e:
        err.write(str(e))
        return EXIT_USAGE
    except SystemExit as e:  # --help or --version was printed
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    ctx = _Ctx(args, out, err)
    try:
        created = _check_root(ctx)
        if args.command not in _NO_STORE:
            _resolve_run_ids(ctx)
        code: int = args.func(ctx)
        if created is not None and os.path.isdir(created):
            err.write(f"faber-runlog: created the store at {created}\n")
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, like other shell tools
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_OK
    except Exception as e:
        if args.debug:
            raise
        known = isinstance(e, (FaberRunlogError, UsageError, OSError, ValueError, LookupError))
        text = advice(e, "cli") or type(e).__name__  # the library's advice, worded as commands
        prefix = "error" if known else f"internal error ({type(e).__name__})"
        hint = "" if known else "; run again with --debug for the traceback"
        err.write(f"faber-runlog: {prefix}: {text}{hint}\n")
        return _exit_code(e)
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(main())
