"""Issue 19, sections 3-5: hostile values, one bad run among many, and smaller wrong results.

Each test names a defect found by the third adversarial campaign; it failed before its fix.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from faber_runlog import Archiver, RetentionPolicy, RunStore
from faber_runlog._frontends.cli import main
from faber_runlog.errors import InvalidArgument, InvalidEvent, InvalidParams

NAN = float("nan")
INF = float("inf")


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def local(tmp_path: Path) -> RunStore:
    return RunStore(str(tmp_path / "runs"))


# -- numbers: NaN, infinity, 1e10, floats for ints -----------------------------------------------


@pytest.mark.parametrize("keep_days", [NAN, INF, 1e10, -1, True, "3"])
def test_retention_policy_refuses_a_keep_days_that_is_no_finite_bounded_number(keep_days: Any) -> None:
    with pytest.raises(InvalidArgument, match="keep_days"):
        RetentionPolicy(keep_days=keep_days)


@pytest.mark.parametrize("older_than", [NAN, INF, 1e10, -2.0])
def test_archive_finished_refuses_an_age_that_is_no_finite_bounded_number(local: RunStore, older_than: float) -> None:
    archiver = Archiver(local, RunStore("memory://harden-archive"))
    with pytest.raises(InvalidArgument, match="older_than"):
        archiver.archive_finished(older_than=older_than)


def test_read_and_get_refuse_an_event_id_that_is_a_float(local: RunStore) -> None:
    run = local.create_run("acme", "web")
    run.start()
    with pytest.raises(InvalidArgument, match="since"):
        list(run.log.read(since=2.5))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="event_id"):
        run.log.get(1.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="limit"):
        list(run.log.read(limit=NAN))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="until"):
        list(run.log.read(until=INF))  # type: ignore[arg-type]
    assert [1] == [e.event_id for e in run.log.read(limit=5)]


@pytest.mark.parametrize("older_than", [NAN, INF, -1.0, 1e300])
def test_sweep_stale_refuses_an_older_than_that_is_no_finite_bounded_number(local: RunStore, older_than: float) -> None:
    with pytest.raises(InvalidArgument, match="older_than"):
        local.sweep_stale(older_than=older_than)


def test_status_view_refuses_a_tail_that_is_no_integer(local: RunStore) -> None:
    run = local.create_run("acme", "web")
    for tail in (NAN, 2.5, True, -1):
        with pytest.raises(InvalidArgument, match="tail"):
            run.status_view(tail=tail)  # type: ignore[arg-type]


@pytest.mark.parametrize("ttl", [INF, NAN, 1e300, 0, -1])
def test_a_heartbeat_ttl_must_be_a_finite_positive_number(local: RunStore, ttl: float) -> None:
    run = local.create_run("acme", "web")
    with pytest.raises(InvalidArgument, match="ttl"):
        run.heartbeat(ttl=ttl)
    with pytest.raises(InvalidArgument, match="ttl"):
        run.start_heartbeat(ttl=ttl)
    with pytest.raises(InvalidArgument, match="lease_ttl"):
        RunStore("memory://harden-ttl", lease_ttl=ttl)


def test_create_run_refuses_a_plan_that_is_no_list_of_phases(local: RunStore) -> None:
    before = sorted(os.listdir(local.url)) if os.path.isdir(local.url) else []
    with pytest.raises(InvalidParams, match="phases"):
        local.create_run("acme", "web", phases=5)  # type: ignore[arg-type]
    with pytest.raises(InvalidParams, match="steps"):
        local.create_run("acme", "web", phases=["build"], steps=[1])  # type: ignore[arg-type]
    with pytest.raises(InvalidParams, match="steps"):
        local.create_run("acme", "web", phases=["build"], steps={"build": 7})  # type: ignore[dict-item]
    after = sorted(os.listdir(local.url)) if os.path.isdir(local.url) else []
    assert before == after


# -- timestamps: parsed, not pattern-matched -------------------------------------------------------


@pytest.mark.parametrize(
    "stamp",
    [
        "2024-02-30T00:00:00Z",  # no such day
        "2024-02-03T00:00:00.123456789Z",  # nanoseconds: no reader of ours holds them
        "2024-13-01T00:00:00Z",
        "2024-02-03T25:00:00Z",
        "2024-02-03T00:00:00",  # no offset
        "2024-02-03T00:00:00+24:00",
        "soon",
    ],
)
def test_append_refuses_an_impossible_timestamp(local: RunStore, stamp: str) -> None:
    run = local.create_run("acme", "web")
    with pytest.raises(InvalidEvent, match="timestamp"):
        run.log.emit("workflow_start", timestamp=stamp)
    assert 0 == run.log.last_event_id()


def test_append_keeps_a_real_timestamp_with_an_offset(local: RunStore) -> None:
    run = local.create_run("acme", "web")
    event = run.log.emit("workflow_start", timestamp="2024-02-29T23:59:59.5+01:00")
    assert "2024-02-29T23:59:59.5+01:00" == event.timestamp


# -- the CLI: exit 2 and one line ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e300"])
def test_cli_sweep_refuses_an_older_than_that_is_no_finite_number(tmp_path: Path, value: str) -> None:
    code, out, err = _cli("--root", str(tmp_path / "runs"), "sweep", f"--older-than={value}")
    assert (2, "") == (code, out)
    assert 1 == len(err.strip().splitlines()) and "--older-than" in err, err


def test_cli_refuses_deeply_nested_json_as_bad_usage(tmp_path: Path) -> None:
    root = str(tmp_path / "runs")
    deep = "[" * 100_000 + "]" * 100_000
    code, out, err = _cli("--root", root, "new", "acme", "web", "--param", f"x:={deep}")
    assert (2, "") == (code, out)
    assert "internal error" not in err and 1 == len(err.strip().splitlines()), err
    assert not os.path.exists(root) or [] == os.listdir(root)


# -- one bad run among many: reported, never a stop ---------------------------------------------------


def _ended(store: RunStore) -> Any:
    run = store.create_run("acme", "web")
    run.start()
    run.complete()
    return run


def test_a_run_folder_symlinked_out_of_the_store_is_reported_and_the_rest_goes_on(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "runs"))
    good = store.create_run("acme", "web")
    good.start()
    ended = _ended(store)
    moved = store.create_run("acme", "web")
    moved.start()
    outside = tmp_path / "outside"
    shutil.move(moved.path, outside)
    os.symlink(outside, moved.path)
    listed = store.list_runs()
    assert sorted([good.id, ended.id]) == sorted(s.run_id for s in listed)
    assert [moved.id] == [p.run_id for p in listed.problems]
    assert "UnsafePath" in listed.problems[0].error
    assert [good.id] == [s.run_id for s in store.sweep_stale(include_unleased=True)]
    os.remove(os.path.join(ended.path, "report.json"))
    assert [ended.id] == store.recover_missing_reports()
    frame = store.runs_frame()
    assert sorted([good.id, ended.id]) == sorted(frame["run_id"])


def _damage_lease(run: Any) -> None:
    body = {"owner": "x:1", "acquired_at": "soon", "heartbeat_at": "soon", "expires_at": "soon", "epoch": 1}
    Path(run.path, "lease.json").write_text(json.dumps(body))


def test_a_lease_that_expires_soon_is_unreadable_not_a_crash(local: RunStore) -> None:
    from faber_runlog import Resumer

    held = local.create_run("acme", "web", concurrency_key="deploy")
    held.start()
    _damage_lease(held)
    other = local.create_run("acme", "web")
    other.start()
    swept = local.sweep_stale(include_unleased=True)
    assert sorted([held.id, other.id]) == sorted(s.run_id for s in swept)
    assert [] == swept.problems  # type: ignore[attr-defined]
    plan = Resumer(local).plan(held.id)
    assert held.id == plan.run_id
    # The key's holder has no readable lease: it is judged expired, so a new run may take the key.
    fresh = local.create_run("acme", "web", concurrency_key="deploy")
    assert fresh.id != held.id


def test_cleanup_reports_a_damaged_archived_json_and_cleans_the_other_runs(tmp_path: Path) -> None:
    source = RunStore(str(tmp_path / "runs"), seal_grace=0)
    archiver = Archiver(source, RunStore(str(tmp_path / "archive")))
    runs = [_ended(source) for _ in range(3)]
    assert all(r.ok for r in archiver.archive_many([r.id for r in runs]))
    Path(runs[1].path, "archived.json").write_text("{damaged")
    report = archiver.cleanup(dry_run=False)
    assert sorted([runs[0].id, runs[2].id]) == sorted(report.removed)
    assert [runs[1].id] == list(report.kept)
    assert "not removed" in next(i.reason for i in report.items if i.run_id == runs[1].id)


def test_runs_frame_skips_a_run_whose_metadata_is_damaged(local: RunStore) -> None:
    runs = [_ended(local) for _ in range(3)]
    Path(runs[1].path, "metadata.json").write_text("{damaged")
    Path(runs[1].path, "summary.json").unlink()
    assert sorted([runs[0].id, runs[2].id]) == sorted(local.runs_frame()["run_id"])


def test_recover_missing_reports_reports_a_damaged_run_and_writes_the_others(local: RunStore) -> None:
    runs = [_ended(local) for _ in range(3)]
    for run in runs:
        Path(run.path, "report.json").unlink()
    Path(runs[1].path, "summary.json").unlink()
    Path(runs[1].path, "state.json").unlink()
    Path(runs[1].path, "events", f"{1:020d}.json").write_text("{damaged")
    ids = [r.id for r in runs]
    written = local.recover_missing_reports(ids)
    assert sorted([runs[0].id, runs[2].id]) == sorted(written)
    assert [runs[1].id] == [p[0] for p in written.problems]  # type: ignore[attr-defined]


def test_events_frame_reads_a_time_stored_before_times_were_parsed(local: RunStore) -> None:
    run = local.create_run("acme", "web")
    run.start()
    path = Path(run.path, "events", f"{1:020d}.json")
    body = json.loads(path.read_text())
    body["timestamp"] = "2024-02-03T00:00:00.123456789Z"
    path.write_text(json.dumps(body))
    frame = local.events_frame()
    assert [dt.datetime(2024, 2, 3, 0, 0, 0, 123456, tzinfo=dt.UTC)] == list(frame["timestamp"])


# -- MCP tools answer in tool terms -------------------------------------------------------------------


def _tool(store: RunStore, name: str, arguments: dict[str, Any]) -> Any:
    import anyio

    pytest.importorskip("mcp")
    from faber_runlog._frontends.mcp_server import build_server
    from faber_runlog._services.gateway import Gateway

    server = build_server(Gateway(store=store))

    async def call() -> Any:
        return await server.call_tool(name, arguments)

    return anyio.run(call)


def test_faber_emit_tool_drops_fields_only_the_log_sets(local: RunStore) -> None:
    run = local.create_run("acme", "web")
    run.start()
    fields = {"phase": "build", "step": "compile", "lease_epoch": 3, "nonce": "n"}
    restored = {"faber_runlog": {"type": "step_start", "fields": fields}}
    # No phase given: our schema refuses it, so the tool converts it the FABER way, restoring the fields.
    result = _tool(local, "fractary_faber_event_emit", {"run_id": run.id, "type": "step_start", "metadata": restored})
    assert (False, "success") == (result.is_error, result.structured_content["status"]), result
    assert ("step_start", "compile") == (run.log.get(2).type, run.log.get(2).step)
    assert 3 != run.log.get(2).to_dict().get("lease_epoch")


@pytest.mark.parametrize("limit", [INF, NAN, -1.0])
def test_faber_run_list_tool_refuses_a_limit_that_is_no_finite_count(local: RunStore, limit: float) -> None:
    result = _tool(local, "fractary_faber_run_list", {"limit": limit})
    body = result.structured_content
    assert ("error", "list-runs") == (body["status"], body["operation"])
    assert "limit" in body["error"]


# -- smaller wrong results -------------------------------------------------------------------------------


def test_pause_from_failing_is_allowed_by_the_table_and_the_schema_alike(local: RunStore) -> None:
    from faber_runlog import event_schema
    from faber_runlog._domain.transitions import TRANSITIONS

    enum = event_schema("workflow_paused")["properties"]["metadata"]["properties"]["paused_from"]["enum"]
    assert list(TRANSITIONS["workflow_paused"].allowed()) == enum
    run = local.create_run("acme", "web")
    run.start()
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_error", phase="build", step="compile", error="exit 2")
    assert "failing" == run.state().status
    run.pause(reason="look at it")
    assert ("paused", "failing") == (run.state().status, run.state().paused_from)
    run.unpause()
    assert "failing" == run.state().status


def test_refused_create_run_calls_leave_no_run_folders(tmp_path: Path) -> None:
    from faber_runlog.errors import ActiveRunExists, TooManyActiveRuns

    store = RunStore(str(tmp_path / "runs"), max_active_runs=2)
    held = store.create_run("acme", "web", concurrency_key="deploy")
    other = store.create_run("acme", "web")
    for _ in range(5):
        with pytest.raises(ActiveRunExists):
            store.create_run("acme", "web", concurrency_key="deploy")
        with pytest.raises(TooManyActiveRuns):
            store.create_run("acme", "web")
    assert sorted([held.run_id.uuid, other.run_id.uuid]) == sorted(os.listdir(tmp_path / "runs" / "acme" / "web"))


def test_a_faber_rerun_chain_1200_runs_deep_is_ordered_parents_first_without_recursion() -> None:
    from types import SimpleNamespace

    from faber_runlog._faber.convert import _parents_first, mapped_run_id

    ids = [f"acme/web/{i:08d}-0000-4000-8000-000000000000" for i in range(1200)]

    def planned(i: int) -> Any:
        rel = {"rerun_of": ids[i - 1]} if i else {}
        folder = SimpleNamespace(path=f"runs/{1199 - i:04d}")  # the deepest child sorts first
        return SimpleNamespace(rid=mapped_run_id(ids[i]), metadata={"relationships": rel}, folder=folder)

    # Listed newest first, every child before its parent: the worst order for the walk.
    order = _parents_first([planned(i) for i in reversed(range(1200))], "local")
    assert ids == [str(p.rid) for p in order]


@pytest.mark.timeout(30)
def test_a_stray_segment_name_covering_a_trillion_events_is_bounded_by_the_listing(local: RunStore) -> None:
    from faber_runlog import Resumer
    from faber_runlog._format.layout import segment_name

    run = local.create_run("acme", "web")
    run.start()
    run.log.emit("step_start", phase="build", step="compile")
    folder = Path(run.path, "segments")
    folder.mkdir(exist_ok=True)
    (folder / segment_name(1, 10**12)).write_text("not a segment")
    resumer = Resumer(local)
    state, _ = resumer.reconstruct(run.id)
    assert 2 == state.last_event_id
    assert resumer.verify(run.id).ok
    assert [1, 2] == [e.event_id for e in run.log.read()]
    assert [1, 2] == list(local.events_frame()["event_id"])


def test_cancel_with_an_archive_that_cannot_be_reached_leaves_the_run_resumable(tmp_path: Path, s3_server: Any) -> None:
    from faber_runlog import Resumer
    from faber_runlog._services.archive import is_consolidated
    from faber_runlog._services.gateway import Gateway, GatewayConfig, S3ArchiveConfig

    store = RunStore(str(tmp_path / "runs"))
    options = {k: v for k, v in s3_server.storage_options.items() if k not in ("key", "secret")}
    archive = S3ArchiveConfig(enabled=True, bucket="no-such-bucket-harden", prefix="runs", storage_options=options)
    config = GatewayConfig(s3_archive=archive)
    run = store.create_run("acme", "web")
    run.start()
    gateway = Gateway(config, store=store)
    backend = gateway.backend("s3_archive")
    assert backend is not None
    event = gateway.emit(run.id, "workflow_cancelled", metadata={"reason": "stop"})
    assert event is not None and "cancelled" == run.state().status
    assert not is_consolidated(store, run.id)
    assert Resumer(store).plan(run.id, allow_cancelled=True).resumable
    results = backend.archiver().archive_many([run.id])  # type: ignore[attr-defined]
    assert ("failed", False) == (results[0].outcome, is_consolidated(store, run.id))
    assert "no-such-bucket-harden" in str(results[0].error)


def test_an_s3_store_rejecting_if_match_uses_the_read_then_write_fallback(s3_server: Any) -> None:
    import uuid

    from conftest import BUCKET
    from faultproxy import FaultProxy

    from faber_runlog.errors import ActiveRunExists

    with FaultProxy(s3_server.endpoint) as proxy:
        proxy.reject_if_match = True
        options = {
            "client_kwargs": {"endpoint_url": proxy.endpoint},
            "key": "testing",
            "secret": "testing",
            "use_listings_cache": False,
            "skip_instance_cache": True,
        }
        store = RunStore(f"s3://{BUCKET}/runs-{uuid.uuid4().hex}", storage_options=options)
        held = store.create_run("acme", "web", concurrency_key="deploy")
        held.start()
        caps = store.storage.capabilities
        assert (False, False) == (caps.compare_and_swap, caps.conditional_delete)
        with pytest.raises(ActiveRunExists):
            store.create_run("acme", "web", concurrency_key="deploy", run_id=None)
        held.heartbeat(ttl=0.2)  # a renewal swaps the lease: the fallback, not If-Match
        _wait_expired(held)
        swept = store.sweep_stale(older_than=0.0)
        assert [held.id] == [s.run_id for s in swept]
        assert "failed" == held.state().status
        fresh = store.create_run("acme", "web", concurrency_key="deploy")
        fresh.start()
        fresh.complete()
        assert "completed" == fresh.state().status
        if_match = sum(n for (_, action), n in proxy.counts.items() if action == "501_if_match")
        assert if_match <= 3  # the probe's own requests only: nothing after it sent If-Match


def _wait_expired(run: Any) -> None:
    import time

    from faber_runlog._log.lease import read_lease

    for _ in range(200):
        current = read_lease(run.store.storage, run.run_id)
        if current is None or not current.is_live():
            return
        time.sleep(0.05)
