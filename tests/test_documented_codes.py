"""Every error code an RPC's comment documents is one a real request gets. The codes come from
the protos' comments (tests.rpc_catalog.documented); CASES holds, for each (RPC, code), a
request that gets it, and a documented code without a case fails. The bad-input campaign checks
the other direction: every code an RPC answers is documented for it."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from flowsvc.config import Settings
from flowsvc.domain.limits import Limits
from flowsvc.v1 import eval_service_pb2 as ev
from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import live_flow_service_pb2 as lf
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import schedule_service_pb2 as sc
from flowsvc.v1 import schedule_service_pb2_grpc as sc_grpc
from flowsvc.v1 import session_service_pb2 as ss
from flowsvc.v1 import webhook_service_pb2 as wh
from flowsvc.v1 import webhook_service_pb2_grpc as wh_grpc
from tests.errors import rpc_error
from tests.fake_openai import FakeOpenAI
from tests.graphs import create_request, linear, step, struct, with_input
from tests.harness import Client, InProcessServer, bearer, connect, mint_key, sqlite_url, wait_until
from tests.rpc_catalog import Rpc, all_rpcs, documented, failure

Code = grpc.StatusCode
NOBODY = "00000000-0000-4000-8000-000000000000"  # well-formed, names nothing
MAX_REQUEST_BYTES = 64 * 1024
ALLOWED_HOST = "127.0.0.1"  # on the server's HTTP allow-list; nothing here sends to it
HOOK_URL = f"http://{ALLOWED_HOST}:9/hook"
DAY = 86_400  # a schedule's interval: no tick while a case runs
LIMITS = Limits(
    max_subscribers_per_session=1, max_messages_per_session=2, max_active_runs_per_org=2
)


class Clock:
    def __init__(self) -> None:
        self._offset = timedelta()
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return datetime.now(UTC) + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += timedelta(seconds=seconds)


@dataclass
class Env:
    """One organisation of its own on the shared server, for one case."""

    c: Client
    fake: FakeOpenAI
    clock: Clock

    @property
    def hooks(self) -> wh_grpc.WebhookServiceStub:
        return wh_grpc.WebhookServiceStub(self.c.channel)

    @property
    def schedules(self) -> sc_grpc.ScheduleServiceStub:
        return sc_grpc.ScheduleServiceStub(self.c.channel)

    def schedule(self, flow: pb.LiveFlow | None = None, **fields: Any) -> pb.Schedule:
        """A schedule of `flow` (a new one by default) ticking once a day."""
        fields = {"interval_seconds": DAY, "body": struct(question="q"), **fields}
        return self.schedules.CreateSchedule(
            sc.CreateScheduleRequest(
                schedule=pb.Schedule(flow_id=(flow or self.flow()).id, **fields)
            )
        )

    def flow(self, graph: Any = None, **fields: Any) -> pb.LiveFlow:
        return self.c.flows.CreateLiveFlow(create_request(graph=graph, **fields))

    def bare_flow(self) -> pb.LiveFlow:
        """A flow without a version."""
        return self.c.flows.CreateLiveFlow(lf.CreateLiveFlowRequest(name="bare"))

    def run(self, flow: pb.LiveFlow, **options: Any) -> pb.FlowRun:
        return self.c.runs.RunFlow(
            fr.RunFlowRequest(
                flow_id=flow.id, body=struct(question="q"), options=pb.RunOptions(**options)
            )
        )

    def waiting(self) -> pb.FlowRun:
        """A run (and its session) waiting for input."""
        flow = self.flow(with_input())
        return self.c.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(topic="t")))

    @contextmanager
    def busy(self, runs: int = 1) -> Iterator[list[pb.FlowRun]]:
        """`runs` runs going (a model call that takes seconds), each in a session of its own;
        cancelled on the way out."""
        slow = self.flow(
            linear(
                step("start", "START"),
                step("think", "LLM", "slowly", llm=pb.LlmConfig(model="openai/slow")),
                step("end", "END", "${think.result}"),
            )
        )
        streams, going = [], []
        for _ in range(runs):
            stream = self.c.runs.StreamRunFlow(fr.StreamRunFlowRequest(flow_id=slow.id))
            streams.append(stream)
            going.append(next(stream).run)  # RUN_STARTED: the run is RUNNING
        try:
            yield going
        finally:
            for run in going:
                try:
                    self.c.runs.CancelFlowRun(fr.CancelFlowRunRequest(id=run.id))
                except grpc.RpcError as err:
                    assert err.code() == Code.FAILED_PRECONDITION  # it finished meanwhile
            for stream in streams:
                stream.cancel()

    @contextmanager
    def watched(self, session_id: str) -> Iterator[None]:
        """The session's one allowed subscriber (max_subscribers_per_session=1), open."""
        stream = self.c.sessions.WatchSession(ss.WatchSessionRequest(session_id=session_id))
        next(stream)  # subscribed and replaying
        try:
            yield
        finally:
            stream.cancel()


