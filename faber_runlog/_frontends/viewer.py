"""The read-only run viewer behind ``faber-runlog ui`` (the ``faber_runlog[ui]`` extra: Starlette, uvicorn, Jinja2).

``/`` lists runs newest first from the store's summaries (``list_runs``: no
run is folded to draw the list), with failure-first status filters, org /
project, tag, param and text filters and pages; ``/runs/{run_id}`` shows the
run (:func:`faber_runlog._services.html.run_body`) and polls ``/api/runs/{run_id}``
every second, which answers with a new body only when the log has grown, so
events appended by any process appear without a reload. Every page is
rendered on the server with everything escaped (Jinja2 autoescaping, and the
run body's own escaping); the one inline script reads the run's address
from a data attribute. Nothing is loaded from the network, and it binds to
127.0.0.1 unless told otherwise. The list is paged here, after
``list_runs``; a store-side page can replace that without changing the page.
"""

from __future__ import annotations

import sys
from html import escape
from typing import TYPE_CHECKING, Any, Final, TextIO
from urllib.parse import urlencode

from faber_runlog._services import html as _html
from faber_runlog.errors import FaberRunlogError, MissingExtra

if TYPE_CHECKING:
    from faber_runlog._services.store import RunStore, RunSummary

__all__ = ["make_app", "serve"]

PER_PAGE: Final = 50
_ORDER: Final = ("failing", "failed", "running", "awaiting_approval", "paused", "created", "cancelled", "completed")
"""Status filters in the order the list shows them: failures first."""

_LIST: Final = """<h1>Runs <span class="muted">in {{ url }}</span></h1>
<form method="get" class="kv">
<span>{% for s, n in counts %}<a href="?{{ s.query }}">{{ s.label }}</a> ({{ n }}) {% endfor %}</span><br>
<input name="org" placeholder="org" value="{{ f.org }}">
<input name="project" placeholder="project" value="{{ f.project }}">
<input name="tag" placeholder="tag k=v" value="{{ f.tag }}">
<input name="param" placeholder="param k=v" value="{{ f.param }}">
<input name="q" placeholder="text" value="{{ f.q }}"> <input type="hidden" name="status" value="{{ f.status }}">
<button>filter</button></form>
<table id="runs"><tr><th>run</th><th>status</th><th>created</th><th>phase / step</th><th>events</th><th>params</th></tr>
{% for r in rows %}<tr><td class="mono"><a href="/runs/{{ r.run_id }}">{{ r.run_id }}</a></td>
<td><span class="st" style="background:{{ colour(r.status) }}">{{ r.status }}</span></td><td>{{ r.created_at }}</td>
<td>{{ r.current_phase or "" }}{% if r.current_step %} / {{ r.current_step }}{% endif %}</td>
<td>{{ r.last_event_id }}</td>
<td class="mono">{% for k, v in r.params.items() %}{{ k }}={{ v }} {% endfor %}</td></tr>{% endfor %}</table>
<p class="muted">{{ shown }} of {{ total }} runs, page {{ page }} of {{ pages }}
{% if prev %}<a href="?{{ prev }}">newer</a>{% endif %} {% if next %}<a href="?{{ next }}">older</a>{% endif %}</p>"""

_POLL: Final = """(function(){var m=document.getElementById('run');var last=+m.dataset.last;
function poll(){fetch(m.dataset.src+'?after='+last).then(function(r){return r.json();}).then(function(j){
if(j.html!==null){m.innerHTML=j.html;last=j.last_event_id;}setTimeout(poll,1000);},function(){setTimeout(poll,3000);});}
setTimeout(poll,1000);})();"""


def _require() -> tuple[Any, Any]:
    try:
        import jinja2
        import starlette  # noqa: F401  (checked here so the error names the extra)
        import uvicorn
    except ImportError as e:
        raise MissingExtra(
            f"{e.name} is needed for the run viewer but is not installed; install the ui extra: "
            "pip install 'faber_runlog[ui]'"
        ) from e
    return jinja2, uvicorn


def _pair(text: str) -> tuple[str, str] | None:
    key, sep, value = text.partition("=")
    return (key.strip(), value.strip()) if sep and key.strip() else None


