"""Our own backends through the public contract class, ``RunStore(storage=...)``, honest capabilities, the plugin.

The storage and log contract is ``faber_runlog.testing.StorageContract``, the class an adapter author
subclasses: memory, a local folder and moto S3 run through it here, so what we promise them is what we test.
"""

from __future__ import annotations

import ast
import json
import pickle
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import BUCKET, S3Server
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from faber_runlog import Capabilities, ManualClock, RunStore, Storage, SystemClock
from faber_runlog.errors import ConfigurationError, InvalidArgument
from faber_runlog.testing import ContractViolation, StorageContract, UnexpectedEvents, assert_events, log_steps

REPO = Path(__file__).resolve().parents[1]


# -- our backends through the contract class ------------------------------------------------------


class TestMemoryContract(StorageContract):
    def make_storage(self) -> Storage:
        return Storage(MemoryFileSystem(), f"/contract-{uuid.uuid4().hex}")


class TestLocalContract(StorageContract):
    @pytest.fixture(autouse=True)
    def _folder(self, tmp_path: Path) -> None:
        self.folder = tmp_path

    def make_storage(self) -> Storage:
        return Storage(LocalFileSystem(), str(self.folder / uuid.uuid4().hex))


class TestS3Contract(StorageContract):
    """Moto S3: the whole contract, with fewer concurrent appends (each is a few round trips)."""

    append_threads = 3
    appends_per_thread = 3

    @pytest.fixture(autouse=True)
    def _server(self, s3_server: S3Server) -> None:
        self.server = s3_server

    def make_storage(self) -> Storage:
        url = f"s3://{BUCKET}/contract-{uuid.uuid4().hex}"
        return RunStore(url, storage_options=self.server.storage_options).storage


class _NoStorage(StorageContract):
    def make_storage(self) -> Storage:
        return "memory://not-a-storage"  # type: ignore[return-value]  # the mistake under test


def test_a_contract_without_make_storage_says_what_to_define() -> None:
    with pytest.raises(ConfigurationError, match=r"must define make_storage\(self\) -> Storage"):
        StorageContract().contract_storage()
    with pytest.raises(ConfigurationError, match=r"must return a faber_runlog\.Storage, got str"):
        _NoStorage().contract_storage()


class _PretendingSwap(StorageContract):
    """A memory backend that declares compare-and-swap and ignores the version, as some stores ignore If-Match."""

    def make_storage(self) -> Storage:
        storage = Storage(MemoryFileSystem(), f"/pretend-{uuid.uuid4().hex}")

        def swap(key: str, data: bytes, version: str) -> str | None:
            storage.replace(key, data)
            return uuid.uuid4().hex

        storage.swap = swap  # type: ignore[method-assign]  # a broken backend, built for this test
        return storage


def test_the_contract_class_catches_a_backend_that_ignores_the_version() -> None:
    with pytest.raises(ContractViolation, match="stale version"):
        _PretendingSwap().test_compare_and_swap_refuses_a_stale_version()


def test_a_capability_the_backend_does_not_have_is_skipped_by_name() -> None:
    class Lax(MemoryFileSystem):  # type: ignore[misc]
        protocol = "laxcontract"
        root_marker = "/"

        def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
            super().pipe_file(path, value, mode="overwrite", **kwargs)

    class Unsafe(StorageContract):
        def make_storage(self) -> Storage:
            return Storage(Lax(), f"/lax-{uuid.uuid4().hex}", allow_unsafe_writers=True)

    import unittest

    with pytest.raises(unittest.SkipTest, match="does not declare conditional_create"):
        Unsafe().test_racing_creates_have_one_winner()


# -- capabilities known before the first write -----------------------------------------------------


def test_s3_reports_its_conditional_writes_unknown_until_probed_and_probe_settles_them(s3_server: S3Server) -> None:
    store = RunStore(f"s3://{BUCKET}/caps-{uuid.uuid4().hex}", storage_options=s3_server.storage_options)
    before = store.storage.capabilities
    assert ("list_after", "batched_reads", "concurrent_puts") == before.names()
    assert ("conditional_create", "compare_and_swap", "conditional_delete") == before.unknown()
    assert [] == s3_server.filesystem().find(store.storage.root.lstrip("/"))  # asking wrote nothing
    after = store.storage.probe()
    assert () == after.unknown()
    assert after == type(store.storage).capabilities == store.storage.capabilities
    assert after is store.storage.probe()  # probed once