@dataclass
class Server:
    address: str
    url: str
    key: str
    fake: FakeOpenAI
    clock: Clock


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    fake = FakeOpenAI()
    clock = Clock()
    url = sqlite_url(tmp_path_factory.mktemp("codes") / "db.sqlite")
    running = InProcessServer(
        Settings(
            listen="127.0.0.1:0",
            database_url=url,
            limits=LIMITS,
            max_request_bytes=MAX_REQUEST_BYTES,
            http_allow_hosts=(ALLOWED_HOST,),
            openai_base_url=f"{fake.url}/v1",
            clock=clock,
        )
    )
    try:
        yield Server(running.address, url, mint_key(url, "codes"), fake, clock)
    finally:
        running.stop()
        fake.close()


_orgs = itertools.count()


@pytest.fixture
def env(server: Server) -> Iterator[Env]:
    c = connect(server.address, bearer(mint_key(server.url, f"org-{next(_orgs)}")))
    yield Env(c, server.fake, server.clock)
    c.close()


def _stream(call: Any) -> Callable[[], Any]:
    return lambda: list(call())


def _twice(first: Callable[[], Any], second: Callable[[], Any]) -> Callable[[], Any]:
    first()
    return second


# -- the cases: (RPC, code) -> what to call, given a fresh organisation --------------------------

Case = Callable[[Env], Callable[[], Any]]


def _submit(e: Env, **fields: Any) -> Callable[[], Any]:
    return lambda: e.c.sessions.SubmitUserInput(ss.SubmitUserInputRequest(**fields))


def _expired_session(e: Env) -> str:
    session = e.c.sessions.CreateSession(
        ss.CreateSessionRequest(
            live_flow_id=e.flow().id, inputs=struct(question="q"), expiration_seconds=60, wait=True
        )
    )
    e.clock.advance(61)
    return session.id


def _run_aborted(e: Env, stream: bool) -> Callable[[], Any]:
    def call() -> Any:
        with e.busy() as (going,):
            request = dict(
                flow_id=going.flow_id,
                options=pb.RunOptions(session_id=going.session_id, no_wait=True),
            )
            if stream:
                return list(e.c.runs.StreamRunFlow(fr.StreamRunFlowRequest(**request)))
            return e.c.runs.RunFlow(fr.RunFlowRequest(**request))

    return call


def _run_full_session(e: Env, stream: bool) -> Callable[[], Any]:
    """max_messages_per_session=2: the session of one run has no room for another."""
    flow = e.flow()
    first = e.run(flow)
    request = dict(
        flow_id=flow.id,
        body=struct(question="q"),
        options=pb.RunOptions(session_id=first.session_id),
    )
    if stream:
        return _stream(lambda: e.c.runs.StreamRunFlow(fr.StreamRunFlowRequest(**request)))
    return lambda: e.c.runs.RunFlow(fr.RunFlowRequest(**request))


