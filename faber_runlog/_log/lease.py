"""The writer lease of a run: who is executing it, until when, and under which epoch.

A run being executed has ``lease.json`` next to its metadata. Its holder
refreshes ``heartbeat_at``/``expires_at`` (a heartbeat); a lease whose
``expires_at`` has passed belongs to a process that is presumed dead. The
lease also lists the claim objects (concurrency key, active-run slot) the run
holds, so whoever ends the run (its writer, or a sweeper) knows what to release.

Every change to a lease is a compare-and-swap on the version the writer last
saw (S3 ``If-Match`` on the ETag; a lock-backed check-and-replace locally), so
a renewal never overwrites a take-over or a sweep, and a swept lease cannot
come back to life. A lease is never deleted: releasing or sweeping it leaves a
tombstone that keeps its ``epoch``, and every new holder takes the next epoch.
Events written by a holder carry its epoch (``lease_epoch``), and a holder
whose lease was taken is refused (:class:`LeaseLost`) before its event is
written: see :func:`fence` and docs/concurrency.md.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import socket
import threading
import uuid
from typing import Any, Final

import attrs

from faber_runlog._base import codec as _codec
from faber_runlog._base import validate as _validate
from faber_runlog._base.advice import advise
from faber_runlog._base.converter import converter, to_dict
from faber_runlog._base.ids import RunId
from faber_runlog._base.retry import AGAIN, Again, optimistic
from faber_runlog._format.layout import RunLayout
from faber_runlog._storage.backends import Storage
from faber_runlog.errors import InvalidArgument, LeaseLost, TooMuchContention

__all__ = [
    "DEFAULT_LEASE_TTL",
    "Heartbeat",
    "Lease",
    "acquire_lease",
    "default_owner",
    "fence",
    "fence_out",
    "held_epoch",
    "lease_key",
    "read_lease",
    "read_lease_versioned",
    "release_lease",
    "renew_lease",
    "stop_heartbeats",
    "try_acquire_lease",
]

log = logging.getLogger("faber_runlog._log.lease")

DEFAULT_LEASE_TTL: Final = 60.0
"""Seconds a lease stays live without a heartbeat."""


@attrs.frozen(slots=True)
class Lease:
    """A writer's claim on a run, valid until ``expires_at`` (ISO 8601, UTC).

    ``epoch`` grows by one with every new holder (never for a renewal);
    ``released`` marks a tombstone left by a release or a sweep (``reason``).
    """

    owner: str
    acquired_at: str
    heartbeat_at: str
    expires_at: str
    host: str | None = None
    pid: int | None = None
    claims: tuple[str, ...] = ()
    epoch: int = 0
    released: bool = False
    reason: str | None = None
    nonce: str | None = None

    def is_live(self, now: _dt.datetime | None = None) -> bool:
        """True while the lease has not expired (a released lease never is)."""
        if self.released:
            return False
        now = now or _dt.datetime.now(_dt.UTC)
        return _dt.datetime.fromisoformat(self.expires_at) > now

    def expired_for(self, now: _dt.datetime | None = None) -> float:
        """Seconds since the lease expired (negative while it is live)."""
        now = now or _dt.datetime.now(_dt.UTC)
        return (now - _dt.datetime.fromisoformat(self.expires_at)).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the ``lease.json`` body)."""
        return to_dict(self)


def lease_key(run_id: RunId) -> str:
    """Key of a run's lease object."""
    return RunLayout(run_id).lease


def read_lease_versioned(storage: Storage, run_id: RunId) -> tuple[Lease | None, str | None]:
    """The stored lease (tombstones included) and its version; ``(None, None)`` when there is none.

    An unreadable body comes back as ``(None, version)``: it exists, so it can
    only be replaced by a compare-and-swap on that version.
    """
    got = storage.read_versioned(lease_key(run_id))
    if got is None:
        return None, None
    return parse_lease(got.data), got.version


def read_lease(storage: Storage, run_id: RunId) -> Lease | None:
    """The run's current lease, or None if there is none (released, swept, or unreadable)."""
    body = storage.read(lease_key(run_id))
    if body is None:
        return None
    lease = parse_lease(body)
    return None if lease is None or lease.released else lease


def parse_lease(body: bytes) -> Lease | None:
    """A lease from its stored bytes, or None when they are unreadable."""
    try:
        lease = converter.structure(_codec.loads(body), Lease)
    except _codec.DECODE_ERRORS:
        return None
    # Times that do not parse (``"expires_at": "soon"``) make the lease unreadable, not a crash later.
    if _validate.parse_timestamp(lease.expires_at) is None:
        return None
    return lease


