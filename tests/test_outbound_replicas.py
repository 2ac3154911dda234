"""Webhooks and schedules on two replicas of one PostgreSQL database: every delivery is sent
once, by whichever replica claims it, and every tick starts one run."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import schedule_service_pb2 as sc
from flowsvc.v1 import schedule_service_pb2_grpc as sc_grpc
from flowsvc.v1 import webhook_service_pb2 as wh
from flowsvc.v1 import webhook_service_pb2_grpc as wh_grpc
from tests.graphs import create_request, struct
from tests.harness import wait_until
from tests.postgres import fresh_database
from tests.replicas import cluster
from tests.webhook_receiver import Receiver, verify


def test_two_replicas_send_each_delivery_once_and_run_each_tick_once(tmp_path: Path) -> None:
    receiver = Receiver()
    env = {
        "FLOWSVC_HTTP_ALLOW_HOSTS": receiver.host,
        "FLOWSVC_WEBHOOK_POLL_SECONDS": "0.05",
        "FLOWSVC_SCHEDULE_POLL_SECONDS": "0.05",
    }
    try:
        with fresh_database() as url, cluster(url, tmp_path, env) as c:
            c.start(2)
            a, b = c.clients
            flow = a.flows.CreateLiveFlow(create_request())
            hook = wh_grpc.WebhookServiceStub(b.channel).CreateWebhook(
                wh.CreateWebhookRequest(
                    webhook=pb.Webhook(url=receiver.url("/r"), event_types=["run.completed"])
                )
            )
            runs = set()
            for i in range(20):  # runs on both replicas; both replicas' workers claim
                client = (a, b)[i % 2]
                r = client.runs.RunFlow(
                    fr.RunFlowRequest(flow_id=flow.id, body=struct(question="q"))
                )
                runs.add(r.id)
            schedule = sc_grpc.ScheduleServiceStub(a.channel).CreateSchedule(
                sc.CreateScheduleRequest(
                    schedule=pb.Schedule(
                        flow_id=flow.id, interval_seconds=1, body=struct(question="t")
                    )
                )
            )

            def tick_runs() -> list[pb.FlowRun]:
                return list(
                    b.runs.ListFlowRuns(
                        fr.ListFlowRunsRequest(schedule_id=schedule.id, page_size=100)
                    ).flow_runs
                )

            wait_until(lambda: len(tick_runs()) >= 5, 30)
            sc_grpc.ScheduleServiceStub(b.channel).PauseSchedule(
                sc.PauseScheduleRequest(id=schedule.id)
            )
            expected = len(runs) + len(tick_runs())
            wait_until(lambda: len(receiver.at("/r")) >= expected, 30)
            time.sleep(1.0)  # a second copy would arrive by now
            got = receiver.at("/r")
            ids = Counter(r.id for r in got)
            assert all(n == 1 for n in ids.values()), ids
            assert runs <= {r.json["data"]["id"] for r in got}
            assert all(verify(hook.secret, r) for r in got)
            ticks = Counter(r.scheduled_time.ToJsonString() for r in tick_runs())
            assert all(n == 1 for n in ticks.values()), ticks
            # Sent once each: one attempt per delivery.
            deliveries = (
                wh_grpc.WebhookServiceStub(a.channel)
                .ListWebhookDeliveries(
                    wh.ListWebhookDeliveriesRequest(webhook_id=hook.id, page_size=100)
                )
                .webhook_deliveries
            )
            assert {d.attempts for d in deliveries} == {1}
    finally:
        receiver.close()
