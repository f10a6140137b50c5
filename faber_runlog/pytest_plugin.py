"""The pytest plugin of faber_runlog: fixtures for tools that log runs, loaded automatically.

Installing faber_runlog registers this module with pytest (the ``pytest11``
entry point ``faber_runlog``; ``-p no:faber_runlog`` turns it off). It offers:

* ``runlog_clock``: a :class:`faber_runlog.ManualClock`, which moves only when
  the test advances it (lease expiry, sweeps and waits without sleeping);
* ``runlog_store``: a fresh, isolated :class:`faber_runlog.RunStore` in memory
  reading time from ``runlog_clock``, removed after the test. Override the
  fixture in a ``conftest.py`` to run the same tests on a folder or a bucket.

Assert on what was logged with :func:`faber_runlog.testing.assert_events`; test
a storage backend by subclassing :class:`faber_runlog.testing.StorageContract`.
Every name starts with ``runlog_``, so the plugin's fixtures do not shadow a
project's own ``store`` or ``clock`` fixtures. Importing ``faber_runlog`` never
imports this module (nor pytest), and loading the plugin imports only
``faber_runlog``'s errors: the store is imported by the first fixture used.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from faber_runlog._base.clock import ManualClock
    from faber_runlog._services.store import RunStore

__all__ = ["runlog_clock", "runlog_store"]


@pytest.fixture
def runlog_clock() -> ManualClock:
    """A clock that moves only when the test says (``advance(seconds)``); shared with ``runlog_store``."""
    # Imported here, not when pytest loads the plugin: a session that uses no fixture imports nothing more.
    from faber_runlog._base.clock import ManualClock

    return ManualClock()


@pytest.fixture
def runlog_store(runlog_clock: ManualClock) -> Iterator[RunStore]:
    """A fresh, empty store in memory on ``runlog_clock``; nothing of it is left after the test."""
    import fsspec

    from faber_runlog._services.store import RunStore

    root = f"/runlog-{uuid.uuid4().hex}"
    yield RunStore(f"memory://{root}", clock=runlog_clock)
    memory = fsspec.filesystem("memory")
    if memory.exists(root):
        memory.rm(root, recursive=True)
