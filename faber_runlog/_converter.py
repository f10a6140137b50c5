"""The one private cattrs converter used for every model (never the global one)."""

from __future__ import annotations

import cattrs
from cattrs.preconf.orjson import make_converter

__all__ = ["converter"]

converter: cattrs.Converter = make_converter(omit_if_default=True, forbid_extra_keys=False)
