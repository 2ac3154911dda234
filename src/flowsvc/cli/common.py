"""What every client command shares: the server and key options, exit codes, and errors told
in a line or two instead of a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, NoReturn

import grpc
import typer

from flowsvc.cli.output import Output
from flowsvc.client import Client, FlowsvcError, RetryPolicy
from flowsvc.v1 import resources_pb2 as pb

# Exit codes (documented in the README, section "Command line").
OK = 0
RUN_FAILED = 1  # the run or session failed, was cancelled or expired
USAGE = 2  # bad arguments, a bad flow file, or INVALID_ARGUMENT from the server
WAITING = 3  # the run waits for a person and there is no terminal to ask on
SERVER_ERROR = 4  # the server refused the call (NOT_FOUND, FAILED_PRECONDITION, ...)
UNREACHABLE = 5  # no server answered (UNAVAILABLE), or the deadline passed
INTERRUPTED = 130  # Ctrl-C

Server = Annotated[
    str | None,
    typer.Option(
        "--server",
        "-s",
        envvar="FLOWSVC_SERVER",
        help="HOST:PORT of the flowsvc server [default: 127.0.0.1:50051]",
        show_envvar=True,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="FLOWSVC_API_KEY", help="API key", show_envvar=True),
]
OutputOpt = Annotated[
    Output,
    typer.Option("--output", "-o", help="text for people, json (proto JSON) for scripts"),
]

# A command line should say soon that a server is not there: a few quick retries, while a
# stream that was already going still rides out a server restart.
CLI_RETRY = RetryPolicy(max_attempts=3)


class Failure(Exception):
    """Stop the command: print `lines` on stderr and exit with `code`."""

    def __init__(self, code: int, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.code = code
        self.lines = lines


def connect(server: str | None, api_key: str | None) -> Client:
    return Client(server, api_key, retry=CLI_RETRY)


def execute(work: Callable[[], Coroutine[Any, Any, int]], server: str | None = None) -> None:
    """Run a command's coroutine; every expected failure becomes a short message and an exit
    code. FLOWSVC_DEBUG=1 shows the traceback of an unexpected one."""
    try:
        code: int = asyncio.run(work())
    except Failure as exc:
        for i, line in enumerate(exc.lines):
            print(f"flowsvc: {line}" if i == 0 else line, file=sys.stderr)
        code = exc.code
    except FlowsvcError as exc:
        code = _report(exc, server)
    except KeyboardInterrupt:
        _leave_interrupted()
    except Exception as exc:
        if os.environ.get("FLOWSVC_DEBUG"):
            raise
        print(f"flowsvc: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 70
    raise typer.Exit(code)


def _leave_interrupted() -> NoReturn:
    """Ctrl-C: exit 130 at once, with what was printed flushed. Not through the interpreter's
    teardown, where grpc's channels, collected after their event loop closed, print
    "Exception ignored" tracebacks; nor on a second Ctrl-C. Nothing of a client's is left
    to save: the server runs on (or ends) what was asked without it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(INTERRUPTED)


def _report(error: FlowsvcError, server: str | None) -> int:
    target = server or os.environ.get("FLOWSVC_SERVER") or "127.0.0.1:50051"
    if error.code == grpc.StatusCode.UNAVAILABLE:
        # grpc's text for a refused connection is long; its last clause says enough.
        reason = error.message.rsplit(": ", 1)[-1].strip() or error.message
        print(f"flowsvc: cannot reach the server at {target} ({reason})", file=sys.stderr)
        return UNREACHABLE
    if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        print(f"flowsvc: no answer from {target} in time", file=sys.stderr)
        return UNREACHABLE
    lines = error.lines()
    print(f"flowsvc: {lines[0]}", file=sys.stderr)
    for line in lines[1:]:
        print(line, file=sys.stderr)
    if error.code == grpc.StatusCode.UNAUTHENTICATED:
        print("flowsvc: pass a key with --api-key or FLOWSVC_API_KEY", file=sys.stderr)
    return USAGE if error.code == grpc.StatusCode.INVALID_ARGUMENT else SERVER_ERROR


def is_id(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


async def find_flows(client: Client, name: str) -> list[pb.LiveFlow]:
    """Flows are looked up by name by listing them: the contract has no name filter."""
    found: list[pb.LiveFlow] = []
    token = ""
    while True:
        page = await client.list_live_flows(page_size=100, page_token=token)
        found += [f for f in page.live_flows if f.name == name]
        token = page.next_page_token
        if not token:
            return found


async def resolve_flow(client: Client, flow: str) -> pb.LiveFlow:
    """FLOW is an id or a name."""
    if is_id(flow):
        return await client.get_live_flow(flow)
    found = await find_flows(client, flow)
    if not found:
        raise Failure(SERVER_ERROR, f"NOT_FOUND: no flow named {flow!r}")
    if len(found) > 1:
        ids = ", ".join(f.id for f in found)
        raise Failure(USAGE, f"{len(found)} flows are named {flow!r} ({ids}); give its id")
    return await client.get_live_flow(found[0].id)
