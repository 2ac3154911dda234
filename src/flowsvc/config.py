"""Server settings: defaults, then environment, then command-line flags."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from flowsvc.domain.ids import now
from flowsvc.domain.limits import Limits

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./var/flowsvc.db"


@dataclass(frozen=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    database_url: str = DEFAULT_DATABASE_URL
    # Seconds in-flight calls get to finish on SIGTERM/SIGINT before they are cut.
    grace_seconds: float = 10.0
    # NORMAL survives a killed process; FULL also survives power loss, at a cost per commit.
    sqlite_synchronous: str = "NORMAL"
    log_level: str = "INFO"
    limits: Limits = field(default_factory=Limits)
    # A run that takes more steps than this ends as ERROR (a loop that never reaches END).
    step_limit: int = 1000
    # Events a subscriber may fall behind before it is cut off (it resumes by seq).
    subscriber_queue: int = 1024
    # Seconds a stream write may wait on a client that stopped reading.
    stream_write_timeout: float = 10.0
    # How often sessions past their expiry are marked EXPIRED.
    expiry_sweep_seconds: float = 30.0
    clock: Callable[[], datetime] = now

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env = os.environ
        values: dict[str, object] = {
            "listen": env.get("FLOWSVC_LISTEN", DEFAULT_LISTEN),
            "database_url": env.get("FLOWSVC_DATABASE_URL", DEFAULT_DATABASE_URL),
            "grace_seconds": float(env.get("FLOWSVC_GRACE_SECONDS", "10")),
            "sqlite_synchronous": env.get("FLOWSVC_SQLITE_SYNCHRONOUS", "NORMAL").upper(),
            "log_level": env.get("FLOWSVC_LOG_LEVEL", "INFO").upper(),
            "step_limit": int(env.get("FLOWSVC_STEP_LIMIT", "1000")),
            "subscriber_queue": int(env.get("FLOWSVC_SUBSCRIBER_QUEUE", "1024")),
            "stream_write_timeout": float(env.get("FLOWSVC_STREAM_WRITE_TIMEOUT", "10")),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def normalize_database_url(url: str) -> str:
    """Accept plain `sqlite:///file` and `postgresql://` and pick the async drivers."""
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url[len("sqlite:") :]
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url
