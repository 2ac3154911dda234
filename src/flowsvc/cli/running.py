"""`flowsvc run`, `flowsvc answer` and `flowsvc watch`: start or continue runs and follow them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Annotated, Any

import typer
from rich.prompt import Prompt

from flowsvc.cli import output
from flowsvc.cli.common import (
    OK,
    RUN_FAILED,
    USAGE,
    WAITING,
    ApiKey,
    Failure,
    OutputOpt,
    Server,
    connect,
    execute,
    resolve_flow,
)
from flowsvc.cli.live import LineView, LiveView, RunState, follow, print_events
from flowsvc.cli.output import Output
from flowsvc.client import Client
from flowsvc.v1 import resources_pb2 as pb

T = pb.RunEventType


def parse_inputs(pairs: list[str]) -> dict[str, Any]:
    """`key=value` gives a string; `key:=JSON` a typed value (`n:=3`, `tags:='["a"]'`)."""
    body: dict[str, Any] = {}
    for pair in pairs:
        key, typed, value = pair.partition(":=")
        if typed:
            try:
                body[key] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise Failure(USAGE, f"--input {pair}: not JSON after ':=': {exc.msg}") from None
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise Failure(USAGE, f"--input {pair!r}: use key=value (or key:=JSON)")
        body[key] = value
    return body


# The overridable properties that are not text (the server's OVERRIDABLE): `=value` typed.
_TYPED_OVERRIDES: dict[str, tuple[type, ...]] = {
    "temperature": (int, float),
    "max_tokens": (int,),
    "include_history": (bool,),
}


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`step.property=value` as --input, except that the value of a number or true/false
    property is typed (`final.temperature=0.2`); `:=JSON` gives any value as it is."""
    override: dict[str, Any] = {}
    for pair in pairs:
        parsed = parse_inputs([pair])
        if ":=" not in pair:
            for key, value in parsed.items():
                typed = _TYPED_OVERRIDES.get(key.rpartition(".")[2])
                if typed is None:
                    continue
                with contextlib.suppress(json.JSONDecodeError):
                    decoded = json.loads(value, parse_constant=str)  # NaN stays text
                    if isinstance(decoded, typed) and (bool in typed) == isinstance(decoded, bool):
                        parsed[key] = decoded
        override.update(parsed)
    return override


async def drive(
    client: Client, events: AsyncGenerator[pb.RunEvent, None], state: RunState, out: Output
) -> int:
    """Follow the run to its end. A question is asked on the terminal and the run continues
    (WatchRun after the last seq); without one, the question is printed and we stop."""
    err = output.console(stderr=True)
    interactive = out is Output.text and sys.stdin.isatty() and sys.stderr.isatty()
    while True:
        async with aclosing(events):
            if out is Output.json:
                async for event in events:
                    state.apply(event)
            else:
                view = LiveView(state, err) if sys.stderr.isatty() else LineView(state, err)
                await follow(events, state, view)
        question = state.waiting
        if question is None or state.ended:
            break
        if not interactive:
            return await _report_waiting(client, state, question, out)
        answer = await _ask(question.prompt, err)
        await client.submit_user_input(
            session_id=state.session_id, user_input=answer, step_id=question.id
        )
        state.waiting = None
        events = client.watch_run(state.run_id, after_seq=state.last_seq)
    run = await client.get_flow_run(state.run_id)
    if out is Output.json:
        output.print_json(run)
    elif run.status == pb.RUN_STATUS_COMPLETE:
        print(run.response)
    summary = (
        f"{output.run_status(run.status)} in {run.duration_ms} ms · "
        f"{run.input_tokens} in / {run.output_tokens} out tokens · cost {output.money(run.cost)}"
        f" · run {run.id} · session {run.session_id}"
    )
    if out is Output.text:
        err.print(summary, markup=False)
        if run.error:
            err.print(f"error: {run.error}", markup=False)
    return OK if run.status == pb.RUN_STATUS_COMPLETE else RUN_FAILED


async def _ask(prompt: str, console: Any) -> str:
    """The terminal's answer, read on a thread of its own that nobody waits for: Ctrl-C at
    the prompt exits at once (asyncio.to_thread's worker, blocked in input(), held the exit
    until a line was typed)."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()

    def settle(value: str | None, error: BaseException | None) -> None:
        if answer.done():
            return
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result(value or "")

    def ask() -> None:
        try:
            value = Prompt.ask(prompt, console=console)
        except BaseException as exc:  # end of input, the terminal gone
            loop.call_soon_threadsafe(settle, None, exc)
            return
        loop.call_soon_threadsafe(settle, value, None)

    threading.Thread(target=ask, name="flowsvc-prompt", daemon=True).start()
    return await answer


async def _report_waiting(
    client: Client, state: RunState, question: pb.SessionStep, out: Output
) -> int:
    if out is Output.json:
        output.print_json(await client.get_flow_run(state.run_id))
    else:
        print(f"waiting for input: {question.prompt}")
        print(f"session: {state.session_id}")
        print(f"answer with: flowsvc answer {state.session_id} 'YOUR ANSWER'")
    return WAITING


def run(
    flow: Annotated[str, typer.Argument(help="the flow's name or id")],
    inputs: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="key=value (a string) or key:=JSON; repeatable"),
    ] = None,
    session: Annotated[str | None, typer.Option(help="continue this session")] = None,
    version: Annotated[
        int, typer.Option(help="run this version (default: current)", show_default=False)
    ] = 0,
    server: Server = None,
    api_key: ApiKey = None,
    out: OutputOpt = Output.text,
) -> None:
    """Run a flow and follow it live; print its answer."""

    async def work() -> int:
        body = parse_inputs(inputs or [])
        async with connect(server, api_key) as client:
            found = await resolve_flow(client, flow)
            options = pb.RunOptions(session_id=session or "", version=version)
            events = client.stream_run_flow(flow_id=found.id, body=body, options=options)
            return await drive(client, events, RunState(), out)

    execute(work, server)


def answer(
    session: Annotated[str, typer.Argument(help="the session waiting for input")],
    text: Annotated[str, typer.Argument(help="the answer")],
    server: Server = None,
    api_key: ApiKey = None,
    out: OutputOpt = Output.text,
) -> None:
    """Answer a session's question and follow its run to the end."""

    async def work() -> int:
        async with connect(server, api_key) as client:
            answered = await client.submit_user_input(session_id=session, user_input=text)
            run_id = answered.current_step.run_id
            # The whole run is replayed first: the answered question shows among its steps.
            state = RunState(run_id=run_id, session_id=session)
            return await drive(client, client.watch_run(run_id), state, out)

    execute(work, server)


