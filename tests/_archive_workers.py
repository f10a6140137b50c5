"""Worker process for archive concurrency tests (run as a script).

Usage: python _archive_workers.py archive SOURCE_SPEC_JSON DEST_SPEC_JSON RUN_ID
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

from faber_runlog import Archiver, RunStore


def _store(spec: dict[str, object]) -> RunStore:
    return RunStore(str(spec["url"]), storage_options=spec.get("storage_options") or None)  # type: ignore[arg-type]


if __name__ == "__main__":
    command, source, dest, run_id = sys.argv[1:]
    if command != "archive":
        raise SystemExit(f"unknown command {command}")
    result = Archiver(_store(json.loads(source)), _store(json.loads(dest)), progress=False).archive(run_id)
    print(result.outcome, flush=True)
