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
from faber_runlog._archive import is_consolidated
from faber_runlog._cli import main
from faber_runlog._gateway import GatewayConfig, S3ArchiveConfig, write_config

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
