"""Time, injected: the wall clock and the monotonic clock a store reads, and how it waits.

Everything that decides by time (lease expiry, a holder's trust in its lease,
the sweep, the writer's wait after losing a race, its time budget) asks the
store's clock, so tests can skew or simulate it instead of sleeping. Safety
never depends on it: fencing is decided by the log's order (docs/concurrency.md).
"""

from __future__ import annotations

import datetime as _dt
import threading
import time
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "ManualClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """What a store reads time from: ``now()`` (aware UTC), ``monotonic()`` seconds and ``sleep()``."""

    def now(self) -> _dt.datetime:
        """The current wall-clock time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never go back (for durations and deadlines)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...


class SystemClock:
    """The real clocks; ``offset`` seconds are added to the wall clock (to test a host whose clock is off)."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = float(offset)
        self._delta = _dt.timedelta(seconds=self.offset)

    def __repr__(self) -> str:
        return f"SystemClock(offset={self.offset:g})" if self.offset else "SystemClock()"

    def now(self) -> _dt.datetime:
        """The wall clock (plus ``offset``)."""
        moment = _dt.datetime.now(_dt.UTC)
        return moment + self._delta if self.offset else moment

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """``time.sleep()``."""
        if seconds > 0:
            time.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
"""The default clock of every store."""


class ManualClock:
    """A clock that moves only when told: ``advance(seconds)``, or ``sleep()`` (which advances it).

    For tests: a store built with ``RunStore(clock=ManualClock())`` sees time
    pass only as the test says, so lease expiry and skew are tested without sleeping.
    """

    def __init__(self, start: _dt.datetime | None = None) -> None:
        self._start = start if start is not None else _dt.datetime.now(_dt.UTC)
        self._elapsed = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ManualClock(at {self.now().isoformat()})"

    def now(self) -> _dt.datetime:
        """The start time plus the seconds advanced so far."""
        return self._start + _dt.timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        """The seconds advanced so far."""
        return self._elapsed

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        with self._lock:
            self._elapsed += max(0.0, seconds)

    def sleep(self, seconds: float) -> None:
        """Advance the clock by ``seconds`` at once (nothing waits)."""
        self.advance(seconds)
