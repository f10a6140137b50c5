"""OpenTelemetry traces of runs: a past run as one trace, or spans as the events are appended.

Needs the ``otel`` extra (``pip install 'faber_runlog[otel]'``: opentelemetry-api and -sdk;
OTLP sending also needs opentelemetry-exporter-otlp-proto-http). Nothing here is imported
by the rest of the package.

The trace of a run (CI/CD semantic conventions, plus GenAI ones for agent runs):

- one root span ``RUN {org}/{project}`` (``cicd.pipeline.name``, ``cicd.pipeline.run.id``,
  ``cicd.pipeline.result`` once the run ended) from the run's creation to its last ending event;
- a span per phase attempt and, under it, a span per step attempt (``cicd.pipeline.task.name``,
  ``cicd.pipeline.task.run.result``), timed by the events that opened and closed them;
- failed attempts are ERROR spans with the error as their status and an ``exception`` event;
- approvals, retries, pauses and resumes are span events.

A run is an *agent run* when its tags hold ``agent`` (the agent's name): its root then carries
``gen_ai.operation.name = invoke_workflow``, phases ``invoke_agent`` (with ``gen_ai.agent.name``)
and steps ``execute_tool`` (with ``gen_ai.tool.name``).

Ids are derived, not random: the trace id from the run id, each span id from the run id and
the number of the event that opened the span (0 for the root). Exporting a run twice, or live
and then in bulk, gives the same ids.
"""

from __future__ import annotations

import contextvars
import datetime as _dt
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import attrs

from faber_runlog._domain.events import Event
from faber_runlog._domain.transitions import ENDING_APPROVAL_ACTIONS
from faber_runlog._services.gateway import Backend
from faber_runlog.errors import ConfigurationError, InvalidArgument, MissingExtra

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

    from faber_runlog._services.gateway import Gateway
    from faber_runlog._services.store import Run

__all__ = [
    "AGENT_TAG",
    "OtelBackend",
    "RunTracer",
    "SpanRecord",
    "export_run",
    "send_otlp",
    "span_id_of",
    "spans_of",
    "trace_id_of",
]

log = logging.getLogger("faber_runlog.otel")

SCOPE: Final = "faber_runlog.otel"
AGENT_TAG: Final = "agent"
"""The tag that makes a run an agent run; its value is the agent's name."""

_RUN_RESULT: Final = {"completed": "success", "failed": "failure", "cancelled": "cancellation"}
_ENDS: Final = {"workflow_complete": "completed", "workflow_error": "failed", "workflow_cancelled": "cancelled"}
_MARKS: Final = frozenset({
    "workflow_start", "workflow_paused", "workflow_resumed", "workflow_rerun", "step_retry",
    "approval_requested", "approval_resolved", "retry_loop_enter", "retry_loop_exit", "agent_invoke", "skill_invoke",
})  # fmt: skip  # a set of event types, wrapped to fit


def _require_otel() -> None:
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as e:
        raise MissingExtra(
            "opentelemetry-sdk is needed for traces of runs but is not installed; "
            "install the otel extra: pip install 'faber_runlog[otel]'"
        ) from e


def _hash64(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def trace_id_of(run_id: str) -> int:
    """The trace id of a run's trace: 128 bits of a hash of the run id (never 0)."""
    digest = hashlib.sha256(f"faber_runlog trace\x1f{run_id}".encode()).digest()
    return int.from_bytes(digest[:16], "big") or 1


def span_id_of(run_id: str, event_id: int, kind: str = "") -> int:
    """The id of the span that event ``event_id`` of the run opened (0: the run's root span).

    ``kind`` is ``"phase"`` for phase spans: a step's first event may open its phase's span too.
    """
    return _hash64("faber_runlog span", run_id, event_id, kind)


def _ns(timestamp: str) -> int:
    moment = _dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.UTC)
    return int(moment.timestamp() * 1_000_000) * 1000


