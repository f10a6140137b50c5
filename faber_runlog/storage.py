"""The bottom layer: keys under one store root on one fsspec filesystem.

Everything above works with keys relative to the root (``org/project/uuid/...``).
This module turns them into backend paths, refuses any key that could leave
the root, and supplies the two write primitives the design rests on:

* ``create`` - exclusive create (put-if-absent). Local: temp file, fsync,
  ``os.link`` to the final name, fsync the folder. S3: a PUT with
  ``If-None-Match: *`` (s3fs ``pipe_file(mode="create")``). Memory: the
  filesystem's own create, under a lock.
* ``replace`` - atomic overwrite for caches and reports.

Backend errors are translated here, at the boundary.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterable
from typing import Any, Final, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from faber_runlog._format import seq_name
from faber_runlog.errors import ConcurrencyUnsupported, StorageError, UnsafePath

__all__ = ["Storage", "open_filesystem"]

log = logging.getLogger("faber_runlog.storage")

T = TypeVar("T")

_MEMORY_LOCK: Final = threading.Lock()
_PROBE_DIR: Final = ".faber_runlog"
_READ_CHUNK: Final = 1 << 16
_RETRIES: Final = 6
_RETRY_SECONDS: Final = 60.0
_S3_PROTOCOLS: Final = ("s3", "s3a")
_TRANSIENT_CODES: Final = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
                                     "ConditionalRequestConflict", "OperationAborted", "Throttling",
                                     "ThrottlingException", "TooManyRequests", "503", "500"})  # fmt: skip
_TRANSIENT_STATUS: Final = frozenset({500, 502, 503, 504})
_TRANSIENT_ERRNOS: Final = frozenset({errno.EBUSY, errno.EREMOTEIO, errno.ETIMEDOUT, errno.ECONNRESET,
                                      errno.ECONNABORTED, errno.EAGAIN})  # fmt: skip
# botocore/aiohttp connection and parse failures (no builtin base class to test for).
_TRANSIENT_TYPES: Final = frozenset({"HTTPClientError", "ConnectionClosedError", "EndpointConnectionError",
                                     "ResponseParserError", "IncompleteReadError", "ClientPayloadError",
                                     "ServerDisconnectedError", "ClientConnectionError", "IncompleteRead"})  # fmt: skip


def open_filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Resolve an fsspec URL (or a local path) to ``(filesystem, root path)``.

    For S3, botocore's and s3fs's own retries are turned off unless the caller
    configures them: nested inside ours they multiply (5 x 5 x 7 attempts), so
    a dead store took minutes to report. Our loop alone bounds the wait.
    """
    options = dict(storage_options or {})
    ours = url.split("://", 1)[0] in _S3_PROTOCOLS and "retries" not in (options.get("config_kwargs") or {})
    if ours:
        options["config_kwargs"] = {**(options.get("config_kwargs") or {}), "retries": {"total_max_attempts": 1}}
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


