"""Flow files for `flowsvc flows apply`: a CreateLiveFlowRequest in the proto JSON mapping,
as JSON or YAML, checked here with the server's own rules before anything is sent."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from flowsvc.api.convert import graph_from_pb
from flowsvc.cli.common import USAGE, Failure
from flowsvc.domain.errors import InvalidArgument
from flowsvc.domain.graph import validate_graph
from flowsvc.domain.limits import Limits
from flowsvc.domain.model import Graph
from flowsvc.v1 import live_flow_service_pb2 as lfs
from flowsvc.v1 import resources_pb2 as pb


class FlowFileError(Failure):
    """The file cannot be applied; one problem a line. A usage error: nothing was sent."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(USAGE, *lines)


def _short_enums(document: dict[str, Any]) -> None:
    """`LLM` for `STEP_TYPE_LLM`: people write the short name; the proto JSON mapping wants
    the full one. Anything else is left for the parser to judge."""
    for step in document.get("steps") or []:
        if isinstance(step, dict):
            for key in ("step_type", "stepType"):
                value = step.get(key)
                if isinstance(value, str) and not value.upper().startswith("STEP_TYPE_"):
                    step[key] = f"STEP_TYPE_{value.upper()}"


def load(path: Path) -> lfs.CreateLiveFlowRequest:
    try:
        text = path.read_text()
    except OSError as exc:
        raise FlowFileError([f"cannot read {path}: {exc.strerror or exc}"]) from None
    try:
        document = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise FlowFileError([f"{path}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}"]) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f":{where.line + 1}:{where.column + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise FlowFileError([f"{path}{at}: not YAML: {problem}"]) from None
    if not isinstance(document, dict):
        raise FlowFileError([f"{path}: a flow file is an object with name, steps, ..."])
    _short_enums(document)
    request = lfs.CreateLiveFlowRequest()
    try:
        json_format.ParseDict(document, request)
    except json_format.ParseError as exc:
        raise FlowFileError([f"{path}: {_parse_problem(str(exc))}"]) from None
    return request


_UNKNOWN_FIELD = re.compile(
    r'has no field named "([^"]+)" at "([^"]+)"\.?\s*Available Fields\(except extensions\): '
    r'"\[(.*)\]"'
)


def _parse_problem(said: str) -> str:
    """protobuf's "no field named" in the file's terms: where, which, and the fields there."""
    found = _UNKNOWN_FIELD.search(said)
    if found is None:
        return said
    field, at, available = found.groups()
    where = at.partition(".")[2]  # past the request's own name
    names = [
        re.sub(r"(?<!^)([A-Z])", r"_\1", name.strip(" '")).lower()
        for name in available.split(",")
    ]
    return f"{where + ': ' if where else ''}unknown field {field!r} (there: {', '.join(names)})"


def validated(request: lfs.CreateLiveFlowRequest, path: Path) -> Graph:
    """The graph as the server would store it (ids assigned, transitions named at both ends),
    or FlowFileError with every violation under the field path the server would name."""
    problems: list[str] = []
    if not request.name:
        problems.append("name: required")
    if not request.steps:
        problems.append("steps: a flow file needs a graph (at least a START and an END step)")
    graph = None
    if request.steps:
        try:
            steps, transitions = graph_from_pb(request.steps, request.step_transitions)
            graph = validate_graph(steps, transitions, Limits(), _local_ids())
        except InvalidArgument as exc:
            problems += [f"{v.field}: {v.description}" for v in exc.violations]
    if problems or graph is None:
        raise FlowFileError([f"{path} is not a valid flow:", *(f"  {p}" for p in problems)])
    return graph


def canonical(graph: Graph) -> tuple[Any, ...]:
    """What makes two graphs the same flow: steps by content, transitions by step names and
    label; ids and timestamps the server assigns do not count."""
    steps = tuple(replace(s, id="") for s in graph.steps)
    transitions = tuple(sorted((t.source, t.target, t.label) for t in graph.transitions))
    return steps, transitions


def version_graph(version: pb.FlowVersion) -> Graph:
    steps, transitions = graph_from_pb(version.steps, version.step_transitions)
    return validate_graph(steps, transitions, Limits(), _local_ids())


def _local_ids() -> Any:
    """Stand-in ids for steps the file leaves without one (the server assigns the real ones)."""
    counter = itertools.count(1)
    return lambda: f"local-{next(counter)}"
