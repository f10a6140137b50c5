"""The seal and events.jsonl: one record, one check (faber_runlog._log.protocol), used by every reader."""

from __future__ import annotations

from typing import Any

import pytest

from faber_runlog._log.protocol import SealRecord, file_digest, jsonl_problem, seal_metadata, seal_record

JSONL = b'{"event_id":1}\n{"event_id":2}\n'


def _seal(**meta: Any) -> dict[str, Any]:
    return {"type": "log_sealed", "event_id": 3, "metadata": {**seal_metadata(JSONL, 2, "t"), **meta}}


def test_a_seal_written_for_a_file_describes_that_file() -> None:
    record = seal_record(_seal())
    assert SealRecord(3, 2, len(JSONL), file_digest(JSONL), "t") == record
    assert record is not None
    assert None is jsonl_problem(record, JSONL)


@pytest.mark.parametrize(
    ("seal", "seq"),
    [
        (None, None),
        ({"type": "step_start", "event_id": 3, "metadata": {"through": 2, "size": 1}}, None),
        ({"type": "log_sealed", "event_id": 4, "metadata": {"through": 2, "size": 1}}, None),  # not through + 1
        ({"type": "log_sealed", "event_id": 3, "metadata": {"through": 2, "size": 1}}, 5),  # read at another number
        ({"type": "log_sealed", "event_id": 3, "metadata": {"through": True, "size": 1}}, None),
        ({"type": "log_sealed", "event_id": 3, "metadata": {"through": 2, "size": -1}}, None),
        ({"type": "log_sealed", "event_id": 3, "metadata": "through 2"}, None),
    ],
)
def test_what_is_no_seal_gives_no_record(seal: dict[str, Any] | None, seq: int | None) -> None:
    assert None is seal_record(seal, seq)


def test_the_seal_number_may_come_from_where_it_was_read() -> None:
    record = seal_record({"type": "log_sealed", "metadata": {"through": 2, "size": len(JSONL)}}, 3)
    assert SealRecord(3, 2, len(JSONL), None) == record


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (JSONL[:-1], f"it is {len(JSONL) - 1} bytes, the seal says {len(JSONL)}"),
        (JSONL.replace(b"\n", b" ", 1), "it holds 1 lines, the seal says 2"),  # same size, a line fewer
        (JSONL.replace(b"1", b"9"), f"its digest {file_digest(JSONL.replace(b'1', b'9'))} differs"),
    ],
)
def test_a_file_that_differs_from_its_seal_is_named_by_what_differs(data: bytes, problem: str) -> None:
    record = seal_record(_seal())
    assert record is not None
    found = jsonl_problem(record, data)
    assert found is not None
    assert problem == found[: len(problem)]


def test_a_reader_that_checks_lines_itself_may_skip_the_digest() -> None:
    record = seal_record(_seal())
    assert record is not None
    assert None is jsonl_problem(record, JSONL.replace(b"1", b"9"), check_digest=False)
    assert jsonl_problem(record, JSONL.replace(b"1", b"9")) is not None


def test_a_decoded_seal_event_gives_the_same_record_as_its_mapping() -> None:
    from faber_runlog._domain.events import Event
    from faber_runlog._log.protocol import seal_of

    event = Event.from_dict({**_seal(), "run_id": "acme/web/x", "timestamp": "2026-12-06T00:00:00.000000Z"})
    assert seal_record(_seal()) == seal_of(event)
