"""The bottom layer: keys under one store root, one subclass per backend.

Everything above works with keys relative to the root (``org/project/uuid/...``)
and asks a :class:`Storage` for what it needs; it never asks which backend it
is talking to. Each backend declares what it can do as data
(:class:`Capabilities`), and callers branch on a capability, never on a kind:

* :class:`LocalStorage` - a folder. Exclusive create is an unnamed temp file
  (``O_TMPFILE``, else a named one), fsync, link; compare-and-swap is
  check-and-replace under ``flock`` on the key's folder; nothing is read,
  written or deleted through a symlink that leaves the root.
* :class:`MemoryStorage` - fsspec's ``memory://``, every conditional write under
  one lock (tests, notebooks).
* :class:`S3Storage` - S3 and compatible stores: ``If-None-Match: *`` creates,
  ``If-Match`` replaces and deletes on the ETag, LIST with ``StartAfter``,
  concurrent batched reads and puts. The first write probes what the store
  really does and refuses loudly what it only pretends to do.
* :class:`FsspecStorage` - any other fsspec filesystem: exclusive create only
  (probed), no compare-and-swap (leases fall back to read-then-write, weaker).

Backend errors are translated here, at the boundary, into :mod:`faber_runlog.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import itertools
import logging
import os
import random
import stat
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Final, TypeVar

import attrs
import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from faber_runlog._base import codec as _codec
from faber_runlog._base.clock import SYSTEM_CLOCK, Clock
from faber_runlog.errors import (
    BucketNotFound,
    ConcurrencyUnsupported,
    CredentialsMissing,
    InvalidArgument,
    StorageError,
    StoreAccessDenied,
    UnsafePath,
)

__all__ = [
    "Capabilities",
    "FsspecStorage",
    "LocalStorage",
    "MemoryStorage",
    "PutResult",
    "S3Storage",
    "Storage",
    "Versioned",
    "open_filesystem",
]

log = logging.getLogger("faber_runlog._storage.backends")

T = TypeVar("T")

_MEMORY_LOCK: Final = threading.RLock()
INTERNAL_DIR: Final = ".faber_runlog"
"""The folder under a store root that holds the library's own objects, not runs (probes, claims, indexes).

Its children are named by the format layer (``_format``); the storage layer only probes inside it."""
_PROBE_DIR: Final = INTERNAL_DIR
_PROBE_RECORD: Final = f"{_PROBE_DIR}/probed.json"
"""An S3 store's record of a probe that found every conditional write (see ``S3Storage._run_probe``)."""
_PROBED: Final = ("conditional_create", "compare_and_swap", "conditional_delete")
_READ_CHUNK: Final = 1 << 16
_RETRIES: Final = 6
_RETRY_SECONDS: Final = 60.0
_PUT_CONCURRENCY: Final = 64
TEMP_PREFIX: Final = ".tmp-"
TEMP_MAX_AGE: Final = 600.0
"""Seconds after which a writer's leftover temp file is removed by the next writer of that folder.

A temp file lives for the milliseconds of one write; one this old belongs to a
killed writer. A writer that was merely stalled that long finds its temp file
gone and reports a failure instead of publishing anything."""
_S3_PROTOCOLS: Final = ("s3", "s3a")
_TRANSIENT_CODES: Final = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "ConditionalRequestConflict",
        "OperationAborted",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "503",
        "500",
    }
)
_TRANSIENT_STATUS: Final = frozenset({500, 502, 503, 504})
_TRANSIENT_ERRNOS: Final = frozenset(
    {errno.EBUSY, errno.EREMOTEIO, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.EAGAIN}
)
# botocore/aiohttp connection and parse failures (no builtin base class to test for).
_TRANSIENT_TYPES: Final = frozenset(
    {
        "HTTPClientError",
        "ConnectionClosedError",
        "EndpointConnectionError",
        "ResponseParserError",
        "IncompleteReadError",
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ClientConnectionError",
        "IncompleteRead",
    }
)
_CREDENTIAL_SOURCES: Final = (
    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), AWS_PROFILE "
    "(profiles in ~/.aws/credentials and ~/.aws/config, or AWS_SHARED_CREDENTIALS_FILE/AWS_CONFIG_FILE), "
    "web identity, container and instance metadata credentials"
)
_weak_warned: set[str] = set()
_S3_CONNECTIONS: Final = 64  # connections per S3 filesystem we open: the concurrency of a batched read
_weak_lock = threading.Lock()


