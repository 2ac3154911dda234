"""`flowsvc flows|sessions|runs ...` and `flowsvc cancel`: reading and changing resources."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import grpc
import typer

from flowsvc.cli import flowfile, output
from flowsvc.cli.common import (
    SERVER_ERROR,
    USAGE,
    ApiKey,
    Failure,
    OutputOpt,
    Server,
    connect,
    execute,
    find_flows,
    resolve_flow,
)
from flowsvc.cli.output import Output
from flowsvc.client import Client, FlowsvcError
from flowsvc.domain.model import Graph
from flowsvc.v1 import live_flow_service_pb2 as lfs
from flowsvc.v1 import resources_pb2 as pb

flows = typer.Typer(help="Apply, list and show flows.", no_args_is_help=True)
sessions = typer.Typer(help="List, show and fork sessions.", no_args_is_help=True)
runs = typer.Typer(help="List and show runs.", no_args_is_help=True)

Limit = Annotated[int, typer.Option(help="show at most this many, newest first")]


@flows.command("apply")
def flows_apply(
    file: Annotated[Path, typer.Argument(help="a flow as YAML or JSON (proto JSON mapping)")],
    flow_id: Annotated[
        str,
        typer.Option(
            "--id",
            help="apply FILE to this flow (renamed to FILE's name if it differs), not to the "
            "one named in FILE: for names that several flows share",
            show_default=False,
        ),
    ] = "",
    server: Server = None,
    api_key: ApiKey = None,
    out: OutputOpt = Output.text,
) -> None:
    """Create the flow named in FILE, or publish a new version when its graph changed."""

    async def work() -> int:
        request = flowfile.load(file)
        graph = flowfile.validated(request, file)
        async with connect(server, api_key) as client:
            existing = (
                [await client.get_live_flow(flow_id)]
                if flow_id
                else await find_flows(client, request.name)
            )
            if len(existing) > 1:
                ids = ", ".join(f.id for f in existing)
                raise Failure(
                    USAGE,
                    f"{len(existing)} flows are named {request.name!r} ({ids}); "
                    "name the one to apply with --id",
                )
            if not existing:
                flow = await client.create_live_flow(
                    name=request.name,
                    description=request.description,
                    steps=request.steps,
                    step_transitions=request.step_transitions,
                    auto_eval_flow_ids=request.auto_eval_flow_ids,
                )
                said = f"flow {flow.name} created ({flow.id}), version 1"
            else:
                flow = await client.get_live_flow(existing[0].id)
                said = await _update(client, flow, request, graph)
                flow = await client.get_live_flow(flow.id)
        if out is Output.json:
            output.print_json(flow)
        else:
            print(said)
        return 0

    execute(work, server)


async def _update(
    client: Client, flow: pb.LiveFlow, request: lfs.CreateLiveFlowRequest, graph: Graph
) -> str:
    """Bring an existing flow in line with the file; say what changed."""
    said: list[str] = []
    mask: list[str] = []
    if flow.name != request.name:
        mask.append("name")
    if flow.description != request.description:
        mask.append("description")
    if list(flow.auto_eval_flow_ids) != list(request.auto_eval_flow_ids):
        mask.append("auto_eval_flow_ids")
    if mask:
        changed = pb.LiveFlow(
            id=flow.id,
            name=request.name,
            description=request.description,
            auto_eval_flow_ids=request.auto_eval_flow_ids,
        )
        await client.update_live_flow(live_flow=changed, update_mask=mask)
        said.append(f"updated {', '.join(mask)}")
    current = flow.current_version
    same = flow.HasField("current_version") and flowfile.canonical(
        flowfile.version_graph(current)
    ) == flowfile.canonical(graph)
    if same:
        said.append(f"graph unchanged, version {current.version}")
    else:
        version = await client.create_flow_version(
            flow_id=flow.id, steps=request.steps, step_transitions=request.step_transitions
        )
        said.append(f"published version {version.version}")
    return f"flow {request.name} ({flow.id}): " + "; ".join(said)


@flows.command("list")
def flows_list(
    limit: Limit = 50, server: Server = None, api_key: ApiKey = None, out: OutputOpt = Output.text
) -> None:
    """The organisation's flows, newest first."""

    async def work() -> int:
        async with connect(server, api_key) as client:
            page = await client.list_live_flows(page_size=min(limit, 100))
        if out is Output.json:
            output.print_json(page)
            return 0
        rows = [
            [f.id, f.name, str(f.current_version.version or "-"), output.when(f.updated_at)]
            for f in page.live_flows[:limit]
        ]
        output.table(["id", "name", "version", "updated"], rows)
        return 0

    execute(work, server)


@flows.command("get")
def flows_get(
    flow: Annotated[str, typer.Argument(help="the flow's name or id")],
    server: Server = None,
    api_key: ApiKey = None,
    out: OutputOpt = Output.text,
) -> None:
    """A flow and its current version's steps."""

    async def work() -> int:
        async with connect(server, api_key) as client:
            found = await resolve_flow(client, flow)
        if out is Output.json:
            output.print_json(found)
            return 0
        version = found.current_version
        output.fields(
            [
                ("id", found.id),
                ("name", found.name),
                ("description", found.description or "-"),
                ("version", str(version.version or "-")),
                ("updated", output.when(found.updated_at)),
            ]
        )
        print()
        rows = []
        for step in version.steps:
            nexts = [
                t.target + (f" [{t.label}]" if t.label else "")
                for t in version.step_transitions
                if t.source == step.name
            ]
            rows.append([step.name, output.step_type(step.step_type), ", ".join(nexts)])
        output.table(["step", "type", "next"], rows)
        return 0

    execute(work, server)


