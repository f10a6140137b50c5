"""Storage backends: capabilities, the contract kit, containment, durable writes, clear S3 errors, fork safety."""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from faber_runlog import RunStore, StorageError, UnsafePath
from faber_runlog._domain.state import RunDigest
from faber_runlog._format.layout import decode_summary
from faber_runlog._frontends.cli import main
from faber_runlog._services.gateway import GatewayConfig
from faber_runlog._storage.backends import TEMP_MAX_AGE, LocalStorage, MemoryStorage, Storage, digest
from faber_runlog.errors import BucketNotFound, CredentialsMissing, InvalidGatewayConfig, InvalidParams
from faber_runlog.testing import (
    ContractViolation,
    check_compare_and_swap,
    check_conditional_create,
    check_storage,
)

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "faber_runlog"


# -- capabilities and the contract kit ------------------------------------------------------


def test_every_backend_passes_the_contract_kit_without_skipping_anything_and_leaves_no_key(tmp_path: Path) -> None:
    # The full contract runs through StorageContract in tests/test_contract.py; this is the one-call kit.
    for store in (RunStore(f"memory://kit-{uuid.uuid4().hex}"), RunStore(str(tmp_path / "runs"))):
        assert [] == check_storage(store.storage)
        assert [] == store.storage.list_names(".faber_runlog/contract")


def test_capabilities_are_declared_as_data_per_backend(store: RunStore, store_kind: str) -> None:
    expected = {
        "memory": ("conditional_create", "compare_and_swap", "conditional_delete", "cheap_writes"),
        "local": ("conditional_create", "compare_and_swap", "conditional_delete", "cheap_writes"),
        "s3": (
            "conditional_create",
            "compare_and_swap",
            "conditional_delete",
            "list_after",
            "batched_reads",
            "concurrent_puts",
        ),
    }[store_kind]
    assert expected == store.storage.probe().names() == type(store.storage).capabilities.names()


class LaxFileSystem(MemoryFileSystem):  # type: ignore[misc]
    """An in-memory store that ignores exclusive create, like some S3 look-alikes."""

    protocol = "laxkit"
    root_marker = "/"

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        super().pipe_file(path, value, mode="overwrite", **kwargs)


class PretendingStorage(MemoryStorage):
    """A backend that claims compare-and-swap but ignores the version, as some stores ignore If-Match."""

    def swap(self, key: str, data: bytes, version: str) -> str | None:
        if self.read(key) is None:
            return None
        self.replace(key, data)
        return digest(data)


def test_the_contract_kit_catches_a_store_that_ignores_exclusive_create() -> None:
    storage = Storage(LaxFileSystem(), "/kit-lax", allow_unsafe_writers=True)
    assert ("conditional_create",) == storage.capabilities.unknown()  # not known until probed
    with pytest.raises(ContractViolation, match="second create"):
        check_conditional_create(storage)
    assert () == storage.capabilities.names()  # the probe of that first create found it out
    assert ["conditional_create", "racing_creates", "compare_and_swap", "conditional_delete"] == check_storage(storage)


def test_the_contract_kit_catches_a_store_that_ignores_if_match() -> None:
    with pytest.raises(ContractViolation, match="stale version"):
        check_compare_and_swap(PretendingStorage(MemoryFileSystem(), f"/kit-{uuid.uuid4().hex}"))


def test_storage_builds_the_subclass_for_its_filesystem(tmp_path: Path) -> None:
    assert "LocalStorage" == type(RunStore(str(tmp_path)).storage).__name__
    assert "MemoryStorage" == type(RunStore("memory://kinds").storage).__name__
    assert "FsspecStorage" == type(Storage(LaxFileSystem(), "/x")).__name__


def test_the_installed_moto_honours_if_match_on_put_and_delete() -> None:
    import moto

    assert tuple(int(p) for p in moto.__version__.split(".")[:3]) >= (5, 1, 22)


def test_no_module_outside_the_storage_layer_uses_private_or_backend_internals() -> None:
    forbidden = re.compile(
        r"_run_coros_in_chunks|\._pipe_file|\._cat_file|\._call_s3|fsspec\.asyn|storage\._[a-z]|\.fs\.|(?<![.\w])kind ==|(?<![.\w])kind in \("
    )
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if path.parent.name == "_storage" or name == "testing.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if forbidden.search(line):
                offenders.append(f"{name}:{n}: {line.strip()}")
    assert [] == offenders


# -- containment --------------------------------------------------------------------------------


def test_a_symlinked_org_folder_leaving_the_root_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "runs", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "evil").symlink_to(outside, target_is_directory=True)
    store = RunStore(str(root))
    with pytest.raises(UnsafePath, match="evil"):
        store.create_run("evil", "web")
    assert [] == list(outside.rglob("*"))


