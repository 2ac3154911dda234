"""The baselines: a bare grpc.aio unary echo service, no persistence; and a bare grpc.aio
server stream (W3's baseline) that writes one pre-encoded message, as many times as the
client reads, to every subscriber."""

from __future__ import annotations

import asyncio
import sys

import grpc


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
    return request


async def stream(request: bytes, context: grpc.aio.ServicerContext) -> None:  # type: ignore[type-arg]
    """The request is the message size in bytes (ASCII digits). The same bytes object is
    written over and over, as flowsvc writes an event encoded once to every subscriber: each
    write waits for flow control, so it goes as fast as the subscriber reads."""
    message = b"e" * int(request or b"1024")
    while True:
        await context.write(message)


async def main() -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