def open_filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Resolve an fsspec URL (or a local path) to ``(filesystem, root path)``.

    For S3, botocore's and s3fs's own retries are turned off unless the caller
    configures them: nested inside ours they multiply (5 x 5 x 7 attempts), so
    a dead store took minutes to report. Our loop alone bounds the wait.
    """
    options = dict(storage_options or {})
    s3 = url.split("://", 1)[0] in _S3_PROTOCOLS
    ours = s3 and "retries" not in (options.get("config_kwargs") or {})
    if ours:
        options["config_kwargs"] = {**(options.get("config_kwargs") or {}), "retries": {"total_max_attempts": 1}}
    if s3 and "max_pool_connections" not in (options.get("config_kwargs") or {}):
        # Batched reads (frames, listings) send many GETs at once; botocore's default pool of 10 connections
        # would queue them, so the batch would cost about a tenth of its requests in round trips.
        options["config_kwargs"] = {**(options.get("config_kwargs") or {}), "max_pool_connections": _S3_CONNECTIONS}
    fs, root = fsspec.core.url_to_fs(url, **options)
    if ours and hasattr(fs, "retries"):
        fs.retries = 1  # this instance is keyed on our retry config, so no other user shares it
    return fs, root


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def _is_transient(exc: BaseException) -> bool:
    """Whether retrying could help: throttling, 5xx, 409 conflicts, resets, timeouts.

    s3fs translates S3 errors to bare OSErrors whose text no longer names the
    code (SlowDown becomes "[Errno 16] Please reduce your request rate."), so
    the code is looked up on the botocore error in the cause chain.
    """
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            break
        if isinstance(seen, (FileExistsError, FileNotFoundError, PermissionError, IsADirectoryError)):
            return False
        if isinstance(seen, (ConnectionError, TimeoutError)):
            return True
        if isinstance(seen, OSError) and seen.errno in _TRANSIENT_ERRNOS:
            return True
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            error = response.get("Error") or {}
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            return error.get("Code") in _TRANSIENT_CODES or status in _TRANSIENT_STATUS
        names = {cls.__name__ for cls in type(seen).__mro__}
        if names & _TRANSIENT_TYPES or any("Timeout" in n for n in names):
            return True
        text = str(seen)
        if any(f"({code})" in text for code in _TRANSIENT_CODES):
            return True
        seen = seen.__cause__
    return False


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code (``NoSuchBucket``, ``PreconditionFailed``...) in ``exc``'s cause chain."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return None
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            code = (response.get("Error") or {}).get("Code")
            return str(code) if code is not None else None
        seen = seen.__cause__ or seen.__context__
    return None


def _type_in_chain(exc: BaseException, name: str) -> bool:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if any(c.__name__ == name for c in type(seen).__mro__):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def digest(data: bytes) -> str:
    """The version token of a body on stores that have no ETag: a hash of its bytes.

    Bodies written by faber_runlog carry a unique nonce, so two writes never
    share a token (the ABA problem of compare-and-swap cannot arise).
    """
    return hashlib.sha256(data).hexdigest()[:32]


@attrs.frozen(slots=True)
class Capabilities:
    """What a backend can do, as data; callers ask for these, never for a backend kind.

    ``conditional_create``: create-if-absent is atomic (events are safe with
    concurrent writers). ``compare_and_swap``: replace only if the current
    version matches, atomically (leases and claims are fenced).
    ``conditional_delete``: delete only if the version matches.
    ``list_after``: one request lists the names after a key (S3 StartAfter),
    so a writer finds the tail with a LIST rather than one probe per number.
    ``batched_reads`` / ``concurrent_puts``: many keys are read or written
    concurrently in one call (worth it where each request has a round trip).
    ``cheap_writes``: a small write costs no request (a local folder, memory),
    so a writer keeps the run's ``summary.json`` current with every append and
    a listing of active runs reads it instead of folding their events; where a
    write is a request (S3) the summary follows status changes only.

    Each is True (the backend has it), False (it does not) or None: not known
    until the backend's probe has seen what the store really does (S3 and other
    fsspec stores probe their conditional writes at the first write, or at
    :meth:`Storage.probe`). An unknown capability is not relied on: it is falsy.
    """

    conditional_create: bool | None
    compare_and_swap: bool | None
    conditional_delete: bool | None
    list_after: bool | None
    batched_reads: bool | None
    concurrent_puts: bool | None
    cheap_writes: bool | None = False

    def names(self) -> tuple[str, ...]:
        """The names of the capabilities this backend is known to have."""
        return tuple(a.name for a in attrs.fields(Capabilities) if getattr(self, a.name) is True)

    def unknown(self) -> tuple[str, ...]:
        """The names of the capabilities not known yet (the probe at the first write settles them)."""
        return tuple(a.name for a in attrs.fields(Capabilities) if getattr(self, a.name) is None)


@attrs.frozen(slots=True)
class Versioned:
    """A body and the version token a compare-and-swap must name to replace it."""

    data: bytes
    version: str


@attrs.frozen(slots=True)
class PutResult:
    """The outcome of one write of :meth:`Storage.put_many`."""

    created: bool = True  # False: an exclusive create found the key already there
    etag: str | None = None
    error: BaseException | None = None


class Storage:
    """Keys under one root of one fsspec filesystem.

    ``Storage(fs, root)`` returns the subclass for ``fs`` (local folder,
    memory, S3, or any other fsspec filesystem). Subclasses declare
    :attr:`capabilities` and override what their backend does natively.
    """

    kind: str = "fsspec"
    """A label for messages and reprs; never a reason to branch (ask :attr:`capabilities`)."""
    capabilities: Capabilities = Capabilities(
        conditional_create=True,
        compare_and_swap=False,
        conditional_delete=False,
        list_after=False,
        batched_reads=False,
        concurrent_puts=False,
        cheap_writes=False,
    )
    contention_backoff: ClassVar[float] = 0.005
    """Seconds a writer that lost a sequence-number race waits at first (then doubles); ~ one round trip."""
    retry_backoff: float = 0.05
    """Seconds before the first retry of a transient failure (then doubled, at most 2 s, with jitter)."""
    _cat_kwargs: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    """Extra arguments of every ``fs.cat_file`` (a backend's read tuning)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Storage:
        if cls is Storage:
            fs = args[0] if args else kwargs.get("fs")
            if not isinstance(fs, fsspec.AbstractFileSystem):
                raise InvalidArgument(f"Storage(fs, root) takes an fsspec filesystem, got {type(fs).__name__}")
            cls = _storage_class(fs)
        return super().__new__(cls)

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        root: str,
        *,
        fsync: bool = True,
        allow_unsafe_writers: bool = False,
        retries: int = _RETRIES,
        retry_seconds: float = _RETRY_SECONDS,
    ) -> None:
        self.fs = fs
        self.fsync = fsync
        self.retries = retries
        self.retry_seconds = retry_seconds
        self.allow_unsafe_writers = allow_unsafe_writers
        self.root = self._normalise_root(root).rstrip("/") or "/"
        self._probed = False
        self._probe_lock = threading.Lock()
        self.clock: Clock = SYSTEM_CLOCK
        """The store's clock (``RunStore(clock=...)``): leases, sweeps and the claim loop read time from it."""

    def _normalise_root(self, root: str) -> str:
        return root.rstrip("/")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    @property
    def url(self) -> str:
        """A URL naming the root, for messages and reports."""
        return f"{self.kind}://{self.root.lstrip('/')}"

    # -- paths -------------------------------------------------------------

    def path(self, key: str) -> str:
        """The backend path of ``key``; refuses anything that could leave the root."""
        if not key or key.startswith("/") or "\\" in key or "\x00" in key:
            raise UnsafePath(f"refusing key {key!r}: keys are relative, '/'-separated and non-empty")
        for part in key.split("/"):
            if part in ("", ".", ".."):
                raise UnsafePath(f"refusing key {key!r}: it has an empty, '.' or '..' segment")
        if self.root == "/":
            return "/" + key
        return f"{self.root}/{key}"

    # -- retries and translation -------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn``, retrying transient failures at most ``retries`` times and ``retry_seconds`` long."""
        delay = self.retry_backoff
        deadline = time.monotonic() + self.retry_seconds
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except (FileExistsError, FileNotFoundError) as e:
                self._translate(e)
                raise
            except Exception as e:
                self._translate(e)
                if attempt < self.retries and _is_transient(e) and time.monotonic() + delay < deadline:
                    log.debug("retrying %s after %r (attempt %d)", what, e, attempt + 1)
                    time.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 2.0)
                    continue
                raise StorageError(
                    f"{what} failed on {self.url} after {attempt + 1} attempt(s): {type(e).__name__}: {e}; "
                    "check the store is reachable and writable, then retry"
                ) from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _translate(self, exc: BaseException) -> None:
        """Raise a precise error for ``exc`` when the backend's problem is known (a hook for subclasses)."""

    # -- reads -------------------------------------------------------------

    def read(self, key: str) -> bytes | None:
        """The bytes at ``key``, or None when it does not exist."""
        path = self.path(key)
        try:
            body: bytes = self._call(f"reading {path}", lambda: self.fs.cat_file(path, **self._cat_kwargs))
            return body
        except FileNotFoundError:
            return None

    def read_numbered(
        self,
        folder: str,
        first: int,
        last: int | None,
        decode: Callable[[int, bytes], T],
        name: Callable[[int], str],
    ) -> Generator[T, None, int]:
        """``decode(n, body)`` of the files ``folder/<name(n)>`` for n = first, first + 1, ...

        Stops after ``last`` or at the first file that does not exist, and
        returns the first number it did not read. The caller names the files
        (the format layer's ``seq_name``): storage knows keys, not event numbering.
        """
        seq = first
        while last is None or seq <= last:
            body = self.read(f"{folder}/{name(seq)}")
            if body is None:
                break
            yield decode(seq, body)
            seq += 1
        return seq

    def unsafe(self, key: str) -> str | None:  # noqa: ARG002  (the default of a hook backends override)
        """Why folder ``key`` may not be used (a symlink leading out of the root), or None when it may.

        For store-wide loops: one such folder is reported and skipped, where a read would refuse
        it with :class:`UnsafePath`. Object stores have no symlinks.
        """
        return None

    def read_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """Read several keys (concurrently where the backend has ``batched_reads``)."""
        return {k: self.read(k) for k in keys}

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists (bypassing listing caches)."""
        path = self.path(key)
        try:
            self._call(f"checking {path}", lambda: self.fs.info(path, refresh=True))
        except FileNotFoundError:
            return False
        return True

    def list_names(self, key: str) -> list[str]:
        """Names directly under folder ``key`` (sorted), empty if it does not exist."""
        path = self.path(key) if key else self.root
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(path)
        try:
            entries = self._call(f"listing {path}", lambda: self.fs.ls(path, detail=False))
        except FileNotFoundError:
            return []
        prefix = path.rstrip("/") + "/"
        names = [e[len(prefix) :] if e.startswith(prefix) else e.rsplit("/", 1)[-1] for e in entries]
        return sorted(n.strip("/") for n in names if n.strip("/"))

    def list_after(self, folder: str, start_after: str, limit: int | None = None) -> list[str]:
        """Names in ``folder`` sorting after ``start_after``, the first ``limit`` of them (None: all).

        One request per page of names where ``list_after`` is a capability, so
        a bounded read lists only what it will return.
        """
        names = [n for n in self.list_names(folder) if n > start_after]
        return names if limit is None else names[: max(0, limit)]

    def size(self, key: str) -> int | None:
        """The length in bytes of ``key``, or None when it does not exist (one metadata request, no body)."""
        path = self.path(key)
        try:
            info = self._call(f"checking {path}", lambda: self.fs.info(path, refresh=True))
        except FileNotFoundError:
            return None
        return int(info["size"])

    def sizes_after(self, folder: str, start_after: str) -> list[tuple[str, int]]:
        """Names in ``folder`` sorting after ``start_after``, each with its length in bytes.

        Where ``list_after`` is a capability, the same one request per page of names as
        :meth:`list_after` (an S3 LIST returns each key's size): what protocol rule 21 reads.
        """
        found = [(n, self.size(f"{folder}/{n}")) for n in self.list_after(folder, start_after)]
        return [(n, size) for n, size in found if size is not None]

    # -- writes ------------------------------------------------------------

    def create(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if absent. True if this call created it, False if it existed."""
        won = self.claim(key, data)
        # A PUT that landed but whose reply was lost comes back as 412 on
        # retry; our bytes carry a unique nonce, so equal bytes mean we won.
        return won if won is not None else self.read(key) == data

    def claim(self, key: str, data: bytes) -> bool | None:
        """:meth:`create`, leaving a taken ``key`` unsettled: None where the taker may be this very call.

        A request retried after it landed (its reply lost) meets its own bytes as taken. :meth:`create`
        reads ``key`` to tell; a caller that lists or reads ``key`` anyway settles it from that instead
        (the event log, protocol rule 22), saving the read. Backends whose creates are never retried
        unseen (a local folder, memory) answer True or False.
        """
        _refuse_empty(data)
        path = self.path(key)
        self._probe()
        try:
            self._call(f"creating {path}", lambda: self.fs.pipe_file(path, data, mode="create"))
            return True
        except FileExistsError:
            return None
        except StorageError:
            # The last attempt may have landed before its reply was lost: one
            # plain read tells, so a caller is not told "failed" about a success.
            if self._landed(path, data):
                return True
            raise

    @contextlib.contextmanager
    def turn(self, folder: str, wait: float) -> Iterator[bool]:  # noqa: ARG002  (the signature every backend's turn shares)
        """This process's turn to create names under ``folder``: True while held, False when none is held.

        Where processes can share a lock cheaply (a local folder), writers that would race for the
        same names wait their turn instead, so none spends a durable write on a lost create. A turn
        only orders the tries: the exclusive create still decides every claim, and a turn not had
        within ``wait`` seconds (its holder stalled) is given up (False) rather than waited for.
        Elsewhere nothing is held.
        """
        yield False

    def _landed(self, path: str, data: bytes) -> bool:
        try:
            return bool(self.fs.cat_file(path, **self._cat_kwargs) == data)
        except Exception:  # noqa: BLE001  (any fsspec backend's error means the bytes did not land as ours)
            return False

    def replace(self, key: str, data: bytes) -> None:
        """Write ``key`` atomically, replacing what was there (readers see old or new)."""
        path = self.path(key)
        self._call(f"writing {path}", lambda: self.fs.pipe_file(path, data))

    def replace_cache(self, key: str, data: bytes) -> None:
        """:meth:`replace` for a cache checked before each use (a snapshot, a summary): no sync needed.

        A cache lost or torn by a crash costs a fold, never an answer (its checksum and the log
        decide), so backends that sync each write may skip it here; the rest just replace.
        """
        self.replace(key, data)

    def delete(self, key: str) -> None:
        """Remove ``key`` if it exists (keys changed by :meth:`swap` are removed with :meth:`delete_if`)."""
        path = self.path(key)
        try:
            self._call(f"deleting {path}", lambda: self.fs.rm_file(path))
        except FileNotFoundError:
            pass

    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove each of ``keys`` that exists, in no particular order (S3: one request per 1,000 keys)."""
        for key in keys:
            self.delete(key)

    def makedirs(self, key: str) -> None:
        """Make folder ``key`` where folders are real (local); a no-op on object stores."""

    def remove_empty(self, *keys: str) -> None:
        """Remove the folders ``keys``, in order, each only while empty (local); a no-op on object stores."""

    def ensure_root(self) -> None:
        """Make the root itself where folders are real (local); a no-op on object stores."""

    def put_many(self, items: Mapping[str, bytes], *, create: bool) -> dict[str, PutResult]:
        """Write many keys (``create``: exclusively); concurrently where ``concurrent_puts`` is a capability.

        Never raises for one key: each result holds its error, already
        retried and translated, so a caller can report every failure at once.
        """
        return {key: self._put_one(key, body, create=create) for key, body in items.items()}

    def _put_one(self, key: str, body: bytes, *, create: bool) -> PutResult:
        try:
            if create:
                return PutResult(created=self.create(key, body))
            self.replace(key, body)
            return PutResult()
        except Exception as e:  # noqa: BLE001  (the result carries the error to the caller)
            return PutResult(error=e)

    # -- compare-and-swap ----------------------------------------------------

    def read_versioned(self, key: str) -> Versioned | None:
        """The body at ``key`` with its version token, or None when absent."""
        body = self.read(key)
        return None if body is None else Versioned(body, digest(body))

    def create_versioned(self, key: str, data: bytes) -> str | None:
        """Create ``key`` only if absent; its version token, or None when it existed."""
        return digest(data) if self.create(key, data) else None

    def swap(self, key: str, data: bytes, version: str) -> str | None:
        """Replace ``key`` with ``data`` only if its version is still ``version``; the new token, or None.

        None means someone else changed or removed the key since ``version``
        was read: nothing was written. The check and the write run under
        :meth:`_check_guard`, which is atomic only where the backend makes it so.
        """
        with self._check_guard(key, "compare-and-swap") as possible:
            if not possible or not self._at_version(key, version):
                return None
            self.replace(key, data)
        return digest(data)

    def delete_if(self, key: str, version: str) -> bool:
        """Delete ``key`` only if its version is still ``version``; True if this call deleted it."""
        with self._check_guard(key, "conditional delete") as possible:
            if not possible or not self._at_version(key, version):
                return False
            self.delete(key)
        return True

    def _at_version(self, key: str, version: str) -> bool:
        current = self.read_versioned(key)
        return current is not None and current.version == version

    @contextlib.contextmanager
    def _check_guard(self, key: str, what: str) -> Iterator[bool]:  # noqa: ARG002  (the signature every backend's guard shares)
        """Held around a check-then-write on ``key``; yields False when the key cannot exist.

        This base guard holds nothing (the check and the write may interleave
        with another writer's), so it warns once; backends that declare
        ``compare_and_swap`` make it exclusive.
        """
        self._warn_weak(what)
        yield True

    def _warn_weak(self, what: str) -> None:
        with _weak_lock:
            if self.url in _weak_warned:
                return
            _weak_warned.add(self.url)
        log.warning(
            "the store at %s has no atomic %s: leases and concurrency keys fall back to read-then-write, "
            "so two writers may both believe they hold a run in a narrow race (see docs/concurrency.md)",
            self.url,
            what,
        )

    # -- capability probe --------------------------------------------------

    def probe(self) -> Capabilities:
        """Probe the store now (a few writes under ``.faber_runlog/``, removed) and return the settled capabilities.

        The first write does this anyway; call it to know :attr:`capabilities`
        before writing (they have no unknowns afterwards). Backends that need no
        probe return their declared capabilities without writing anything.
        """
        self._probe()
        return self.capabilities

    def _probe(self) -> None:
        """Check once, at the first write, that the backend does what its capabilities claim."""
        if self._probed:
            return
        with self._probe_lock:
            if self._probed:
                return
            self._run_probe()
            self._probed = True

    def _run_probe(self) -> None:
        key = f"{_PROBE_DIR}/probe-{uuid.uuid4().hex}"
        path = self.path(key)
        try:
            try:
                self._call(f"probing {path}", lambda: self.fs.pipe_file(path, b"1", mode="create"))
            except FileExistsError:
                pass  # the key is fresh: only our own PUT, its reply lost, can have made it
            try:
                self._call(f"probing {path}", lambda: self.fs.pipe_file(path, b"2", mode="create"))
                second_created = True
            except (FileExistsError, StorageError):
                second_created = False
        finally:
            try:
                self.fs.rm_file(path)
            except Exception:  # noqa: BLE001  (cleanup of a probe: logged, the answer stands)
                log.debug("could not remove probe %s", path)
        if second_created:
            self._pretends("exclusive create (If-None-Match)", "overwrite each other's events")
        if self.capabilities.conditional_create is None or second_created:
            self.capabilities = attrs.evolve(self.capabilities, conditional_create=not second_created)

    def _pretends(self, what: str, harm: str) -> None:
        if not self.allow_unsafe_writers:
            raise ConcurrencyUnsupported(
                f"the store at {self.url} ignores {what}, so two writers could {harm}; use a store that "
                "supports conditional writes, or pass allow_unsafe_writers=True if only one process ever "
                "writes to it"
            )
        log.warning("the store at %s ignores %s; continuing because allow_unsafe_writers=True", self.url, what)


def _refuse_empty(data: bytes) -> None:
    if not data:
        raise InvalidArgument("refusing to create an empty object: some stores overwrite on empty bodies")


class FsspecStorage(Storage):
    """Any other fsspec filesystem: probed exclusive create, no compare-and-swap.

    ``conditional_create`` is unknown (None) until the probe at the first write
    (or :meth:`probe`) has seen whether the filesystem really refuses a second create.
    """

    capabilities = Capabilities(
        conditional_create=None,
        compare_and_swap=False,
        conditional_delete=False,
        list_after=False,
        batched_reads=False,
        concurrent_puts=False,
        cheap_writes=False,
    )

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, **kwargs: Any) -> None:
        super().__init__(fs, root, **kwargs)
        self.kind = _protocols(fs)[0]


# -- memory ---------------------------------------------------------------------------


class MemoryStorage(Storage):
    """fsspec's ``memory://``: one process, every conditional write under one lock."""

    kind = "memory"
    capabilities = Capabilities(
        conditional_create=True,
        compare_and_swap=True,
        conditional_delete=True,
        list_after=False,
        batched_reads=False,
        concurrent_puts=False,
        cheap_writes=True,
    )
    contention_backoff = 0.0002

    def _normalise_root(self, root: str) -> str:
        return "/" + root.strip("/")

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""
        return bool(self.fs.exists(self.path(key)))

    def create(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if absent (under the memory lock)."""
        _refuse_empty(data)
        path = self.path(key)
        with _MEMORY_LOCK:
            if self.fs.exists(path):
                return False
            self.fs.pipe_file(path, data)
            return True

    def claim(self, key: str, data: bytes) -> bool | None:
        """:meth:`create`: under the memory lock, a taken key is always another's."""
        return self.create(key, data)

    def replace(self, key: str, data: bytes) -> None:
        """Overwrite ``key`` (under the memory lock, so a swap never interleaves)."""
        path = self.path(key)
        with _MEMORY_LOCK:
            self.fs.pipe_file(path, data)

    @contextlib.contextmanager
    def _check_guard(self, key: str, what: str) -> Iterator[bool]:  # noqa: ARG002  (the signature every backend's guard shares)
        """The memory lock: a compare-and-swap never interleaves with another write."""
        with _MEMORY_LOCK:
            yield True

    def _run_probe(self) -> None:
        pass  # the lock makes every conditional write atomic


# -- local folder ------------------------------------------------------------------------


class LocalStorage(Storage):
    """A local folder: durable exclusive creates, flock-backed compare-and-swap, contained paths."""

    kind = "local"
    capabilities = Capabilities(
        conditional_create=True,
        compare_and_swap=True,
        conditional_delete=True,
        list_after=False,
        batched_reads=False,
        concurrent_puts=False,
        cheap_writes=True,
    )
    contention_backoff = 0.0002

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, **kwargs: Any) -> None:
        super().__init__(fs, root, **kwargs)
        self._real_root = os.path.realpath(self.root)
        self._below = self.root.rstrip(os.sep) + os.sep  # what every folder under the root starts with
        self._swept: set[str] = set()
        # Whether this filesystem makes unnamed temp files (Linux O_TMPFILE) that a link can name; None
        # until the first create tried, False: named temp files from then on.
        self._unnamed: bool | None = None if _O_TMPFILE else False
        self._probed = True

    def _normalise_root(self, root: str) -> str:
        return os.path.abspath(os.path.expanduser(root))

    @property
    def url(self) -> str:
        """The root folder."""
        return self.root

    # -- containment ---------------------------------------------------------

    def _inside(self, real: str) -> bool:
        root = self._real_root
        return real == root or real.startswith(root.rstrip(os.sep) + os.sep)

    def _contained(self, folder: str) -> str:
        """``folder`` after checking that following its symlinks stays under the root."""
        if self._plain_below_root(folder):
            return folder
        real = os.path.realpath(folder)
        if not self._inside(real):
            raise UnsafePath(
                f"refusing {folder}: through a symlink it leads to {real}, outside the store root "
                f"{self.root}; replace the symlink with a real folder (or point the store at the target)"
            )
        return folder

    def _plain_below_root(self, folder: str) -> bool:
        """Whether ``folder`` lies under the root with no symlink on the way (one ``lstat`` per level below it).

        Then its real path is the root's plus the rest, so it is contained; the per-append fast path
        of :meth:`_contained` (``realpath`` re-resolves the root's own levels every time, several
        times the cost). False means "not known": ``realpath`` decides.
        """
        base = self._below
        if not folder.startswith(base):
            return False
        path = base[:-1]
        for part in folder[len(base) :].split(os.sep):
            path = f"{path}{os.sep}{part}"
            try:
                if stat.S_ISLNK(os.lstat(path).st_mode):
                    return False
            except FileNotFoundError:
                return True  # nothing further exists to be a symlink
            except OSError:
                return False
        return True

    def unsafe(self, key: str) -> str | None:
        """Why folder ``key`` may not be used (it is a symlink leading out of the root), or None (one ``lstat``)."""
        path = self.path(key)
        if not os.path.islink(path):
            return None
        try:
            self._contained(path)
        except UnsafePath as e:
            return str(e)
        return None

    def _checked(self, key: str) -> str:
        """The path of ``key`` whose folder is checked to stay under the root."""
        path = self.path(key)
        self._contained(os.path.dirname(path))
        return path

    def _read_file(self, path: str) -> bytes | None:
        try:
            return _read_local(path)
        except _SymlinkRefused:
            self._contained(path)  # a symlink pointing inside the root is read like a file
            return _read_local(path, follow=True)

    # -- reads ---------------------------------------------------------------

    def read(self, key: str) -> bytes | None:
        """The bytes at ``key``, or None when absent (never through a symlink leaving the root)."""
        return self._read_file(self._checked(key))

    def read_numbered(
        self,
        folder: str,
        first: int,
        last: int | None,
        decode: Callable[[int, bytes], T],
        name: Callable[[int], str],
    ) -> Generator[T, None, int]:
        """Numbered files in order with plain os calls (the rebuild's hot path); the folder is checked once.

        Files are opened relative to the folder's descriptor: the kernel does not
        walk the whole path again for every event.
        """
        base = self.path(folder)
        self._contained(base)
        seq = first
        try:
            dfd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            return seq
        except OSError as e:
            raise StorageError(f"reading {base} failed: {e}; check the folder's permissions") from e
        flags = os.O_RDONLY | os.O_NOFOLLOW
        try:
            while last is None or seq <= last:
                file = name(seq)
                try:
                    fd = os.open(file, flags, dir_fd=dfd)
                except FileNotFoundError:
                    break
                except OSError:  # a symlink or an odd file: the careful path decides
                    data = self._read_file(f"{base}/{file}")
                else:
                    try:
                        data = _read_fd(fd)
                    except OSError as e:
                        raise StorageError(f"reading {base}/{file} failed: {e}") from e
                    finally:
                        os.close(fd)
                if data is None:
                    break
                yield decode(seq, data)
                seq += 1
        finally:
            os.close(dfd)
        return seq

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists (a symlink counts as itself, not as its target)."""
        return os.path.lexists(self._checked(key))

    def size(self, key: str) -> int | None:
        """The length of ``key`` in bytes (one ``lstat``: a symlink is its own size), or None when absent."""
        path = self._checked(key)
        try:
            found = os.lstat(path)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(found.st_mode):  # a link inside the root is read as its target: so is its size
            body = self.read(key)
            return None if body is None else len(body)
        return found.st_size

    def list_names(self, key: str) -> list[str]:
        """Names in folder ``key`` (sorted), empty if it does not exist."""
        path = self.path(key) if key else self.root
        self._contained(path)
        try:
            return sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return []

    # -- writes --------------------------------------------------------------

    def makedirs(self, key: str) -> None:
        """Make folder ``key`` (refusing one whose existing part leads outside the root)."""
        path = self._contained(self.path(key))
        os.makedirs(path, exist_ok=True)

    def remove_empty(self, *keys: str) -> None:
        """Remove the folders ``keys``, in order, each only while empty (what a refused creation made)."""
        for key in keys:
            try:
                os.rmdir(self._checked(key))
            except OSError:
                return  # not empty (someone wrote there), gone, or not ours to remove: leave it

    def ensure_root(self) -> None:
        """Make the root folder."""
        os.makedirs(self.root, exist_ok=True)

    def _sweep_temps(self, folder: str) -> None:
        """Once per folder and handle: remove temp files a killed writer left, once they are old enough."""
        if folder in self._swept:
            return
        self._swept.add(folder)
        cutoff = time.time() - TEMP_MAX_AGE
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if not entry.name.startswith(TEMP_PREFIX):
                        continue
                    try:
                        if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                            os.unlink(entry.path)
                            log.info("removed %s, left by a writer that was killed mid-write", entry.path)
                    except FileNotFoundError:
                        pass
        except FileNotFoundError:
            pass

    def _write_temp(self, folder: str, data: bytes, *, sync: bool = True) -> str:
        """A fsynced temp file in ``folder`` holding every byte of ``data``; raises and leaves nothing otherwise."""
        tmp = f"{folder}{os.sep}{TEMP_PREFIX}{_temp_tag()}"
        try:
            fd = os.open(tmp, _TEMP_FLAGS, 0o644)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(tmp, _TEMP_FLAGS, 0o644)
        except FileExistsError:  # not expected (see _temp_tag); a fresh uuid then
            tmp = f"{folder}{os.sep}{TEMP_PREFIX}{uuid.uuid4().hex}"
            fd = os.open(tmp, _TEMP_FLAGS, 0o644)
        self._sweep_temps(folder)
        try:
            _write_all(fd, data, folder, sync=sync and self.fsync)
        except StorageError:
            _unlink_quietly(tmp)
            raise
        finally:
            os.close(fd)
        return tmp

    def create(self, key: str, data: bytes) -> bool:
        """Temp file, fsync, link to the name (fails if it exists), fsync the folder.

        The temp file is unnamed where the filesystem makes such files (Linux ``O_TMPFILE``): nothing
        is added to the folder until the link, nothing is removed after it, and a writer killed
        before the link leaves nothing behind; a durable append then costs about a fifth less than
        through a named temp file (``benchmarks/bench_core.py``). Elsewhere a named one, removed after.
        """
        _refuse_empty(data)
        path = self._checked(key)
        if os.path.lexists(path):
            # Taken already: a writer behind the tail loses without paying for a temp file's fsync (the
            # link below still decides every race; this only answers early the ones already decided).
            return False
        folder = os.path.dirname(path)
        if self._unnamed is not False:
            made = self._create_unnamed(folder, path, data)
            if made is not None:
                return made
        tmp = self._write_temp(folder, data)
        try:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as e:
                raise StorageError(f"creating {path} failed: {e}; check the folder is writable") from e
        finally:
            _unlink_quietly(tmp)
        if self.fsync:
            _fsync_dir(folder)
        return True

    def _create_unnamed(self, folder: str, path: str, data: bytes) -> bool | None:
        """:meth:`create` through an unnamed temp file; None when this filesystem makes none (then never again)."""
        try:
            try:
                fd = os.open(folder, _O_TMPFILE | os.O_WRONLY, 0o644)
            except FileNotFoundError:
                os.makedirs(folder, exist_ok=True)
                fd = os.open(folder, _O_TMPFILE | os.O_WRONLY, 0o644)
        except OSError as e:
            if e.errno not in _NO_TMPFILE:
                raise StorageError(f"creating a file in {folder} failed: {e}; check the folder is writable") from e
            self._unnamed = False
            return None
        self._sweep_temps(folder)  # named ones that older writers, killed, left behind
        try:
            _write_all(fd, data, folder, sync=self.fsync)
            dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                try:
                    # linkat(AT_SYMLINK_FOLLOW) names the open file; a directory fd makes os.link call linkat.
                    os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=dfd, follow_symlinks=True)
                except FileExistsError:
                    return False
                except OSError as e:
                    if self._unnamed is None and e.errno in (errno.ENOENT, errno.EXDEV, errno.EPERM, errno.EACCES):
                        self._unnamed = False  # no /proc to name it through: named temp files, from now on
                        return None
                    raise StorageError(f"creating {path} failed: {e}; check the folder is writable") from e
                self._unnamed = True
                if self.fsync:
                    _fsync_fd(dfd)
                return True
            finally:
                os.close(dfd)
        finally:
            os.close(fd)

    def claim(self, key: str, data: bytes) -> bool | None:
        """:meth:`create`: a hard link is never retried unseen, so a taken name is always another's."""
        return self.create(key, data)

    def replace(self, key: str, data: bytes) -> None:
        """Temp file, fsync, ``os.replace``: readers see the old or the new body."""
        path = self._checked(key)
        self._replace_path(path, data)

    def replace_cache(self, key: str, data: bytes) -> None:
        """Rewrite a cache without a sync: in place when it is small, else temp file and ``os.replace``.

        A rename over an existing file (or a truncation to zero) makes ext4 flush the new
        data first (``auto_da_alloc``): 0.2-0.3 ms, a third of a durable append, which a
        summary kept current with every append must not cost. A small cache that exists is
        therefore rewritten in place, padded with trailing blanks to its old size (JSON
        whitespace, which the checked decoders accept). A reader that meets a half-rewritten
        body, or a crash that tears one, finds a checksum that does not match and folds the
        log instead: a cache costs time, never an answer (protocol rule 8); the event files
        an append acknowledges are always synced (:meth:`create`).
        """
        path = self._checked(key)
        if len(data) > _IN_PLACE_MAX or not _rewrite_in_place(path, data):
            self._replace_path(path, data, sync=False)

    def _replace_path(self, path: str, data: bytes, *, sync: bool = True) -> None:
        folder = os.path.dirname(path)
        tmp = self._write_temp(folder, data, sync=sync)
        try:
            os.replace(tmp, path)
        except OSError as e:
            _unlink_quietly(tmp)
            raise StorageError(f"writing {path} failed: {e}; check the folder is writable") from e
        if sync and self.fsync:
            _fsync_dir(folder)

    def delete(self, key: str) -> None:
        """Remove ``key`` if it exists (a symlink is removed itself, its target never)."""
        path = self._checked(key)
        _unlink_quietly(path)

    # -- compare-and-swap ------------------------------------------------------

    @contextlib.contextmanager
    def turn(self, folder: str, wait: float) -> Iterator[bool]:
        """An exclusive ``flock`` on ``folder``, polled for up to ``wait`` seconds (a stalled holder is not awaited)."""
        path = self._checked(folder)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            yield False  # no folder yet (or not one we may lock): the create decides alone
            return
        try:
            deadline = time.monotonic() + wait
            held = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held = True
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        break
                    time.sleep(_TURN_POLL)
                except OSError:
                    break  # a filesystem without flock: no turns
            yield held
        finally:
            os.close(fd)  # closing releases the lock

    @contextlib.contextmanager
    def _folder_lock(self, folder: str) -> Iterator[None]:
        """An exclusive ``flock`` on the folder: check-and-replace is atomic between processes."""
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @contextlib.contextmanager
    def _check_guard(self, key: str, what: str) -> Iterator[bool]:  # noqa: ARG002  (the signature every backend's guard shares)
        """An exclusive ``flock`` on the key's folder (False, nothing held, when the folder is missing)."""
        folder = os.path.dirname(self._checked(key))
        if not os.path.isdir(folder):
            yield False
            return
        with self._folder_lock(folder):
            yield True


_TURN_POLL: Final = 0.0002  # seconds between tries for a claim turn (a local create takes about 1 ms)
_TEMP_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
_O_TMPFILE: Final = getattr(os, "O_TMPFILE", 0)  # Linux 3.11+; 0 where os has none
_NO_TMPFILE: Final = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOTSUP})
"""What ``open(O_TMPFILE)`` fails with on a filesystem (or kernel) that makes no unnamed files."""
_IN_PLACE_MAX: Final = 4096
"""The largest cache rewritten in place (one page): larger ones are renamed into place."""


