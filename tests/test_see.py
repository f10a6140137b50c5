"""Seeing runs: step and phase frames against the fold, durations everywhere, timeline, HTML report, repr."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import make_store

from faber_runlog import Archiver, InvalidArgument, Resumer, RunStore, consolidate
from faber_runlog._domain.state import RunState
from faber_runlog._frontends.demo import run_demo
from faber_runlog._services.report import compose_report
from faber_runlog._services.steps import PHASE_COLUMNS, STEP_COLUMNS


def make_shapes(store: RunStore, *, only_retried: bool = False) -> dict[str, str]:
    """Runs of every shape: retries, skips (before and after a failure), a resume, approvals, a given duration."""
    ids: dict[str, str] = {}
    retried = store.create_run("acme", "web", params={"work_id": "1"}, tags={"team": "core"})
    log = retried.log
    log.emit("workflow_start")
    log.emit("phase_start", phase="build")
    log.emit("step_start", phase="build", step="compile")
    log.emit("step_error", phase="build", step="compile", error={"message": "exit 2", "code": 2})
    retried.retry_step("build", "compile")
    log.emit("step_start", phase="build", step="compile")
    log.emit("step_complete", phase="build", step="compile", duration_ms=1234)
    log.emit("step_skip", phase="build", step="lint")
    log.emit("step_start", phase="build", step="docs")
    log.emit("step_error", phase="build", step="docs", error="no sphinx")
    retried.skip_step("build", "docs", reason="docs are optional")
    log.emit("step_start", phase="build", step="package")  # work goes on: the run is running again
    log.emit("step_complete", phase="build", step="package")
    log.emit("phase_complete", phase="build")
    log.emit("phase_skip", phase="deploy")
    log.emit("workflow_complete")
    ids["retried"] = retried.id
    if only_retried:
        return ids

    resumed = store.create_run("acme", "web", params={"work_id": "2"})
    log = resumed.log
    log.emit("workflow_start")
    log.emit("step_start", phase="test", step="unit")
    log.emit("step_complete", phase="test", step="unit", metadata={"duration_ms": 30})
    log.emit("step_start", phase="test", step="e2e")
    log.emit("step_error", phase="test", step="e2e", error="timeout")
    log.emit("workflow_error", error="timeout")
    log = Resumer(store).resume(resumed.id).log
    log.emit("step_start", phase="test", step="e2e")
    log.emit("step_complete", phase="test", step="e2e")
    log.emit("workflow_complete")
    ids["resumed"] = resumed.id

    gated = store.create_run("other", "api")
    log = gated.log
    log.emit("workflow_start")
    log.emit("phase_start", phase="spec")
    log.emit("step_start", phase="spec", step="write")
    log.emit("step_complete", phase="spec", step="write")
    approval = gated.request_approval("review", phase="spec")
    gated.decide(approval.approval_id, "request_changes", client_token="t1", comment="more detail")
    log.emit("phase_start", phase="spec")
    log.emit("step_start", phase="spec", step="write")
    log.emit("step_error", phase="spec", step="write", error="<script>alert(1)</script>")
    log.emit("workflow_error", error="gave up")
    ids["gated"] = gated.id

    live = store.create_run("other", "api")
    live.log.emit("workflow_start")
    live.log.emit("step_start", phase="run", step="long")
    ids["live"] = live.id
    return ids


def _same(a: Any, b: Any) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)) or a is pd.NaT or a is pd.NA:
        return b is None or (isinstance(b, float) and math.isnan(b)) or b is pd.NaT or b is pd.NA
    if isinstance(b, pd.Timestamp):
        text: str = b.isoformat().replace("+00:00", "Z")
        return str(a).rstrip("Z")[:23] == text.rstrip("Z")[:23]
    return bool(a == b)


def check_against_fold(store: RunStore, steps: pd.DataFrame, phases: pd.DataFrame, run_id: str) -> None:
    """Each step's and phase's last attempt is what the folded state says; the starts are its attempt count."""
    state: RunState = store.get_run(run_id).state()
    mine = steps[steps["run_id"] == run_id]
    for p in state.phases.values():
        prow = phases[(phases["run_id"] == run_id) & (phases["phase"] == p.name)]
        assert list(range(1, len(prow) + 1)) == prow["attempt"].tolist()
        last = prow.iloc[-1]
        if last["status"] != "changes_requested":
            for field in ("status", "ended_at", "error", "duration_ms"):
                assert _same(getattr(p, field), last[field]), (run_id, p.name, field, getattr(p, field), last[field])
        for s in p.steps.values():
            rows = mine[(mine["phase"] == p.name) & (mine["step"] == s.name)]
            assert list(range(1, len(rows) + 1)) == rows["attempt"].tolist()
            assert s.attempts == int(rows["started_at"].notna().sum()), (run_id, s.name)
            last = rows.iloc[-1]
            fields = ("status", "ended_at", "error") + (("duration_ms", "started_at") if s.status != "skipped" else ())
            for field in fields:
                assert _same(getattr(s, field), last[field]), (run_id, s.name, field, getattr(s, field), last[field])


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_steps_and_phases_frames_match_the_folded_state_for_runs_of_every_shape(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = make_store(kind, tmp_path, request)
    ids = make_shapes(store)
    steps = store.steps_frame(progress=False)
    phases = store.phases_frame(progress=False)
    assert (list(STEP_COLUMNS), list(PHASE_COLUMNS)) == (list(steps.columns), list(phases.columns))
    for run_id in ids.values():
        check_against_fold(store, steps, phases, run_id)
    compile_ = steps[(steps["run_id"] == ids["retried"]) & (steps["step"] == "compile")]
    assert [(1, "failed", "exit 2"), (2, "completed", None)] == [
        (a, s, None if e is pd.NA else e)
        for a, s, e in zip(compile_["attempt"], compile_["status"], compile_["error"], strict=True)
    ]
    assert 1234.0 == compile_["duration_ms"].iloc[1]  # the producer's value
    docs = steps[(steps["run_id"] == ids["retried"]) & (steps["step"] == "docs")]
    assert ["failed", "skipped"] == docs["status"].tolist()  # the failure before the skip stays a row
    spec = phases[(phases["run_id"] == ids["gated"]) & (phases["phase"] == "spec")]
    assert ["changes_requested", "failed"] == spec["status"].tolist()
    assert {"work_id": "1"} == steps[steps["run_id"] == ids["retried"]]["params"].iloc[0]
    assert {"team": "core"} == steps[steps["run_id"] == ids["retried"]]["tags"].iloc[0]
    live = steps[steps["run_id"] == ids["live"]].iloc[0]
    assert ("running", True) == (live["status"], pd.isna(live["duration_ms"]))
    # only e2e's second attempt is in the resumed run's durations computed from timestamps: never NaN when ended
    ended = steps[steps["ended_at"].notna() & (steps["status"] != "skipped")]
    assert ended["duration_ms"].notna().all()


def test_frames_on_s3_match_the_fold_before_and_after_consolidation(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = make_store("s3", tmp_path, request, seal_grace=0)
    run_id = make_shapes(store, only_retried=True)["retried"]  # retries, skips, a producer's duration
    before = store.steps_frame(progress=False), store.phases_frame(progress=False)
    check_against_fold(store, *before, run_id)
    consolidate(store, run_id)
    after = store.steps_frame(progress=False), store.phases_frame(progress=False)
    for old, new in zip(before, after, strict=True):
        pd.testing.assert_frame_equal(old, new)


def test_frames_of_consolidated_and_archived_runs_equal_the_live_ones(tmp_path: Path) -> None:
    local = RunStore(str(tmp_path / "runs"))
    ids = make_shapes(local)
    before = local.steps_frame(progress=False), local.phases_frame(progress=False)
    archive = RunStore(str(tmp_path / "archive"))
    Archiver(local, archive, progress=False).archive_finished()
    ended = sorted(r for k, r in ids.items() if k != "live")
    for store in (local, archive):  # the source is consolidated now; the archive holds events.jsonl only
        for frame, old in zip(
            (store.steps_frame(progress=False), store.phases_frame(progress=False)), before, strict=True
        ):
            key = ["run_id", "phase", "attempt"]
            got = frame[frame["run_id"].isin(ended)].sort_values(key, ignore_index=True)
            want = old[old["run_id"].isin(ended)].sort_values(key, ignore_index=True)
            pd.testing.assert_frame_equal(want, got)
    assert ended == sorted(archive.events_frame(types=["log_sealed"], progress=False)["run_id"])  # when asked for
    assert "log_sealed" not in set(archive.events_frame(progress=False)["type"])
    steps, phases = archive.steps_frame(progress=False), archive.phases_frame(progress=False)
    for run_id in ended:
        check_against_fold(archive, steps, phases, run_id)


def test_frames_filter_like_events_frame_and_name_the_accepted_filters(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "runs"))
    ids = make_shapes(store)
    assert {ids["gated"], ids["live"]} == set(store.steps_frame(org="other", progress=False)["run_id"])
    assert {ids["live"]} == set(store.steps_frame(status="running", progress=False)["run_id"])
    assert {ids["resumed"]} == set(store.phases_frame(run_ids=[ids["resumed"]], progress=False)["run_id"])
    assert 0 == len(store.steps_frame(since="2999-01-01", progress=False))
    assert 1 == len(store.phases_frame(order="newest", limit=1, progress=False)["run_id"].unique())
    with pytest.raises(InvalidArgument, match=r"did you mean 'run_ids'.*it accepts: .*tags"):
        store.steps_frame(runs=[ids["live"]])


def test_durations_agree_in_events_frame_state_and_report(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "runs"))
    ids = make_shapes(store)
    events = store.events_frame(progress=False)
    ends = events[events["type"].isin(["step_complete", "step_error", "phase_complete", "phase_error"])]
    assert ends["duration_ms"].notna().all()  # computed from the timestamps where no producer gave one
    state = store.get_run(ids["resumed"]).state()
    e2e = ends[(ends["run_id"] == ids["resumed"]) & (ends["step"] == "e2e")]
    assert state.phases["test"].steps["e2e"].duration_ms == e2e["duration_ms"].iloc[-1]
    report = compose_report(store.storage, store.get_run(ids["resumed"]).log)
    assert [30.0, state.phases["test"].steps["e2e"].duration_ms] == [
        s["duration_ms"] for s in report["phases"][0]["steps"]
    ]
    assert "log_sealed" not in set(events["type"])  # protocol events are not rows unless asked for


def test_the_demo_report_shows_a_build_phase_as_long_as_its_compile_step(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "runs"))
    run_id = run_demo(store, out=io.StringIO())
    report = compose_report(store.storage, store.get_run(run_id).log)
    build = report["phases"][0]
    assert build["duration_ms"] >= build["steps"][0]["duration_ms"] == 1200


# -- the HTML report, the viewer and the timeline in a real browser --------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip  # one flag per item


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunStore, dict[str, str]]:
    store = RunStore(str(tmp_path_factory.mktemp("seen") / "runs"))
    return store, make_shapes(store)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed here (CI installs it: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def viewer(seen: tuple[RunStore, dict[str, str]]) -> Iterator[str]:
    import socket
    import threading

    import uvicorn

    from faber_runlog._frontends.viewer import make_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(seen[0]), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        threading.Event().wait(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def _page(browser: Any) -> tuple[Any, list[str]]:
    page = browser.new_page()
    problems: list[str] = []  # dialogs opened (a script ran) and requests that left this machine

    def on_dialog(d: Any) -> None:
        problems.append(d.message)
        d.dismiss()

    page.on("dialog", on_dialog)
    page.on(
        "request", lambda r: problems.append(r.url) if not r.url.startswith(("file:", "http://127.0.0.1")) else None
    )
    return page, problems


def test_the_html_report_opens_offline_with_steps_errors_and_escaped_event_text(
    seen: tuple[RunStore, dict[str, str]], browser: Any, tmp_path: Path
) -> None:
    from faber_runlog._frontends.cli import main

    store, ids = seen
    out = tmp_path / "report.html"
    assert 0 == main(
        ["--root", store.url, "report", ids["gated"], "--format", "html", "--output", str(out)], out=io.StringIO()
    )
    assert "<script>alert" not in out.read_text()
    page, problems = _page(browser)
    page.goto(out.as_uri())
    text = page.inner_text("body")
    assert "write" in text and "changes_requested" in text
    assert "<script>alert(1)</script>" in text  # shown as text, never run
    assert 4 <= page.locator("svg.timeline rect.bar").count()
    assert [] == problems  # no dialog, nothing fetched from the network
    page.close()


def test_the_viewer_lists_runs_failures_first_and_shows_a_run(
    seen: tuple[RunStore, dict[str, str]], browser: Any, viewer: str
) -> None:
    ids = seen[1]
    page, problems = _page(browser)
    page.goto(viewer + "/")
    assert ids["live"] in page.inner_text("#runs")
    assert page.inner_text("form").index("failed") < page.inner_text("form").index("completed")
    page.click("text=failed")
    listed = page.inner_text("#runs")
    assert ids["gated"] in listed and ids["retried"] not in listed
    page.click(f"text={ids['gated']}")
    body = page.inner_text("#run")
    assert "<script>alert(1)</script>" in body and "changes_requested" in body
    assert [] == problems
    page.close()


def test_the_run_page_shows_an_event_appended_by_another_process_without_a_reload(
    seen: tuple[RunStore, dict[str, str]], browser: Any, viewer: str
) -> None:
    import subprocess
    import sys

    store, ids = seen
    page, problems = _page(browser)
    page.goto(f"{viewer}/runs/{ids['live']}")
    page.evaluate("window.marker = 1")  # gone if the page reloads
    subprocess.run(
        [sys.executable, "-m", "faber_runlog", "--root", store.url, "emit", ids["live"], "step_error",
         "--phase", "run", "--step", "long", "--error", "appended <b>elsewhere</b>"],
        check=True, capture_output=True,
    )  # fmt: skip  # one command
    page.wait_for_selector("text=appended <b>elsewhere</b>", timeout=15_000)
    assert 1 == page.evaluate("window.marker")
    assert [] == problems
    page.close()


def test_timelines_are_plotly_gantt_figures_coloured_by_status_with_errors_on_hover(
    seen: tuple[RunStore, dict[str, str]],
) -> None:
    store, ids = seen
    fig = store.get_run(ids["retried"]).timeline()
    statuses = {trace.name for trace in fig.data}
    assert {"completed", "failed", "skipped"} <= statuses
    failed = next(trace for trace in fig.data if trace.name == "failed")
    assert any("exit 2" in str(row) for row in failed.customdata)  # the error is in the hover data
    many = store.timeline(org="acme")
    assert {ids["retried"], ids["resumed"]} == {row[0] for trace in many.data for row in trace.customdata}


def test_run_and_state_show_an_escaped_summary_in_jupyter(seen: tuple[RunStore, dict[str, str]]) -> None:
    store, ids = seen
    run = store.get_run(ids["gated"])
    html = run._repr_html_()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert "failed" in html and "spec/write" in html
    assert html == run.state()._repr_html_()


def _blocks(text: str, lang: str) -> list[str]:
    import re

    found = re.finditer(r"(<!-- docs-test: skip[^\n]*-->\n)?```" + lang + r"\n(.*?)```", text, re.S)
    return [m.group(2) for m in found if not m.group(1)]


def test_the_seeing_runs_page_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import shutil
    import subprocess
    import sys

    text = (Path(__file__).parent.parent / "docs" / "seeing-runs.md").read_text()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FABER_RUNLOG_ROOT", raising=False)
    namespace: dict[str, Any] = {}
    for block in _blocks(text, "python"):
        exec(compile(block, "docs/seeing-runs.md", "exec"), namespace)
    exe = shutil.which("faber-runlog")
    env = dict(os.environ)
    if exe is None or "PYTHONPATH" in env:  # run this checkout's CLI
        shim = tmp_path / "bin"
        shim.mkdir()
        (shim / "faber-runlog").write_text(f'#!/bin/sh\nexec {sys.executable} -m faber_runlog "$@"\n')
        (shim / "faber-runlog").chmod(0o755)
        env["PATH"] = f"{shim}:{env['PATH']}"
    for block in _blocks(text, "console"):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("$ "):
                continue
            expected = []
            for after in lines[i + 1 :]:
                if after.startswith("$ "):
                    break
                expected.append(after)
            done = subprocess.run(["bash", "-c", line[2:]], env=env, capture_output=True, text=True, check=True)
            for want in expected:
                assert want.strip() in done.stdout, (line, want, done.stdout, done.stderr)


def test_the_archive_and_analysis_recipes_run_and_give_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (Path(__file__).parent.parent / "docs" / "archive-and-analysis.md").read_text()
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    for block in _blocks(text, "python"):
        exec(compile(block, "docs/archive-and-analysis.md", "exec"), namespace)
    assert namespace["percentiles"].notna().all().all()
    assert ["compile", "deploy"] == list(namespace["percentiles"].index)