def _run_reused(e: Env, stream: bool) -> Callable[[], Any]:
    flow = e.flow()
    e.c.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(question="a"), request_id="r"))
    request = dict(flow_id=flow.id, body=struct(question="b"), request_id="r")
    if stream:
        return _stream(lambda: e.c.runs.StreamRunFlow(fr.StreamRunFlowRequest(**request)))
    return lambda: e.c.runs.RunFlow(fr.RunFlowRequest(**request))


def _run(e: Env, stream: bool, **request: Any) -> Callable[[], Any]:
    if stream:
        return _stream(lambda: e.c.runs.StreamRunFlow(fr.StreamRunFlowRequest(**request)))
    return lambda: e.c.runs.RunFlow(fr.RunFlowRequest(**request))


def _create_session_at_capacity(e: Env) -> Callable[[], Any]:
    flow = e.flow()

    def call() -> Any:
        with e.busy(LIMITS.max_active_runs_per_org):
            return e.c.sessions.CreateSession(
                ss.CreateSessionRequest(live_flow_id=flow.id, inputs=struct(question="q"))
            )

    return call


def _watch_run_over_subscribers(e: Env) -> Callable[[], Any]:
    waiting = e.waiting()

    def call() -> Any:
        with e.watched(waiting.session_id):
            return list(e.c.runs.WatchRun(fr.WatchRunRequest(run_id=waiting.id)))

    return call


def _watch_session_over_subscribers(e: Env) -> Callable[[], Any]:
    waiting = e.waiting()

    def call() -> Any:
        with e.watched(waiting.session_id):
            return next(
                e.c.sessions.WatchSession(ss.WatchSessionRequest(session_id=waiting.session_id))
            )

    return call


def _watch_session_batches_over_subscribers(e: Env) -> Callable[[], Any]:
    """A batched stream counts against the same per-session limit as WatchSession's."""
    waiting = e.waiting()

    def call() -> Any:
        with e.watched(waiting.session_id):
            return next(
                e.c.sessions.WatchSessionBatches(
                    ss.WatchSessionBatchesRequest(session_id=waiting.session_id)
                )
            )

    return call


def _fork(e: Env, **fields: Any) -> Callable[[], Any]:
    return lambda: e.c.sessions.ForkSession(ss.ForkSessionRequest(**fields))


def _finished_session(e: Env) -> pb.Session:
    return e.c.sessions.CreateSession(
        ss.CreateSessionRequest(live_flow_id=e.flow().id, inputs=struct(question="q"), wait=True)
    )


def _fork_waiting_step(e: Env) -> Callable[[], Any]:
    """The step a session waits on has not completed."""
    session = e.c.sessions.GetSession(ss.GetSessionRequest(id=e.waiting().session_id))
    return _fork(e, session_id=session.id, step_id=session.current_step.id)


def _fork_at_capacity(e: Env) -> Callable[[], Any]:
    source = _finished_session(e)

    def call() -> Any:
        with e.busy(LIMITS.max_active_runs_per_org):
            return e.c.sessions.ForkSession(
                ss.ForkSessionRequest(session_id=source.id, step_id=source.steps[1].id)
            )

    return call


def _hook(e: Env, **fields: Any) -> Callable[[], Any]:
    return lambda: e.hooks.CreateWebhook(wh.CreateWebhookRequest(webhook=pb.Webhook(**fields)))


def _trigger_waiting_session(e: Env) -> Callable[[], Any]:
    """A schedule whose runs go to a session waiting for input: no run may start in it."""
    waiting = e.waiting()
    s = e.schedule(
        pb.LiveFlow(id=waiting.flow_id),
        body=struct(topic="t"),
        options=pb.RunOptions(session_id=waiting.session_id),
    )
    return lambda: e.schedules.TriggerSchedule(sc.TriggerScheduleRequest(id=s.id))


def _trigger_at_capacity(e: Env) -> Callable[[], Any]:
    s = e.schedule()

    def call() -> Any:
        with e.busy(LIMITS.max_active_runs_per_org):
            return e.schedules.TriggerSchedule(sc.TriggerScheduleRequest(id=s.id))

    return call