def _rewrite_in_place(path: str, data: bytes) -> bool:
    """Overwrite the existing small file ``path`` with ``data`` padded to its size; False: it is absent or large.

    An absent file is not created here: the first body appears whole, by rename.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        if size > _IN_PLACE_MAX:
            return False
        os.pwrite(fd, data.ljust(size, b" "), 0)
        return True
    finally:
        os.close(fd)


_temp_ids = itertools.count()
_temp_base = [uuid.uuid4().hex[:16]]  # this process's random prefix; a forked child draws its own


def _new_temp_base_in_child() -> None:
    _temp_base[0] = uuid.uuid4().hex[:16]


os.register_at_fork(after_in_child=_new_temp_base_in_child)


def _temp_tag() -> str:
    """A temp-file name part no other writer uses: a random prefix per process, then a counter.

    Cheaper than a fresh uuid per write (the local append's hot path); a forked child gets its
    own prefix, and ``O_EXCL`` refuses a clash all the same.
    """
    return f"{_temp_base[0]}-{next(_temp_ids)}"


def _read_fd(fd: int) -> bytes:
    """Every byte of an open file, in one read when it is small (as events are)."""
    data = os.read(fd, _READ_CHUNK)
    if len(data) == _READ_CHUNK:
        parts = [data]
        while chunk := os.read(fd, _READ_CHUNK):
            parts.append(chunk)
        data = b"".join(parts)
    return data


class _SymlinkRefused(Exception):
    """The last part of a path is a symlink (opened with O_NOFOLLOW)."""


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _write_all(fd: int, data: bytes, folder: str, *, sync: bool) -> None:
    """Every byte of ``data`` into the temp file ``fd`` (synced if ``sync``); StorageError otherwise."""
    try:
        view = memoryview(data)
        while view:
            # A short write (a nearly full disk, a file size limit) writes
            # part; loop until all is written or the next write fails.
            written = os.write(fd, view)
            if written <= 0:
                raise OSError(errno.EIO, "the disk accepted no more bytes")
            view = view[written:]
        if sync:
            os.fsync(fd)
    except OSError as e:
        raise StorageError(
            f"writing {len(data)} bytes into {folder} failed ({e}); nothing was published. "
            "Free disk space (or raise the file size limit) and retry"
        ) from e


def _fsync_dir(folder: str) -> None:
    dfd = os.open(folder, os.O_RDONLY)
    try:
        _fsync_fd(dfd)
    finally:
        os.close(dfd)


def _fsync_fd(dfd: int) -> None:
    try:
        os.fsync(dfd)
    except OSError as e:  # some filesystems refuse fsync on folders
        if e.errno not in (errno.EINVAL, errno.EBADF):
            raise


def _read_local(path: str, *, follow: bool = False) -> bytes | None:
    """A local file's bytes with plain os calls (None when absent); a final symlink is refused unless ``follow``."""
    try:
        fd = os.open(path, os.O_RDONLY if follow else os.O_RDONLY | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP and not follow:
            raise _SymlinkRefused(path) from e
        raise StorageError(f"reading {path} failed: {e}; check the file's permissions") from e
    try:
        return _read_fd(fd)
    except OSError as e:
        raise StorageError(f"reading {path} failed: {e}") from e
    finally:
        os.close(fd)


# -- S3 --------------------------------------------------------------------------------------


_PRECONDITION: Final = object()


_S3_PAGE: Final = 1000
"""The most names one S3 LIST returns."""


class S3Storage(Storage):
    """S3 and compatible stores through s3fs: conditional PUT/DELETE on ETags, StartAfter, batches.

    Capabilities are honest before the first write: many S3 look-alikes accept the
    conditional headers and ignore or reject them, so a fresh instance reports
    ``conditional_create``, ``compare_and_swap`` and ``conditional_delete`` as
    unknown (None, falsy) until it has probed the store. The probe runs at the
    first conditional write, or when :meth:`probe` is called (which returns the
    settled capabilities); it is not run by reading :attr:`capabilities`, so a
    reader with read-only credentials never writes. ``list_after``,
    ``batched_reads`` and ``concurrent_puts`` are plain S3 requests, known from
    the start. The class attribute holds what a store that honours the headers
    settles to.
    """

    kind = "s3"
    capabilities = Capabilities(
        conditional_create=True,
        compare_and_swap=True,
        conditional_delete=True,
        list_after=True,
        batched_reads=True,
        concurrent_puts=True,
        cheap_writes=False,
    )
    contention_backoff = 0.005
    # s3fs otherwise sends a HEAD before every GET to decide on ranged reads;
    # our objects are small, so one GET each is all a read needs.
    _cat_kwargs = MappingProxyType({"max_concurrency": 1})

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, **kwargs: Any) -> None:
        super().__init__(fs, root, **kwargs)
        self.bucket, _, self.prefix = self.root.lstrip("/").partition("/")
        self.capabilities = attrs.evolve(
            type(self).capabilities, conditional_create=None, compare_and_swap=None, conditional_delete=None
        )

    def _split(self, path: str) -> tuple[str, str]:
        bucket, _, key = path.lstrip("/").partition("/")
        return bucket, key

    def _translate(self, exc: BaseException) -> None:
        """Name the bucket and say what to do for a missing bucket, a refusal, or no credentials."""
        where = f"s3://{self.root.lstrip('/')}"
        code = _error_code(exc)
        if code == "NoSuchBucket":
            raise BucketNotFound(
                f"the bucket {self.bucket!r} of the store {where} does not exist; check the bucket name "
                "(and the account, region and endpoint_url), or create the bucket",
                bucket=self.bucket,
                prefix=self.prefix,
            ) from exc
        if code in ("AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            raise StoreAccessDenied(
                f"access to {where} was refused ({code}); the credentials in use may not read and write "
                f"bucket {self.bucket!r} under prefix {self.prefix!r}: grant s3:GetObject, s3:PutObject, "
                "s3:DeleteObject and s3:ListBucket there, or use other credentials",
                bucket=self.bucket,
                prefix=self.prefix,
            ) from exc
        if _type_in_chain(exc, "NoCredentialsError") or _type_in_chain(exc, "PartialCredentialsError"):
            raise CredentialsMissing(
                f"no credentials found for the store {where}; looked at {_CREDENTIAL_SOURCES}. Set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or pass storage_options="
                "{'key': ..., 'secret': ...} (or {'anon': True} for a public bucket)",
                bucket=self.bucket,
                prefix=self.prefix,
            ) from exc

    def _s3(self, method: str, **kwargs: Any) -> Any:
        """One S3 API call through s3fs (its errors are translated to builtins with the cause kept)."""
        return self.fs.call_s3(method, **kwargs)

    # -- reads ---------------------------------------------------------------

    def read_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """Read several keys concurrently (one GET each, in one batch)."""
        keys = list(keys)
        if len(keys) <= 1:
            return {k: self.read(k) for k in keys}
        paths = {self.path(k): k for k in keys}
        found = self._call("batch read", lambda: self.fs.cat(list(paths), on_error="return", **self._cat_kwargs))
        out: dict[str, bytes | None] = {}
        for path, key in paths.items():
            value = found.get(path)
            if value is None or (isinstance(value, FileNotFoundError) and _error_code(value) != "NoSuchBucket"):
                out[key] = None
            elif isinstance(value, BaseException):
                out[key] = self.read(key)  # one retried read turns a transient failure into data or an error
            else:
                out[key] = value
        return out

    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove each of ``keys`` that exists: one DeleteObjects request per 1,000 keys."""
        names = [self._split(self.path(k))[1] for k in keys]
        for i in range(0, len(names), 1000):
            objects = [{"Key": n} for n in names[i : i + 1000]]
            reply = self._call(
                f"deleting {len(objects)} keys under s3://{self.bucket}/{self.prefix}",
                lambda o=objects: self._s3("delete_objects", Bucket=self.bucket, Delete={"Objects": o, "Quiet": True}),  # type: ignore[misc]  # mypy cannot infer a defaulted lambda argument
            )
            errors = reply.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(
                    f"deleting {len(errors)} of {len(objects)} keys under s3://{self.bucket}/{self.prefix} failed "
                    f"(first: {first.get('Key')}: {first.get('Code')} {first.get('Message')}); run the command again"
                )

    def _list(self, prefix: str, **extra: Any) -> Iterator[dict[str, Any]]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, **extra}
            if token:
                kwargs["ContinuationToken"] = token
            reply: dict[str, Any] = self._call(
                f"listing s3://{self.bucket}/{prefix}",
                lambda kw=kwargs: self._s3("list_objects_v2", **kw),  # type: ignore[misc]  # mypy cannot infer a defaulted lambda argument
            )
            yield reply
            token = reply.get("NextContinuationToken")
            if not token:
                return

    def list_names(self, key: str) -> list[str]:
        """Names directly under folder ``key`` (LIST with a delimiter; a missing bucket is an error)."""
        path = self.path(key) if key else self.root
        _, prefix = self._split(path)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        names: set[str] = set()
        for reply in self._list(prefix, Delimiter="/"):
            names.update(c["Prefix"][len(prefix) :].strip("/") for c in reply.get("CommonPrefixes", ()))
            names.update(c["Key"][len(prefix) :] for c in reply.get("Contents", ()))
        return sorted(n for n in names if n)

    def list_after(self, folder: str, start_after: str, limit: int | None = None) -> list[str]:
        """Names in ``folder`` sorting after ``start_after``: LIST with StartAfter (and MaxKeys for a ``limit``)."""
        return [name for name, _ in self._listed_after(folder, start_after, limit)]

    def sizes_after(self, folder: str, start_after: str) -> list[tuple[str, int]]:
        """Names in ``folder`` sorting after ``start_after`` with their sizes: the same LISTs as :meth:`list_after`."""
        return self._listed_after(folder, start_after, None)

    def _listed_after(self, folder: str, start_after: str, limit: int | None) -> list[tuple[str, int]]:
        _, prefix = self._split(self.path(folder))
        prefix = prefix.rstrip("/") + "/"
        found: list[tuple[str, int]] = []
        if limit is not None and limit <= 0:
            return found
        extra: dict[str, Any] = {"StartAfter": prefix + start_after}
        if limit is not None:
            extra["MaxKeys"] = min(limit, _S3_PAGE)
        for reply in self._list(prefix, **extra):
            found.extend((c["Key"][len(prefix) :], int(c.get("Size", 0))) for c in reply.get("Contents", ()))
            if limit is not None and len(found) >= limit:
                return found[:limit]  # the pages after this one are not requested
        return found

    # -- writes ----------------------------------------------------------------

    def _conditional(self, method: str, key: str, verb: str, *, gone_fails: bool, **kwargs: Any) -> Any:
        """One S3 ``method`` on ``key`` with a condition in ``kwargs``: its reply, or ``_PRECONDITION``.

        ``_PRECONDITION`` when the condition failed (412) or, with
        ``gone_fails``, when the key is gone; a missing bucket always raises.
        """
        path = self.path(key)
        bucket, name = self._split(path)

        def call() -> Any:
            try:
                return self._s3(method, Bucket=bucket, Key=name, **kwargs)
            except FileExistsError:
                return _PRECONDITION  # s3fs's translation of a failed If-None-Match
            except FileNotFoundError as e:
                if not gone_fails or _error_code(e) == "NoSuchBucket":
                    raise
                return _PRECONDITION
            except OSError as e:
                if _error_code(e) == "PreconditionFailed":
                    return _PRECONDITION
                raise

        return self._call(f"{verb} {path}" + (" (If-Match)" if "IfMatch" in kwargs else ""), call)

    def _conditional_put(self, key: str, data: bytes, verb: str, *, gone_fails: bool, **condition: str) -> str | None:
        """A PUT of ``data`` under ``condition``; the new ETag, or None when the condition failed.

        Our bytes carry a unique nonce, so finding them at ``key`` means one of
        our attempts landed with its reply lost: a 412 on retry, or a last
        attempt that failed after landing, then counts as success.
        """
        try:
            reply = self._conditional("put_object", key, verb, gone_fails=gone_fails, Body=data, **condition)
        except StorageError:
            got = self._read_versioned_quietly(key)
            if got is not None and got.data == data:
                return got.version
            raise
        if reply is _PRECONDITION:
            got = self.read_versioned(key)
            return got.version if got is not None and got.data == data else None
        return str(reply.get("ETag"))

    def _create(self, key: str, data: bytes) -> str | None:
        return self._conditional_put(key, data, "creating", gone_fails=False, IfNoneMatch="*")

    def put_many(self, items: Mapping[str, bytes], *, create: bool) -> dict[str, PutResult]:
        """Many PUTs at once (``If-None-Match: *`` with ``create``); failed ones are retried one by one."""
        if len(items) <= 1:
            return super().put_many(items, create=create)
        if create:
            self._probe()
        keys = list(items)
        kwargs: dict[str, Any] = {"mode": "create"} if create else {}
        fs: Any = self.fs

        async def put_all() -> list[Any]:
            gate = asyncio.Semaphore(_PUT_CONCURRENCY)

            async def one(key: str) -> Any:
                async with gate:
                    return await fs._pipe_file(self.path(key), items[key], **kwargs)  # noqa: SLF001  (fsspec's async API)

            return list(await asyncio.gather(*(one(k) for k in keys), return_exceptions=True))

        from fsspec.asyn import sync

        replies = sync(fs.loop, put_all)
        out: dict[str, PutResult] = {}
        for key, reply in zip(keys, replies, strict=True):
            if create and isinstance(reply, FileExistsError):
                out[key] = PutResult(created=self.read(key) == items[key])
            elif isinstance(reply, BaseException):
                # One retried write turns a transient failure into success or a translated error.
                out[key] = self._put_one(key, items[key], create=create)
            else:
                etag = reply.get("ETag") if isinstance(reply, dict) else None
                out[key] = PutResult(etag=etag if isinstance(etag, str) else None)
        return out

    # -- compare-and-swap --------------------------------------------------------

    def read_versioned(self, key: str) -> Versioned | None:
        """One GET returning the body and its ETag together (so they always belong to each other)."""
        path = self.path(key)
        bucket, name = self._split(path)
        fs: Any = self.fs

        async def get() -> tuple[bytes, str]:
            reply = await fs._call_s3("get_object", Bucket=bucket, Key=name)  # noqa: SLF001  (s3fs's async API)
            async with reply["Body"] as stream:
                body = await stream.read()
            return bytes(body), str(reply["ETag"])

        from fsspec.asyn import sync

        try:
            body, etag = self._call(f"reading {path}", lambda: sync(fs.loop, get))
        except FileNotFoundError:
            return None
        return Versioned(body, etag)

    def _read_versioned_quietly(self, key: str) -> Versioned | None:
        try:
            return self.read_versioned(key)
        except Exception:  # noqa: BLE001  (a backend error here means the version is unknown; the caller reads again)
            return None

    def create_versioned(self, key: str, data: bytes) -> str | None:
        """``If-None-Match: *`` PUT; the new ETag, or None when the key existed."""
        _refuse_empty(data)
        self._probe()
        return self._create(key, data)

    def swap(self, key: str, data: bytes, version: str) -> str | None:
        """One PUT with ``If-Match`` on ``version``; the new ETag, or None (nothing written)."""
        _refuse_empty(data)
        self._probe()
        if not self.capabilities.compare_and_swap:  # the probe found If-Match rejected: read, then write
            return self._swap_by_reading(key, data, version)
        return self._swap(key, data, version)

    def _swap_by_reading(self, key: str, data: bytes, version: str) -> str | None:
        """The documented fallback of a store without ``If-Match``: check the ETag, then PUT (a narrow race)."""
        with self._check_guard(key, "compare-and-swap") as possible:
            if not possible or not self._at_version(key, version):
                return None
            self.replace(key, data)
        got = self.read_versioned(key)
        return got.version if got is not None and got.data == data else None

    def _swap(self, key: str, data: bytes, version: str) -> str | None:
        # The key being gone fails a swap, like a moved version.
        return self._conditional_put(key, data, "replacing", gone_fails=True, IfMatch=version)

    def delete_if(self, key: str, version: str) -> bool:
        """DELETE with ``If-Match``; False when the version moved on or the key is gone."""
        self._probe()
        if not self.capabilities.conditional_delete:  # the probe found If-Match rejected: read, then delete
            return super().delete_if(key, version)
        return self._delete_if(key, version)

    def _delete_if(self, key: str, version: str) -> bool:
        reply = self._conditional("delete_object", key, "deleting", gone_fails=True, IfMatch=version)
        return reply is not _PRECONDITION

    # -- probe -----------------------------------------------------------------------

    def _run_probe(self) -> None:
        """Create twice (the second must fail); swap and delete on a stale ETag (both must fail).

        A store that rejects the conditional headers outright has no such
        capability (leases fall back, with a warning); one that accepts them
        and ignores them is refused, because it would fail silently later.
        The capabilities are set once, when the probe has settled all three.
        A probe that found all three is recorded under the store root, with
        the endpoint it went through, so the next process that writes there
        through that endpoint reads the record (one GET) instead of probing
        again (six requests: most of what a process that appends one event
        and exits pays). Delete ``.faber_runlog/probed.json`` to probe again.
        """
        if self._probed_before():
            return
        key = f"{_PROBE_DIR}/probe-{uuid.uuid4().hex}"
        first = self._create(key, b"probe-1")
        try:
            created = first is not None and self._create(key, b"probe-2") is None
            if not created:
                self._pretends("exclusive create (If-None-Match)", "overwrite each other's events")
            settled = self._probe_if_match(key, first) if first is not None else (False, False)
        finally:
            try:
                self._s3("delete_object", Bucket=self.bucket, Key=self._split(self.path(key))[1])
            except Exception:  # noqa: BLE001  (cleanup of a probe: logged, the answer stands)
                log.debug("could not remove probe %s", key)
        self.capabilities = attrs.evolve(
            self.capabilities, conditional_create=created, compare_and_swap=settled[0], conditional_delete=settled[1]
        )
        if created and all(settled):
            record = {"format": 1, "endpoint": self._endpoint(), **dict.fromkeys(_PROBED, True)}
            try:
                self._create(_PROBE_RECORD, _codec.dumps(record))
            except StorageError as e:  # a record saves requests later; without it the next process probes
                log.debug("could not record the probe of %s: %s", self.url, e)

    def _endpoint(self) -> str:
        """The endpoint requests go through (a probe's answer holds for it alone: a gateway may differ)."""
        fs = self.fs
        return str(getattr(fs, "endpoint_url", None) or fs.client_kwargs.get("endpoint_url") or "aws")

    def _probed_before(self) -> bool:
        """Whether an earlier probe of this store through the same endpoint found every conditional write."""
        try:
            body = self.read(_PROBE_RECORD)
            record = _codec.loads(body) if body is not None else None
        except (StorageError, ValueError):
            return False
        if not isinstance(record, dict) or record.get("format") != 1 or record.get("endpoint") != self._endpoint():
            return False
        if not all(record.get(name) is True for name in _PROBED):
            return False
        self.capabilities = attrs.evolve(self.capabilities, **dict.fromkeys(_PROBED, True))
        return True

    def _probe_if_match(self, key: str, first: str) -> tuple[bool, bool]:
        """Whether ``If-Match`` holds on PUT and on DELETE of the probe key (created at version ``first``)."""
        try:
            second = self._swap(key, b"probe-3", first)
            if second is None:
                raise StorageError(f"a compare-and-swap on a fresh probe key failed on {self.url}")
            swap_holds = delete_holds = True
            if self._swap(key, b"probe-4", first) is not None:
                self._pretends("If-Match on PUT", "both renew one lease")
                swap_holds = False
            if self._delete_if(key, first):
                self._pretends("If-Match on DELETE", "delete a lease taken over by another writer")
                delete_holds = False
        except StorageError as e:
            log.warning("the store at %s rejects conditional replace/delete (%s); leases are weaker", self.url, e)
            return False, False
        return swap_holds, delete_holds


def _storage_class(fs: fsspec.AbstractFileSystem) -> type[Storage]:
    """The :class:`Storage` subclass for a filesystem."""
    if isinstance(fs, LocalFileSystem):
        return LocalStorage
    protocols = _protocols(fs)
    if isinstance(fs, MemoryFileSystem) and "memory" in protocols:
        return MemoryStorage
    if protocols[0] in _S3_PROTOCOLS and hasattr(fs, "call_s3"):
        return S3Storage
    return FsspecStorage
