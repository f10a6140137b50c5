"""Issue 21 parity: one state with the plan, registries that see their own types, types and backends declared once."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from faber_runlog import (
    Gateway,
    GatewayConfig,
    InvalidArgument,
    InvalidEvent,
    InvalidGatewayConfig,
    Registry,
    Resumer,
    RunStore,
)

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.backends("memory")


def test_every_state_accessor_of_a_planned_run_includes_the_planned_phases() -> None:
    store = RunStore("memory://parity-plan")
    run = store.create_run("acme", "web", phases=["build", "test", "deploy"])
    run.log.emit("workflow_start")
    run.log.emit("phase_start", phase="build")
    expected = ["build", "test", "deploy"]
    assert expected == list(run.state().phases)
    assert expected == list(run.log.current_state().phases)
    assert expected == list(run.log.load_state().phases)
    assert expected == list(run.log.snapshot().phases)
    assert expected == list(store.get_run(run.id).log.current_state().phases)
    assert "pending" == run.log.current_state().phases["deploy"].status


def test_a_run_resumed_after_an_error_and_completed_lists_no_error() -> None:
    import pandas

    from faber_runlog import Resumer

    store = RunStore("memory://parity-error")
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    run.log.emit("phase_start", phase="build")
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_error", phase="build", step="compile", error="exit 2")
    run.log.emit("workflow_error", error="exit 2")
    failed = store.runs_frame().iloc[0]
    run = Resumer(store).resume(run.id)
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_complete", phase="build", step="compile")
    run.log.emit("phase_complete", phase="build")
    run.log.emit("workflow_complete")
    done = store.runs_frame().iloc[0]
    assert ("failed", "exit 2") == (failed.status, failed.error)
    assert ("completed", True, True) == (done.status, pandas.isna(done.error), pandas.isna(done.failed_step))
    assert ["exit 2", "exit 2"] == [e.message for e in run.state().errors]


# -- custom event types and backends: declared once, usable everywhere -----------------------------

PLUGIN = """
from typing import Any

from faber_runlog import Backend

DEPLOY = {"type": "object", "required": ["metadata"],
          "properties": {"metadata": {"type": "object", "required": ["target"]}}}


class PrintStream(Backend):
    name = "print_stream"

    def __init__(self, settings: dict[str, Any], gateway: Any) -> None:
        self.prefix = settings.get("prefix", "")

    def handle(self, run: Any, event: Any) -> None:
        print(f"{self.prefix}{run.id} #{event.event_id} {event.type}")
"""


def _sh(*args: str, cwd: Path, path: Path) -> tuple[int, str, str]:
    """``faber-runlog ARGS`` in a new process (this checkout's code, and the plugin module on the path)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FABER_RUNLOG_")}
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(path), environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "faber_runlog", *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=120
    )
    return done.returncode, done.stdout, done.stderr


