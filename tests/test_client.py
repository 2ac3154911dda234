"""flowsvc.client against real servers: typed calls, readable errors, retries, and streams that
resume across a server killed and restarted mid-run."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import pkgutil
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import Message

import flowsvc.v1
from flowsvc.client import Client, FlowsvcError, RetryPolicy, types
from flowsvc.client.rpcs import R
from flowsvc.config import Settings
from flowsvc.v1 import schedule_service_pb2
from tests.conftest import Deployment
from tests.fake_openai import FakeOpenAI
from tests.harness import ROOT, ChildServer, InProcessServer, mint_key, sqlite_url

T = types.RunEventType


async def make_flow(
    client: Client, name: str, model: str = "builtin/echo", request_id: str | None = None
) -> types.LiveFlow:
    """start -> think (an LLM step on `model`) -> end."""
    return await client.create_live_flow(
        name=name,
        request_id=request_id,
        steps=[
            types.Step(name="start", step_type=types.STEP_TYPE_START,
                       start=types.StartConfig(inputs=[types.FlowInput(name="q")])),
            types.Step(name="think", step_type=types.STEP_TYPE_LLM,
                       prompt_template=types.PromptTemplate(type="text", text="${inputs.q}"),
                       llm=types.LlmConfig(model=model)),
            types.Step(name="end", step_type=types.STEP_TYPE_END,
                       prompt_template=types.PromptTemplate(type="text", text="${think.result}")),
        ],
        step_transitions=[
            types.StepTransition(source="start", target="think"),
            types.StepTransition(source="think", target="end"),
        ],
    )  # fmt: skip


def test_calls_return_messages_and_errors_carry_field_violations(deployment: Deployment) -> None:
    async def go() -> None:
        async with Client(deployment.address, deployment.acme_key) as client:
            flow = await make_flow(client, "typed")
            assert isinstance(flow, types.LiveFlow) and flow.current_version.version == 1
            run = await client.run_flow(flow_id=flow.id, body={"q": "hi"})
            assert run.status == types.RUN_STATUS_COMPLETE and run.response == "hi"
            with pytest.raises(FlowsvcError) as caught:
                await client.create_live_flow(name="bad", steps=[types.Step(name="a b")])
            error = caught.value
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT
            fields = {v.field for v in error.field_violations}
            assert "steps[0].name" in fields
            assert str(error).startswith("INVALID_ARGUMENT: ")
            assert "  steps[0].name: " in str(error)

    asyncio.run(go())


def test_request_id_is_filled_in_so_a_retried_write_happens_once(deployment: Deployment) -> None:
    async def go() -> None:
        async with Client(deployment.address, deployment.acme_key) as client:
            flow = await make_flow(client, "once", request_id="fixed-id")
            again = await make_flow(client, "once", request_id="fixed-id")
            assert again.id == flow.id
            first = await client.run_flow(flow_id=flow.id, body={"q": "x"})
            second = await client.run_flow(flow_id=flow.id, body={"q": "x"})
            assert first.id != second.id  # fresh ids: two calls are two runs

    asyncio.run(go())


def test_fork_session_copies_the_history_and_fills_in_a_request_id(
    deployment: Deployment,
) -> None:
    async def go() -> None:
        async with Client(deployment.address, deployment.acme_key) as client:
            flow = await make_flow(client, "forked")
            source = await client.create_session(
                live_flow_id=flow.id, inputs={"q": "one"}, wait=True
            )
            think = source.steps[1]
            fork = await client.fork_session(
                session_id=source.id, step_id=think.id, inputs={"q": "two"}, wait=True,
                request_id="fork-once",
            )  # fmt: skip
            again = await client.fork_session(
                session_id=source.id, step_id=think.id, inputs={"q": "two"}, request_id="fork-once"
            )
            assert again.id == fork.id and fork.parent_session_id == source.id
            assert fork.status == types.SESSION_STATUS_COMPLETED
            assert fork.steps[0].result == source.steps[0].result
            assert fork.steps[-1].result == "two"
            other = await client.fork_session(session_id=source.id, step_id=think.id)
            assert other.id not in (fork.id, source.id)  # a fresh request_id each call

    asyncio.run(go())


def test_unreachable_server_is_unavailable_after_bounded_retries() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed

    async def go() -> None:
        policy = RetryPolicy(initial_backoff=0.01, max_attempts=3)
        async with Client(f"127.0.0.1:{port}", "k", retry=policy) as client:
            with pytest.raises(FlowsvcError) as caught:
                await client.get_session("00000000-0000-0000-0000-000000000000")
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE

    asyncio.run(go())


def test_deadline_ends_a_stream_and_the_environment_names_server_and_key(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWSVC_SERVER", deployment.address)
    monkeypatch.setenv("FLOWSVC_API_KEY", deployment.acme_key)

    async def go() -> None:
        async with Client() as client:
            flow = await make_flow(client, "deadline")
            run = await client.run_flow(flow_id=flow.id, body={"q": "x"})
            seen = [e.seq async for e in client.watch_run(run.id, after_seq=2)]
            assert seen[0] == 3  # only what came after after_seq
            with pytest.raises(FlowsvcError) as caught:
                # A session's stream never ends by itself: the deadline ends it.
                async for _ in client.watch_session(run.session_id, timeout=0.5):
                    pass
            assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

    asyncio.run(go())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "drained"])
def test_stream_resumes_across_a_server_restart_with_every_event_once(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """A run in flight on a slow model; the server dies (SIGKILL) or drains (SIGTERM) and comes
    back on the same address and SQLite file. The caller's one stream_run_flow iterator sees the
    run's events exactly as the store has them: seqs 1..N, once each, in order."""
    fake = FakeOpenAI()
    url = sqlite_url(tmp_path / "flowsvc.db")
    key = mint_key(url, "acme")
    env = {"FLOWSVC_OPENAI_BASE_URL": f"{fake.url}/v1", "FLOWSVC_OPENAI_API_KEY": "x"}
    listen = f"127.0.0.1:{_free_port()}"
    servers = [ChildServer(url, tmp_path / "s.log", env, listen=listen)]

    async def go() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        async with Client(listen, key) as client:
            flow = await make_flow(client, "slow", "openai/slow")
            seen: list[tuple[int, int]] = []
            async for event in client.stream_run_flow(flow_id=flow.id, body={"q": "hi"}):
                if event.seq:
                    seen.append((event.seq, event.type))
                thinking = event.type == T.RUN_EVENT_TYPE_STEP_STARTED and (
                    event.step.step.name == "think"
                )
                if thinking and len(servers) == 1:  # mid-step: the model is still at work
                    servers[0].signal(sig)
                    await asyncio.to_thread(servers[0].wait)
                    servers.append(
                        await asyncio.to_thread(ChildServer, url, tmp_path / "s.log", env, listen)
                    )
            replay = [(e.seq, e.type) async for e in client.watch_run(event.run_id)]
            return seen, replay

    try:
        seen, replay = asyncio.run(go())
    finally:
        for server in servers:
            if server.proc.poll() is None:
                server.signal(signal.SIGTERM)
                server.wait()
        fake.close()
    assert len(servers) == 2, "the server was never restarted"
    assert [seq for seq, _ in seen] == list(range(1, len(seen) + 1))
    assert seen == replay
    assert seen[-1][1] == T.RUN_EVENT_TYPE_RUN_COMPLETED


