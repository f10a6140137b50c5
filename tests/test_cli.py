from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import BUCKET, S3Server

from faber_runlog import RunStore
from faber_runlog._frontends.cli import main
from faber_runlog._services.gateway import CONFIG_ENV, CONFIG_PATH, GatewayConfig, load_config, write_config

# Application tests: the CLI needs a folder other processes see; a few smoke tests run on S3 too.
pytestmark = pytest.mark.backends("local")

MISSING = "acme/web/00000000-0000-4000-8000-000000000000"


class Cli:
    """Runs ``faber-runlog`` in this process against one store (local folder or moto S3)."""

    def __init__(self, root_args: list[str], store: RunStore, spec: dict[str, Any]) -> None:
        self.root_args = root_args
        self.store = store
        self.spec = spec

    def __call__(self, *args: str, root: bool = True) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main([*(self.root_args if root else []), *args], out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    def ok(self, *args: str) -> str:
        code, out, err = self(*args)
        assert (0, "") == (code, err), out
        return out

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))


@pytest.fixture
def cli(shared_kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.chdir(tmp_path)  # no gateway.json here: --root decides
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.delenv("FABER_RUNLOG_STORAGE_OPTIONS", raising=False)
    if shared_kind == "local":
        url = str(tmp_path / "runs")
        os.mkdir(url)  # a store that exists (a missing --root is an error for commands that read)
        return Cli(["--root", url], RunStore(url), {"url": url, "storage_options": {}})
    server: S3Server = request.getfixturevalue("s3_server")
    url = f"s3://{BUCKET}/runs-{uuid.uuid4().hex}"
    # No key or secret on the command line: s3fs takes them from the environment.
    options = {k: v for k, v in server.storage_options.items() if k not in ("key", "secret")}
    root_args = ["--root", url, "--storage-options", json.dumps(options)]
    return Cli(
        root_args, RunStore(url, storage_options=server.storage_options), {"url": url, "storage_options": options}
    )


def _failed_run(cli: Cli, *, ended: bool = True) -> str:
    """A failed run written through the library (the emit command has its own tests).

    Six events end with a step error, which leaves the run ``failing`` (resumable); unless ``ended``
    is False a seventh, ``workflow_error``, ends it as ``failed``.
    """
    run = cli.store.create_run("acme", "web", params={"work_id": "220", "retries": 3}, tags={"team": "core"})
    log = run.log
    log.emit("workflow_start")
    log.emit("phase_start", phase="build")
    log.emit("step_start", phase="build", step="compile")
    log.emit("step_complete", phase="build", step="compile", duration_ms=12.5)
    log.emit("step_start", phase="build", step="link")
    log.emit("step_error", phase="build", step="link", error="ld: exit 2")
    if ended:
        run.fail("ld: exit 2")
    return run.id


# -- every command, local and S3, human and --json -----------------------------------------------


def test_new_prints_the_run_id_and_stores_params_and_tags(cli: Cli) -> None:
    run_id = cli.ok("new", "acme", "web", "--param", "work_id=220", "--param", 'opts:={"x": [1]}').strip()
    meta = cli.store.get_run(run_id).metadata
    assert {"work_id": "220", "opts": {"x": [1]}} == meta.params
    body = cli.json("new", "acme", "web", "--tag", "team=core")
    assert {"team": "core"} == body["tags"]
    assert 2 == len(cli.store.list_runs())


def test_emit_prints_the_event_id_and_json_prints_the_event(cli: Cli) -> None:
    run_id = cli.ok("new", "acme", "web").strip()
    assert "1\n" == cli.ok("emit", run_id, "workflow_start")
    event = cli.json("emit", run_id, "checkpoint", "--meta", "label=half", "--meta", "n:=2", "--metadata", '{"a": 1}')
    assert (2, "checkpoint", {"a": 1, "label": "half", "n": 2}) == (event["event_id"], event["type"], event["metadata"])
    assert "3\n" == cli.ok("emit", run_id, "checkpoint", "--meta", "label=half", "--idempotency-key", "k")
    assert "3\n" == cli.ok("emit", run_id, "checkpoint", "--meta", "label=again", "--idempotency-key", "k")


@pytest.mark.backends("local", "s3")  # the CLI over S3 too: credentials from the environment
def test_list_shows_a_table_and_json_with_filters(cli: Cli) -> None:
    failed = _failed_run(cli)
    other = cli.ok("new", "acme", "api").strip()
    table = cli.ok("list")
    assert table.splitlines()[0].split() == ["RUN", "ID", "STATUS", "EVENTS", "AT", "CREATED", "TOOK"]
    assert failed in table and other in table
    took = {line.split()[0]: line.split()[-1] for line in table.splitlines()[1:]}
    assert "-" == took[other]  # not ended
    assert took[failed].endswith(("ms", "s", "min"))  # started to failed: a duration
    rows = cli.json("list", "--status", "failed")
    assert [(failed, "failed", 7)] == [(r["run_id"], r["status"], r["last_event_id"]) for r in rows]
    assert [other] == [r["run_id"] for r in cli.json("list", "--project", "api")]
    assert [failed] == [r["run_id"] for r in cli.json("list", "--tag", "team=core")]
    assert "no runs" in cli.ok("list", "--org", "nobody")


def test_show_prints_state_phases_steps_and_last_events(cli: Cli) -> None:
    run_id = _failed_run(cli)
    text = cli.ok("show", run_id, "--events", "2")
    assert f"run:      {run_id}" in text
    assert "status:   failed" in text
    assert "build        failed       compile=completed, link=failed" in text
    assert "failed:   build/link: ld: exit 2" in text
    assert "#7" in text and "#5" not in text
    body = cli.json("show", run_id)
    assert ("failed", 7, {"work_id": "220", "retries": 3}) == (
        body["status"],
        body["last_event_id"],
        body["metadata"]["params"],
    )
    assert list(range(1, 8)) == [e["event_id"] for e in body["events_tail"]]
    failing = _failed_run(cli, ended=False)
    assert "status:   failing" in cli.ok("show", failing)


def test_tail_prints_the_last_events_or_those_after_since(cli: Cli) -> None:
    run_id = _failed_run(cli, ended=False)
    lines = cli.ok("tail", run_id, "-n", "2").splitlines()
    assert 2 == len(lines) and lines[0].startswith("#5") and lines[1].startswith("#6")
    events = [json.loads(line) for line in cli.ok("tail", run_id, "--since", "3", "--json").splitlines()]
    assert [4, 5, 6] == [e["event_id"] for e in events]


@pytest.mark.backends("local", "s3")  # the CLI over S3 too: credentials from the environment
def test_resume_prints_the_plan_and_appends_workflow_resumed(cli: Cli) -> None:
    run_id = _failed_run(cli, ended=False)
    plan = cli.json("resume", run_id, "--dry-run")
    assert (True, "build", "link", [["build", "compile"]], None) == (
        plan["resumable"],
        plan["resume_phase"],
        plan["resume_step"],
        plan["skip"],
        plan["resumed_event_id"],
    )
    assert 6 == cli.store.get_run(run_id).state().last_event_id
    text = cli.ok("resume", run_id)
    assert "resumed: workflow_resumed is event 7" in text
    assert "resume at:  build/link" in text
    assert "skip:       build/compile" in text
    assert "workflow_resumed" == cli.store.get_run(run_id).log.get(7).type


def test_resume_of_a_completed_run_fails_with_the_reason(cli: Cli) -> None:
    run_id = cli.ok("new", "acme", "web").strip()
    cli.ok("emit", run_id, "workflow_start")
    cli.ok("emit", run_id, "workflow_complete")
    code, out, err = cli("resume", run_id)
    assert (1, "") == (code, out)
    assert (
        f"it completed (status 'completed', last event 2 (workflow_complete)); re-run it (`faber-runlog rerun {run_id}`)"
        in err
    )
    assert 1 == len(err.splitlines())
    assert "resumable:  no: it completed" in cli.ok("resume", run_id, "--dry-run")


def test_rerun_prints_the_child_id_and_the_parameter_diff(cli: Cli) -> None:
    run_id = _failed_run(cli)
    out = cli.ok("rerun", run_id, "--param", "work_id=221", "--param", "retries:=null", "--mode", "from_failure")
    child_id = out.splitlines()[0]
    assert '  ~ work_id: "220" -> "221"' in out and "  - retries (was 3)" in out
    child = cli.store.get_run(child_id)
    assert (run_id, {"work_id": "221"}) == (child.metadata.parent_run_id, child.metadata.params)
    body = cli.json("rerun", run_id, "--param", "extra=1")
    assert {"extra": "1"} == body["diff"]["added"]
    code, _, err = cli("rerun", run_id, "--mode", "from_event")
    assert 2 == code and "--from-event" in err


def test_verify_passes_a_sound_run_and_fails_a_damaged_one(cli: Cli) -> None:
    run_id = _failed_run(cli, ended=False)
    assert "6 events, ids 1..6 gapless and valid" in cli.ok("verify", run_id, "--reconstruct")
    assert True is cli.json("verify", run_id)["ok"]
    cli.store.storage.delete(f"{run_id}/events/{3:020d}.json")
    code, out, err = cli("verify", run_id)
    assert (1, "") == (code, err)
    assert "missing: event 3 of run" in out
    code, out, _ = cli("verify", run_id, "--json")
    assert (1, False) == (code, json.loads(out)["ok"])


def test_report_prints_markdown_or_json(cli: Cli) -> None:
    run_id = _failed_run(cli)
    assert f"# Run {run_id}" in cli.ok("report", run_id)
    assert ("failed", run_id) == (lambda r: (r["status"], r["run_id"]))(cli.json("report", run_id))
    running = cli.ok("new", "acme", "web").strip()
    cli.ok("emit", running, "workflow_start")
    assert "running" == cli.json("report", running)["status"]  # composed on the fly, not written
    assert cli.store.get_run(running).read_report() is None
    code, _, err = cli("report", running, "--write")
    assert 1 == code and "its final report is written when it ends" in err
    assert cli.store.get_run(running).read_report() is None
    cli.store.storage.delete(f"{run_id}/report.json")
    cli.ok("report", run_id, "--write")
    assert "failed" == cli.store.get_run(run_id).read_report()["status"]  # type: ignore[index]


@pytest.mark.backends("local", "s3")  # the CLI over S3 too: credentials from the environment
def test_archive_copies_finished_runs_to_another_store(cli: Cli, tmp_path: Path) -> None:
    done = cli.ok("new", "acme", "web").strip()
    cli.ok("emit", done, "workflow_start")
    cli.ok("emit", done, "workflow_complete")
    active = cli.ok("new", "acme", "web").strip()
    cli.ok("emit", active, "workflow_start")
    dest = str(tmp_path / "archive")
    out = cli.ok("archive", "--all-finished", "--to", dest)
    assert f"archived          {done}" in out
    assert [done] == [s.run_id for s in RunStore(dest).list_runs()]
    assert [{"run_id": done, "outcome": "already_archived"}] == [
        {k: r[k] for k in ("run_id", "outcome")} for r in cli.json("archive", done, "--to", dest)
    ]
    code, out, err = cli("archive", active, "--to", dest)
    assert 1 == code and "failed" in out and "" == err
    assert 2 == cli("archive", "--to", dest)[0]
    code, _, err = cli("archive", done)
    assert 2 == code and "no archive destination" in err


def test_demo_logs_a_run_in_the_store(cli: Cli) -> None:
    out = cli.ok("demo")
    assert "status:  failing" in out  # the demo stops at a failed step: resumable, not ended
    assert ["demo"] == [s.org for s in cli.store.list_runs()]


# -- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["show", "acme/web/nope"], 2, "invalid run uuid 'nope'"),
        (["show", "acme/web"], 2, "invalid run id"),
        (["show", MISSING], 1, f"run {MISSING} not found"),
        (["tail", MISSING], 1, "not found"),
        (["resume", MISSING], 1, "not found"),
        (["verify", MISSING], 1, "not found"),
        (["report", MISSING], 1, "not found"),
        (["rerun", MISSING], 1, "not found"),
        (["emit", MISSING, "workflow_start"], 1, "not found"),
        (["new", "Bad Org", "web"], 2, "org"),
        (["new", "acme", "web", "--param", "novalue"], 2, "is not k=v or k:=JSON"),
        (["new", "acme", "web", "--param", "x:={bad"], 2, "not valid JSON"),
    ],
)
def test_bad_input_gives_one_line_on_stderr_and_the_right_exit_code(
    cli: Cli, args: list[str], code: int, needle: str
) -> None:
    got, out, err = cli(*args)
    assert (code, "") == (got, out)
    assert 1 == len(err.splitlines()) and err.startswith("faber-runlog: error: ")
    assert needle in err
    assert "Traceback" not in err


