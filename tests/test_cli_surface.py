"""The command line as a shell user meets it: mistakes are errors, run ids as typed, the commands Python has."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import Cli, cli

from faber_runlog import RunStore
from faber_runlog._frontends.cli import main
from faber_runlog._services.gateway import CONFIG_ENV, CONFIG_PATH
from faber_runlog._version import __version__
from faber_runlog.errors import InvalidRunId, InvalidStoreUrl, RunNotFound

# Application tests: a local folder is all the CLI needs here.
pytestmark = pytest.mark.backends("local")

__all__ = ["cli"]  # the fixture, shared with test_cli.py


def _run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def _one_line_error(err: str) -> str:
    assert 1 == len(err.splitlines()) and err.startswith("faber-runlog: error: "), err
    return err


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh folder with no gateway.json as the current directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.delenv("FABER_RUNLOG_ROOT", raising=False)
    return tmp_path


# -- mistakes are errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["list"], ["show", "acme/web/3f2b"], ["tail", "3f2b8c"], ["verify", "3f2b8c"], ["report", "3f2b8c"], ["sweep"]],
)
def test_a_root_that_does_not_exist_is_an_error_naming_the_folder(here: Path, command: list[str]) -> None:
    missing = str(here / "nonexistent" / "dir")
    code, out, err = _run("--root", missing, *command)
    assert (1, "") == (code, out)
    assert f"no store at {missing} (--root): the folder does not exist" in _one_line_error(err)
    assert not os.path.exists(missing)


def test_a_command_that_creates_runs_says_where_it_created_the_store(here: Path) -> None:
    root = here / "new-store"
    code, out, err = _run("--root", str(root), "new", "acme", "web")
    assert (0, f"faber-runlog: created the store at {root}\n") == (code, err)
    assert [out.strip()] == [s.run_id for s in RunStore(str(root)).list_runs()]
    assert (0, "") == _run("--root", str(root), "new", "acme", "web")[::2]  # it exists now: nothing to say
    code, _, err = _run("--root", str(here / "other"), "init")
    assert (0, f"faber-runlog: created the store at {here / 'other'}\n") == (code, err)


@pytest.mark.parametrize(
    ("url", "fixed"),
    [("s3:/team-logs/runs", "s3://team-logs/runs"), ("s3:team", "s3://team"), ("S3//x", "s3://x")],
)
def test_a_mistyped_scheme_is_an_error_with_the_fix_not_a_local_folder(here: Path, url: str, fixed: str) -> None:
    code, out, err = _run("--root", url, "new", "acme", "web")
    assert (2, "") == (code, out)
    assert f"did you mean {fixed}?" in _one_line_error(err)
    with pytest.raises(InvalidStoreUrl, match=f"did you mean {fixed}"):
        RunStore(url)
    assert [] == os.listdir(here)  # no folder "s3:" (or "S3") was made
    code, _, err = _run("--root", url, "init")
    assert 2 == code and f"did you mean {fixed}?" in err
    assert [] == os.listdir(here)


def test_folders_and_well_formed_urls_are_not_taken_for_mistyped_schemes(here: Path) -> None:
    for url in ("runs", "my:runs", str(here / "abs"), "memory://runs"):
        RunStore(url)


@pytest.mark.parametrize(
    "args",
    [
        ["list", "--limit", "-1"],
        ["list", "--limit", "nan"],
        ["show", "RUN", "--events", "-2"],
        ["tail", "RUN", "--poll", "nan"],
        ["tail", "RUN", "--timeout", "-1"],
        ["sweep", "--older-than", "nan"],
        ["archive", "--all-finished", "--older-than", "-1", "--to", "x"],
        ["cleanup", "--keep-days", "inf", "--to", "x"],
        ["heartbeat", "RUN", "--ttl", "-5"],
        ["init", "--snapshot-every", "0"],
    ],
)
def test_negative_and_nan_numbers_are_bad_usage(cli: Cli, args: list[str]) -> None:
    run_id = cli.store.create_run("acme", "web").id
    code, out, err = cli(*[run_id if a == "RUN" else a for a in args])
    assert (2, "") == (code, out)
    assert "argument" in _one_line_error(err)


def test_global_options_work_before_or_after_the_command(here: Path) -> None:
    root = here / "runs"
    root.mkdir()
    run_id = _run("new", "acme", "web", "--root", str(root))[1].strip()
    assert [run_id] == [s.run_id for s in RunStore(str(root)).list_runs()]
    code, out, _ = _run("list", "--root", str(root), "--json")
    assert (0, [run_id]) == (code, [r["run_id"] for r in json.loads(out)])
    assert run_id in _run("--root", str(root), "show", run_id)[1]
    assert run_id in _run("show", run_id, "--json", "--root", str(root))[1]
    # A value before the command stays when the command does not repeat it.
    assert run_id in _run("--root", str(root), "list", "--json")[1]
    options = '{"auto_mkdir": true}'
    assert 0 == _run("list", "--root", str(root), "--storage-options", options)[0]
    assert 0 == _run("export", run_id, "--format", "jsonl", "--root", str(root))[0]
    assert 0 == _run("import", str(here / "nothing"), "--root", str(root), "--json")[0]
    with pytest.raises(LookupError):
        _run("show", "acme/web/00000000-0000-4000-8000-000000000000", "--root", str(root), "--debug")


def test_a_config_given_after_the_command_is_used(here: Path) -> None:
    config = here / "elsewhere" / "gateway.json"
    assert 0 == _run("init", "--config", str(config))[0]
    run_id = _run("new", "acme", "web", "--config", str(config))[1].strip()
    assert [run_id] == [s.run_id for s in RunStore(str(here / "elsewhere" / "runs")).list_runs()]


def test_init_over_a_config_with_s3_archiving_keeps_it_on(here: Path) -> None:
    assert 0 == _run("init", "--s3-bucket", "team-logs", "--s3-prefix", "ci")[0]
    path = here / CONFIG_PATH
    code, out, _ = _run("init", "--no-fsync")
    assert 0 == code and "  fsync: true -> false\n" in out
    body = json.loads(path.read_text())["backends"]["s3_archive"]
    assert (True, "team-logs", "ci") == (body["enabled"], body["bucket"], body["prefix"])
    assert json.loads((here / (CONFIG_PATH + ".bak")).read_text())["fsync"] is True


# -- run ids as typed ----------------------------------------------------------------------------------


def _ids(store: RunStore) -> tuple[str, str, str]:
    """Three runs: two in acme/web whose uuids share the prefix 3f2b8c, one in acme/api."""
    a = store.create_run("acme", "web", run_id="acme/web/3f2b8c1e-9a4d-4c6e-8f10-2b7d9e0a1c55").id
    b = store.create_run("acme", "web", run_id="acme/web/3f2b8c99-9a4d-4c6e-8f10-2b7d9e0a1c55").id
    c = store.create_run("acme", "api", run_id="acme/api/aa11bb22-9a4d-4c6e-8f10-2b7d9e0a1c55").id
    return a, b, c


def test_a_run_id_may_be_a_unique_prefix_or_a_bare_uuid(cli: Cli) -> None:
    a, _, c = _ids(cli.store)
    for typed in ("acme/web/3f2b8c1", "3f2b8c1e", a.split("/")[2], a):
        assert f"run:      {a}" in cli.ok("show", typed), typed
    assert c == cli.json("show", "aa11bb")["run_id"]
    assert c == cli.store.resolve_run_id("aa11bb22")


def test_an_ambiguous_prefix_lists_the_candidates(cli: Cli) -> None:
    a, b, _ = _ids(cli.store)
    for typed in ("acme/web/3f2b", "3f2b8c"):
        code, out, err = cli("show", typed)
        assert (2, "") == (code, out)
        assert f"matches 2 runs in {cli.store.url} ({a}, {b}); type more of the uuid" in _one_line_error(err)
    with pytest.raises(InvalidRunId, match="ambiguous"):
        cli.store.resolve_run_id("3f2b8c")


def test_a_run_id_that_names_no_run_suggests_close_matches(cli: Cli) -> None:
    a, _, _ = _ids(cli.store)
    uuid = a.split("/")[2]
    code, _, err = cli("show", f"acme/wbe/{uuid}")
    assert 1 == code and f"(did you mean {a}?)" in _one_line_error(err)
    typo = uuid[:-1] + "6"
    err = cli("tail", f"acme/web/{typo}")[2]
    assert "(did you mean " in err and a in err
    code, _, err = cli("show", "acme/apy/aa11")
    assert 1 == code and "no run id starts with 'acme/apy/aa11'" in err and "(did you mean acme/api/?)" in err
    with pytest.raises(RunNotFound, match="did you mean"):
        cli.store.resolve_run_id(f"acme/wbe/{uuid}")
    assert 1 == cli("show", "abcdef")[0]  # a bare prefix of 6 that matches nothing
    code, _, err = cli("show", "3f2b")  # too short without org/project: the usual refusal
    assert 2 == code and "invalid run id" in err


# -- the commands Python has -------------------------------------------------------------------------


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert 0 == main(["--version"])  # argparse prints it on stdout
    assert f"faber-runlog {__version__}\n" == capsys.readouterr().out


def test_diff_and_children_show_a_rerun_from_the_command_line(cli: Cli) -> None:
    parent = cli.ok("new", "acme", "web", "--param", "work_id=220", "--param", "retries:=3").strip()
    cli.ok("start", parent)
    cli.ok("complete", parent)
    child = cli.ok("rerun", parent, "--param", "work_id=221", "--param", "extra=1").splitlines()[0]
    assert '  + extra = "1"\n  ~ work_id: "220" -> "221"\n' == cli.ok("diff", parent, child)
    body = cli.json("diff", parent, child)
    assert ({"extra": "1"}, {}) == (body["added"], body["removed"])
    assert f"{child}\n" == cli.ok("children", parent)
    assert [] == cli.json("children", child)
    assert f"no runs were re-run from {child}\n" == cli.ok("children", child)


def test_heartbeat_takes_and_renews_a_lease_and_refuses_another_owners(cli: Cli) -> None:
    run_id = cli.ok("new", "acme", "web").strip()
    first = cli.json("heartbeat", run_id, "--owner", "ci-1", "--ttl", "60")["lease"]
    again = cli.json("heartbeat", run_id, "--owner", "ci-1", "--ttl", "60")["lease"]
    assert ("ci-1", first["epoch"]) == (again["owner"], again["epoch"])
    code, _, err = cli("heartbeat", run_id, "--owner", "ci-2")
    assert 1 == code and "is leased by ci-1 until" in _one_line_error(err)
    taken = cli.json("heartbeat", run_id, "--owner", "ci-2", "--take-over")["lease"]
    assert ("ci-2", first["epoch"] + 1) == (taken["owner"], taken["epoch"])


def test_cleanup_is_a_dry_run_unless_yes(cli: Cli, tmp_path: Path) -> None:
    run_id = cli.ok("new", "acme", "web").strip()
    cli.ok("start", run_id)
    cli.ok("complete", run_id)
    dest = str(tmp_path / "archive")
    cli.ok("archive", run_id, "--to", dest)
    out = cli.ok("cleanup", "--to", dest)
    assert "dry run:" in out and run_id in out
    body = cli.json("cleanup", "--to", dest, "--yes")
    assert (False, [run_id]) == (body["dry_run"], [i["run_id"] for i in body["items"]])
    assert 2 == cli("cleanup")[0]  # no archive named: bad usage


def test_event_types_lists_built_in_types_with_versions(cli: Cli) -> None:
    rows = {r["type"]: r for r in cli.json("event-types")}
    assert {"type": "step_start", "version": 1, "builtin": True} == rows["step_start"]
    assert ["step_start", "1", "built-in"] in [line.split() for line in cli.ok("event-types").splitlines()]


def test_export_writes_events_as_jsonl_or_csv_to_stdout_or_a_file(cli: Cli, tmp_path: Path) -> None:
    run_id = cli.ok("new", "acme", "web").strip()
    cli.ok("start", run_id)
    cli.ok("emit", run_id, "checkpoint", "--meta", "label=half", "--meta", "n:=2")
    lines = [json.loads(line) for line in cli.ok("export", run_id, "--format", "jsonl").splitlines()]
    assert [(1, "workflow_start"), (2, "checkpoint")] == [(e["event_id"], e["type"]) for e in lines]
    rows = list(csv.DictReader(io.StringIO(cli.ok("export", run_id, "--format", "csv"))))
    assert [("1", "workflow_start"), ("2", "checkpoint")] == [(r["event_id"], r["type"]) for r in rows]
    assert {"label": "half", "n": 2} == json.loads(rows[1]["metadata"])
    dest = tmp_path / "events.jsonl"
    code, out, err = cli("export", run_id, "--format", "jsonl", str(dest))
    assert (0, "", f"wrote 2 events of {run_id} to {dest}\n") == (code, out, err)
    assert 2 == len(dest.read_text().splitlines())


# -- a real process --------------------------------------------------------------------------------------


def test_the_installed_command_refuses_a_missing_root_and_takes_options_after_the_command(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in (CONFIG_ENV, "FABER_RUNLOG_ROOT")}
    missing = str(tmp_path / "nonexistent")
    done = subprocess.run(
        [sys.executable, "-m", "faber_runlog", "list", "--root", missing],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert (1, "") == (done.returncode, done.stdout)
    assert f"faber-runlog: error: no store at {missing} (--root)" in done.stderr and 1 == len(done.stderr.splitlines())


# -- advice in the user's terms ---------------------------------------------------------------------------

PYTHON_WORDS = ("allow_cancelled=True", "Resumer(", "rerun()", "register_event_type", "docs/", "run.resume", "run.fail")


def test_errors_on_the_command_line_name_commands_not_python_calls(cli: Cli) -> None:
    done = cli.ok("new", "acme", "web").strip()
    cli.ok("start", done)
    cli.ok("complete", done)
    cancelled = cli.ok("new", "acme", "web").strip()
    cli.ok("cancel", cancelled)
    paused = cli.ok("new", "acme", "web").strip()
    cli.ok("start", paused)
    cli.ok("pause", paused)
    failing = cli.ok("new", "acme", "web").strip()
    cli.ok("start", failing)
    cli.ok("emit", failing, "step_start", "--phase", "b", "--step", "s")
    cli.ok("emit", failing, "step_error", "--phase", "b", "--step", "s", "--error", "x")
    cases = [
        (["resume", done], f"re-run it (`faber-runlog rerun {done}`)"),
        (["resume", cancelled], "pass --allow-cancelled"),
        (["emit", paused, "workflow_complete"], f"(`faber-runlog unpause {paused}`)"),
        (["emit", failing, "workflow_complete"], f"`faber-runlog fail {failing} --error TEXT`"),
        (["emit", done, "deploy"], "declare it in gateway.json's event_types"),
        (["emit", done, "workflow_start"], f"`faber-runlog rerun {done}`"),
        (["show", "acme/web/00000000-0000-4000-8000-000000000000"], "`faber-runlog list`"),
    ]
    for args, words in cases:
        code, _, err = cli(*args)
        assert code in (1, 2) and words in _one_line_error(err), (args, err)
        assert [] == [w for w in PYTHON_WORDS if w in err], (args, err)


def test_a_reader_that_goes_away_ends_the_command_quietly(cli: Cli, tmp_path: Path) -> None:
    run_id = cli.store.create_run("acme", "web").id
    proc = subprocess.Popen(
        [sys.executable, "-m", "faber_runlog", *cli.root_args, "show", run_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `| head -1` having read what it needed before the command writes
    err = proc.stderr.read()
    proc.stderr.close()
    assert (0, b"") == (proc.wait(timeout=60), err)