def default_owner() -> str:
    """This process as a lease owner: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


_iso = _codec.iso


def _check_ttl(ttl: float) -> None:
    _validate.seconds(ttl, "a lease ttl", positive=True)


def _body(lease: Lease) -> bytes:
    return _codec.dumps(lease.to_dict())


def _nonce() -> str:
    # Every body is unique, so two writes never share a version token (no ABA).
    return uuid.uuid4().hex[:16]


def _write(storage: Storage, run_id: RunId, lease: Lease, version: str | None) -> str | None:
    """Compare-and-swap the lease from ``version`` (None: only if absent); the new version or None."""
    key = lease_key(run_id)
    if version is None:
        return storage.create_versioned(key, _body(lease))
    return storage.swap(key, _body(lease), version)


# -- what this process holds -----------------------------------------------------------


@attrs.define(slots=True)
class _Held:
    """A lease this process holds: what its next compare-and-swap must name, and until when it is safe."""

    lease: Lease
    version: str
    ttl: float
    safe_until: float  # time.monotonic() before which nobody can have taken the lease
    lost: bool = False

    @property
    def owner(self) -> str:
        return self.lease.owner

    @property
    def epoch(self) -> int:
        return self.lease.epoch


_held_lock = threading.Lock()
_held: dict[tuple[str, str], _Held] = {}


def _safe_until(started: float, ttl: float) -> float:
    # Measured from before the write was sent, less a margin for clock drift between this host and a
    # sweeper's: until then the holder skips the renewal before an append. A cost, not the safety: an
    # event is never acknowledged after a fence, whatever the clocks say (lease rules 8 and 9, checked by the log).
    return started + ttl - min(ttl / 10, 1.0)


def _hold(storage: Storage, run_id: RunId, lease: Lease, version: str, started: float, ttl: float) -> None:
    with _held_lock:
        _held[(storage.url, str(run_id))] = _Held(lease, version, ttl, _safe_until(started, ttl))


def _holding(storage: Storage, run_id: RunId) -> _Held | None:
    with _held_lock:
        return _held.get((storage.url, str(run_id)))


def _drop(storage: Storage, run_id: RunId, *, lost: bool) -> None:
    with _held_lock:
        held = _held.get((storage.url, str(run_id)))
        if held is None:
            return
        if lost:
            held.lost = True
        else:
            del _held[(storage.url, str(run_id))]


def _forget_all_in_child() -> None:
    # A forked child is another writer: it inherits no lease and no heartbeat.
    global _held_lock, _registry_lock
    _held_lock = threading.Lock()
    _registry_lock = threading.Lock()
    _held.clear()
    _running.clear()


# -- acquiring, renewing, releasing --------------------------------------------------------


def acquire_lease(
    storage: Storage,
    run_id: RunId,
    *,
    ttl: float = DEFAULT_LEASE_TTL,
    owner: str | None = None,
    claims: tuple[str, ...] | None = None,
) -> Lease:
    """Take the run's lease for ``owner`` for ``ttl`` seconds (compare-and-swap); returns it.

    A lease already held by ``owner`` is renewed under its epoch; anyone
    else's (live or not) is taken over under the next epoch, which fences its
    holder out. ``claims`` default to those of the lease already there, so a
    new writer taking over a run keeps its concurrency key and slot.
    """
    lease = _acquire(storage, run_id, ttl=ttl, owner=owner, claims=claims, take_live=True)
    assert lease is not None
    return lease


def try_acquire_lease(
    storage: Storage, run_id: RunId, *, ttl: float = DEFAULT_LEASE_TTL, owner: str | None = None
) -> Lease | None:
    """Like :func:`acquire_lease`, but None (nothing written) while another owner's lease is live."""
    return _acquire(storage, run_id, ttl=ttl, owner=owner, claims=None, take_live=False)


def _acquire(
    storage: Storage,
    run_id: RunId,
    *,
    ttl: float,
    owner: str | None,
    claims: tuple[str, ...] | None,
    take_live: bool,
) -> Lease | None:
    _check_ttl(ttl)
    me = owner or default_owner()

    def attempt() -> Lease | Again | None:
        current, version = read_lease_versioned(storage, run_id)
        same = current is not None and not current.released and current.owner == me
        if not take_live and not same and current is not None and current.is_live(storage.clock.now()):
            return None
        epoch = (current.epoch if same else current.epoch + 1) if current is not None else 1
        if claims is None:
            keep = current.claims if current is not None and not current.released else ()
        else:
            keep = tuple(claims)
        now = storage.clock.now()
        lease = _fresh(me, ttl, keep, epoch, now, acquired=current.acquired_at if same and current else None)
        started = storage.clock.monotonic()
        new = _write(storage, run_id, lease, version)
        if new is None:
            return AGAIN
        _hold(storage, run_id, lease, new, started, ttl)
        return lease

    return optimistic(
        attempt,
        what=f"taking the lease of run {run_id} in {storage.url}",
        run_id=str(run_id),
        advice="stop the other writers, then retry",
    )


