"""The writer lease of a run: who is executing it, and until when.

A run being executed has ``lease.json`` next to its metadata. Its holder
refreshes ``heartbeat_at``/``expires_at`` (a heartbeat); a lease whose
``expires_at`` has passed belongs to a process that is presumed dead. An
absent lease means no live writer. The lease also lists the claim objects
(concurrency key, active-run slot) the run holds, so whoever ends the run
(its writer, or a sweeper) knows what to release.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import socket
import threading
from typing import Any, Final

import attrs

from faber_runlog import _codec
from faber_runlog._converter import converter
from faber_runlog._format import RunLayout
from faber_runlog.ids import RunId
from faber_runlog.storage import Storage

__all__ = [
    "DEFAULT_LEASE_TTL",
    "LEASE_NAME",
    "Heartbeat",
    "Lease",
    "acquire_lease",
    "default_owner",
    "lease_key",
    "read_lease",
    "release_lease",
    "renew_lease",
]

log = logging.getLogger("faber_runlog.lease")

LEASE_NAME = "lease.json"
DEFAULT_LEASE_TTL: Final = 60.0
"""Seconds a lease stays live without a heartbeat."""


@attrs.frozen(slots=True)
class Lease:
    """A writer's claim on a run, valid until ``expires_at`` (ISO 8601, UTC)."""

    owner: str
    acquired_at: str
    heartbeat_at: str
    expires_at: str
    host: str | None = None
    pid: int | None = None
    claims: tuple[str, ...] = ()

    def is_live(self, now: _dt.datetime | None = None) -> bool:
        """True while the lease has not expired."""
        now = now or _dt.datetime.now(_dt.UTC)
        return _dt.datetime.fromisoformat(self.expires_at) > now

    def expired_for(self, now: _dt.datetime | None = None) -> float:
        """Seconds since the lease expired (negative while it is live)."""
        now = now or _dt.datetime.now(_dt.UTC)
        return (now - _dt.datetime.fromisoformat(self.expires_at)).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the ``lease.json`` body)."""
        return converter.unstructure(self)  # type: ignore[no-any-return]


def lease_key(run_id: RunId) -> str:
    """Key of a run's lease object."""
    return f"{RunLayout(run_id).dir}/{LEASE_NAME}"


def read_lease(storage: Storage, run_id: RunId) -> Lease | None:
    """The run's lease, or None if there is none (or it is unreadable)."""
    body = storage.read(lease_key(run_id))
    if body is None:
        return None
    return parse_lease(body)


def parse_lease(body: bytes) -> Lease | None:
    """A lease from its stored bytes, or None when they are unreadable."""
    try:
        return converter.structure(_codec.loads(body), Lease)
    except Exception:
        return None


