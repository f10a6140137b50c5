"""AsyncRunStore on moto S3: async emits per second against the sync API in threads, and the design choice.

Rows:

- 1 task: ``await run.log.emit(...)`` in a loop vs ``run.log.emit(...)`` in a loop (one run).
- 32 tasks, one run each (a fleet of agents): ``asyncio.gather`` of 32 emitters vs 32 threads.
- The design choice: raw conditional creates (``pipe_file(mode="create")``, what an append costs)
  issued by 32 coroutines on s3fs's own async side vs 32 pool threads calling the sync s3fs.
- The longest gap of a 5 ms ticker on the event loop while the 32 tasks append.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _common import Row, rate_row
from bench_core import _moto

from faber_runlog import AsyncRunStore, RunStore

TASKS = 32


async def _async_emits(astore: AsyncRunStore, runs: int, per: int) -> tuple[float, float]:
    handles = [await astore.create_run("bench", "async") for _ in range(runs)]
    for h in handles:
        await h.log.emit("checkpoint", metadata={"label": "warm"})
    stop = asyncio.Event()
    worst = 0.0

    async def tick() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            worst = max(worst, now - last)
            last = now

    async def emitter(h: Any) -> None:
        for i in range(per):
            await h.log.emit("checkpoint", metadata={"label": f"e{i}"})

    ticker = asyncio.create_task(tick())
    t = time.perf_counter()
    await asyncio.gather(*(emitter(h) for h in handles))
    took = time.perf_counter() - t
    stop.set()
    await ticker
    return took, worst


def _sync_emits(store: RunStore, runs: int, per: int) -> float:
    handles = [store.create_run("bench", "sync") for _ in range(runs)]
    for h in handles:
        h.log.emit("checkpoint", metadata={"label": "warm"})

    def emitter(h: Any) -> None:
        for i in range(per):
            h.log.emit("checkpoint", metadata={"label": f"e{i}"})

    threads = [threading.Thread(target=emitter, args=(h,)) for h in handles]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t


def _raw_creates(opts: dict[str, Any], n: int) -> tuple[float, float]:
    import s3fs

    body = b'{"event_id": 1, "type": "checkpoint"}'

    async def native() -> float:
        fs = s3fs.S3FileSystem(asynchronous=True, **opts)
        session = await fs.set_session()
        sem = asyncio.Semaphore(TASKS)

        async def one(i: int) -> None:
            async with sem:
                key = f"bench/native-{uuid.uuid4().hex}/{i:020d}.json"
                await fs._pipe_file(key, body, mode="create")  # noqa: SLF001  (s3fs's async API is _-named)

        t = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        took = time.perf_counter() - t
        await session.close()
        return took

    async def pooled() -> float:
        fs = s3fs.S3FileSystem(**opts)
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(TASKS) as pool:
            t = time.perf_counter()
            await asyncio.gather(
                *(
                    loop.run_in_executor(
                        pool,
                        lambda i=i: fs.pipe_file(f"bench/pool-{uuid.uuid4().hex}/{i:020d}.json", body, mode="create"),
                    )
                    for i in range(n)
                )
            )
            return time.perf_counter() - t

    return asyncio.run(native()), asyncio.run(pooled())


def run(*, quick: bool) -> list[Row]:
    n = 64 if quick else 640  # events per row (32 tasks: n / 32 each)
    server, opts = _moto()
    try:
        import s3fs

        s3fs.S3FileSystem(**opts).makedirs("bench", exist_ok=True)
        store = RunStore(f"s3://bench/async-{uuid.uuid4().hex}", storage_options=opts)
        astore = AsyncRunStore(store)
        one_async, _ = asyncio.run(_async_emits(astore, 1, n))
        one_sync = _sync_emits(store, 1, n)
        many_async, worst = asyncio.run(_async_emits(astore, TASKS, n // TASKS))
        many_sync = _sync_emits(store, TASKS, n // TASKS)
        native, pooled = _raw_creates(opts, n)
    finally:
        server.stop()
    return [
        rate_row("async emit, 1 task (moto S3)", n, one_async, "sync emit loop", one_sync, "ev/s", 0.8),
        rate_row(
            f"async emit, {TASKS} tasks x own run (moto S3)",
            n,
            many_async,
            f"sync emit, {TASKS} threads",
            many_sync,
            "ev/s",
            0.8,
        ),
        rate_row(f"raw create, pool of {TASKS} threads", n, pooled, "s3fs async side", native, "ev/s", None),
        Row(
            f"max event-loop tick gap, {TASKS} tasks appending",
            worst * 1000,
            "stall bound",
            1000.0,
            "ms",
            "< 1000",
            worst,
            worst < 1.0,
        ),
    ]
