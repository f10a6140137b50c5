"""Deprecated alias of the private format module; kept so older imports keep working."""

from __future__ import annotations

from faber_runlog._format import SEQ_WIDTH, RunLayout, parse_seq_name, seq_name

__all__ = ["SEQ_WIDTH", "RunLayout", "parse_seq_name", "seq_name"]
