"""Where each file of a run lives under the store root (one place, no I/O)."""

from __future__ import annotations

from typing import Final

from faber_runlog.ids import RunId

__all__ = ["SEQ_WIDTH", "RunLayout", "seq_name"]

SEQ_WIDTH: Final = 20
"""Zero-padding of event file names, so names sort numerically for ever."""

SNAPSHOT_DIR: Final = "snapshots"


def seq_name(seq: int) -> str:
    """The file name of event ``seq``: ``00000000000000000042.json``."""
    return f"{seq:0{SEQ_WIDTH}d}.json"


def parse_seq_name(name: str) -> int | None:
    """The sequence number of an event file name, or None for anything else."""
    if len(name) == SEQ_WIDTH + 5 and name.endswith(".json") and name[:SEQ_WIDTH].isdigit():
        return int(name[:SEQ_WIDTH])
    return None


class RunLayout:
    """Keys of one run's files, relative to the store root."""

    __slots__ = ("_prefix", "children", "dir", "events", "jsonl", "metadata", "snapshots", "state")

    def __init__(self, run_id: RunId) -> None:
        self.dir = str(run_id)
        self.metadata = f"{self.dir}/metadata.json"
        self.state = f"{self.dir}/state.json"
        self.events = f"{self.dir}/events"
        self.jsonl = f"{self.dir}/events.jsonl"
        self.children = f"{self.dir}/children"
        self.snapshots = f"{self.dir}/{SNAPSHOT_DIR}"
        self._prefix = self.events + "/"

    def event(self, seq: int) -> str:
        """Key of event ``seq``."""
        return f"{self._prefix}{seq:0{SEQ_WIDTH}d}.json"

    def snapshot(self, seq: int) -> str:
        """Key of the historical snapshot taken after event ``seq``."""
        return f"{self.snapshots}/{seq:0{SEQ_WIDTH}d}.json"
