"""faber_runlog.otel: runs of every shape as traces (SDK in-memory exporter), live = bulk ids, OTLP/HTTP on the wire."""

from __future__ import annotations

import io
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from faber_runlog import Event, MissingExtra, Resumer, Run, RunStore
from faber_runlog._frontends.cli import main
from faber_runlog.otel import RunTracer, export_run, span_id_of, trace_id_of


def ns(timestamp: str) -> int:
    import datetime as dt

    return int(dt.datetime.fromisoformat(timestamp).timestamp() * 1_000_000) * 1000


class Traces:
    """A tracer provider whose spans land in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def tree(self) -> list[tuple[str, str | None, str, str | None]]:
        """(name, parent name, status, result) per span, in the order they ended."""
        by_id = {s.context.span_id: s.name for s in self.spans()}
        out = []
        for s in self.spans():
            attrs = dict(s.attributes or {})
            result = attrs.get("cicd.pipeline.task.run.result", attrs.get("cicd.pipeline.result"))
            parent = by_id.get(s.parent.span_id) if s.parent is not None else None
            out.append((s.name, parent, s.status.status_code.name, None if result is None else str(result)))
        return out


@pytest.fixture
def store() -> RunStore:
    return RunStore(f"memory://otel-{uuid.uuid4().hex}")


def exported(run: Run) -> Traces:
    traces = Traces()
    assert f"{trace_id_of(run.id):032x}" == export_run(run, traces.provider)
    return traces


def test_a_step_retried_after_an_error_is_two_attempt_spans_the_first_an_error(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.start()
    run.log.emit("phase_start", phase="build")
    first = run.log.emit("step_start", phase="build", step="compile")
    failed = run.log.emit("step_error", phase="build", step="compile", error="exit 2")
    run.retry_step("build", "compile", reason="flaky")
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_complete", phase="build", step="compile")
    run.log.emit("phase_complete", phase="build")
    done = run.complete()
    traces = exported(run)
    assert [
        ("build/compile", "build", "ERROR", "failure"),
        ("build/compile", "build", "UNSET", "success"),
        ("build", "RUN acme/web", "UNSET", "success"),
        ("RUN acme/web", None, "UNSET", "success"),
    ] == traces.tree()
    error_span, _, phase, root = traces.spans()
    assert "exit 2" == error_span.status.description
    assert (ns(first.timestamp), ns(failed.timestamp)) == (error_span.start_time, error_span.end_time)
    assert (ns(run.metadata.created_at), ns(done.timestamp)) == (root.start_time, root.end_time)
    assert [("exception", "exit 2")] == [
        (e.name, (e.attributes or {}).get("exception.message")) for e in error_span.events
    ]
    assert ["step_retry"] == [e.name for e in phase.events]
    assert {"cicd.pipeline.name": "acme/web", "cicd.pipeline.run.id": run.id} == {
        k: v for k, v in (root.attributes or {}).items() if k in ("cicd.pipeline.name", "cicd.pipeline.run.id")
    }
    assert (trace_id_of(run.id), span_id_of(run.id, 0)) == (root.context.trace_id, root.context.span_id)
    assert span_id_of(run.id, first.event_id) == error_span.context.span_id
    assert "gen_ai.operation.name" not in (root.attributes or {})  # not an agent run


def test_skipped_steps_and_phases_are_skip_spans(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.start()
    run.log.emit("phase_start", phase="build")
    run.log.emit("step_skip", phase="build", step="lint")
    run.log.emit("phase_complete", phase="build")
    run.log.emit("phase_skip", phase="deploy")
    run.complete()
    assert [
        ("build/lint", "build", "UNSET", "skip"),
        ("build", "RUN acme/web", "UNSET", "success"),
        ("deploy", "RUN acme/web", "UNSET", "skip"),
        ("RUN acme/web", None, "UNSET", "success"),
    ] == exported(run).tree()


def test_a_failed_run_resumed_to_completion_is_one_trace_with_one_root(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.start()
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_error", phase="build", step="compile", error="exit 2")
    run.fail("exit 2")
    run = Resumer(store).resume(run.id)
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_complete", phase="build", step="compile")
    run.complete()
    traces = exported(run)
    tree = traces.tree()
    assert [("RUN acme/web", None, "UNSET", "success")] == [t for t in tree if t[1] is None]
    assert [("build/compile", "build", "ERROR", "failure"), ("build/compile", "build", "UNSET", "success")] == [
        t for t in tree if t[0] == "build/compile"
    ]
    (root,) = [s for s in traces.spans() if s.parent is None]
    assert {"workflow_start", "workflow_resumed"} <= {e.name for e in root.events}


def test_a_cancelled_run_cancels_its_open_step_and_phase(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.start()
    run.log.emit("phase_start", phase="build")
    run.log.emit("step_start", phase="build", step="compile")
    run.cancel("user stopped it")
    assert [
        ("build/compile", "build", "UNSET", "cancellation"),
        ("build", "RUN acme/web", "UNSET", "cancellation"),
        ("RUN acme/web", None, "UNSET", "cancellation"),
    ] == exported(run).tree()


def test_approvals_are_span_events_and_a_rejection_fails_the_run(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.start()
    run.log.emit("phase_start", phase="release")
    approval = run.request_approval("deploy", phase="release")
    run.decide(approval, "reject", client_token="t1", comment="not today")
    traces = exported(run)
    assert [
        ("release", "RUN acme/web", "ERROR", "failure"),
        ("RUN acme/web", None, "ERROR", "failure"),
    ] == traces.tree()
    phase = traces.spans()[0]
    assert ["approval_requested", "approval_resolved"] == [e.name for e in phase.events if e.name != "exception"]
    assert "reject" == (phase.events[1].attributes or {})["faber_runlog.action"]


def test_an_agent_run_carries_the_gen_ai_operations(store: RunStore) -> None:
    run = store.create_run("acme", "web", tags={"agent": "coder"})
    run.start()
    run.log.emit("step_start", phase="plan", step="search")
    run.log.emit("step_complete", phase="plan", step="search")
    run.complete()
    ops = {s.name: dict(s.attributes or {}) for s in exported(run).spans()}
    assert ("execute_tool", "search") == (
        ops["plan/search"]["gen_ai.operation.name"],
        ops["plan/search"]["gen_ai.tool.name"],
    )
    assert ("invoke_agent", "coder") == (ops["plan"]["gen_ai.operation.name"], ops["plan"]["gen_ai.agent.name"])
    assert "invoke_workflow" == ops["RUN acme/web"]["gen_ai.operation.name"]


def _key(s: ReadableSpan) -> tuple[Any, ...]:
    parent = s.parent.span_id if s.parent is not None else None
    return (s.context.trace_id, s.context.span_id, parent, s.name, s.start_time, s.end_time, s.status.status_code)


def test_live_spans_and_bulk_exports_have_the_same_ids_and_times(store: RunStore) -> None:
    live = Traces()
    tracer = RunTracer(live.provider)
    run = store.create_run("acme", "web", tags={"agent": "coder"})
    late = RunTracer(Traces().provider)  # one that starts mid-run catches up from the log
    steps: list[Callable[[], Event]] = [
        lambda: run.start(),
        lambda: run.log.emit("phase_start", phase="build"),
        lambda: run.log.emit("step_start", phase="build", step="compile"),
        lambda: run.log.emit("step_error", phase="build", step="compile", error="exit 2"),
        lambda: run.log.emit("step_start", phase="build", step="compile"),
        lambda: run.log.emit("step_complete", phase="build", step="compile"),
        lambda: run.log.emit("phase_complete", phase="build"),
        lambda: run.complete(),
    ]
    for emit in steps:
        event = emit()
        tracer.observe(run, event)
        tracer.observe(run, event)  # a repeat emits nothing
    assert 0 == late.observe(run, run.log.get(3))  # the spans event 3 closes: none
    first, second = exported(run), exported(run)
    assert sorted(map(_key, first.spans())) == sorted(map(_key, second.spans()))
    assert sorted(map(_key, first.spans())) == sorted(map(_key, live.spans()))
    assert 4 == len(live.spans())


def test_a_run_still_going_exports_its_open_spans_ending_at_its_last_event(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.start()
    last = run.log.emit("step_start", phase="build", step="compile")
    traces = exported(run)
    assert {ns(last.timestamp)} == {s.end_time for s in traces.spans()}
    assert all((s.attributes or {}).get("faber_runlog.open") for s in traces.spans())
    assert all(s.status.status_code is StatusCode.UNSET for s in traces.spans())


class _Receiver:
    """An OTLP/HTTP receiver on 127.0.0.1: keeps the body of every POST to /v1/traces."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                if self.headers.get("Content-Encoding") == "gzip":
                    import gzip

                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    owner.bodies.append(body)
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    r = _Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


