"""HTML views of runs: the self-contained report page, the viewer's run body, Jupyter's ``_repr_html_``.

Everything is rendered on the server side from the folded state and the
attempt rows (:mod:`faber_runlog._services.steps`), and every value that came from an
event or metadata is escaped (event text is untrusted). The timeline is an
inline SVG drawn here: a few KB, no script and nothing from the network, so
a report opens offline and can be attached to a ticket (plotly's inline
bundle would add ~4.5 MB per file; the interactive plotly figure is
``Run.timeline()``). Bars carry their status, times and error in an SVG
``<title>``, which browsers show on hover.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Sequence
from html import escape
from typing import TYPE_CHECKING, Any, Final

from faber_runlog._domain.plan import progress_text
from faber_runlog._domain.state import RunState, set_html_view
from faber_runlog._services.report import duration_text
from faber_runlog._services.steps import attempt_rows, run_attempts

if TYPE_CHECKING:
    from faber_runlog._services.store import Run

__all__ = ["STATUS_COLOURS", "page", "repr_html", "run_body", "run_report_html", "timeline_svg"]

STATUS_COLOURS: Final = {
    "completed": "#2e9d5b", "failed": "#d64541", "failing": "#e8743b", "running": "#3b7dd8", "retrying": "#e39a2d",
    "skipped": "#9aa3ad", "cancelled": "#6c6f73", "changes_requested": "#b27ad8",
    "awaiting_approval": "#e3c22d", "pending": "#cfd5db",
}  # fmt: skip  # a table: status -> colour
"""Bar colours by status: the HTML timeline and the plotly figures use the same."""

CSS: Final = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#1d2125;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:22px 0 6px;border-bottom:1px solid #e3e6e9}
table{border-collapse:collapse;margin:4px 0} td,th{padding:3px 10px;border-bottom:1px solid #eef0f2;text-align:left}
th{font-weight:600;background:#f6f7f8} .mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.st{display:inline-block;padding:0 7px;border-radius:9px;color:#fff;font-size:12px}
.err{color:#b3261e;white-space:pre-wrap} .muted{color:#6c757d} a{color:#2457a6}
.kv span{margin-right:12px} .step td:first-child{padding-left:26px} svg text{font:12px system-ui,sans-serif}
"""


def _st(status: str | None) -> str:
    s = status or "unknown"
    return f'<span class="st" style="background:{STATUS_COLOURS.get(s, "#555")}">{escape(s)}</span>'


def _t(text: str | None) -> _dt.datetime | None:
    if not text:
        return None
    try:
        return _dt.datetime.fromisoformat(text)
    except ValueError:
        return None