def test_an_invalid_event_is_bad_usage_and_writes_nothing(cli: Cli) -> None:
    run_id = cli.ok("new", "acme", "web").strip()
    for args in (["step_start"], ["no_such_type"], ["checkpoint", "--metadata", "[1]"]):
        code, _, err = cli("emit", run_id, *args)
        assert 2 == code and 1 == len(err.splitlines()), err
    assert 0 == cli.store.get_run(run_id).state().last_event_id


def test_usage_errors_exit_2_and_debug_shows_the_traceback(cli: Cli) -> None:
    assert 2 == cli("no-such-command")[0]
    assert 2 == cli("show")[0]
    assert 0 == cli("--help")[0]
    with pytest.raises(LookupError):
        cli("--debug", "show", MISSING)


# -- init and gateway.json --------------------------------------------------------------------------------


def test_init_on_an_empty_folder_writes_gateway_json_and_the_runs_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    out, err = io.StringIO(), io.StringIO()
    assert 0 == main(["init"], out=out, err=err)
    path = tmp_path / CONFIG_PATH
    assert f"wrote {path}" in out.getvalue()
    assert GatewayConfig() == load_config(path)
    assert (tmp_path / ".faber_runlog/runs").is_dir()
    # Every command now finds the config and its root.
    out = io.StringIO()
    assert 0 == main(["new", "acme", "web"], out=out)
    run_id = out.getvalue().strip()
    assert [run_id] == [s.run_id for s in RunStore(str(tmp_path / ".faber_runlog/runs")).list_runs()]


