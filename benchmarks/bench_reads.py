"""Read-path benchmarks (issue 15): S3 requests of reads with segments, frames over many active runs, memory.

Long logs are laid down straight into the moto server's in-process backend
(setup only: bodies and segments built with the library's own codecs, as a
writer would have written them); everything measured goes through S3 requests.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from _common import Row, best_of, rate_row
from bench_core import _counting_fs, _event_dicts, _moto

from faber_runlog import RunStore
from faber_runlog._base.ids import RunId
from faber_runlog._format.layout import SEGMENT_EVENTS, RunLayout, encode_segment, jsonl_line
from faber_runlog._log.eventlog import EventLog

BUCKET = "bench"


def _bucket(fs: Any) -> None:
    # moto's backend lives in this process: a bucket made by an earlier server of the run is still there.
    with contextlib.suppress(FileExistsError):
        fs.mkdir(BUCKET)


def _backend() -> Any:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    return s3_backends[DEFAULT_ACCOUNT_ID]["global"]


def _lay_down(backend: Any, prefix: str, run_id: str, n: int, k: int) -> int:
    """Events 1..n of ``run_id`` as event files plus the segments their writers would have written; their bytes."""
    layout = RunLayout(RunId.parse(run_id))
    bodies = [orjson.dumps(d) for d in _event_dicts(run_id, n)]
    for seq, body in enumerate(bodies, start=1):
        backend.put_object(BUCKET, f"{prefix}/{layout.event(seq)}", body)
    for first in range(1, n - k + 2, k):
        lines = [jsonl_line(b) for b in bodies[first - 1 : first - 1 + k]]
        key = f"{prefix}/{layout.segment(first, first + k - 1)}"
        backend.put_object(BUCKET, key, encode_segment(run_id, first, lines))
    return sum(len(b) + 1 for b in bodies)


def _limit_row(name: str, ours: float, limit_name: str, limit: float, unit: str) -> Row:
    """A cost row: ours against an upper limit (ratio ours / limit, must be <= 1)."""
    return Row(name, ours, limit_name, limit, unit, "<= 1x", ours / limit, ours <= limit)


def bench_s3_reads(n: int) -> list[Row]:
    server, opts = _moto()
    try:
        fs = _counting_fs(opts)
        _bucket(fs)
        prefix = f"runs-{uuid.uuid4().hex}"
        rid = RunId.parse(f"bench/reads/{uuid.uuid4()}")
        _lay_down(_backend(), prefix, str(rid), n, SEGMENT_EVENTS)
        store = RunStore(fs=fs, root=f"{BUCKET}/{prefix}")

        def requests(fn: Any) -> tuple[int, Any]:
            fs.calls.clear()
            out = fn()
            return sum(fs.calls.values()), out

        t = time.perf_counter()
        full, events = requests(lambda: list(EventLog(store.storage, rid).read()))
        took = time.perf_counter() - t
        assert [n, n] == [len(events), events[-1].event_id]
        limited, first = requests(lambda: list(EventLog(store.storage, rid).read(limit=10)))
        assert list(range(1, 11)) == [e.event_id for e in first]
        bounded, mid = requests(lambda: list(EventLog(store.storage, rid).read(since=n // 2, until=n // 2 + 50)))
        assert 50 == len(mid)
        at, state = requests(lambda: EventLog(store.storage, rid).load_state(at=n // 2))
        assert n // 2 == state.last_event_id
    finally:
        server.stop()
    per500 = full / (n / 500)
    whole = f"S3 log.read() of a {n:,}-event run: requests per 500 events"
    detail = f"  of which: {full} requests, read in {took:.1f}s (K={SEGMENT_EVENTS})"
    at_name = f"S3 state(at={n // 2:,}) requests (no older snapshot: folds from segments)"
    folded = n / 2 / 500
    return [
        _limit_row(whole, per500, "limit (issue 15; today 500)", 1.0, "req"),
        Row(detail, full, "one GET per event (today)", float(n), "req", "", full / n, None),
        _limit_row("S3 read(limit=10) requests", float(limited), "limit (today 257 objects + a LIST)", 3.0, "req"),
        _limit_row("S3 read(since, until=since+50) requests", float(bounded), "limit", 3.0, "req"),
        Row(at_name, float(at), "events folded / 500", folded, "req", "", at / folded, None),
    ]


# -- events_frame over many active runs -------------------------------------------------------


def _old_events_frame(store: RunStore) -> Any:
    """The previous approach, kept as the peer: log.read() per run on a thread pool, a dict per event, then pandas."""
    import pandas as pd

    from faber_runlog._domain.events import error_text as _error_text
    from faber_runlog._services.analysis import EVENT_COLUMNS
    from faber_runlog._services.resolve import run_ids

    rids = list(run_ids(store.storage))
    cols: dict[str, list[Any]] = {c: [] for c in EVENT_COLUMNS}

    def events_of(rid: RunId) -> list[dict[str, Any]]:
        return [e.to_dict() for e in store.get_run(rid).log.read()]

    with ThreadPoolExecutor(16) as pool:
        for rid, ds in zip(rids, pool.map(events_of, rids), strict=True):
            n = len(ds)
            cols["run_id"].extend([str(rid)] * n)
            cols["org"].extend([rid.org] * n)
            cols["project"].extend([rid.project] * n)
            for c in ("event_id", "type", "phase", "step", "status", "message", "user", "source", "idempotency_key"):
                cols[c].extend([d.get(c) for d in ds])
            cols["timestamp"].extend([d.get("timestamp", "") for d in ds])
            metas = [d.get("metadata") or {} for d in ds]
            cols["metadata"].extend(metas)
            durations = [d.get("duration_ms", m.get("duration_ms")) for d, m in zip(ds, metas, strict=True)]
            cols["duration_ms"].extend([v if isinstance(v, (int, float)) else None for v in durations])
            cols["error"].extend([_error_text(d.get("error", m.get("error"))) for d, m in zip(ds, metas, strict=True)])
    frame = pd.DataFrame(cols)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    return frame


def _many_runs(store: RunStore, backend: Any, prefix: str, runs: int, events: int) -> int:
    """``runs`` active runs of ``events`` events each (metadata from a real run, ids changed); their bytes."""
    template = store.create_run("bench", "frames")
    meta = store.storage.read(RunLayout(RunId.parse(template.id)).metadata) or b""
    size = 0
    for _ in range(runs):
        rid = f"bench/frames/{uuid.uuid4()}"
        backend.put_object(BUCKET, f"{prefix}/{rid}/metadata.json", meta.replace(template.id.encode(), rid.encode()))
        size += _lay_down(backend, prefix, rid, events, SEGMENT_EVENTS)
    return size


def bench_frames_s3(runs: int, events: int) -> list[Row]:
    server, opts = _moto()
    try:
        fs = _counting_fs(opts)
        _bucket(fs)
        prefix = f"runs-{uuid.uuid4().hex}"
        store = RunStore(fs=fs, root=f"{BUCKET}/{prefix}")
        _many_runs(store, _backend(), prefix, runs, events)
        # Both sides measured warm: pandas and pyarrow imported, s3fs session open (one run read first).
        from faber_runlog._services.resolve import run_ids

        store.events_frame(run_ids=[str(next(iter(run_ids(store.storage))))], progress=False)
        fs.calls.clear()
        ours = best_of(1, lambda: store.events_frame(progress=False))
        ours_req = sum(fs.calls.values())
        fs.calls.clear()
        old = best_of(1, lambda: _old_events_frame(store))
        old_req = sum(fs.calls.values())
        assert len(store.events_frame(progress=False)) == runs * events
    finally:
        server.stop()
    rate = rate_row(
        f"events_frame, {runs} active runs x {events} events on S3 (moto)",
        runs,
        ours,
        "previous approach (log.read per run, 16 threads)",
        old,
        "runs/s",
        5.0,
    )
    info = Row(
        f"  requests per run: ours vs previous ({runs} runs)",
        ours_req / runs,
        "previous",
        old_req / runs,
        "req",
        "",
        ours_req / old_req,
        None,
    )
    # Each event of a run shorter than a segment is its own object: one LIST and one GET per event is the floor.
    floor = Row(
        f"  requests per run: ours vs the floor for {events}-event runs",
        ours_req / runs,
        "1 LIST + 1 GET per event",
        1.0 + events,
        "req",
        "<= 1.05x",
        ours_req / runs / (1.0 + events),
        ours_req / runs <= (1.0 + events) * 1.05,
    )
    return [rate, info, floor]


_MEMORY_CHILD = r"""
import gc, json, sys, threading, time
import pandas, pyarrow, pyarrow.compute
from faber_runlog import RunStore
from faber_runlog._services.analysis import to_arrow, events_frame

