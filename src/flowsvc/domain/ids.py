"""Identifiers and clock, in one place so tests and stores agree on their form."""

from __future__ import annotations

import os
import re
import uuid
from datetime import UTC, datetime

from flowsvc.domain.errors import InvalidArgument, NotFound

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


_random = bytearray()


def new_id() -> str:
    """A random (version 4) UUID; entropy is read from the OS in blocks, not per id."""
    global _random
    if len(_random) < 16:
        _random = bytearray(os.urandom(4096))
    raw = _random[:16]
    del _random[:16]
    return str(uuid.UUID(bytes=bytes(raw), version=4))


def now() -> datetime:
    return datetime.now(UTC)


def require_id(field: str, value: str, kind: str) -> str:
    """An empty id is bad input; an id of the wrong form cannot name anything: NOT_FOUND."""
    if not value:
        raise InvalidArgument.one(field, "required")
    if not _UUID.fullmatch(value):
        raise NotFound(kind, value[:80])
    return value