def test_init_over_an_old_config_merges_says_what_changed_and_keeps_a_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    path = tmp_path / CONFIG_PATH
    write_config(GatewayConfig(snapshot_every=7), path)
    old = path.read_bytes()
    out = io.StringIO()
    assert 0 == main(["init", "--s3-bucket", "team-logs", "--no-fsync"], out=out)
    text = out.getvalue()
    assert f"updated {path} (the old file is {path}.bak); changed:" in text
    for line in ('backends.s3_archive.bucket: null -> "team-logs"', "fsync: true -> false"):
        assert f"  {line}\n" in text
    assert "snapshot_every" not in text  # not on the command line: kept as the user set it
    assert ("team-logs", 7) == (load_config(path).s3_archive.bucket, load_config(path).snapshot_every)
    assert old == (tmp_path / (CONFIG_PATH + ".bak")).read_bytes()
    out = io.StringIO()
    assert 0 == main(["init", "--json"], out=out)  # a plain init again: archiving stays on, nothing changes
    body = json.loads(out.getvalue())
    assert {"created": False, "changes": [], "backup": None} == {k: body[k] for k in ("created", "changes", "backup")}
    assert (True, "team-logs", False) == (
        load_config(path).s3_archive.enabled,
        load_config(path).s3_archive.bucket,
        load_config(path).fsync,
    )


