"""The bad-input campaign: generated malformed, oversized, deeply nested, wrong and boundary
requests for every RPC, as messages and as raw bytes no client library would build. Each answer
is a code the RPC's (or its service's) comment in the protos documents, never INTERNAL or
UNKNOWN; the server stays SERVING, and a refused request leaves the store as it was. A fixed
seed runs in `make test`; `make fuzz` runs many more examples (FLOWSVC_FUZZ_EXAMPLES)."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowsvc.v1 import live_flow_service_pb2 as lf
from tests.conftest import Deployment
from tests.graphs import create_request, edge, linear, step, with_input
from tests.harness import bearer, connect
from tests.rpc_catalog import FieldDescriptor, Rpc, all_rpcs, documented, invoke
from tests.wire import (
    END_GROUP,
    FIXED32,
    FIXED64,
    LENGTH,
    RECURSION_LIMIT,
    START_GROUP,
    VARINT,
    field,
    nested_groups,
    tag,
    varint,
)

EXAMPLES = int(os.environ.get("FLOWSVC_FUZZ_EXAMPLES", "25"))
# Besides the codes each RPC's comment documents (tests.rpc_catalog.documented): OK, and the
# campaign's own deadline, which ends the streams that follow (it reads them for a bounded time).
ALSO = {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}
# Rows a refused request must not change. Sessions and runs are left out: evaluation jobs of
# earlier accepted requests may still be adding theirs in the background.
WATCHED_TABLES = (
    "live_flows", "flow_versions", "api_keys", "eval_jobs", "webhooks", "schedules"
)
KNOWN_IDS: list[str] = []

nasty_text = st.one_of(
    st.text(max_size=50),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=300),
    st.sampled_from(
        [
            "${${x}}",
            "${",
            "$${inputs.x}",
            "\x00\x01\x7f",
            "../../etc/passwd",
            "' OR 1=1 --",
            "step.result",
            "🙂" * 50,
            "a" * 5000,
            "${start.result}",
            "${inputs.q}",
        ]
    ),
)
ints = st.one_of(
    st.integers(-3, 3), st.sampled_from([-(2**31), 2**31 - 1, 60, 59, 2592000, 2592001, 1000])
)
json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False), nasty_text
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(nasty_text, children, max_size=4)
    ),
    max_leaves=20,
)


def ids() -> st.SearchStrategy[str]:
    return st.one_of(nasty_text, st.sampled_from(KNOWN_IDS or ["x"]), st.uuids().map(str))


def message(descriptor: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Any instance of the message type: fields set at random, nesting to depth 3."""
    from google.protobuf import symbol_database

    cls = symbol_database.Default().GetSymbol(descriptor.full_name)
    if descriptor.full_name == "google.protobuf.Struct":
        return st.dictionaries(nasty_text, json_values, max_size=5).map(_struct)
    if descriptor.full_name in ("google.protobuf.Value", "google.protobuf.ListValue") or depth > 3:
        return st.just(cls())
    fields = {f.name: _field(f, depth) for f in descriptor.fields}

    @st.composite
    def build(draw: Any) -> Any:
        out = cls()
        for name, strategy in fields.items():
            if draw(st.booleans()):
                value = draw(strategy)
                f = descriptor.fields_by_name[name]
                if f.is_repeated:
                    if f.message_type is not None and f.message_type.GetOptions().map_entry:
                        getattr(out, name).update(value)
                    elif f.message_type is not None:
                        getattr(out, name).extend(value)
                    else:
                        getattr(out, name).extend(value)
                elif f.message_type is not None:
                    getattr(out, name).CopyFrom(value)
                else:
                    setattr(out, name, value)
        return out

    return build()


def _struct(d: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


def _scalar(f: Any) -> st.SearchStrategy[Any]:
    t = f.type
    if t == FieldDescriptor.TYPE_STRING:
        return ids() if f.name.endswith("id") else nasty_text
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64):
        return ints
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_DOUBLE:
        return st.floats(allow_nan=True, allow_infinity=True)
    if t == FieldDescriptor.TYPE_ENUM:
        return st.integers(-1, 12)
    return st.just(f.default_value)


