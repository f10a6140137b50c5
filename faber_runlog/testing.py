"""Test kits: the storage and log contract for backend authors, event assertions for tool authors.

faber_runlog's guarantees rest on two primitives. Exclusive create numbers the
events; compare-and-swap fences the leases. A store that accepts the
conditional headers and ignores them breaks both silently, so these checks
write to the store and look at what it really did.

**Backend authors** subclass :class:`StorageContract` in a test module and
return a fresh storage from ``make_storage``; pytest then runs the whole
contract the log relies on against it (the class the library's own memory,
local and S3 backends pass)::

    import uuid

    from fsspec.implementations.memory import MemoryFileSystem

    from faber_runlog import Storage
    from faber_runlog.testing import StorageContract


    class TestMyBackend(StorageContract):
        def make_storage(self) -> Storage:
            return Storage(MemoryFileSystem(), f"/contract-{uuid.uuid4().hex}")

Outside a test runner, :func:`check_storage` runs the conditional-write checks
once against a live store (it raises :class:`ContractViolation` naming what
failed)::

    from faber_runlog import RunStore
    from faber_runlog.testing import check_storage

    store = RunStore("s3://my-bucket/faber-contract", storage_options={...})
    check_storage(store.storage)

**Tool authors** assert on what their code logged with :func:`assert_events`,
and give code that reads runs a run with history in one call (:func:`log_steps`);
the pytest plugin (``faber_runlog.pytest_plugin``, loaded automatically once
faber_runlog is installed) gives them a fresh store and a manual clock.

Failures raise :class:`ContractViolation` or :class:`UnexpectedEvents`: real
exceptions (``AssertionError`` subclasses), not ``assert`` statements, so
``python -O`` does not remove them. This module does not import pytest.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import unittest
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from faber_runlog._domain.events import Event
from faber_runlog._log.eventlog import EventLog
from faber_runlog._services.store import Run, RunStore
from faber_runlog._storage.backends import INTERNAL_DIR, Storage
from faber_runlog.errors import ConfigurationError, FaberRunlogError, InvalidArgument, UnsafePath

if TYPE_CHECKING:
    from faber_runlog._storage.backends import Capabilities

__all__ = [
    "ContractViolation",
    "StorageContract",
    "UnexpectedEvents",
    "assert_events",
    "check_compare_and_swap",
    "check_conditional_create",
    "check_conditional_delete",
    "check_racing_creates",
    "check_storage",
    "log_steps",
]

_DIR = f"{INTERNAL_DIR}/contract"


class ContractViolation(FaberRunlogError, AssertionError):
    """A storage backend did not do what its capabilities promise; the message says what it did instead."""


class UnexpectedEvents(FaberRunlogError, AssertionError):
    """The events of a run are not the ones :func:`assert_events` expected; the message shows both, side by side."""


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
    """A create of an absent key succeeds once; a second create fails and leaves the first body.

    ``claim`` is ``create`` that may leave a taken key unsettled: True only for the call that created
    it, False or None (unsettled) for a taken one, which it leaves as it was.
    """
    first, second = _body("first"), _body("second")
    with (
        _scratch(storage, "create") as key,
        _scratch(storage, "create-v") as versioned_key,
        _scratch(storage, "claim") as claimed,
    ):
        _expect(storage.create(key, first), storage, f"create of absent key {key} reported that it existed")
        _expect(not storage.create(key, second), storage, f"a second create of {key} succeeded (If-None-Match ignored)")
        _expect(first == storage.read(key), storage, f"a refused create of {key} changed its body")
        _expect(storage.claim(claimed, first) is True, storage, f"a claim of absent key {claimed} did not create it")
        _expect(storage.claim(claimed, second) is not True, storage, f"a second claim of {claimed} succeeded")
        _expect(first == storage.read(claimed), storage, f"a refused claim of {claimed} changed its body")
        version = storage.create_versioned(versioned_key, _body("v"))
        _expect(version is not None, storage, "create_versioned of an absent key returned no version")


def _created_version(storage: Storage, key: str, label: str) -> str:
    version = storage.create_versioned(key, _body(label))
    if version is None:
        raise ContractViolation(f"{storage!r}: create_versioned of the absent key {key} returned no version")
    return version


def check_compare_and_swap(storage: Storage) -> None:
    """A swap on the current version succeeds; a swap on a stale version or on a missing key fails."""
    with _scratch(storage, "cas") as key, _scratch(storage, "cas-missing") as missing:
        v1 = _created_version(storage, key, "v1")
        got = storage.read_versioned(key)
        _expect(got is not None and got.version == v1, storage, f"read_versioned of {key} gave another version")
        b2 = _body("v2")
        v2 = storage.swap(key, b2, v1)
        _expect(v2 is not None and v2 != v1, storage, f"a swap of {key} on its current version failed")
        stale = storage.swap(key, _body("v3"), v1)
        _expect(stale is None, storage, f"a swap of {key} on a stale version succeeded (If-Match ignored)")
        _expect(b2 == storage.read(key), storage, f"a refused swap of {key} changed its body")
        _expect(storage.swap(missing, _body("x"), v1) is None, storage, "a swap of a missing key created it")
        _expect(not storage.exists(missing), storage, f"a refused swap of the missing key {missing} created it")


def check_conditional_delete(storage: Storage) -> None:
    """A delete on a stale version fails and keeps the key; on the current version it removes it."""
    with _scratch(storage, "delete") as key:
        v1 = _created_version(storage, key, "v1")
        v2 = storage.swap(key, _body("v2"), v1)
        if v2 is None:
            raise ContractViolation(f"{storage!r}: a swap of {key} on its current version failed")
        _expect(not storage.delete_if(key, v1), storage, f"a delete of {key} on a stale version succeeded")
        _expect(storage.exists(key), storage, f"a refused delete of {key} removed it")
        _expect(storage.delete_if(key, v2), storage, f"a delete of {key} on its current version failed")
        _expect(not storage.exists(key), storage, f"{key} is still there after its delete")


def check_racing_creates(storage: Storage, writers: int = 8) -> None:
    """``writers`` threads create one key at once: exactly one succeeds."""
    wins: list[bool] = []
    gate = threading.Barrier(writers)
    with _scratch(storage, "race") as key:

        def one(i: int) -> None:
            body = _body("race")
            gate.wait()
            # Half create, half claim (the event log's call): one of them, and only one, created the key.
            wins.append(storage.create(key, body) if i % 2 else storage.claim(key, body) is True)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _expect(1 == sum(wins), storage, f"{sum(wins)} of {writers} racing creates of {key} succeeded, not 1")


def check_storage(storage: Storage) -> list[str]:
    """Probe the backend, then run every check its capabilities call for; returns the names of those skipped."""
    caps = storage.probe()
    checks: list[tuple[str, bool | None, Callable[[Storage], None]]] = [
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


# -- the contract class ---------------------------------------------------------------------------

_ESCAPING_KEYS: tuple[str, ...] = (
    "../escape",
    "a/../../escape",
    "/etc/passwd",
    "a//b",
    "a/./b",
    "",
    "a\\..\\b",
    "a/\x00",
)


class StorageContract:
    """The storage and log contract as test methods: subclass it, name the subclass ``Test...``, give a storage.

    ``make_storage()`` returns a fresh :class:`Storage` (a new root, or a new
    prefix of a bucket) each time it is called; every test method calls it
    once. pytest (or any runner that collects ``test_*`` methods of ``Test*``
    classes) then runs, against that backend:

    * storage: exclusive create and racing creates, compare-and-swap and
      conditional delete where the backend declares them, atomic ``replace``,
      ``read`` / ``read_many`` / ``read_numbered``, ``exists``, ``delete``,
      ``put_many``, sorted listings with limits and ``list_after``, exact
      ``size`` and ``sizes_after`` (protocol rule 21 reads their parity), refusing
      keys that would leave the root, and capabilities that the probe only
      ever confirms (nothing reported before the first write is taken back);
    * the log: appends through a :class:`RunStore` on the storage are gapless
      and read back from a second store, and concurrent appends from threads
      leave each event exactly once.

    A test whose capability the backend does not declare is skipped
    (``unittest.SkipTest``, which pytest reports as a skip). Failures raise
    :class:`ContractViolation` naming what the store did. The sizes are class
    attributes, so a slow backend can run a smaller contract.
    """

    racing_writers: ClassVar[int] = 8
    """Threads that create one key at once (exactly one may win)."""
    append_threads: ClassVar[int] = 4
    """Threads appending to one run at once, each through its own store on the storage."""
    appends_per_thread: ClassVar[int] = 5
    """Events each of those threads appends."""

    def make_storage(self) -> Storage:
        """A fresh, empty storage of the backend under test (override this)."""
        raise ConfigurationError(
            f"{type(self).__name__} must define make_storage(self) -> Storage, returning a fresh storage "
            "of the backend under test"
        )

    # -- helpers (not collected: no test_ prefix) ---------------------------------------------------

    def contract_storage(self) -> Storage:
        """``make_storage()``, checked to be a :class:`Storage`."""
        storage = self.make_storage()
        if not isinstance(storage, Storage):
            raise ConfigurationError(
                f"{type(self).__name__}.make_storage() must return a faber_runlog.Storage, got {type(storage).__name__}"
            )
        return storage

    def contract_folder(self) -> str:
        """A folder no other test uses, under the store's own ``.faber_runlog/`` (outside run listings)."""
        return f"{_DIR}/{uuid.uuid4().hex}"

    @staticmethod
    def requires(storage: Storage, capability: str) -> None:
        """Skip the calling test unless ``storage`` has ``capability`` once probed."""
        caps = storage.probe()
        if not getattr(caps, capability):
            raise unittest.SkipTest(f"{storage!r} does not declare {capability}")

    # -- exclusive create --------------------------------------------------------------------------

    def test_create_is_exclusive_and_keeps_the_first_body(self) -> None:
        """A second create of a key fails and leaves the first body; an empty body is refused."""
        storage = self.contract_storage()
        self.requires(storage, "conditional_create")
        check_conditional_create(storage)
        key = f"{self.contract_folder()}/empty.json"
        try:
            storage.create(key, b"")
        except InvalidArgument:
            pass
        else:
            raise ContractViolation(f"{storage!r}: a create of an empty body was accepted (stores overwrite on those)")
        _expect(not storage.exists(key), storage, f"a refused empty create made {key}")

    def test_racing_creates_have_one_winner(self) -> None:
        """``racing_writers`` threads create one key at once: exactly one succeeds."""
        storage = self.contract_storage()
        self.requires(storage, "conditional_create")
        check_racing_creates(storage, self.racing_writers)

    # -- compare-and-swap and conditional delete --------------------------------------------------

    def test_compare_and_swap_refuses_a_stale_version(self) -> None:
        """A swap on the current version succeeds; one on a stale version or a missing key writes nothing."""
        storage = self.contract_storage()
        self.requires(storage, "compare_and_swap")
        check_compare_and_swap(storage)

    def test_conditional_delete_refuses_a_stale_version(self) -> None:
        """A delete on a stale version keeps the key; one on the current version removes it."""
        storage = self.contract_storage()
        self.requires(storage, "conditional_delete")
        check_conditional_delete(storage)

    # -- reads, writes, listings -------------------------------------------------------------------

    def test_replace_is_atomic_for_readers(self) -> None:
        """Readers racing ``replace`` see the old body or the new one, never a mix; a missing key reads None."""
        storage = self.contract_storage()
        key = f"{self.contract_folder()}/state.json"
        bodies = [bytes([ord("a") + i]) * 4096 for i in range(3)]
        storage.replace(key, bodies[0])
        seen: list[bytes | None] = []
        done = threading.Event()

        def read_until_done() -> None:
            while not done.is_set() and len(seen) < 200:
                seen.append(storage.read(key))

        reader = threading.Thread(target=read_until_done)
        reader.start()
        try:
            for i in range(1, 7):
                storage.replace(key, bodies[i % 3])
        finally:
            done.set()
            reader.join()
        torn = {len(b or b"") for b in seen if b not in bodies}
        _expect(not torn, storage, f"a reader racing replace of {key} read a body that was never written")
        _expect(bodies[0] == storage.read(key), storage, f"{key} does not hold the last body replaced")
        _expect(storage.read(f"{key}.missing") is None, storage, "a read of a missing key did not return None")

    def test_read_many_returns_each_key_and_none_for_missing(self) -> None:
        """``read_many`` gives every key asked for: its body, or None when absent."""
        storage = self.contract_storage()
        folder = self.contract_folder()
        keys = [f"{folder}/{i:03d}.json" for i in range(1, 6)]
        for i, key in enumerate(keys, 1):
            storage.replace(key, str(i).encode())
        got = storage.read_many([keys[0], keys[2], f"{folder}/009.json"])
        want = {keys[0]: b"1", keys[2]: b"3", f"{folder}/009.json": None}
        _expect(want == got, storage, f"read_many gave {got!r}, not {want!r}")
        _expect({} == storage.read_many([]), storage, "read_many of no keys gave something")

    def test_read_numbered_stops_at_the_first_gap(self) -> None:
        """``read_numbered`` reads n, n + 1, ... in order and returns the first number it did not find."""
        storage = self.contract_storage()
        folder = self.contract_folder()
        for n in (1, 2, 3, 5):
            _expect(storage.create(f"{folder}/{n:05d}", _body(str(n))), storage, f"a create under {folder} failed")
        numbers = storage.read_numbered(folder, 2, None, lambda n, _body: n, lambda n: f"{n:05d}")
        got: list[int] = []
        while True:
            try:
                got.append(next(numbers))
            except StopIteration as stop:
                after = stop.value
                break
        _expect(([2, 3], 4) == (got, after), storage, f"read_numbered from 2 read {got} and returned {after}")

    def test_listing_is_sorted_bounded_and_direct(self) -> None:
        """Names directly under a folder, sorted (a subfolder by its name); ``list_after`` with a limit pages."""
        storage = self.contract_storage()
        folder = self.contract_folder()
        for name in ("003.json", "001.json", "005.json", "002.json", "004.json"):
            storage.replace(f"{folder}/events/{name}", name.encode())
        storage.replace(f"{folder}/a.json", b"a")
        names = storage.list_names(f"{folder}/events")
        want = ["001.json", "002.json", "003.json", "004.json", "005.json"]
        _expect(want == names, storage, f"list_names of {folder}/events gave {names}, not {want}")
        _expect(["a.json", "events"] == storage.list_names(folder), storage, f"list_names({folder!r}) is wrong")
        _expect([] == storage.list_names(f"{folder}/nothing"), storage, "listing a missing folder was not empty")
        pages = (
            storage.list_after(f"{folder}/events", "003.json"),
            storage.list_after(f"{folder}/events", "001.json", 2),
            storage.list_after(f"{folder}/events", "", 0),
            storage.list_after(f"{folder}/events", "004.json", 9),
        )
        want_pages: tuple[list[str], ...] = (["004.json", "005.json"], ["002.json", "003.json"], [], ["005.json"])
        _expect(want_pages == pages, storage, f"list_after gave {pages}, not {want_pages}")

    def test_sizes_are_exact_and_listed_with_the_names(self) -> None:
        """``size`` and ``sizes_after`` give each key's exact length (protocol rule 21 reads its parity)."""
        storage = self.contract_storage()
        folder = self.contract_folder()
        bodies = {"001.json": b"1", "002.json": b"22", "003.json": b"333 "}
        for name, body in bodies.items():
            storage.create(f"{folder}/events/{name}", body)
        sizes = [storage.size(f"{folder}/events/{name}") for name in bodies]
        _expect([1, 2, 4] == sizes, storage, f"size gave {sizes}, not [1, 2, 4]")
        _expect(storage.size(f"{folder}/events/004.json") is None, storage, "size of a missing key was not None")
        listed = storage.sizes_after(f"{folder}/events", "001.json")
        want = [("002.json", 2), ("003.json", 4)]
        _expect(want == listed, storage, f"sizes_after gave {listed}, not {want}")

    def test_exists_and_delete(self) -> None:
        """``exists`` sees a written key; ``delete`` removes it and is a no-op when it is gone."""
        storage = self.contract_storage()
        key = f"{self.contract_folder()}/x.json"
        _expect(not storage.exists(key), storage, f"{key} exists before it was written")
        storage.replace(key, b"1")
        _expect(storage.exists(key), storage, f"{key} does not exist after it was written")
        storage.delete(key)
        storage.delete(key)
        _expect(not storage.exists(key) and storage.read(key) is None, storage, f"{key} is still there after delete")

    def test_put_many_creates_exclusively_and_reports_each_key(self) -> None:
        """``put_many(create=True)`` creates the absent keys and reports the present one as not created."""
        storage = self.contract_storage()
        self.requires(storage, "conditional_create")
        folder = self.contract_folder()
        taken = f"{folder}/taken.json"
        _expect(storage.create(taken, b"first"), storage, f"a create of {taken} failed")
        items = {f"{folder}/{i}.json": _body(str(i)) for i in range(3)} | {taken: b"second"}
        results = storage.put_many(items, create=True)
        errors = {k: r.error for k, r in results.items() if r.error is not None}
        _expect(not errors, storage, f"put_many failed for {errors}")
        created = {k: r.created for k, r in results.items()}
        _expect({**dict.fromkeys(items, True), taken: False} == created, storage, f"put_many reported {created}")
        _expect(b"first" == storage.read(taken), storage, f"put_many(create=True) overwrote {taken}")
        got = storage.read_many(list(items))
        _expect(all(got[k] == items[k] for k in items if k != taken), storage, "put_many lost a body")

    def test_keys_that_would_leave_the_root_are_refused(self) -> None:
        """Absolute keys, ``..``, ``.``, empty segments, backslashes and NULs raise :class:`UnsafePath`."""
        storage = self.contract_storage()
        operations: list[tuple[str, Callable[[str], object]]] = [
            ("path", storage.path),
            ("read", storage.read),
            ("replace", lambda k: storage.replace(k, b"x")),
            ("create", lambda k: storage.create(k, b"x")),
            ("delete", storage.delete),
        ]
        for key in _ESCAPING_KEYS:
            for name, operation in operations:
                try:
                    operation(key)
                except UnsafePath:
                    continue
                raise ContractViolation(f"{storage!r}: {name}({key!r}) was not refused with UnsafePath")

    def test_capabilities_are_never_overstated(self) -> None:
        """What is reported before the first write holds after the probe; the probe leaves nothing unknown."""
        storage = self.contract_storage()
        before: Capabilities = storage.capabilities
        after = storage.probe()
        taken_back = [n for n in before.names() if n not in after.names()]
        _expect(not taken_back, storage, f"the probe took back {taken_back}, reported before the first write")
        _expect(not after.unknown(), storage, f"after the probe {after.unknown()} are still unknown")
        _expect(after == storage.capabilities, storage, "probe() returned other capabilities than it holds")

    # -- the log on this storage ------------------------------------------------------------------

    def test_appends_through_a_run_store_are_gapless_and_read_back(self) -> None:
        """Events appended through ``RunStore(storage=...)`` are numbered 1, 2, ... and a second store reads them."""
        storage = self.contract_storage()
        store = RunStore(storage=storage)
        run = store.create_run("contract", "log")
        run.log.emit("workflow_start")
        for i in range(3):
            run.log.emit("checkpoint", metadata={"label": f"c{i}"})
        events = list(RunStore(storage=storage).get_run(run.id).log.read())
        ids, types = [e.event_id for e in events], [e.type for e in events]
        _expect([1, 2, 3, 4] == ids, storage, f"the run's event ids are {ids}, not 1 to 4")
        _expect(["workflow_start", *["checkpoint"] * 3] == types, storage, f"the run read back {types}")
        _expect("running" == store.get_run(run.id).state().status, storage, "the folded state is not running")
        listed = [r.run_id for r in RunStore(storage=storage).list_runs(org="contract")]
        _expect([run.id] == listed, storage, f"list_runs gave {listed}, not [{run.id}]")

    def test_concurrent_appends_leave_each_event_once(self) -> None:
        """Threads appending to one run, each through its own store, leave every event exactly once, gapless."""
        storage = self.contract_storage()
        self.requires(storage, "conditional_create")  # what numbers the events when writers race
        run = RunStore(storage=storage).create_run("contract", "race")
        run.log.emit("workflow_start")
        gate = threading.Barrier(self.append_threads)

        def writer(w: int) -> None:
            log = RunStore(storage=storage).get_run(run.id).log
            gate.wait()
            for i in range(self.appends_per_thread):
                log.emit("checkpoint", metadata={"label": f"w{w}-{i}"})

        with concurrent.futures.ThreadPoolExecutor(self.append_threads) as pool:
            for done in [pool.submit(writer, w) for w in range(self.append_threads)]:
                done.result()
        events = list(RunStore(storage=storage).get_run(run.id).log.read())
        total = 1 + self.append_threads * self.appends_per_thread
        ids = [e.event_id for e in events]
        _expect(list(range(1, total + 1)) == ids, storage, f"event ids {ids} are not 1 to {total}")
        labels = [e.metadata.get("label") for e in events[1:]]
        want = sorted(f"w{w}-{i}" for w in range(self.append_threads) for i in range(self.appends_per_thread))
        _expect(want == sorted(str(x) for x in labels), storage, f"the appended labels are {sorted(map(str, labels))}")