def test_export_format_otlp_sends_the_run_to_an_otlp_http_receiver(receiver: _Receiver, tmp_path: Path) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    store = RunStore(str(tmp_path / "runs"))
    run = store.create_run("acme", "web")
    run.start()
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_error", phase="build", step="compile", error="exit 2")
    run.fail("exit 2")
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["--root", str(tmp_path / "runs"), "export", run.id, "--format", "otlp", "--endpoint", receiver.endpoint],
        out=out,
        err=err,
    )
    assert (0, "") == (code, err.getvalue())
    assert f"sent run {run.id} as trace {trace_id_of(run.id):032x}\n" == out.getvalue()
    spans = []
    for body in receiver.bodies:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans += [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert {trace_id_of(run.id).to_bytes(16, "big")} == {s.trace_id for s in spans}
    assert [("build/compile", 2), ("build", 2), ("RUN acme/web", 2)] == [(s.name, s.status.code) for s in spans]
    root = spans[-1]
    attrs = {a.key: a.value.string_value for a in root.attributes}
    assert (run.id, "failure") == (attrs["cicd.pipeline.run.id"], attrs["cicd.pipeline.result"])


def test_without_the_sdk_the_error_says_which_extra_to_install(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = store.create_run("acme", "web")
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(MissingExtra, match=r"pip install 'faber_runlog\[otel\]'"):
        export_run(run)


def test_the_agents_page_python_blocks_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    page = (Path(__file__).parent.parent / "docs" / "agents.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", page, re.M | re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FABER_RUNLOG_ROOT", raising=False)
    namespace: dict[str, Any] = {"__name__": "docs_agents"}
    for block in blocks:
        exec(compile(block, "docs/agents.md", "exec"), namespace)


def test_the_otel_gateway_backend_emits_spans_as_the_gateway_records_events(tmp_path: Path) -> None:
    from faber_runlog import Gateway, GatewayConfig, Registry
    from faber_runlog.otel import OtelBackend

    traces = Traces()
    registry = Registry.isolated()
    registry.register_backend(
        "otel", lambda settings, gw: OtelBackend(settings, gw, tracer_provider=traces.provider), replace=True
    )
    config = GatewayConfig(root=str(tmp_path / "runs"), other_backends={"otel": {"enabled": True}})
    with Gateway(config, registry=registry) as gateway:
        run = gateway.new_run("acme", "web")
        assert run is not None
        gateway.emit(run.id, "workflow_start")
        gateway.emit(run.id, "step_start", phase="build", step="compile")
        assert [] == traces.tree()
        gateway.emit(run.id, "step_complete", phase="build", step="compile")
        (span,) = traces.spans()  # its phase span is still open: sent when the phase ends
        assert ("build/compile", span_id_of(run.id, 2, "phase")) == (span.name, span.parent and span.parent.span_id)


def test_sending_to_a_port_nobody_listens_on_raises_storage_error_naming_the_run(store: RunStore) -> None:
    from faber_runlog import StorageError
    from faber_runlog.otel import send_otlp

    run = store.create_run("acme", "web")
    run.start()
    with pytest.raises(StorageError, match=rf"trace of run {run.id} to http://127.0.0.1:9/v1/traces failed"):
        send_otlp(run, "http://127.0.0.1:9", timeout=1)
