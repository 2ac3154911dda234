"""ScheduleService: parse, call one domain method, convert, return."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import empty_pb2, json_format

from flowsvc.api.convert import (
    dict_to_struct,
    known_enum,
    run_options_from_pb,
    run_to_pb,
    struct_to_dict,
    timestamp,
)
from flowsvc.api.guard import current_principal
from flowsvc.domain.run_requests import RunOptions
from flowsvc.domain.schedules import CatchUp, Overlap, Schedule, Schedules
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import schedule_service_pb2 as svc
from flowsvc.v1 import schedule_service_pb2_grpc as svc_grpc

Context = Any
_OVERLAP = {
    pb.OVERLAP_POLICY_UNSPECIFIED: Overlap.SKIP,
    pb.OVERLAP_POLICY_SKIP: Overlap.SKIP,
    pb.OVERLAP_POLICY_ENQUEUE: Overlap.ENQUEUE,
}
_CATCH_UP = {
    pb.CATCH_UP_UNSPECIFIED: CatchUp.LATEST,
    pb.CATCH_UP_LATEST: CatchUp.LATEST,
    pb.CATCH_UP_NONE: CatchUp.NONE,
}
_EPOCH = datetime.fromtimestamp(0, UTC)


def schedule_from_pb(s: pb.Schedule) -> Schedule:
    known_enum(s.overlap_policy, pb.OverlapPolicy, "schedule.overlap_policy")
    known_enum(s.catch_up, pb.CatchUp, "schedule.catch_up")
    known_enum(
        s.options.eval_options.run_mode, pb.EvalRunMode, "schedule.options.eval_options.run_mode"
    )
    return Schedule(
        id=s.id,
        organisation_id=current_principal().organisation_id,
        flow_id=s.flow_id,
        cron=s.cron,
        time_zone=s.time_zone,
        interval_seconds=s.interval_seconds,
        body=struct_to_dict(s.body),
        options=run_options_from_pb(s.options) if s.HasField("options") else RunOptions(),
        overlap=_OVERLAP[s.overlap_policy],
        catch_up=_CATCH_UP[s.catch_up],
        paused=False,
        next_tick_at=None,
        created_at=_EPOCH,
        updated_at=_EPOCH,
    )


def schedule_to_pb(s: Schedule) -> pb.Schedule:
    o = s.options
    options = pb.RunOptions(
        session_id=o.session_id,
        version=o.version,
        override=dict_to_struct(o.override),
        no_wait=o.no_wait,
        webhook_url=o.webhook_url,
    )
    if o.eval_options:
        json_format.ParseDict(o.eval_options, options.eval_options)
    out = pb.Schedule(
        id=s.id,
        flow_id=s.flow_id,
        time_zone=s.time_zone,
        body=dict_to_struct(s.body),
        options=options,
        overlap_policy=pb.OverlapPolicy.Value(f"OVERLAP_POLICY_{s.overlap.value}"),
        catch_up=pb.CatchUp.Value(f"CATCH_UP_{s.catch_up.value}"),
        paused=s.paused,
        next_run_times=[t for t in (timestamp(x) for x in s.next_run_times) if t is not None],
        created_at=timestamp(s.created_at),
        updated_at=timestamp(s.updated_at),
    )
    if s.cron:
        out.cron = s.cron
    else:
        out.interval_seconds = s.interval_seconds
    return out


class ScheduleServicer(svc_grpc.ScheduleServiceServicer):
    def __init__(self, schedules: Schedules) -> None:
        self._schedules = schedules

    async def CreateSchedule(
        self, request: svc.CreateScheduleRequest, context: Context
    ) -> pb.Schedule:
        created = await self._schedules.create(
            schedule_from_pb(request.schedule), request.request_id
        )
        return schedule_to_pb(created)

    async def GetSchedule(self, request: svc.GetScheduleRequest, context: Context) -> pb.Schedule:
        org = current_principal().organisation_id
        return schedule_to_pb(await self._schedules.get(org, request.id))

    async def ListSchedules(
        self, request: svc.ListSchedulesRequest, context: Context
    ) -> svc.ListSchedulesResponse:
        page = await self._schedules.list(
            current_principal().organisation_id,
            request.flow_id,
            request.page_size,
            request.page_token,
        )
        return svc.ListSchedulesResponse(
            schedules=[schedule_to_pb(s) for s in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateSchedule(
        self, request: svc.UpdateScheduleRequest, context: Context
    ) -> pb.Schedule:
        given = schedule_from_pb(request.schedule)
        updated = await self._schedules.update(
            current_principal().organisation_id, given, list(request.update_mask.paths)
        )
        return schedule_to_pb(updated)

    async def DeleteSchedule(
        self, request: svc.DeleteScheduleRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._schedules.delete(current_principal().organisation_id, request.id)
        return empty_pb2.Empty()

    async def PauseSchedule(
        self, request: svc.PauseScheduleRequest, context: Context
    ) -> pb.Schedule:
        org = current_principal().organisation_id
        return schedule_to_pb(await self._schedules.set_paused(org, request.id, True))

    async def ResumeSchedule(
        self, request: svc.ResumeScheduleRequest, context: Context
    ) -> pb.Schedule:
        org = current_principal().organisation_id
        return schedule_to_pb(await self._schedules.set_paused(org, request.id, False))

    async def TriggerSchedule(
        self, request: svc.TriggerScheduleRequest, context: Context
    ) -> pb.FlowRun:
        org = current_principal().organisation_id
        return run_to_pb(await self._schedules.trigger(org, request.id))
