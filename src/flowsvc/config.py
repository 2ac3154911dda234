"""Server settings: defaults, then environment, then command-line flags."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TypeVar

from flowsvc.domain.ids import now
from flowsvc.domain.limits import Limits
from flowsvc.locations import default_database_url

DEFAULT_LISTEN = "127.0.0.1:50051"
T = TypeVar("T")
# Every name Python's logging takes (WARN and FATAL included).
LOG_LEVELS = tuple(logging.getLevelNamesMapping())
# SQLite's names, in the order of the numbers it also takes (0-3).
SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


class _Env:
    """FLOWSVC_* variables parsed; one that does not parse stops the start, named (a
    ValueError the command prints as one line), never a traceback about int()."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def integer(self, name: str, default: int) -> int:
        return self._parsed(name, default, int, "not a whole number")

    def number(self, name: str, default: float) -> float:
        return self._parsed(name, default, float, "not a number")

    def _parsed(self, name: str, default: T, parse: Callable[[str], T], problem: str) -> T:
        raw = self._env.get(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r}: {problem}") from None

    def json_object(self, name: str) -> dict[str, object]:
        raw = self._env.get(name, "{}")
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"{name}: not JSON ({exc})") from None
        if not isinstance(value, dict):
            raise ValueError(f"{name}: a JSON object is expected")
        return value

    def choice(
        self, name: str, default: str, allowed: tuple[str, ...], *, numbered: bool = False
    ) -> str:
        """One of `allowed`, in any case (or, `numbered`, its position)."""
        raw = self._env.get(name, default)
        value = raw.strip().upper()
        if numbered and value.isdigit() and int(value) < len(allowed):
            value = allowed[int(value)]
        if value not in allowed:
            raise ValueError(f"{name}={raw!r}: one of {', '.join(allowed)}")
        return value