@attrs.define
class SpanRecord:
    """One span of a run's trace, built from its events (what :class:`RunTracer` hands the SDK)."""

    name: str
    span_id: int
    parent_id: int | None
    start_ns: int
    end_ns: int | None = None
    attributes: dict[str, Any] = attrs.field(factory=dict)
    events: list[tuple[str, int, dict[str, Any]]] = attrs.field(factory=list)
    error: str | None = None
    links: list[tuple[int, int]] = attrs.field(factory=list)


class _Builder:
    """A fold of one run's events into spans; ``feed`` returns the spans each event closed."""

    def __init__(self, run: Run) -> None:
        meta = run.metadata
        self.run_id = run.id
        self.trace_id = trace_id_of(run.id)
        self.last = 0
        self.agent = meta.tags.get(AGENT_TAG)
        attributes: dict[str, Any] = {
            "cicd.pipeline.name": f"{meta.org}/{meta.project}",
            "cicd.pipeline.run.id": run.id,
            "cicd.pipeline.action.name": "RUN",
            "faber_runlog.org": meta.org,
            "faber_runlog.project": meta.project,
        }
        if self.agent:
            attributes.update({"gen_ai.operation.name": "invoke_workflow", "gen_ai.agent.name": self.agent})
        self.root = SpanRecord(
            f"RUN {meta.org}/{meta.project}", span_id_of(run.id, 0), None, _ns(meta.created_at), attributes=attributes
        )
        if meta.parent_run_id:
            self.root.attributes["faber_runlog.parent_run_id"] = meta.parent_run_id
            self.root.links.append((trace_id_of(meta.parent_run_id), span_id_of(meta.parent_run_id, 0)))
        self.phases: dict[str, SpanRecord] = {}
        self.steps: dict[tuple[str, str], SpanRecord] = {}
        self.attempts: dict[tuple[str, ...], int] = {}
        self.ended = False

    def _attempt(self, key: tuple[str, ...]) -> int:
        self.attempts[key] = self.attempts.get(key, 0) + 1
        return self.attempts[key]

    def _open_phase(self, name: str, e: Event) -> SpanRecord:
        attributes: dict[str, Any] = {
            "cicd.pipeline.task.name": name,
            "cicd.pipeline.task.run.id": f"{self.run_id}#{e.event_id}",
            "faber_runlog.phase": name,
            "faber_runlog.attempt": self._attempt((name,)),
        }
        if self.agent:
            attributes.update({"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": self.agent})
        sid = span_id_of(self.run_id, e.event_id, "phase")
        span = SpanRecord(name, sid, self.root.span_id, _ns(e.timestamp), attributes=attributes)
        self.phases[name] = span
        return span

    def _phase(self, name: str, e: Event) -> SpanRecord:
        return self.phases.get(name) or self._open_phase(name, e)

    def _close(self, span: SpanRecord, e: Event, result: str, error: str | None = None) -> SpanRecord:
        span.end_ns = max(_ns(e.timestamp), span.start_ns)
        span.attributes["cicd.pipeline.task.run.result"] = result
        if error is not None:
            span.error = error
            span.attributes["error.type"] = e.type
            span.events.append(("exception", span.end_ns, {"exception.type": e.type, "exception.message": error}))
        return span

    def _mark(self, e: Event) -> None:
        target = self.phases.get(e.phase) if e.phase else None
        attributes: dict[str, Any] = {"faber_runlog.event_id": e.event_id}
        for k in ("step", "message", "user"):
            v = getattr(e, k)
            if v is not None:
                attributes[f"faber_runlog.{k}"] = v
        for k, v in e.metadata.items():
            if isinstance(v, (str, bool, int, float)):
                attributes[f"faber_runlog.{k}"] = v
        if e.type == "agent_invoke":
            attributes["gen_ai.agent.name"] = str(e.metadata.get("agent"))
        (target or self.root).events.append((e.type, _ns(e.timestamp), attributes))

    def feed(self, e: Event) -> list[SpanRecord]:
        """Fold one event (the next one of the log); returns the spans it closed."""
        self.last = e.event_id
        self.ended = False  # anything after the end (a resume) reopens the run
        done: list[SpanRecord] = []
        t, phase, step = e.type, e.phase, e.step
        if t in _MARKS:
            self._mark(e)
        if t == "phase_start" and phase:
            if phase in self.phases:  # a new attempt ends the one before it
                done.append(self._close(self.phases.pop(phase), e, "cancellation"))
            self._open_phase(phase, e)
        elif t in ("phase_complete", "phase_error", "phase_skip") and phase:
            self._phase(phase, e)  # a phase skipped (or ended) without a start: a span of no length
            span = self.phases.pop(phase)
            done += self._close_steps(e, phase, "cancellation")
            result = {"phase_complete": "success", "phase_error": "failure", "phase_skip": "skip"}[t]
            done.append(self._close(span, e, result, (e.error_message or t) if t == "phase_error" else None))
        elif t == "step_start" and phase and step:
            parent = self._phase(phase, e)
            if (phase, step) in self.steps:
                done.append(self._close(self.steps.pop((phase, step)), e, "cancellation"))
            self.steps[(phase, step)] = self._open_step(parent, phase, step, e)
        elif t in ("step_complete", "step_error", "step_skip") and phase and step:
            found = self.steps.pop((phase, step), None)
            if found is None:  # skipped (or finished) without a start: a span of no length
                found = self._open_step(self._phase(phase, e), phase, step, e)
            result = {"step_complete": "success", "step_error": "failure", "step_skip": "skip"}[t]
            done.append(self._close(found, e, result, (e.error_message or t) if t == "step_error" else None))
        elif t in _ENDS or (t == "approval_resolved" and e.metadata.get("action") in ENDING_APPROVAL_ACTIONS):
            status = _ENDS.get(t) or ("failed" if e.metadata.get("action") == "reject" else "cancelled")
            error = (e.error_message or e.message or t) if status == "failed" else None
            done += self._end(e, status, error)
        elif t == "approval_resolved" and e.metadata.get("action") == "approve":
            approved = e.phase or next((p for p in self.phases if p == e.metadata.get("phase")), None)
            if approved and approved in self.phases:
                done.append(self._close(self.phases.pop(approved), e, "success"))
        return done

    def _open_step(self, parent: SpanRecord, phase: str, step: str, e: Event) -> SpanRecord:
        attributes: dict[str, Any] = {
            "cicd.pipeline.task.name": f"{phase}/{step}",
            "cicd.pipeline.task.run.id": f"{self.run_id}#{e.event_id}",
            "faber_runlog.phase": phase,
            "faber_runlog.step": step,
            "faber_runlog.attempt": self._attempt((phase, step)),
        }
        if self.agent:
            attributes.update({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": step})
        sid = span_id_of(self.run_id, e.event_id)
        return SpanRecord(f"{phase}/{step}", sid, parent.span_id, _ns(e.timestamp), attributes=attributes)

    def _close_steps(self, e: Event, phase: str | None, result: str, error: str | None = None) -> list[SpanRecord]:
        keys = [k for k in self.steps if phase is None or k[0] == phase]
        return [self._close(self.steps.pop(k), e, result, error) for k in keys]

    def _end(self, e: Event, status: str, error: str | None) -> list[SpanRecord]:
        result = _RUN_RESULT[status]
        done = self._close_steps(e, None, result, error)
        done += [self._close(span, e, result, error) for span in self.phases.values()]
        self.phases.clear()
        root = self.root
        root.end_ns = max(_ns(e.timestamp), root.start_ns)
        root.attributes["cicd.pipeline.result"] = result
        root.error = error
        self.ended = True
        done.append(attrs.evolve(root, attributes=dict(root.attributes), events=list(root.events)))
        return done

    def open_spans(self, end_ns: int) -> list[SpanRecord]:
        """The spans still open, ended at ``end_ns`` and marked ``faber_runlog.open`` (a run not ended yet)."""
        out = [*self.steps.values(), *self.phases.values(), self.root]
        return [attrs.evolve(s, end_ns=end_ns, attributes={**s.attributes, "faber_runlog.open": True}) for s in out]


# -- handing spans to the SDK ------------------------------------------------------------

_PLANNED: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("faber_runlog_otel_ids", default=None)


def _planned_ids(fallback: Any) -> Any:
    from opentelemetry.sdk.trace.id_generator import IdGenerator

    class PlannedIds(IdGenerator):
        """Hands out the ids :func:`_emit` planned for the span being started, else the fallback's."""

        def generate_span_id(self) -> int:
            planned = _PLANNED.get()
            return planned[1] if planned else int(fallback.generate_span_id())

        def generate_trace_id(self) -> int:
            planned = _PLANNED.get()
            return planned[0] if planned else int(fallback.generate_trace_id())

        def is_trace_id_random(self) -> bool:
            return False

    return PlannedIds()


def _tracer(provider: TracerProvider | None) -> Tracer:
    _require_otel()
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider as SdkProvider

    from faber_runlog._version import __version__

    if provider is None:
        provider = trace.get_tracer_provider()  # type: ignore[assignment]
    if not isinstance(provider, SdkProvider):
        raise ConfigurationError(
            "traces of runs need an opentelemetry-sdk TracerProvider: pass tracer_provider=, or call "
            "opentelemetry.trace.set_tracer_provider(TracerProvider(...)) first"
        )
    tracer = provider.get_tracer(SCOPE, __version__)
    ids = getattr(tracer, "id_generator", None)
    if ids is not None and type(ids).__name__ != "PlannedIds":
        tracer.id_generator = _planned_ids(ids)  # type: ignore[attr-defined]
    return tracer


def _emit(tracer: Tracer, trace_id: int, spans: Iterable[SpanRecord]) -> int:
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

    n = 0
    for rec in spans:
        ctx = Context()
        if rec.parent_id is not None:
            parent = SpanContext(trace_id, rec.parent_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
            ctx = trace.set_span_in_context(NonRecordingSpan(parent))
        links = [
            Link(SpanContext(t, s, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))) for t, s in rec.links
        ]
        token = _PLANNED.set((trace_id, rec.span_id))
        try:
            span = tracer.start_span(
                rec.name, context=ctx, attributes=rec.attributes, links=links, start_time=rec.start_ns
            )
        finally:
            _PLANNED.reset(token)
        for name, at, attributes in rec.events:
            span.add_event(name, attributes, timestamp=at)
        if rec.error is not None:
            span.set_status(Status(StatusCode.ERROR, rec.error))
        span.end(end_time=rec.end_ns)
        n += 1
    return n


def spans_of(run: Run) -> list[SpanRecord]:
    """Every span of a run's trace, from its log (spans of a run still going end at its last event)."""
    builder = _Builder(run)
    out: list[SpanRecord] = []
    last_ns = builder.root.start_ns
    for event in run.log.read():
        out += builder.feed(event)
        last_ns = max(last_ns, _ns(event.timestamp))
    if not builder.ended:
        out += builder.open_spans(last_ns)
    # One span per id: a root ended twice (failed, resumed, ended again) keeps its last form.
    latest: dict[int, SpanRecord] = {}
    for s in out:
        latest[s.span_id] = s
    return list(latest.values())


def export_run(run: Run, tracer_provider: TracerProvider | None = None) -> str:
    """Turn a past run into one trace on ``tracer_provider`` (default: the global one); returns the trace id (hex)."""
    tracer = _tracer(tracer_provider)
    _emit(tracer, trace_id_of(run.id), spans_of(run))
    return f"{trace_id_of(run.id):032x}"


def send_otlp(run: Run, endpoint: str | None = None, *, timeout: float = 10.0) -> str:
    """Send a run's trace to an OTLP/HTTP endpoint (default: ``$OTEL_EXPORTER_OTLP_*`` or localhost:4318)."""
    _require_otel()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as e:
        raise MissingExtra(
            "opentelemetry-exporter-otlp-proto-http is needed to send traces over OTLP but is not installed; "
            "pip install opentelemetry-exporter-otlp-proto-http"
        ) from e
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult

    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise InvalidArgument(
            f"the OTLP endpoint must be an http(s) URL such as http://localhost:4318, got {endpoint!r}"
        )
    url = endpoint.rstrip("/") + "/v1/traces" if endpoint and not endpoint.endswith("/v1/traces") else endpoint
    failed: list[str] = []

    class Checked(OTLPSpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            result = super().export(spans)
            if result is not SpanExportResult.SUCCESS:
                failed.append(str(result))
            return result

    provider = SdkProvider(resource=Resource.create({"service.name": "faber_runlog"}))
    # One batch per 512 spans, not a request per span; shutdown() flushes them.
    provider.add_span_processor(BatchSpanProcessor(Checked(endpoint=url, timeout=max(1, int(timeout)))))
    try:
        trace_id = export_run(run, provider)
    finally:
        provider.shutdown()
    if failed:
        from faber_runlog.errors import StorageError

        raise StorageError(
            f"sending the trace of run {run.id} to {url or 'the default OTLP endpoint'} failed; "
            "check the endpoint is an OTLP/HTTP receiver and reachable"
        )
    return trace_id


# -- live: spans as events are appended ----------------------------------------------------


class RunTracer:
    """Emits a run's spans as its events are appended, with the ids :func:`export_run` gives them.

    Call :meth:`observe` with each event after it is appended (the ``otel`` gateway backend does,
    and so can a loop over ``AsyncEventLog.follow()``). A span goes out when the event that ends it
    arrives; the first event seen of a run (or one after a gap) makes the tracer read the events
    before it, so a tracer started mid-run emits what a bulk export would.
    """

    def __init__(self, tracer_provider: TracerProvider | None = None, *, max_runs: int = 256) -> None:
        self._tracer = _tracer(tracer_provider)
        self._builders: OrderedDict[str, _Builder] = OrderedDict()
        self._max_runs = max_runs
        self._lock = threading.Lock()

    def observe(self, run: Run, event: Event) -> int:
        """Fold ``event`` of ``run`` and emit the spans it closed; returns how many were emitted."""
        with self._lock:  # one fold per run at a time, whichever thread appended
            return self._observe(run, event)

    def _observe(self, run: Run, event: Event) -> int:
        builder = self._builders.get(run.id)
        if builder is None:
            builder = _Builder(run)
            for earlier in run.log.read(0, until=event.event_id - 1):
                builder.feed(earlier)  # already seen by someone else: rebuild, do not emit
            self._builders[run.id] = builder
            if len(self._builders) > self._max_runs:
                self._builders.popitem(last=False)
        self._builders.move_to_end(run.id)
        if event.event_id <= builder.last:
            return 0  # seen already
        done: list[SpanRecord] = []
        for missed in run.log.read(builder.last, until=event.event_id - 1):
            done += builder.feed(missed)
        done += builder.feed(event)
        return _emit(self._tracer, builder.trace_id, done)


class OtelBackend(Backend):
    """The ``otel`` gateway backend: every recorded event goes through a :class:`RunTracer`.

    ``import faber_runlog.otel`` registers it; in gateway.json ``"backends": {"otel": {"enabled": true}}``
    uses the global tracer provider (set one up, e.g. with an OTLP exporter, before opening the gateway).
    """

    name = "otel"

    def __init__(
        self,
        settings: dict[str, Any],  # noqa: ARG002  (a backend factory's signature: this backend has no settings)
        gateway: Gateway | None = None,  # noqa: ARG002  (a backend factory's signature)
        *,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.tracer = RunTracer(tracer_provider)

    def handle(self, run: Run, event: Event) -> None:
        """Emit the spans ``event`` closed."""
        self.tracer.observe(run, event)

    def close(self) -> None:
        """Nothing to release (the tracer provider belongs to the application)."""


def _register() -> None:
    from faber_runlog._domain.registry import DEFAULT_BACKENDS

    DEFAULT_BACKENDS.setdefault("otel", OtelBackend)


_register()