def _by_id(method: str, request: Any) -> dict[tuple[str, Code], Case]:
    """INVALID_ARGUMENT for an empty id, NOT_FOUND for one that names nothing."""

    def case(id_: str) -> Case:
        return lambda e: lambda: getattr(e.schedules, method)(request(id=id_))

    return {(method, Code.INVALID_ARGUMENT): case(""), (method, Code.NOT_FOUND): case(NOBODY)}


def _run_cases(rpc: str, stream: bool) -> dict[tuple[str, Code], Case]:
    return {
        (rpc, Code.INVALID_ARGUMENT): lambda e: _run(e, stream, flow_id=""),
        (rpc, Code.NOT_FOUND): lambda e: _run(e, stream, flow_id=NOBODY),
        (rpc, Code.FAILED_PRECONDITION): lambda e: _run(e, stream, flow_id=e.bare_flow().id),
        (rpc, Code.ABORTED): lambda e: _run_aborted(e, stream),
        (rpc, Code.ALREADY_EXISTS): lambda e: _run_reused(e, stream),
        (rpc, Code.RESOURCE_EXHAUSTED): lambda e: _run_full_session(e, stream),
    }


CASES: dict[tuple[str, Code], Case] = {
    # LiveFlowService
    ("CreateLiveFlow", Code.INVALID_ARGUMENT): lambda e: lambda: e.flow(name=""),
    ("CreateLiveFlow", Code.ALREADY_EXISTS): lambda e: _twice(
        lambda: e.c.flows.CreateLiveFlow(create_request("a", request_id="x")),
        lambda: e.c.flows.CreateLiveFlow(create_request("b", request_id="x")),
    ),
    ("GetLiveFlow", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.c.flows.GetLiveFlow(lf.GetLiveFlowRequest(id=""))
    ),
    # A malformed id names nothing: NOT_FOUND, as an unknown well-formed one.
    ("GetLiveFlow", Code.NOT_FOUND): lambda e: (
        lambda: e.c.flows.GetLiveFlow(lf.GetLiveFlowRequest(id="not-an-id"))
    ),
    ("ListLiveFlows", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.c.flows.ListLiveFlows(lf.ListLiveFlowsRequest(page_token="bogus"))
    ),
    ("UpdateLiveFlow", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.c.flows.UpdateLiveFlow(
            lf.UpdateLiveFlowRequest(
                live_flow=pb.LiveFlow(id=e.flow().id, name="n"),
                update_mask={"paths": ["organisation_id"]},
            )
        )
    ),
    ("UpdateLiveFlow", Code.NOT_FOUND): lambda e: (
        lambda: e.c.flows.UpdateLiveFlow(
            lf.UpdateLiveFlowRequest(live_flow=pb.LiveFlow(id=NOBODY, name="n"))
        )
    ),
    ("DeleteLiveFlow", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.c.flows.DeleteLiveFlow(lf.DeleteLiveFlowRequest(id=""))
    ),
    ("DeleteLiveFlow", Code.NOT_FOUND): lambda e: (
        lambda: e.c.flows.DeleteLiveFlow(lf.DeleteLiveFlowRequest(id=NOBODY))
    ),
    ("CreateFlowVersion", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.c.flows.CreateFlowVersion(
            lf.CreateFlowVersionRequest(flow_id=e.flow().id)  # an empty graph breaks its rules
        )
    ),
    ("CreateFlowVersion", Code.NOT_FOUND): lambda e: (
        lambda: e.c.flows.CreateFlowVersion(
            lf.CreateFlowVersionRequest(
                flow_id=NOBODY,
                steps=create_request().steps,
                step_transitions=create_request().step_transitions,
            )
        )
    ),
    ("GetFlowVersion", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.c.flows.GetFlowVersion(lf.GetFlowVersionRequest(id=""))
    ),
    ("GetFlowVersion", Code.NOT_FOUND): lambda e: (
        lambda: e.c.flows.GetFlowVersion(lf.GetFlowVersionRequest(id=NOBODY))
    ),
    ("ListFlowVersions", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.c.flows.ListFlowVersions(
            lf.ListFlowVersionsRequest(flow_id=e.flow().id, page_size=-1)
        )
    ),
    ("ListFlowVersions", Code.NOT_FOUND): lambda e: (
        lambda: e.c.flows.ListFlowVersions(lf.ListFlowVersionsRequest(flow_id=NOBODY))
    ),
    # SessionService
    ("CreateSession", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.c.sessions.CreateSession(
            ss.CreateSessionRequest(
                live_flow_id=e.flow().id, inputs=struct(question="q"), name="n" * 41
            )
        )
    ),
    ("CreateSession", Code.NOT_FOUND): lambda e: (
        lambda: e.c.sessions.CreateSession(ss.CreateSessionRequest(live_flow_id=NOBODY))
    ),
    ("CreateSession", Code.FAILED_PRECONDITION): lambda e: (
        lambda: e.c.sessions.CreateSession(ss.CreateSessionRequest(live_flow_id=e.bare_flow().id))
    ),
    ("CreateSession", Code.ALREADY_EXISTS): lambda e: (
        lambda flow: _twice(
            lambda: e.c.sessions.CreateSession(
                ss.CreateSessionRequest(
                    live_flow_id=flow.id, inputs=struct(question="a"), request_id="s", wait=True
                )
            ),
            lambda: e.c.sessions.CreateSession(
                ss.CreateSessionRequest(
                    live_flow_id=flow.id, inputs=struct(question="b"), request_id="s"
                )
            ),
        )
    )(e.flow()),
    ("CreateSession", Code.RESOURCE_EXHAUSTED): _create_session_at_capacity,
    ("GetSession", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.c.sessions.GetSession(ss.GetSessionRequest(id=""))
    ),
    ("GetSession", Code.NOT_FOUND): lambda e: (
        lambda: e.c.sessions.GetSession(ss.GetSessionRequest(id=NOBODY))
    ),
    ("ListSessions", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.c.sessions.ListSessions(ss.ListSessionsRequest(page_size=-1))
    ),
    ("SubmitUserInput", Code.INVALID_ARGUMENT): lambda e: _submit(e, session_id="", user_input="a"),
    ("SubmitUserInput", Code.NOT_FOUND): lambda e: _submit(e, session_id=NOBODY, user_input="a"),
    ("SubmitUserInput", Code.FAILED_PRECONDITION): lambda e: _submit(
        e, session_id=e.run(e.flow()).session_id, user_input="a"
    ),
    ("SubmitUserInput", Code.ALREADY_EXISTS): lambda e: (
        lambda sid: _twice(
            _submit(e, session_id=sid, user_input="a", request_id="i", wait=True),
            _submit(e, session_id=sid, user_input="b", request_id="i"),
        )
    )(e.waiting().session_id),
    ("CancelSession", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.c.sessions.CancelSession(ss.CancelSessionRequest(id=""))
    ),
    ("CancelSession", Code.NOT_FOUND): lambda e: (
        lambda: e.c.sessions.CancelSession(ss.CancelSessionRequest(id=NOBODY))
    ),
    ("CancelSession", Code.FAILED_PRECONDITION): lambda e: (
        lambda sid: lambda: e.c.sessions.CancelSession(ss.CancelSessionRequest(id=sid))
    )(_expired_session(e)),
    ("DeleteSession", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.c.sessions.DeleteSession(ss.DeleteSessionRequest(id=""))
    ),
    ("DeleteSession", Code.NOT_FOUND): lambda e: (
        lambda: e.c.sessions.DeleteSession(ss.DeleteSessionRequest(id=NOBODY))
    ),
    ("WatchSession", Code.INVALID_ARGUMENT): lambda e: _stream(
        lambda: e.c.sessions.WatchSession(ss.WatchSessionRequest(session_id=""))
    ),
    ("WatchSession", Code.NOT_FOUND): lambda e: _stream(
        lambda: e.c.sessions.WatchSession(ss.WatchSessionRequest(session_id=NOBODY))
    ),
    ("WatchSession", Code.RESOURCE_EXHAUSTED): _watch_session_over_subscribers,
    ("WatchSessionBatches", Code.INVALID_ARGUMENT): lambda e: _stream(
        lambda: e.c.sessions.WatchSessionBatches(ss.WatchSessionBatchesRequest(session_id=""))
    ),
    ("WatchSessionBatches", Code.NOT_FOUND): lambda e: _stream(
        lambda: e.c.sessions.WatchSessionBatches(
            ss.WatchSessionBatchesRequest(session_id=NOBODY)
        )
    ),
    ("WatchSessionBatches", Code.RESOURCE_EXHAUSTED): _watch_session_batches_over_subscribers,
    ("ForkSession", Code.INVALID_ARGUMENT): lambda e: _fork(e, session_id="", step_id=NOBODY),
    ("ForkSession", Code.NOT_FOUND): lambda e: (
        lambda s: _fork(e, session_id=s.id, step_id=NOBODY)
    )(_finished_session(e)),
    ("ForkSession", Code.FAILED_PRECONDITION): _fork_waiting_step,
    ("ForkSession", Code.ALREADY_EXISTS): lambda e: (
        lambda s: _twice(
            _fork(e, session_id=s.id, step_id=s.steps[1].id, request_id="f", wait=True),
            _fork(e, session_id=s.id, step_id=s.steps[2].id, request_id="f"),
        )
    )(_finished_session(e)),
    ("ForkSession", Code.RESOURCE_EXHAUSTED): _fork_at_capacity,
    # FlowRunService
    **_run_cases("RunFlow", stream=False),
    **_run_cases("StreamRunFlow", stream=True),
    ("WatchRun", Code.INVALID_ARGUMENT): lambda e: _stream(
        lambda: e.c.runs.WatchRun(fr.WatchRunRequest(run_id=""))
    ),
    ("WatchRun", Code.NOT_FOUND): lambda e: _stream(
        lambda: e.c.runs.WatchRun(fr.WatchRunRequest(run_id=NOBODY))
    ),
    ("WatchRun", Code.RESOURCE_EXHAUSTED): _watch_run_over_subscribers,
    ("GetFlowRun", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.c.runs.GetFlowRun(fr.GetFlowRunRequest(id=""))
    ),
    ("GetFlowRun", Code.NOT_FOUND): lambda e: (
        lambda: e.c.runs.GetFlowRun(fr.GetFlowRunRequest(id=NOBODY))
    ),
    ("ListFlowRuns", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.c.runs.ListFlowRuns(fr.ListFlowRunsRequest(page_size=-1))
    ),
    ("CancelFlowRun", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.c.runs.CancelFlowRun(fr.CancelFlowRunRequest(id=""))
    ),
    ("CancelFlowRun", Code.NOT_FOUND): lambda e: (
        lambda: e.c.runs.CancelFlowRun(fr.CancelFlowRunRequest(id=NOBODY))
    ),
    ("CancelFlowRun", Code.FAILED_PRECONDITION): lambda e: (
        lambda run: lambda: e.c.runs.CancelFlowRun(fr.CancelFlowRunRequest(id=run.id))
    )(e.run(e.flow())),
    # EvalService
    ("GetEvalJob", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.c.evals.GetEvalJob(ev.GetEvalJobRequest(id=""))
    ),
    ("GetEvalJob", Code.NOT_FOUND): lambda e: (
        lambda: e.c.evals.GetEvalJob(ev.GetEvalJobRequest(id=NOBODY))
    ),
    ("ListEvalJobs", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.c.evals.ListEvalJobs(ev.ListEvalJobsRequest(page_size=-1))
    ),
    # WebhookService
    ("CreateWebhook", Code.INVALID_ARGUMENT): lambda e: _hook(
        e, url="http://not-allowed.example/hook", event_types=["run.completed"]
    ),
    ("CreateWebhook", Code.NOT_FOUND): lambda e: _hook(
        e, url=HOOK_URL, event_types=["run.completed"], flow_id=NOBODY
    ),
    ("GetWebhook", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.hooks.GetWebhook(wh.GetWebhookRequest(id=""))
    ),
    ("GetWebhook", Code.NOT_FOUND): lambda e: (
        lambda: e.hooks.GetWebhook(wh.GetWebhookRequest(id=NOBODY))
    ),
    ("ListWebhooks", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.hooks.ListWebhooks(wh.ListWebhooksRequest(page_token="bogus"))
    ),
    ("DeleteWebhook", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.hooks.DeleteWebhook(wh.DeleteWebhookRequest(id=""))
    ),
    ("DeleteWebhook", Code.NOT_FOUND): lambda e: (
        lambda: e.hooks.DeleteWebhook(wh.DeleteWebhookRequest(id=NOBODY))
    ),
    ("ListWebhookDeliveries", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.hooks.ListWebhookDeliveries(wh.ListWebhookDeliveriesRequest(webhook_id=""))
    ),
    ("ListWebhookDeliveries", Code.NOT_FOUND): lambda e: (
        lambda: e.hooks.ListWebhookDeliveries(wh.ListWebhookDeliveriesRequest(webhook_id=NOBODY))
    ),
    # ScheduleService
    ("CreateSchedule", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.schedule(interval_seconds=0)  # neither it nor cron
    ),
    ("CreateSchedule", Code.NOT_FOUND): lambda e: lambda: e.schedule(pb.LiveFlow(id=NOBODY)),
    ("CreateSchedule", Code.ALREADY_EXISTS): lambda e: (
        lambda flow: _twice(
            lambda: e.schedules.CreateSchedule(
                sc.CreateScheduleRequest(
                    schedule=pb.Schedule(
                        flow_id=flow.id, interval_seconds=DAY, body=struct(question="q")
                    ),
                    request_id="s",
                )
            ),
            lambda: e.schedules.CreateSchedule(
                sc.CreateScheduleRequest(
                    schedule=pb.Schedule(
                        flow_id=flow.id, interval_seconds=DAY + 1, body=struct(question="q")
                    ),
                    request_id="s",
                )
            ),
        )
    )(e.flow()),
    ("CreateSchedule", Code.FAILED_PRECONDITION): lambda e: lambda: e.schedule(e.bare_flow()),
    **_by_id("GetSchedule", sc.GetScheduleRequest),
    ("ListSchedules", Code.INVALID_ARGUMENT): lambda e: (
        lambda: e.schedules.ListSchedules(sc.ListSchedulesRequest(page_size=-1))
    ),
    ("UpdateSchedule", Code.INVALID_ARGUMENT): lambda e: (
        lambda s: (
            lambda: e.schedules.UpdateSchedule(
                sc.UpdateScheduleRequest(
                    schedule=pb.Schedule(id=s.id, interval_seconds=0),  # neither it nor cron
                    update_mask={"paths": ["interval_seconds"]},
                )
            )
        )
    )(e.schedule()),
    ("UpdateSchedule", Code.FAILED_PRECONDITION): lambda e: (
        lambda s: (
            lambda: e.schedules.UpdateSchedule(
                sc.UpdateScheduleRequest(
                    # a one-off callback, and the organisation has no webhook secret
                    schedule=pb.Schedule(
                        id=s.id, options=pb.RunOptions(webhook_url="http://127.0.0.1:9/hook")
                    ),
                    update_mask={"paths": ["options"]},
                )
            )
        )
    )(e.schedule()),
    ("UpdateSchedule", Code.NOT_FOUND): lambda e: (
        lambda: e.schedules.UpdateSchedule(
            sc.UpdateScheduleRequest(
                schedule=pb.Schedule(id=NOBODY, interval_seconds=60),
                update_mask={"paths": ["interval_seconds"]},
            )
        )
    ),
    **_by_id("DeleteSchedule", sc.DeleteScheduleRequest),
    **_by_id("PauseSchedule", sc.PauseScheduleRequest),
    **_by_id("ResumeSchedule", sc.ResumeScheduleRequest),
    **_by_id("TriggerSchedule", sc.TriggerScheduleRequest),
    ("TriggerSchedule", Code.RESOURCE_EXHAUSTED): _trigger_at_capacity,
    ("TriggerSchedule", Code.FAILED_PRECONDITION): _trigger_waiting_session,
}

