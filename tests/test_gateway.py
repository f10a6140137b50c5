from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import BUCKET, S3Server

from faber_runlog import InvalidEvent, InvalidGatewayConfig, Registry, RunNotFound, RunStore
from faber_runlog._domain.events import Event
from faber_runlog._services.gateway import (
    CONFIG_ENV,
    CONFIG_PATH,
    Backend,
    Gateway,
    GatewayConfig,
    S3ArchiveConfig,
    find_config,
    gateway_schema,
    load_config,
    register_backend,
    write_config,
)
from faber_runlog._services.store import Run

# Application tests: the storage and log contract is pinned on every backend elsewhere.
pytestmark = pytest.mark.backends("memory")


def _all_keys(store: RunStore) -> list[str]:
    fs, root = store.storage.fs, store.storage.root
    if not fs.exists(root):
        return []
    return sorted(p for p in fs.find(root) if not p.rsplit("/", 1)[-1].startswith("."))


def _s3_options(server: S3Server) -> dict[str, Any]:
    """The fixture's options without the credentials: those come from the environment."""
    return {k: v for k, v in server.storage_options.items() if k not in ("key", "secret")}


# -- gateway.json ------------------------------------------------------------------------


def test_default_config_is_valid_against_the_shipped_schema_and_round_trips() -> None:
    import fastjsonschema

    body = GatewayConfig().to_dict()
    fastjsonschema.compile(gateway_schema())(body)
    assert GatewayConfig() == GatewayConfig.from_dict(body)
    assert True is body["backends"]["local_files"]["enabled"]
    assert False is body["backends"]["s3_archive"]["enabled"]


def test_write_config_on_an_empty_folder_creates_it_and_reports_no_changes(tmp_path: Path) -> None:
    path = tmp_path / CONFIG_PATH
    assert None is write_config(GatewayConfig(), path)
    assert GatewayConfig() == load_config(path)


def test_write_config_over_an_old_one_lists_what_changed(tmp_path: Path) -> None:
    path = tmp_path / "gateway.json"
    write_config(GatewayConfig(), path)
    new = GatewayConfig(fsync=False, s3_archive=S3ArchiveConfig(enabled=True, bucket="logs-bucket"))
    changes = write_config(new, path)
    assert [
        'backends.s3_archive.bucket: null -> "logs-bucket"',
        "backends.s3_archive.enabled: false -> true",
        "fsync: true -> false",
    ] == changes
    assert new == load_config(path)
    assert [] == write_config(new, path)


def test_write_config_over_an_unreadable_file_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "gateway.json"
    path.write_text("{not json")
    changes = write_config(GatewayConfig(), path)
    assert changes is not None and "enabled: true (added)" in changes
    assert GatewayConfig() == load_config(path)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{oops", "is not valid JSON"),
        (b'{"config_version": 1, "fsync": "yes"}', "fsync must be boolean"),
        (b'{"config_version": 1, "colour": "red"}', "colour"),
        (b'{"config_version": 2}', "config_version"),
        (b'{"config_version": 1, "snapshot_every": 0}', "snapshot_every"),
        (b'{"config_version": 1, "backends": {"s3_archive": {"enabled": true}}}', "bucket"),
        (b'{"config_version": 1, "backends": {"local_files": {"enabled": false}}}', "local_files is disabled"),
        (
            b'{"config_version": 1, "storage_options": {"secret": "x"}}',
            "storage_options.secret looks like a credential",
        ),
        (
            b'{"config_version": 1, "backends": {"s3_archive": {"enabled": false, '
            b'"storage_options": {"client_kwargs": {"aws_secret_access_key": "x"}}}}}',
            "client_kwargs.aws_secret_access_key looks like a credential",
        ),
    ],
)
def test_a_bad_config_file_is_refused_naming_the_file_and_field(tmp_path: Path, body: bytes, needle: str) -> None:
    path = tmp_path / "gateway.json"
    path.write_bytes(body)
    with pytest.raises(InvalidGatewayConfig) as info:
        load_config(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)


def test_a_secret_is_never_written(tmp_path: Path) -> None:
    path = tmp_path / "gateway.json"
    with pytest.raises(InvalidGatewayConfig, match="never holds secrets"):
        write_config(GatewayConfig(storage_options={"key": "AKIA"}), path)
    assert not path.exists()


def test_a_missing_config_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(InvalidGatewayConfig, match="faber-runlog init"):
        load_config(tmp_path / "nope.json")


def test_find_config_prefers_the_environment_then_searches_upwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    path = tmp_path / CONFIG_PATH
    write_config(GatewayConfig(), path)
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert path == find_config(deep)
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "other.json"))
    assert tmp_path / "other.json" == find_config(deep)