def default_owner() -> str:
    """This process as a lease owner: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _iso(t: _dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_ttl(ttl: float) -> None:
    if not ttl > 0:
        raise ValueError(f"a lease ttl must be a positive number of seconds, got {ttl!r}")


def acquire_lease(
    storage: Storage,
    run_id: RunId,
    *,
    ttl: float = DEFAULT_LEASE_TTL,
    owner: str | None = None,
    claims: tuple[str, ...] | None = None,
) -> Lease:
    """Write a fresh lease for ``owner`` valid for ``ttl`` seconds; returns it.

    ``claims`` default to those of the lease already there, so a new writer
    taking over a run keeps its concurrency key and slot.
    """
    _check_ttl(ttl)
    if claims is None:
        old = read_lease(storage, run_id)
        claims = old.claims if old is not None else ()
    now = _dt.datetime.now(_dt.UTC)
    lease = Lease(
        owner=owner or default_owner(),
        acquired_at=_iso(now),
        heartbeat_at=_iso(now),
        expires_at=_iso(now + _dt.timedelta(seconds=ttl)),
        host=socket.gethostname(),
        pid=os.getpid(),
        claims=tuple(claims),
    )
    storage.replace(lease_key(run_id), _codec.dumps(lease.to_dict()))
    return lease


def renew_lease(storage: Storage, run_id: RunId, *, owner: str, ttl: float = DEFAULT_LEASE_TTL) -> Lease | None:
    """Extend ``owner``'s lease by ``ttl`` seconds (a heartbeat).

    Returns None, writing nothing, when the lease is gone or belongs to
    someone else: the run ended or was swept, and this writer lost it.
    It reads then writes (stores offer no compare-and-swap), so a take-over
    landing between the two is overwritten once and seen at the next beat.
    """
    _check_ttl(ttl)
    old = read_lease(storage, run_id)
    if old is None or old.owner != owner:
        return None
    now = _dt.datetime.now(_dt.UTC)
    lease = attrs.evolve(old, heartbeat_at=_iso(now), expires_at=_iso(now + _dt.timedelta(seconds=ttl)))
    storage.replace(lease_key(run_id), _codec.dumps(lease.to_dict()))
    return lease


def release_lease(storage: Storage, run_id: RunId, *, owner: str | None = None) -> None:
    """Delete the run's lease (only ``owner``'s, when given)."""
    if owner is not None:
        old = read_lease(storage, run_id)
        if old is not None and old.owner != owner:
            return
    storage.delete(lease_key(run_id))


_registry_lock = threading.Lock()
_running: dict[tuple[str, str], Heartbeat] = {}


class Heartbeat:
    """A daemon thread that renews a run's lease every ``interval`` seconds until stopped.

    Use as a context manager or call :meth:`start` / :meth:`stop`. When the
    lease is lost (the run ended, or a sweeper failed it) the thread stops on
    its own and :attr:`lost` turns True.
    """

    def __init__(
        self,
        storage: Storage,
        run_id: RunId,
        *,
        ttl: float = DEFAULT_LEASE_TTL,
        interval: float | None = None,
        owner: str | None = None,
    ) -> None:
        _check_ttl(ttl)
        self.interval = interval if interval is not None else ttl / 3
        if not 0 < self.interval < ttl:
            raise ValueError(
                f"heartbeat interval must be positive and shorter than the ttl ({ttl}s) "
                f"for run {run_id}, got {self.interval!r}"
            )
        self._storage = storage
        self._rid = run_id
        self.ttl = ttl
        self.owner = owner or default_owner()
        self.lost = False
        self.beats = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Heartbeat({str(self._rid)!r}, owner={self.owner!r}, every {self.interval}s)"

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the thread is renewing the lease."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Heartbeat:
        """Write the lease now, then keep renewing it in the background."""
        if self.running:
            return self
        acquire_lease(self._storage, self._rid, ttl=self.ttl, owner=self.owner)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"faber-heartbeat-{self._rid.uuid[:8]}", daemon=True)
        with _registry_lock:
            _running[(self._storage.url, str(self._rid))] = self
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if renew_lease(self._storage, self._rid, owner=self.owner, ttl=self.ttl) is None:
                    self.lost = True
                    log.warning("lease of run %s was lost by %s; heartbeat stops", self._rid, self.owner)
                    return
                self.beats += 1
            except Exception as e:  # a missed beat only brings expiry closer
                log.warning("heartbeat of run %s failed: %s", self._rid, e)

    def stop(self, *, release: bool = False) -> None:
        """Stop renewing (waits for the thread); ``release=True`` also deletes the lease."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with _registry_lock:
            if _running.get((self._storage.url, str(self._rid))) is self:
                del _running[(self._storage.url, str(self._rid))]
        if release:
            release_lease(self._storage, self._rid, owner=self.owner)


def stop_heartbeats(storage: Storage, run_id: RunId) -> None:
    """Stop this process's heartbeat of the run, if one runs (the run has ended)."""
    with _registry_lock:
        hb = _running.get((storage.url, str(run_id)))
    if hb is not None:
        hb.stop()