def timeline_svg(phases: Sequence[dict[str, Any]], steps: Sequence[dict[str, Any]], now: str | None = None) -> str:
    """Phases and step attempts as bars on a time axis (an inline SVG); an open attempt runs to ``now``."""
    lanes: list[tuple[str, bool, list[dict[str, Any]]]] = []
    for name in dict.fromkeys(r["phase"] for r in [*phases, *steps]):
        lanes.append((name, True, [r for r in phases if r["phase"] == name]))
        for step in dict.fromkeys(r["step"] for r in steps if r["phase"] == name):
            lanes.append((step, False, [r for r in steps if r["phase"] == name and r["step"] == step]))
    stamps = [t for r in [*phases, *steps] for t in (_t(r["started_at"]), _t(r["ended_at"])) if t is not None]
    end_now = _t(now)
    if not stamps:
        return '<p class="muted">No phase or step has started yet.</p>'
    lo, hi = min(stamps), max([*stamps, *([end_now] if end_now else [])])
    span = max((hi - lo).total_seconds(), 0.001)
    label_w, width, lane_h = 200, 760, 22
    height = lane_h * len(lanes) + 28
    out = [
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{label_w + width + 10}" height="{height}">'
    ]
    for i in range(5):  # the time axis: 0 .. span in quarters
        x = label_w + width * i / 4
        out.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - 18}" stroke="#e3e6e9"/>')
        anchor = ' text-anchor="end"' if i == 4 else ""
        out.append(
            f'<text x="{x:.1f}" y="{height - 4}" fill="#6c757d"{anchor}>+{duration_text(span * 1000 * i / 4)}</text>'
        )
    for n, (name, is_phase, rows) in enumerate(lanes):
        y = n * lane_h + 3
        label = escape(name) if is_phase else "\u2003" + escape(name)
        weight = ' font-weight="600"' if is_phase else ""
        out.append(f'<text x="4" y="{y + 13}"{weight}>{label}</text>')
        for r in rows:
            start = _t(r["started_at"]) or _t(r["ended_at"])
            stop = _t(r["ended_at"]) or end_now or start
            if start is None or stop is None:
                continue
            x = label_w + width * (start - lo).total_seconds() / span
            w = max(width * (stop - start).total_seconds() / span, 2.0)
            colour = STATUS_COLOURS.get(r["status"], "#555")
            tip = f"{name} attempt {r['attempt']}: {r['status']}, {duration_text(r['duration_ms'])}"
            if r.get("error"):
                tip += f"\n{r['error']}"
            h = lane_h - 6 if is_phase else lane_h - 10
            dy = 0 if is_phase else 2
            out.append(
                f'<rect class="bar" data-status="{escape(r["status"])}" x="{x:.1f}" y="{y + dy}" width="{w:.1f}" '
                f'height="{h}" rx="3" fill="{colour}"><title>{escape(tip)}</title></rect>'
            )
    out.append("</svg>")
    return "".join(out)


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: Sequence[str] = ()) -> str:
    body = "".join(
        f'<tr class="{escape(c)}">' + "".join(f"<td>{v}</td>" for v in r) + "</tr>"
        for r, c in zip(rows, [*cls, *[""] * 100000], strict=False)
    )
    return "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>" + body + "</table>"


def run_body(run: Run, *, events: int = 20, link: str | None = None) -> str:
    """The run as an HTML fragment: status, timeline, phases and steps, errors, approvals, artifacts, lineage, events.

    ``link`` is a URL prefix for other runs (the viewer's ``/runs/``); without
    it, run ids are plain text (a report file).
    """
    state = run.state()
    found = run_attempts(run)
    phases, steps = list(attempt_rows(found, "phases")), list(attempt_rows(found, "steps"))
    meta = run.metadata
    failed = state.failed_step
    parts = [
        f'<h1 class="mono">{escape(run.id)}</h1>',
        f'<p class="kv"><span>{_st(state.status)}</span><span>{escape(progress_text(state.phases.values()))}</span>'
        f"<span>events: {state.last_event_id}</span><span>started: {escape(state.started_at or '-')}</span>"
        f"<span>ended: {escape(state.ended_at or '-')}</span></p>",
    ]
    if failed is not None:
        parts.append(
            f"<p>Failing step: <b>{escape(failed.phase)}/{escape(failed.name)}</b>: "
            f'<span class="err">{escape(failed.error or "")}</span></p>'
        )
    if meta.params or meta.tags:
        kv = [f"{escape(k)}={escape(str(v))}" for k, v in {**meta.params, **meta.tags}.items()]
        parts.append(f'<p class="mono muted">{" &middot; ".join(kv)}</p>')
    parts += ["<h2>Timeline</h2>", timeline_svg(phases, steps, None if state.is_terminal else state.updated_at)]
    rows: list[list[str]] = []
    classes: list[str] = []
    for p in phases:
        rows.append([escape(p["phase"]), str(p["attempt"]), _st(p["status"]), duration_text(p["duration_ms"]), _err(p)])
        classes.append("phase")
        for s in steps:
            if s["phase"] == p["phase"] and _belongs(s, p, phases):
                rows.append(
                    [escape(s["step"]), str(s["attempt"]), _st(s["status"]), duration_text(s["duration_ms"]), _err(s)]
                )
                classes.append("step")
    parts += [
        "<h2>Phases and steps</h2>",
        _table(["phase / step", "attempt", "status", "duration", "error"], rows, classes),
    ]
    if state.errors:
        parts += ["<h2>Errors</h2>", _table(
            ["event", "where", "type", "message"],
            ([str(e.event_id), escape("/".join(x for x in (e.phase, e.step) if x) or "run"), escape(e.type),
              f'<span class="err">{escape(e.message)}</span>'] for e in state.errors),
        )]  # fmt: skip  # one call
    if state.approvals:
        parts += ["<h2>Approvals</h2>", _table(
            ["approval", "gate", "phase", "status", "by", "comment"],
            ([escape(a.approval_id), escape(a.gate), escape(a.phase or "-"), _st(a.status),
              escape(a.decided_by or "-"), escape(a.comment or "")] for a in state.approvals.values()),
        )]  # fmt: skip  # one call
    if state.artifacts:
        parts += ["<h2>Artifacts</h2>", _table(
            ["event", "action", "path", "where"],
            ([str(a.event_id), escape(a.action), f'<span class="mono">{escape(a.path)}</span>',
              escape("/".join(x for x in (a.phase, a.step) if x))] for a in state.artifacts),
        )]  # fmt: skip  # one call
    parts.append(_lineage(run, link))
    tail = list(run.log.read(max(0, state.last_event_id - events)))
    parts += ["<h2>Last events</h2>", _table(
        ["#", "time", "type", "where", "message / error"],
        ([str(e.event_id), escape(e.timestamp), escape(e.type), escape("/".join(x for x in (e.phase, e.step) if x)),
          escape(e.error_message or e.message or "")] for e in reversed(tail)),
    )]  # fmt: skip  # one call
    return "\n".join(parts)


