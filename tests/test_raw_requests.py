"""Requests whose bytes do not make a message: every RPC answers them precisely, before any
handler runs, and the server goes on serving."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from flowsvc.config import Settings
from flowsvc.v1 import live_flow_service_pb2 as lf
from flowsvc.v1 import resources_pb2 as pb
from tests.conftest import Deployment
from tests.errors import field_violations
from tests.graphs import create_request, with_input
from tests.harness import Client, bearer
from tests.rpc_catalog import Rpc, all_rpcs, failure
from tests.wire import RECURSION_LIMIT, VARINT, field, nested_groups, nested_struct, tag, varint

# A string field that promises five bytes and carries two: no message type can parse it.
TRUNCATED = field(1, b"abcde")[:-3]
LIMIT = Settings.max_request_bytes
GET_LIVE_FLOW = "/flowsvc.v1.LiveFlowService/GetLiveFlow"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def rpc_named(name: str) -> Rpc:
    return next(r for r in all_rpcs() if r.name == name)


def send(deployment: Deployment, rpc: Rpc, body: bytes, key: bool = True) -> grpc.RpcError:
    with grpc.insecure_channel(deployment.address) as channel:
        err = failure(channel, rpc, body, bearer(deployment.acme_key) if key else [])
    assert err is not None, f"{rpc.name} accepted {body[:40]!r}"
    return err


def assert_readable_invalid_argument(err: grpc.RpcError, message_type: str) -> None:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{err.code()}: {err.details()}"
    details = err.details() or ""
    assert f"not a valid {message_type} message" in details
    for internal in ("DecodeError", "<class", "Traceback", "Unexpected"):
        assert internal not in details
    assert "" in field_violations(err), "no BadRequest field violation for the request"


@pytest.mark.parametrize("rpc", all_rpcs(), ids=lambda r: r.name)
def test_truncated_bytes_are_invalid_argument_with_a_readable_message(
    deployment: Deployment, rpc: Rpc
) -> None:
    err = send(deployment, rpc, TRUNCATED)
    assert_readable_invalid_argument(err, rpc.request.DESCRIPTOR.full_name)


@pytest.mark.parametrize("rpc", all_rpcs(), ids=lambda r: r.name)
def test_bytes_nested_past_the_recursion_limit_are_invalid_argument(
    deployment: Deployment, rpc: Rpc
) -> None:
    err = send(deployment, rpc, nested_groups(RECURSION_LIMIT + 1))
    assert_readable_invalid_argument(err, rpc.request.DESCRIPTOR.full_name)


@pytest.mark.parametrize(
    ("name", "struct_field"),
    [("RunFlow", "body"), ("StreamRunFlow", "body"), ("CreateSession", "inputs")],
)
def test_a_struct_nested_35_levels_deep_is_invalid_argument(
    deployment: Deployment, client: Client, name: str, struct_field: str
) -> None:
    flow = client.flows.CreateLiveFlow(create_request(graph=with_input()))
    rpc = rpc_named(name)
    fields = rpc.request.DESCRIPTOR.fields_by_name
    id_field = fields["flow_id"] if "flow_id" in fields else fields["live_flow_id"]
    body = field(id_field.number, flow.id.encode()) + field(
        fields[struct_field].number, nested_struct(35)
    )
    err = send(deployment, rpc, body)
    assert_readable_invalid_argument(err, rpc.request.DESCRIPTOR.full_name)


def test_undecodable_bytes_without_a_key_are_unauthenticated(deployment: Deployment) -> None:
    """Who is calling is checked first: a caller without a key learns nothing else."""
    err = send(deployment, rpc_named("GetLiveFlow"), TRUNCATED, key=False)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def _get_live_flow(deployment: Deployment, body: bytes) -> pb.LiveFlow:
    with grpc.insecure_channel(deployment.address) as channel:
        call = channel.unary_unary(GET_LIVE_FLOW, response_deserializer=pb.LiveFlow.FromString)
        return call(body, metadata=bearer(deployment.acme_key), timeout=10)  # type: ignore[no-any-return]


def test_unknown_fields_are_ignored(deployment: Deployment, client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request())
    known = lf.GetLiveFlowRequest(id=flow.id).SerializeToString()
    unknown = field(999, b"from a newer client") + tag(1000, VARINT) + varint(7)
    assert _get_live_flow(deployment, known + unknown).id == flow.id


def test_a_field_sent_as_another_wire_type_is_read_as_unknown(deployment: Deployment) -> None:
    """protobuf keeps a known field number with the wrong wire type as an unknown field, so the
    request reads as if the field were missing, and is answered for that."""
    id_number = lf.GetLiveFlowRequest.DESCRIPTOR.fields_by_name["id"].number
    with pytest.raises(grpc.RpcError) as info:
        _get_live_flow(deployment, tag(id_number, VARINT) + varint(42))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "id" in field_violations(info.value)


def test_a_request_over_the_size_limit_is_resource_exhausted_with_a_quota_failure(
    deployment: Deployment,
) -> None:
    err = send(deployment, rpc_named("RunFlow"), field(1, b"a" * LIMIT))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert f"the limit is {LIMIT}" in (err.details() or "")
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status in the trailers"
    quota = error_details_pb2.QuotaFailure()
    assert status.details and status.details[0].Unpack(quota)
    assert [v.subject for v in quota.violations] == ["request"]


def test_a_request_past_what_grpc_core_buffers_is_resource_exhausted(
    deployment: Deployment,
) -> None:
    """grpc core refuses this one before flowsvc sees it: same code, but no details (README)."""
    err = send(deployment, rpc_named("RunFlow"), field(1, b"a" * (2 * LIMIT + 1)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()


def test_an_undecodable_health_check_is_invalid_argument(deployment: Deployment) -> None:
    with grpc.insecure_channel(deployment.address) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        with pytest.raises(grpc.RpcError) as info:
            check(TRUNCATED, timeout=10)
    assert_readable_invalid_argument(info.value, "grpc.health.v1.HealthCheckRequest")


def test_an_undecodable_reflection_request_is_invalid_argument(deployment: Deployment) -> None:
    with grpc.insecure_channel(deployment.address) as channel:
        reflect = channel.stream_stream(REFLECTION)
        with pytest.raises(grpc.RpcError) as info:
            list(reflect(iter([TRUNCATED]), timeout=10))
    assert_readable_invalid_argument(
        info.value, "grpc.reflection.v1alpha.ServerReflectionRequest"
    )


def test_server_is_still_serving_after_undecodable_requests(deployment: Deployment) -> None:
    with grpc.insecure_channel(deployment.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
    assert status == health_pb2.HealthCheckResponse.SERVING
