from __future__ import annotations

import uuid

import pytest

from faber_runlog import InvalidRunId, RunId

GOOD_UUID = "3f2b8c1e-9a4d-4c6e-8f10-2b7d9e0a1c55"


def test_parse_round_trips_a_valid_id() -> None:
    text = f"acme/web-app_2/{GOOD_UUID}"
    rid = RunId.parse(text)
    assert ("acme", "web-app_2", GOOD_UUID) == (rid.org, rid.project, rid.uuid)
    assert text == str(rid)


def test_new_mints_a_uuid4_in_org_and_project() -> None:
    rid = RunId.new("acme", "web")
    assert 4 == uuid.UUID(rid.uuid).version
    assert rid == RunId.parse(str(rid))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "acme/web",
        f"acme/web/{GOOD_UUID}/extra",
        f"../web/{GOOD_UUID}",
        f"acme/../{GOOD_UUID}",
        "acme/web/..",
        f"/acme/web/{GOOD_UUID}",
        f"acme//{GOOD_UUID}",
        f"/web/{GOOD_UUID}",
        f"Acme/web/{GOOD_UUID}",
        f"acme/web app/{GOOD_UUID}",
        f"acme/w\\eb/{GOOD_UUID}",
        f"\u0430cme/web/{GOOD_UUID}",  # Cyrillic a
        f"acme/web/{GOOD_UUID.upper()}",
        "acme/web/not-a-uuid",
        "acme/web/3f2b8c1e-9a4d-1c6e-8f10-2b7d9e0a1c55",  # uuid1, not uuid4
        f"acme/web/{GOOD_UUID}\n",
        f"{'a' * 65}/web/{GOOD_UUID}",
        "a" * 10_000,
        f"acme/web/{GOOD_UUID}\x00",
        f"acme/we.b/{GOOD_UUID}",
    ],
)
def test_parse_refuses_hostile_ids(bad: str) -> None:
    with pytest.raises(InvalidRunId):
        RunId.parse(bad)


def test_invalid_run_id_is_a_value_error_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="expected exactly three parts"):
        RunId.parse("acme/web")


@pytest.mark.parametrize("bad", [None, 42, b"acme/web/x"])
def test_parse_refuses_non_strings(bad: object) -> None:
    with pytest.raises(InvalidRunId, match="must be a string"):
        RunId.parse(bad)
