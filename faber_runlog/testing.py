"""A contract test kit for storage backends: run it against your own store.

faber_runlog's guarantees rest on two primitives. Exclusive create numbers the
events; compare-and-swap fences the leases. A store that accepts the
conditional headers and ignores them breaks both silently, so these checks
write to the store and look at what it really did::

    from faber_runlog import RunStore
    from faber_runlog.testing import check_storage

    store = RunStore("s3://my-bucket/faber-contract", storage_options={...})
    check_storage(store.storage)  # raises ContractViolation naming what failed

Each check uses fresh keys under ``.faber_runlog/contract/`` and removes them
afterwards. A check that needs a capability the backend does not declare
(see :class:`faber_runlog._storage.Capabilities`) is skipped and named in the
returned list, so the same call works for every backend.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator

from faber_runlog._storage import INTERNAL_DIR, Storage
from faber_runlog.errors import FaberRunlogError

__all__ = [
    "ContractViolation",
    "check_compare_and_swap",
    "check_conditional_create",
    "check_conditional_delete",
    "check_racing_creates",
    "check_storage",
]

_DIR = f"{INTERNAL_DIR}/contract"


class ContractViolation(FaberRunlogError, AssertionError):
    """A storage backend did not do what its capabilities promise; the message says what it did instead."""


def _key(name: str) -> str:
    return f"{_DIR}/{name}-{uuid.uuid4().hex}"


def _body(label: str) -> bytes:
    # Unique bytes: identical bodies would share a version token (and an ETag).
    return f'{{"probe":"{label}","nonce":"{uuid.uuid4().hex}"}}'.encode()


def _expect(ok: bool, storage: Storage, what: str) -> None:  # noqa: FBT001  (the condition checked, as assert's operand)
    if not ok:
        raise ContractViolation(f"{storage!r}: {what}")


def _cleanup(storage: Storage, key: str) -> None:
    try:
        got = storage.read_versioned(key)
        if got is not None:
            storage.delete_if(key, got.version)
    except Exception:  # noqa: BLE001  (cleanup after a contract check: the check's own answer stands)
        pass


@contextlib.contextmanager
def _scratch(storage: Storage, name: str) -> Iterator[str]:
    """A fresh key for one check, removed afterwards whatever the check found."""
    key = _key(name)
    try:
        yield key
    finally:
        _cleanup(storage, key)


def check_conditional_create(storage: Storage) -> None:
    """A create of an absent key succeeds once; a second create fails and leaves the first body."""
    first, second = _body("first"), _body("second")
    with _scratch(storage, "create") as key, _scratch(storage, "create-v") as versioned_key:
        _expect(storage.create(key, first), storage, f"create of absent key {key} reported that it existed")
        _expect(not storage.create(key, second), storage, f"a second create of {key} succeeded (If-None-Match ignored)")
        _expect(first == storage.read(key), storage, f"a refused create of {key} changed its body")
        version = storage.create_versioned(versioned_key, _body("v"))
        _expect(version is not None, storage, "create_versioned of an absent key returned no version")


def check_compare_and_swap(storage: Storage) -> None:
    """A swap on the current version succeeds; a swap on a stale version or on a missing key fails."""
    with _scratch(storage, "cas") as key, _scratch(storage, "cas-missing") as missing:
        v1 = storage.create_versioned(key, _body("v1"))
        _expect(v1 is not None, storage, f"create_versioned of {key} failed")
        assert v1 is not None
        got = storage.read_versioned(key)
        _expect(got is not None and got.version == v1, storage, f"read_versioned of {key} gave another version")
        b2 = _body("v2")
        v2 = storage.swap(key, b2, v1)
        _expect(v2 is not None and v2 != v1, storage, f"a swap of {key} on its current version failed")
        stale = storage.swap(key, _body("v3"), v1)
        _expect(stale is None, storage, f"a swap of {key} on a stale version succeeded (If-Match ignored)")
        _expect(b2 == storage.read(key), storage, f"a refused swap of {key} changed its body")
        _expect(storage.swap(missing, _body("x"), v1) is None, storage, "a swap of a missing key created it")


def check_conditional_delete(storage: Storage) -> None:
    """A delete on a stale version fails and keeps the key; on the current version it removes it."""
    with _scratch(storage, "delete") as key:
        v1 = storage.create_versioned(key, _body("v1"))
        assert v1 is not None
        v2 = storage.swap(key, _body("v2"), v1)
        assert v2 is not None
        _expect(not storage.delete_if(key, v1), storage, f"a delete of {key} on a stale version succeeded")
        _expect(storage.exists(key), storage, f"a refused delete of {key} removed it")
        _expect(storage.delete_if(key, v2), storage, f"a delete of {key} on its current version failed")
        _expect(not storage.exists(key), storage, f"{key} is still there after its delete")


def check_racing_creates(storage: Storage, writers: int = 8) -> None:
    """``writers`` threads create one key at once: exactly one succeeds."""
    wins: list[bool] = []
    gate = threading.Barrier(writers)
    with _scratch(storage, "race") as key:

        def one() -> None:
            body = _body("race")
            gate.wait()
            wins.append(storage.create(key, body))

        threads = [threading.Thread(target=one) for _ in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _expect(1 == sum(wins), storage, f"{sum(wins)} of {writers} racing creates of {key} succeeded, not 1")


def check_storage(storage: Storage) -> list[str]:
    """Run every check the backend's capabilities call for; returns the names of those skipped."""
    caps = storage.capabilities
    checks: list[tuple[str, bool, Callable[[Storage], None]]] = [
        ("conditional_create", caps.conditional_create, check_conditional_create),
        ("racing_creates", caps.conditional_create, check_racing_creates),
        ("compare_and_swap", caps.compare_and_swap, check_compare_and_swap),
        ("conditional_delete", caps.conditional_delete, check_conditional_delete),
    ]
    skipped: list[str] = []
    for name, wanted, check in checks:
        if wanted:
            check(storage)
        else:
            skipped.append(name)
    return skipped
