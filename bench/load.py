"""Load generator, run as its own process: drives one workload and prints JSON figures."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import struct_pb2
from proc_stats import cpu_seconds  # beside this script

from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import flow_run_service_pb2_grpc as fr_grpc
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import session_service_pb2 as ss
from flowsvc.v1 import session_service_pb2_grpc as ss_grpc

ECHO_METHOD = "/bench.Echo/Echo"
STREAM_METHOD = "/bench.Echo/Stream"
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
    parser.add_argument(
        "workload", choices=["echo", "w1", "w2", "w3-watch", "w3-drive", "w4", "stream-watch", "w6"]
    )
    parser.add_argument(
        "--target", required=True, help="HOST:PORT; w1 also takes a comma-separated list"
    )
    parser.add_argument("--key", default="")
    parser.add_argument("--flow", default="")
    parser.add_argument("--session", default="")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=0, help="w3-drive: runs started per s")
    parser.add_argument(
        "--ahead", type=int, default=0, help="w3-drive: runs not yet delivered, at most"
    )
    parser.add_argument("--size", type=int, default=1024, help="stream-watch: message bytes")
    parser.add_argument(
        "--batched", type=int, default=0, help="w3-watch: 1 for WatchSessionBatches"
    )
    parser.add_argument("--pid", type=int, default=0, help="server whose CPU the window reads")
    parser.add_argument("--runs", type=int, default=0, help="w6: runs per caller")
    parser.add_argument("--mode", default="given", choices=["given", "new", "prepare"])
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

            cpu0 = server_cpu(args.pid)
            result = await closed_loop(args.concurrency, args.seconds, call)
            result["server_cpu_s"] = server_cpu(args.pid) - cpu0
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

            if args.rate:
                result = await paced(args.rate, args.seconds, call)
            elif args.ahead:
                result = await ahead_of_delivery(channel, metadata, args, call)
            else:
                result = await closed_loop(1, args.seconds, call)
        elif args.workload == "w3-watch":
            result = await w3_watch(channel, metadata, args)
        elif args.workload == "stream-watch":
            result = await stream_watch(channel, args)
        elif args.workload == "w6":
            result = await w6(channel, metadata, args)
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


def server_cpu(pid: int) -> float:
    """The server's CPU seconds, its writer process's included (0 without a pid)."""
    return cpu_seconds(pid) if pid else 0.0


def server_threads(pid: int) -> dict[str, float]:
    """CPU seconds of each of a process's threads, summed by thread name (the main thread,
    which runs the event loop, is "main"), and the kernel's part of each ("NAME sys"): who in
    the server spends it."""
    out: dict[str, float] = {}
    if not pid:
        return out
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, _, rest = f.read().rpartition(")")
        except FileNotFoundError:
            continue  # a thread that ended between the listing and the read
        name = "main" if tid == str(pid) else head.partition("(")[2]
        fields = rest.split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
        out[f"{name} sys"] = out.get(f"{name} sys", 0.0) + int(fields[12]) / tick
    return out


async def paced(rate: float, seconds: float, call: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    """One caller starting a run every 1/rate s (open loop on a fixed schedule; a run still in
    flight at its successor's time delays it, since runs on one session follow each other)."""
    latencies: list[float] = []
    errors = 0
    interval = 1 / rate
    began = time.perf_counter()
    deadline = began + seconds
    due = began
    while due < deadline:
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
        started = time.perf_counter()
        try:
            await call()
            latencies.append(time.perf_counter() - started)
        except grpc.aio.AioRpcError:
            errors += 1
        due += interval
        if due < time.perf_counter() - interval:  # far behind: no burst to catch up
            due = time.perf_counter()
    elapsed = time.perf_counter() - began
    return {
        "calls": len(latencies),
        "errors": errors,
        "per_second": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "seconds": elapsed,
        "rate": rate,
    }


async def ahead_of_delivery(
    channel: grpc.aio.Channel,
    metadata: Any,
    args: argparse.Namespace,
    call: Callable[[], Awaitable[None]],
) -> dict[str, Any]:
    """Runs back to back on the session, but never more than `--ahead` of what has been
    delivered: the driver watches the session too (one more subscriber) and starts a run
    only while fewer than `--ahead` runs have not reached it whole (their RUN_COMPLETED).
    The subscribers always have a run or two queued, and the server does not spend its CPU
    on runs that no subscriber will receive within the window."""
    delivered = asyncio.Condition()
    counts = {"started": 1, "completed": 0}  # the session's first run is replayed

    async def watch() -> None:
        stream = ss_grpc.SessionServiceStub(channel).WatchSession(
            ss.WatchSessionRequest(session_id=args.session), metadata=metadata
        )
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for event in stream:
                if event.type == pb.RUN_EVENT_TYPE_RUN_COMPLETED:
                    async with delivered:
                        counts["completed"] += 1
                        delivered.notify_all()

    async def gated() -> None:
        async with delivered:
            await delivered.wait_for(lambda: counts["started"] - counts["completed"] < args.ahead)
        counts["started"] += 1
        await call()

    watcher = asyncio.create_task(watch())
    try:
        return await closed_loop(1, args.seconds, gated)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def windowed(
    args: argparse.Namespace, subscriber: Callable[[dict[str, Any]], Awaitable[None]]
) -> dict[str, Any]:
    """`--concurrency` subscribers join; "ready" is printed once all have their stream open
    (first message in); the window starts when a line arrives on stdin ("go") and lasts
    `--seconds`. Counts are taken over the window only; with --pid, so is the server's CPU."""
    state: dict[str, Any] = {
        "received": 0,  # events (or the bare stream's messages)
        "messages": 0,
        "bytes": 0,
        "delays": [],
        "measuring": False,
        "joined": 0,
        "cut_off": 0,
    }
    all_joined = asyncio.Event()
    state["all_joined"] = all_joined
    tasks = [asyncio.create_task(subscriber(state)) for _ in range(args.concurrency)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_joined.wait(), 60)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    own0 = os.times()
    threads0 = server_threads(args.pid)
    cpu0, n0, b0, t0 = server_cpu(args.pid), state["received"], state["bytes"], time.perf_counter()
    m0 = state["messages"]
    state["measuring"] = True
    await asyncio.sleep(args.seconds)
    state["measuring"] = False
    cpu1, n1, b1, t1 = server_cpu(args.pid), state["received"], state["bytes"], time.perf_counter()
    m1 = state["messages"]
    threads1 = server_threads(args.pid)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    delays: list[float] = state["delays"]
    delivered = n1 - n0
    return {
        "subscribers": args.concurrency,
        "joined": state["joined"],
        "delivered": delivered,
        "window_s": t1 - t0,
        "delivered_per_s": delivered / (t1 - t0),
        "messages_per_s": (m1 - m0) / (t1 - t0),
        "mean_bytes": (b1 - b0) / max(1, delivered),
        "server_cpu_s": cpu1 - cpu0,
        "server_threads_cpu_s": {
            name: round(cpu - threads0.get(name, 0.0), 3)
            for name, cpu in threads1.items()
            if cpu - threads0.get(name, 0.0) > 0
        },
        "client_window_cpu_s": _cpu_since(own0),
        "cut_off": state["cut_off"],
        "events_timed": len(delays),
        "p50_ms": percentile(delays, 0.50) * 1000,
        "p99_ms": percentile(delays, 0.99) * 1000,
        "max_ms": max(delays) * 1000 if delays else float("nan"),
        "mean_ms": statistics.fmean(delays) * 1000 if delays else float("nan"),
    }


async def stream_watch(channel: grpc.aio.Channel, args: argparse.Namespace) -> dict[str, Any]:
    """W3's baseline: subscribers of the bare stream, reading as fast as they can."""
    open_stream = channel.unary_stream(STREAM_METHOD)  # bytes in, bytes out

    async def subscriber(state: dict[str, Any]) -> None:
        call = open_stream(str(args.size).encode())
        first = True
        try:
            async for message in call:
                if first:
                    first = False
                    state["joined"] += 1
                    if state["joined"] == args.concurrency:
                        state["all_joined"].set()
                state["received"] += 1
                state["messages"] += 1
                state["bytes"] += len(message)
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                raise

    return await windowed(args, subscriber)


async def w3_watch(
    channel: grpc.aio.Channel, metadata: Any, args: argparse.Namespace
) -> dict[str, Any]:
    """W3: WatchSession subscribers (after_seq 0) of one session, or with --batched 1
    WatchSessionBatches ones; each counts the events (and messages) it receives in the window,
    and times live events (receipt - event `time`)."""
    batched = bool(args.batched)
    method = "WatchSessionBatches" if batched else "WatchSession"
    # raw bytes, parsed here (as the stub would): the size comes for free
    watch_raw = channel.unary_stream(
        f"/flowsvc.v1.SessionService/{method}",
        request_serializer=lambda request: request.SerializeToString(),
    )
    request_type = ss.WatchSessionBatchesRequest if batched else ss.WatchSessionRequest

    async def subscriber(state: dict[str, Any]) -> None:
        call = watch_raw(request_type(session_id=args.session, after_seq=0), metadata=metadata)
        await call.wait_for_connection()
        state["joined"] += 1
        if state["joined"] == args.concurrency:
            state["all_joined"].set()
        delays = state["delays"]
        try:
            async for raw in call:
                received = time.time()
                state["messages"] += 1
                state["bytes"] += len(raw)
                if not batched:
                    state["received"] += 1
                    if state["measuring"]:
                        events: Any = (pb.RunEvent.FromString(raw),)
                    else:
                        continue
                else:
                    events = pb.RunEventBatch.FromString(raw).events
                    state["received"] += len(events)
                    if not state["measuring"]:
                        continue
                for event in events:
                    if event.seq:
                        delays.append(received - event.time.seconds - event.time.nanos / 1e9)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                state["cut_off"] += 1
            elif err.code() != grpc.StatusCode.CANCELLED:
                raise

    return await windowed(args, subscriber)


async def w6(channel: grpc.aio.Channel, metadata: Any, args: argparse.Namespace) -> dict[str, Any]:
    """`--runs` RunFlow calls per caller, each caller on its own session: `given` (the
    comma-separated --session list, one per caller), `new` (every call a new session) or
    `prepare` (the first call makes the session, the rest run on it; prints the sessions)."""
    runs = fr_grpc.FlowRunServiceStub(channel)
    body = struct_pb2.Struct()
    body.update({"question": "why is the sky blue?"})
    given = [s for s in args.session.split(",") if s]
    latencies: list[float] = []
    errors: list[str] = []
    made: list[str] = []

    async def caller(i: int) -> None:
        session = given[i] if args.mode == "given" else ""
        for _ in range(args.runs):
            request = fr.RunFlowRequest(
                flow_id=args.flow, body=body, options=pb.RunOptions(session_id=session)
            )
            started = time.perf_counter()
            try:
                run = await runs.RunFlow(request, metadata=metadata)
            except grpc.aio.AioRpcError as err:
                errors.append(f"{err.code().name}: {err.details()}")
                continue
            if run.status != pb.RUN_STATUS_COMPLETE:
                errors.append(f"run {pb.RunStatus.Name(run.status)}: {run.error}")
                continue
            latencies.append(time.perf_counter() - started)
            if args.mode == "prepare" and not session:
                session = run.session_id
                made.append(session)

    cpu0, began = server_cpu(args.pid), time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(args.concurrency)))
    elapsed, cpu1 = time.perf_counter() - began, server_cpu(args.pid)
    return {
        "calls": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "per_second": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "seconds": elapsed,
        "server_cpu_s": cpu1 - cpu0,
        "cpu_ms_per_run": 1000 * (cpu1 - cpu0) / max(1, len(latencies)),
        "sessions": made,
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
