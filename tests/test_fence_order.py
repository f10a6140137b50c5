"""Fencing decided by the log's order (docs/concurrency.md, lease rules 8 to 11).

No event is acknowledged at a sequence number after a fence (a sweep, a takeover) of a higher epoch
than its writer's: however long the writer stalled (SIGSTOP, throttled PUTs), whatever the clocks say,
and whether the sweep ran in the writer's own process or elsewhere. A lease is released only by its
holder and only at its epoch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _faultreport import record
from conftest import BUCKET, S3Server
from faultproxy import FaultProxy, match

from faber_runlog import LeaseLost, ManualClock, RunStore, SystemClock
from faber_runlog._log.eventlog import EventLog, append_event
from faber_runlog._log.lease import acquire_lease, read_lease, read_lease_versioned, try_acquire_lease
from faber_runlog._services.lifecycle import finalize

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_fence_workers.py")
EVENT_PUT = match("PUT", r"/events/\d{20}\.json")


def _open(spec: dict[str, Any], **kwargs: Any) -> RunStore:
    return RunStore(spec["url"], storage_options=spec["storage_options"] or None, **kwargs)


class _Writer:
    """The leased writer of tests/_fence_workers.py, in its own process."""

    def __init__(self, spec: dict[str, Any], run_id: str, ttl: float) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(spec), run_id, str(ttl)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.epoch = self.answer()["epoch"]

    def answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(self.proc.stderr.read() if self.proc.stderr else "worker died")
        got: dict[str, Any] = json.loads(line)
        return got

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def emit(self) -> dict[str, Any]:
        self.send("emit")
        return self.answer()

    def wait_stopped(self) -> None:
        stat = Path(f"/proc/{self.proc.pid}/stat")
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "T":
            time.sleep(0.005)

    def resume(self) -> dict[str, Any]:
        os.kill(self.proc.pid, signal.SIGCONT)
        return self.answer()

    def close(self) -> None:
        self.proc.communicate(timeout=60)  # closes stdin (the worker ends), waits, and closes its pipes


def _acknowledged_after_a_fence(store: RunStore, run_id: str) -> list[tuple[int, int, int]]:
    """Events acknowledged after an event of a higher epoch than theirs: (event, its epoch, the fence's)."""
    top, out = 0, []
    for e in store.get_run(run_id).log.read():
        if e.lease_epoch is not None and e.lease_epoch < top:
            out.append((e.event_id, e.lease_epoch, top))
        top = max(top, e.lease_epoch or 0)
    return out


def _swept_by_a_clock_ahead(spec: dict[str, Any], run_id: str, skew: float) -> list[str]:
    return [s.run_id for s in _open(spec, clock=SystemClock(offset=skew)).sweep_stale()]


@pytest.mark.rule("lease", 8)
def test_a_writer_stopped_between_its_lease_check_and_its_claim_is_refused_after_the_sweep(
    shared_store_spec: dict[str, Any],
) -> None:
    store = _open(shared_store_spec)
    run = store.create_run("acme", "web")
    run.start()
    writer = _Writer(shared_store_spec, run.id, ttl=30)
    try:
        assert {"acknowledged": 2, "epoch": 1} == writer.emit()
        writer.send("emit_stop")
        writer.wait_stopped()  # SIGSTOP: its lease check passed, its claim is not sent yet
        assert [run.id] == _swept_by_a_clock_ahead(shared_store_spec, run.id, 3600)
        assert {"refused": "LeaseLost"} == writer.resume()
    finally:
        writer.close()
    assert [] == _acknowledged_after_a_fence(store, run.id)
    assert ("failed", 3) == (run.state().status, run.state().last_event_id)
    held = "LeaseLost after SIGCONT; no event of a lower epoch after the sweep's"
    record(
        f"test_fence_order: writer SIGSTOPped between its lease check and its claim ({store.storage.kind})",
        "SIGSTOP",
        1,
        held,
    )


@pytest.mark.rule("lease", 9)
def test_a_writer_whose_put_is_throttled_past_its_lease_is_refused_after_the_sweep(s3_server: S3Server) -> None:
    with FaultProxy(s3_server.endpoint) as proxy:
        spec = {
            "url": f"s3://{BUCKET}/runs-{uuid.uuid4().hex}",
            "storage_options": {**s3_server.storage_options, "client_kwargs": {"endpoint_url": proxy.endpoint}},
        }
        store = _open(spec)
        run = store.create_run("acme", "web")
        run.start()
        writer = _Writer(spec, run.id, ttl=30)
        try:
            assert {"acknowledged": 2, "epoch": 1} == writer.emit()
            proxy.script(*[(EVENT_PUT, "slowdown")] * 5)  # its next PUT is throttled five times, then retried
            writer.send("emit")
            while proxy.counts[("PUT", "slowdown")] < 1:
                time.sleep(0.005)
            direct = {"url": spec["url"], "storage_options": s3_server.storage_options}
            assert [run.id] == _swept_by_a_clock_ahead(direct, run.id, 3600)
            answer = writer.answer()
            throttled = proxy.counts[("PUT", "slowdown")]
        finally:
            writer.close()
    assert ({"refused": "LeaseLost"}, 5) == (answer, throttled)
    assert [] == _acknowledged_after_a_fence(store, run.id)
    held = "LeaseLost once its retried PUT lands; no event of a lower epoch after the sweep's"
    record("test_fence_order: event PUT throttled past the lease while a sweep fails the run", "slowdown", 5, held)


@pytest.mark.rule("lease", 10)
def test_clock_skew_within_the_bound_sweeps_nothing_and_past_it_no_event_is_acknowledged_after_the_sweep(
    tmp_path: Path,
) -> None:
    spec = {"url": str(tmp_path / "runs"), "storage_options": {}}
    ttl = 30.0
    store = _open(spec)
    run = store.create_run("acme", "web")
    run.start()
    writer = _Writer(spec, run.id, ttl=ttl)
    try:
        # The documented bound: a sweeper whose clock is ahead by less than ttl - interval (interval = ttl / 3)
        # never sweeps a holder that renews on time; the holder here renewed (acquired) moments ago.
        assert [] == _swept_by_a_clock_ahead(spec, run.id, ttl * 2 / 3 - 1)
        assert 2 == writer.emit()["acknowledged"]
        # Past the bound the holder is swept while it still trusts its lease by its own clock...
        assert [run.id] == _swept_by_a_clock_ahead(spec, run.id, ttl + 1)
        # ...and its next event lands after the sweep's, so it is refused, not acknowledged.
        assert {"refused": "LeaseLost"} == writer.emit()
    finally:
        writer.close()
    assert [] == _acknowledged_after_a_fence(store, run.id)


@pytest.fixture(params=["local", "s3"])
def clocked(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[RunStore, ManualClock]]:
    clock = ManualClock()
    if request.param == "local":
        yield RunStore(str(tmp_path / "runs"), clock=clock), clock
        return
    server: S3Server = request.getfixturevalue("s3_server")
    yield RunStore(f"s3://{BUCKET}/runs-{uuid.uuid4().hex}", storage_options=server.storage_options, clock=clock), clock


@pytest.mark.rule("lease", 8)
@pytest.mark.rule("lease", 11)
def test_a_writer_swept_in_its_own_process_stays_fenced_after_the_sweep_finalizes_the_run(
    clocked: tuple[RunStore, ManualClock],
) -> None:
    store, clock = clocked
    run = store.create_run("acme", "web", concurrency_key="repo:main")  # takes the lease, epoch 1
    assert 1 == run.start().lease_epoch
    clock.advance(store.lease_ttl + 1)
    assert [run.id] == [s.run_id for s in store.sweep_stale()]  # fails the run, then finalizes it here
    with pytest.raises(LeaseLost):
        run.log.emit("checkpoint", metadata={"label": "stale"})
    assert [] == _acknowledged_after_a_fence(store, run.id)
    assert ["workflow_start", "workflow_error"] == [e.type for e in run.log.read()]


@pytest.mark.rule("lease", 11)
def test_finalize_releases_only_the_lease_of_the_epoch_that_ended_the_run(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    acquire_lease(store.storage, run.run_id, owner="writer")
    run.start()
    run.fail("boom")  # ended under epoch 1: its lease is released
    resumer = try_acquire_lease(store.storage, run.run_id, owner="resumer")
    assert resumer is not None and 2 == resumer.epoch
    finalize(store.storage, run.log, epoch=1)  # a late finalize of the ended writer
    lease = read_lease(store.storage, run.run_id)
    assert lease is not None and ("resumer", 2, False) == (lease.owner, lease.epoch, lease.released)
    stored, _ = read_lease_versioned(store.storage, run.run_id)
    assert stored == lease


@pytest.mark.rule("lease", 9)
def test_a_leased_writer_whose_number_a_fence_took_folds_the_fence_and_is_refused() -> None:
    store = RunStore(f"memory://runs-{uuid.uuid4().hex}")
    run = store.create_run("acme", "web")
    acquire_lease(store.storage, run.run_id, owner="writer")  # epoch 1, held by this process within its ttl
    run.start()
    run.log.emit("checkpoint", metadata={"label": "mine"})  # the writer knows the tail: 2
    # A sweeper elsewhere fenced the writer out: its workflow_error of epoch 2 takes number 3. (A bare log:
    # no after-commit work here, so this process still believes it holds the lease, as the stalled writer did.)
    fence = {"type": "workflow_error", "error": "swept", "metadata": {"reason": "swept"}, "lease_epoch": 2}
    append_event(EventLog(store.storage, run.run_id), fence)
    with pytest.raises(LeaseLost, match="epoch 2"):
        run.log.emit("checkpoint", metadata={"label": "late"})  # its lease check passes; its claim of 3 fails
    assert [] == _acknowledged_after_a_fence(store, run.id)
    assert [(1, 1), (2, 1), (3, 2)] == [(e.event_id, e.lease_epoch) for e in run.log.read()]
