"""Schedules against the real server: each tick starts one run, marked with the schedule and
its tick; pause, resume, trigger, update; bad input refused precisely; and no tick runs twice
across a SIGKILL and restart."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2

from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import schedule_service_pb2 as sc
from flowsvc.v1 import schedule_service_pb2_grpc as sc_grpc
from tests.conftest import Deployment
from tests.graphs import create_request, struct
from tests.harness import ChildServer, Client, bearer, connect, mint_key, sqlite_url, wait_until


@pytest.fixture(scope="module")
def schedules(client: Client) -> Iterator[sc_grpc.ScheduleServiceStub]:
    yield sc_grpc.ScheduleServiceStub(client.channel)


def _runs(client: Client, schedule_id: str) -> list[pb.FlowRun]:
    return list(
        client.runs.ListFlowRuns(
            fr.ListFlowRunsRequest(schedule_id=schedule_id, page_size=100)
        ).flow_runs
    )


def test_an_interval_schedule_starts_one_run_per_tick(
    deployment: Deployment, client: Client, schedules: sc_grpc.ScheduleServiceStub
) -> None:
    flow = client.flows.CreateLiveFlow(create_request())
    s = schedules.CreateSchedule(
        sc.CreateScheduleRequest(
            schedule=pb.Schedule(flow_id=flow.id, interval_seconds=1, body=struct(question="q"))
        )
    )
    assert len(s.next_run_times) == 5 and not s.paused
    wait_until(lambda: len(_runs(client, s.id)) >= 3, 15)
    paused = schedules.PauseSchedule(sc.PauseScheduleRequest(id=s.id))
    assert paused.paused and not paused.next_run_times
    time.sleep(1.2)  # a tick in flight when paused may still land
    runs = _runs(client, s.id)
    ticks = [r.scheduled_time.ToDatetime() for r in runs]
    assert len(set(ticks)) == len(ticks)
    assert all(r.schedule_id == s.id and r.flow_id == flow.id for r in runs)
    time.sleep(1.5)
    assert len(_runs(client, s.id)) == len(runs)  # paused: no more ticks
    triggered = schedules.TriggerSchedule(sc.TriggerScheduleRequest(id=s.id))
    assert triggered.schedule_id == s.id and not triggered.HasField("scheduled_time")
    resumed = schedules.ResumeSchedule(sc.ResumeScheduleRequest(id=s.id))
    assert not resumed.paused and resumed.next_run_times
    wait_until(lambda: len(_runs(client, s.id)) >= len(runs) + 2, 10)
    schedules.DeleteSchedule(sc.DeleteScheduleRequest(id=s.id))
    with pytest.raises(grpc.RpcError) as err:
        schedules.GetSchedule(sc.GetScheduleRequest(id=s.id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_cron_schedules_update_and_list(
    client: Client, schedules: sc_grpc.ScheduleServiceStub
) -> None:
    flow = client.flows.CreateLiveFlow(create_request())
    request = sc.CreateScheduleRequest(
        schedule=pb.Schedule(
            flow_id=flow.id,
            cron="0 9 * * MON-FRI",
            time_zone="Europe/Paris",
            body=struct(question="q"),
            overlap_policy=pb.OVERLAP_POLICY_ENQUEUE,
        ),
        request_id="nightly-1",
    )
    s = schedules.CreateSchedule(request)
    assert schedules.CreateSchedule(request).id == s.id  # request_id: the same schedule
    hours = {t.ToDatetime().hour for t in s.next_run_times}
    assert hours <= {7, 8} and s.overlap_policy == pb.OVERLAP_POLICY_ENQUEUE
    updated = schedules.UpdateSchedule(
        sc.UpdateScheduleRequest(
            schedule=pb.Schedule(id=s.id, interval_seconds=3600),
            update_mask=field_mask_pb2.FieldMask(paths=["interval_seconds"]),
        )
    )
    assert updated.interval_seconds == 3600 and not updated.cron and not updated.time_zone
    listed = schedules.ListSchedules(sc.ListSchedulesRequest(flow_id=flow.id)).schedules
    assert [x.id for x in listed] == [s.id]


@pytest.mark.parametrize(
    ("schedule", "field"),
    [
        (pb.Schedule(interval_seconds=5), "schedule.flow_id"),
        (pb.Schedule(), "schedule.cron"),  # neither cron nor interval
        (pb.Schedule(cron="61 * * * *"), "schedule.cron"),
        (pb.Schedule(interval_seconds=-1), "schedule.interval_seconds"),
        (pb.Schedule(cron="* * * * *", time_zone="Mars/Base"), "schedule.time_zone"),
        (pb.Schedule(interval_seconds=5, body=struct()), "schedule.body.question"),
    ],
)
def test_bad_schedules_name_the_field(
    client: Client, schedules: sc_grpc.ScheduleServiceStub, schedule: pb.Schedule, field: str
) -> None:
    flow = client.flows.CreateLiveFlow(create_request())
    if field != "schedule.flow_id":
        schedule.flow_id = flow.id
    if field != "schedule.body.question":
        schedule.body.update({"question": "q"})
    with pytest.raises(grpc.RpcError) as err:
        schedules.CreateSchedule(sc.CreateScheduleRequest(schedule=schedule))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()


def test_no_tick_runs_twice_across_sigkill_and_restart(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "db.sqlite")
    key = mint_key(url, "acme")
    first = ChildServer(url, tmp_path / "first.log")
    c = connect(first.address, bearer(key))
    flow = c.flows.CreateLiveFlow(create_request())
    stub = sc_grpc.ScheduleServiceStub(c.channel)
    s = stub.CreateSchedule(
        sc.CreateScheduleRequest(
            schedule=pb.Schedule(flow_id=flow.id, interval_seconds=2, body=struct(question="q"))
        )
    )
    wait_until(lambda: len(_runs(c, s.id)) >= 2, 20)
    first.signal(signal.SIGKILL)
    first.wait()
    c.close()
    time.sleep(3)  # a tick falls due while no server runs: caught up once on restart
    second = ChildServer(url, tmp_path / "second.log")
    c = connect(second.address, bearer(key))
    try:
        before = len(_runs(c, s.id))
        wait_until(lambda: len(_runs(c, s.id)) >= before + 3, 20)
        ticks = Counter(r.scheduled_time.ToJsonString() for r in _runs(c, s.id))
        assert all(n == 1 for n in ticks.values()), ticks
    finally:
        c.close()
        second.signal(signal.SIGTERM)
        second.wait()
