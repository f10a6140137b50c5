"""Writer leases: acquire, renew, release, the heartbeat thread, and what they keep."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from faber_runlog import Heartbeat, Lease, RunStore
from faber_runlog._base import codec as _codec
from faber_runlog._log.lease import (
    acquire_lease,
    lease_key,
    read_lease,
    read_lease_versioned,
    release_lease,
    renew_lease,
)


def _wait_until(cond: Callable[[], bool], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)


def test_acquire_writes_a_live_lease_that_read_lease_returns(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    lease = acquire_lease(store.storage, run.run_id, ttl=60, owner="w1")
    assert lease == read_lease(store.storage, run.run_id)
    assert ("w1", True, ()) == (lease.owner, lease.is_live(), lease.claims)
    assert lease.expired_for() < 0


def test_renew_extends_only_the_owners_lease(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    first = acquire_lease(store.storage, run.run_id, ttl=60, owner="w1", claims=("a", "b"))
    renewed = renew_lease(store.storage, run.run_id, owner="w1", ttl=120)
    assert renewed is not None
    assert (first.acquired_at, ("a", "b")) == (renewed.acquired_at, renewed.claims)
    assert renewed.expires_at > first.expires_at
    assert renew_lease(store.storage, run.run_id, owner="intruder") is None
    assert renewed == read_lease(store.storage, run.run_id)


def test_a_new_writer_keeps_the_claims_of_the_lease_it_replaces(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    acquire_lease(store.storage, run.run_id, owner="w1", claims=("k",))
    taken = acquire_lease(store.storage, run.run_id, owner="w2")
    assert ("w2", ("k",)) == (taken.owner, taken.claims)


def test_release_only_deletes_the_named_owners_lease(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    acquire_lease(store.storage, run.run_id, owner="w1")
    release_lease(store.storage, run.run_id, owner="w2")
    assert read_lease(store.storage, run.run_id) is not None
    release_lease(store.storage, run.run_id, owner="w1")
    assert read_lease(store.storage, run.run_id) is None
    assert renew_lease(store.storage, run.run_id, owner="w1") is None


def test_an_expired_lease_is_not_live_and_says_for_how_long(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    lease = acquire_lease(store.storage, run.run_id, ttl=0.01)
    _wait_until(lambda: not lease.is_live())
    assert lease.expired_for() >= 0


def test_a_lease_written_without_claims_by_an_older_release_still_reads(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    old = {
        "owner": "w",
        "acquired_at": "2026-01-01T00:00:00Z",
        "heartbeat_at": "2026-01-01T00:00:00Z",
        "expires_at": "2026-01-01T00:01:00Z",
    }
    store.storage.replace(lease_key(run.run_id), _codec.dumps(old))
    lease = read_lease(store.storage, run.run_id)
    assert Lease("w", old["acquired_at"], old["heartbeat_at"], old["expires_at"]) == lease
    store.storage.replace(lease_key(run.run_id), b"{not json")
    assert read_lease(store.storage, run.run_id) is None


@pytest.mark.parametrize(("ttl", "interval"), [(0, None), (-1, None), (10, 10), (10, 0)])
def test_bad_ttl_or_interval_is_refused(store: RunStore, ttl: float, interval: float | None) -> None:
    run = store.create_run("acme", "web")
    with pytest.raises(ValueError):
        Heartbeat(store.storage, run.run_id, ttl=ttl, interval=interval)


def test_heartbeat_renews_until_stopped_and_can_release(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    with Heartbeat(store.storage, run.run_id, ttl=5, interval=0.02, owner="hb") as hb:
        first = read_lease(store.storage, run.run_id)
        _wait_until(lambda: hb.beats >= 2)
        later = read_lease(store.storage, run.run_id)
        assert first is not None and later is not None and later.expires_at > first.expires_at
    assert not hb.running
    hb.start()
    hb.stop(release=True)
    assert read_lease(store.storage, run.run_id) is None


@pytest.mark.rule("lease", 1)
def test_heartbeat_stops_by_itself_when_its_lease_is_taken(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    hb = Heartbeat(store.storage, run.run_id, ttl=5, interval=0.02, owner="mine").start()

    def taken() -> bool:
        # The heartbeat's next beat names the version of its own last write: the take-over changed it,
        # so the renewal fails (lease rule 1). Taken again each time round until the thread has stopped.
        acquire_lease(store.storage, run.run_id, owner="someone-else")
        return not hb.running

    _wait_until(taken)
    assert hb.lost
    assert "someone-else" == (read_lease(store.storage, run.run_id) or hb).owner


@pytest.mark.rule("lease", 2)
@pytest.mark.rule("lease", 3)
@pytest.mark.backends("memory", "local")
def test_a_released_lease_is_a_tombstone_that_keeps_its_epoch_and_each_new_holder_takes_the_next(
    store: RunStore,
) -> None:
    run = store.create_run("acme", "web")
    first = acquire_lease(store.storage, run.run_id, owner="w1")
    assert release_lease(store.storage, run.run_id, owner="w1")
    tomb, _ = read_lease_versioned(store.storage, run.run_id)
    assert tomb is not None and (True, "released", first.epoch) == (tomb.released, tomb.reason, tomb.epoch)
    assert renew_lease(store.storage, run.run_id, owner="w1") is None  # a stalled renewal cannot revive it
    second = acquire_lease(store.storage, run.run_id, owner="w2")
    third = acquire_lease(store.storage, run.run_id, owner="w3")  # a take-over of a live lease
    assert [first.epoch + 1, first.epoch + 2] == [second.epoch, third.epoch]
