"""Timelines as plotly figures (the ``faber_runlog[plot]`` extra): ``Run.timeline()`` and ``RunStore.timeline()``.

Why plotly: ``plotly.express.timeline`` is a ready Gantt chart (bars from a
start to an end per row, coloured by a column, hover text per bar), and the
same figure shows in Jupyter, writes a static HTML file (``fig.write_html``)
and embeds in a web page. plotly (and pandas, which it needs) are imported
only when a figure is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faber_runlog._services.html import STATUS_COLOURS
from faber_runlog._services.steps import phases_frame, steps_frame
from faber_runlog.errors import MissingExtra

if TYPE_CHECKING:
    from faber_runlog._services.store import Run, RunStore

__all__ = ["run_timeline", "store_timeline"]


def _px() -> Any:
    try:
        import plotly.express as px
    except ImportError as e:
        raise MissingExtra(
            "plotly is needed for timeline figures but is not installed; install the plot extra: "
            "pip install 'faber_runlog[plot]'"
        ) from e
    return px


def _bars(steps: Any, phases: Any, pd: Any, *, per_run: bool) -> Any:
    """One frame of bars: phases, then their step attempts; open attempts end now, labels name the lane."""
    now = pd.Timestamp.now(tz="UTC")
    phases = phases.assign(step=pd.NA, kind="phase")
    steps = steps.assign(kind="step")
    bars = pd.concat([phases, steps], ignore_index=True)
    bars = bars[bars["started_at"].notna() | bars["ended_at"].notna()].copy()
    bars["start"] = bars["started_at"].fillna(bars["ended_at"])
    bars["end"] = bars["ended_at"].fillna(now)
    short = bars["run_id"].str.rsplit("/", n=1).str[-1].str[:8]
    lane = bars["phase"].where(bars["kind"] == "phase", bars["phase"] + " / " + bars["step"].fillna(""))
    bars["lane"] = (short + " " + lane) if per_run else lane
    bars["error"] = bars["error"].fillna("")
    return bars.sort_values(["run_id", "start"], ignore_index=True)


def _figure(bars: Any, title: str) -> Any:
    px = _px()
    fig = px.timeline(
        bars,
        x_start="start",
        x_end="end",
        y="lane",
        color="status",
        color_discrete_map=STATUS_COLOURS,
        hover_data={"run_id": True, "attempt": True, "duration_ms": True, "error": True, "lane": False},
        title=title,
    )
    fig.update_yaxes(autorange="reversed", title=None)
    return fig


def run_timeline(run: Run) -> Any:
    """A plotly figure of one run: phases and step attempts as bars on a time axis, coloured by status."""
    _px()
    import pandas as pd

    steps = steps_frame(run.store, run_ids=[run.id], progress=False)
    phases = phases_frame(run.store, run_ids=[run.id], progress=False)
    return _figure(_bars(steps, phases, pd, per_run=False), f"Run {run.id}")


def store_timeline(store: RunStore, **filters: Any) -> Any:
    """A plotly figure of many runs (the filters of ``steps_frame``), one lane per run's phase or step."""
    _px()
    import pandas as pd

    filters.setdefault("progress", False)
    steps = steps_frame(store, **filters)
    phases = phases_frame(store, **filters)
    return _figure(_bars(steps, phases, pd, per_run=True), f"Runs in {store.url}")