def test_s3_capabilities_are_settled_by_the_first_write(s3_server: S3Server) -> None:
    store = RunStore(f"s3://{BUCKET}/caps-{uuid.uuid4().hex}", storage_options=s3_server.storage_options)
    store.create_run("acme", "web").log.emit("workflow_start")
    caps = store.storage.capabilities
    assert ((), True, True) == (caps.unknown(), caps.compare_and_swap, caps.conditional_delete)


def test_a_second_process_on_a_probed_s3_store_settles_its_capabilities_with_one_get(s3_server: S3Server) -> None:
    from test_segments import _counting_store

    first, _ = _counting_store(s3_server)
    assert () == first.storage.probe().unknown()  # the full probe, recorded under the store root
    fresh, calls = _counting_store(s3_server)
    again = RunStore(fs=fresh.storage.fs, root=first.storage.root)  # another process, same store and endpoint
    calls.clear()
    assert type(again.storage).capabilities == again.storage.probe()
    assert [("get_object", ".faber_runlog/probed.json")] == [
        (m, k.rsplit("/", 2)[-2] + "/" + k.rsplit("/", 1)[-1]) for m, k in calls
    ]
    # A record made through another endpoint (a gateway may ignore the headers) is not trusted: probe again.
    record = json.loads(again.storage.read(".faber_runlog/probed.json") or b"{}")
    again.storage.replace(".faber_runlog/probed.json", json.dumps({**record, "endpoint": "http://elsewhere"}).encode())
    third = RunStore(fs=fresh.storage.fs, root=first.storage.root)
    calls.clear()
    assert () == third.storage.probe().unknown()
    assert {"get_object", "put_object", "delete_object"} <= {m for m, _ in calls}


def test_an_fsspec_store_ignoring_exclusive_create_loses_the_capability_once_probed() -> None:
    class Lax(MemoryFileSystem):  # type: ignore[misc]
        protocol = "laxcaps"
        root_marker = "/"

        def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
            super().pipe_file(path, value, mode="overwrite", **kwargs)

    storage = Storage(Lax(), f"/lax-{uuid.uuid4().hex}", allow_unsafe_writers=True)
    assert ((), ("conditional_create",)) == (storage.capabilities.names(), storage.capabilities.unknown())
    assert Capabilities(False, False, False, False, False, False) == storage.probe()


def test_backends_without_a_probe_know_their_capabilities_and_probe_writes_nothing(tmp_path: Path) -> None:
    for storage in (Storage(MemoryFileSystem(), f"/m-{uuid.uuid4().hex}"), Storage(LocalFileSystem(), str(tmp_path))):
        assert () == storage.capabilities.unknown()
        assert storage.capabilities == storage.probe()
        assert [] == storage.list_names("")


# -- RunStore(storage=...) ----------------------------------------------------------------------------


def test_a_run_store_runs_on_any_storage_given() -> None:
    storage = Storage(MemoryFileSystem(), f"/given-{uuid.uuid4().hex}")
    store = RunStore(storage=storage)
    assert store.storage is storage and store.url == storage.url
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    assert_events(RunStore(storage=storage).get_run(run.id), ["workflow_start"])


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"url": "memory://x"}, "url="),
        ({"fs": MemoryFileSystem()}, "fs="),
        ({"root": "/x"}, "root="),
        ({"storage_options": {}}, "storage_options="),
        ({"fsync": False}, "fsync="),
        ({"allow_unsafe_writers": False}, "allow_unsafe_writers="),
    ],
)
def test_storage_is_refused_with_an_option_the_storage_owns(extra: dict[str, Any], named: str) -> None:
    storage = Storage(MemoryFileSystem(), f"/given-{uuid.uuid4().hex}")
    with pytest.raises(InvalidArgument, match=rf"RunStore\(storage=\.\.\.\) got {named} too") as info:
        RunStore(storage=storage, **extra)
    assert "Storage(fs, root, fsync=..., allow_unsafe_writers=...)" in str(info.value)


def test_storage_must_be_a_storage() -> None:
    with pytest.raises(InvalidArgument, match=r"storage= takes a faber_runlog.Storage .* got MemoryFileSystem"):
        RunStore(storage=MemoryFileSystem())
    with pytest.raises(InvalidArgument, match=r"Storage\(fs, root\) takes an fsspec filesystem, got str"):
        Storage("memory://x", "/x")