@sessions.command("list")
def sessions_list(
    flow: Annotated[str | None, typer.Option(help="only this flow's (name or id)")] = None,
    limit: Limit = 50,
    server: Server = None,
    api_key: ApiKey = None,
    out: OutputOpt = Output.text,
) -> None:
    """Sessions, newest first."""

    async def work() -> int:
        async with connect(server, api_key) as client:
            flow_id = (await resolve_flow(client, flow)).id if flow else ""
            page = await client.list_sessions(live_flow_id=flow_id, page_size=min(limit, 100))
        if out is Output.json:
            output.print_json(page)
            return 0
        rows = [
            [s.id, s.live_flow_id, output.session_status(s.status), str(s.steps_count),
             output.money(s.cost), output.when(s.created_at)]
            for s in page.sessions[:limit]
        ]
        output.table(["id", "flow", "status", "steps", "cost", "created"], rows)
        return 0

    execute(work, server)


@sessions.command("get")
def sessions_get(
    session: Annotated[str, typer.Argument(help="the session's id")],
    server: Server = None,
    api_key: ApiKey = None,
    out: OutputOpt = Output.text,
) -> None:
    """A session and its steps."""

    async def work() -> int:
        async with connect(server, api_key) as client:
            found = await client.get_session(session)
        if out is Output.json:
            output.print_json(found)
            return 0
        pairs = [
            ("id", found.id),
            ("flow", found.live_flow_id),
            ("status", output.session_status(found.status)),
            ("cost", output.money(found.cost)),
            ("expires", output.when(found.expires_at)),
        ]
        if found.status == pb.SESSION_STATUS_WAITING_FOR_INPUT:
            pairs.append(("question", found.current_step.prompt))
        if found.error:
            pairs.append(("error", found.error))
        output.fields(pairs)
        print()
        rows = [
            [s.step.name, output.step_type(s.step.step_type), output.step_status(s.status),
             s.run_id, (s.error or s.result or s.user_input).replace("\n", " ")[:60]]
            for s in found.steps
        ]
        output.table(["step", "type", "status", "run", "result"], rows)
        return 0

    execute(work, server)


@runs.command("list")
def runs_list(
    flow: Annotated[str | None, typer.Option(help="only this flow's (name or id)")] = None,
    session: Annotated[str | None, typer.Option(help="only this session's")] = None,
    limit: Limit = 50,
    server: Server = None,
    api_key: ApiKey = None,
    out: OutputOpt = Output.text,
) -> None:
    """Runs, newest first."""

    async def work() -> int:
        async with connect(server, api_key) as client:
            flow_id = (await resolve_flow(client, flow)).id if flow else ""
            page = await client.list_flow_runs(
                flow_id=flow_id, session_id=session or "", page_size=min(limit, 100)
            )
        if out is Output.json:
            output.print_json(page)
            return 0
        rows = [
            [r.id, r.session_id, output.run_status(r.status), f"{r.duration_ms} ms",
             output.money(r.cost), output.when(r.created_at)]
            for r in page.flow_runs[:limit]
        ]
        output.table(["id", "session", "status", "duration", "cost", "created"], rows)
        return 0

    execute(work, server)


@runs.command("get")
def runs_get(
    run: Annotated[str, typer.Argument(help="the run's id")],
    server: Server = None,
    api_key: ApiKey = None,
    out: OutputOpt = Output.text,
) -> None:
    """A run: status, timing, cost and its answer."""

    async def work() -> int:
        async with connect(server, api_key) as client:
            found = await client.get_flow_run(run)
        if out is Output.json:
            output.print_json(found)
            return 0
        output.fields(
            [
                ("id", found.id),
                ("flow", found.flow_id),
                ("session", found.session_id),
                ("version", str(found.version)),
                ("status", output.run_status(found.status)),
                ("duration", f"{found.duration_ms} ms"),
                ("tokens", f"{found.input_tokens} in / {found.output_tokens} out"),
                ("cost", output.money(found.cost)),
                ("response", found.response or "-"),
                *([("error", found.error)] if found.error else []),
            ]
        )
        return 0

    execute(work, server)


def cancel(
    target: Annotated[str, typer.Argument(help="a run id or a session id")],
    server: Server = None,
    api_key: ApiKey = None,
    out: OutputOpt = Output.text,
) -> None:
    """Cancel a run, or a session's running step."""

    async def work() -> int:
        async with connect(server, api_key) as client:
            try:
                result: pb.FlowRun | pb.Session = await client.cancel_flow_run(target)
                kind = "run"
            except FlowsvcError as exc:
                # Ids of runs and sessions look alike: not a run may well be a session.
                if exc.code != grpc.StatusCode.NOT_FOUND:
                    raise
                try:
                    result = await client.cancel_session(target)
                except FlowsvcError as again:
                    if again.code != grpc.StatusCode.NOT_FOUND:
                        raise
                    raise Failure(
                        SERVER_ERROR, f"NOT_FOUND: no run or session {target!r}"
                    ) from None
                kind = "session"
        if out is Output.json:
            output.print_json(result)
        else:
            print(f"cancelled {kind} {target}")
        return 0

    execute(work, server)
