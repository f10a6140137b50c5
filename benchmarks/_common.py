"""Shared pieces of the benchmark suite: a result row and a timer."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One line of the table: our figure next to its limit or peer, and the ratio."""

    name: str
    ours: float
    peer_name: str
    peer: float
    unit: str
    target: str  # e.g. ">= 0.8x" (ratio ours/peer, higher is better) or "" for info rows
    ratio: float
    ok: bool | None  # None: informational, no target


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    """Fastest wall time of ``repeats`` calls (shared machines are noisy)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def rate_row(
    name: str, n: int, ours_s: float, peer_name: str, peer_s: float, unit: str, min_ratio: float | None
) -> Row:
    """A throughput row: n items in ours_s vs peer_s seconds, ratio = ours rate / peer rate."""
    ours = n / ours_s
    peer = n / peer_s
    ratio = ours / peer
    ok = None if min_ratio is None else ratio >= min_ratio
    target = "" if min_ratio is None else f">= {min_ratio:g}x"
    return Row(name, ours, peer_name, peer, unit, target, ratio, ok)
