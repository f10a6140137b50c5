"""Leases and claims on compare-and-swap: no resurrection, one holder per key, resume takes the lease, fencing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from faber_runlog import ActiveRunExists, ManualClock, Resumer, RunStore
from faber_runlog._domain.state import ACTIVE_STATUSES
from faber_runlog._log.lease import Heartbeat, acquire_lease, fence_out, read_lease, read_lease_versioned
from faber_runlog._services.lifecycle import claim_start

REPO = Path(__file__).resolve().parents[1]
WORKERS = Path(__file__).with_name("_lifecycle_workers.py")


def _expire(store: RunStore, run: Any, owner: str = "holder") -> Heartbeat:
    """A live-looking holder: its lease (short ttl) has just lapsed and its heartbeat has not beaten yet."""
    hb = Heartbeat(store.storage, run.run_id, ttl=30, interval=10, owner=owner)  # its beats renew for 30 s
    acquire_lease(store.storage, run.run_id, ttl=0.2, owner=owner)
    time.sleep(0.25)
    return hb


@pytest.mark.rule("lease", 6)
def test_a_late_heartbeat_between_judging_and_sweeping_keeps_the_key_with_its_holder(store_factory: Any) -> None:
    store = store_factory(lease_ttl=0.2)  # the claim lapses with the lease
    holder = store.create_run("acme", "web", concurrency_key="repo:main")
    holder.start()
    hb = _expire(store, holder)
    newcomer = store.create_run("acme", "web")  # only used for its id; claims are made by hand below
    calls = 0

    def open_log(rid: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # the sweep opens the holder's log: the late heartbeat lands right now
            assert hb.beat()
        return store.get_run(rid).log

    with pytest.raises(ActiveRunExists) as info:
        claim_start(store.storage, newcomer.run_id, open_log=open_log, concurrency_key="repo:main", ttl=60)
    assert (holder.id, 3) == (info.value.run_id, calls)
    assert ("running", True) == (holder.state().status, (read_lease(store.storage, holder.run_id) or _no()).is_live())


def _no() -> Any:
    raise AssertionError("no lease")


@pytest.mark.rule("lease", 1)
@pytest.mark.rule("lease", 2)
def test_a_swept_lease_cannot_be_renewed_back_to_life(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.start()
    hb = _expire(store, run)
    swept = store.sweep_stale()
    assert [run.id] == [s.run_id for s in swept]
    assert not hb.beat()  # the renewal names the version the sweep replaced: refused
    assert (True, None) == (hb.lost, read_lease(store.storage, run.run_id))
    stored, _ = read_lease_versioned(store.storage, run.run_id)
    assert stored is not None and (True, "swept", 2) == (stored.released, stored.reason, stored.epoch)
    assert "running" == Resumer(store).resume(run.id).state().status  # not "owned by the live writer"


@pytest.mark.rule("lease", 3)
@pytest.mark.rule("lease", 7)
def test_resume_takes_the_lease_so_a_sweeper_leaves_the_resumed_run_alone(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.start()
    _expire(store, run)
    assert [run.id] == [s.run_id for s in store.sweep_stale()]
    resumed = Resumer(store).resume(run.id, owner="resumer")
    lease = read_lease(store.storage, run.run_id)
    assert lease is not None and ("resumer", 3, True) == (lease.owner, lease.epoch, lease.is_live())
    assert [] == store.sweep_stale()
    types = [e.type for e in resumed.log.read()]
    assert ["workflow_start", "workflow_error", "workflow_resumed"] == types
    assert [None, 2, 3] == [e.lease_epoch for e in resumed.log.read()]


@pytest.mark.rule("lease", 4)
def test_events_of_a_lease_holder_carry_its_epoch(store: RunStore) -> None:
    run = store.create_run("acme", "web", concurrency_key="k")
    event = run.log.emit("workflow_start")
    assert 1 == event.lease_epoch
    assert 1 == store.get_run(run.id).log.get(event.event_id).lease_epoch


@pytest.mark.rule("lease", 4)
def test_a_writer_whose_lease_was_taken_is_refused_before_its_event_is_written(
    shared_store_spec: dict[str, Any], tmp_path: Path
) -> None:
    go = tmp_path / "go"
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen(
        [sys.executable, str(WORKERS), "stale_writer", json.dumps(shared_store_spec), str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert writer.stdout is not None
    run_id = writer.stdout.readline().strip()
    assert run_id, writer.stderr.read() if writer.stderr else ""
    store = RunStore(shared_store_spec["url"], storage_options=shared_store_spec["storage_options"] or None)
    time.sleep(0.4)  # the writer's lease (ttl 0.3 s, no heartbeat) lapses
    assert [run_id] == [s.run_id for s in store.sweep_stale()]
    Resumer(store).resume(run_id, owner="new-owner")
    before = store.get_run(run_id).state().last_event_id
    go.touch()
    out, err = writer.communicate(timeout=60)
    assert {"refused": True, "epoch": 1} == json.loads(out.strip().splitlines()[-1]), err
    after = store.get_run(run_id)
    assert before == after.state().last_event_id
    assert "running" == after.state().status


@pytest.fixture(params=["local", "s3"])
def race_spec(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    if request.param == "local":
        return "local", {"url": str(tmp_path / "runs"), "storage_options": {}}
    import uuid

    server = request.getfixturevalue("s3_server")
    return "s3", {"url": f"s3://faber-test/race-{uuid.uuid4().hex}", "storage_options": server.storage_options}


@pytest.mark.rule("lease", 6)
def test_one_active_run_per_key_while_the_holders_heartbeat_races_the_takeover(
    race_spec: tuple[str, dict[str, Any]], tmp_path: Path, soak: bool
) -> None:
    kind, spec = race_spec
    rounds = {"local": 200 if soak else 8, "s3": 30 if soak else 3}[kind]
    starters, ttl = 4, (0.3 if kind == "local" else 0.6)
    folder = tmp_path / "sync"
    folder.mkdir()
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}

    def spawn(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(WORKERS), args[0], json.dumps(spec), str(folder), *args[1:]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    holder = spawn("race_holder", str(rounds), str(starters), str(ttl))
    procs = [spawn("race_starter", str(rounds), str(i), str(ttl)) for i in range(starters)]
    outs = []
    try:
        for p in [*procs, holder]:  # the starters first: one that died says why (the holder would wait for it)
            out, err = p.communicate(timeout=600)
            assert 0 == p.returncode, err
            outs.append([json.loads(line) for line in out.splitlines()])
    finally:
        for p in [*procs, holder]:  # none is left behind, waiting for a peer that died
            if p.poll() is None:
                p.kill()
                p.communicate()
    outs = [outs[-1], *outs[:-1]]  # the holder's lines first, as below reads them
    holders = {d["round"]: d["holder"] for d in outs[0]}
    winners: dict[int, list[str]] = {r: [] for r in range(rounds)}
    for lines in outs[1:]:
        for d in lines:
            if d["won"]:
                winners[d["round"]].append(d["won"])
    store = RunStore(spec["url"], storage_options=spec["storage_options"] or None)
    taken = 0
    for r in range(rounds):
        candidates = [holders[r], *winners[r]]
        active = [rid for rid in candidates if store.get_run(rid).state().status in ACTIVE_STATUSES]
        assert 1 == len(active), (r, [(rid, store.get_run(rid).state().status) for rid in candidates])
        assert len(winners[r]) <= 1
        taken += bool(winners[r])
    print(f"{kind}: {taken} of {rounds} keys passed to a starter")


@pytest.mark.rule("lease", 5)
def test_a_heartbeat_that_lands_before_the_sweepers_swap_keeps_the_run_and_a_sweep_fences_before_it_fails() -> None:
    clock = ManualClock()
    store = RunStore(f"memory://runs-{uuid.uuid4().hex}", clock=clock)
    run = store.create_run("acme", "web")
    run.start()
    hb = Heartbeat(store.storage, run.run_id, ttl=30, interval=10, owner="holder")
    acquire_lease(store.storage, run.run_id, ttl=30, owner="holder")  # epoch 1
    clock.advance(31)
    seen, version = read_lease_versioned(store.storage, run.run_id)  # a sweeper judges the lease expired...
    assert hb.beat()  # ...and the holder's late heartbeat lands before the sweeper's swap
    assert fence_out(store.storage, run.run_id, seen, version, reason="swept") is None
    assert ([], "running") == (store.sweep_stale(), run.state().status)
    clock.advance(31)  # now the holder is silent for good
    assert [run.id] == [s.run_id for s in store.sweep_stale()]
    stored, _ = read_lease_versioned(store.storage, run.run_id)
    assert stored is not None and (True, "swept", 2) == (stored.released, stored.reason, stored.epoch)
    assert [("workflow_start", None), ("workflow_error", 2)] == [(e.type, e.lease_epoch) for e in run.log.read()]
    assert not hb.beat()