def test_nothing_is_read_or_deleted_through_a_symlinked_events_folder(tmp_path: Path) -> None:
    root, outside = tmp_path / "runs", tmp_path / "outside"
    store = RunStore(str(root))
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    events = Path(store.storage.path(f"{run.id}/events"))
    outside.mkdir()
    victim = outside / "00000000000000000001.json"
    victim.write_bytes((events / "00000000000000000001.json").read_bytes())
    for f in events.iterdir():
        f.unlink()
    events.rmdir()
    events.symlink_to(outside, target_is_directory=True)
    key = f"{run.id}/events/00000000000000000001.json"
    with pytest.raises(UnsafePath, match="outside the store root"):
        store.storage.delete(key)
    with pytest.raises(UnsafePath):
        store.storage.read(key)
    with pytest.raises(UnsafePath):
        list(store.get_run(run.id).log.read())
    assert victim.exists()


def test_an_event_file_symlinked_outside_the_root_is_not_read(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "runs"))
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": 1}')
    link = Path(store.storage.path(f"{run.id}/events/00000000000000000002.json"))
    link.symlink_to(secret)
    with pytest.raises(UnsafePath, match=r"secret\.json"):
        store.storage.read(f"{run.id}/events/00000000000000000002.json")


def test_a_gateway_root_escaping_the_project_through_dotdot_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidGatewayConfig, match=r"\.\."):
        GatewayConfig(root="../elsewhere/runs").resolve_root(tmp_path)
    assert str(tmp_path / "elsewhere") == GatewayConfig(root=str(tmp_path / "elsewhere")).resolve_root(tmp_path)
    assert os.path.join(str(tmp_path), "runs") == GatewayConfig(root="runs").resolve_root(tmp_path)


# -- durable writes ------------------------------------------------------------------------------

_SHORT_WRITE = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # get EFBIG instead of being killed
from faber_runlog import RunStore, StorageError
store = RunStore(sys.argv[1])
run = store.create_run("acme", "web")
resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
try:
    run.log.emit("checkpoint", metadata={"label": "big", "blob": "x" * 9000})
except StorageError as e:
    print("refused", run.id, str(e).replace("\\n", " "))
else:
    print("acknowledged", run.id)