def _fresh(
    owner: str, ttl: float, claims: tuple[str, ...], epoch: int, now: _dt.datetime, *, acquired: str | None = None
) -> Lease:
    return Lease(
        owner=owner,
        acquired_at=acquired or _iso(now),
        heartbeat_at=_iso(now),
        expires_at=_iso(now + _dt.timedelta(seconds=ttl)),
        host=socket.gethostname(),
        pid=os.getpid(),
        claims=claims,
        epoch=epoch,
        nonce=_nonce(),
    )


def _renewed(lease: Lease, ttl: float, now: _dt.datetime) -> Lease:
    return attrs.evolve(
        lease, heartbeat_at=_iso(now), expires_at=_iso(now + _dt.timedelta(seconds=ttl)), nonce=_nonce()
    )


def renew_lease(storage: Storage, run_id: RunId, *, owner: str, ttl: float = DEFAULT_LEASE_TTL) -> Lease | None:
    """Extend ``owner``'s lease by ``ttl`` seconds (a heartbeat); None when it was lost.

    A holder that knows its lease's version (this process acquired or renewed
    it) renews with one compare-and-swap: one request on S3. None, with
    nothing written, means the lease was released, swept or taken over since:
    this writer lost the run and must stop.
    """
    _check_ttl(ttl)
    held = _holding(storage, run_id)
    trust = [held is not None and held.owner == owner and not held.lost]

    def attempt() -> Lease | Again | None:
        if trust[0] and held is not None:
            current: Lease | None = held.lease
            version: str | None = held.version
        else:
            current, version = read_lease_versioned(storage, run_id)
            if current is None or version is None or current.released or current.owner != owner:
                _drop(storage, run_id, lost=True)
                return None
        assert current is not None
        assert version is not None
        lease = _renewed(current, ttl, storage.clock.now())
        started = storage.clock.monotonic()
        new = storage.swap(lease_key(run_id), _body(lease), version)
        if new is None:
            trust[0] = False  # the version we knew is stale: read what is there and decide again
            return AGAIN
        _hold(storage, run_id, lease, new, started, ttl)
        return lease

    try:
        return optimistic(attempt, what=f"renewing the lease of run {run_id}", run_id=str(run_id))
    except TooMuchContention:  # others kept changing it: this writer cannot count on it any more
        _drop(storage, run_id, lost=True)
        return None


def release_lease(storage: Storage, run_id: RunId, *, owner: str | None = None, epoch: int | None = None) -> bool:
    """Release the run's lease, leaving a tombstone; True if this call did.

    Only ``owner``'s lease when ``owner`` is given, and only a lease of epoch
    ``epoch`` or lower when ``epoch`` is given: a lease taken over since (a
    higher epoch) is never released by the one it fenced out. When this process
    held an older epoch of the lease, it learns here that it lost it (its next
    append raises :class:`LeaseLost`); it forgets the lease only when it is the
    one released.
    """

    def attempt() -> bool | Again:
        current, version = read_lease_versioned(storage, run_id)
        if version is None or current is None or current.released:
            _settle(storage, run_id, current)
            return False
        if (owner is not None and current.owner != owner) or (epoch is not None and current.epoch > epoch):
            _settle(storage, run_id, current)
            return False
        tomb = _tombstone(current, "released", storage.clock.now(), epoch=current.epoch)
        if storage.swap(lease_key(run_id), _body(tomb), version) is None:
            return AGAIN
        held = _holding(storage, run_id)
        if held is not None:
            same = (held.owner, held.epoch) == (current.owner, current.epoch)
            _drop(storage, run_id, lost=not same)
        return True

    try:
        return optimistic(attempt, what=f"releasing the lease of run {run_id}", run_id=str(run_id))
    except TooMuchContention:  # others kept changing it: not released by this call
        return False


def _settle(storage: Storage, run_id: RunId, current: Lease | None) -> None:
    """What this process holds of a lease it did not release: lost once the stored lease is not its own any more."""
    held = _holding(storage, run_id)
    if held is None:
        return
    if current is not None and (current.owner, current.epoch) == (held.owner, held.epoch):
        if current.released:
            _drop(storage, run_id, lost=False)  # released at its own epoch (by itself, or its run's end)
        return
    _drop(storage, run_id, lost=True)


