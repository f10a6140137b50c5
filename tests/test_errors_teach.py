"""Errors that name the field, suggest the fix and are ours (FaberRunlogError plus the matching builtin)."""

from __future__ import annotations

import pickle
import uuid
from typing import Any

import pytest

from faber_runlog import FaberRunlogError, InvalidEvent, InvalidEventPosition, InvalidFilter, InvalidStoreUrl, RunStore

# Application tests: the storage and log contract is pinned on every backend elsewhere.
pytestmark = pytest.mark.backends("memory")


@pytest.mark.parametrize(
    ("url", "builtin", "needle"),
    [
        (123, TypeError, "got int 123"),
        ("gs3://b/x", ValueError, "unknown storage protocol 'gs3'"),
        ("", ValueError, "empty URL"),
        ("   ", ValueError, "empty URL"),
    ],
)
def test_a_bad_store_url_is_our_error_and_the_matching_builtin(url: object, builtin: type, needle: str) -> None:
    with pytest.raises(InvalidStoreUrl) as info:
        RunStore(url)  # type: ignore[arg-type]
    assert isinstance(info.value, builtin) and isinstance(info.value, FaberRunlogError)
    assert needle in str(info.value)


def test_a_mistyped_protocol_suggests_the_close_one() -> None:
    with pytest.raises(InvalidStoreUrl, match="did you mean 's3'"):
        RunStore("s4://bucket/runs")


def test_state_beyond_the_last_event_is_a_caller_mistake_not_corruption(store: RunStore) -> None:
    run = store.create_run("acme", "web")
    run.log.emit("workflow_start")
    with pytest.raises(InvalidEventPosition) as info:
        run.state(at=999)
    assert isinstance(info.value, ValueError)
    assert (999, 1) == (info.value.at, info.value.last_event_id)
    assert "events 1..1" in str(info.value)
    copy = pickle.loads(pickle.dumps(info.value))
    assert (str(info.value), 999) == (str(copy), copy.at)
    assert 1 == run.state(at=1).last_event_id


def test_an_invalid_status_filter_is_refused_with_a_suggestion(store: RunStore) -> None:
    store.create_run("acme", "web")
    with pytest.raises(InvalidFilter, match=r"unknown run status 'failure' \(did you mean 'failed'\?\)"):
        store.list_runs(status="failure")  # type: ignore[arg-type]  # the typo is the point
    assert 1 == len(store.list_runs(status="created"))
    pytest.importorskip("pandas")
    for frame in (store.events_frame, store.runs_frame):
        with pytest.raises(InvalidFilter, match="did you mean 'failed'"):
            frame(status="failure")


def test_schema_errors_name_the_missing_field_and_close_types() -> None:
    run = RunStore("memory://teach-schema").create_run("acme", "web")
    with pytest.raises(InvalidEvent, match="missing the field 'step'"):
        run.log.emit("step_start", phase="build")
    with pytest.raises(InvalidEvent, match="did you mean 'step_start'"):
        run.log.emit("step_strat", phase="build", step="a")
    assert 0 == run.state().last_event_id


def test_register_fold_reaches_run_objects_created_before_it(store: RunStore) -> None:
    from faber_runlog import register_event_type
    from faber_runlog._domain.state import register_fold

    etype = f"deploy_{uuid.uuid4().hex[:8]}"  # the registry is global: a fresh type per case
    register_event_type(etype, {"required": ["metadata"]})
    run = store.create_run("acme", "web")
    run.log.emit(etype, metadata={"env": "prod"})
    assert [] == run.state().decisions  # no handler yet: counted, otherwise ignored

    def fold_deploy(state: Any, event: Any) -> None:
        state.decisions.append({"event_id": event.event_id, "deployed_to": event.metadata["env"]})

    register_fold(etype, fold_deploy)
    expected = [{"event_id": 1, "deployed_to": "prod"}]
    assert expected == run.state().decisions  # the earlier Run object refolds
    assert expected == store.get_run(run.id).state().decisions
    run.log.emit(etype, metadata={"env": "dev"})
    assert 2 == len(run.state().decisions)
