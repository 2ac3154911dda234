"""Identifiers and clock, in one place so tests and stores agree on their form."""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime

from flowsvc.domain.errors import InvalidArgument, NotFound

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


_random = bytearray()


def _forget_random() -> None:
    """A forked child must not hand out its parent's next ids."""
    global _random
    _random = bytearray()


os.register_at_fork(after_in_child=_forget_random)


def new_id() -> str:
    """A time-ordered (version 7) UUID: 48 bits of Unix milliseconds, then 74 random bits.
    New rows land at the end of every index on their id instead of scattering its pages; the
    randomness is read from the OS in blocks (not per id) and never shared with a fork."""
    global _random
    if len(_random) < 10:
        _random = bytearray(os.urandom(4096))
    rand = int.from_bytes(_random[-10:])
    del _random[-10:]  # from the end: nothing moves
    millis = time.time_ns() // 1_000_000
    value = (millis & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & 0x3FFF_FFFF_FFFF_FFFF
    # The canonical text of uuid.UUID(int=value), formatted directly (a third of the cost:
    # a run makes a dozen ids).
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def now() -> datetime:
    return datetime.now(UTC)


def require_id(field: str, value: str, kind: str) -> str:
    """An empty id is bad input; an id of the wrong form cannot name anything: NOT_FOUND."""
    if not value:
        raise InvalidArgument.one(field, "required")
    if not _UUID.fullmatch(value):
        raise NotFound(kind, value[:80])
    return value