class Storage:
    """Keys under one root of one fsspec filesystem, with exclusive create."""

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
        if isinstance(fs, LocalFileSystem):
            self.kind = "local"
            root = os.path.abspath(os.path.expanduser(root))
        elif isinstance(fs, MemoryFileSystem) and "memory" in _protocols(fs):
            self.kind = "memory"
            root = "/" + root.strip("/")
        else:
            protocol = _protocols(fs)[0]
            self.kind = "s3" if protocol in ("s3", "s3a") else protocol
            root = root.rstrip("/")
        self.root = root.rstrip("/") or "/"
        self._probed = self.kind in ("local", "memory")
        # s3fs otherwise sends a HEAD before every GET to decide on ranged reads;
        # our objects are small, so one GET each is all a read needs.
        self._cat_kwargs: dict[str, Any] = {"max_concurrency": 1} if self.kind == "s3" else {}
        self._probe_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Storage({self.kind}:{self.root!r})"

    @property
    def url(self) -> str:
        """A URL naming the root, for messages and reports."""
        if self.kind == "local":
            return self.root
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
        delay = 0.05
        deadline = time.monotonic() + self.retry_seconds
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except (FileExistsError, FileNotFoundError):
                raise
            except Exception as e:
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

    # -- reads -------------------------------------------------------------

    def read(self, key: str) -> bytes | None:
        """The bytes at ``key``, or None when it does not exist."""
        path = self.path(key)
        if self.kind == "local":
            return _read_local(path)
        try:
            body: bytes = self._call(f"reading {path}", lambda: self.fs.cat_file(path, **self._cat_kwargs))
            return body
        except FileNotFoundError:
            return None

    def read_numbered(
        self, folder: str, first: int, last: int | None, decode: Callable[[int, bytes], T]
    ) -> Generator[T, None, int]:
        """``decode(n, body)`` of the event files ``folder/<seq_name(n)>`` for n = first, first + 1, ...

        Stops after ``last`` or at the first file that does not exist, and
        returns the first number it did not read. The folder key is checked
        once; the names are built from integers, so they cannot leave it. This
        is the rebuild's hot path on a local disk, hence the plain os calls
        and the decoding in this loop rather than in another generator.
        """
        base = self.path(folder)
        seq = first
        if self.kind == "local":
            while last is None or seq <= last:
                data = _read_local(f"{base}/{seq_name(seq)}")
                if data is None:
                    break
                yield decode(seq, data)
                seq += 1
            return seq
        while last is None or seq <= last:
            body = self.read(f"{folder}/{seq_name(seq)}")
            if body is None:
                break
            yield decode(seq, body)
            seq += 1
        return seq

    def read_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """Read several keys; remote stores fetch them concurrently."""
        keys = list(keys)
        if self.kind in ("local", "memory") or len(keys) <= 1:
            return {k: self.read(k) for k in keys}
        paths = {self.path(k): k for k in keys}
        found = self._call("batch read", lambda: self.fs.cat(list(paths), on_error="return", **self._cat_kwargs))
        out: dict[str, bytes | None] = {}
        for path, key in paths.items():
            value = found.get(path)
            if isinstance(value, FileNotFoundError) or value is None:
                out[key] = None
            elif isinstance(value, BaseException):
                out[key] = self.read(key)  # one retried read turns a transient failure into data or an error
            else:
                out[key] = value
        return out

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists (bypassing listing caches)."""
        path = self.path(key)
        if self.kind == "local":
            return os.path.exists(path)
        if self.kind == "memory":
            return bool(self.fs.exists(path))
        try:
            self._call(f"checking {path}", lambda: self.fs.info(path, refresh=True))
        except FileNotFoundError:
            return False
        return True

    def list_names(self, key: str) -> list[str]:
        """Names directly under folder ``key`` (sorted), empty if it does not exist."""
        path = self.path(key) if key else self.root
        if self.kind == "local":
            try:
                return sorted(os.listdir(path))
            except (FileNotFoundError, NotADirectoryError):
                return []
        try:
            if self.kind == "s3":
                self.fs.invalidate_cache(path)
            entries = self._call(f"listing {path}", lambda: self.fs.ls(path, detail=False))
        except FileNotFoundError:
            return []
        prefix = path.rstrip("/") + "/"
        names = [e[len(prefix):] if e.startswith(prefix) else e.rsplit("/", 1)[-1] for e in entries]
        return sorted(n.strip("/") for n in names if n.strip("/"))

    def list_after(self, folder: str, start_after: str) -> list[str]:
        """Names in ``folder`` sorting after ``start_after`` (S3: LIST with StartAfter)."""
        if self.kind != "s3":
            return [n for n in self.list_names(folder) if n > start_after]
        bucket, _, prefix = self.path(folder).partition("/")
        prefix = prefix.rstrip("/") + "/"
        names: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "StartAfter": prefix + start_after}
            if token:
                kwargs["ContinuationToken"] = token
            reply = self._call(f"listing {folder}", lambda kw=kwargs: self.fs.call_s3("list_objects_v2", **kw))  # type: ignore[misc]
            names.extend(c["Key"][len(prefix):] for c in reply.get("Contents", ()))
            token = reply.get("NextContinuationToken")
            if not token:
                return names

    # -- writes ------------------------------------------------------------

    def create(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if absent. True if this call created it, False if it existed."""
        if not data:
            raise ValueError("refusing to create an empty object: some stores overwrite on empty bodies")
        path = self.path(key)
        if self.kind == "local":
            return self._create_local(path, data)
        if self.kind == "memory":
            with _MEMORY_LOCK:
                if self.fs.exists(path):
                    return False
                self.fs.pipe_file(path, data)
                return True
        self._probe()
        try:
            self._call(f"creating {path}", lambda: self.fs.pipe_file(path, data, mode="create"))
            return True
        except FileExistsError:
            # A PUT that landed but whose reply was lost comes back as 412 on
            # retry; our bytes carry a unique nonce, so equal bytes mean we won.
            return self.read(key) == data
        except StorageError:
            # The last attempt may have landed before its reply was lost: one
            # plain read tells, so a caller is not told "failed" about a success.
            try:
                landed = bool(self.fs.cat_file(path, **self._cat_kwargs) == data)
            except Exception:
                landed = False
            if landed:
                return True
            raise

    def _create_local(self, path: str, data: bytes) -> bool:
        folder = os.path.dirname(path)
        tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                os.write(fd, data)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as e:
                raise StorageError(f"creating {path} failed: {e}") from e
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if self.fsync:
            self._fsync_dir(folder)
        return True

    @staticmethod
    def _fsync_dir(folder: str) -> None:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        except OSError as e:  # some filesystems refuse fsync on folders
            if e.errno not in (errno.EINVAL, errno.EBADF):
                raise
        finally:
            os.close(dfd)

    def replace(self, key: str, data: bytes) -> None:
        """Write ``key`` atomically, replacing what was there (readers see old or new)."""
        path = self.path(key)
        if self.kind == "local":
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
            with open(tmp, "wb") as f:
                f.write(data)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
            if self.fsync:
                self._fsync_dir(folder)
            return
        self._call(f"writing {path}", lambda: self.fs.pipe_file(path, data))

    def delete(self, key: str) -> None:
        """Remove ``key`` if it exists."""
        path = self.path(key)
        if self.kind == "local":
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        try:
            self._call(f"deleting {path}", lambda: self.fs.rm_file(path))
        except FileNotFoundError:
            pass

    def makedirs(self, key: str) -> None:
        """Make folder ``key`` where folders are real (local); a no-op on object stores."""
        if self.kind == "local":
            os.makedirs(self.path(key), exist_ok=True)

    # -- capability probe --------------------------------------------------

    def _probe(self) -> None:
        """Check once that the backend refuses a second exclusive create."""
        if self._probed:
            return
        with self._probe_lock:
            if self._probed:
                return
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
                except Exception:
                    log.debug("could not remove probe %s", path)
            if second_created and not self.allow_unsafe_writers:
                raise ConcurrencyUnsupported(
                    f"the store at {self.url} ignores exclusive create (If-None-Match), so two writers "
                    "could overwrite each other's events; use a store that supports conditional writes, "
                    "or pass allow_unsafe_writers=True if only one process ever writes to it"
                )
            self._probed = True


def _read_local(path: str) -> bytes | None:
    """A local file's bytes with plain os calls (None when absent)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise StorageError(f"reading {path} failed: {e}; check the file's permissions") from e
    try:
        data = os.read(fd, _READ_CHUNK)
        if len(data) == _READ_CHUNK:
            parts = [data]
            while chunk := os.read(fd, _READ_CHUNK):
                parts.append(chunk)
            data = b"".join(parts)
        return data
    except OSError as e:
        raise StorageError(f"reading {path} failed: {e}") from e
    finally:
        os.close(fd)
