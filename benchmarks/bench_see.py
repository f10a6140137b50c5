"""Seeing runs: steps_frame against events_frame over archived runs, and the viewer's list page against list_runs.

- ``steps_frame`` over N archived runs (local archive, consolidated ``events.jsonl``) against
  ``events_frame`` over the same runs, best of 3 each: target ratio <= 1.5x its time.
- The viewer's list page (``GET /``, in-process through Starlette's test client, so the first byte is
  the whole page: it is not streamed) over M runs against ``list_runs`` over the same store: the page
  must stay under 1 s here; the ratio shows what the page adds to the listing.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import Row, best_of

from faber_runlog import Archiver, RunStore


def _alternating(ours: Callable[[], object], peer: Callable[[], object], rounds: int = 5) -> tuple[float, float]:
    """Best time of each over ``rounds`` rounds that alternate them (the machine's load hits both alike)."""
    a = b = float("inf")
    for _ in range(rounds):
        a = min(a, best_of(1, ours))
        b = min(b, best_of(1, peer))
    return a, b


def _make_runs(store: RunStore, n: int) -> list[str]:
    """``n`` finished runs of two phases and five steps, one step retried: 15 events each."""
    ids = []
    for r in range(n):
        run = store.create_run("bench", "see", params={"i": r}, tags={"team": "core"})
        log = run.log
        log.emit("workflow_start")
        for phase, steps in (("build", ("compile", "lint", "package")), ("test", ("unit", "e2e"))):
            log.emit("phase_start", phase=phase)
            for step in steps:
                log.emit("step_start", phase=phase, step=step)
                log.emit("step_complete", phase=phase, step=step, duration_ms=None if r % 2 else 5.0)
            log.emit("phase_complete", phase=phase)
        log.emit("workflow_complete")
        ids.append(run.id)
    return ids


def _frames(n: int, tmp: Path) -> Row:
    local = RunStore(str(tmp / "runs"), fsync=False)
    _make_runs(local, n)
    archive = RunStore(str(tmp / "archive"), fsync=False)
    Archiver(local, archive, progress=False).archive_finished()
    t_steps, t_events = _alternating(
        lambda: archive.steps_frame(progress=False), lambda: archive.events_frame(progress=False)
    )
    assert n * 5 == len(archive.steps_frame(progress=False))
    ratio = t_steps / t_events
    return Row(
        f"steps_frame over {n} archived runs (local)",
        t_steps,
        "events_frame over the same runs",
        t_events,
        "s",
        "<= 1.5x its time",
        ratio,
        ratio <= 1.5,
    )


def _list_page(m: int, tmp: Path) -> Row:
    from starlette.testclient import TestClient

    from faber_runlog._frontends.viewer import make_app

    store = RunStore(str(tmp / "many"), fsync=False)
    for r in range(m):
        run = store.create_run("bench", f"p{r % 5}", params={"i": r})
        run.log.emit("workflow_start")
        if r % 7 == 0:
            run.log.emit("step_start", phase="build", step="compile")
            run.log.emit("step_error", phase="build", step="compile", error=f"exit {r}")
    client = TestClient(make_app(store))

    def page() -> None:
        response = client.get("/?status=failing")
        assert response.status_code == 200
        assert "failing" in response.text

    t_page, t_list = _alternating(page, store.list_runs)
    return Row(
        f"viewer list page over {m} runs (first byte)",
        t_page,
        "list_runs over the same store",
        t_list,
        "s",
        "page < 1 s",
        t_page / t_list,
        t_page < 1.0,
    )


def run(*, quick: bool) -> list[Row]:
    n, m = (100, 500) if quick else (1_000, 5_000)
    with tempfile.TemporaryDirectory(prefix="bench-see-") as tmp:
        t = time.perf_counter()
        rows = [_frames(n, Path(tmp)), _list_page(m, Path(tmp))]
        assert time.perf_counter() - t > 0
        return rows
