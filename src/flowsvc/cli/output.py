"""How results are shown: proto JSON for scripts (`-o json`), plain tables for people."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table

from flowsvc.v1 import resources_pb2 as pb


class Output(StrEnum):
    text = "text"
    json = "json"


def console(stderr: bool = False) -> Console:
    """Colours only on a terminal and without NO_COLOR (rich honours both); off a terminal a
    wide line, so that ids are never wrapped or cut in the middle of a script's input."""
    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    return Console(
        file=stream,
        no_color=bool(os.environ.get("NO_COLOR")) or not terminal,
        highlight=False,
        width=None if terminal else 400,
        soft_wrap=not terminal,
    )


def to_json(message: Message, indent: int | None = 2) -> str:
    """The proto JSON mapping with the proto's field names, as grpcurl prints it."""
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=indent)


def print_json(message: Message) -> None:
    print(to_json(message))


def enum_name(enum: object, value: int, prefix: str) -> str:
    name: str = enum.Name(value)  # type: ignore[attr-defined]
    return name.removeprefix(prefix)


def run_status(value: int) -> str:
    return enum_name(pb.RunStatus, value, "RUN_STATUS_")


def session_status(value: int) -> str:
    return enum_name(pb.SessionStatus, value, "SESSION_STATUS_")


def step_status(value: int) -> str:
    return enum_name(pb.StepStatus, value, "STEP_STATUS_")


def step_type(value: int) -> str:
    return enum_name(pb.StepType, value, "STEP_TYPE_")


def when(stamp: Timestamp) -> str:
    if not stamp.seconds and not stamp.nanos:
        return "-"
    moment: datetime = stamp.ToDatetime(tzinfo=UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def money(value: float) -> str:
    """Four decimals; more for a cost below a hundredth of a cent, never $0.0000 for one."""
    if not value:
        return "-"
    if abs(value) >= 0.0001:
        return f"${value:.4f}"
    return f"${value:.10f}".rstrip("0")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    grid = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for header in headers:
        grid.add_column(header.upper(), no_wrap=True)
    for row in rows:
        grid.add_row(*row)
    console().print(grid)


def fields(pairs: Sequence[tuple[str, str]]) -> None:
    out = console()
    width = max(len(k) for k, _ in pairs) + 1
    for key, value in pairs:
        out.print(f"{key + ':':<{width}} {value}", markup=False)
