"""The ``faber-runlog`` command line: create and inspect runs, emit events, resume, archive, serve MCP.

Exit codes: 0 the command did what was asked; 1 the operation failed (a run
not found, a run not resumable, verify found problems, storage trouble);
2 bad usage (unknown options, a malformed run id, bad ``k=v`` or JSON, an
event that fails its schema). Errors are one line on stderr; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn, TextIO

from faber_runlog import _codec, _validate
from faber_runlog._events import Event
from faber_runlog._progress import is_terminal
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

    from faber_runlog._events import check_json_value

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
            from faber_runlog._gateway import Gateway

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


# -- commands -----------------------------------------------------------------------------------------


def _cmd_init(ctx: _Ctx) -> int:
    from faber_runlog._gateway import CONFIG_PATH, Gateway, GatewayConfig, S3ArchiveConfig, write_config

    a = ctx.args
    path = Path(a.config) if a.config else Path.cwd() / CONFIG_PATH
    config_dir = path.resolve().parent
    root = "runs"
    if a.root is not None:
        root = str(a.root)
        if "://" not in root and not os.path.isabs(os.path.expanduser(root)):
            # Relative roots in gateway.json are read from its folder, not from where init ran.
            root = os.path.relpath(os.path.abspath(root), config_dir)
    s3 = S3ArchiveConfig(
        enabled=a.s3_bucket is not None,
        bucket=a.s3_bucket,
        prefix=a.s3_prefix,
        storage_options=_json_object(a.s3_storage_options, "--s3-storage-options") if a.s3_storage_options else {},
        auto_archive=not a.no_auto_archive,
        archive_on=a.archive_on or ("workflow_complete", "workflow_cancelled"),
    )
    config = GatewayConfig(
        enabled=not a.disabled,
        root=root,
        storage_options=_storage_options(a) or {},
        fsync=not a.no_fsync,
        snapshot_every=a.snapshot_every,
        source=a.source,
        s3_archive=s3,
    )
    changes = write_config(config, path)
    gateway = Gateway(config, base_dir=config_dir, config_path=path)
    storage = gateway.store.storage
    storage.ensure_root()
    if ctx.json:
        _dump({"config": str(path), "created": changes is None, "changes": changes or [], "root": storage.url}, ctx.out)
        return EXIT_OK
    if changes is None:
        ctx.out.write(f"wrote {path}\n")
    elif changes:
        ctx.out.write(f"overwrote {path}; changed:\n" + "".join(f"  {c}\n" for c in changes))
    else:
        ctx.out.write(f"overwrote {path} (no setting changed)\n")
    ctx.out.write(f"runs:    {storage.url}\nlogging: {'enabled' if config.enabled else 'disabled'}\n")
    return EXIT_OK


def _disabled(ctx: _Ctx, what: str) -> int:
    where = ctx.gateway.config_path or "gateway.json"
    ctx.err.write(f"faber-runlog: logging is disabled in {where}; {what}\n")
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
    event = ctx.gateway.emit(a.run_id, a.type, **fields)
    if event is None:
        return _disabled(ctx, "nothing was written")
    if ctx.json:
        _dump(event.to_dict(), ctx.out)
    else:
        ctx.out.write(f"{event.event_id}\n")
    return EXIT_OK


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
            order=a.order,
            limit=a.limit,
            cursor=a.cursor,
        )
    except InvalidFilter:
        raise
    except InvalidArgument as e:  # a filter's value: the command line's mistake (exit 2)
        raise UsageError(str(e).replace("list_runs()", "faber-runlog list")) from e
    if ctx.json:
        from faber_runlog._converter import converter

        rows = [converter.unstructure(r) for r in runs]
        # Paging asked for: the page and the cursor of the next one; else the plain list, as always.
        _dump({"runs": rows, "next_cursor": runs.next_cursor} if _paged(a) else rows, ctx.out)
        return EXIT_OK
    if runs.next_cursor is not None:
        ctx.err.write(f"more runs: add --cursor {runs.next_cursor} for the next page\n")
    if not runs:
        ctx.out.write(f"no runs in {ctx.store.url}\n")
        return EXIT_OK
    rows = [
        [r.run_id, r.status, str(r.last_event_id), _where(r.current_phase, r.current_step) or "-", r.created_at[:19]]
        for r in runs
    ]
    _table(rows, ["RUN ID", "STATUS", "EVENTS", "AT", "CREATED"], ctx.out)
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
    from faber_runlog._state import fold

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
    from faber_runlog._resume import Resumer

    a = ctx.args
    if not a.dry_run and ctx.store.get_run(a.run_id).state().status == "paused":
        from faber_runlog import _actions

        # A paused run goes back to where it was paused, through the checked transition.
        return _done(ctx, "resume", _actions.perform(ctx.gateway, a.run_id, "resume", reason=a.reason))
    resumer = Resumer(ctx.store)
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
    from faber_runlog._resume import Resumer

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
    for key, value in sorted((diff.get("added") or {}).items()):
        ctx.out.write(f"  + {key} = {_codec.dumps(value).decode()}\n")
    for key, value in sorted((diff.get("removed") or {}).items()):
        ctx.out.write(f"  - {key} (was {_codec.dumps(value).decode()})\n")
    for key, change in sorted((diff.get("changed") or {}).items()):
        old, new = _codec.dumps(change["old"]).decode(), _codec.dumps(change["new"]).decode()
        ctx.out.write(f"  ~ {key}: {old} -> {new}\n")
    return EXIT_OK


def _cmd_verify(ctx: _Ctx) -> int:
    from faber_runlog._resume import Resumer

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
    from faber_runlog._archive import Archiver
    from faber_runlog._store import RunStore

    a = ctx.args
    if not a.run_ids and not a.all_finished:
        raise UsageError("name the runs to archive, or pass --all-finished")
    if a.run_ids and a.all_finished:
        raise UsageError("pass run ids or --all-finished, not both")
    if a.to is not None:
        options = _json_object(a.to_storage_options, "--to-storage-options") if a.to_storage_options else None
        destination = RunStore(a.to, storage_options=options)
    else:
        settings = ctx.gateway.config.s3_archive
        if settings.url is None:
            raise UsageError("no archive destination: pass --to URL, or set backends.s3_archive.bucket in gateway.json")
        destination = RunStore(settings.url, storage_options=dict(settings.storage_options) or None)
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
    from faber_runlog._report import compose_report, render_markdown
    from faber_runlog._state import TERMINAL_STATUSES

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
            ctx.out.write(f"wrote {a.output}\n")
        else:
            ctx.out.write(text)
        return EXIT_OK
    if ctx.json:
        _dump(report, ctx.out)
    else:
        ctx.out.write(render_markdown(report))
    return EXIT_OK


def _cmd_ui(ctx: _Ctx) -> int:
    from faber_runlog._viewer import serve

    serve(ctx.store, host=ctx.args.host, port=ctx.args.port, out=ctx.err)
    return EXIT_OK


def _cmd_demo(ctx: _Ctx) -> int:
    from faber_runlog._demo import run_demo

    run_demo(ctx.store, out=ctx.out)
    return EXIT_OK


def _local_root(ctx: _Ctx) -> None:
    # ``--root`` may also follow the subcommand (``import PATH --root STORE``).
    if getattr(ctx.args, "sub_root", None):
        ctx.args.root = ctx.args.sub_root


def _cmd_import(ctx: _Ctx) -> int:
    from faber_runlog._faber import import_faber

    a = ctx.args
    _local_root(ctx)
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
    _local_root(ctx)
    run = ctx.store.get_run(a.run_id)
    trace_id = send_otlp(run, a.endpoint)
    if ctx.json:
        _dump({"run_id": run.id, "trace_id": trace_id, "endpoint": a.endpoint}, ctx.out)
    else:
        ctx.out.write(f"sent run {run.id} as trace {trace_id}\n")
    return EXIT_OK


def _cmd_export(ctx: _Ctx) -> int:
    from faber_runlog._faber import export_faber

    a = ctx.args
    if a.format == "otlp":
        return _cmd_export_otlp(ctx)
    if a.dest is None:
        raise UsageError("export --format faber needs DEST, the FABER base folder to write the run into")
    _local_root(ctx)
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
    from faber_runlog._mcp_server import serve

    serve(ctx.gateway)
    return EXIT_OK


# -- lifecycle: every checked transition and approval decision (faber_runlog._actions) -------------------
#
# Each command goes through the same Run.* method as Python code, so a refused
# transition writes nothing and says why; the event then reaches the gateway's
# other backends as an emitted one would.


def _done(ctx: _Ctx, action: str, event: Event | None, failures: list[Any] | None = None) -> int:
    if event is None:
        return _disabled(ctx, "nothing was written")
    status = ctx.store.get_run(ctx.args.run_id).state().status
    # A backend (the archive) that failed after the event was recorded: the action stands, the command fails.
    problems = [_backend_problem(ctx.args.run_id, event, f.name, f.error) for f in failures or ()]
    if ctx.json:
        body = {
            "run_id": ctx.args.run_id,
            "action": action,
            "event_id": event.event_id,
            "status": status,
            "event": event.to_dict(),
        }
        _dump({**body, "backend_errors": problems} if problems else body, ctx.out)
    else:
        ctx.out.write(f"{action}: {event.type} is event {event.event_id}; the run is now {status}\n")
    for problem in problems:
        ctx.err.write(f"error: {problem}\n")
    return EXIT_FAILED if problems else EXIT_OK


def _backend_problem(run_id: str, event: Event, name: str, error: BaseException) -> str:
    """One line: which backend failed after event ``event`` of ``run_id`` was recorded, why, and what to do."""
    todo = (
        f"archive it again with `faber-runlog archive {run_id}` once the archive is reachable"
        if name == "s3_archive"
        else "see the error; the event itself is recorded"
    )
    why = " ".join(str(error).split())
    return (
        f"run {run_id}: {event.type} was recorded as event {event.event_id}, but backend {name} failed "
        f"({type(error).__name__}: {why}); {todo}"
    )


def _cmd_transition(ctx: _Ctx) -> int:
    from faber_runlog import _actions

    a = ctx.args
    fields = {k: getattr(a, k, None) for k in ("reason", "summary", "error", "phase", "step")}
    failures: list[_actions.BackendFailure] = []
    event = _actions.perform(ctx.gateway, a.run_id, a.action, failures=failures, **fields)
    return _done(ctx, a.action, event, failures)


def _cmd_request_approval(ctx: _Ctx) -> int:
    from faber_runlog import _actions

    a = ctx.args
    payload = _json_object(a.payload, "--payload") if a.payload else None
    event = _actions.request_approval(
        ctx.gateway, a.run_id, a.gate, phase=a.phase, payload=payload, approval_id=a.approval_id
    )
    code = _done(ctx, "request_approval", event)
    if event is not None and not ctx.json:
        ctx.out.write(f"approval id: {event.metadata['approval_id']}\n")
    return code


def _cmd_decide(ctx: _Ctx) -> int:
    import uuid

    from faber_runlog import _actions

    a = ctx.args
    # Without --token each call is a new decision; pass one to make a retried command safe.
    token = a.token or f"cli-{uuid.uuid4().hex}"
    event = _actions.decide(
        ctx.gateway, a.run_id, a.approval_id, a.action, client_token=token, comment=a.comment, user=a.user
    )
    return _done(ctx, a.action, event)


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
        "pause": "pause a run; resume returns it to where it was",
        "cancel": "cancel an active run (closes pending approvals, writes the final report)",
        "complete": "complete a running run (writes the final report)",
        "fail": "fail a run for good (writes the final report)",
    }
    for name, text in simple.items():
        p = sub.add_parser(name, parents=[js], help=text, description=text)
        p.add_argument("run_id")
        if name in ("pause", "cancel", "fail"):
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
    p.add_argument("--older-than", type=float, default=0.0, metavar="S", help="lease expired S seconds ago or more")
    p.add_argument("--run", action="append", metavar="RUN_ID", help="only this run (repeatable)")
    p.add_argument("--include-unleased", action="store_true", help="also runs with no lease, idle for --older-than")
    p.set_defaults(func=_cmd_sweep)


# -- the parser -------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line of stderr like every other error (``--help`` shows the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


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


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="faber-runlog",
        description="Run ids, event logs and run state on a local folder or any fsspec URL.",
        epilog="Exit codes: 0 ok, 1 the operation failed, 2 bad usage. Docs: docs/cli.md",
    )
    parser.add_argument(
        "--root",
        help="store root: a folder or any fsspec URL (default: gateway.json's root, "
        "else $FABER_RUNLOG_ROOT, else .faber_runlog/runs)",
    )
    parser.add_argument(
        "--storage-options",
        metavar="JSON",
        help="fsspec storage options as JSON, e.g. "
        f'\'{{"endpoint_url": "http://..."}}\' (or ${STORAGE_OPTIONS_ENV}); credentials come '
        "from the environment",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="gateway.json to use (default: $FABER_RUNLOG_CONFIG, else "
        "the nearest .fractary/plugins/faber/gateway.json)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    js = _Parser(add_help=False)
    js.add_argument("--json", action="store_true", help="print JSON for scripts")

    p = sub.add_parser("init", parents=[js], help="write gateway.json and create the runs folder")
    p.add_argument("--disabled", action="store_true", help="turn logging off (emit becomes a no-op)")
    p.add_argument("--snapshot-every", type=int, default=100, metavar="N", help="write state.json every N events")
    p.add_argument("--no-fsync", action="store_true", help="do not fsync event files (faster, less durable)")
    p.add_argument("--source", default="faber-runlog", help="the 'source' of events written through the gateway")
    p.add_argument("--s3-bucket", help="enable the s3_archive backend with this bucket")
    p.add_argument("--s3-prefix", default="faber/runs", help="key prefix in the archive bucket")
    p.add_argument("--s3-storage-options", metavar="JSON", help="storage options of the archive (no secrets)")
    p.add_argument("--no-auto-archive", action="store_true", help="archive only when asked (faber-runlog archive)")
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
    p.add_argument("--duration-ms", type=float)
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
    p.add_argument("--order", choices=("newest", "oldest"), help="newest first (default) or oldest first")
    p.add_argument("--limit", type=int, metavar="N", help="at most N runs (--json then also gives next_cursor)")
    p.add_argument("--cursor", metavar="CURSOR", help="the next page: the cursor the previous page gave")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("show", parents=[js], help="state, phases, steps and the last events of a run")
    p.add_argument("run_id")
    p.add_argument("--events", type=int, default=10, metavar="N", help="how many recent events (default 10)")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("tail", parents=[js], help="print a run's events; --follow waits for new ones")
    p.add_argument("run_id")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing events as they are written")
    p.add_argument("-n", "--lines", type=int, default=10, metavar="N", help="start with the last N events")
    p.add_argument("--since", type=int, metavar="ID", help="start after this event id instead")
    p.add_argument(
        "--until-end",
        action="store_true",
        help="with --follow: stop once the run has ended or failed (also a step failure)",
    )
    p.add_argument("--timeout", type=float, metavar="S", help="stop following after S idle seconds")
    p.add_argument("--poll", type=float, default=0.25, metavar="S", help="poll interval (default 0.25 s)")
    p.set_defaults(func=_cmd_tail)

    p = sub.add_parser(
        "resume", parents=[js], help="resume a paused run, or a stopped one (same id), and print the plan"
    )
    p.add_argument("run_id")
    p.add_argument("--dry-run", action="store_true", help="only print the plan; write nothing")
    p.add_argument("--allow-cancelled", action="store_true", help="resume a cancelled run too")
    p.add_argument("--reason", help="for a paused run: why it resumes, recorded on the event")
    p.set_defaults(func=_cmd_resume)

    p = sub.add_parser("rerun", parents=[js], help="start a new run from a finished one, with changed params")
    p.add_argument("run_id")
    p.add_argument("--param", action="append", metavar="K=V", help="override (K:=JSON typed, K:=null removes)")
    p.add_argument("--tag", action="append", metavar="K=V")
    p.add_argument("--mode", choices=["all", "from_failure", "from_event"], help="default: all")
    p.add_argument("--from-event", type=int, metavar="N", help="start from the parent's state after event N")
    p.set_defaults(func=_cmd_rerun)

    p = sub.add_parser("verify", parents=[js], help="check a run's events (exit 1 if anything is wrong)")
    p.add_argument("run_id")
    p.add_argument("--reconstruct", action="store_true", help="also compare state.json and snapshots with the fold")
    p.add_argument("--repair", action="store_true", help="rewrite a bad state.json or snapshot (implies --reconstruct)")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("archive", parents=[js], help="consolidate finished runs and copy them to the archive")
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID")
    p.add_argument("--all-finished", action="store_true", help="every finished run not archived yet")
    p.add_argument("--older-than", type=float, metavar="DAYS", help="with --all-finished: ended DAYS ago or more")
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
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
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
    p.add_argument(
        "--root", dest="sub_root", metavar="STORE", help="the store to import into (same as the global --root)"
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
    p.add_argument("--format", choices=["faber", "otlp"], required=True, help="the format to write")
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
    p.add_argument("--root", dest="sub_root", metavar="STORE", help="the store to read from (as the global --root)")
    p.add_argument("--dest-storage-options", metavar="JSON", help="fsspec storage options of DEST (no secrets)")
    p.set_defaults(func=_cmd_export)
    p.__class__ = _IntermixedParser

    _add_lifecycle_commands(sub, js)

    p = sub.add_parser("demo", help="log a short demo run and print its state")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("mcp", help="serve the MCP gateway over stdio (needs faber_runlog[mcp])")
    p.set_defaults(func=_cmd_mcp)
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


# The library's messages point to Python calls; on the command line the same advice is a command.
_CLI_WORDS: Final = (
    (re.compile(r"list_runs\(\)"), "`faber-runlog list`"),
    (re.compile(r"\(?Resumer\(store\)\.rerun\(run_id\)\)?"), "`faber-runlog rerun RUN_ID`"),
    (re.compile(r"Resumer\(store\)\.resume\(run_id\)"), "`faber-runlog resume RUN_ID`"),
    (re.compile(r"\brerun\(\)"), "`faber-runlog rerun RUN_ID`"),
    (re.compile(r"\bverify(_run)?\(\)"), "`faber-runlog verify RUN_ID`"),
    (re.compile(r"\bsweep_stale\(\)"), "`faber-runlog sweep`"),
    (re.compile(r"open it with get_run\(\) instead"), "see it with `faber-runlog show RUN_ID`"),
    (re.compile(r"pass allow_cancelled=True"), "pass --allow-cancelled"),
)


def _cli_words(text: str) -> str:
    """``text`` with the Python calls it recommends replaced by the matching ``faber-runlog`` commands."""
    for pattern, words in _CLI_WORDS:
        text = pattern.sub(words, text)
    return text


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 operation failed, 2 bad usage)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage line
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    ctx = _Ctx(args, out, err)
    try:
        code: int = args.func(ctx)
        return code
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if args.debug:
            raise
        known = isinstance(e, (FaberRunlogError, UsageError, OSError, ValueError, LookupError))
        text = _cli_words(" ".join(str(e).split())) or type(e).__name__
        prefix = "error" if known else f"internal error ({type(e).__name__})"
        hint = "" if known else "; run again with --debug for the traceback"
        err.write(f"faber-runlog: {prefix}: {text}{hint}\n")
        return _exit_code(e)
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(main())
