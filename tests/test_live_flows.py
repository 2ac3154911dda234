"""LiveFlowService over gRPC against the real server."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2

from flowsvc.v1 import live_flow_service_pb2 as svc
from flowsvc.v1 import resources_pb2 as pb
from tests.errors import invalid, rpc_error
from tests.graphs import chain5, create_request, from_json, linear, step
from tests.harness import Client


def test_create_returns_flow_with_first_version(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request("chain", description="five steps"))
    assert flow.id and flow.organisation_id == "acme"
    assert (flow.name, flow.description) == ("chain", "five steps")
    assert flow.current_version.version == 1
    assert [s.name for s in flow.current_version.steps] == [
        "start",
        "draft",
        "critique",
        "final",
        "end",
    ]
    assert flow.created_at.seconds > 0


def test_create_without_graph_has_no_version(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(svc.CreateLiveFlowRequest(name="empty"))
    assert not flow.HasField("current_version")


def test_transitions_given_by_name_are_read_back_with_ids_too(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request())
    version = flow.current_version
    ids = {s.name: s.id for s in version.steps}
    first = version.step_transitions[0]
    assert (first.source, first.target) == ("start", "draft")
    assert (first.source_step_id, first.target_step_id) == (ids["start"], ids["draft"])
    assert first.id


def test_transitions_given_by_client_ids_are_read_back_with_names(client: Client) -> None:
    steps, _ = chain5()
    for i, s in enumerate(steps):
        s.id = f"s{i}"
    transitions = [
        pb.StepTransition(source_step_id=f"s{i}", target_step_id=f"s{i + 1}") for i in range(4)
    ]
    flow = client.flows.CreateLiveFlow(create_request(graph=(steps, transitions)))
    t = flow.current_version.step_transitions[3]
    assert (t.source_step_id, t.target_step_id, t.source, t.target) == ("s3", "s4", "final", "end")


def test_a_version_read_back_can_be_sent_again_as_is(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request())
    v1 = flow.current_version
    v2 = client.flows.CreateFlowVersion(
        svc.CreateFlowVersionRequest(
            flow_id=flow.id, steps=v1.steps, step_transitions=v1.step_transitions
        )
    )
    assert v2.version == 2
    assert [s.name for s in v2.steps] == [s.name for s in v1.steps]


def test_get_returns_what_create_returned(client: Client) -> None:
    created = client.flows.CreateLiveFlow(create_request("fetched"))
    got = client.flows.GetLiveFlow(svc.GetLiveFlowRequest(id=created.id))
    assert got == created


def test_full_view_lists_sessions_and_basic_view_does_not(client: Client) -> None:
    created = client.flows.CreateLiveFlow(create_request())
    full = client.flows.GetLiveFlow(
        svc.GetLiveFlowRequest(id=created.id, view=pb.LIVE_FLOW_VIEW_FULL)
    )
    assert full.id == created.id
    assert list(full.sessions) == []


def test_get_unknown_flow_is_not_found(client: Client) -> None:
    rpc_error(
        lambda: client.flows.GetLiveFlow(
            svc.GetLiveFlowRequest(id="00000000-0000-4000-8000-000000000000")
        ),
        grpc.StatusCode.NOT_FOUND,
    )


def test_get_with_malformed_id_is_not_found(client: Client) -> None:
    rpc_error(
        lambda: client.flows.GetLiveFlow(svc.GetLiveFlowRequest(id="nope")),
        grpc.StatusCode.NOT_FOUND,
    )


def test_get_without_id_is_invalid(client: Client) -> None:
    assert "id" in invalid(lambda: client.flows.GetLiveFlow(svc.GetLiveFlowRequest()))


def test_create_version_makes_it_current(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request())
    steps, transitions = linear(step("start", "START"), step("end", "END", "done"))
    v2 = client.flows.CreateFlowVersion(
        svc.CreateFlowVersionRequest(flow_id=flow.id, steps=steps, step_transitions=transitions)
    )
    assert v2.version == 2 and v2.flow_id == flow.id
    got = client.flows.GetLiveFlow(svc.GetLiveFlowRequest(id=flow.id))
    assert got.current_version.id == v2.id
    assert client.flows.GetFlowVersion(svc.GetFlowVersionRequest(id=v2.id)) == v2


def test_earlier_versions_stay_readable_and_unchanged(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request())
    steps, transitions = linear(step("start", "START"), step("end", "END", "done"))
    client.flows.CreateFlowVersion(
        svc.CreateFlowVersionRequest(flow_id=flow.id, steps=steps, step_transitions=transitions)
    )
    v1 = client.flows.GetFlowVersion(svc.GetFlowVersionRequest(id=flow.current_version.id))
    assert v1 == flow.current_version


def test_list_versions_newest_first_with_pages(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request())
    steps, transitions = chain5()
    for _ in range(4):
        client.flows.CreateFlowVersion(
            svc.CreateFlowVersionRequest(flow_id=flow.id, steps=steps, step_transitions=transitions)
        )
    first = client.flows.ListFlowVersions(svc.ListFlowVersionsRequest(flow_id=flow.id, page_size=3))
    assert [v.version for v in first.flow_versions] == [5, 4, 3]
    second = client.flows.ListFlowVersions(
        svc.ListFlowVersionsRequest(flow_id=flow.id, page_size=3, page_token=first.next_page_token)
    )
    assert [v.version for v in second.flow_versions] == [2, 1]
    assert second.next_page_token == ""


def test_create_version_for_unknown_flow_is_not_found(client: Client) -> None:
    steps, transitions = chain5()
    rpc_error(
        lambda: client.flows.CreateFlowVersion(
            svc.CreateFlowVersionRequest(
                flow_id="00000000-0000-4000-8000-000000000000",
                steps=steps,
                step_transitions=transitions,
            )
        ),
        grpc.StatusCode.NOT_FOUND,
    )


def test_list_flows_pages_through_every_flow_once_newest_first(client: Client) -> None:
    made = [client.flows.CreateLiveFlow(create_request(f"paged-{i}")).id for i in range(7)]
    seen: list[str] = []
    token = ""
    while True:
        page = client.flows.ListLiveFlows(svc.ListLiveFlowsRequest(page_size=3, page_token=token))
        assert len(page.live_flows) <= 3
        seen.extend(f.id for f in page.live_flows)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen))
    positions = [seen.index(i) for i in made]
    assert positions == sorted(positions, reverse=True)


def test_page_token_of_another_query_is_invalid(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request())
    other = client.flows.CreateLiveFlow(create_request())
    for f in (flow, other):
        client.flows.CreateFlowVersion(
            svc.CreateFlowVersionRequest(
                flow_id=f.id,
                steps=f.current_version.steps,
                step_transitions=f.current_version.step_transitions,
            )
        )
    token = client.flows.ListFlowVersions(
        svc.ListFlowVersionsRequest(flow_id=flow.id, page_size=1)
    ).next_page_token
    violations = invalid(
        lambda: client.flows.ListFlowVersions(
            svc.ListFlowVersionsRequest(flow_id=other.id, page_size=1, page_token=token)
        )
    )
    assert "page_token" in violations


def test_garbage_page_token_is_invalid(client: Client) -> None:
    assert "page_token" in invalid(
        lambda: client.flows.ListLiveFlows(svc.ListLiveFlowsRequest(page_token="!!not-a-token"))
    )


def test_negative_page_size_is_invalid(client: Client) -> None:
    assert "page_size" in invalid(
        lambda: client.flows.ListLiveFlows(svc.ListLiveFlowsRequest(page_size=-1))
    )


def test_page_size_is_clamped_to_the_maximum(client: Client) -> None:
    for i in range(3):
        client.flows.CreateLiveFlow(create_request(f"clamp-{i}"))
    page = client.flows.ListLiveFlows(svc.ListLiveFlowsRequest(page_size=100000))
    assert 0 < len(page.live_flows) <= 100


def test_update_changes_only_masked_fields(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request("before", description="keep me"))
    updated = client.flows.UpdateLiveFlow(
        svc.UpdateLiveFlowRequest(
            live_flow=pb.LiveFlow(id=flow.id, name="after", description="ignored"),
            update_mask=field_mask_pb2.FieldMask(paths=["name"]),
        )
    )
    assert (updated.name, updated.description) == ("after", "keep me")
    assert updated.updated_at.ToDatetime() >= flow.updated_at.ToDatetime()
    assert client.flows.GetLiveFlow(svc.GetLiveFlowRequest(id=flow.id)).name == "after"


def test_update_without_a_mask_changes_only_the_fields_given(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request("before", description="keep me"))
    updated = client.flows.UpdateLiveFlow(
        svc.UpdateLiveFlowRequest(live_flow=pb.LiveFlow(id=flow.id, name="after"))
    )
    assert (updated.name, updated.description) == ("after", "keep me")


def test_update_with_the_mask_star_replaces_all_fields_clearing_those_not_given(
    client: Client,
) -> None:
    flow = client.flows.CreateLiveFlow(create_request("before", description="clear me"))
    updated = client.flows.UpdateLiveFlow(
        svc.UpdateLiveFlowRequest(
            live_flow=pb.LiveFlow(id=flow.id, name="after"),
            update_mask=field_mask_pb2.FieldMask(paths=["*"]),
        )
    )
    assert (updated.name, updated.description) == ("after", "")


@pytest.mark.parametrize(
    ("paths", "said"),
    [(["organisation_id"], "cannot be updated"), (["*", "name"], "comes alone")],
)
def test_update_with_a_mask_it_cannot_follow_is_invalid(
    client: Client, paths: list[str], said: str
) -> None:
    flow = client.flows.CreateLiveFlow(create_request())
    violations = invalid(
        lambda: client.flows.UpdateLiveFlow(
            svc.UpdateLiveFlowRequest(
                live_flow=pb.LiveFlow(id=flow.id, name="x"),
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            )
        )
    )
    assert said in violations["update_mask"]


def test_update_to_empty_name_is_invalid(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request())
    violations = invalid(
        lambda: client.flows.UpdateLiveFlow(
            svc.UpdateLiveFlowRequest(
                live_flow=pb.LiveFlow(id=flow.id, name=""),
                update_mask=field_mask_pb2.FieldMask(paths=["name"]),
            )
        )
    )
    assert "live_flow.name" in violations


def test_delete_removes_flow_and_its_versions(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request())
    client.flows.DeleteLiveFlow(svc.DeleteLiveFlowRequest(id=flow.id))
    rpc_error(
        lambda: client.flows.GetLiveFlow(svc.GetLiveFlowRequest(id=flow.id)),
        grpc.StatusCode.NOT_FOUND,
    )
    rpc_error(
        lambda: client.flows.GetFlowVersion(svc.GetFlowVersionRequest(id=flow.current_version.id)),
        grpc.StatusCode.NOT_FOUND,
    )
    rpc_error(
        lambda: client.flows.DeleteLiveFlow(svc.DeleteLiveFlowRequest(id=flow.id)),
        grpc.StatusCode.NOT_FOUND,
    )


def test_create_with_same_request_id_returns_the_first_flow(client: Client) -> None:
    first = client.flows.CreateLiveFlow(create_request("once", request_id="req-42"))
    again = client.flows.CreateLiveFlow(create_request("once", request_id="req-42"))
    assert again.id == first.id
    assert again.current_version.id == first.current_version.id


def test_empty_name_is_invalid(client: Client) -> None:
    assert "name" in invalid(lambda: client.flows.CreateLiveFlow(create_request("")))


def test_overlong_name_is_invalid(client: Client) -> None:
    assert "name" in invalid(lambda: client.flows.CreateLiveFlow(create_request("n" * 201)))


def test_example_file_creates_a_flow(client: Client, examples) -> None:  # type: ignore[no-untyped-def]
    request = from_json(examples / "flow.json", svc.CreateLiveFlowRequest())
    flow = client.flows.CreateLiveFlow(request)
    assert flow.current_version.version == 1


def test_auto_eval_flow_must_exist(client: Client) -> None:
    violations = invalid(
        lambda: client.flows.CreateLiveFlow(
            create_request(auto_eval_flow_ids=["00000000-0000-4000-8000-000000000000"])
        )
    )
    assert "auto_eval_flow_ids[0]" in violations
