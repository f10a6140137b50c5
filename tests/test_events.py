from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import pytest

from faber_runlog import Event, InvalidEvent, event_schema, event_types, register_event_type
from faber_runlog._domain.events import BUILTIN_EVENT_TYPES, _plain_json, check_json_value, validate_event_dict

BASE: dict[str, Any] = {
    "event_id": 1,
    "timestamp": "2026-11-23T10:00:00.000000Z",
    "run_id": "acme/web/3f2b8c1e-9a4d-4c6e-8f10-2b7d9e0a1c55",
    "schema_version": 1,
    "metadata": {},
}

# One valid and one invalid example per built-in type.
EXAMPLES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "workflow_start": ({"metadata": {"workflow": "default"}}, {"metadata": {"workflow": 3}}),
    "workflow_complete": ({}, {"metadata": {"summary": ["x"]}}),
    "workflow_error": ({"error": "boom"}, {"metadata": {"reason": 1}}),
    "workflow_cancelled": ({"metadata": {"reason": "user"}}, {"metadata": {"reason": False}}),
    "workflow_resumed": ({"metadata": {"resume_phase": "build"}}, {"metadata": {"skip": "x"}}),
    "workflow_rerun": ({"metadata": {"parent_run_id": "a/b/c", "mode": "all"}}, {"metadata": {"mode": "all"}}),
    "phase_start": ({"phase": "build"}, {}),
    "phase_skip": ({"phase": "build"}, {"phase": ""}),
    "phase_complete": ({"phase": "build"}, {"step": "x"}),
    "phase_error": ({"phase": "build", "error": {"message": "x"}}, {"error": {"message": "x"}}),
    "step_start": ({"phase": "build", "step": "compile"}, {"phase": "build"}),
    "step_complete": ({"phase": "build", "step": "compile", "duration_ms": 5}, {"step": "compile"}),
    "step_error": (
        {"phase": "b", "step": "c", "metadata": {"exit_code": 2}},
        {"phase": "b", "step": "c", "metadata": {"exit_code": "2"}},
    ),
    "step_retry": (
        {"phase": "b", "step": "c", "metadata": {"attempt": 2}},
        {"phase": "b", "step": "c", "metadata": {"attempt": 0}},
    ),
    "artifact_create": ({"metadata": {"path": "out/a.txt"}}, {"metadata": {}}),
    "artifact_modify": ({"metadata": {"path": "out/a.txt"}}, {"metadata": {"path": ""}}),
    "commit_create": ({"metadata": {"sha": "abc1234"}}, {"metadata": {"sha": "not-a-sha"}}),
    "branch_create": ({"metadata": {"branch": "feat/x"}}, {"metadata": {"base": "main"}}),
    "pr_create": ({"metadata": {"number": 12, "url": "https://x"}}, {"metadata": {"number": "12"}}),
    "pr_merge": ({"metadata": {"number": 12}}, {"metadata": {"number": 0}}),
    "spec_generate": ({"metadata": {"path": "spec.md"}}, {"metadata": {}}),
    "spec_validate": ({"metadata": {"valid": True}}, {"metadata": {"valid": "yes"}}),
    "test_run": ({"metadata": {"passed": 3, "failed": 0}}, {"metadata": {"passed": -1, "failed": 0}}),
    "docs_update": ({"metadata": {"paths": ["README.md"]}}, {"metadata": {"paths": [1]}}),
    "checkpoint": ({"metadata": {"label": "after-build"}}, {"metadata": {"label": ""}}),
    "skill_invoke": ({"metadata": {"skill": "lint"}}, {"metadata": {}}),
    "agent_invoke": ({"metadata": {"agent": "reviewer"}}, {"metadata": {"agent": 1}}),
    "decision_point": ({"metadata": {"decision": "ship"}}, {"metadata": {"rationale": "x"}}),
    "retry_loop_enter": (
        {"metadata": {"loop": "fix", "max_attempts": 3}},
        {"metadata": {"loop": "fix", "max_attempts": 0}},
    ),
    "retry_loop_exit": ({"metadata": {"loop": "fix", "attempts": 2}}, {"metadata": {"attempts": 2}}),
    "workflow_paused": ({"metadata": {"paused_from": "running"}}, {"metadata": {"paused_from": "completed"}}),
    "approval_requested": ({"metadata": {"approval_id": "a1", "gate": "review"}}, {"metadata": {"gate": "review"}}),
    "approval_resolved": (
        {"metadata": {"approval_id": "a1", "action": "approve", "client_token": "t"}},
        {"metadata": {"approval_id": "a1", "action": "maybe", "client_token": "t"}},
    ),
    "step_skip": ({"phase": "b", "step": "c", "metadata": {"reason": "cached"}}, {"phase": "b"}),
    "log_sealed": (
        {"metadata": {"through": 3, "size": 120, "sha256": "sha256:" + "0" * 64}},
        {"metadata": {"through": 3, "size": 120, "sha256": "md5:x"}},
    ),
}


def _event(etype: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, "type": etype, **extra}