def test_a_clock_given_with_a_storage_becomes_its_clock_unless_it_has_another() -> None:
    storage = Storage(MemoryFileSystem(), f"/given-{uuid.uuid4().hex}")
    clock = ManualClock()
    assert clock is RunStore(storage=storage, clock=clock).storage.clock
    assert clock is RunStore(storage=storage, clock=clock).storage.clock  # the same clock again is fine
    with pytest.raises(InvalidArgument, match="already reads time from ManualClock"):
        RunStore(storage=storage, clock=SystemClock(offset=5))


# -- assert_events --------------------------------------------------------------------------------------


def test_assert_events_shows_both_lists_side_by_side_and_survives_optimisation(runlog_store: RunStore) -> None:
    run = runlog_store.create_run("acme", "web")
    run.log.emit("workflow_start")
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_error", phase="build", step="compile", error="exit 2")
    events = assert_events(run, ["workflow_start", {"type": "step_start", "step": "compile"}, "step_error"])
    assert 3 == len(events)
    with pytest.raises(UnexpectedEvents) as info:
        assert_events(run.log, ["workflow_start", "step_start", "step_complete", "workflow_complete"])
    text = str(info.value)
    assert f"run {run.id}: 3 event(s), 4 expected; 2 row(s) differ, first at #3" in text
    assert "! 3. step_complete" in text and "step_error build/compile error='exit 2'" in text
    assert "! 4. workflow_complete" in text
    assert isinstance(info.value, AssertionError)
    assert str(pickle.loads(pickle.dumps(info.value))) == text
    with pytest.raises(InvalidArgument, match="not one string"):
        assert_events(events, "workflow_start")
    with pytest.raises(InvalidArgument, match="got a int in them"):
        assert_events([1], ["x"])  # type: ignore[list-item]  # the mistake under test


def test_the_test_kits_raise_and_never_assert_so_python_minus_o_keeps_every_check() -> None:
    for name in ("testing.py", "pytest_plugin.py"):
        tree = ast.parse((REPO / "faber_runlog" / name).read_text())
        asserts = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assert)]
        assert [] == asserts, f"faber_runlog/{name} uses assert (removed by python -O) on lines {asserts}"


def test_log_steps_gives_a_run_history_and_stops_at_the_failing_step(runlog_store: RunStore) -> None:
    run = runlog_store.create_run("acme", "web")
    logged = log_steps(run, {"build": ["compile", "test"], "deploy": ["upload"]}, failing="deploy/upload", error="403")
    assert_events(
        run,
        [
            "workflow_start",
            *["phase_start", "step_start", "step_complete", "step_start", "step_complete", "phase_complete"],
            {"type": "phase_start", "phase": "deploy"},
            "step_start",
            {"type": "step_error", "step": "upload", "error": "403"},
        ],
    )
    assert [e.event_id for e in logged] == list(range(1, 11))
    state = run.state()
    assert ("failing", "upload") == (state.status, state.failed_step.name if state.failed_step else None)
    with pytest.raises(InvalidArgument, match=r"names no step .* use 'phase/step', e\.g\. 'build/compile'"):
        log_steps(run, {"build": ["compile"]}, failing="compile")


# -- the pytest plugin ---------------------------------------------------------------------------------


def test_the_plugin_store_is_fresh_in_memory_and_reads_the_plugin_clock(
    runlog_store: RunStore, runlog_clock: ManualClock
) -> None:
    assert "memory" == runlog_store.storage.kind and [] == runlog_store.list_runs()
    before = runlog_clock.now()
    runlog_clock.advance(90)
    assert 90 == (runlog_clock.now() - before).total_seconds()
    assert runlog_store.storage.clock is runlog_clock


def _fixture_names(path: Path) -> set[str]:
    text = path.read_text()
    if "fixture" not in text:
        return set()
    names = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef) and any("fixture" in ast.unparse(d) for d in node.decorator_list):
            names.add(node.name)
    return names


def test_the_plugin_fixtures_do_not_clash_with_ours() -> None:
    plugin = _fixture_names(REPO / "faber_runlog" / "pytest_plugin.py")
    ours = set().union(*(_fixture_names(p) for p in (REPO / "tests").glob("*.py")))
    assert {"runlog_clock", "runlog_store"} == plugin
    assert set() == plugin & ours
    assert all(not n.startswith("runlog_") for n in ours)


def test_the_plugin_is_registered_and_importing_the_package_does_not_load_pytest() -> None:
    from importlib.metadata import entry_points

    assert ["faber_runlog.pytest_plugin"] == [e.value for e in entry_points(group="pytest11", name="faber_runlog")]
    code = "import sys, faber_runlog, faber_runlog.testing; print('pytest' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "False" == out.stdout.strip()
