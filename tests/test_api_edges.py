"""API edges: immutable, hashable events; approval handles; one name per transition; typed statuses."""

from __future__ import annotations

import copy
import pickle
import typing
from collections.abc import Callable

import pytest

from faber_runlog import (
    Approval,
    Event,
    InvalidArgument,
    ReadOnlyValue,
    Resumer,
    RunState,
    RunStatus,
    RunStore,
    RunSummary,
)
from faber_runlog._domain.transitions import RUN_STATUSES


def _event(**extra: object) -> Event:
    return Event(event_id=1, type="checkpoint", timestamp="2024-01-01T00:00:00+00:00", run_id="a/b/c", **extra)  # type: ignore[arg-type]


def test_an_events_metadata_and_artifacts_refuse_changes_at_any_depth() -> None:
    event = _event(metadata={"a": {"b": [1, 2]}}, artifacts=["x"], error={"message": "boom"})
    changes: list[Callable[[], object]] = [
        lambda: event.metadata.__setitem__("z", 1),  # type: ignore[index]  # Mapping has no __setitem__: the point
        lambda: event.metadata["a"].update(c=3),
        lambda: event.metadata["a"]["b"].append(3),
        lambda: event.artifacts.append("y"),  # type: ignore[union-attr]
        lambda: event.error.pop("message"),  # type: ignore[union-attr]
    ]
    for change in changes:
        with pytest.raises(ReadOnlyValue, match="read-only"):
            change()
    assert {"a": {"b": [1, 2]}} == event.metadata
    assert ["x"] == event.artifacts


def test_an_event_does_not_share_the_dict_it_was_built_from() -> None:
    meta = {"a": [1]}
    event = _event(metadata=meta)
    meta["a"].append(2)
    assert {"a": [1]} == event.metadata


def test_equal_events_hash_equal_and_work_in_sets() -> None:
    one = _event(metadata={"a": [1, {"b": 2}]}, artifacts=["x"])
    two = _event(metadata={"a": [1, {"b": 2}]}, artifacts=["x"])
    assert one == two
    assert hash(one) == hash(two)
    assert 1 == len({one, two})


def test_an_event_pickles_copies_and_gives_back_plain_mutable_dicts() -> None:
    event = _event(metadata={"a": [1, {"b": 2}]})
    assert event == pickle.loads(pickle.dumps(event))
    assert event == copy.deepcopy(event)
    out = event.to_dict()
    out["metadata"]["a"].append(3)  # to_dict is the caller's to change
    assert dict is type(out["metadata"])
    assert [1, {"b": 2}] == event.metadata["a"]


def test_request_approval_returns_a_handle_that_decide_takes() -> None:
    run = RunStore("memory://edges-approval").create_run("acme", "web")
    run.start()
    approval = run.request_approval("review", phase="build", approval_id="gate-1")
    assert isinstance(approval, Approval)
    assert ("gate-1", "review", "build") == (approval.approval_id, approval.gate, approval.phase)
    assert "approval_requested" == approval.event.type
    assert approval.event.event_id == approval.event_id
    resolved = run.decide(approval, "approve", client_token="t1")
    assert "gate-1" == resolved.metadata["approval_id"]
    assert resolved == run.decide("gate-1", "approve", client_token="t1")


def test_decide_refuses_an_event_or_anything_else_and_writes_nothing() -> None:
    run = RunStore("memory://edges-refuse").create_run("acme", "web")
    run.start()
    approval = run.request_approval("review", approval_id="gate-1")
    last = run.state().last_event_id
    with pytest.raises(InvalidArgument, match=r"got Event .*metadata\['approval_id'\]"):
        run.decide(approval.event, "approve", client_token="t")  # type: ignore[arg-type]
    for bad in (None, 7, ""):
        with pytest.raises(InvalidArgument, match="takes an Approval"):
            run.decide(bad, "approve", client_token="t")  # type: ignore[arg-type]
    assert last == run.state().last_event_id


def test_approval_has_its_id_and_event_and_no_deprecated_metadata_alias() -> None:
    run = RunStore("memory://edges-meta").create_run("acme", "web")
    run.start()
    approval = run.request_approval("review", approval_id="gate-1")
    assert ("gate-1", "gate-1") == (approval.approval_id, approval.event.metadata["approval_id"])
    assert not hasattr(approval, "metadata")  # the 0.x alias is gone before the first release


def test_unpause_is_the_name_and_run_has_no_resume_alias() -> None:
    run = RunStore("memory://edges-unpause").create_run("acme", "web")
    run.start()
    run.pause("lunch")
    assert "workflow_resumed" == run.unpause().type
    assert "running" == run.state().status
    assert not hasattr(run, "resume")  # the 0.x alias is gone: "resume" is Resumer.resume, failed -> running
    assert not hasattr(Resumer, "unpause")


def test_statuses_are_a_literal_type_used_by_state_and_summaries() -> None:
    assert RUN_STATUSES == typing.get_args(RunStatus)
    assert RunStatus == typing.get_type_hints(RunState)["status"]
    assert RunStatus == typing.get_type_hints(RunSummary)["status"]