# -- assertions on events ----------------------------------------------------------------------------


def _events_of(source: Run | EventLog | Iterable[Event]) -> tuple[str, list[Event]]:
    if isinstance(source, Run):
        return f"run {source.id}", list(source.log.read())
    if isinstance(source, EventLog):
        return f"run {source.run_id}", list(source.read())
    if isinstance(source, (str, bytes)) or not isinstance(source, Iterable):
        raise InvalidArgument(f"assert_events takes a Run, an EventLog or events, got {type(source).__name__}")
    events = list(source)
    for e in events:
        if not isinstance(e, Event):
            raise InvalidArgument(f"assert_events takes a Run, an EventLog or events; got a {type(e).__name__} in them")
    return "the events", events


def _matches(event: Event, want: str | Mapping[str, Any]) -> bool:
    if isinstance(want, str):
        return event.type == want
    return all(getattr(event, field, _MISSING) == value for field, value in want.items())


_MISSING = object()


def _shown(want: str | Mapping[str, Any]) -> str:
    if isinstance(want, str):
        return want
    fields = dict(want)
    head = str(fields.pop("type", "*"))
    return " ".join([head, *(f"{k}={v!r}" for k, v in fields.items())])


def _shown_event(event: Event, want: str | Mapping[str, Any] | None) -> str:
    where = "/".join(p for p in (event.phase, event.step) if p)
    parts = [event.type, where] if where else [event.type]
    if isinstance(want, Mapping):
        parts += [f"{k}={getattr(event, k, None)!r}" for k in want if k not in ("type", "phase", "step")]
    if event.error is not None and not isinstance(want, Mapping):
        parts.append(f"error={event.error!r}")
    return " ".join(parts)


