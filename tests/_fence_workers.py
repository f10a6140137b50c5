"""A leased writer in its own process, driven line by line on stdin (for tests/test_fence_order.py).

Usage: python _fence_workers.py SPEC_JSON RUN_ID TTL
Commands (one per line): ``emit`` appends a checkpoint; ``emit_stop`` does the same but stops this
process (SIGSTOP) right after its lease check, before its claim: the worst moment to stall. Each
command answers one JSON line: ``{"acknowledged": n, "epoch": e}`` or ``{"refused": "<error class>"}``.
"""

from __future__ import annotations

import json
import os
import signal
import sys

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

from faber_runlog import EventLog, FaberRunlogError, RunStore
from faber_runlog._base.ids import RunId
from faber_runlog._log.eventlog import with_hooks
from faber_runlog._log.hooks import LogHooks
from faber_runlog._log.lease import acquire_lease
from faber_runlog._log.lease import fence as lease_fence


def main() -> None:
    spec, run_id, ttl = json.loads(sys.argv[1]), RunId.parse(sys.argv[2]), float(sys.argv[3])
    store = RunStore(spec["url"], storage_options=spec.get("storage_options") or None)
    stop = {"now": False}

    class Fence(LogHooks[EventLog]):
        def fence(self) -> int | None:
            epoch = lease_fence(store.storage, run_id)
            if stop["now"]:
                stop["now"] = False
                os.kill(os.getpid(), signal.SIGSTOP)  # stalled past the lease check, before the claim
            return epoch

    log = with_hooks(EventLog(store.storage, run_id), Fence())
    lease = acquire_lease(store.storage, run_id, ttl=ttl, owner="stalled-writer")
    print(json.dumps({"epoch": lease.epoch}), flush=True)
    for line in sys.stdin:
        stop["now"] = line.strip() == "emit_stop"
        try:
            ev = log.emit("checkpoint", metadata={"label": line.strip()})
            out: dict[str, object] = {"acknowledged": ev.event_id, "epoch": ev.lease_epoch}
        except FaberRunlogError as e:
            out = {"refused": type(e).__name__}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
