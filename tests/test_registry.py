"""Registries per store: two stores in one process may know different event types, folds and upcasters."""

from __future__ import annotations

from typing import Any

import pytest

from faber_runlog import Event, InvalidArgument, InvalidEvent, Registry, RunState, RunStore, event_types


def test_the_default_registry_is_what_stores_use_unless_given_another() -> None:
    assert Registry.default() is RunStore("memory://reg-default").registry
    assert sorted(event_types()) == Registry.default().event_types()


def test_an_event_type_registered_in_an_isolated_registry_is_known_only_to_its_stores() -> None:
    reg = Registry.isolated()
    reg.register_event_type("deploy_isolated", {"required": ["metadata"]})
    mine = RunStore("memory://reg-mine", registry=reg).create_run("acme", "web")
    other = RunStore("memory://reg-other").create_run("acme", "web")
    assert "deploy_isolated" == mine.log.emit("deploy_isolated", metadata={"env": "prod"}).type
    with pytest.raises(InvalidEvent, match="unknown event type 'deploy_isolated'"):
        other.log.emit("deploy_isolated", metadata={"env": "prod"})
    assert "deploy_isolated" not in event_types()
    assert 0 == other.state().last_event_id


def test_a_fold_in_an_isolated_registry_changes_only_its_stores_states() -> None:
    reg = Registry.isolated()
    reg.register_event_type("deploy_fold", {"required": ["metadata"]})

    def fold_deploy(state: RunState, event: Event) -> None:
        state.decisions.append({"event_id": event.event_id, "env": event.metadata["env"]})

    reg.register_fold("deploy_fold", fold_deploy)
    url = "memory://reg-fold"
    run = RunStore(url, registry=reg).create_run("acme", "web")
    run.log.emit("deploy_fold", metadata={"env": "prod"})
    assert [{"event_id": 1, "env": "prod"}] == run.state().decisions
    # The same run read through a store on the default registry: the type is counted, not folded.
    plain = RunStore(url).get_run(run.id).log.load_state()
    assert ([], 1) == (plain.decisions, plain.unknown_events)


def test_an_upcaster_in_an_isolated_registry_lifts_events_only_for_its_stores() -> None:
    v1 = Registry.isolated()
    v1.register_event_type("measured", {"required": ["metadata"]})
    url = "memory://reg-upcast"
    run = RunStore(url, registry=v1).create_run("acme", "web")
    run.log.emit("measured", metadata={"ms": 1500})

    def seconds(data: dict[str, Any]) -> dict[str, Any]:
        meta = dict(data["metadata"])
        meta["seconds"] = meta.pop("ms") / 1000
        return {**data, "metadata": meta, "schema_version": 2}

    v2 = Registry.isolated()
    v2.register_event_type("measured", {"required": ["metadata"]}, version=2)
    v2.register_upcaster("measured", 1, seconds)
    assert {"seconds": 1.5} == RunStore(url, registry=v2).get_run(run.id).log.get(1).metadata
    assert {"ms": 1500} == RunStore(url, registry=v1).get_run(run.id).log.get(1).metadata


def test_a_store_refuses_a_registry_that_is_not_one() -> None:
    with pytest.raises(InvalidArgument, match=r"registry= takes a faber_runlog\.Registry"):
        RunStore("memory://reg-bad", registry={})  # type: ignore[arg-type]


def test_a_registry_fold_gets_events_when_a_fresh_handle_rebuilds_from_segments_and_files() -> None:
    reg = Registry.isolated()
    reg.register_event_type("deploy_rebuild", {"required": ["metadata"]})

    def fold_deploy(state: RunState, event: Event) -> None:
        state.decisions.append({"event": isinstance(event, Event), "env": event.metadata["env"]})

    reg.register_fold("deploy_rebuild", fold_deploy)
    url = "memory://reg-rebuild"
    run = RunStore(url, registry=reg, segment_every=2).create_run("acme", "web")
    for env in ("a", "b", "c", "d", "e"):
        run.log.emit("deploy_rebuild", metadata={"env": env})
    # A fresh handle folds the stored mappings (events 1-4 from segments, 5 from its file).
    fresh = RunStore(url, registry=reg, segment_every=2).get_run(run.id).log.load_state()
    expected = [{"event": True, "env": env} for env in ("a", "b", "c", "d", "e")]
    assert expected == fresh.decisions


def test_a_listing_folds_a_run_whose_summary_is_behind_with_the_stores_registry() -> None:
    reg = Registry.isolated()
    reg.register_event_type("deploy_listed", {"required": ["metadata"]})

    def fold_deploy(state: RunState, event: Event) -> None:
        state.current_step = f"deploying to {event.metadata['env']}"

    reg.register_fold("deploy_listed", fold_deploy)
    url = "memory://reg-listing"
    run = RunStore(url, registry=reg).create_run("acme", "web")
    run.start()  # a status change: the summary is written at event 1
    store = RunStore(url)
    key = f"{run.id}/summary.json"
    behind = store.storage.read(key)
    assert behind is not None
    run.log.emit("deploy_listed", metadata={"env": "prod"})
    store.storage.replace(key, behind)  # behind, as on S3 (status changes only) or after a crash
    assert ["deploying to prod"] == [r.current_step for r in RunStore(url, registry=reg).list_runs()]
    assert [None] == [r.current_step for r in RunStore(url).list_runs()]