def assert_events(source: Run | EventLog | Iterable[Event], expected: Sequence[str | Mapping[str, Any]]) -> list[Event]:
    """Check that ``source``'s events are exactly ``expected``, in order; returns the events.

    ``source`` is a :class:`Run`, an :class:`EventLog` or the events themselves.
    Each expected item is an event type (``"step_start"``) or a mapping of
    fields the event must have (``{"type": "step_start", "step": "compile"}``).
    On a difference :class:`UnexpectedEvents` is raised with both lists side by
    side, the differing rows marked, so a failure reads without a debugger.
    """
    if isinstance(expected, (str, bytes)):
        raise InvalidArgument("assert_events(source, expected): expected is a list of event types, not one string")
    what, events = _events_of(source)
    rows = max(len(events), len(expected))
    bad = [i for i in range(rows) if i >= len(events) or i >= len(expected) or not _matches(events[i], expected[i])]
    if not bad:
        return events
    left = [f"{i + 1}. {_shown(expected[i])}" if i < len(expected) else "-" for i in range(rows)]
    width = max(len("expected"), *(len(s) for s in left))
    lines = [f"  {'expected':<{width}}  got"]
    for i in range(rows):
        got = _shown_event(events[i], expected[i] if i < len(expected) else None) if i < len(events) else "-"
        lines.append(f"{'!' if i in bad else ' '} {left[i]:<{width}}  {got}")
    raise UnexpectedEvents(
        f"{what}: {len(events)} event(s), {len(expected)} expected; {len(bad)} row(s) differ, first at "
        f"#{bad[0] + 1}:\n" + "\n".join(lines)
    )


