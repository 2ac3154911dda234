"""Ids: time-ordered, and unique across processes and forks."""

from __future__ import annotations

import os
import time
import uuid

from flowsvc.domain.ids import new_id


def test_ids_are_version_7_uuids() -> None:
    parsed = uuid.UUID(new_id())
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_ids_made_later_sort_later() -> None:
    first = new_id()
    time.sleep(0.002)
    assert new_id() > first


def test_a_forked_child_makes_ids_its_parent_does_not() -> None:
    new_id()  # the parent has random bytes buffered
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, ",".join(new_id() for _ in range(50)).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = set(os.read(read, 1 << 16).decode().split(","))
    parent = {new_id() for _ in range(50)}
    assert len(child) == 50
    assert not child & parent


def test_ids_are_written_in_the_canonical_uuid_form() -> None:
    for _ in range(1000):
        made = new_id()
        assert str(uuid.UUID(made)) == made  # lower-case hex, hyphens at 8-4-4-4-12
