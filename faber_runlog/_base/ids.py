"""Run ids: ``{org}/{project}/{uuid4}``, parsed and validated in one place.

Every path the store builds starts from a :class:`RunId`, so anything that
could escape the store root (``..``, separators, look-alike characters) is
refused here, before a path exists.
"""

from __future__ import annotations

import re
import uuid

import attrs

from faber_runlog.errors import InvalidRunId

__all__ = ["RunId", "is_slug", "is_uuid4", "validate_slug"]

_SLUG = re.compile(r"[a-z0-9_-]{1,64}", re.ASCII)
_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", re.ASCII)
_MAX_LEN = 64 + 1 + 64 + 1 + 36


def validate_slug(value: object, what: str = "slug") -> str:
    """Return ``value`` if it is a valid org/project slug, else raise :class:`InvalidRunId`."""
    if not isinstance(value, str) or _SLUG.fullmatch(value) is None:
        raise InvalidRunId(f"invalid {what} {value!r}: use 1-64 characters from lowercase a-z, 0-9, '-' and '_'")
    return value


def is_slug(name: str) -> bool:
    """Whether ``name`` is a valid org/project slug (:func:`validate_slug` without the error)."""
    return _SLUG.fullmatch(name) is not None


def is_uuid4(text: object) -> bool:
    """Whether ``text`` is a run uuid as :class:`RunId` accepts it (lowercase canonical uuid4)."""
    return isinstance(text, str) and _UUID4.fullmatch(text) is not None


@attrs.frozen(slots=True, order=True)
class RunId:
    """A validated run id; ``str(run_id)`` is the canonical ``org/project/uuid``."""

    org: str
    project: str
    uuid: str

    def __attrs_post_init__(self) -> None:
        validate_slug(self.org, "org")
        validate_slug(self.project, "project")
        if not isinstance(self.uuid, str) or _UUID4.fullmatch(self.uuid) is None:
            raise InvalidRunId(
                f"invalid run uuid {self.uuid!r}: expected a lowercase canonical uuid4 "
                "such as '3f2b8c1e-9a4d-4c6e-8f10-2b7d9e0a1c55'"
            )

    @classmethod
    def new(cls, org: str, project: str) -> RunId:
        """Mint a fresh id in ``org/project``."""
        return cls(org, project, str(uuid.uuid4()))

    @classmethod
    def parse(cls, value: object) -> RunId:
        """Parse ``org/project/uuid`` (or pass a :class:`RunId` through)."""
        if isinstance(value, RunId):
            return value
        if not isinstance(value, str):
            raise InvalidRunId(f"run id must be a string 'org/project/uuid', got {type(value).__name__}")
        if len(value) > _MAX_LEN:
            raise InvalidRunId(f"run id is {len(value)} characters long; at most {_MAX_LEN} are allowed")
        parts = value.split("/")
        if len(parts) != 3:
            raise InvalidRunId(f"invalid run id {value!r}: expected exactly three parts 'org/project/uuid'")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.org}/{self.project}/{self.uuid}"