def test_init_refuses_credentials_in_storage_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    assert 1 == main(["--storage-options", '{"secret": "x"}', "init"], err=err)
    assert "never holds secrets" in err.getvalue()
    assert not (tmp_path / CONFIG_PATH).exists()


def test_init_stores_a_relative_root_relative_to_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert 0 == main(["--root", "my-runs", "init"], out=io.StringIO())
    assert "../my-runs" == load_config(tmp_path / CONFIG_PATH).root
    assert (tmp_path / "my-runs").is_dir()
    sub = tmp_path / "src"
    sub.mkdir()
    monkeypatch.chdir(sub)  # found by searching upwards, root still resolves to the same folder
    assert 0 == main(["new", "acme", "web"], out=io.StringIO())
    assert 1 == len(RunStore(str(tmp_path / "my-runs")).list_runs())


def test_with_logging_disabled_emit_and_new_write_nothing_and_exit_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    store = RunStore(str(tmp_path / ".faber_runlog/runs"))
    run = store.create_run("acme", "web")
    assert 0 == main(["init", "--disabled"], out=io.StringIO())
    err = io.StringIO()
    assert 0 == main(["emit", run.id, "workflow_start"], out=io.StringIO(), err=err)
    assert "logging is disabled" in err.getvalue()
    assert 0 == main(["new", "acme", "web"], out=io.StringIO(), err=io.StringIO())
    assert 0 == main(["emit", "garbage", "garbage"], out=io.StringIO(), err=io.StringIO())
    assert (1, 0) == (len(store.list_runs()), store.get_run(run.id).state().last_event_id)
    out = io.StringIO()
    assert 0 == main(["show", run.id, "--json"], out=out)  # reading still works
    assert "created" == json.loads(out.getvalue())["status"]


