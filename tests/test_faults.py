"""S3 under injected faults: nothing lost, nothing doubled, dead stores fail fast and clearly.

Every request from s3fs goes through :class:`faultproxy.FaultProxy` in front
of the moto server. The proxy counts what it injected; with
``$FABER_FAULT_REPORT`` set those counts feed the table in docs/reliability.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _faultreport import record
from conftest import BUCKET, S3Server
from faultproxy import RANDOM_FAULTS, FaultProxy, match

from faber_runlog import RunStore, StorageError
from faber_runlog._domain.state import RunState, fold_all
from faber_runlog._services.verify import verify_run

WORKERS = Path(__file__).with_name("_fault_workers.py")
EVENT_PUT = match("PUT", r"/events/\d{20}\.json")
EVENT_GET = match("GET", r"/events/\d{20}\.json")


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.endpoint, delay=0.05) as p:
        yield p


def spec_via(proxy: FaultProxy, *, timeout: float = 2.0) -> dict[str, Any]:
    """A store spec whose every request goes through ``proxy``."""
    return {
        "url": f"s3://{BUCKET}/runs-{uuid.uuid4().hex}",
        "storage_options": {
            "client_kwargs": {"endpoint_url": proxy.endpoint},
            "key": "testing",
            "secret": "testing",
            "use_listings_cache": False,
            "skip_instance_cache": True,
            "config_kwargs": {"connect_timeout": timeout, "read_timeout": timeout},
        },
    }


def open_store(spec: dict[str, Any]) -> RunStore:
    return RunStore(spec["url"], storage_options=spec["storage_options"])


def assert_consistent(store: RunStore, run_id: str, expected_events: int) -> None:
    """Gapless ids, state == fold of the events, verify clean."""
    run = store.get_run(run_id)
    events = list(run.log.read())
    assert list(range(1, expected_events + 1)) == [e.event_id for e in events]
    assert fold_all(RunState(run_id=run_id), events) == run.state()
    assert () == verify_run(store, run_id).problems


@pytest.mark.slow
@pytest.mark.timeout(1800)  # --soak: 4 x 500 appends through faults
def test_four_processes_appending_through_random_faults_write_each_event_once(proxy: FaultProxy, soak: bool) -> None:
    # 40 appends each (500 with --soak) draw every random fault kind many times over; the one a short run could miss (a
    # lost reply to an event PUT) is also scripted, so the run is always under the hardest fire.
    procs, per = 4, (500 if soak else 40)
    spec = spec_via(proxy)
    store = open_store(spec)
    run = store.create_run("acme", "web")
    proxy.script((EVENT_PUT, "reset_after"))
    proxy.fail_rate = 0.10
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKERS), "append", json.dumps(spec), run.id, str(per), f"w{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(procs)
    ]
    for w in workers:
        _, err = w.communicate(timeout=900)
        assert 0 == w.returncode, err
    proxy.fail_rate = 0.0
    injected = proxy.faults_injected()
    total = procs * per

    events = list(store.get_run(run.id).log.read())
    assert list(range(1, total + 1)) == [e.event_id for e in events]
    labels = Counter(e.metadata["label"] for e in events)
    assert {f"w{w}-{i}": 1 for w in range(procs) for i in range(per)} == dict(labels)
    assert len(events) == len({e.nonce for e in events})
    for n in range(procs):
        assert list(range(per)) == [e.metadata["i"] for e in events if e.metadata["worker"] == f"w{n}"]
    assert_consistent(store, run.id, total)
    # The run was really under fire: every kind of fault was injected, on writes too.
    assert set(RANDOM_FAULTS) == set(injected)
    assert 0 < proxy.counts[("PUT", "reset_after")]
    for fault, n in injected.items():
        record(
            f"test_faults: {procs} processes x {per} appends, 10% of requests fail",
            fault,
            n,
            f"{total} events, ids 1..{total} gapless, each label and nonce once, verify clean",
            requests=sum(proxy.counts.values()),
        )


@pytest.mark.parametrize("fault", ["500", "503", "slowdown", "conflict", "reset_before", "reset_after", "500_after"])
def test_a_fault_on_the_event_put_is_retried_and_the_event_written_once(proxy: FaultProxy, fault: str) -> None:
    store = open_store(spec_via(proxy))
    run = store.create_run("acme", "web")
    proxy.script((EVENT_PUT, fault), (EVENT_PUT, fault))  # two in a row: first try and first retry
    ev = run.log.emit("checkpoint", metadata={"label": "only"})
    assert 0 == proxy.pending()
    assert 1 == ev.event_id
    nxt = store.get_run(run.id).log.emit("checkpoint", metadata={"label": "next"})
    assert 2 == nxt.event_id
    assert_consistent(store, run.id, 2)
    assert ["only", "next"] == [e.metadata["label"] for e in run.log.read()]
    held = "event written once, next writer gets id 2, verify clean"
    record("test_faults: scripted fault twice on one event PUT", fault, 2, held)


def test_a_put_that_times_out_but_lands_is_not_written_twice(s3_server: S3Server) -> None:
    with FaultProxy(s3_server.endpoint, delay=1.5) as proxy:
        store = open_store(spec_via(proxy, timeout=0.5))
        run = store.create_run("acme", "web")
        proxy.script((EVENT_PUT, "delay"))
        ev = run.log.emit("checkpoint", metadata={"label": "slow"})
        assert 0 == proxy.pending()
        assert 1 == ev.event_id
        assert_consistent(store, run.id, 1)
    record("test_faults: PUT delayed past the client's read timeout", "delay", 1, "event written once")


def test_reply_lost_on_every_put_still_reports_success_from_the_read_back(proxy: FaultProxy) -> None:
    store = open_store(spec_via(proxy))
    store.storage.retry_backoff = 0.005  # every attempt fails: what counts is their number, not the waits
    run = store.create_run("acme", "web")
    proxy.always(EVENT_PUT, "reset_after")
    ev = run.log.emit("checkpoint", metadata={"label": "landed"})
    n = proxy.counts[("PUT", "reset_after")]
    proxy.clear()
    assert 1 == ev.event_id
    assert n >= store.storage.retries + 1
    assert_consistent(store, run.id, 1)
    record("test_faults: reply lost on every attempt of one PUT", "reset_after", n, "emit returns event 1, once")


def test_unknown_outcome_is_settled_by_retrying_with_the_idempotency_key(proxy: FaultProxy) -> None:
    store = open_store(spec_via(proxy))
    store.storage.retry_backoff = 0.005  # every attempt fails: what counts is their number, not the waits
    run = store.create_run("acme", "web")
    proxy.always(EVENT_PUT, "reset_after")  # the PUT lands, its reply never arrives
    proxy.always(EVENT_GET, "reset_before")  # and it cannot be read back
    with pytest.raises(StorageError, match=r"events/0+1\.json.*after 7 attempt\(s\)"):
        run.log.emit("checkpoint", metadata={"label": "maybe"}, idempotency_key="deploy-1")
    proxy.clear()
    again = store.get_run(run.id).log.emit("checkpoint", metadata={"label": "maybe"}, idempotency_key="deploy-1")
    assert (1, "deploy-1") == (again.event_id, again.idempotency_key)
    assert_consistent(store, run.id, 1)
    record(
        "test_faults: reply lost and reads failing on every attempt",
        "reset_after + reset_before",
        1,
        "StorageError; the retry with the same idempotency key returns event 1, no duplicate",
    )


@pytest.mark.parametrize("fault", ["500", "slowdown", "reset_before", "delay"])
def test_a_permanently_failing_store_raises_storage_error_after_bounded_retries(
    s3_server: S3Server, fault: str
) -> None:
    with FaultProxy(s3_server.endpoint, delay=1.0) as proxy:
        store = open_store(spec_via(proxy, timeout=0.3))
        store.storage.retry_backoff = 0.005  # the number of attempts is the point here, not the waits
        run = store.create_run("acme", "web")
        proxy.always(match(), fault)
        with pytest.raises(StorageError) as caught:
            run.log.emit("checkpoint", metadata={"label": "never"})
        requests = sum(n for (_, action), n in proxy.counts.items() if action == fault)
        proxy.clear()
    message = str(caught.value)
    assert run.id in message  # the key it failed on is under the run's folder
    assert "after 7 attempt(s)" in message
    assert "check the store is reachable" in message
    # One botocore attempt per try of ours (a reset may be re-sent once by the HTTP
    # client), plus one read-back: not the 5 x 5 x 7 of nested retry loops.
    assert requests <= 2 * (store.storage.retries + 1) + 2
    record(
        "test_faults: store failing every request",
        fault,
        requests,
        "StorageError naming the run's file after 7 attempts, no hang",
    )


# -- archive and resume under the same faults ---------------------------------------


def _finished_local_run(store: RunStore, i: int) -> str:
    run = store.create_run("acme", "web", params={"i": i})
    run.log.emit("workflow_start")
    run.log.emit("phase_start", phase="build")
    for s in range(5):
        run.log.emit("step_start", phase="build", step=f"s{s}")
        run.log.emit("step_complete", phase="build", step=f"s{s}", duration_ms=float(s))
    run.log.emit("phase_complete", phase="build")
    run.log.emit("workflow_complete")
    return run.id


def test_archiving_through_random_faults_copies_every_run_once_and_loses_nothing(
    proxy: FaultProxy, tmp_path: Path
) -> None:
    from faber_runlog import Archiver
    from faber_runlog._services.archive import read_archive_index

    local = RunStore(str(tmp_path / "runs"))
    ids = [_finished_local_run(local, i) for i in range(12)]
    expected = {rid: [e.to_dict() for e in local.get_run(rid).log.read()] for rid in ids}
    dest = open_store(spec_via(proxy))
    proxy.fail_rate = 0.10
    archiver = Archiver(local, dest, progress=False, batch_size=4)
    results = archiver.archive_many(ids)
    # A run whose copy failed after bounded retries is archived by running again.
    retried = [r.run_id for r in results if not r.ok]
    again = archiver.archive_many(retried) if retried else []
    injected = proxy.faults_injected()
    proxy.fail_rate = 0.0
    assert [] == [r.error for r in again if not r.ok]
    assert sorted(ids) == sorted(e.run_id for e in read_archive_index(dest))  # one index entry per run
    for rid in ids:
        # Archiving seals the log: the events before, then one log_sealed (event 15), on both sides.
        sealed = [e.to_dict() for e in local.get_run(rid).log.read()]
        assert (expected[rid], "log_sealed") == (sealed[:-1], sealed[-1]["type"])  # the source is whole
        assert sealed == [e.to_dict() for e in dest.get_run(rid).log.read()]
        state = dest.get_run(rid).state()
        assert ("completed", 15, 15) == (state.status, state.last_event_id, state.sealed_at)
        assert () == verify_run(dest, rid).problems
    assert injected, "the proxy injected no fault: the test proved nothing"
    for fault, n in injected.items():
        record(
            "test_faults: archive 12 runs local -> S3, 10% of requests fail",
            fault,
            n,
            f"12 runs archived ({len(retried)} needed a second pass), one index entry each, "
            "events equal to the source, verify clean",
        )


def test_resume_and_rerun_through_random_faults_write_one_resume_event_and_a_whole_child(
    proxy: FaultProxy,
) -> None:
    from faber_runlog import Resumer

    store = open_store(spec_via(proxy))
    run = store.create_run("acme", "web", params={"work_id": "220"})
    run.log.emit("workflow_start")
    run.log.emit("phase_start", phase="build")
    run.log.emit("step_start", phase="build", step="compile")
    run.log.emit("step_complete", phase="build", step="compile")
    run.log.emit("step_start", phase="build", step="test")
    run.log.emit("step_error", phase="build", step="test", error="red")
    proxy.fail_rate = 0.10
    resumer = Resumer(store)
    plan = resumer.plan(run.id)
    resumed = resumer.resume(run.id)
    resumer.resume(run.id)  # a second resume of a resumed run adds nothing
    resumed.log.emit("step_start", phase="build", step="test")
    resumed.log.emit("step_complete", phase="build", step="test")
    resumed.log.emit("phase_complete", phase="build")
    resumed.log.emit("workflow_complete")
    child = resumer.rerun(run.id, params={"work_id": "221"})
    injected = proxy.faults_injected()
    proxy.fail_rate = 0.0
    events = list(store.get_run(run.id).log.read())
    assert (False, True) == (plan.should_run("build", "compile"), plan.should_run("build", "test"))
    assert 1 == sum(e.type == "workflow_resumed" for e in events)
    assert_consistent(store, run.id, len(events))
    assert "completed" == store.get_run(run.id).state().status
    assert [child.id] == list(store.children(run.id))
    first = next(iter(store.get_run(child.id).log.read()))
    assert ("workflow_rerun", {"work_id": "221"}) == (first.type, store.get_run(child.id).metadata.params)
    assert injected, "the proxy injected no fault: the test proved nothing"
    for fault, n in injected.items():
        record(
            "test_faults: resume, finish and re-run one run, 10% of requests fail",
            fault,
            n,
            "one workflow_resumed, run completed, verify clean, child listed once with its params",
        )
