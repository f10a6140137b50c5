"""Hostile values fed to public functions, CLI commands and MCP tools (issue 19, "Done means").

Only our errors come out (a ``FaberRunlogError``; on the command line exit 2 and one line on
stderr; from an MCP tool a tool error in tool terms, never the SDK's "unexpected" one), and a
refused call changes nothing: the store's files, byte for byte, are the same before and after.
Small by default; ``--soak`` runs ten times as many examples.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import soak_scale
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faber_runlog import Archiver, RetentionPolicy, Run, RunStore
from faber_runlog.errors import FaberRunlogError

# Hypothesis settings are fixed at import, before fixtures exist: conftest reads --soak at configure time.
SCALE = soak_scale(10, 1)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


HOSTILE_SCALARS: list[Any] = [
    float("nan"),
    float("inf"),
    float("-inf"),
    -1,
    -1.0,
    0,
    1e10,
    1e300,
    10**12,
    2**70,
    True,
    False,
    2.5,
    1.0,
    "soon",
    "",
    "1",
    None,
    b"bytes",
    [],
    {},
    [1],
    {"a": float("nan")},
    "2024-02-30T00:00:00Z",
    "2024-02-03T00:00:00.123456789Z",
    "2024-02-03T00:00:00",
    "../../etc/passwd",
    "a/b/../../..",
    dt.timedelta(days=-1),
    dt.timedelta(days=10**6),
    _nested(200),
]
HOSTILE = st.sampled_from(HOSTILE_SCALARS) | st.integers() | st.floats() | st.text(max_size=8)


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under the store root and its bytes: the listing compared before and after a refusal.

    A held lease's ``lease.json`` is left out: its heartbeat thread renews it whatever the test does.
    """
    out: dict[str, bytes] = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name == "lease.json":
                continue
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = Path(path).read_bytes()
    return out


