"""The on-disk format's codecs (``_format``): pure functions, checked against simple models."""

from __future__ import annotations

import random

import pytest

from faber_runlog._format.layout import iter_jsonl
from faber_runlog.errors import CorruptData


def _lines_read(body: bytes, after: int, last: int, size: int) -> tuple[list[bytes], bool]:
    got: list[bytes] = []
    try:
        for chunk in iter_jsonl(body, after, last, size):
            assert 0 < len(chunk) <= size
            got += chunk
    except CorruptData:
        return got, True
    return got, False


@pytest.mark.parametrize("seed", range(4))
def test_iter_jsonl_gives_the_lines_asked_for_in_bounded_chunks_and_refuses_a_short_body(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(500):
        lines = [b"e" * rng.randint(0, 600) for _ in range(rng.randint(0, 40))]
        body = b"".join(line + b"\n" for line in lines)
        if body and rng.random() < 0.4:
            body = body[: rng.randint(0, len(body) - 1)]  # cut short, maybe mid-line
        complete = body.count(b"\n")
        last = rng.randint(1, len(lines) + 3)
        after = rng.randint(0, last - 1)
        got, refused = _lines_read(body, after, last, rng.randint(1, 9))
        assert (lines[after : min(last, complete)], complete < last) == (got, refused)


def test_iter_jsonl_reads_a_line_longer_than_its_first_window() -> None:
    body = b"a\n" + b"b" * 100_000 + b"\nc\n"
    assert [b"a", b"b" * 100_000, b"c"] == [line for chunk in iter_jsonl(body, 0, 3, 2) for line in chunk]