def test_client_imports_and_works_without_the_server_dependencies(deployment: Deployment) -> None:
    """What a service that installs only `flowsvc` (no `server` extra) has: the client and the
    client commands work; `serve` says which extra it needs."""
    blocker = (
        "import sys\n"
        "BLOCKED = {'sqlalchemy', 'sqlmodel', 'aiosqlite', 'psycopg', 'alembic', 'openai',"
        " 'httpx', 'orjson', 'grpc_health', 'grpc_reflection'}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    script = blocker + (
        "import asyncio, flowsvc.client\n"
        "from flowsvc.__main__ import main\n"
        "async def go():\n"
        "    async with flowsvc.client.Client() as c:\n"
        "        print('flows', len((await c.list_live_flows()).live_flows) >= 0)\n"
        "asyncio.run(go())\n"
        "print('list', main(['flows', 'list']))\n"
        "print('serve', main(['serve']))\n"
    )
    env = {**os.environ, "FLOWSVC_SERVER": deployment.address,
           "FLOWSVC_API_KEY": deployment.acme_key}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert "flows True" in done.stdout, done.stderr
    assert "list 0" in done.stdout
    assert "serve 1" in done.stdout
    assert re.search(r"'serve' needs the server's dependencies .*flowsvc\[server\]", done.stderr)


