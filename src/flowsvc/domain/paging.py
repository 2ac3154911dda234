"""Opaque page tokens (AIP-158): a keyset cursor bound to the filter it was issued for."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from flowsvc.domain.errors import InvalidArgument
from flowsvc.domain.limits import Limits


@dataclass(frozen=True, slots=True)
class Cursor:
    """Position after the last item served: lists are ordered by (created_at, id) descending."""

    created_at: datetime
    id: str


@dataclass(frozen=True, slots=True)
class Page:
    size: int
    after: Cursor | None


def _fingerprint(filters: tuple[str, ...]) -> str:
    return hashlib.sha256("\x1f".join(filters).encode()).hexdigest()[:16]


def parse_page(page_size: int, page_token: str, limits: Limits, *filters: str) -> Page:
    if page_size < 0:
        raise InvalidArgument.one("page_size", "must not be negative")
    size = min(page_size or limits.default_page_size, limits.max_page_size)
    if not page_token:
        return Page(size, None)
    try:
        padded = page_token + "=" * (-len(page_token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        cursor = Cursor(datetime.fromisoformat(data["t"]), str(data["i"]))
        fingerprint = data["f"]
    except (ValueError, KeyError, TypeError, UnicodeError) as exc:
        raise InvalidArgument.one("page_token", "not a page token this service issued") from exc
    if fingerprint != _fingerprint(filters):
        raise InvalidArgument.one(
            "page_token", "was issued for a different query; keep the other fields unchanged"
        )
    return Page(size, cursor)


def next_token(last: Cursor, *filters: str) -> str:
    raw = json.dumps({"t": last.created_at.isoformat(), "i": last.id, "f": _fingerprint(filters)})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


class Listable(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def created_at(self) -> datetime: ...


T = TypeVar("T", bound=Listable)


@dataclass(frozen=True, slots=True)
class Listed(Generic[T]):
    items: list[T]
    next_page_token: str


def listed(found: Sequence[T], page: Page, *filters: str) -> Listed[T]:
    """One page of what a store returned (it fetches page.size + 1 to show there is more)."""
    if len(found) <= page.size:
        return Listed(list(found), "")
    items = list(found[: page.size])
    return Listed(items, next_token(Cursor(items[-1].created_at, items[-1].id), *filters))