# -- codes every RPC documents (the service's comment): one request of each kind per RPC --------

COMMON: dict[Code, Callable[[Server], tuple[Any, list[tuple[str, str]]]]] = {
    Code.UNAUTHENTICATED: lambda s: (b"", []),
    Code.PERMISSION_DENIED: lambda s: (b"", [*bearer(s.key), ("current-org-id", "someone-else")]),
    # A length-delimited field 1 that claims 5 bytes and carries 2.
    Code.INVALID_ARGUMENT: lambda s: (b"\x0a\x05ab", bearer(s.key)),
    Code.RESOURCE_EXHAUSTED: lambda s: (b"\x00" * (MAX_REQUEST_BYTES + 1), bearer(s.key)),
}
# Codes that need an outage or a shutdown to answer; each names the tests that cause them.
EXEMPT: dict[Code, str] = {
    Code.UNAVAILABLE: (
        "a database outage: tests/test_postgres_restart.py::"
        "test_postgres_restart_under_load_is_unavailable_then_serves_again and "
        "tests/test_replica_failures.py; draining: tests/test_server.py::"
        "test_sigterm_ends_an_idle_watch_at_once_with_a_resume_hint"
    ),
}

RPCS = all_rpcs()


@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.name)
def test_every_documented_code_has_a_case(rpc: Rpc) -> None:
    codes = documented(rpc)
    assert codes.own, f"{rpc.name}: its comment has no 'Errors:' part"
    missing = [c.name for c in codes.own if (rpc.name, c) not in CASES and c not in EXEMPT] + [
        c.name for c in codes.common - codes.own if c not in COMMON and c not in EXEMPT
    ]
    assert not missing, f"{rpc.name} documents {missing}: add a case to CASES (or COMMON)"