def test_readme_client_example_runs(deployment: Deployment) -> None:
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"<!-- example:client -->\n```python\n(.*?)```", readme, re.S)
    assert example is not None
    env = {**os.environ, "FLOWSVC_SERVER": deployment.address,
           "FLOWSVC_API_KEY": deployment.acme_key}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", example.group(1)], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "Hello, world!" in done.stdout
    assert "RUN_EVENT_TYPE_RUN_COMPLETED" in done.stdout
    assert "NOT_FOUND" in done.stdout


def _service_modules() -> list[ModuleType]:
    """Every flowsvc.v1 *_service_pb2 module: the contract's services, old and new."""
    names = [m.name for m in pkgutil.iter_modules(flowsvc.v1.__path__)]
    modules = [
        importlib.import_module(f"flowsvc.v1.{n}") for n in names if n.endswith("_service_pb2")
    ]
    assert len(modules) >= 6, names
    return modules


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_every_rpc_of_every_service_has_a_client_method() -> None:
    """A new RPC in the contract fails here until the client has its method: unary RPCs as
    coroutines, server-streaming ones as async iterators."""
    missing, wrong_kind, services = [], [], set()
    for module in _service_modules():
        for service in module.DESCRIPTOR.services_by_name.values():
            services.add(service.name)
            for rpc in service.methods:
                method = getattr(Client, _snake(rpc.name), None)
                if not callable(method):
                    missing.append(f"{service.full_name}.{rpc.name} -> {_snake(rpc.name)}")
                elif inspect.iscoroutinefunction(method) == rpc.server_streaming:
                    wrong_kind.append(f"{service.full_name}.{rpc.name}")
    assert {"LiveFlowService", "SessionService", "FlowRunService", "EvalService",
            "WebhookService", "ScheduleService"} <= services  # fmt: skip
    assert not missing, missing
    assert not wrong_kind, wrong_kind


def test_retries_only_where_safe_and_request_ids_filled_in() -> None:
    """Which of the webhook and schedule calls the client may send twice."""
    sent: list[tuple[str, Message, bool]] = []

    class Recording(Client):
        async def _unary(
            self, method: str, request: Message, response: type[R], *, safe: bool,
            timeout: float | None,
        ) -> R:  # fmt: skip
            sent.append((method.rsplit("/", 1)[-1], request, safe))
            return response()

    async def go() -> None:
        async with Recording("127.0.0.1:1", "k") as c:
            await c.create_webhook(webhook=types.Webhook(url="http://x"))
            await c.get_webhook("w")
            await c.list_webhooks()
            await c.list_webhook_deliveries(webhook_id="w")
            await c.delete_webhook("w")
            await c.create_schedule(schedule=types.Schedule(flow_id="f", interval_seconds=5))
            await c.create_schedule(schedule=types.Schedule(flow_id="f"), request_id="mine")
            await c.get_schedule("s")
            await c.list_schedules(flow_id="f")
            await c.update_schedule(schedule=types.Schedule(id="s"), update_mask=["cron"])
            await c.pause_schedule("s")
            await c.resume_schedule("s")
            await c.trigger_schedule("s")
            await c.delete_schedule("s")

    asyncio.run(go())
    safe = {name for name, _, s in sent if s}
    assert safe == {
        "GetWebhook", "ListWebhooks", "ListWebhookDeliveries", "CreateSchedule", "GetSchedule",
        "ListSchedules", "PauseSchedule", "ResumeSchedule",
    }  # fmt: skip
    creates = [r for name, r, _ in sent if name == "CreateSchedule"]
    assert isinstance(creates[0], schedule_service_pb2.CreateScheduleRequest)
    assert len(creates[0].request_id) == 32  # filled in
    assert isinstance(creates[1], schedule_service_pb2.CreateScheduleRequest)
    assert creates[1].request_id == "mine"
    update = next(r for name, r, _ in sent if name == "UpdateSchedule")
    assert isinstance(update, schedule_service_pb2.UpdateScheduleRequest)
    assert list(update.update_mask.paths) == ["cron"]


