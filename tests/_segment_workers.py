"""Worker processes for the segment tests (run as a script).

Usage: python _segment_workers.py COMMAND SPEC_JSON RUN_ID SEGMENT_EVERY ...
"""

from __future__ import annotations

import json
import os
import signal
import sys

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

from faber_runlog import RunStore


def _store(spec: dict[str, object], k: int) -> RunStore:
    opts = spec.get("storage_options") or None
    return RunStore(str(spec["url"]), storage_options=opts, segment_every=k)  # type: ignore[arg-type]


def append(spec: dict[str, object], run_id: str, k: int, count: int, tag: str) -> None:
    """Append ``count`` checkpoints (segments written at each boundary this writer claims)."""
    run = _store(spec, k).get_run(run_id)
    for i in range(count):
        run.log.emit("checkpoint", metadata={"label": f"{tag}-{i}", "worker": tag})
    print("done", flush=True)


def die_in_segment(spec: dict[str, object], run_id: str, k: int) -> None:
    """Append until the first segment write, which gets half its bytes stored; then SIGKILL this process."""
    store = _store(spec, k)
    storage = store.storage
    create = storage.create

    def torn_create(key: str, data: bytes) -> bool:
        if "/segments/" in key:
            storage.replace(key, data[: len(data) // 2])  # as far as the write got on a non-atomic backend
            print("dying", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return create(key, data)

    storage.create = torn_create  # type: ignore[method-assign]
    run = store.get_run(run_id)
    for i in range(2 * k):
        run.log.emit("checkpoint", metadata={"label": f"w-{i}"})


if __name__ == "__main__":
    command, spec_json, rid, every, *rest = sys.argv[1:]
    spec = json.loads(spec_json)
    if command == "append":
        append(spec, rid, int(every), int(rest[0]), rest[1])
    elif command == "die_in_segment":
        die_in_segment(spec, rid, int(every))
    else:
        raise SystemExit(f"unknown command {command}")