def test_every_case_is_documented() -> None:
    """A case for a code the RPC does not document is a code the contract leaves out."""
    own = {(r.name, c) for r in RPCS for c in documented(r).own}
    assert sorted(set(CASES) - own, key=str) == []


@pytest.mark.parametrize(
    ("name", "code"),
    sorted(CASES, key=lambda k: (k[0], k[1].name)),
    ids=lambda v: getattr(v, "name", v),
)
def test_documented_code_is_answered(env: Env, name: str, code: Code) -> None:
    call = CASES[(name, code)](env)
    rpc_error(call, code)


@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.name)
def test_codes_every_rpc_documents_are_answered(server: Server, rpc: Rpc) -> None:
    with grpc.insecure_channel(server.address) as channel:
        for code in sorted(documented(rpc).common - set(EXEMPT), key=lambda c: c.name):
            request, metadata = COMMON[code](server)
            err = failure(channel, rpc, request, metadata)
            assert err is not None and err.code() == code, (rpc.name, code, err)


def test_the_busy_helper_really_holds_runs(env: Env) -> None:
    """The capacity and ABORTED cases rely on runs still going while they call."""
    with env.busy() as (going,):
        run = env.c.runs.GetFlowRun(fr.GetFlowRunRequest(id=going.id))
        assert run.status == pb.RUN_STATUS_RUNNING
    wait_until(
        lambda: (
            env.c.runs.GetFlowRun(fr.GetFlowRunRequest(id=going.id)).status
            == pb.RUN_STATUS_CANCELLED
        )
    )
