"""RunEventBatch messages built from events encoded once for every stream."""

from __future__ import annotations

import functools

from flowsvc.api.convert.records import event_bytes
from flowsvc.domain import runs

# A RunEventBatch message's bound (one event larger than this goes alone), well under the
# 4 MiB a gRPC client receives by default.
MAX_BATCH_BYTES = 256 * 1024


def event_batches(
    events: list[runs.RunEvent], max_bytes: int = MAX_BATCH_BYTES
) -> list[tuple[bytes, int]]:
    """The events as serialized RunEventBatch messages, each with the index in `events` just
    past its last event. A batch's bytes are its events' bytes (`event_bytes`, encoded once
    for every stream) each behind the field's tag and length: nothing is encoded again."""
    out: list[tuple[bytes, int]] = []
    parts: list[bytes] = []
    size = 0
    for i, event in enumerate(events):
        data = event_bytes(event)
        head = _event_field_head(len(data))
        if parts and size + len(head) + len(data) > max_bytes:
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
