"""LogCaches: what a writer writes besides its events, the caches that make reads cheap.

Segments (events ``first..last`` in one object, written by the writer that claims ``last``),
``state.json`` with now and then an older snapshot, and ``summary.json`` for listings. Each is
a cache (docs/concurrency.md): readers check it before use, and a failure to write one is logged
and costs reads later, never an error (protocol rule 5). The policy (when a snapshot is due, how
many older ones are kept, which bodies a writer remembers for its segment) lives here; the append
path in ``eventlog`` calls it after a number is claimed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from faber_runlog._domain.state import RunDigest, RunState
from faber_runlog._format.layout import (
    SNAPSHOTS_KEPT,
    encode_segment,
    encode_snapshot,
    encode_summary,
    jsonl_line,
    parse_seq_name,
)
from faber_runlog._log.reader import LogReader
from faber_runlog.errors import CorruptEvent

__all__ = ["LogCaches"]

# One logger for the whole log (reads, caches, bulk reads, appends): the name users and docs configure.
log = logging.getLogger("faber_runlog._log.eventlog")

_OLDER_SPACING: Final = 4  # an older snapshot at most every this many K events (see _keep_older)


class LogCaches(LogReader):
    """The writer's cache policy: segments, snapshots and summaries (a base of :class:`EventLog`)."""

    if TYPE_CHECKING:  # declared for the type checker only, as in LogReader
        _snapshot_every: int
        _listing: dict[str, Any] | None  # what listings show of the run's metadata, carried in each summary
        _own: dict[int, bytes]  # bodies this writer created since the last segment boundary
        _event_bytes: float  # the mean size of the events this writer appended
        _state_fp: str | None  # fingerprint of the writer state's last event
        _older_at: int | None  # the newest older snapshot this handle's last listing of snapshots/ showed

    def _keep_own(self, seq: int, body: bytes) -> None:
        """Remember our event for the segment of its range; the claimer of a boundary writes that segment."""
        k = self._segment_every
        # Our claims only grow, so the first key is the smallest (min() would cost O(K) per append).
        if self._own and next(iter(self._own)) <= seq - k:  # ranges already closed (by us or by others)
            self._own = {s: b for s, b in self._own.items() if s > (seq - 1) // k * k}
        self._own[seq] = body
        if seq % k == 0:
            self._write_segment(seq)

    def _write_segment(self, last: int) -> None:
        """Write the segment of events ``last - K + 1 .. last`` (protocol rule 12).

        Failures cost reads later, never an error.
        """
        first = max(1, last - self._segment_every + 1)
        try:
            bodies = {s: self._own[s] for s in range(first, last + 1) if s in self._own}
            missing = [s for s in range(first, last + 1) if s not in bodies]
            if missing:  # other writers' events: read them (from the immutable files, never from a cache)
                found = self._storage.read_many(self._layout.event(s) for s in missing)
                for s in missing:
                    b = found[self._layout.event(s)]
                    if b is None:
                        raise CorruptEvent(
                            f"event {s} of run {self._run_id} is missing",
                            run_id=self._run_id,
                            seq=s,
                            path=self._storage.path(self._layout.event(s)),
                        )
                    self._decode(s, b)  # a damaged file is never copied into a segment
                    bodies[s] = b
            lines = [jsonl_line(bodies[s]) for s in range(first, last + 1)]
            self._storage.create(self._layout.segment(first, last), encode_segment(self._run_id, first, lines))
        except Exception as e:  # noqa: BLE001  (a segment is a cache: not writing it costs reads)
            log.warning("segment %d..%d of run %s not written (reads cost more): %s", first, last, self._run_id, e)
        finally:
            self._own = {s: b for s, b in self._own.items() if s > last}

    def _snapshot_due(self, seq: int) -> bool:
        """Whether event ``seq`` should be followed by a full snapshot.

        On multiples of ``snapshot_every``, and only once the events appended
        since the last snapshot hold at least as many bytes as that snapshot:
        the snapshot bytes written per append then never exceed the event bytes
        however large the state grows, and a fresh open folds at most a
        snapshot's worth of events after reading it (docs/concurrency.md).
        """
        if seq % self._snapshot_every:
            return False
        return (seq - self._snap_seq) * self._event_bytes >= self._snap_size

    def _write_summary(self, state: RunState) -> None:
        """Write ``summary.json`` for ``state`` (listings read it). Failures cost time only."""
        try:
            digest = RunDigest.of(state, self._state_fp, self._listing)
            self._storage.replace_cache(self._layout.summary, encode_summary(digest.to_dict()))
        except Exception as e:  # noqa: BLE001  (a summary is a cache: not writing it costs a fold)
            log.warning("summary of run %s at event %d not written: %s", self._run_id, state.last_event_id, e)

    def _write_snapshot(self, state: RunState, *, periodic: bool) -> None:
        """Write ``state.json`` (and now and then an older snapshot, pruning the oldest). Failures cost time only.

        Periodic snapshots leave the summary alone: the run is active, so the
        next event makes any summary stale; a listing then starts its fold here.
        """
        seq = state.last_event_id
        try:
            body = encode_snapshot(state.to_dict(), self._state_fp)
            self._storage.replace_cache(self._layout.state, body)
            self._snap_seq, self._snap_size = seq, len(body)
            if periodic:
                self._keep_older(seq, body)
        except Exception as e:  # noqa: BLE001  (a snapshot is a cache: not writing it costs a longer fold)
            log.warning("snapshot of run %s at event %d not written: %s", self._run_id, seq, e)

    def _keep_older(self, seq: int, body: bytes) -> None:
        """Keep ``body`` as the older snapshot at ``seq`` when the newest one is far enough back; prune the rest.

        Decided from one listing of ``snapshots/``, never from what this handle
        remembers, so "at most ``SNAPSHOTS_KEPT`` older snapshots, at least
        ``_OLDER_SPACING`` x K events apart" holds across handles and processes:
        each one that writes a periodic snapshot prunes what others left behind
        (two racing at once may leave one extra until the next periodic snapshot).
        Listed only when a keep may be due: while the newest older snapshot this handle last
        listed is less than a spacing back, none is (others only ever add newer ones), so three
        periodic snapshots in four cost no LIST (a single writer on S3: 1.02 requests per event).
        """
        spacing = _OLDER_SPACING * self._snapshot_every
        known = self._older_at
        if known is not None and seq - known < spacing:
            return
        listed = sorted(
            n for n in (parse_seq_name(name) for name in self._storage.list_names(self._layout.snapshots)) if n
        )
        taken = [n for n in listed if n < seq]
        if not taken or seq - taken[-1] >= spacing:
            self._storage.replace_cache(self._layout.snapshot(seq), body)
            taken.append(seq)
        taken += [n for n in listed if n > seq]  # written meanwhile by a handle further on
        kept: list[int] = []
        for n in taken:  # oldest first: keep those at least one spacing after the last kept
            if not kept or n - kept[-1] >= spacing:
                kept.append(n)
        kept = kept[-SNAPSHOTS_KEPT:]
        for n in taken:
            if n not in kept:
                self._storage.delete(self._layout.snapshot(n))
        self._older_at = kept[-1] if kept else None