class Target:
    """One store with one running and one completed run, shared by every example of a module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = RunStore(str(root), seal_grace=0)
        self.run: Run = self.store.create_run("acme", "web", params={"work_id": "1"})
        self.run.start()
        self.run.log.emit("step_start", phase="build", step="compile")
        self.done = self.store.create_run("acme", "web")
        self.done.start()
        self.done.complete()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Target:
    return Target(tmp_path_factory.mktemp("fuzz") / "runs")


def _archive_finished(t: Target, v: Any) -> object:
    return Archiver(t.store, RunStore(str(t.root) + "-archive")).archive_finished(older_than=v)


def _rerun(t: Target, v: Any) -> object:
    from faber_runlog import Resumer

    return Resumer(t.store).rerun(t.done.id, from_event=v)


CALLS: dict[str, Callable[[Target, Any], object]] = {
    "RunStore(snapshot_every=)": lambda t, v: RunStore(str(t.root), snapshot_every=v),
    "RunStore(segment_every=)": lambda t, v: RunStore(str(t.root), segment_every=v),
    "RunStore(lease_ttl=)": lambda t, v: RunStore(str(t.root), lease_ttl=v),
    "RunStore(seal_grace=)": lambda t, v: RunStore(str(t.root), seal_grace=v),
    "RunStore(max_active_runs=)": lambda t, v: RunStore(str(t.root), max_active_runs=v),
    "create_run(phases=)": lambda t, v: t.store.create_run("acme", "web", phases=v),
    "create_run(steps=)": lambda t, v: t.store.create_run("acme", "web", phases=["build"], steps=v),
    "create_run(params=)": lambda t, v: t.store.create_run("acme", "web", params={"x": v}),
    "create_run(tags=)": lambda t, v: t.store.create_run("acme", "web", tags={"x": v}),
    "create_run(org=)": lambda t, v: t.store.create_run(v, "web"),
    "create_run(run_id=)": lambda t, v: t.store.create_run("acme", "web", run_id=v),
    "get_run()": lambda t, v: t.store.get_run(v),
    "list_runs(status=)": lambda t, v: t.store.list_runs(status=v),
    "list_runs(org=)": lambda t, v: t.store.list_runs(org=v),
    "sweep_stale(older_than=)": lambda t, v: t.store.sweep_stale(older_than=v),
    "read(since=)": lambda t, v: list(t.run.log.read(since=v)),
    "read(until=)": lambda t, v: list(t.run.log.read(until=v)),
    "read(limit=)": lambda t, v: list(t.run.log.read(limit=v)),
    "read(types=)": lambda t, v: list(t.run.log.read(types=v)),
    "get()": lambda t, v: t.run.log.get(v),
    "state(at=)": lambda t, v: t.run.state(at=v),
    "status_view(tail=)": lambda t, v: t.run.status_view(tail=v),
    "heartbeat(ttl=)": lambda t, v: t.run.heartbeat(ttl=v),
    "emit(duration_ms=)": lambda t, v: t.run.log.emit("step_complete", phase="build", step="compile", duration_ms=v),
    "emit(phase=)": lambda t, v: t.run.log.emit("phase_start", phase=v),
    "emit(metadata=)": lambda t, v: t.run.log.emit("workflow_start", metadata={"k": v}),
    "emit(timestamp=)": lambda t, v: t.run.log.emit("phase_start", phase="x", timestamp=v),
    "RetentionPolicy(keep_days=)": lambda _t, v: RetentionPolicy(keep_days=v),
    "archive_finished(older_than=)": _archive_finished,
    "Resumer.rerun(from_event=)": _rerun,
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_public_functions_raise_only_our_errors_and_change_nothing_on_refusal(target: Target, name: str) -> None:
    call = CALLS[name]

    @settings(max_examples=8 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
    @given(value=HOSTILE)
    def fuzz(value: Any) -> None:
        before = _snapshot(target.root)
        try:
            call(target, value)
        except FaberRunlogError:
            assert before == _snapshot(target.root), f"{name}({value!r}) was refused but changed the store"

    fuzz()


# -- the command line (a real subprocess) ---------------------------------------------------------------


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run(
        [sys.executable, "-m", "faber_runlog", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


CLI_VALUES = st.sampled_from(
    ["nan", "inf", "-1", "1e300", "2.5", "soon", "[" * 5000 + "]" * 5000, "99999999999999999999"]
)


def _cli_commands(t: Target) -> Iterator[tuple[str, Callable[[str], list[str]]]]:
    root = ["--root", str(t.root)]
    yield "sweep --older-than", lambda v: [*root, "sweep", f"--older-than={v}"]
    yield "new --param x:=", lambda v: [*root, "new", "acme", "web", "--param", f"x:={v}"]
    yield (
        "emit --duration-ms",
        lambda v: [
            *root,
            "emit",
            t.run.id,
            "step_complete",
            "--phase",
            "build",
            "--step",
            "compile",
            f"--duration-ms={v}",
        ],
    )
    yield "show --events", lambda v: [*root, "show", t.run.id, f"--events={v}"]


@pytest.mark.parametrize("command", ["sweep --older-than", "new --param x:=", "emit --duration-ms", "show --events"])
def test_cli_commands_refuse_hostile_values_with_exit_2_and_one_line(target: Target, command: str) -> None:
    build = dict(_cli_commands(target))[command]

    @settings(max_examples=1 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
    @given(value=CLI_VALUES)
    def fuzz(value: str) -> None:
        before = _snapshot(target.root)
        done = _cli(build(value), target.root.parent)
        if done.returncode == 0:
            return
        assert 2 == done.returncode, (command, value, done.stderr)
        assert 1 == len(done.stderr.strip().splitlines()), done.stderr
        assert "internal error" not in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert before == _snapshot(target.root)

    fuzz()


# -- MCP tools, in process --------------------------------------------------------------------------------


MCP_CALLS: dict[str, Callable[[Target, Any], dict[str, Any]]] = {
    "list_events(since=)": lambda t, v: {"tool": "list_events", "run_id": t.run.id, "since": v},
    "list_events(limit=)": lambda t, v: {"tool": "list_events", "run_id": t.run.id, "limit": v},
    "get_state(at=)": lambda t, v: {"tool": "get_state", "run_id": t.run.id, "at": v},
    "list_runs(limit=)": lambda _t, v: {"tool": "list_runs", "limit": v},
    "emit_event(duration_ms=)": lambda t, v: {
        "tool": "emit_event",
        "run_id": t.run.id,
        "type": "step_complete",
        "phase": "build",
        "step": "compile",
        "duration_ms": v,
    },
    "emit_event(metadata=)": lambda t, v: {
        "tool": "emit_event",
        "run_id": t.run.id,
        "type": "workflow_start",
        "metadata": {"k": v},
    },
    "sweep_stale_runs(older_than=)": lambda _t, v: {"tool": "sweep_stale_runs", "older_than": v},
    "fractary_faber_run_list(limit=)": lambda _t, v: {"tool": "fractary_faber_run_list", "limit": v},
    "fractary_faber_event_emit(metadata=)": lambda t, v: {
        "tool": "fractary_faber_event_emit",
        "run_id": t.run.id,
        "type": "step_start",
        "metadata": {"faber_runlog": {"type": "step_start", "fields": {"lease_epoch": v, "nonce": v, "step": v}}},
    },
}

JSON_HOSTILE = st.sampled_from([v for v in HOSTILE_SCALARS if not isinstance(v, (bytes, dt.timedelta))]) | st.floats()


@pytest.fixture(scope="module")
def server(target: Target) -> Any:
    pytest.importorskip("mcp")
    from faber_runlog._frontends.mcp_server import build_server
    from faber_runlog._services.gateway import Gateway

    return build_server(Gateway(store=target.store))


@pytest.mark.parametrize("name", sorted(MCP_CALLS))
def test_mcp_tools_answer_hostile_values_in_tool_terms(target: Target, server: Any, name: str) -> None:
    import anyio
    from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError

    @settings(max_examples=8 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
    @given(value=JSON_HOSTILE)
    def fuzz(value: Any) -> None:
        arguments = MCP_CALLS[name](target, value)
        tool = arguments.pop("tool")
        before = _snapshot(target.root)

        async def call() -> Any:
            return await server.call_tool(tool, arguments)

        try:
            result = anyio.run(call)
        except UnexpectedToolError as e:  # an exception of ours escaped untranslated
            raise AssertionError(f"{tool}({arguments!r}) failed unexpectedly: {e.__cause__!r}") from e
        except ToolError:
            assert before == _snapshot(target.root)
            return
        body = getattr(result, "structured_content", None) or {}
        if body.get("status") == "error" or getattr(result, "is_error", False):
            assert before == _snapshot(target.root)

    fuzz()