@dataclass(frozen=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    # Not relative to the working directory: see flowsvc.locations.
    database_url: str = field(default_factory=default_database_url)
    # Seconds in-flight calls get to finish on SIGTERM/SIGINT before they are cut.
    grace_seconds: float = 10.0
    # NORMAL survives a killed process; FULL also survives power loss, at a cost per commit.
    sqlite_synchronous: str = "NORMAL"
    # SQLite: while batches average this many journals or more, they are committed by a
    # process of its own (store/writer_process.py); 0: always by the server's thread.
    sqlite_writer_process_from: int = 4
    # Pooled connections for reads; 0: the backend's default (store/database.py).
    read_pool_size: int = 0
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
    # Models. `openai/<model>` goes to this OpenAI-compatible endpoint (the SDK's default,
    # api.openai.com, when only a key is given). Keys are never logged or stored.
    openai_base_url: str = ""
    openai_api_key: str = field(default="", repr=False)
    # More endpoints by name: {"local": {"base_url": "...", "api_key_env": "LOCAL_KEY"}}
    # makes `local/<model>` go there.
    model_endpoints: dict[str, dict[str, str]] = field(default_factory=dict)
    model_timeout: float = 60.0  # one attempt
    model_max_retries: int = 2  # on 429, 5xx and connection errors, with backoff
    step_timeout: float = 300.0  # a whole LLM or HTTP step, retries included
    # USD per million tokens: {"openai/gpt-4o-mini": {"input": 0.15, "output": 0.6}}
    model_prices: dict[str, dict[str, float]] = field(default_factory=dict)
    # HTTP steps: hosts ("host" or "host:port") a flow may call; none by default.
    http_allow_hosts: tuple[str, ...] = ()
    http_timeout: float = 10.0
    http_max_response_bytes: int = 1_048_576
    # TLS: certificate chain and key (PEM files) turn it on; a client CA makes it mutual TLS,
    # where every client must present a certificate that CA signed.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # Larger requests are refused by gRPC itself with RESOURCE_EXHAUSTED.
    max_request_bytes: int = 4 * 1024 * 1024
    # Replicas: a session's lease lasts this long unless renewed (every quarter of it); the
    # runs of a replica that died are taken over within about this long.
    lease_seconds: float = 10.0
    # How often each replica looks for runs to take over and cancel requests to honour.
    claim_poll_seconds: float = 0.5
    # Prometheus text at http://HOST:PORT/metrics when set; off when empty.
    metrics_listen: str = ""
    # Flows whose runs are counted under their own id (others as "other"): labels stay bounded.
    metrics_flow_ids: tuple[str, ...] = ()
    # How often subscribers' sessions are checked for events a lost notification missed.
    feed_poll_seconds: float = 1.0
    # Webhooks: one POST may take this long; failed ones are retried after base, base*3, ...
    # (at most 6 h apart) until `window` seconds after the event, then marked FAILED.
    webhook_timeout: float = 10.0
    webhook_retry_base_seconds: float = 5.0
    webhook_retry_window_seconds: float = 86_400.0
    # How often each replica looks for due deliveries (its own commits wake it at once).
    webhook_poll_seconds: float = 0.5
    # Schedules: how often each replica looks for due ticks; "latest" or "none" is the
    # catch-up of a schedule that names none.
    schedule_poll_seconds: float = 0.5

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env = os.environ
        e = _Env(env)
        values: dict[str, object] = {
            "listen": env.get("FLOWSVC_LISTEN", DEFAULT_LISTEN),
            "database_url": env.get("FLOWSVC_DATABASE_URL") or default_database_url(),
            "grace_seconds": e.number("FLOWSVC_GRACE_SECONDS", 10),
            "sqlite_synchronous": e.choice(
                "FLOWSVC_SQLITE_SYNCHRONOUS", "NORMAL", SYNCHRONOUS, numbered=True
            ),
            "sqlite_writer_process_from": e.integer("FLOWSVC_SQLITE_WRITER_PROCESS_FROM", 4),
            "read_pool_size": e.integer("FLOWSVC_READ_POOL_SIZE", 0),
            "log_level": e.choice("FLOWSVC_LOG_LEVEL", "INFO", LOG_LEVELS),
            "step_limit": e.integer("FLOWSVC_STEP_LIMIT", 1000),
            "subscriber_queue": e.integer("FLOWSVC_SUBSCRIBER_QUEUE", 1024),
            "stream_write_timeout": e.number("FLOWSVC_STREAM_WRITE_TIMEOUT", 10),
            "openai_base_url": env.get("FLOWSVC_OPENAI_BASE_URL", ""),
            "openai_api_key": env.get("FLOWSVC_OPENAI_API_KEY", ""),
            "model_endpoints": e.json_object("FLOWSVC_MODEL_ENDPOINTS"),
            "model_timeout": e.number("FLOWSVC_MODEL_TIMEOUT", 60),
            "model_max_retries": e.integer("FLOWSVC_MODEL_MAX_RETRIES", 2),
            "step_timeout": e.number("FLOWSVC_STEP_TIMEOUT", 300),
            "model_prices": e.json_object("FLOWSVC_MODEL_PRICES"),
            "http_allow_hosts": tuple(
                h.strip() for h in env.get("FLOWSVC_HTTP_ALLOW_HOSTS", "").split(",") if h.strip()
            ),
            "http_timeout": e.number("FLOWSVC_HTTP_TIMEOUT", 10),
            "http_max_response_bytes": e.integer("FLOWSVC_HTTP_MAX_RESPONSE_BYTES", 1048576),
            "tls_cert_file": env.get("FLOWSVC_TLS_CERT", ""),
            "tls_key_file": env.get("FLOWSVC_TLS_KEY", ""),
            "tls_client_ca_file": env.get("FLOWSVC_TLS_CLIENT_CA", ""),
            "lease_seconds": e.number("FLOWSVC_LEASE_SECONDS", 10),
            "metrics_listen": env.get("FLOWSVC_METRICS_LISTEN", ""),
            "metrics_flow_ids": tuple(
                f.strip() for f in env.get("FLOWSVC_METRICS_FLOW_IDS", "").split(",") if f.strip()
            ),
            "claim_poll_seconds": e.number("FLOWSVC_CLAIM_POLL_SECONDS", 0.5),
            "feed_poll_seconds": e.number("FLOWSVC_FEED_POLL_SECONDS", 1),
            "webhook_timeout": e.number("FLOWSVC_WEBHOOK_TIMEOUT", 10),
            "webhook_retry_base_seconds": e.number("FLOWSVC_WEBHOOK_RETRY_BASE_SECONDS", 5),
            "webhook_retry_window_seconds": e.number("FLOWSVC_WEBHOOK_RETRY_WINDOW_SECONDS", 86400),
            "webhook_poll_seconds": e.number("FLOWSVC_WEBHOOK_POLL_SECONDS", 0.5),
            "schedule_poll_seconds": e.number("FLOWSVC_SCHEDULE_POLL_SECONDS", 0.5),
        }
        limits = {
            f.name: e.integer(f"FLOWSVC_{f.name.upper()}", 0)
            for f in fields(Limits)
            if f"FLOWSVC_{f.name.upper()}" in env
        }
        if limits:
            values["limits"] = Limits(**limits)
        if "FLOWSVC_MAX_REQUEST_BYTES" in env:
            values["max_request_bytes"] = e.integer("FLOWSVC_MAX_REQUEST_BYTES", 0)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def normalize_database_url(url: str) -> str:
    """Accept plain `sqlite:///file` and `postgresql://` and pick the async drivers."""
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url[len("sqlite:") :]
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url