async def _one_by_one(
    batches: AsyncGenerator[list[pb.RunEvent], None],
) -> AsyncGenerator[pb.RunEvent, None]:
    """A batched watch's events, each in turn: a run's events come in one message (the
    server's cost per event a fifth of WatchSession's), and print as they always did."""
    async with aclosing(batches):
        async for batch in batches:
            for event in batch:
                yield event


async def until_idle(
    client: Client, events: AsyncGenerator[pb.RunEvent, None], session_id: str
) -> AsyncGenerator[pb.RunEvent, None]:
    """End a session's stream once it stops: the event is the latest run's end, or the question
    the session now waits on (not an earlier one, replayed)."""
    async with aclosing(events):
        async for event in events:
            yield event
            if event.type not in (
                T.RUN_EVENT_TYPE_RUN_COMPLETED,
                T.RUN_EVENT_TYPE_RUN_FAILED,
                T.RUN_EVENT_TYPE_RUN_CANCELLED,
                T.RUN_EVENT_TYPE_INPUT_REQUIRED,
            ):
                continue
            now = await client.get_session(session_id)
            if now.status in (pb.SESSION_STATUS_NEW, pb.SESSION_STATUS_RUNNING):
                continue
            if event.type == T.RUN_EVENT_TYPE_INPUT_REQUIRED:
                if now.current_step.id == event.step.id:
                    return
            elif now.current_step.run_id == event.run_id:
                return


def watch(
    session: Annotated[str, typer.Argument(help="the session's id")],
    after_seq: Annotated[int, typer.Option(help="only events after this seq")] = 0,
    forever: Annotated[
        bool, typer.Option("--forever", "-f", help="keep following after the session stops")
    ] = False,
    server: Server = None,
    api_key: ApiKey = None,
    out: OutputOpt = Output.text,
) -> None:
    """Follow a session's events until it stops (completes, fails, or waits for input)."""

    async def work() -> int:
        async with connect(server, api_key) as client:
            return await follow_session(client, session, after_seq, forever, out)

    execute(work, server)


async def follow_session(
    client: Client, session: str, after_seq: int, forever: bool, out: Output
) -> int:
    """Print a session's events until it stops (or forever); the exit code of its state."""
    events = _one_by_one(client.watch_session_batches(session, after_seq))
    if not forever:
        events = until_idle(client, events, session)
    state = RunState(session_id=session)
    if out is Output.json:
        await print_events(events, state)
    else:
        err = output.console(stderr=True)
        view = LiveView(state, err) if sys.stderr.isatty() else LineView(state, err)
        await follow(events, state, view)
    final = await client.get_session(session)
    status = final.status
    if out is Output.text:
        print(f"session {session}: {output.session_status(status)}")
        if status == pb.SESSION_STATUS_WAITING_FOR_INPUT:
            print(f"waiting for input: {final.current_step.prompt}")
            print(f"answer with: flowsvc answer {session} 'YOUR ANSWER'")
    if status == pb.SESSION_STATUS_WAITING_FOR_INPUT:
        return WAITING
    return OK if status == pb.SESSION_STATUS_COMPLETED else RUN_FAILED


def fork(
    session: Annotated[str, typer.Argument(help="the session to fork (it is not changed)")],
    step: Annotated[
        str, typer.Argument(help="a completed step of it: its id, or its name (the latest)")
    ],
    inputs: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="replace an input: key=value or key:=JSON"),
    ] = None,
    variables: Annotated[
        list[str] | None,
        typer.Option("--var", help="replace a variable: key=value or key:=JSON"),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--override",
            help="step.property=value (numbers and true/false typed; :=JSON for any value), "
            "e.g. draft.model=x final.temperature=0.2",
        ),
    ] = None,
    version: Annotated[
        int, typer.Option(help="run this version (default: the step's)", show_default=False)
    ] = 0,
    server: Server = None,
    api_key: ApiKey = None,
    out: OutputOpt = Output.text,
) -> None:
    """Fork a session at one of its steps into a new session, which runs again from that step
    (with the changes given); follow it until it stops."""

    async def work() -> int:
        async with connect(server, api_key) as client:
            step_id = step
            if not _looks_like_id(step):
                source = await client.get_session(session)
                named = [s.id for s in source.steps if s.step.name == step]
                if not named:
                    raise Failure(USAGE, f"session {session} has no step named {step!r}")
                step_id = named[-1]
            forked = await client.fork_session(
                session_id=session,
                step_id=step_id,
                inputs=parse_inputs(inputs or []),
                variables=parse_inputs(variables or []),
                override=parse_overrides(overrides or []),
                version=version,
            )
            if out is Output.text:
                print(f"forked: session {forked.id} (from {session} at step {step_id})")
            return await follow_session(client, forked.id, 0, False, out)

    execute(work, server)


def _looks_like_id(text: str) -> bool:
    return len(text) == 36 and text.count("-") == 4
