"""The lifecycle from the command line: every checked transition, approvals, sweep and report, local and S3."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest
from test_cli import MISSING, Cli, cli

from faber_runlog import RunStore
from faber_runlog._frontends.cli import main
from faber_runlog._services.gateway import CONFIG_ENV

# Application tests: the CLI needs a folder other processes see; S3 has its own smoke test.
pytestmark = pytest.mark.backends("local")

__all__ = ["cli"]  # the fixture, shared with test_cli.py


def test_every_transition_goes_through_the_checked_path(cli: Cli) -> None:
    run_id = cli.ok("new", "acme", "web").strip()
    assert "start: workflow_start is event 1; the run is now running\n" == cli.ok("start", run_id)
    body = cli.json("pause", run_id, "--reason", "lunch")
    assert ("pause", 2, "paused", "workflow_paused") == (
        body["action"],
        body["event_id"],
        body["status"],
        body["event"]["type"],
    )
    code, out, err = cli("pause", run_id)
    assert (1, "") == (code, out)
    assert err.startswith("faber-runlog: error: cannot pause run") and 1 == err.count("\n")
    assert "unpause: workflow_resumed is event 3; the run is now running\n" == cli.ok("unpause", run_id)
    cli.ok("emit", run_id, "phase_start", "--phase", "build")
    cli.ok("emit", run_id, "step_start", "--phase", "build", "--step", "link")
    cli.ok("emit", run_id, "step_error", "--phase", "build", "--step", "link", "--error", "exit 2")
    assert "step_retry" == cli.json("retry-step", run_id, "build", "link")["event"]["type"]
    assert "step_skip" == cli.json("skip-step", run_id, "build", "docs", "--reason", "not needed")["event"]["type"]
    code, _, err = cli("complete", run_id)  # build and its retried step link are still open
    assert 1 == code and "step build/link (retrying) not finished" in err
    cli.ok("emit", run_id, "step_complete", "--phase", "build", "--step", "link")
    cli.ok("emit", run_id, "phase_complete", "--phase", "build")
    assert "completed" == cli.json("complete", run_id, "--summary", "shipped")["status"]
    code, _, err = cli("fail", run_id, "--error", "late")
    assert 1 == code and "its status is 'completed'" in err
    state = cli.store.get_run(run_id).state()
    assert ("completed", 11) == (state.status, state.last_event_id)  # refusals wrote nothing


@pytest.mark.parametrize("cli", ["local"], indirect=True)  # the store kind adds nothing here
def test_cancel_and_fail_end_the_run_and_fail_needs_an_error(cli: Cli) -> None:
    a = cli.ok("new", "acme", "web").strip()
    b = cli.ok("new", "acme", "web").strip()
    cli.ok("start", a)
    assert "cancelled" == cli.json("cancel", a, "--reason", "wrong branch")["status"]
    assert 2 == cli("fail", b)[0]  # --error is required: bad usage
    assert "failed" == cli.json("fail", b, "--error", "disk full")["status"]
    assert {a: "cancelled", b: "failed"} == {r.run_id: r.status for r in cli.store.list_runs()}


def test_approvals_with_client_tokens_replay_and_conflict(cli: Cli) -> None:
    run_id = cli.ok("new", "acme", "web").strip()
    cli.ok("start", run_id)
    text = cli.ok("request-approval", run_id, "deploy", "--approval-id", "dep-1", "--payload", '{"sha": "abc"}')
    assert "approval id: dep-1" in text
    first = cli.json("request-changes", run_id, "dep-1", "--token", "t-1", "--comment", "tests first")
    again = cli.json("request-changes", run_id, "dep-1", "--token", "t-1")
    assert first["event_id"] == again["event_id"]  # a retried command writes nothing new
    code, _, err = cli("approve", run_id, "dep-1", "--token", "t-1")
    assert 1 == code and "conflicts" in err
    cli.ok("request-approval", run_id, "deploy", "--approval-id", "dep-2")
    assert "running" == cli.json("approve", run_id, "dep-2", "--token", "t-2", "--user", "ana")["status"]
    cli.ok("request-approval", run_id, "release", "--approval-id", "rel-1")
    assert "failed" == cli.json("reject", run_id, "rel-1")["status"]
    approvals = cli.store.get_run(run_id).state().approvals
    assert {"dep-1": "changes_requested", "dep-2": "approved", "rel-1": "rejected"} == {
        k: a.status for k, a in approvals.items()
    }
    code, _, err = cli("approve", run_id, "nope", "--token", "x")
    assert 1 == code and "has no approval 'nope'" in err


def test_sweep_fails_stale_runs_and_report_shows_the_outcome(cli: Cli) -> None:
    run_id = cli.ok("new", "acme", "web").strip()
    cli.ok("start", run_id)
    assert [] == cli.json("sweep")  # no lease, not asked to include unleased runs
    swept = cli.json("sweep", "--include-unleased")
    assert [(run_id, "running")] == [(s["run_id"], s["previous_status"]) for s in swept]
    assert "failed" == cli.store.get_run(run_id).state().status
    assert "failed" == cli.json("report", run_id)["status"]
    assert 2 == cli("sweep", "--older-than", "-1")[0]


@pytest.mark.parametrize("cli", ["local"], indirect=True)  # the store kind adds nothing here
def test_unpause_returns_a_paused_run_to_where_it_was(cli: Cli) -> None:
    run_id = cli.ok("new", "acme", "web").strip()
    cli.ok("start", run_id)
    cli.ok("pause", run_id)
    body = cli.json("unpause", run_id, "--reason", "back")
    assert ("running", "workflow_resumed", "paused") == (
        body["status"],
        body["event"]["type"],
        body["event"]["metadata"]["previous_status"],
    )


@pytest.mark.parametrize("cli", ["local"], indirect=True)  # refused before or without touching the store
@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["list", "--status", "failure"], 2, "unknown run status 'failure' (did you mean 'failed'?)"),
        (["new", "acme", "web", "--param", "n:=18446744073709551616"], 2, "outside the 64-bit range"),
        (["new", "acme", "web", "--param", "n:=NaN"], 2, "NaN"),
        (["show", MISSING], 1, "`faber-runlog list` to see what exists"),
        (["start", MISSING], 1, "not found"),
    ],
)
def test_cli_errors_teach_in_cli_words(cli: Cli, args: list[str], code: int, needle: str) -> None:
    got, out, err = cli(*args)
    assert (code, "") == (got, out)
    assert needle in err and 1 == err.count("\n"), err
    assert "list_runs()" not in err


@pytest.mark.parametrize("cli", ["local"], indirect=True)  # the store kind adds nothing here
def test_an_event_missing_a_field_or_with_a_mistyped_type_says_which(cli: Cli) -> None:
    run_id = cli.ok("new", "acme", "web").strip()
    code, _, err = cli("emit", run_id, "step_start", "--phase", "build")
    assert (2, True) == (code, "missing the field 'step'" in err), err
    code, _, err = cli("emit", run_id, "step_strat", "--phase", "build", "--step", "a")
    assert (2, True) == (code, "did you mean 'step_start'" in err), err
    assert (
        0
        == RunStore(cli.spec["url"], storage_options=cli.spec["storage_options"] or None)
        .get_run(run_id)
        .state()
        .last_event_id
    )


# -- tail and demo ---------------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("cli", ["local"], indirect=True)  # the store kind adds nothing here
def test_tail_until_end_stops_when_a_step_error_fails_the_run_while_following(cli: Cli) -> None:
    run = cli.store.create_run("acme", "web")
    run.log.emit("workflow_start")
    run.log.emit("phase_start", phase="build")
    run.log.emit("step_start", phase="build", step="link")

    def fail_soon() -> None:
        time.sleep(0.3)
        cli.store.get_run(run.id).log.emit("step_error", phase="build", step="link", error="ld: exit 2")

    writer = threading.Thread(target=fail_soon)
    writer.start()
    started = time.monotonic()
    out = cli.ok("tail", run.id, "--follow", "--until-end", "--poll", "0.05", "--timeout", "30")
    writer.join()
    assert time.monotonic() - started < 20  # it stopped at the failure, not at the idle timeout
    assert out.splitlines()[-1].split()[2] == "step_error"
    # On a run that has already failed, it prints the tail and stops at once.
    assert 4 == len(cli.ok("tail", run.id, "--follow", "--until-end", "--timeout", "30").splitlines())


@pytest.mark.parametrize("cli", ["local"], indirect=True)  # about the terminal, not the store
def test_tail_follow_says_how_to_stop_only_on_a_terminal(cli: Cli) -> None:
    run_id = cli.ok("new", "acme", "web").strip()
    cli.ok("start", run_id)
    for err, expected in [(Terminal(), f"following {run_id}; press Ctrl-C to stop\n"), (io.StringIO(), "")]:
        code = main(
            [*cli.root_args, "tail", run_id, "-f", "--timeout", "0.1", "--poll", "0.05"], out=io.StringIO(), err=err
        )
        assert (0, expected) == (code, err.getvalue())


@pytest.mark.parametrize("cli", ["local"], indirect=True)  # refused before the store is read
@pytest.mark.parametrize("args", [["-n", "-5"], ["--since", "-1"], ["--poll", "0"]])
def test_tail_with_a_negative_count_is_bad_usage(cli: Cli, args: list[str]) -> None:
    run_id = cli.ok("new", "acme", "web").strip()
    code, out, err = cli("tail", run_id, *args)
    assert (2, "") == (code, out)
    assert err.startswith("faber-runlog: error:") and 1 == err.count("\n")


@pytest.mark.parametrize("cli", ["local"], indirect=True)  # the store kind adds nothing here
def test_the_demo_says_its_failure_is_staged_and_what_to_run_next(cli: Cli) -> None:
    out = cli.ok("demo")
    run_id = cli.store.list_runs()[0].run_id
    assert "This failure is staged" in out
    assert f"resume {run_id} --dry-run" in out and f"retry-step {run_id} test unit" in out
    assert f"--root {cli.spec['url']}" in out  # the suggested commands reach the same store


def test_with_logging_disabled_lifecycle_commands_write_nothing_and_exit_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    store = RunStore(str(tmp_path / ".faber_runlog/runs"))
    run = store.create_run("acme", "web")
    assert 0 == main(["init", "--disabled"], out=io.StringIO())
    for args in (
        ["start", run.id],
        ["pause", run.id],
        ["request-approval", run.id, "deploy"],
        ["approve", run.id, "x", "--token", "t"],
        ["sweep", "--include-unleased"],
    ):
        err = io.StringIO()
        assert 0 == main(args, out=io.StringIO(), err=err), args
        assert "logging is disabled" in err.getvalue(), args
    assert 0 == store.get_run(run.id).state().last_event_id
