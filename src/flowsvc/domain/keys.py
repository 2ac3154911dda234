"""API keys: minted once, stored only as a salted hash, checked in constant time."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, replace
from datetime import datetime

from flowsvc.domain.errors import InvalidArgument, PermissionDenied, Unauthenticated
from flowsvc.domain.ids import now
from flowsvc.domain.model import ApiKey, Principal
from flowsvc.domain.ports import KeyStore

KEY_PREFIX = "fsk"
# A verified key is trusted this long before the store is asked again: a key revoked by
# another process (the CLI) stops working within this time, open streams included.
CACHE_SECONDS = 1.0
# last_used_at is written at most this often per key.
TOUCH_SECONDS = 60.0


def _hash(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


@dataclass(frozen=True, slots=True)
class MintedKey:
    record: ApiKey
    secret: str  # the whole key as the client sends it; shown once, never stored


def check_org_id(org: str) -> str:
    if not org or len(org) > 128 or not all(c.isalnum() or c in "-_." for c in org):
        raise InvalidArgument.one("org", "1 to 128 letters, digits, '-', '_' or '.'")
    return org


class Keys:
    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._cache: dict[str, tuple[float, ApiKey]] = {}
        self._touches: set[asyncio.Task[None]] = set()
        # By key id, only for keys a caller proved it holds: see _verify.
        self._verified: dict[str, tuple[bytes, bytes]] = {}
        self._principals: dict[str, Principal] = {}
        self._fetches: dict[str, asyncio.Future[ApiKey | None]] = {}  # reads under way

    async def mint(self, org: str, expires_at: datetime | None = None) -> MintedKey:
        check_org_id(org)
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        record = ApiKey(
            id=key_id,
            organisation_id=org,
            salt=salt,
            secret_hash=_hash(salt, secret),
            created_at=now(),
            expires_at=expires_at,
        )
        await self._store.add_key(record)
        return MintedKey(record, f"{KEY_PREFIX}_{key_id}_{secret}")

    async def authenticate(self, presented: str | None, requested_org: str | None) -> Principal:
        if not presented:
            raise Unauthenticated(
                "missing API key: send metadata 'authorization: Bearer <key>' or 'api-key: <key>'"
            )
        parts = presented.split("_", 2)
        if len(parts) != 3 or parts[0] != KEY_PREFIX:
            raise Unauthenticated("malformed API key")
        key_id, secret = parts[1], parts[2]
        record = await self._lookup(key_id)
        if record is None or not self._verify(record, secret):
            raise Unauthenticated("invalid API key")
        stamp = now()
        if record.revoked_at is not None:
            raise Unauthenticated("API key revoked")
        if record.expires_at is not None and record.expires_at <= stamp:
            raise Unauthenticated("API key expired")
        if requested_org and requested_org != record.organisation_id:
            raise PermissionDenied("current-org-id does not match the API key's organisation")
        self._touch(record, stamp)
        principal = self._principals.get(record.id)
        if principal is None or principal.organisation_id != record.organisation_id:
            principal = Principal(organisation_id=record.organisation_id, key_id=record.id)
            self._principals[record.id] = principal
        return principal

    def _verify(self, record: ApiKey, secret: str) -> bool:
        """Does `secret` hash to the key's hash? Once a secret has, it is kept (in memory, as
        the client sends it with every call) beside the hash it matched, and the next calls
        compare with it in constant time rather than hash again: a different secret cannot
        match that hash. Revocation, expiry and deletion are still read from the record,
        which is looked up again every CACHE_SECONDS."""
        presented = secret.encode()
        verified = self._verified.get(record.id)
        if verified is not None and verified[0] == record.secret_hash:
            return hmac.compare_digest(presented, verified[1])
        if not hmac.compare_digest(_hash(record.salt, secret), record.secret_hash):
            return False
        self._verified[record.id] = (record.secret_hash, presented)
        return True

    def _touch(self, record: ApiKey, stamp: datetime) -> None:
        last = record.last_used_at
        if last is not None and (stamp - last).total_seconds() < TOUCH_SECONDS:
            return
        touched = replace(record, last_used_at=stamp)
        cached = self._cache.get(record.id)
        if cached is not None:
            self._cache[record.id] = (cached[0], touched)
        task = asyncio.create_task(self._store.touch_key(record.id, stamp))
        self._touches.add(task)
        task.add_done_callback(self._touches.discard)

    async def still_valid(self, principal: Principal) -> bool:
        """For open streams: is the key behind them still good (not revoked or expired)?"""
        record = await self._lookup(principal.key_id)
        if record is None or record.revoked_at is not None:
            return False
        return record.expires_at is None or record.expires_at > now()

    async def list(self, org: str = "") -> list[ApiKey]:
        return await self._store.list_keys(org)

    async def revoke(self, key_id: str) -> bool:
        self._forget(key_id)
        return await self._store.revoke_key(key_id, now())

    async def _lookup(self, key_id: str) -> ApiKey | None:
        cached = self._cache.get(key_id)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        # One read of the key at a time: the calls that find its entry stale while the read is
        # under way wait for that read (made after the entry went stale, so as fresh as one of
        # their own) instead of each sending the same query.
        fetch = self._fetches.get(key_id)
        if fetch is None:
            fetch = asyncio.ensure_future(self._fetch(key_id))
            self._fetches[key_id] = fetch
            fetch.add_done_callback(functools.partial(self._fetched, key_id))
        # Shielded: a caller that is cancelled leaves the read to the others waiting for it.
        return await asyncio.shield(fetch)

    def _fetched(self, key_id: str, fetch: asyncio.Future[ApiKey | None]) -> None:
        self._fetches.pop(key_id, None)
        if not fetch.cancelled():
            fetch.exception()  # retrieved: the waiters (if any are left) raise it themselves

    async def _fetch(self, key_id: str) -> ApiKey | None:
        clock = time.monotonic()
        record = await self._store.get_key(key_id)
        if record is None:
            self._forget(key_id)
        else:
            self._cache[key_id] = (clock, record)
        return record

    def _forget(self, key_id: str) -> None:
        self._cache.pop(key_id, None)
        self._verified.pop(key_id, None)
        self._principals.pop(key_id, None)
