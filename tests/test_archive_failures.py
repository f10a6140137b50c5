"""Archiving that fails leaves the run as it was and says so; an archived run verifies as it is.

A copy that fails after the archive answered the pre-check (write refused, a path occupied) must not
seal the run (a cancelled run stays resumable, docs/lifecycle.md), and the CLI command that ended
the run exits 1 naming the run and what to do. The archive carries ``summary.json`` at the seal, so
``verify --reconstruct`` holds on every archived run; when a summary is missing it says so.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import BUCKET, S3Server
from faultproxy import FaultProxy, match

from faber_runlog import Archiver, Resumer, Run, RunStore
from faber_runlog._frontends.cli import main
from faber_runlog._services.archive import is_consolidated
from faber_runlog._services.gateway import GatewayConfig, S3ArchiveConfig, write_config

pytestmark = pytest.mark.backends("local")


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def _cancelled(store: RunStore) -> Run:
    run = store.create_run("acme", "web")
    run.start()
    run.log.emit("step_start", phase="build", step="compile")
    run.cancel("stop")
    return run


def test_a_copy_that_fails_after_the_pre_check_leaves_the_run_unsealed_and_resumable(tmp_path: Path) -> None:
    source = RunStore(str(tmp_path / "runs"))
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "acme").write_text("a file where the archive's org folder goes")
    archiver = Archiver(source, RunStore(str(tmp_path / "archive")), progress=False)
    run = _cancelled(source)

    [result] = archiver.archive_many([run.id])

    assert ("failed", False) == (result.outcome, is_consolidated(source, run.id))
    assert str(run.id) in str(result.error) and "archive it again" in str(result.error)
    assert "running" == Resumer(source).resume(run.id, allow_cancelled=True).state().status
    run.cancel("stop again")
    (tmp_path / "archive" / "acme").unlink()  # the archive is writable again: archiving finishes
    assert "archived" == archiver.archive(run.id).outcome


def test_an_archived_run_verifies_with_reconstruct_in_the_archive_and_the_source(tmp_path: Path) -> None:
    source, archive = RunStore(str(tmp_path / "runs")), RunStore(str(tmp_path / "archive"))
    run = _cancelled(source)
    Archiver(source, archive, progress=False).archive(run.id)
    for root in (source, archive):
        code, out, err = _cli("--root", root.url, "verify", str(run.id), "--reconstruct")
        assert (0, "") == (code, err), out
    assert "cancelled" == archive.list_runs()[0].status


def test_verify_reconstruct_names_a_missing_summary(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "runs"))
    run = _cancelled(store)
    Path(run.path, "summary.json").unlink()
    code, out, _ = _cli("--root", store.url, "verify", str(run.id), "--reconstruct")
    assert 1 == code
    assert "summary.json is missing" in out


def test_cancel_through_the_cli_whose_archive_refuses_writes_exits_1_and_leaves_the_run_resumable(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"archive-{uuid.uuid4().hex}"
    with FaultProxy(s3_server.endpoint) as proxy:
        # Listing the archive works (the pre-check passes); every write to it is refused.
        proxy.always(match("PUT", rf"/{BUCKET}/{prefix}/"), "403")
        options: dict[str, Any] = {"client_kwargs": {"endpoint_url": proxy.endpoint}}
        archive = S3ArchiveConfig(enabled=True, bucket=BUCKET, prefix=prefix, storage_options=options)
        config = tmp_path / "gateway.json"
        write_config(GatewayConfig(root=str(tmp_path / "runs"), s3_archive=archive), config)
        monkeypatch.chdir(tmp_path)
        store = RunStore(str(tmp_path / "runs"))
        run = store.create_run("acme", "web")
        run.start()

        code, out, err = _cli("--config", str(config), "cancel", str(run.id), "--reason", "stop")

    assert 1 == code, (out, err)
    assert "cancelled" in out
    assert str(run.id) in err and f"faber-runlog archive {run.id}" in err
    assert not is_consolidated(store, run.id)
    assert Resumer(store).plan(run.id, allow_cancelled=True).resumable


def test_cancel_through_the_cli_with_a_working_archive_exits_0(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"archive-{uuid.uuid4().hex}"
    options = {k: v for k, v in s3_server.storage_options.items() if k not in ("key", "secret")}
    archive = S3ArchiveConfig(enabled=True, bucket=BUCKET, prefix=prefix, storage_options=options)
    config = tmp_path / "gateway.json"
    write_config(GatewayConfig(root=str(tmp_path / "runs"), s3_archive=archive), config)
    monkeypatch.chdir(tmp_path)
    run = RunStore(str(tmp_path / "runs")).create_run("acme", "web")
    run.start()
    code, out, err = _cli("--config", str(config), "cancel", str(run.id), "--json")
    assert (0, "") == (code, err)
    assert "backend_errors" not in json.loads(out)


# -- an archive that cannot take the run: the terminal event stands, the run stays unsealed, it is said --

_UNREACHABLE: dict[str, Any] = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}


def _missing_bucket(s3_server: S3Server) -> tuple[str, dict[str, Any]]:
    options = {k: v for k, v in s3_server.storage_options.items() if k not in ("key", "secret")}
    return f"no-such-bucket-{uuid.uuid4().hex[:12]}", options


def _gateway_file(tmp_path: Path, bucket: str, options: dict[str, Any], prefix: str = "faber/runs") -> Path:
    archive = S3ArchiveConfig(enabled=True, bucket=bucket, prefix=prefix, storage_options=options)
    config = tmp_path / "gateway.json"
    write_config(GatewayConfig(root=str(tmp_path / "runs"), s3_archive=archive), config)
    return config


def _left_unsealed(store: RunStore, run: Run, status: str) -> None:
    assert status == run.state().status  # the event stands
    assert not is_consolidated(store, run.id)  # ... and nothing was sealed
    assert not store.storage.exists(f"{run.id}/archived.json")


def test_emit_workflow_cancelled_with_an_unreachable_archive_exits_1_and_leaves_the_run_resumable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _gateway_file(tmp_path, "logs", _UNREACHABLE)
    monkeypatch.chdir(tmp_path)
    store = RunStore(str(tmp_path / "runs"))
    run = store.create_run("acme", "web")
    run.start()

    code, out, err = _cli("--config", str(config), "emit", str(run.id), "workflow_cancelled")

    assert (1, "2\n") == (code, out), err
    assert f"run {run.id}" in err and "workflow_cancelled was recorded as event 2" in err
    assert "not sealed" in err and f"`faber-runlog archive {run.id}`" in err
    _left_unsealed(store, run, "cancelled")
    assert Resumer(store).plan(run.id, allow_cancelled=True).resumable


@pytest.mark.parametrize(
    ("command", "status"),
    [
        (["cancel", "{run}", "--reason", "stop"], "cancelled"),
        (["complete", "{run}"], "completed"),
        (["emit", "{run}", "workflow_complete"], "completed"),
        (["emit", "{run}", "workflow_cancelled", "--json"], "cancelled"),
    ],
)
def test_every_cli_command_that_ends_a_run_says_when_its_archive_is_missing(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, command: list[str], status: str
) -> None:
    config = _gateway_file(tmp_path, *_missing_bucket(s3_server))
    monkeypatch.chdir(tmp_path)
    store = RunStore(str(tmp_path / "runs"))
    run = store.create_run("acme", "web")
    run.start()

    args = [a.format(run=run.id) for a in command]
    code, out, err = _cli("--config", str(config), *args)

    assert 1 == code, (out, err)
    assert f"run {run.id}" in err and "was recorded as event" in err and "s3_archive" in err
    assert f"`faber-runlog archive {run.id}`" in err and "not sealed" in err
    if "--json" in command:
        [problem] = json.loads(out)["backend_errors"]
        assert f"faber-runlog archive {run.id}" in problem
    _left_unsealed(store, run, status)


def test_gateway_emit_returns_the_event_and_warns_naming_the_run_and_what_to_do(
    tmp_path: Path, s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    from faber_runlog import Gateway

    bucket, options = _missing_bucket(s3_server)
    archive = S3ArchiveConfig(enabled=True, bucket=bucket, storage_options=options)
    gateway = Gateway(GatewayConfig(root=str(tmp_path / "runs"), s3_archive=archive))
    run = gateway.new_run("acme", "web")
    assert run is not None
    gateway.emit(run.id, "workflow_start")

    with caplog.at_level("WARNING", logger="faber_runlog"):
        event = gateway.emit(run.id, "workflow_cancelled")

    assert event is not None and "workflow_cancelled" == event.type  # acknowledged: it is durable
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"run {run.id}" in warning and "workflow_cancelled was recorded as event 2" in warning
    assert "not sealed" in warning and f"faber-runlog archive {run.id}" in warning
    _left_unsealed(gateway.store, run, "cancelled")


def test_an_archive_that_lists_but_refuses_the_probe_write_is_found_before_the_seal(
    tmp_path: Path, s3_server: S3Server
) -> None:
    prefix = f"archive-{uuid.uuid4().hex}"
    source = RunStore(str(tmp_path / "runs"))
    run = _cancelled(source)
    with FaultProxy(s3_server.endpoint) as proxy:
        # The run's own folder takes writes; the archive's internal folder (its index) does not.
        proxy.always(match("PUT", rf"/{BUCKET}/{prefix}/\.faber_runlog/"), "403")
        options: dict[str, Any] = {"client_kwargs": {"endpoint_url": proxy.endpoint}}
        archiver = Archiver(source, RunStore(f"s3://{BUCKET}/{prefix}", storage_options=options), progress=False)

        [result] = archiver.archive_many([run.id])

        assert "failed" == result.outcome
        assert str(run.id) in str(result.error) and "archive it again" in str(result.error)
        _left_unsealed(source, run, "cancelled")
        proxy.clear()
        assert "archived" == archiver.archive(run.id).outcome
    assert is_consolidated(source, run.id)


def test_a_copy_that_fails_after_the_seal_says_so_and_archiving_again_finishes_it(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"archive-{uuid.uuid4().hex}"
    store = RunStore(str(tmp_path / "runs"))
    run = store.create_run("acme", "web")
    run.start()
    with FaultProxy(s3_server.endpoint) as proxy:
        # Everything before the seal goes through; metadata.json, written after it, is refused.
        proxy.always(match("PUT", rf"/{BUCKET}/{prefix}/acme/web/[^/]+/metadata\.json"), "403")
        options: dict[str, Any] = {"client_kwargs": {"endpoint_url": proxy.endpoint}}
        config = _gateway_file(tmp_path, BUCKET, options, prefix=prefix)
        monkeypatch.chdir(tmp_path)

        code, out, err = _cli("--config", str(config), "cancel", str(run.id))

        assert 1 == code, (out, err)
        assert f"run {run.id}" in err and "workflow_cancelled was recorded as event 2" in err
        assert "sealed locally" in err and f"`faber-runlog archive {run.id}`" in err
        assert is_consolidated(store, run.id) and not store.storage.exists(f"{run.id}/archived.json")
        proxy.clear()

        code, out, err = _cli("--config", str(config), "archive", str(run.id))

    assert (0, "") == (code, err), out
    assert store.storage.exists(f"{run.id}/archived.json")
    archive = RunStore(f"s3://{BUCKET}/{prefix}", storage_options=s3_server.storage_options)
    assert "cancelled" == archive.get_run(run.id).state().status
