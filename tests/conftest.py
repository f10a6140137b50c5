"""Fixtures: one store contract run against memory, a local folder and moto S3.

The S3 server is a real moto server on 127.0.0.1 (a free port, dummy
credentials), started once per session, the way s3fs tests itself.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

from faber_runlog import RunStore

BUCKET = "faber-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_PUT_LOCK = threading.Lock()


def _parse_iso_timestamps_quickly() -> None:
    """Let moto's response serializer parse its own ISO 8601 timestamps with the standard library.

    moto formats every object's LastModified as an ISO string and parses it back, per key, with
    dateutil's general parser: a loop of puts, gets and listings of up to 300 keys ran 20 % faster
    without it. ``datetime.fromisoformat`` reads the same strings to the same instants; anything it
    does not read goes to moto's own parser. A moto without this serializer is left as it is.
    """
    import datetime

    try:
        from moto.core import serialize
    except ImportError:
        return

    name = "parse_to_aware_datetime"  # botocore's, imported into moto's serializer
    original = getattr(serialize, name, None)
    if original is None or getattr(original, "_faber_quick", False):
        return

    def quick(value: Any) -> Any:
        if isinstance(value, str):
            try:
                parsed = datetime.datetime.fromisoformat(value)
            except ValueError:
                return original(value)
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=datetime.UTC)
        return original(value)

    quick._faber_quick = True  # type: ignore[attr-defined]  # noqa: SLF001  (marks our own patch)
    setattr(serialize, name, quick)


def _make_conditional_puts_atomic() -> None:
    """Serialise moto's PUTs and DELETEs, as S3 itself does for If-None-Match and If-Match.

    moto checks If-None-Match and then stores the object in two steps, on a
    threaded server, so two racing creates of one key can both succeed there
    (seen with 8 writers: events silently overwritten). Real S3 makes the
    check and the write one atomic step; this restores that in the fake.
    """
    from moto.s3.responses import S3Response

    for name in ("put_object", "delete_object"):  # If-None-Match / If-Match PUTs, If-Match DELETEs
        original = getattr(S3Response, name)
        if getattr(original, "_faber_atomic", False):
            continue

        def locked(self: Any, _original: Any = original) -> Any:
            with _PUT_LOCK:
                return _original(self)

        locked._faber_atomic = True  # type: ignore[attr-defined]  # noqa: SLF001  (marks our own patch)
        setattr(S3Response, name, locked)


class S3Server:
    """A moto server on loopback plus what a client needs to reach it."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        _make_conditional_puts_atomic()
        _parse_iso_timestamps_quickly()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    @property
    def storage_options(self) -> dict[str, Any]:
        # fsspec's instance cache stays on, as for users: one client per option set and thread. A fresh
        # client loads botocore's S3 model and endpoint rules again (about 250 ms of CPU), which made
        # opening stores a large share of the S3 tests' time. Listings are never cached.
        return {
            "client_kwargs": {"endpoint_url": self.endpoint},
            "key": "testing",
            "secret": "testing",
            "use_listings_cache": False,
        }

    def filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options)

    def reset(self) -> None:
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")).read()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run the heavy loops (tests marked slow: concurrency, faults, crash loops, properties) at full size",
    )


SOAK = False
"""True under ``--soak``, set before collection (for sizes fixed at import, such as Hypothesis settings)."""


def pytest_configure(config: pytest.Config) -> None:
    # Read the option, not sys.argv: pytest-xdist workers get the options but not the command line.
    global SOAK
    SOAK = bool(config.getoption("--soak"))


def soak_scale(full: int, default: int) -> int:
    """``full`` under ``--soak``, else ``default``: the size of a heavy loop."""
    return full if SOAK else default


@pytest.fixture(scope="session")
def soak(request: pytest.FixtureRequest) -> bool:
    """True under ``--soak``: heavy loops run at their full size."""
    return bool(request.config.getoption("--soak"))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    fs = server.filesystem()
    fs.mkdir(BUCKET)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _forget_memory_stores() -> Iterator[None]:
    """Drop what a test left in fsspec's memory filesystem, which is one dict per process.

    Every ``memory://`` listing scans that whole dict, so the keys of earlier tests made later
    ones slower and slower (a Hypothesis state machine late in a worker took 300 s, not 3).
    """
    from fsspec.implementations.memory import MemoryFileSystem

    before = set(MemoryFileSystem.store)
    dirs_before = set(MemoryFileSystem.pseudo_dirs)
    yield
    for key in set(MemoryFileSystem.store) - before:
        MemoryFileSystem.store.pop(key, None)
    MemoryFileSystem.pseudo_dirs[:] = [d for d in MemoryFileSystem.pseudo_dirs if d in dirs_before]


def make_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest, **kwargs: Any) -> RunStore:
    """A fresh, empty store of the given kind."""
    if kind == "memory":
        return RunStore(f"memory://runs-{uuid.uuid4().hex}", **kwargs)
    if kind == "local":
        return RunStore(str(tmp_path / "runs"), **kwargs)
    server: S3Server = request.getfixturevalue("s3_server")
    return RunStore(f"s3://{BUCKET}/runs-{uuid.uuid4().hex}", storage_options=server.storage_options, **kwargs)


STORE_KINDS = ("memory", "local", "s3")
SHARED_KINDS = ("local", "s3")


def _backends(metafunc: pytest.Metafunc) -> tuple[str, ...]:
    """The backends a test runs on: all of them, or what its ``backends`` marker names.

    The storage and log contract runs on every backend; application tests (CLI, MCP, lifecycle,
    resume, reports) mark their module ``pytestmark = pytest.mark.backends("memory")``: they test
    what the application does with a store, which the contract already pins on every backend, and
    S3 round trips were most of the suite's time.
    """
    marker = metafunc.definition.get_closest_marker("backends")
    return tuple(marker.args) if marker is not None else STORE_KINDS


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    kinds = _backends(metafunc)
    if "store_kind" in metafunc.fixturenames:
        metafunc.parametrize("store_kind", [k for k in STORE_KINDS if k in kinds])
    if "shared_kind" in metafunc.fixturenames:
        # Memory cannot be shared between processes: a memory-only test shares a local folder.
        metafunc.parametrize("shared_kind", [k for k in SHARED_KINDS if k in kinds] or ["local"])


@pytest.fixture
def store(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> RunStore:
    """The same contract, against memory, a local folder and moto S3."""
    return make_store(store_kind, tmp_path, request)


@pytest.fixture
def store_factory(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """Make a store of the current kind with extra options (snapshot_every=...)."""

    def factory(**kwargs: Any) -> RunStore:
        return make_store(store_kind, tmp_path, request, **kwargs)

    return factory


@pytest.fixture
def shared_store_spec(shared_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """A store other processes can open too: its URL and storage options."""
    if shared_kind == "local":
        return {"url": str(tmp_path / "runs"), "storage_options": {}}
    server: S3Server = request.getfixturevalue("s3_server")
    return {"url": f"s3://{BUCKET}/runs-{uuid.uuid4().hex}", "storage_options": server.storage_options}
