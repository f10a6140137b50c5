"""Property tests: the fold, snapshots and JSON round-trips hold for any valid input.

Events are drawn from the valid example of every built-in type
(tests/test_events.py EXAMPLES), with random phases, steps, messages,
durations and extra metadata, and kept only if they pass the schemas.
``--soak`` raises the number of examples tenfold.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from _faultreport import record
from conftest import soak_scale
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from test_events import EXAMPLES

from faber_runlog import (
    ApprovalConflict,
    ApprovalNotFound,
    Event,
    InvalidEvent,
    InvalidTransition,
    RunArchived,
    RunNotRerunnable,
    RunNotResumable,
    RunStore,
)
from faber_runlog._base import codec as _codec
from faber_runlog._domain.events import BUILTIN_EVENT_TYPES, validate_event_dict
from faber_runlog._domain.state import BOUNDED_LISTS, LATEST_KEPT, RunState, apply_mapping, fold_all
from faber_runlog._domain.transitions import ENDING_APPROVAL_ACTIONS, TRANSITIONS
from faber_runlog._services.resume import Resumer

RUN_ID = "acme/web/3f2b8c1e-9a4d-4c6e-8f10-2b7d9e0a1c55"
NAMES = st.sampled_from(["build", "test", "ship", "a", "b"])
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)  # type: ignore[arg-type]  # hypothesis types the categories as Literals
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


# Hypothesis settings are fixed at import, before fixtures exist: conftest reads --soak at configure time.
SCALE = soak_scale(10, 1)
pytestmark = pytest.mark.slow

# The fault table of docs/reliability.md counts the examples that ran and held, as measured here: each
# property adds one when an example passes, and this process's counts are recorded when its share of the
# module is done (rows of several xdist workers are summed when the table is rendered).
HELD: Counter[str] = Counter()
ROWS = {
    "fold": (
        "test_properties: fold from every snapshot point == one-go fold",
        "random event sequences",
        "equal states, JSON snapshot round-trip exact",
    ),
    "json": ("test_properties: event JSON round-trip", "random events of every type", "lossless"),
    "stateful": (
        "test_properties: stateful emit/snapshot/reopen/resume/rerun",
        "random programs of 20 steps",
        "state == fold of model after every step",
    ),
}


@pytest.fixture(scope="module", autouse=True)
def _record_the_examples_that_held(request: pytest.FixtureRequest) -> Iterator[None]:
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:  # a property failed here: nothing held, nothing is recorded
        HELD.clear()
    for key, n in sorted(HELD.items()):
        test, fault, held = ROWS[key]
        record(test, fault, n, held)
    HELD.clear()  # a worker that runs this module again records only what ran since


@st.composite
def event_fields(draw: st.DrawFn) -> dict[str, Any]:
    """Fields of one valid event (no id, timestamp or run id yet)."""
    etype = draw(st.sampled_from(BUILTIN_EVENT_TYPES))
    fields: dict[str, Any] = {"type": etype, **_codec.loads(_codec.dumps(EXAMPLES[etype][0]))}
    fields.setdefault("metadata", {})
    if "phase" in fields:
        fields["phase"] = draw(NAMES)
    if "step" in fields:
        fields["step"] = draw(NAMES)
    if draw(st.booleans()):
        fields["message"] = draw(TEXT)
    if draw(st.booleans()):
        fields["duration_ms"] = draw(st.floats(0, 1e7, allow_nan=False))
    extra = draw(st.dictionaries(st.sampled_from(["x_note", "x_count", "x_data"]), JSON_VALUES, max_size=2))
    fields["metadata"] = {**fields["metadata"], **extra}
    return fields


def _event(seq: int, fields: dict[str, Any]) -> Event | None:
    data = {
        **fields,
        "event_id": seq,
        "run_id": RUN_ID,
        "schema_version": 1,
        "timestamp": f"2026-11-23T10:{seq // 60 % 60:02d}:{seq % 60:02d}.000000Z",
        "nonce": f"w-{seq}",
    }
    try:
        validate_event_dict(data, run_id=RUN_ID)
    except InvalidEvent:
        return None  # an extra metadata key this type's schema forbids
    return Event.from_dict(data)


@st.composite
def event_sequences(draw: st.DrawFn) -> list[Event]:
    out: list[Event] = []
    for fields in draw(st.lists(event_fields(), min_size=1, max_size=40)):
        ev = _event(len(out) + 1, fields)
        if ev is not None:
            out.append(ev)
    assume(out)
    return out


def _through_json(state: RunState) -> RunState:
    return RunState.from_dict(_codec.loads(_codec.dumps(state.to_dict())))


@settings(max_examples=100 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_sequences())
def test_folding_from_any_snapshot_point_equals_folding_in_one_go(events: list[Event]) -> None:
    empty = RunState(run_id=RUN_ID)
    whole = fold_all(empty, events)
    for k in range(len(events) + 1):
        snapshot = _through_json(fold_all(empty, events[:k]))
        assert whole == fold_all(snapshot, events[k:])
    assert whole == _through_json(whole)
    HELD["fold"] += 1


@st.composite
def long_event_sequences(draw: st.DrawFn) -> list[Event]:
    """Up to 120 events: enough for the bounded lists (LATEST_KEPT = 20) to drop their oldest records."""
    out: list[Event] = []
    for fields in draw(st.lists(event_fields(), min_size=1, max_size=120)):
        ev = _event(len(out) + 1, fields)
        if ev is not None:
            out.append(ev)
    assume(out)
    return out


@settings(max_examples=60 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(long_event_sequences())
def test_folding_stored_mappings_gives_exactly_the_state_of_folding_events(events: list[Event]) -> None:
    # The rebuild folds what orjson decodes from the files; users fold Events: both must agree exactly.
    expected = fold_all(RunState(run_id=RUN_ID), events)
    from_mappings = RunState(run_id=RUN_ID)
    for e in events:
        apply_mapping(from_mappings, _codec.loads(_codec.dumps(e.to_dict())))
    assert expected == from_mappings
    assert expected.to_dict() == from_mappings.to_dict()
    for name in BOUNDED_LISTS:
        assert len(getattr(expected, name)) <= LATEST_KEPT
    # And through a real log: the stored files folded by a fresh handle.
    store = RunStore(f"memory://fold-{uuid.uuid4().hex}")
    run = store.create_run("acme", "web")
    folder = f"{run.id}/events"
    for e in events:
        store.storage.replace(f"{folder}/{e.event_id:020d}.json", _codec.dumps({**e.to_dict(), "run_id": run.id}))
    rebuilt = store.get_run(run.id).state()
    assert fold_all(RunState(run_id=run.id), (attrs.evolve(e, run_id=run.id) for e in events)) == rebuilt


@settings(max_examples=40 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(long_event_sequences())
def test_a_state_copy_is_equal_and_shares_nothing_mutable(events: list[Event]) -> None:
    state = fold_all(RunState(run_id=RUN_ID), events)
    before = _codec.dumps(state.to_dict())
    copied = state.copy()
    assert state == copied
    # Scribble over everything mutable in the copy: the original must not move.
    for p in copied.phases.values():
        p.status = "scribbled"
        for s in p.steps.values():
            s.status = "scribbled"
        p.steps.clear()
    for a in copied.approvals.values():
        a.payload["scribbled"] = True
        a.status = "scribbled"
    for loop in copied.retry_loops.values():
        loop["scribbled"] = True
    for pr in copied.pull_requests.values():
        pr.status = "scribbled"
    for name in BOUNDED_LISTS:
        for item in getattr(copied, name):
            if isinstance(item, dict):
                item["scribbled"] = True
        getattr(copied, name).clear()
    for name in ("event_counts", "idempotency_keys", "invocations", "totals"):
        getattr(copied, name)["scribbled"] = 1
    if copied.rerun is not None:
        copied.rerun["scribbled"] = True
    assert before == _codec.dumps(state.to_dict())


@settings(max_examples=200 * SCALE, deadline=None)
@given(event_fields(), st.integers(1, 2**40), st.none() | TEXT, st.none() | TEXT)
def test_every_event_type_round_trips_through_json_losslessly(
    fields: dict[str, Any], seq: int, key: str | None, user: str | None
) -> None:
    ev = _event(seq, {**fields, "idempotency_key": key, "user": user})
    assume(ev is not None)
    assert ev is not None
    assert ev == Event.from_dict(_codec.loads(_codec.dumps(ev.to_dict())))
    HELD["json"] += 1


class EmitSnapshotReopen(RuleBasedStateMachine):
    """Drive a run through emit / snapshot / reopen / resume / rerun and compare with a plain list model."""

    def __init__(self) -> None:
        super().__init__()
        self.store = RunStore(f"memory://props-{uuid.uuid4().hex}", snapshot_every=3)
        self.run = self.store.create_run("acme", "web")
        self.model: list[Event] = []
        self.reruns: list[str] = []

    @initialize()
    def start(self) -> None:
        self.model.append(self.run.log.emit("workflow_start"))

    @rule(fields=event_fields())
    def emit(self, fields: dict[str, Any]) -> None:
        args = {k: v for k, v in fields.items() if k != "type"}
        status = self._folded().status
        try:
            ev = self.run.log.emit(fields["type"], **args)
        except (InvalidEvent, InvalidTransition, ApprovalNotFound, ApprovalConflict, RunArchived) as refused:
            # Refused (an extra key the schema forbids, a move the transition table does not allow,
            # no such pending approval, a sealed log): nothing may have been written.
            assert [m.event_id for m in self.model] == [m.event_id for m in self.run.log.read()]
            if isinstance(refused, InvalidTransition):
                # The table refuses from a status it has no move for; a paused run's gate also takes only an
                # ending decision (an approve there would resume the run behind its pause).
                action = (fields.get("metadata") or {}).get("action")
                paused_gate = fields["type"] == "approval_resolved" and status == "paused"
                assert status not in TRANSITIONS[fields["type"]].moves or (
                    paused_gate and action not in ENDING_APPROVAL_ACTIONS
                )
            if isinstance(refused, RunArchived):
                assert self._folded().sealed_at is not None
            return
        assert len(self.model) + 1 == ev.event_id
        self.model.append(ev)

    def _folded(self) -> RunState:
        return fold_all(RunState(run_id=self.run.id), self.model)

    @rule()
    def snapshot(self) -> None:
        assert fold_all(RunState(run_id=self.run.id), self.model) == self.run.log.snapshot()

    @rule()
    def reopen(self) -> None:
        self.store = RunStore(fs=self.store.storage.fs, root=self.store.storage.root, snapshot_every=3)
        self.run = self.store.get_run(self.run.id)

    @rule()
    def resume(self) -> None:
        status, sealed = self._folded().status, self._folded().sealed_at is not None
        try:
            self.run = Resumer(self.store).resume(self.run.id)
        except RunNotResumable:
            assert sealed or status in ("completed", "cancelled", "awaiting_approval")
            return
        assert status not in ("completed", "awaiting_approval")
        new = list(self.run.log.read(since=len(self.model)))
        # One workflow_resumed, unless the run was just resumed (then it is handed back as it is).
        if new:
            assert ["workflow_resumed"] == [e.type for e in new]
        else:
            assert "workflow_resumed" == self.model[-1].type
        self.model.extend(new)

    @precondition(lambda self: len(self.reruns) < 2)
    @rule(value=st.integers(0, 9))
    def rerun(self, value: int) -> None:
        status = fold_all(RunState(run_id=self.run.id), self.model).status
        try:
            child = Resumer(self.store).rerun(self.run.id, params={"n": value})
        except RunNotRerunnable:
            assert status not in ("completed", "failed", "cancelled", "failing")
            return
        assert status in ("completed", "failed", "cancelled", "failing")
        self.reruns.append(child.id)
        assert self.run.id == child.metadata.parent_run_id
        assert {"n": value} == child.metadata.params
        assert "workflow_rerun" == child.log.get(1).type

    def teardown(self) -> None:
        HELD["stateful"] += 1  # one program, its invariant checked after every step

    @invariant()
    def state_is_the_fold_of_the_model(self) -> None:
        expected = fold_all(RunState(run_id=self.run.id), self.model)
        assert expected == self.run.state()
        assert expected == self.store.get_run(self.run.id).state()
        assert self.model == list(self.run.log.read())


EmitSnapshotReopen.TestCase.settings = settings(
    max_examples=25 * SCALE, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestEmitSnapshotReopen = EmitSnapshotReopen.TestCase


def test_a_seal_is_written_by_consolidation_only_never_by_emit() -> None:
    # A forged seal closed the run to appends while the state ignored it (resume failed with RunArchived).
    store = RunStore(f"memory://props-{uuid.uuid4().hex}")
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    seal = {"through": 1, "size": 120, "sha256": "sha256:" + "0" * 64}
    with pytest.raises(InvalidEvent, match="consolidation only"):
        run.log.emit("log_sealed", metadata=seal)
    with pytest.raises(InvalidEvent, match="consolidation only"):
        run.log.emit("log_sealed", metadata=seal, unchecked=True)
    assert ["workflow_start"] == [e.type for e in run.log.read()]
