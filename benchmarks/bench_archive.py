"""Archiving finished runs to S3, and loading archived runs into a DataFrame.

A moto server runs in its own process (so it does not share our GIL). Rows:

* archive: ``Archiver.archive_many`` of N finished 200-event local runs
  (consolidation, upload, ETag verification, index, markers) vs a raw
  ``fs.put`` of the same uploaded files (already consolidated). Target >= 0.7x.
* events_frame: ``events_frame`` over the N archived runs (one LIST, concurrent
  GETs) vs reading each ``events.jsonl`` with sequential GETs and building the
  same frame. Target >= 5x. Straight against moto on a 2-core machine, moto's
  own CPU per request bounds what concurrency can win, so the row is repeated
  through a proxy that adds a fixed per-request latency (``LATENCY_S``, the
  order of a same-region S3 GET's first byte) to both sides alike: that is the
  row the target applies to, because it is the cost concurrency hides.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from _common import Row, rate_row

from faber_runlog import Archiver, Event, RunStore
from faber_runlog._base.codec import dumps, loads
from faber_runlog._domain.state import RunState, fold_all
from faber_runlog._format.layout import RunLayout, encode_snapshot, fingerprint

EVENTS_PER_RUN = 200
LATENCY_S = 0.02
TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"


def _moto() -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "import logging, time\nfrom moto.server import ThreadedMotoServer\n"
        "logging.getLogger('werkzeug').setLevel(logging.ERROR)\n"
        f"ThreadedMotoServer(ip_address='127.0.0.1', port={port}, verbose=False).start()\ntime.sleep(1e9)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(endpoint + "/moto-api/")
            break
        except OSError:  # not listening yet
            time.sleep(0.05)
    opts = {
        "client_kwargs": {"endpoint_url": endpoint},
        "key": "bench",
        "secret": "bench",
        "use_listings_cache": False,
        "skip_instance_cache": True,
    }
    return proc, opts


def _latency_proxy(upstream: str) -> tuple[subprocess.Popen[str], str]:
    """The test suite's fault proxy in its own process, delaying every request by LATENCY_S."""
    code = (
        f"import sys, time\nsys.path.insert(0, {str(TESTS_DIR)!r})\n"
        "from faultproxy import FaultProxy, match\n"
        f"p = FaultProxy({upstream!r}, delay={LATENCY_S}).start()\n"
        "p.always(match(), 'delay')\nprint(p.endpoint, flush=True)\ntime.sleep(1e9)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def _frames(archive: RunStore, fs: Any, ids: list[str]) -> tuple[float, float]:
    """Seconds for ``events_frame`` and for sequential GETs building the same frame."""
    import pandas as pd

    t = time.perf_counter()
    frame = archive.events_frame(progress=False)
    t_frame = time.perf_counter() - t
    assert len(ids) * EVENTS_PER_RUN == len(frame)  # every event; the seal is read but is not a row
    t = time.perf_counter()
    rows = []
    for rid in ids:
        body = fs.cat_file(f"bench/archive/{rid}/events.jsonl", max_concurrency=1)
        rows.extend(loads(line) for line in body.splitlines())
        seal = f"bench/archive/{rid}/events/{EVENTS_PER_RUN + 1:020d}.json"
        rows.append(loads(fs.cat_file(seal, max_concurrency=1)))
    peer_frame = pd.DataFrame(rows)
    peer_frame["timestamp"] = pd.to_datetime(peer_frame["timestamp"], utc=True, format="ISO8601")
    t_seq = time.perf_counter() - t
    assert len(frame) + len(ids) == len(peer_frame)  # the peer keeps the seals it read
    return t_frame, t_seq


def _make_runs(store: RunStore, n: int) -> list[str]:
    """``n`` finished runs of 200 events each, written straight through Storage."""
    ids = []
    for r in range(n):
        run = store.create_run("bench", "archive", params={"i": r})
        layout = RunLayout(run.run_id)
        events = []
        for i in range(1, EVENTS_PER_RUN + 1):
            etype = (
                "workflow_start"
                if i == 1
                else "workflow_complete"
                if i == EVENTS_PER_RUN
                else ("step_start" if i % 2 else "step_complete")
            )
            ev = {
                "event_id": i,
                "type": etype,
                "timestamp": f"2026-11-23T10:{i // 60:02d}:{i % 60:02d}.000000Z",
                "run_id": run.id,
                "phase": "build",
                "step": f"s{(i // 2) % 7}",
                "metadata": {"i": i},
                "schema_version": 1,
                "nonce": f"b-{i}",
            }
            if etype == "step_complete":
                ev["duration_ms"] = float(i)
            store.storage.create(layout.event(i), dumps(ev))
            events.append(ev)
        state = fold_all(RunState(run_id=run.id), (Event.from_dict(e) for e in events))
        fp = fingerprint(events[-1]["type"], events[-1]["timestamp"], events[-1].get("nonce"))
        store.storage.replace(layout.state, encode_snapshot(state.to_dict(), fp))
        ids.append(run.id)
    return ids


def run(*, quick: bool) -> list[Row]:
    n = 100 if quick else 1_000
    tmp = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    proc, opts = _moto()
    try:
        import s3fs

        fs = s3fs.S3FileSystem(**opts)
        fs.makedirs("bench", exist_ok=True)  # the suites share one moto server
        local = RunStore(str(tmp / "runs"), fsync=False)
        ids = _make_runs(local, n)
        archive = RunStore("s3://bench/archive", storage_options=opts)
        t = time.perf_counter()
        results = Archiver(local, archive, progress=True).archive_many(ids)
        t_ours = time.perf_counter() - t
        assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
        # What the archiver copies per run: metadata, state, events.jsonl, the seal's file, the marker.
        seals = {rid: local.get_run(rid).state().sealed_at or 0 for rid in ids}
        files = {rid: ("metadata.json", "state.json", "events.jsonl", f"events/{seals[rid]:020d}.json", "archived.json")
                 for rid in ids}  # fmt: skip  # one line per run's file list
        lpaths = [str(tmp / "runs" / rid / name) for rid in ids for name in files[rid]]
        rpaths = [f"bench/raw-{uuid.uuid4().hex[:6]}/{rid}/{name}" for rid in ids for name in files[rid]]
        t = time.perf_counter()
        fs.put(lpaths, rpaths)
        t_peer = time.perf_counter() - t

        t_frame, t_seq = _frames(archive, fs, ids)
        endpoint = opts["client_kwargs"]["endpoint_url"]
        proxy, slow_endpoint = _latency_proxy(endpoint)
        try:
            slow = dict(opts, client_kwargs={"endpoint_url": slow_endpoint})
            slow_archive = RunStore("s3://bench/archive", storage_options=slow)
            t_frame_slow, t_seq_slow = _frames(slow_archive, s3fs.S3FileSystem(**slow), ids)
        finally:
            proxy.kill()
            proxy.wait()
        return [
            rate_row(
                f"archive {n} runs x {EVENTS_PER_RUN} events local->S3 (moto)",
                n,
                t_ours,
                "raw fs.put of the same files",
                t_peer,
                "runs/s",
                0.7,
            ),
            rate_row(
                f"events_frame over {n} archived runs (moto direct)",
                n,
                t_frame,
                "sequential GET per run + DataFrame",
                t_seq,
                "runs/s",
                None,
            ),
            rate_row(
                f"events_frame over {n} archived runs (+{LATENCY_S * 1000:g} ms/request)",
                n,
                t_frame_slow,
                "sequential GET per run + DataFrame",
                t_seq_slow,
                "runs/s",
                5.0,
            ),
        ]
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    for row in run(quick="--quick" in sys.argv):
        print(row)
