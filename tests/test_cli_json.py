"""``--json`` on every command that prints: one JSON document on stdout with the substance, errors one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_cli import Cli, cli

from faber_runlog._frontends.cli import _parser
from faber_runlog._services.gateway import CONFIG_ENV

pytestmark = pytest.mark.backends("local")

__all__ = ["cli"]  # the fixture, shared with test_cli.py

NO_OUTPUT = {"ui", "mcp"}  # a server: its stdout is the protocol (mcp) or nothing (ui logs to stderr)


def test_every_command_that_prints_takes_json() -> None:
    sub = next(a for a in _parser()._actions if a.dest == "command")  # noqa: SLF001  (argparse's own list)
    assert isinstance(sub.choices, dict)
    without = {name for name, p in sub.choices.items() if "--json" not in p._option_string_actions}  # noqa: SLF001
    assert NO_OUTPUT == without


def _failing(cli: Cli) -> str:
    run_id = cli.json("new", "acme", "web", "--param", "work_id=220")["run_id"]
    for args in (
        ["workflow_start"],
        ["phase_start", "--phase", "build"],
        ["step_start", "--phase", "build", "--step", "link"],
        ["step_error", "--phase", "build", "--step", "link", "--error", "exit 2"],
    ):
        cli.json("emit", run_id, *args)
    return str(run_id)


def test_each_command_prints_one_json_document_with_its_substance(cli: Cli, tmp_path: Path) -> None:
    j = cli.json
    run_id = _failing(cli)
    event = j("emit", run_id, "checkpoint", "--meta", "label=x", "--idempotency-key", "k")
    assert (5, "x") == (event["event_id"], event["metadata"]["label"])
    assert run_id in [r["run_id"] for r in j("list")]
    assert {"runs", "next_cursor"} <= set(j("list", "--limit", "1"))
    assert ("failing", run_id) == (j("show", run_id)["status"], j("show", run_id)["run_id"])
    tail = [json.loads(line) for line in cli.ok("tail", run_id, "--json").splitlines()]  # JSON Lines: a stream
    assert list(range(1, 6)) == [e["event_id"] for e in tail]
    assert ("build", True) == (lambda p: (p["resume_phase"], p["resumable"]))(j("resume", run_id, "--dry-run"))
    assert "failing" == j("report", run_id)["status"]
    assert "<html" in j("report", run_id, "--format", "html")["html"].lower()
    page = tmp_path / "report.html"
    assert str(page) == j("report", run_id, "--format", "html", "--output", str(page))["path"]
    assert True is j("verify", run_id)["ok"]
    assert ["acme"] == [r["org"] for r in j("reindex")]
    assert any(r["type"] == "checkpoint" and r["builtin"] for r in j("event-types"))
    assert "lease" in j("heartbeat", run_id)
    assert "retry_step" == j("retry-step", run_id, "build", "link")["action"]
    assert "skip_step" == j("skip-step", run_id, "build", "docs")["action"]
    assert "paused" == j("pause", run_id)["status"]
    assert "running" == j("unpause", run_id)["status"]
    gate = j("request-approval", run_id, "deploy")
    assert ("awaiting_approval", gate["event"]["metadata"]["approval_id"]) == (gate["status"], gate["approval_id"])
    assert "request_changes" == j("request-changes", run_id, gate["approval_id"])["action"]
    again = j("request-approval", run_id, "deploy")["approval_id"]
    assert "approve" == j("approve", run_id, again)["action"]
    assert "phase_skip" == j("skip-phase", run_id, "test")["event"]["type"]
    assert "phase_start" == j("retry-phase", _failing(cli), "build")["event"]["type"]
    for args in (["step_start", "--step", "link"], ["step_complete", "--step", "link"], ["phase_complete"]):
        j("emit", run_id, *args[:1], "--phase", "build", *args[1:])
    assert "completed" == j("complete", run_id)["status"]
    child = j("rerun", run_id, "--param", "work_id=221")
    assert (run_id, {"work_id": {"old": "220", "new": "221"}}) == (child["parent_run_id"], child["diff"]["changed"])
    assert {"run_a", "run_b", "changed"} <= set(j("diff", run_id, child["run_id"]))
    assert [child["run_id"]] == j("children", run_id)
    assert "running" == j("start", child["run_id"])["status"]
    assert "failed" == j("fail", child["run_id"], "--error", "boom")["status"]
    other = j("new", "acme", "web")["run_id"]
    assert "cancelled" == j("cancel", other)["status"]
    assert [] == j("sweep")
    events = j("export", run_id, "--format", "jsonl")["events"]
    assert events[0]["type"] == "workflow_start"
    assert 0 < j("export", run_id, "--format", "csv", str(tmp_path / "e.csv"))["events"]
    faber = j("export", run_id, str(tmp_path / "faber"), "--format", "faber")
    assert faber["run_id"] == run_id
    (tmp_path / "elsewhere").mkdir()
    imported = j("import", str(tmp_path / "faber"), "--root", str(tmp_path / "elsewhere"))
    assert (True, [run_id]) == (imported["ok"], [r["run_id"] for r in imported["runs"]])
    archive = str(tmp_path / "archive")
    assert [("archived", other)] == [(r["outcome"], r["run_id"]) for r in j("archive", other, "--to", archive)]
    assert True is j("cleanup", "--to", archive)["dry_run"]
    assert "failing" == j("demo")["status"]


def test_a_command_that_writes_nothing_says_so_in_json_too(cli: Cli) -> None:
    run_id = cli.store.create_run("acme", "web").id
    assert 0 == cli("init", "--disabled")[0]
    code, out, err = cli("emit", run_id, "workflow_start", "--json")
    assert (0, "disabled", False) == (code, json.loads(out)["logging"], json.loads(out)["written"])
    assert "logging is disabled" in err


def test_json_as_a_shell_user_meets_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in (CONFIG_ENV, "FABER_RUNLOG_ROOT")}
    root = str(tmp_path / "runs")

    def sh(*args: str) -> tuple[int, str, str]:
        done = subprocess.run(
            [sys.executable, "-m", "faber_runlog", "--root", root, *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=60,
        )
        return done.returncode, done.stdout, done.stderr

    code, out, _ = sh("demo", "--json")
    body: Any = json.loads(out)
    assert (0, "failing", 10) == (code, body["status"], len(body["events"]))
    code, out, err = sh("show", body["run_id"], "--json")
    assert (0, "", "failed") == (code, err, json.loads(out)["phases"][1]["steps"]["unit"]["status"])
    code, out, err = sh("rerun", body["run_id"][:-4] + "ffff", "--json")  # a run that does not exist
    assert (1, "") == (code, out) and 1 == len(err.splitlines()) and err.startswith("faber-runlog: error: ")


def test_docs_cli_md_names_every_command() -> None:
    sub = next(a for a in _parser()._actions if a.dest == "command")  # noqa: SLF001  (argparse's own list)
    assert isinstance(sub.choices, dict)
    page = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert [] == [name for name in sub.choices if f"`{name}" not in page]
