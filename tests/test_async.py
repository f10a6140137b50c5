"""AsyncRunStore: the same contract as the sync API on memory, local and moto S3, and the event loop never stalls."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import BUCKET, S3Server, make_store
from faultproxy import FaultProxy, match

from faber_runlog import AsyncRun, AsyncRunStore, Event, InvalidArgument, InvalidTransition, RunNotFound, RunStore
from faber_runlog._domain.state import RunState, fold_all
from faber_runlog._services.verify import verify_run

EVENT_PUT = match("PUT", r"/events/\d{20}\.json")


def assert_whole(store: RunStore, run_id: str) -> list[Event]:
    """The run's log is gapless, its state is the fold of its events and verify finds nothing."""
    events = list(store.get_run(run_id).log.read())
    assert list(range(1, len(events) + 1)) == [e.event_id for e in events]
    assert fold_all(RunState(run_id=run_id), events) == store.get_run(run_id).state()
    assert () == verify_run(store, run_id).problems
    return events


def labels(events: list[Event]) -> Counter[str]:
    return Counter(str(e.metadata["label"]) for e in events if e.type == "checkpoint")


@pytest.mark.parametrize("kind", ["memory", "local"])  # S3: the ticking test below checks the same
def test_forty_concurrent_emits_from_gather_are_gapless_and_each_stored_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = make_store(kind, tmp_path, request)

    async def main() -> list[int]:
        async with AsyncRunStore(store) as astore:
            run = await astore.create_run("acme", "web")
            got = await asyncio.gather(*(run.log.emit("checkpoint", metadata={"label": f"e{i}"}) for i in range(40)))
            return sorted(e.event_id for e in got)

    ids = asyncio.run(main())
    assert list(range(1, 41)) == ids
    (summary,) = store.list_runs()
    events = assert_whole(store, summary.run_id)
    assert Counter({f"e{i}": 1 for i in range(40)}) == labels(events)