def _here(*args: str) -> tuple[int, str, str]:
    """``faber-runlog ARGS`` through the CLI's ``main`` in this process."""
    from faber_runlog._frontends.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_types_and_a_backend_declared_in_gateway_json_work_in_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"plug_{uuid.uuid4().hex[:8]}"
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / f"{module}.py").write_text(PLUGIN)
    config = tmp_path / ".faber_runlog" / "gateway.json"
    config.parent.mkdir()
    (config.parent / "release.schema.json").write_text(json.dumps({"type": "object"}))
    body = {
        "config_version": 1,
        "root": "runs",
        "event_types": {
            "deploy": {"type": "object", "required": ["metadata"],
                       "properties": {"metadata": {"type": "object", "required": ["target"]}}},
            "release": {"schema": "release.schema.json", "version": 2},
        },
        "backends": {"local_files": {"enabled": True},
                     "print_stream": {"enabled": True, "class": f"{module}:PrintStream", "prefix": "> "}},
    }  # fmt: skip  # the gateway.json a user writes
    config.write_text(json.dumps(body))
    lib = tmp_path / "lib"
    code, run_id, err = _sh("new", "acme", "web", cwd=tmp_path, path=lib)
    # The first run creates the store's folder and says so; nothing else on stderr.
    assert (0, []) == (code, [line for line in err.splitlines() if "created the store at" not in line])
    run_id = run_id.strip()
    emitted = _sh("emit", run_id, "deploy", "--meta", "target=prod", cwd=tmp_path, path=lib)
    # The rest in this process (the same main() the command runs), in the project folder: cheaper.
    for name in [k for k in os.environ if k.startswith("FABER_RUNLOG_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(lib))
    refused = _here("emit", run_id, "deploy")
    released = _here("emit", run_id, "release")
    verified = _here("verify", run_id, "--json")
    assert (0, f"> {run_id} #1 deploy", "") == (emitted[0], emitted[1].splitlines()[0], emitted[2])
    assert (2, "") == (refused[0], refused[1])
    assert "target" in refused[2]
    assert (0, "") == (released[0], released[2])
    assert [True, []] == [json.loads(verified[1])["ok"], json.loads(verified[1])["events"]["unknown_types"]]
    # A plain store in the project reads the same gateway.json: it knows both types.
    runs = str(tmp_path / ".faber_runlog" / "runs")
    assert (True, ()) == (lambda r: (r.ok, r.unknown_types))(Resumer(RunStore(runs)).verify(run_id))
    # A process that knows neither type (a registry of its own): unknown, never invalid.
    report = Resumer(RunStore(runs, registry=Registry.isolated())).verify(run_id)
    assert (True, ("deploy", "release"), 2) == (report.ok, report.unknown_types, report.last_event_id)


def test_a_plain_run_store_knows_the_types_gateway_json_declares_as_the_cli_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from faber_runlog._domain.events import BUILTIN_EVENT_TYPES

    project = tmp_path / "project"
    config = project / ".faber_runlog" / "gateway.json"
    config.parent.mkdir(parents=True)
    (config.parent / "release.schema.json").write_text(json.dumps({"type": "object"}))
    deploy = {"type": "object", "required": ["metadata"], "properties": {"metadata": {"required": ["target"]}}}
    types = {"deploy": deploy, "release": {"schema": "release.schema.json", "version": 2}}
    body = {"config_version": 1, "root": "runs", "event_types": types}
    config.write_text(json.dumps(body))
    for name in [k for k in os.environ if k.startswith("FABER_RUNLOG_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(project)
    store = RunStore(str(config.parent / "runs"))
    run = store.create_run("acme", "web")
    assert "deploy" == run.log.emit("deploy", metadata={"target": "prod"}).type
    with pytest.raises(InvalidEvent, match="target"):
        run.log.emit("deploy", metadata={})
    assert 2 == run.log.emit("release").schema_version
    code, out, err = _here("event-types", "--json")
    assert "" == err
    cli_types = {r["type"]: r["version"] for r in json.loads(out) if r["type"] not in BUILTIN_EVENT_TYPES}
    assert (0, 1, 2) == (code, cli_types["deploy"], cli_types["release"])  # (others: what other tests registered)
    assert set(cli_types) == set(store.registry.event_types()) - set(BUILTIN_EVENT_TYPES)
    # From elsewhere, the project's store still reads its project's gateway.json (found from its folder) ...
    monkeypatch.chdir(tmp_path)
    assert "deploy" in RunStore(str(config.parent / "runs")).registry.event_types()
    # ... and a store outside any project the process-wide registry, as before.
    assert RunStore("memory://parity-outside").registry is Registry.default()
    # A gateway.json that cannot be read is named, as the CLI names it.
    config.write_text("{not json")
    monkeypatch.chdir(project)
    with pytest.raises(InvalidGatewayConfig, match=r"gateway\.json is not valid JSON"):
        RunStore("memory://parity-broken")


def test_verify_checks_stored_events_with_the_stores_own_registry() -> None:
    writer = Registry.isolated()
    writer.register_event_type("audit", {"type": "object", "required": ["message"]})
    store = RunStore("memory://parity-verify", registry=writer)
    run = store.create_run("acme", "web")
    run.log.emit("audit", message="checked")
    strict = Registry.isolated()
    strict.register_event_type("audit", {"type": "object", "required": ["step"]})
    plain = Resumer(RunStore("memory://parity-verify")).verify(run.id)
    own = Resumer(store).verify(run.id)
    other = Resumer(RunStore("memory://parity-verify", registry=strict)).verify(run.id)
    assert (True, ("audit",)) == (plain.ok, plain.unknown_types)
    assert (True, ()) == (own.ok, own.unknown_types)
    assert ["invalid"] == [p.kind for p in other.problems]
    assert {"type": "object", "required": ["message"]} == writer.event_schema("audit")


def test_registry_called_directly_is_refused_and_names_isolated_and_default() -> None:
    with pytest.raises(InvalidArgument, match=r"Registry\.isolated\(\).*Registry\.default\(\)"):
        Registry()
    assert Registry.default().event_types() == Registry.isolated().event_types()


def test_entry_points_of_an_installed_distribution_declare_types_and_backends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = uuid.uuid4().hex[:8]
    site = tmp_path / "site"
    dist = site / f"plug_{tag}-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / f"plug_{tag}.py").write_text(PLUGIN)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: plug-{tag}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[faber_runlog.event_types]\nep_deploy_{tag} = plug_{tag}:DEPLOY\n\n"
        f"[faber_runlog.backends]\nep_stream_{tag} = plug_{tag}:PrintStream\n"
    )
    monkeypatch.syspath_prepend(str(site))
    config = GatewayConfig(root="memory://parity-ep", other_backends={f"ep_stream_{tag}": {"enabled": True}})
    gateway = Gateway(config)
    run = gateway.new_run("acme", "web")
    assert run is not None
    event = gateway.emit(run.id, f"ep_deploy_{tag}", metadata={"target": "prod"})
    assert event is not None
    with pytest.raises(InvalidEvent, match="target"):
        gateway.emit(run.id, f"ep_deploy_{tag}")
    assert ["PrintStream"] == [type(b).__name__ for b in gateway.backends[1:]]
    assert f"ep_deploy_{tag}" in Registry.isolated().event_types()


def test_run_lists_and_swept_runs_keep_their_problems_when_sliced() -> None:
    from faber_runlog import RunList, RunProblem, SweptRuns

    store = RunStore("memory://parity-slices")
    for _ in range(3):
        store.create_run("acme", "web")
    listed = store.list_runs()
    listed.problems.append(RunProblem("acme/web/x", "damaged"))
    swept = SweptRuns([], [RunProblem("acme/web/y", "torn")])
    head, tail = listed[:2], swept[:1]
    assert (RunList, 2, listed.problems, listed[0]) == (type(head), len(head), head.problems, head[0])
    assert (SweptRuns, [("acme/web/y", "torn")]) == (type(tail), [tuple(p) for p in tail.problems])
    assert [r.run_id for r in listed] == [r.run_id for r in listed.runs]


def test_a_handle_that_missed_a_resume_by_another_handle_is_not_refused_on_its_stale_state() -> None:
    store = RunStore("memory://parity-stale")
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    run.log.emit("workflow_error", error="exit 2")
    Resumer(store).resume(run.id)  # through another handle of the same run
    event = run.log.emit("step_start", phase="build", step="compile")
    assert (4, "running") == (event.event_id, run.state().status)


def test_faber_import_keeps_a_type_the_destination_store_declares(tmp_path: Path) -> None:
    from test_faber import BASE, RUN, faber_metadata, fevent, write_run

    from faber_runlog import import_faber

    registry = Registry.isolated()
    registry.register_event_type("deploy_target", {"type": "object", "required": ["metadata"]})
    write_run(
        tmp_path / "project" / BASE,
        RUN,
        [fevent(1, "workflow_start"), fevent(2, "deploy_target", metadata={"target": "prod"})],
        metadata=faber_metadata(),
    )
    dest = RunStore("memory://parity-faber", registry=registry)
    import_faber(str(tmp_path / "project"), dest)
    assert ["workflow_start", "deploy_target"] == [e.type for e in dest.get_run(RUN).log.read()]