def _field(f: Any, depth: int) -> st.SearchStrategy[Any]:
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        return st.dictionaries(nasty_text, nasty_text, max_size=3)
    inner = message(f.message_type, depth + 1) if f.message_type is not None else _scalar(f)
    if f.is_repeated:
        return st.lists(inner, max_size=4)
    return inner


def counts(deployment: Deployment) -> dict[str, int]:
    path = deployment.database_url.split("///", 1)[1]
    with sqlite3.connect(path) as db:
        return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in WATCHED_TABLES}


@pytest.fixture(scope="module", autouse=True)
def seeded(deployment: Deployment) -> None:
    c = connect(deployment.address, bearer(deployment.acme_key))
    for graph in (None, with_input()):
        flow = c.flows.CreateLiveFlow(create_request(graph=graph))
        KNOWN_IDS.extend([flow.id, flow.current_version.id])
    c.close()


@pytest.mark.parametrize("rpc", all_rpcs(), ids=lambda r: r.name)
def test_generated_requests_get_documented_answers(deployment: Deployment, rpc: Rpc) -> None:
    channel = grpc.insecure_channel(deployment.address)
    metadata = bearer(deployment.acme_key)
    answers = documented(rpc).all | ALSO

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=message(rpc.request.DESCRIPTOR))
    def check(request: Any) -> None:
        before = counts(deployment)
        code = invoke(channel, rpc, request, metadata, timeout=2)
        assert code in answers, f"{rpc.name} answered {code} to {request}"
        if code != grpc.StatusCode.OK and code != grpc.StatusCode.DEADLINE_EXCEEDED:
            assert counts(deployment) == before, f"refused {rpc.name} changed the store"

    try:
        check()
    finally:
        channel.close()


def _value(number: int, wire_type: int, data: bytes) -> bytes:
    """Field `number` as `wire_type`, whatever type the field really has."""
    if wire_type == VARINT:
        return tag(number, VARINT) + varint(int.from_bytes(data[:8], "little"))
    if wire_type == FIXED64:
        return tag(number, FIXED64) + data[:8].ljust(8, b"\0")
    if wire_type == FIXED32:
        return tag(number, FIXED32) + data[:4].ljust(4, b"\0")
    if wire_type == START_GROUP:
        return tag(number, START_GROUP) + tag(number, END_GROUP)
    return field(number, data)


def raw_bytes(rpc: Rpc) -> st.SearchStrategy[bytes]:
    """Random bytes; a generated request cut short, or with a field of its own sent as another
    wire type, or with an unknown field; unknown groups nested past the recursion limit."""
    valid = message(rpc.request.DESCRIPTOR).map(lambda m: m.SerializeToString())
    own = [f.number for f in rpc.request.DESCRIPTOR.fields]
    wire_types = st.sampled_from([VARINT, FIXED64, LENGTH, START_GROUP, FIXED32])
    data = st.binary(max_size=12)
    return st.one_of(
        st.binary(max_size=300),
        valid.flatmap(lambda b: st.integers(0, max(len(b) - 1, 0)).map(lambda n: b[:n])),
        st.builds(
            lambda b, n, t, d: b + _value(n, t, d), valid, st.sampled_from(own), wire_types, data
        ),
        st.builds(
            lambda b, n, t, d: b + _value(n, t, d),
            valid,
            st.integers(1000, 2**29 - 1),
            wire_types,
            data,
        ),
        st.integers(RECURSION_LIMIT + 1, 3 * RECURSION_LIMIT).map(nested_groups),
    )


@pytest.mark.parametrize("rpc", all_rpcs(), ids=lambda r: r.name)
def test_raw_bytes_get_documented_answers(deployment: Deployment, rpc: Rpc) -> None:
    channel = grpc.insecure_channel(deployment.address)
    metadata = bearer(deployment.acme_key)
    answers = documented(rpc).all | ALSO

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=raw_bytes(rpc))
    def check(body: bytes) -> None:
        before = counts(deployment)
        code = invoke(channel, rpc, body, metadata, timeout=2)
        assert code in answers, f"{rpc.name} answered {code} to {body!r}"
        if code != grpc.StatusCode.OK and code != grpc.StatusCode.DEADLINE_EXCEEDED:
            assert counts(deployment) == before, f"refused {rpc.name} changed the store"

    try:
        check()
    finally:
        channel.close()