def test_a_relative_root_is_read_from_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    path = tmp_path / CONFIG_PATH
    write_config(GatewayConfig(root="runs"), path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    gateway = Gateway.open(path)
    assert str(path.parent / "runs") == gateway.store.url


# -- disabled logging ----------------------------------------------------------------------


def test_disabled_logging_never_raises_and_writes_nothing(store: RunStore) -> None:
    gateway = Gateway(GatewayConfig(enabled=False), store=store)
    assert None is gateway.emit("not a run id", "no_such_type", phase=object(), metadata={"x": {1, 2}})
    assert None is gateway.emit("acme/web/00000000-0000-4000-8000-000000000000", "workflow_start")
    assert None is gateway.new_run("acme", "web", params={"a": 1})
    assert [] == _all_keys(store)
    assert [] == store.list_runs()


def test_disabled_logging_leaves_existing_runs_untouched_and_readable(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    before = _all_keys(store)
    gateway = Gateway(GatewayConfig(enabled=False), store=store)
    assert None is gateway.emit(run.id, "phase_start", phase="build")
    assert before == _all_keys(store)
    assert 1 == gateway.store.get_run(run.id).state().last_event_id


# -- enabled logging -------------------------------------------------------------------------


def test_emit_records_through_local_files_and_returns_the_event(store: RunStore) -> None:
    gateway = Gateway(store=store)
    run = gateway.new_run("acme", "web", params={"work_id": "220"})
    assert run is not None
    first = gateway.emit(run.id, "workflow_start")
    second = gateway.emit(run.id, "step_start", phase="build", step="compile", idempotency_key="k")
    again = gateway.emit(run.id, "step_start", phase="build", step="compile", idempotency_key="k")
    assert first is not None and second is not None
    assert (1, 2, 2) == (first.event_id, second.event_id, again.event_id if again else None)
    assert ["local_files"] == [b.name for b in gateway.backends]
    assert "running" == store.get_run(run.id).state().status


def test_enabled_emit_refuses_bad_input_and_writes_nothing(store: RunStore) -> None:
    gateway = Gateway(store=store)
    run = store.create_run("acme", "web")
    with pytest.raises(InvalidEvent):
        gateway.emit(run.id, "step_start")  # needs phase and step
    with pytest.raises(RunNotFound):
        gateway.emit("acme/web/00000000-0000-4000-8000-000000000000", "workflow_start")
    assert 0 == store.get_run(run.id).state().last_event_id


class _Collect(Backend):
    name = "collect"
    seen: list[tuple[str, int, str]] = []

    def __init__(self, settings: dict[str, Any], gateway: Gateway) -> None:
        self.settings = settings
        self.closed = False

    def handle(self, run: Run, event: Event) -> None:
        if self.settings.get("explode"):
            raise RuntimeError("the event stream is down")
        self.seen.append((run.id, event.event_id, event.type))

    def close(self) -> None:
        self.closed = True


# An isolated registry: the test backend is known only to the gateways given it, not to the process.
COLLECTING = Registry.isolated()
COLLECTING.register_backend("collect", _Collect)


def test_a_registered_backend_receives_every_recorded_event_in_order(tmp_path: Path) -> None:
    _Collect.seen.clear()
    config = GatewayConfig(root=str(tmp_path / "runs"), other_backends={"collect": {"enabled": True}})
    gateway = Gateway(config, registry=COLLECTING)
    run = gateway.new_run("acme", "web")
    assert run is not None
    gateway.emit(run.id, "workflow_start")
    gateway.emit(run.id, "phase_start", phase="build")
    assert [(run.id, 1, "workflow_start"), (run.id, 2, "phase_start")] == _Collect.seen
    collector = gateway.backend("collect")
    gateway.close()
    assert isinstance(collector, _Collect) and collector.closed


def test_a_failing_backend_never_breaks_the_producer(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = GatewayConfig(root=str(tmp_path / "runs"), other_backends={"collect": {"enabled": True, "explode": True}})
    gateway = Gateway(config, registry=COLLECTING)
    run = gateway.new_run("acme", "web")
    assert run is not None
    event = gateway.emit(run.id, "workflow_start")
    assert event is not None and 1 == event.event_id
    assert "the event stream is down" in caplog.text


def test_an_enabled_backend_nobody_registered_is_refused(tmp_path: Path) -> None:
    gateway = Gateway(GatewayConfig(root=str(tmp_path / "runs"), other_backends={"helm": {"enabled": True}}))
    with pytest.raises(InvalidGatewayConfig, match="'helm' is enabled but none of that name is known"):
        gateway.emit("acme/web/00000000-0000-4000-8000-000000000000", "workflow_start")


def test_register_backend_refuses_to_shadow_a_shipped_one() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_backend("s3_archive", _Collect)


def test_s3_archive_archives_a_run_when_it_completes(tmp_path: Path, s3_server: S3Server) -> None:
    prefix = f"archive-{uuid.uuid4().hex}"
    archive = S3ArchiveConfig(enabled=True, bucket=BUCKET, prefix=prefix, storage_options=_s3_options(s3_server))
    gateway = Gateway(GatewayConfig(root=str(tmp_path / "runs"), s3_archive=archive))
    run = gateway.new_run("acme", "web")
    assert run is not None
    for etype, kw in [
        ("workflow_start", {}),
        ("phase_start", {"phase": "build"}),
        ("phase_complete", {"phase": "build"}),
    ]:
        gateway.emit(run.id, etype, **kw)
    dest = RunStore(f"s3://{BUCKET}/{prefix}", storage_options=s3_server.storage_options)
    assert [] == dest.list_runs()  # not finished yet
    gateway.emit(run.id, "workflow_complete")
    assert "completed" == dest.get_run(run.id).state().status
    assert gateway.store.storage.exists(f"{run.id}/archived.json")


def test_s3_archive_leaves_failed_runs_resumable_by_default(tmp_path: Path, s3_server: S3Server) -> None:
    prefix = f"archive-{uuid.uuid4().hex}"
    archive = S3ArchiveConfig(enabled=True, bucket=BUCKET, prefix=prefix, storage_options=_s3_options(s3_server))
    gateway = Gateway(GatewayConfig(root=str(tmp_path / "runs"), s3_archive=archive))
    run = gateway.new_run("acme", "web")
    assert run is not None
    gateway.emit(run.id, "workflow_start")
    gateway.emit(run.id, "workflow_error", error="boom")
    assert not gateway.store.storage.exists(f"{run.id}/archived.json")