def test_a_broken_gateway_json_is_one_line_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    path = tmp_path / CONFIG_PATH
    path.parent.mkdir(parents=True)
    path.write_text('{"config_version": 1, "fsync": "always"}')
    err = io.StringIO()
    assert 1 == main(["list"], out=io.StringIO(), err=err)
    assert f"{path} is invalid: fsync must be boolean" in err.getvalue() and 1 == len(err.getvalue().splitlines())


# -- real processes ---------------------------------------------------------------------------------------------


def _command(cli: Cli) -> list[str]:
    return [sys.executable, "-m", "faber_runlog", *cli.root_args]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(CONFIG_ENV, None)
    return env


def test_the_installed_command_exits_2_on_a_bad_run_id_without_a_traceback(cli: Cli, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("faber-runlog")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "faber_runlog"]
    done = subprocess.run(
        [*command, *cli.root_args, "show", "not-a-run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(tmp_path),
        timeout=60,
    )
    assert (2, "") == (done.returncode, done.stdout)
    assert 1 == len(done.stderr.splitlines()) and "invalid run id" in done.stderr


def test_tail_follow_prints_events_emitted_by_another_process(cli: Cli, tmp_path: Path) -> None:
    run_id = cli.ok("new", "acme", "web").strip()
    cli.ok("emit", run_id, "workflow_start")
    tail = subprocess.Popen(
        [*_command(cli), "tail", run_id, "--follow", "--json", "--until-end", "--timeout", "60", "--poll", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=_env(tmp_path),
    )
    try:
        assert tail.stdout is not None
        assert 1 == json.loads(tail.stdout.readline())["event_id"]  # it is following now
        writer = Path(__file__).with_name("_workers.py")
        subprocess.run(
            [sys.executable, str(writer), "append", json.dumps(cli.spec), run_id, "3", "w"],
            check=True,
            capture_output=True,
            env=_env(tmp_path),
            timeout=60,
        )
        subprocess.run(
            [*_command(cli), "emit", run_id, "workflow_complete"],
            check=True,
            capture_output=True,
            cwd=tmp_path,
            env=_env(tmp_path),
            timeout=60,
        )
        rest, err = tail.communicate(timeout=60)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    assert (0, "") == (tail.returncode, err)
    events = [json.loads(line) for line in rest.splitlines()]
    assert [2, 3, 4, 5] == [e["event_id"] for e in events]
    assert ["w-0", "w-1", "w-2"] == [e["metadata"]["label"] for e in events[:3]]
    assert "workflow_complete" == events[-1]["type"]
