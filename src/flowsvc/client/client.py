"""The async client: one channel, the key on every call, retries where safe, streams that
resume by themselves."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
from google.protobuf.message import Message

from flowsvc.client.errors import FlowsvcError, from_rpc_error
from flowsvc.client.retry import RetryPolicy, resumable, retry_delay
from flowsvc.client.rpcs import _FR, _SS, R, Rpcs
from flowsvc.v1 import flow_run_service_pb2 as frs
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import session_service_pb2 as ss

DEFAULT_SERVER = "127.0.0.1:50051"

CHANNEL_OPTIONS = [
    # grpc's own reconnect backoff starts at 1 s and grows to 120 s; a client resuming after a
    # server restart would sit out most of that. Ours (RetryPolicy) paces the retries instead.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # Long quiet streams (a session waiting for a person) stay open behind proxies; the server
    # accepts a ping every 10 s at most.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # A session with many steps and messages can pass grpc's default 4 MiB.
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


def tls_credentials(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> grpc.ChannelCredentials:
    """TLS with the system's roots, or `ca_file`'s; a client certificate for mutual TLS."""

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))


class Client(Rpcs):
    """`async with Client("host:port", api_key) as client: await client.get_session(id)`.

    `target` and `api_key` default to FLOWSVC_SERVER (else 127.0.0.1:50051) and
    FLOWSVC_API_KEY. `tls`: False for plaintext, True for TLS with the system's roots, or
    credentials from `tls_credentials()`; FLOWSVC_TLS=1 and FLOWSVC_TLS_CA=path do the same.
    `timeout` is the default deadline of unary calls in seconds (None: none; a run may take as
    long as its models do); streams take theirs per call."""

    def __init__(
        self,
        target: str | None = None,
        api_key: str | None = None,
        *,
        tls: bool | grpc.ChannelCredentials | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        metadata: list[tuple[str, str]] | None = None,
    ) -> None:
        self.target = target or os.environ.get("FLOWSVC_SERVER") or DEFAULT_SERVER
        key = api_key if api_key is not None else os.environ.get("FLOWSVC_API_KEY", "")
        self._metadata = list(metadata or [])
        if key:
            self._metadata.append(("authorization", f"Bearer {key}"))
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        if tls is None:
            tls = os.environ.get("FLOWSVC_TLS", "") in ("1", "true", "yes") or bool(
                os.environ.get("FLOWSVC_TLS_CA")
            )
        if tls is True:
            tls = tls_credentials(os.environ.get("FLOWSVC_TLS_CA") or None)
        if tls is False:
            self._channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        else:
            self._channel = grpc.aio.secure_channel(self.target, tls, options=CHANNEL_OPTIONS)
        self._callables: dict[str, Any] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def _callable(self, method: str, response: type[Message], streaming: bool) -> Any:
        found = self._callables.get(method)
        if found is None:
            make = self._channel.unary_stream if streaming else self._channel.unary_unary
            found = make(
                method,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response.FromString,
            )
            self._callables[method] = found
        return found

    async def _unary(
        self, method: str, request: Message, response: type[R], *, safe: bool, timeout: float | None
    ) -> R:
        loop = asyncio.get_running_loop()
        budget = self.timeout if timeout is None else timeout
        deadline = None if budget is None else loop.time() + budget
        call = self._callable(method, response, streaming=False)
        attempt = 0
        while True:
            attempt += 1
            remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
            try:
                result: R = await call(request, timeout=remaining, metadata=self._metadata)
                return result
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc)
            delay = retry_delay(error, self.retry, attempt) if safe else None
            if delay is None or (deadline is not None and loop.time() + delay >= deadline):
                raise error
            await asyncio.sleep(delay)

    async def _follow(
        self, request: Message, after_seq: int, timeout: float | None
    ) -> AsyncGenerator[pb.RunEvent, None]:
        messages = self._follow_batches(request, after_seq, timeout)
        try:
            async for events in messages:
                for event in events:
                    yield event
        finally:
            await messages.aclose()

    async def _follow_batches(
        self, request: Message, after_seq: int, timeout: float | None
    ) -> AsyncGenerator[list[pb.RunEvent], None]:
        """Follow an event stream, reconnecting from the last seq seen until it ends: the new
        events of each message (a RunEvent, or a RunEventBatch's events), in a list.

        Seqs are per session, gapless and increasing, so `seq <= last` is an event already
        delivered (a replay overlapping the live tail after a reconnect) and is dropped; STEP_DELTA
        (seq 0) is live only and passes through. A StreamRunFlow resumes as WatchRun once an
        event told us the run id; before that the same request (same request_id) is sent again,
        which the server answers with the same run."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        last = after_seq
        run_id = ""
        failures = 0
        received = False
        batched = isinstance(request, ss.WatchSessionBatchesRequest)
        while True:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise FlowsvcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            call = self._open(request, run_id, last, remaining)
            try:
                async for message in call:
                    failures, received = 0, True
                    fresh: list[pb.RunEvent] = []
                    for event in message.events if batched else (message,):
                        run_id = run_id or event.run_id
                        if event.seq:
                            if event.seq <= last:
                                continue
                            last = event.seq
                        fresh.append(event)
                    if fresh:
                        yield fresh
                return
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc)
            finally:
                # The caller stopped iterating (break, aclose, cancellation) or the stream
                # failed: end the call on the server too.
                call.cancel()
            failures += 1
            budget = self.retry.max_stream_attempts if received else self.retry.max_attempts
            if not resumable(error) or failures >= budget:
                raise error
            delay = self.retry.backoff(failures)
            if deadline is not None:
                delay = min(delay, max(deadline - loop.time(), 0.0))
            await asyncio.sleep(delay)

    def _open(self, request: Message, run_id: str, last: int, timeout: float | None) -> Any:
        response: type[Message] = pb.RunEvent
        if isinstance(request, ss.WatchSessionRequest):
            method, request = _SS + "WatchSession", _with_seq(request, last)
        elif isinstance(request, ss.WatchSessionBatchesRequest):
            method, request = _SS + "WatchSessionBatches", _with_seq(request, last)
            response = pb.RunEventBatch
        elif isinstance(request, frs.WatchRunRequest):
            method, request = _FR + "WatchRun", _with_seq(request, last)
        elif run_id:
            method, request = _FR + "WatchRun", frs.WatchRunRequest(run_id=run_id, after_seq=last)
        else:
            method = _FR + "StreamRunFlow"
        return self._callable(method, response, streaming=True)(
            request, timeout=timeout, metadata=self._metadata
        )


def _with_seq(request: Any, last: int) -> Any:
    copy = type(request)()
    copy.CopyFrom(request)
    copy.after_seq = last
    return copy