def test_every_builtin_type_has_a_shipped_schema_and_examples() -> None:
    shipped = sorted(p.name[:-5] for p in files("faber_runlog.schemas").joinpath("event-types").iterdir())
    assert sorted(BUILTIN_EVENT_TYPES) == shipped
    assert sorted(BUILTIN_EVENT_TYPES) == sorted(EXAMPLES)
    assert set(BUILTIN_EVENT_TYPES) <= set(event_types())


@pytest.mark.parametrize("etype", BUILTIN_EVENT_TYPES)
def test_valid_example_passes_its_schema(etype: str) -> None:
    validate_event_dict(_event(etype, EXAMPLES[etype][0]))


@pytest.mark.parametrize("etype", BUILTIN_EVENT_TYPES)
def test_invalid_example_is_refused_with_the_type_named(etype: str) -> None:
    with pytest.raises(InvalidEvent, match=etype):
        validate_event_dict(_event(etype, EXAMPLES[etype][1]))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", 0),
        ("timestamp", "yesterday"),
        ("duration_ms", -1),
        ("schema_version", "1"),
        ("unknown_field", 1),
        ("metadata", []),
        ("idempotency_key", ""),
    ],
)
def test_base_schema_refuses_bad_common_fields(field: str, value: Any) -> None:
    with pytest.raises(InvalidEvent):
        validate_event_dict(_event("checkpoint", {"metadata": {"label": "x"}, field: value}))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {1: "int key"}, {"a": object()}, b"bytes"])
def test_values_json_cannot_hold_are_refused(value: Any) -> None:
    with pytest.raises(InvalidEvent):
        validate_event_dict(_event("checkpoint", {"metadata": {"label": "x", "v": value}}))


_JSON_VALUES: list[Any] = [
    "plain",
    "caf\u00e9",
    "\ud800",
    "x" * ((1 << 20) + 1),
    1,
    1 << 63,
    1 << 64,
    -(1 << 63) - 1,
    True,
    None,
    1.5,
    float("nan"),
    float("-inf"),
    {"a": [1, {"b": None}]},
    {1: "x"},
    {"\ud800": 1},
    ["x", 2.0, [None]],
    ("t", 1),
    b"bytes",
    object(),
]


@pytest.mark.parametrize("value", _JSON_VALUES, ids=range(len(_JSON_VALUES)))
def test_the_fast_json_check_passes_only_what_the_full_check_passes(value: Any) -> None:
    # The append's fast path may send more values to the full check, never fewer.
    try:
        check_json_value(value, "v")
    except InvalidEvent:
        assert not _plain_json(value)
    else:
        assert _plain_json(value) or not isinstance(value, (str, int, float, dict, list)) or not str(value).isascii()


def test_deep_nesting_is_refused() -> None:
    deep: Any = "leaf"
    for _ in range(40):
        deep = {"d": deep}
    with pytest.raises(InvalidEvent, match="nested deeper"):
        validate_event_dict(_event("checkpoint", {"metadata": {"label": "x", "v": deep}}))


def test_unknown_type_is_refused_with_a_hint_to_register() -> None:
    with pytest.raises(InvalidEvent, match="register_event_type"):
        validate_event_dict(_event("no_such_type", {}))


def test_custom_type_is_validated_with_its_schema() -> None:
    schema = {"required": ["metadata"], "properties": {"metadata": {"required": ["env"]}}}
    register_event_type("deploy_test_custom", schema)
    validate_event_dict(_event("deploy_test_custom", {"metadata": {"env": "prod"}}))
    with pytest.raises(InvalidEvent):
        validate_event_dict(_event("deploy_test_custom", {"metadata": {}}))
    assert schema == event_schema("deploy_test_custom")


def test_custom_type_cannot_shadow_a_builtin() -> None:
    with pytest.raises(InvalidEvent, match="built-in"):
        register_event_type("step_start", {})


def test_re_registering_with_another_schema_needs_replace() -> None:
    register_event_type("custom_twice", {"type": "object"})
    register_event_type("custom_twice", {"type": "object"})  # same schema: fine
    with pytest.raises(InvalidEvent, match="replace=True"):
        register_event_type("custom_twice", {"required": ["phase"]})
    register_event_type("custom_twice", {"required": ["phase"]}, replace=True)


@pytest.mark.parametrize("name", ["Bad", "1x", "a-b", "", "x" * 65])
def test_custom_type_names_are_checked(name: str) -> None:
    with pytest.raises(InvalidEvent, match="invalid event type name"):
        register_event_type(name, {})


def test_invalid_custom_schema_is_refused() -> None:
    with pytest.raises(InvalidEvent, match="not a valid JSON Schema"):
        register_event_type("bad_schema_type", {"type": "no-such-type"})


@pytest.mark.parametrize("etype", BUILTIN_EVENT_TYPES)
def test_event_round_trips_through_json(etype: str) -> None:
    data = _event(etype, EXAMPLES[etype][0])
    event = Event.from_dict(data)
    again = Event.from_dict(json.loads(json.dumps(event.to_dict())))
    assert event == again
    assert 1 == event.to_dict()["schema_version"]


def test_base_schema_is_shipped_as_json() -> None:
    shipped = json.loads(files("faber_runlog.schemas").joinpath("event.schema.json").read_text())
    assert shipped == event_schema()
