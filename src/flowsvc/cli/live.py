"""Following a run: its state as events arrive, shown live on a terminal (rich), as one line
per finished step elsewhere, or as proto JSON lines."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from flowsvc.cli import output
from flowsvc.v1 import resources_pb2 as pb

T = pb.RunEventType


@dataclass
class StepView:
    name: str
    kind: str
    status: str = "RUNNING"
    # Seconds since the epoch, from the events' own times: a replayed step shows how long it
    # took when it ran, not when we heard of it.
    started: float = field(default_factory=time.time)
    took: float | None = None
    text: str = ""
    chunks: int = 0
    tokens: str = ""
    cost: float = 0.0
    error: str = ""


@dataclass
class RunState:
    """What the events said so far. `waiting` is the step asking a person, as long as nothing
    happened after the question (a replayed INPUT_REQUIRED that was answered is followed by
    that step's STEP_COMPLETED)."""

    run_id: str = ""
    session_id: str = ""
    last_seq: int = 0
    steps: dict[str, StepView] = field(default_factory=dict)
    run: pb.FlowRun | None = None
    waiting: pb.SessionStep | None = None
    ended: bool = False

    def apply(self, event: pb.RunEvent) -> StepView | None:
        """Take the event in; the step it finished, if it finished one."""
        self.run_id = self.run_id or event.run_id
        self.session_id = self.session_id or event.session_id
        self.last_seq = max(self.last_seq, event.seq)
        if event.type == T.RUN_EVENT_TYPE_STEP_DELTA:
            view = self.steps.get(event.session_step_id)
            if view is not None:
                view.text += event.delta
                view.chunks += 1
            return None
        self.waiting = None
        if event.HasField("run"):
            self.run = event.run
            self.ended = event.type in (
                T.RUN_EVENT_TYPE_RUN_COMPLETED,
                T.RUN_EVENT_TYPE_RUN_FAILED,
                T.RUN_EVENT_TYPE_RUN_CANCELLED,
            )
        if not event.HasField("step"):
            return None
        step = event.step
        at = event.time.ToNanoseconds() / 1e9 if event.HasField("time") else time.time()
        view = self.steps.setdefault(
            step.id, StepView(step.step.name, output.step_type(step.step.step_type), started=at)
        )
        view.status = output.step_status(step.status)
        if event.type == T.RUN_EVENT_TYPE_INPUT_REQUIRED:
            self.waiting = step
            return None
        if event.type in (T.RUN_EVENT_TYPE_STEP_COMPLETED, T.RUN_EVENT_TYPE_STEP_FAILED):
            view.took = max(at - view.started, 0.0)
            view.text = step.result or view.text
            view.error = step.error
            view.cost = step.cost
            if step.input_tokens or step.output_tokens:
                view.tokens = f"{step.input_tokens} in / {step.output_tokens} out"
            return view
        return None


def _took(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


class LiveView:
    """The steps as a table that updates in place, with the text of a model step as its
    tokens arrive; on stderr, so the final answer alone goes to stdout."""

    def __init__(self, state: RunState, console: Console) -> None:
        self.state = state
        self.console = console
        self._live = Live(self, console=console, refresh_per_second=10, transient=False)

    def __rich__(self) -> RenderableType:
        grid = Table(box=None, pad_edge=False, header_style="bold")
        for header in ("step", "type", "status", "time", "tokens", "cost"):
            grid.add_column(header.upper(), no_wrap=True)
        streaming: StepView | None = None
        for view in self.state.steps.values():
            running = view.took is None and view.status == "RUNNING"
            took = time.time() - view.started if running else view.took
            tokens = view.tokens or (f"{view.chunks} chunks…" if running and view.chunks else "")
            style = {"COMPLETED": "green", "FAILED": "red", "RUNNING": "yellow"}.get(view.status)
            grid.add_row(
                view.name,
                view.kind,
                Text(("⠿ " if running else "") + view.status, style=style or ""),
                _took(took),
                tokens,
                output.money(view.cost),
            )
            if running and view.text:
                streaming = view
        if streaming is None:
            return grid
        tail = "\n".join(streaming.text.splitlines()[-8:])
        return Group(grid, Panel(tail, title=streaming.name, title_align="left"))

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._live.__exit__(exc_type, exc, traceback)

    def refresh(self, finished: StepView | None) -> None:
        self._live.refresh()


class LineView:
    """Off a terminal: one line per finished step on stderr, nothing that redraws."""

    def __init__(self, state: RunState, console: Console | None) -> None:
        self.state = state
        self.console = console

    def __enter__(self) -> LineView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def refresh(self, finished: StepView | None) -> None:
        if finished is None or self.console is None:
            return
        parts = [finished.name, finished.kind, finished.status, _took(finished.took)]
        parts += [finished.tokens, output.money(finished.cost) if finished.cost else ""]
        if finished.error:
            parts.append(finished.error)
        self.console.print("  ".join(p for p in parts if p), markup=False)


async def follow(
    events: AsyncIterator[pb.RunEvent], state: RunState, view: LiveView | LineView
) -> None:
    with view:
        async for event in events:
            view.refresh(state.apply(event))


async def print_events(events: AsyncIterator[pb.RunEvent], state: RunState) -> None:
    """`-o json` for streams: one compact proto JSON object a line, as jq reads them."""
    async for event in events:
        state.apply(event)
        print(output.to_json(event, indent=None), flush=True)

