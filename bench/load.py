"""Load generator, run as its own process: drives one workload and prints JSON figures."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import struct_pb2

from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import flow_run_service_pb2_grpc as fr_grpc
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import session_service_pb2 as ss
from flowsvc.v1 import session_service_pb2_grpc as ss_grpc

ECHO_METHOD = "/bench.Echo/Echo"
PAYLOAD = b"x" * 200


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def closed_loop(
    concurrency: int,
    seconds: float,
    call: Callable[[], Awaitable[None]] | list[Callable[[], Awaitable[None]]],
) -> dict[str, Any]:
    """`call` may be a list (one per target): caller i uses calls[i % len(calls)], so the
    callers are split evenly across the targets."""
    calls = call if isinstance(call, list) else [call]
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(one: Callable[[], Awaitable[None]]) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await one()
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(worker(calls[i % len(calls)]) for i in range(concurrency)))
    elapsed = time.perf_counter() - began
    return {
        "calls": len(latencies),
        "errors": errors,
        "per_second": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "seconds": elapsed,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=["echo", "w1", "w2", "w3-watch", "w3-drive", "w4"])
    parser.add_argument(
        "--target", required=True, help="HOST:PORT; w1 also takes a comma-separated list"
    )
    parser.add_argument("--key", default="")
    parser.add_argument("--flow", default="")
    parser.add_argument("--session", default="")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    metadata = (("authorization", f"Bearer {args.key}"),)
    targets = args.target.split(",")
    cpu = os.times()
    if args.workload == "w1" and len(targets) > 1:
        result = await w1_split(targets, metadata, args)
        json.dump({**result, "client_cpu_s": _cpu_since(cpu)}, sys.stdout)
        return
    async with grpc.aio.insecure_channel(args.target) as channel:
        if args.workload == "echo":
            echo = channel.unary_unary(ECHO_METHOD)

            async def call() -> None:
                await echo(PAYLOAD)

            result = await closed_loop(args.concurrency, args.seconds, call)
        elif args.workload == "w1":
            runs = fr_grpc.FlowRunServiceStub(channel)
            body = struct_pb2.Struct()
            body.update({"question": "why is the sky blue?"})
            request = fr.RunFlowRequest(flow_id=args.flow, body=body)

            async def call() -> None:
                run = await runs.RunFlow(request, metadata=metadata)
                assert run.status == pb.RUN_STATUS_COMPLETE, run.error

            result = await closed_loop(args.concurrency, args.seconds, call)
        elif args.workload == "w2":
            sessions = ss_grpc.SessionServiceStub(channel)
            inputs = struct_pb2.Struct()
            inputs.update({"topic": "tides"})

            async def call() -> None:
                s = await sessions.CreateSession(
                    ss.CreateSessionRequest(live_flow_id=args.flow, inputs=inputs, wait=True),
                    metadata=metadata,
                )
                assert s.status == pb.SESSION_STATUS_WAITING_FOR_INPUT
                done = await sessions.SubmitUserInput(
                    ss.SubmitUserInputRequest(session_id=s.id, user_input="why", wait=True),
                    metadata=metadata,
                )
                assert done.status == pb.SESSION_STATUS_COMPLETED

            result = await closed_loop(args.concurrency, args.seconds, call)
        elif args.workload == "w3-drive":
            runs = fr_grpc.FlowRunServiceStub(channel)
            body = struct_pb2.Struct()
            body.update({"question": "q"})
            request = fr.RunFlowRequest(
                flow_id=args.flow, body=body, options=pb.RunOptions(session_id=args.session)
            )

            async def call() -> None:
                await runs.RunFlow(request, metadata=metadata)

            result = await closed_loop(1, args.seconds, call)
        elif args.workload == "w3-watch":
            result = await watch(channel, metadata, args)
        else:
            result = await reads(channel, metadata, args)
    json.dump({**result, "client_cpu_s": _cpu_since(cpu)}, sys.stdout)


def _cpu_since(before: os.times_result) -> float:
    """This load process's own CPU seconds: on a 2-core machine the client is a competitor."""
    now = os.times()
    return (now.user - before.user) + (now.system - before.system)


async def w1_split(targets: list[str], metadata: Any, args: argparse.Namespace) -> dict[str, Any]:
    """W1 with the callers split evenly over several servers (replicas), one channel each."""
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    try:
        body = struct_pb2.Struct()
        body.update({"question": "why is the sky blue?"})
        request = fr.RunFlowRequest(flow_id=args.flow, body=body)

        def caller(channel: grpc.aio.Channel) -> Callable[[], Awaitable[None]]:
            runs = fr_grpc.FlowRunServiceStub(channel)

            async def call() -> None:
                run = await runs.RunFlow(request, metadata=metadata)
                assert run.status == pb.RUN_STATUS_COMPLETE, run.error

            return call

        return await closed_loop(args.concurrency, args.seconds, [caller(c) for c in channels])
    finally:
        for c in channels:
            await c.close()


async def watch(
    channel: grpc.aio.Channel, metadata: Any, args: argparse.Namespace
) -> dict[str, Any]:
    sessions = ss_grpc.SessionServiceStub(channel)
    delays: list[float] = []
    ready = 0
    cut_off = 0

    async def subscriber() -> None:
        nonlocal ready, cut_off
        call = sessions.WatchSession(
            ss.WatchSessionRequest(session_id=args.session, after_seq=0), metadata=metadata
        )
        joined = time.time()
        ready += 1
        try:
            async for event in call:
                sent = event.time.seconds + event.time.nanos / 1e9
                if event.seq and sent > joined:  # live events only, not the replayed history
                    delays.append(time.time() - sent)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                cut_off += 1
            elif err.code() != grpc.StatusCode.CANCELLED:
                raise

    tasks = [asyncio.create_task(subscriber()) for _ in range(args.concurrency)]
    await asyncio.sleep(args.seconds)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "subscribers": args.concurrency,
        "events_received": len(delays),
        "cut_off": cut_off,
        "p50_ms": percentile(delays, 0.50) * 1000,
        "p99_ms": percentile(delays, 0.99) * 1000,
        "mean_ms": statistics.fmean(delays) * 1000 if delays else float("nan"),
    }


async def reads(
    channel: grpc.aio.Channel, metadata: Any, args: argparse.Namespace
) -> dict[str, Any]:
    sessions = ss_grpc.SessionServiceStub(channel)
    get = ss.GetSessionRequest(id=args.session)
    listing = ss.ListSessionsRequest(live_flow_id=args.flow, page_size=20)

    async def get_call() -> None:
        await sessions.GetSession(get, metadata=metadata)

    async def list_call() -> None:
        page = await sessions.ListSessions(listing, metadata=metadata)
        assert page.sessions

    return {
        "get": await closed_loop(args.concurrency, args.seconds, get_call),
        "list": await closed_loop(args.concurrency, args.seconds, list_call),
    }


if __name__ == "__main__":
    asyncio.run(main())