def held_epoch(storage: Storage, run_id: RunId) -> int | None:
    """The epoch of the lease this process holds on the run (None: none, or it was lost)."""
    held = _holding(storage, run_id)
    return None if held is None or held.lost else held.epoch


def _tombstone(
    current: Lease | None, reason: str, now_at: _dt.datetime, *, epoch: int, owner: str | None = None
) -> Lease:
    now = _iso(now_at)
    return Lease(
        owner=owner or (current.owner if current is not None else default_owner()),
        acquired_at=current.acquired_at if current is not None else now,
        heartbeat_at=now,
        expires_at=now,
        host=socket.gethostname(),
        pid=os.getpid(),
        claims=current.claims if current is not None else (),
        epoch=epoch,
        released=True,
        reason=reason,
        nonce=_nonce(),
    )


def fence_out(
    storage: Storage, run_id: RunId, seen: Lease | None, version: str | None, *, reason: str, by: str | None = None
) -> tuple[int, str] | None:
    """Take the lease from the holder seen at ``version`` and leave a tombstone of the next epoch.

    Used by a sweeper before it fails a run: if the holder renewed (or anyone
    changed the lease) since it was read, nothing is written and None comes
    back; otherwise ``(epoch, version)`` of the tombstone: the epoch is the
    sweeper's, the old holder's renewals fail from now on, and its next event
    is refused.
    """
    epoch = (seen.epoch if seen is not None else 0) + 1
    tomb = _tombstone(seen, reason, storage.clock.now(), epoch=epoch, owner=by)
    if version is None:
        new = storage.create_versioned(lease_key(run_id), _body(tomb))
    else:
        new = storage.swap(lease_key(run_id), _body(tomb), version)
    if new is None:
        return None
    _drop(storage, run_id, lost=True)  # if this process held it, it holds it no more
    return epoch, new


def fence(storage: Storage, run_id: RunId) -> int | None:
    """The epoch this process appends under for ``run_id``, or None when it holds no lease on it.

    Costs nothing while the lease is certainly still ours (within its ttl of
    the last successful write); after that one compare-and-swap renews it
    first. Raises :class:`LeaseLost` when the lease was taken over or swept,
    so the caller's event is refused before anything is written.
    """
    held = _holding(storage, run_id)
    if held is None:
        return None
    if not held.lost and storage.clock.monotonic() < held.safe_until:
        return held.epoch
    if held.lost or renew_lease(storage, run_id, owner=held.owner, ttl=held.ttl) is None:
        current = read_lease(storage, run_id)
        by = f" (now held by {current.owner!r} under epoch {current.epoch})" if current is not None else ""
        lost = LeaseLost(
            f"the lease of run {run_id} held by {held.owner!r} under epoch {held.epoch} was taken over or "
            f"swept{by}; this writer must stop: nothing was written. To continue the run",
            run_id=str(run_id),
            epoch=held.epoch,
        )
        raise advise(lost, "resume")
    return held.epoch


# -- the heartbeat thread -----------------------------------------------------------------


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
        self.interval = _validate.seconds(interval, "heartbeat interval") if interval is not None else ttl / 3
        if not 0 < self.interval < ttl:
            raise InvalidArgument(
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
        """Take (or keep) the lease now, then keep renewing it in the background."""
        if self.running:
            return self
        acquire_lease(self._storage, self._rid, ttl=self.ttl, owner=self.owner)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"faber-heartbeat-{self._rid.uuid[:8]}", daemon=True)
        with _registry_lock:
            _running[(self._storage.url, str(self._rid))] = self
        self._thread.start()
        return self

    def beat(self) -> bool:
        """Renew the lease once (one compare-and-swap); False when it was lost (then stop beating)."""
        if renew_lease(self._storage, self._rid, owner=self.owner, ttl=self.ttl) is None:
            self.lost = True
            return False
        self.beats += 1
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.beat():
                    log.warning("lease of run %s was lost by %s; heartbeat stops", self._rid, self.owner)
                    return
            except Exception as e:  # noqa: BLE001  (a heartbeat thread must not die: a missed beat only brings expiry closer)
                log.warning("heartbeat of run %s failed: %s", self._rid, e)

    def stop(self, *, release: bool = False) -> None:
        """Stop renewing (waits for the thread); ``release=True`` also releases the lease."""
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


os.register_at_fork(after_in_child=_forget_all_in_child)