def test_webhook_and_schedule_calls_round_trip(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "flowsvc.db")
    server = InProcessServer(
        Settings(listen="127.0.0.1:0", database_url=url, http_allow_hosts=("127.0.0.1",))
    )
    key = mint_key(url, "acme")

    async def go() -> None:
        async with Client(server.address, key, timeout=30) as client:
            flow = await make_flow(client, "outbound")
            # A webhook on the flow before its run, so the run leaves deliveries to list. No one
            # listens at its url: the deliveries stay pending, which is all this test needs.
            hook = await client.create_webhook(
                webhook=types.Webhook(
                    url=f"http://127.0.0.1:{_free_port()}/hook",
                    event_types=["run.started", "run.completed"],
                    flow_id=flow.id,
                )
            )
            assert isinstance(hook, types.Webhook) and hook.secret.startswith("whsec_")
            got_hook = await client.get_webhook(hook.id)
            assert got_hook.url == hook.url and got_hook.secret == ""
            assert hook.id in [w.id for w in (await client.list_webhooks()).webhooks]

            # A day between ticks: nothing runs but what the test triggers.
            schedule = await client.create_schedule(
                schedule=types.Schedule(flow_id=flow.id, interval_seconds=86_400,
                                        body=struct_pb2.Struct(fields={
                                            "q": struct_pb2.Value(string_value="tick")}))
            )  # fmt: skip
            assert isinstance(schedule, types.Schedule)
            assert not schedule.paused and len(schedule.next_run_times) == 5
            assert (await client.get_schedule(schedule.id)).flow_id == flow.id
            listed = await client.list_schedules(flow_id=flow.id)
            assert [s.id for s in listed.schedules] == [schedule.id]
            paused = await client.pause_schedule(schedule.id)
            assert paused.paused and not paused.next_run_times
            assert (await client.pause_schedule(schedule.id)).paused  # again: no change
            resumed = await client.resume_schedule(schedule.id)
            assert not resumed.paused and resumed.next_run_times
            run = await client.trigger_schedule(schedule.id)
            assert isinstance(run, types.FlowRun)
            assert run.schedule_id == schedule.id and run.flow_id == flow.id

            deliveries: list[types.WebhookDelivery] = []
            for _ in range(200):
                answer = await client.list_webhook_deliveries(webhook_id=hook.id)
                deliveries = list(answer.webhook_deliveries)
                if len(deliveries) >= 2:
                    break
                await asyncio.sleep(0.05)
            assert {d.event_type for d in deliveries} == {"run.started", "run.completed"}
            assert {d.run_id for d in deliveries} == {run.id}

            await client.delete_schedule(schedule.id)
            await client.delete_webhook(hook.id)
            for gone in (client.get_schedule(schedule.id), client.get_webhook(hook.id)):
                with pytest.raises(FlowsvcError) as caught:
                    await gone
                assert caught.value.code == grpc.StatusCode.NOT_FOUND
            assert not (await client.list_schedules(flow_id=flow.id)).schedules

    try:
        asyncio.run(go())
    finally:
        server.stop()