def test_forty_s3_emits_from_gather_are_gapless_once_each_and_the_event_loop_keeps_ticking(
    s3_server: S3Server, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # A stall detector, not a speed claim: the loop must never wait on an S3 round trip.
    store = make_store("s3", tmp_path, request)

    async def main() -> float:
        async with AsyncRunStore(store) as astore:
            run = await astore.create_run("acme", "web")
            stop = asyncio.Event()
            gaps: list[float] = []

            async def tick() -> None:
                last = time.perf_counter()
                while not stop.is_set():
                    await asyncio.sleep(0.005)
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now

            ticker = asyncio.create_task(tick())
            await asyncio.gather(*(run.log.emit("checkpoint", metadata={"label": f"e{i}"}) for i in range(40)))
            await run.state()
            await astore.list_runs()
            stop.set()
            await ticker
            return max(gaps)

    worst = asyncio.run(main())
    request.node.user_properties.append(("max_tick_gap_s", round(worst, 4)))
    print(f"max tick gap while 40 S3 appends ran: {worst * 1000:.1f} ms")
    # 33-170 ms measured alone; 2 s once with the whole suite on 2 cores shared by 7 jobs (CPU starved,
    # not blocked): the bound only catches a loop that waits on every round trip in turn (40 x RTT and more).
    assert worst < 5.0, f"the event loop stalled for {worst:.3f} s"
    (summary,) = store.list_runs()
    events = assert_whole(store, summary.run_id)
    assert Counter({f"e{i}": 1 for i in range(40)}) == labels(events)


def test_sync_and_async_writers_on_one_run_interleave(tmp_path: Path) -> None:
    url = str(tmp_path / "runs")
    run_id = RunStore(url).create_run("acme", "web").id

    def sync_writer() -> None:
        log = RunStore(url).get_run(run_id).log  # another handle, as another process would have
        for i in range(20):
            log.emit("checkpoint", metadata={"label": f"sync{i}"})

    async def main() -> None:
        async with AsyncRunStore(url) as astore:
            run = await astore.get_run(run_id)
            thread = threading.Thread(target=sync_writer)
            thread.start()
            for i in range(20):
                await run.log.emit("checkpoint", metadata={"label": f"async{i}"})
            await asyncio.get_running_loop().run_in_executor(None, thread.join)

    asyncio.run(main())
    events = assert_whole(RunStore(url), run_id)
    expected = Counter({f"sync{i}": 1 for i in range(20)}) + Counter({f"async{i}": 1 for i in range(20)})
    assert expected == labels(events)


def test_an_append_cancelled_before_its_thread_ran_writes_nothing_and_its_retry_appends_once() -> None:
    store = RunStore(f"memory://runs-{uuid.uuid4().hex}")
    pool = ThreadPoolExecutor(max_workers=1)
    gate = threading.Event()

    async def main() -> tuple[int, int, int]:
        astore = AsyncRunStore(store, executor=pool)
        run = await astore.create_run("acme", "web")
        blocker = asyncio.get_running_loop().run_in_executor(pool, gate.wait)  # the only thread is busy
        task = asyncio.create_task(run.log.emit("checkpoint", metadata={"label": "x"}, idempotency_key="k1"))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()
        await blocker
        before = await run.log.last_event_id()
        again = await run.log.emit("checkpoint", metadata={"label": "x"}, idempotency_key="k1")
        repeat = await run.log.emit("checkpoint", metadata={"label": "x"}, idempotency_key="k1")
        return before, again.event_id, repeat.event_id

    try:
        assert (0, 1, 1) == asyncio.run(main())
    finally:
        pool.shutdown()
    (summary,) = store.list_runs()
    assert Counter({"x": 1}) == labels(assert_whole(store, summary.run_id))


def test_an_append_cancelled_mid_put_on_s3_is_durable_and_its_retry_returns_it(s3_server: S3Server) -> None:
    with FaultProxy(s3_server.endpoint, delay=0.2) as proxy:
        options = {
            "client_kwargs": {"endpoint_url": proxy.endpoint},
            "key": "testing",
            "secret": "testing",
            "use_listings_cache": False,
            "skip_instance_cache": True,
        }
        store = RunStore(f"s3://{BUCKET}/runs-{uuid.uuid4().hex}", storage_options=options)

        async def main() -> tuple[int, int]:
            async with AsyncRunStore(store) as astore:
                run = await astore.create_run("acme", "web")
                await run.log.emit("checkpoint", metadata={"label": "first"})
                proxy.script((EVENT_PUT, "delay"))  # the next event PUT reaches S3 only after 0.2 s
                task = asyncio.create_task(run.log.emit("checkpoint", metadata={"label": "x"}, idempotency_key="k1"))
                while proxy.pending():  # until the PUT is in flight
                    await asyncio.sleep(0.01)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                again = await run.log.emit("checkpoint", metadata={"label": "x"}, idempotency_key="k1")
                repeat = await (await astore.get_run(run.id)).log.emit(
                    "checkpoint", metadata={"label": "x"}, idempotency_key="k1"
                )
                return again.event_id, repeat.event_id

        assert (2, 2) == asyncio.run(main())
        (summary,) = store.list_runs()
        assert Counter({"first": 1, "x": 1}) == labels(assert_whole(store, summary.run_id))


@pytest.fixture
def astore() -> Iterator[AsyncRunStore]:
    astore = AsyncRunStore(f"memory://runs-{uuid.uuid4().hex}", max_workers=4)
    yield astore
    asyncio.run(astore.aclose())


def test_lifecycle_approvals_resume_and_rerun_work_as_on_the_sync_api(astore: AsyncRunStore) -> None:
    async def main() -> None:
        run = await astore.create_run("acme", "web", params={"n": 1}, tags={"team": "core"})
        await run.start()
        approval = await run.request_approval("deploy", phase="release")
        assert "awaiting_approval" == (await run.state()).status
        await run.decide(approval, "approve", client_token="t1")
        await run.log.emit("phase_start", phase="build")
        await run.log.emit("step_start", phase="build", step="compile")
        await run.log.emit("step_error", phase="build", step="compile", error="exit 2")
        assert "failing" == (await run.state()).status
        plan = await astore.plan(run.id)
        assert (True, "build") == (plan.resumable, plan.resume_phase)
        resumed = await astore.resume(run.id)
        assert "running" == (await resumed.state()).status
        await resumed.complete("done")
        assert "completed" == (await run.state()).status
        with pytest.raises(InvalidTransition):
            await run.pause()
        child = await astore.rerun(run.id, {"n": 2})
        assert run.id == child.metadata.parent_run_id
        assert [child.id] == await astore.children(run.id)
        assert {"n": (1, 2)} == (await astore.diff(run.id, child.id)).changed
        assert [run.id] == [s.run_id for s in await astore.list_runs(status="completed", tags={"team": "core"})]
        assert (await run.read_report()) is not None
        with pytest.raises(RunNotFound):
            await astore.get_run("acme/web/00000000-0000-4000-8000-000000000000")

    asyncio.run(main())


def test_follow_yields_new_events_as_they_are_written_and_stops_when_cancelled(astore: AsyncRunStore) -> None:
    async def main() -> tuple[list[int], list[int]]:
        run = await astore.create_run("acme", "web")
        await run.start()
        seen: list[int] = []
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def watch(r: AsyncRun) -> None:
            async for event in r.log.follow(poll_interval=0.01):
                seen.append(event.event_id)
                if len(seen) == 2 and not first.done():
                    first.set_result(None)

        watcher = asyncio.create_task(watch(run))
        await run.log.emit("checkpoint", metadata={"label": "a"})
        await first
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
        await run.complete()
        ended = [e.event_id async for e in run.log.follow(2, poll_interval=0.01, until_ended=True)]
        return seen, ended

    assert ([1, 2], [3]) == asyncio.run(main())


def test_bad_pool_options_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="max_workers"):
        AsyncRunStore("memory://x", max_workers=0)
    with pytest.raises(InvalidArgument, match="options"):
        AsyncRunStore(RunStore("memory://x"), snapshot_every=5)