def _matches(s: RunSummary, param: tuple[str, str] | None, q: str) -> bool:
    if param is not None and str(s.params.get(param[0])) != param[1]:
        return False
    if q:
        hay = " ".join([s.run_id, s.status, s.current_phase or "", s.current_step or "", str(s.params), str(s.tags)])
        return q.lower() in hay.lower()
    return True


def list_page(store: RunStore, query: dict[str, str], template: Any) -> str:
    """The list page for the query string's filters (status, org, project, tag, param, q, page)."""
    f = {k: query.get(k, "").strip() for k in ("status", "org", "project", "tag", "param", "q")}
    tag = _pair(f["tag"])
    try:
        runs = store.list_runs(
            org=f["org"] or None,
            project=f["project"] or None,
            tags=dict([tag]) if tag else None,
        )
    except FaberRunlogError as e:
        return _html.page("Runs", f'<p class="err">{escape(str(e))}</p>')
    param = _pair(f["param"])
    chosen = [s for s in runs if _matches(s, param, f["q"])]
    counts: dict[str, int] = {}
    for s in chosen:
        counts[s.status] = counts.get(s.status, 0) + 1
    if f["status"]:
        chosen = [s for s in chosen if s.status == f["status"]]
    chosen.sort(key=lambda s: (s.created_at, s.run_id), reverse=True)
    pages = max(1, -(-len(chosen) // PER_PAGE))
    try:
        page = min(max(1, int(query.get("page", "1"))), pages)
    except ValueError:
        page = 1
    rows = chosen[(page - 1) * PER_PAGE : page * PER_PAGE]

    def link(**change: Any) -> str:
        return urlencode({k: v for k, v in {**f, "page": page, **change}.items() if v not in ("", None)})

    statuses = [{"label": "all", "query": link(status="", page=1)}] + [
        {"label": s, "query": link(status=s, page=1)} for s in _ORDER if counts.get(s)
    ]
    body = template.render(
        url=store.url,
        f=f,
        rows=rows,
        counts=[(statuses[0], sum(counts.values()))] + [(x, counts[x["label"]]) for x in statuses[1:]],
        colour=lambda s: _html.STATUS_COLOURS.get(s, "#555"),
        shown=len(rows),
        total=len(chosen),
        page=page,
        pages=pages,
        prev=link(page=page - 1) if page > 1 else None,
        next=link(page=page + 1) if page < pages else None,
    )
    return _html.page("Runs", body)


def make_app(store: RunStore) -> Any:
    """The viewer's Starlette application over ``store`` (read-only: it only lists and reads runs)."""
    jinja2, _ = _require()
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    template = jinja2.Environment(autoescape=True).from_string(_LIST)

    def index(request: Request) -> HTMLResponse:
        return HTMLResponse(list_page(store, dict(request.query_params), template))

    def run_page(request: Request) -> HTMLResponse:
        run_id = request.path_params["run_id"]
        try:
            run = store.get_run(run_id)
            body = _html.run_body(run, link="/runs/")
            last = run.log.last_event_id()
        except FaberRunlogError as e:
            return HTMLResponse(_html.page("Not found", f'<p class="err">{escape(str(e))}</p>'), 404)
        src = escape(f"/api/runs/{run.id}")
        main = f'<p><a href="/">&larr; runs</a></p><main id="run" data-src="{src}" data-last="{last}">{body}</main>'
        return HTMLResponse(_html.page(f"Run {run.id}", main, _POLL))

    def run_api(request: Request) -> JSONResponse:
        run_id = request.path_params["run_id"]
        try:
            after = int(request.query_params.get("after", "0"))
            run = store.get_run(run_id)
            last = run.log.last_event_id()
            html = _html.run_body(run, link="/runs/") if last != after else None
        except (FaberRunlogError, ValueError) as e:
            return JSONResponse({"error": str(e)}, 404)
        return JSONResponse({"last_event_id": last, "html": html})

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/runs/{run_id:path}", run_api),
            Route("/runs/{run_id:path}", run_page),
        ]
    )


def serve(store: RunStore, *, host: str = "127.0.0.1", port: int = 8080, out: TextIO = sys.stderr) -> None:
    """Serve the viewer over ``store`` until interrupted (``faber-runlog ui``)."""
    _, uvicorn = _require()
    app = make_app(store)
    out.write(f"faber-runlog ui: serving {store.url} on http://{host}:{port}/ (read-only; Ctrl-C stops)\n")
    out.flush()
    uvicorn.run(app, host=host, port=port, log_level="warning")