def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

store = RunStore(sys.argv[1])
fn = to_arrow if sys.argv[2] == "arrow" else events_frame
fn(store, run_ids=[store.list_runs(limit=1)[0].run_id], progress=False)  # one-time set-up, not data
gc.collect()
base = peak = rss_kb()
done = False

def sample():  # the peak of the call itself (ru_maxrss would include the import peak)
    global peak
    while not done:
        peak = max(peak, rss_kb())
        time.sleep(0.002)

sampler = threading.Thread(target=sample)
sampler.start()
out = fn(store, progress=False)
done = True
sampler.join()
peak = max(peak, rss_kb())
print(json.dumps({"base_kb": base, "peak_kb": peak, "rows": len(out)}))
"""


def _fill_local_runs(root: Path, runs: int, events: int) -> int:
    store = RunStore(str(root))
    size = 0
    for _ in range(runs):
        run = store.create_run("bench", "mem")
        layout = RunLayout(RunId.parse(run.id))
        bodies = [orjson.dumps(d) for d in _event_dicts(run.id, events)]
        folder = root / layout.events
        for seq, body in enumerate(bodies, start=1):
            (folder / f"{seq:020d}.json").write_bytes(body)
        seg = root / layout.segments
        seg.mkdir(exist_ok=True)
        for first in range(1, events - SEGMENT_EVENTS + 2, SEGMENT_EVENTS):
            lines = [jsonl_line(b) for b in bodies[first - 1 : first - 1 + SEGMENT_EVENTS]]
            (root / layout.segment(first, first + SEGMENT_EVENTS - 1)).write_bytes(encode_segment(run.id, first, lines))
        size += sum(len(b) + 1 for b in bodies)
    return size


def bench_frame_memory(tmp: Path, runs: int, events: int) -> list[Row]:
    root = tmp / "frames-mem"
    size = _fill_local_runs(root, runs, events)
    rows = []
    for what, name in (("arrow", "to_arrow (events)"), ("pandas", "events_frame")):
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_CHILD, str(root), what], capture_output=True, text=True, check=True
        )
        got = json.loads(out.stdout.strip().splitlines()[-1])
        assert runs * events == got["rows"]
        peak = (got["peak_kb"] - got["base_kb"]) * 1024
        limit = 2.0 if what == "arrow" else None
        ratio = peak / size
        rows.append(
            Row(
                f"{name} peak RSS growth, {runs}x{events} events ({size / 1e6:.0f} MB jsonl)",
                peak / 1e6,
                "events' bytes",
                size / 1e6,
                "MB",
                "<= 2x" if limit else "",
                ratio,
                None if limit is None else ratio <= limit,
            )
        )
    return rows


def bench_s3_append_with_segments(n: int, k: int) -> Row:
    server, opts = _moto()
    try:
        fs = _counting_fs(opts)
        _bucket(fs)
        store = RunStore(fs=fs, root=f"{BUCKET}/runs-{uuid.uuid4().hex}", segment_every=k, snapshot_every=10**9)
        run = store.create_run("bench", "s3")
        run.log.emit("workflow_start")
        fs.calls.clear()
        for i in range(n):
            run.log.emit("step_start", phase="build", step=f"s{i % 5}", metadata={"attempt": 1})
        requests = sum(fs.calls.values())
    finally:
        server.stop()
    per = requests / n
    return Row(
        f"S3 requests per append with segments (K={k}, {n} appends, no snapshots)",
        per,
        f"1 PUT + 1/K segment PUT = {1 + 1 / k:.3f}",
        1 + 1 / k,
        "req",
        "<= 1.01x",
        per / (1 + 1 / k),
        per <= (1 + 1 / k) * 1.01,
    )


def run(*, quick: bool) -> list[Row]:
    tmp = Path(tempfile.mkdtemp(prefix="faber-bench-reads-"))
    try:
        rows = bench_s3_reads(10_000 if quick else 100_000)
        rows += bench_frames_s3(50 if quick else 500, 20)
        rows += bench_frame_memory(tmp, 20 if quick else 100, 1000 if quick else 3000)
        rows.append(bench_s3_append_with_segments(200 if quick else 1000, 100))
        return rows
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    from run import render

    print(render(run(quick="--quick" in sys.argv)))