# -- runs with history -------------------------------------------------------------------------------


def log_steps(
    run: Run,
    steps: Mapping[str, Sequence[str]],
    *,
    failing: str | None = None,
    error: str = "failed (logged by log_steps)",
) -> list[Event]:
    """Log phases and their steps as a tool would, for a test that needs a run with history; returns the events.

    Starts the run if it is still created; then, for each phase in order,
    ``phase_start``, ``step_start`` and ``step_complete`` for each of its steps,
    and ``phase_complete``. ``failing="phase/step"`` logs ``step_error`` (with
    ``error``) for that step instead and stops there: the run is failing and a
    resume starts at that step.
    """
    if failing is not None:
        phase_name, _, step_name = failing.partition("/")
        if step_name not in steps.get(phase_name, ()):
            raise InvalidArgument(
                f"log_steps(failing={failing!r}) names no step of {dict(steps)!r}; use 'phase/step', e.g. "
                f"{next((f'{p}/{s[0]}' for p, s in steps.items() if s), 'build/compile')!r}"
            )
    logged: list[Event] = []
    if run.state().status == "created":
        logged.append(run.start())
    for phase, names in steps.items():
        logged.append(run.log.emit("phase_start", phase=phase))
        for step in names:
            logged.append(run.log.emit("step_start", phase=phase, step=step))
            if f"{phase}/{step}" == failing:
                logged.append(run.log.emit("step_error", phase=phase, step=step, error=error))
                return logged
            logged.append(run.log.emit("step_complete", phase=phase, step=step))
        logged.append(run.log.emit("phase_complete", phase=phase))
    return logged
