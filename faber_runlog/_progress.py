"""A tiny stderr progress line for long batch jobs (archiving, loading frames); no dependency."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """``label: done/total`` rewritten in place on stderr, at most ten times a second.

    Disabled (``enabled=False``) it does nothing, so callers never branch on it.
    """

    def __init__(self, label: str, total: int, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.enabled = enabled and total > 0
        self._stream = stream if stream is not None else sys.stderr
        self._last = 0.0
        self._start = time.monotonic()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items done."""
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= 0.1 or self.done >= self.total:
            self._last = now
            self._render(now)

    def _render(self, now: float) -> None:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        rate = self.done / max(now - self._start, 1e-9)
        self._stream.write(f"\r{self.label}: {self.done}/{self.total} ({pct:.0f}%, {rate:,.0f}/s)")
        self._stream.flush()

    def close(self) -> None:
        """End the line (only if something was drawn)."""
        if self.enabled and self._last:
            self._render(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