def _belongs(step: dict[str, Any], phase: dict[str, Any], phases: Sequence[dict[str, Any]]) -> bool:
    """Whether a step attempt falls in this phase attempt (by event ids), so retried phases list their own steps."""
    later = [p for p in phases if p["phase"] == phase["phase"] and p["attempt"] > phase["attempt"]]
    starts_after = step["first_event_id"] >= phase["first_event_id"] or phase["attempt"] == 1
    before_next = not later or step["first_event_id"] < later[0]["first_event_id"]
    return starts_after and before_next


def _err(row: dict[str, Any]) -> str:
    # A phase that completed after a step failed keeps that error in the state; the table shows it no more.
    shown = row.get("error") and row["status"] != "completed"
    return f'<span class="err">{escape(row["error"])}</span>' if shown else ""


def _lineage(run: Run, link: str | None) -> str:
    try:
        lin = run.store.lineage(run.id)
    except Exception:  # noqa: BLE001  (lineage is a view: a damaged relative must not hide the run)
        return ""
    if not (lin.parent_run_id or lin.children):
        return ""

    def ref(rid: str) -> str:
        text = f'<span class="mono">{escape(rid)}</span>'
        return f'<a href="{escape(link + rid)}">{text}</a>' if link is not None else text

    items = []
    if lin.parent_run_id:
        items.append(f"<li>parent: {ref(lin.parent_run_id)}</li>")
    items += [f"<li>child: {ref(c)}</li>" for c in lin.children]
    return "<h2>Lineage</h2><ul>" + "".join(items) + "</ul>"


def page(title: str, body: str, script: str = "") -> str:
    """A whole HTML page with the inline stylesheet (and ``script``, inline): nothing from the network."""
    js = f"<script>{script}</script>" if script else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
        f"<body>{body}{js}</body></html>"
    )


def run_report_html(run: Run) -> str:
    """The run's report as one self-contained HTML page (inline CSS and SVG; no script, nothing fetched)."""
    return page(f"Run {run.id}", run_body(run, events=50))


def repr_html(state: RunState) -> str:
    """A compact summary for Jupyter: status, plan progress, the failing step and its error."""
    failed = state.failed_step
    line = (
        f"<b class='mono'>{escape(state.run_id)}</b> {_st(state.status)} {escape(progress_text(state.phases.values()))}"
    )
    line += f", {state.last_event_id} events"
    if failed is not None:
        line += (
            f"<br>failing step <b>{escape(failed.phase)}/{escape(failed.name)}</b>: "
            f"<span style='color:#b3261e'>{escape(failed.error or '')}</span>"
        )
    return f"<div>{line}</div>"


set_html_view(repr_html)  # RunState._repr_html_ (a layer below) renders with it from now on
