"""Every RPC passes here: authentication, organisation scope, error mapping, the call log.

The servicers stay thin: they read the caller from `current_principal()` and raise domain
errors; this module turns those into statuses with details and logs one line per call.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from flowsvc import logs
from flowsvc.api.decode import Refusal, checked, core_receive_limit
from flowsvc.api.observe import Call, CallObserver
from flowsvc.api.status import rich_status, status_of
from flowsvc.domain.errors import DomainError, Unauthenticated
from flowsvc.domain.keys import Keys
from flowsvc.domain.model import Principal

log = logging.getLogger("flowsvc.rpc")

PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
KEY_RECHECK_SECONDS = 1.0
KEY_GONE = "flowsvc: api key no longer valid"
_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal")
_sent: contextvars.ContextVar[Callable[[int], None]] = contextvars.ContextVar("sent")


def current_principal() -> Principal:
    return _principal.get()


def _uncounted(count: int) -> None:
    return None


def messages_sent() -> Callable[[int], None]:
    """How a response stream that writes pre-encoded bytes (events, encoded once for all their
    subscribers) counts what it wrote, in bulk: the guard counts every other message itself
    as it serializes it."""
    return _sent.get(_uncounted)


def _presented_key(metadata: dict[str, str]) -> str | None:
    bearer = metadata.get("authorization", "")
    if bearer[:7].lower() == "bearer ":
        return bearer[7:].strip()
    return metadata.get("api-key") or None


class _Outcome:
    __slots__ = ("code", "failure")

    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK
        self.failure: tuple[grpc.StatusCode, str, Any] | None = None

    def fail(self, exc: BaseException, method: str) -> None:
        if isinstance(exc, DomainError):
            code, message, status = status_of(exc)
        elif isinstance(exc, NotImplementedError):
            code, message = grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented yet"
            status = rich_status(code, message, [])
        else:
            correlation = uuid.uuid4().hex[:16]
            log.exception(
                "unexpected error", extra={"method": method, "correlation_id": correlation}
            )
            code = grpc.StatusCode.INTERNAL
            message = f"internal error (correlation id {correlation})"
            status = rich_status(code, message, [])
        self.code = code
        self.failure = (code, message, status)

    async def abort(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if self.failure is None:
            return
        code, message, status = self.failure
        await context.abort(
            code,
            message,
            trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
        )


class CallGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self, keys: Keys, max_request_bytes: int, observer: CallObserver | None = None
    ) -> None:
        self._keys = keys
        self._key_streams: dict[str, set[asyncio.Task[Any]]] = {}  # open streams by API key
        self._key_watchers: dict[str, asyncio.Task[None]] = {}  # their recheck, one per key
        self._observer = observer or CallObserver()
        self._max_request_bytes = max_request_bytes
        # For grpc.max_receive_message_length: see decode.CORE_LIMIT_FACTOR.
        self.core_receive_limit = core_receive_limit(max_request_bytes)

    async def _enter(self, call: Call, metadata: dict[str, str]) -> Principal | None:
        if call.fields["method"].startswith(PUBLIC_PREFIXES):
            return None
        principal = await self._keys.authenticate(
            _presented_key(metadata), metadata.get("current-org-id") or None
        )
        _principal.set(principal)
        call.fields["organisation_id"] = principal.organisation_id
        return principal

    def _watch_key(self, principal: Principal, stream: asyncio.Task[Any]) -> Callable[[], None]:
        """An open stream ends when the key behind it is revoked or expires: one recheck per
        key with open streams, every KEY_RECHECK_SECONDS, however many streams it has (not a
        task and a lookup per stream). Returns what to call when the stream ends."""
        key_id = principal.key_id
        streams = self._key_streams.setdefault(key_id, set())
        streams.add(stream)
        if key_id not in self._key_watchers:
            self._key_watchers[key_id] = asyncio.create_task(self._recheck_key(principal))

        def release() -> None:
            streams.discard(stream)
            if not streams and self._key_streams.get(key_id) is streams:
                del self._key_streams[key_id]
                watcher = self._key_watchers.pop(key_id, None)
                if watcher is not None:
                    watcher.cancel()

        return release

    async def _recheck_key(self, principal: Principal) -> None:
        key_id = principal.key_id
        while True:
            await asyncio.sleep(KEY_RECHECK_SECONDS)
            try:
                valid = await self._keys.still_valid(principal)
            except Exception:
                # The store is unreachable for a moment: the streams go on, checked next time.
                log.warning("API key recheck failed", exc_info=True)
                continue
            if not valid:
                # A stream that opens from now on starts a watcher of its own (its call was
                # authenticated before the key went, or it would not have opened).
                self._key_watchers.pop(key_id, None)
                for stream in self._key_streams.pop(key_id, set()):
                    stream.cancel(KEY_GONE)
                return

    @staticmethod
    def _log(call: Call, code: grpc.StatusCode) -> None:
        logs.call_line(call.fields, code.name, call.finish(code))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None  # grpc answers UNIMPLEMENTED for a method the server does not have
        method: str = details.method
        metadata = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
        read = checked(handler.request_deserializer, self._max_request_bytes)

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, metadata),
                request_deserializer=read,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None and not inspect.isasyncgenfunction(
            handler.unary_stream
        ):
            serialize = handler.response_serializer

            sent = self._observer.message_sent

            def pass_bytes(message: Any) -> bytes:
                # Event streams write events serialized once for all their subscribers, and
                # count them in bulk (messages_sent): no call per message here.
                if message.__class__ is bytes:
                    return message
                sent(method, "server_stream", 1)
                return serialize(message)  # type: ignore[no-any-return]

            return grpc.unary_stream_rpc_method_handler(
                self._writer(handler.unary_stream, method, metadata),
                request_deserializer=read,
                response_serializer=pass_bytes,
            )
        if (
            method.startswith(PUBLIC_PREFIXES)
            and handler.stream_stream is not None
            and inspect.isasyncgenfunction(handler.stream_stream)
        ):
            # Reflection: public, so nothing to authenticate; its requests are still checked.
            return grpc.stream_stream_rpc_method_handler(
                self._public_stream(handler.stream_stream, method),
                request_deserializer=read,
                response_serializer=handler.response_serializer,
            )
        # Fail closed: a handler of a kind the guard does not wrap above (client-streaming, or a
        # response stream written as an async generator) would run unauthenticated, unscoped and
        # unlogged. It is refused with UNIMPLEMENTED, not UNAUTHENTICATED or PERMISSION_DENIED:
        # the fault is the server's, and no key the client could send would get it served.
        return grpc.stream_stream_rpc_method_handler(self._refused(method))

    def _unary(self, inner: Any, method: str, metadata: dict[str, str]) -> Any:
        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            call = self._observer.start(method, "unary", metadata)
            outcome = _Outcome()
            response = None
            try:
                await self._enter(call, metadata)
                if isinstance(request, Refusal):
                    raise request.error
                call.saw(request)
                response = await inner(request, context)
                call.saw(response)
            except asyncio.CancelledError:
                outcome.code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                outcome.fail(exc, method)
            finally:
                self._log(call, outcome.code)
            await outcome.abort(context)
            return response

        return unary

    def _writer(self, inner: Any, method: str, metadata: dict[str, str]) -> Any:
        sent = self._observer.message_sent

        async def writer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            call = self._observer.start(method, "server_stream", metadata)
            outcome = _Outcome()
            release: Callable[[], None] | None = None
            try:
                principal = await self._enter(call, metadata)
                if isinstance(request, Refusal):
                    raise request.error
                call.saw(request)
                if principal is not None:
                    this = asyncio.current_task()
                    assert this is not None
                    release = self._watch_key(principal, this)
                _sent.set(functools.partial(sent, method, "server_stream"))
                await inner(request, context)
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if exc.args == (KEY_GONE,) and task is not None:
                    task.uncancel()
                    outcome.fail(Unauthenticated("API key revoked or expired"), method)
                else:
                    outcome.code = grpc.StatusCode.CANCELLED
                    raise
            except Exception as exc:
                outcome.fail(exc, method)
            finally:
                if release is not None:
                    release()
                self._log(call, outcome.code)
            await outcome.abort(context)

        return writer

    def _public_stream(self, inner: Any, method: str) -> Any:
        async def requests(incoming: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for request in incoming:
                if isinstance(request, Refusal):
                    raise request.error
                yield request

        async def stream(
            incoming: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            call = self._observer.start(method, "bidi_stream", {})
            outcome = _Outcome()
            try:
                async for item in inner(requests(incoming), context):
                    yield item
            except asyncio.CancelledError:
                outcome.code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                outcome.fail(exc, method)
            finally:
                self._log(call, outcome.code)
            await outcome.abort(context)

        return stream

    def _refused(self, method: str) -> Any:
        async def refuse(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            call = self._observer.start(method, "unknown", {})
            outcome = _Outcome()
            code = grpc.StatusCode.UNIMPLEMENTED
            message = f"{method} is not available: the server cannot authenticate calls of its kind"
            outcome.code = code
            outcome.failure = (code, message, rich_status(code, message, []))
            self._log(call, outcome.code)
            await outcome.abort(context)

        return refuse
