"""A progress bar on stderr for long batch jobs (archive, cleanup, bulk reads, frames, import); no dependency.

Shown only where someone watches: by default when stderr is a terminal, never
in a notebook's captured log or in CI. ``progress=True/False`` on the calling
API, or ``$FABER_RUNLOG_PROGRESS`` (``1``/``0``) when the parameter is left
out, switch it on or off. On a terminal it redraws one line in place; where
it is forced on without a terminal it writes a plain line every few seconds.
"""

from __future__ import annotations

import os
import sys
import time
from types import TracebackType
from typing import Final, TextIO

__all__ = ["PROGRESS_ENV", "Progress", "is_terminal", "progress_wanted"]

PROGRESS_ENV: Final = "FABER_RUNLOG_PROGRESS"
"""``1`` shows progress bars even without a terminal, ``0`` hides them; unset: only on a terminal."""

_ON: Final = frozenset({"1", "true", "yes", "on"})
_OFF: Final = frozenset({"0", "false", "no", "off", ""})
_WIDTH: Final = 24
_TTY_EVERY: Final = 0.1  # seconds between redraws on a terminal
_LOG_EVERY: Final = 5.0  # seconds between plain lines elsewhere


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal (False for closed or unusual streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def progress_wanted(*, progress: bool | None, stream: TextIO | None = None) -> bool:
    """Whether to draw: the explicit ``progress`` if given, else ``$FABER_RUNLOG_PROGRESS``, else a terminal check."""
    if progress is not None:
        return bool(progress)
    env = os.environ.get(PROGRESS_ENV)
    if env is not None:
        value = env.strip().lower()
        if value in _ON:
            return True
        if value in _OFF:
            return False
    return is_terminal(stream if stream is not None else sys.stderr)


class Progress:
    """``label [#####-----] done/total pct rate eta`` on stderr, redrawn at most ten times a second.

    ``enabled=None`` decides with :func:`progress_wanted`; disabled it does
    nothing, so callers never branch on it.
    """

    def __init__(self, label: str, total: int, *, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = total > 0 and progress_wanted(progress=enabled, stream=self._stream)
        self._tty = is_terminal(self._stream)
        self._last = 0.0
        self._drawn = False
        self._drawn_done = -1
        self._start = time.monotonic()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items done."""
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        every = _TTY_EVERY if self._tty else _LOG_EVERY
        if now - self._last >= every or (self._tty and self.done >= self.total):
            self._last = now
            self._render(now)

    def line(self, now: float | None = None) -> str:
        """The bar as text (without ``\\r`` or newline)."""
        now = time.monotonic() if now is None else now
        frac = min(1.0, self.done / self.total) if self.total else 1.0
        filled = round(frac * _WIDTH)
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 and self.done < self.total else 0.0
        eta = f" eta {_seconds(left)}" if self.done < self.total and self.done else ""
        return (
            f"{self.label} [{'#' * filled}{'-' * (_WIDTH - filled)}] {self.done}/{self.total} "
            f"{frac * 100:3.0f}% {rate:,.1f}/s{eta}"
        )

    def _render(self, now: float) -> None:
        text = self.line(now)
        if self._tty:
            self._stream.write(f"\r{text}\x1b[K")
        else:
            self._stream.write(text + "\n")
        self._stream.flush()
        self._drawn = True
        self._drawn_done = self.done

    def close(self) -> None:
        """Draw the final state and end the line (only if something was drawn, or it was forced on)."""
        if not self.enabled:
            return
        if self._tty:
            if self._drawn:
                self._render(time.monotonic())
                self._stream.write("\n")
                self._stream.flush()
        elif self._drawn_done != self.done:
            self._render(time.monotonic())

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s // 60:.0f}m{s % 60:02.0f}s"
    return f"{s // 3600:.0f}h{s % 3600 // 60:02.0f}m"
