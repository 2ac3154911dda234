"""RunEventBatch messages built from events encoded once for every stream, and built once for
every subscriber that takes the same events together."""

from __future__ import annotations

import functools

from flowsvc.api.convert.records import event_bytes
from flowsvc.domain import runs

# A RunEventBatch message's bound (one event larger than this goes alone): HTTP/2's initial
# stream window, so that a message fits what a client that has not read yet can take. At
# 256 KiB, a subscriber of large events that stopped reading sometimes never received its
# RESOURCE_EXHAUSTED (once in 7 runs of the test; none in 5 at 64 KiB, as with WatchSession).
# A chain5 run's events (about 8 KiB) fit in one message either way.
MAX_BATCH_BYTES = 64 * 1024
# What the batches recently built may hold, at most (they and their events are kept alive).
CACHE_BYTES = 4 * 1024 * 1024

Batches = list[tuple[bytes, int]]

# The messages last built, by the ids of their events: the subscribers of a session take a
# commit's events as the same objects, so the second to the two hundredth find them here.
# An entry holds its events, so that no other object can have their ids while it is here.
_built: dict[tuple[int, ...], tuple[list[runs.RunEvent], Batches, int]] = {}
_built_bytes = 0


def event_batches(events: list[runs.RunEvent]) -> Batches:
    """The events as serialized RunEventBatch messages, each with the index in `events` just
    past its last event. A batch's bytes are its events' bytes (`event_bytes`, encoded once
    for every stream) each behind the field's tag and length: nothing is encoded again; and
    the same events (the same objects) are framed once, for every stream that sends them."""
    global _built_bytes
    key = tuple(map(id, events))
    found = _built.get(key)
    if found is not None:
        return found[1]
    out = _frame(events)
    size = sum(len(data) for data, _ in out)
    if size <= CACHE_BYTES // 4:
        _built[key] = (events, out, size)
        _built_bytes += size
        while _built_bytes > CACHE_BYTES or len(_built) > 1024:
            _, _, dropped = _built.pop(next(iter(_built)))  # the oldest
            _built_bytes -= dropped
    return out


def _frame(events: list[runs.RunEvent]) -> Batches:
    out: Batches = []
    parts: list[bytes] = []
    size = 0
    for i, event in enumerate(events):
        data = event_bytes(event)
        head = _event_field_head(len(data))
        if parts and size + len(head) + len(data) > MAX_BATCH_BYTES:
            out.append((b"".join(parts), i))
            parts, size = [], 0
        parts += (head, data)
        size += len(head) + len(data)
    if parts:
        out.append((b"".join(parts), len(events)))
    return out


@functools.lru_cache(maxsize=4096)
def _event_field_head(length: int) -> bytes:
    """RunEventBatch.events' tag (field 1, length-delimited) and the varint length."""
    head = bytearray(b"\x0a")
    while length > 0x7F:
        head.append(length & 0x7F | 0x80)
        length >>= 7
    head.append(length)
    return bytes(head)