def test_server_is_still_serving_after_the_campaign(deployment: Deployment) -> None:
    with grpc.insecure_channel(deployment.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
    assert status == health_pb2.HealthCheckResponse.SERVING


HOSTILE_GRAPHS = {
    "self_loop": (
        [step("start", "START"), step("a", "LLM", "x"), step("end", "END", "y")],
        [edge("start", "a"), edge("a", "a"), edge("a", "end")],
    ),
    "cycle_without_end": (
        [
            step("start", "START"),
            step("a", "LLM", "x"),
            step("b", "LLM", "y"),
            step("end", "END", "z"),
        ],
        [edge("start", "a"), edge("a", "b"), edge("b", "a")],
    ),
    "ten_thousand_steps": linear(
        step("start", "START"),
        *[step(f"s{i}", "LLM", "x") for i in range(10_000)],
        step("end", "END", "y"),
    ),
    "huge_fan_in": (
        [
            step("start", "START"),
            step("hub", "CONDITION", "${inputs.k}"),
            *[step(f"e{i}", "END", "x") for i in range(300)],
        ],
        [edge("start", "hub"), *[edge("hub", f"e{i}", f"l{i}") for i in range(300)]],
    ),
    "control_characters": linear(
        step("start", "START"), step("a\x00b", "LLM", "x\x00"), step("end", "END", "y")
    ),
    "template_injection": linear(
        step("start", "START"),
        step("a", "LLM", "${${inputs.q}}"),
        step("end", "END", "${a.result}"),
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_GRAPHS))
def test_hostile_graphs_are_refused_precisely(deployment: Deployment, name: str) -> None:
    c = connect(deployment.address, bearer(deployment.acme_key))
    before = counts(deployment)
    try:
        c.flows.CreateLiveFlow(create_request(graph=HOSTILE_GRAPHS[name]))
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert counts(deployment) == before
    else:
        # The huge fan-in is a legal graph (one START, every step reachable and finishing).
        assert name == "huge_fan_in"
    finally:
        c.close()


def _with_unknown_enum(request: Any, path: str) -> Any:
    *parents, name = path.split(".")
    target = request
    for parent in parents:
        target = getattr(target, parent)
    setattr(target, name, 99)
    return request


@pytest.mark.parametrize(
    ("method", "field"),
    [
        ("GetLiveFlow", "view"),
        ("ListSessions", "status"),
        ("RunFlow", "options.eval_options.run_mode"),
    ],
)
def test_unknown_enum_values_are_refused(deployment: Deployment, method: str, field: str) -> None:
    from flowsvc.v1 import flow_run_service_pb2 as fr
    from flowsvc.v1 import session_service_pb2 as ss
    from tests.errors import invalid

    c = connect(deployment.address, bearer(deployment.acme_key))
    flow = c.flows.CreateLiveFlow(create_request())
    calls = {
        "GetLiveFlow": lambda: c.flows.GetLiveFlow(
            _with_unknown_enum(lf.GetLiveFlowRequest(id=flow.id), field)
        ),
        "ListSessions": lambda: c.sessions.ListSessions(
            _with_unknown_enum(ss.ListSessionsRequest(live_flow_id=flow.id), field)
        ),
        "RunFlow": lambda: c.runs.RunFlow(
            _with_unknown_enum(fr.RunFlowRequest(flow_id=flow.id), field)
        ),
    }
    assert "unknown" in invalid(calls[method])[field]
    c.close()


def test_invalid_timestamp_is_a_field_violation(deployment: Deployment) -> None:
    """Found by the campaign: a message date with negative nanos was answered INTERNAL."""
    from flowsvc.v1 import resources_pb2 as pb
    from flowsvc.v1 import session_service_pb2 as ss
    from tests.errors import invalid

    c = connect(deployment.address, bearer(deployment.acme_key))
    flow = c.flows.CreateLiveFlow(create_request(graph=with_input()))
    bad = pb.Message(role="user", content="hi")
    bad.date.nanos = -1
    v = invalid(
        lambda: c.sessions.CreateSession(
            ss.CreateSessionRequest(live_flow_id=flow.id, messages=[bad])
        )
    )
    assert "messages[0].date" in v
    c.close()