"""


def test_a_short_write_is_never_published_and_raises(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", _SHORT_WRITE, str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    ).stdout.split(maxsplit=2)
    assert "refused" == out[0], out
    assert "nothing was published" in out[2]
    store = RunStore(str(tmp_path / "runs"))
    events = Path(store.storage.path(f"{out[1]}/events"))
    assert [] == sorted(p.name for p in events.iterdir())
    assert 0 == store.get_run(out[1]).state().last_event_id


@pytest.mark.rule("protocol", 8)
def test_an_append_syncs_its_event_and_folder_and_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The event file and its folder are synced before the append returns; snapshots and
    # summaries are caches checked before use, so they are replaced without a sync.
    store = RunStore(str(tmp_path / "runs"), snapshot_every=10)
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    synced: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    for i in range(29):  # events 2..30: snapshots (and an older one) on multiples of 10
        run.log.emit("step_start", phase="build", step=f"s{i}")
    assert 2 * 29 == len(synced)
    state = json.loads(Path(store.storage.path(f"{run.id}/state.json")).read_bytes())
    assert state["state"]["last_event_id"] in (10, 20, 30)  # one was written, as the size policy allows
    assert 30 == store.get_run(run.id).state().last_event_id
    synced.clear()
    store.storage.replace(f"{run.id}/note.json", b"{}")
    assert 2 == len(synced)


def test_a_small_cache_is_rewritten_in_place_and_a_shorter_body_decodes_as_itself(tmp_path: Path) -> None:
    # ext4 flushes a file renamed over another (auto_da_alloc): a summary rewritten with every append is
    # rewritten in place instead, padded with JSON blanks when the new body is shorter.
    store = RunStore(str(tmp_path / "runs"))
    run = store.create_run("acme", "web")
    key = f"{run.id}/summary.json"
    path = Path(store.storage.path(key))
    inode = path.stat().st_ino
    for j in range(12):
        run.log.emit("step_start", phase="build", step="s" * (40 - 3 * j))  # ever shorter step names
    assert inode == path.stat().st_ino  # the same file, rewritten
    body = path.read_bytes()
    assert body.endswith(b" ")
    expected = "s" * (40 - 3 * 11)
    assert expected == RunDigest.from_dict(decode_summary(body)).current_step
    assert expected == store.list_runs().runs[0].current_step


def test_a_large_cache_is_renamed_into_place_whole(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "runs"))
    key = "acme/web/cache.json"
    store.storage.replace_cache(key, b"{" + b" " * 5000 + b"}")
    inode = Path(store.storage.path(key)).stat().st_ino
    store.storage.replace_cache(key, b"{}")
    assert b"{}" == store.storage.read(key)
    assert inode != Path(store.storage.path(key)).stat().st_ino


def test_temp_file_names_never_repeat(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "runs"))
    store.storage._unnamed = False  # type: ignore[attr-defined]  # noqa: SLF001  (named temp files, as without O_TMPFILE)
    run = store.create_run("acme", "web")
    events = Path(store.storage.path(f"{run.id}/events"))
    names: list[str] = []
    real_link = os.link

    def link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        names.append(os.path.basename(src))
        real_link(src, dst, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "link", link)
        for i in range(20):
            run.log.emit("checkpoint", metadata={"label": f"c{i}"})
    assert 20 == len(set(names))
    assert all(n.startswith(".tmp-") for n in names)
    assert [] == [p.name for p in events.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.skipif(not hasattr(os, "O_TMPFILE"), reason="Linux's O_TMPFILE")
def test_a_local_create_names_an_unnamed_temp_file_and_adds_nothing_else_to_the_folder(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "runs"))
    run = store.create_run("acme", "web")
    events = Path(store.storage.path(f"{run.id}/events"))
    created: list[str] = []
    real_open = os.open

    def spy_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT and not flags & os.O_TMPFILE & ~os.O_DIRECTORY:
            created.append(os.path.basename(path))
        return real_open(path, flags, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "open", spy_open)
        for i in range(5):
            run.log.emit("checkpoint", metadata={"label": f"c{i}"})
    assert [] == [n for n in created if n.startswith(".tmp-")]  # no named temp file was made
    assert ["00000000000000000001.json", "00000000000000000005.json"] == [
        sorted(os.listdir(events))[i] for i in (0, -1)
    ]
    assert 5 == len(os.listdir(events))
    assert all(b"checkpoint" in (events / n).read_bytes() for n in os.listdir(events))


@pytest.mark.parametrize("refusal", ["no O_TMPFILE", "no /proc"])
def test_a_local_create_falls_back_to_named_temp_files_where_unnamed_ones_cannot_be_linked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: str
) -> None:
    storage = RunStore(str(tmp_path / "runs")).storage
    assert isinstance(storage, LocalStorage)
    real_open, real_link = os.open, os.link

    def refusing_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if getattr(os, "O_TMPFILE", 0) and flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported", path)
        return real_open(path, flags, *args, **kwargs)

    def refusing_link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if str(src).startswith("/proc/"):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", src)
        real_link(src, dst, *args, **kwargs)

    if refusal == "no O_TMPFILE":
        monkeypatch.setattr(os, "open", refusing_open)
    else:
        monkeypatch.setattr(os, "link", refusing_link)
    assert storage.create("a/events/1.json", b"first")
    assert not storage.create("a/events/1.json", b"again")
    assert storage.create("a/events/2.json", b"second")
    assert (b"first", b"second") == (storage.read("a/events/1.json"), storage.read("a/events/2.json"))
    assert ["1.json", "2.json"] == sorted(os.listdir(storage.path("a/events")))  # no temp file left
    assert storage._unnamed is False  # noqa: SLF001  (decided once: named temp files from then on)


def test_old_temp_files_of_killed_writers_are_removed_by_the_next_writer(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "runs"))
    run = store.create_run("acme", "web")
    events = Path(store.storage.path(f"{run.id}/events"))
    old, fresh = events / ".tmp-killedwriter", events / ".tmp-inflight"
    old.write_bytes(b"half an ev")
    fresh.write_bytes(b"being written")
    past = time.time() - TEMP_MAX_AGE - 5
    os.utime(old, (past, past))
    RunStore(str(tmp_path / "runs")).get_run(run.id).log.emit("workflow_start")
    assert (False, True) == (old.exists(), fresh.exists())


# -- clear S3 errors -----------------------------------------------------------------------------


def test_a_missing_bucket_names_the_bucket_and_the_fix(s3_server: Any) -> None:
    store = RunStore("s3://no-such-bucket-x/runs", storage_options=s3_server.storage_options)
    with pytest.raises(BucketNotFound, match="no-such-bucket-x") as info:
        store.create_run("acme", "web")
    assert ("no-such-bucket-x", "runs") == (info.value.bucket, info.value.prefix)
    assert "create the bucket" in str(info.value)
    with pytest.raises(BucketNotFound):
        store.list_runs()
    copy = pickle.loads(pickle.dumps(info.value))
    assert (str(info.value), "no-such-bucket-x") == (str(copy), copy.bucket)


def test_cli_list_of_a_missing_bucket_fails_with_one_line(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FABER_RUNLOG_STORAGE_OPTIONS", raising=False)
    options = {k: v for k, v in s3_server.storage_options.items() if k not in ("key", "secret")}
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["--root", "s3://no-such-bucket-y/runs", "--storage-options", json.dumps(options), "list"], out=out, err=err
    )
    assert 0 != code
    assert 1 == len(err.getvalue().splitlines()), err.getvalue()
    assert "no-such-bucket-y" in err.getvalue() and "no runs" not in out.getvalue()


def test_missing_credentials_say_where_we_looked(
    s3_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    options = {k: v for k, v in s3_server.storage_options.items() if k not in ("key", "secret")}
    # A fresh client: a cached one would hold the credentials an earlier test's environment gave it.
    options["skip_instance_cache"] = True
    store = RunStore(f"s3://faber-test/creds-{uuid.uuid4().hex}", storage_options=options)
    with pytest.raises(CredentialsMissing, match="AWS_ACCESS_KEY_ID") as info:
        store.create_run("acme", "web")
    assert "AWS_PROFILE" in str(info.value) and "faber-test" in str(info.value)
    assert isinstance(info.value, StorageError)


# -- validation before any claim -----------------------------------------------------------------


@pytest.mark.parametrize("lineage", [{"score": float("nan")}, {"big": 1 << 70}, {1: "x"}])
def test_bad_lineage_is_refused_before_the_concurrency_key_is_claimed(store: RunStore, lineage: Any) -> None:
    with pytest.raises(InvalidParams, match="lineage"):
        store.create_run("acme", "web", lineage=lineage, concurrency_key="repo:main")
    assert [] == store.list_runs()
    store.create_run("acme", "web", concurrency_key="repo:main")  # the key was never claimed


# -- fork safety -------------------------------------------------------------------------------


def test_a_handle_used_in_a_forked_child_stamps_unique_nonces(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "runs"))
    run = store.create_run("acme", "web")
    log = run.log
    log.emit("workflow_start")
    pid = os.fork()
    if pid == 0:  # the child: write with the inherited handle, then leave at once
        code = 0
        try:
            for i in range(10):
                log.emit("checkpoint", metadata={"label": f"child-{i}"})
        except BaseException:  # noqa: BLE001  (the forked child reports any failure as its exit code)
            code = 1
        os._exit(code)
    for i in range(10):
        log.emit("checkpoint", metadata={"label": f"parent-{i}"})
    _, status = os.waitpid(pid, 0)
    assert 0 == os.waitstatus_to_exitcode(status)
    nonces = [e.nonce for e in store.get_run(run.id).log.read()]
    assert 21 == len(nonces)
    assert 21 == len(set(nonces))


def test_delete_many_removes_the_keys_given_and_ignores_the_missing(store: RunStore) -> None:
    storage = store.storage
    keys = [f"acme/web/bulk/{i:04d}.json" for i in range(5)]
    for k in keys:
        assert storage.create(k, b"{}")
    storage.delete_many([*keys[:3], "acme/web/bulk/absent.json"])
    assert keys[3:] == [f"acme/web/bulk/{n}" for n in storage.list_names("acme/web/bulk")]
    storage.delete_many([])


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "named temp file"])
def test_a_local_create_of_a_taken_name_loses_without_writing_a_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unnamed: bool
) -> None:
    # A writer behind the tail answers its lost race from one stat, not after a temp file's fsync.
    storage = RunStore(str(tmp_path / "runs")).storage
    assert isinstance(storage, LocalStorage)
    if not unnamed:
        storage._unnamed = False  # noqa: SLF001  (as on a filesystem without O_TMPFILE)
    assert storage.create("a/events/1.json", b"first")
    temps: list[str] = []
    write_temp, write_unnamed = LocalStorage._write_temp, LocalStorage._create_unnamed  # noqa: SLF001  (spied on)

    def spy(self: LocalStorage, folder: str, data: bytes, *, sync: bool = True) -> str:
        temps.append(folder)
        return write_temp(self, folder, data, sync=sync)

    def spy_unnamed(self: LocalStorage, folder: str, path: str, data: bytes) -> bool | None:
        temps.append(folder)
        return write_unnamed(self, folder, path, data)

    monkeypatch.setattr(LocalStorage, "_write_temp", spy)
    monkeypatch.setattr(LocalStorage, "_create_unnamed", spy_unnamed)
    assert (False, []) == (storage.create("a/events/1.json", b"second"), temps)
    assert (True, 1) == (storage.create("a/events/2.json", b"second"), len(temps))
    assert b"first" == storage.read("a/events/1.json")
