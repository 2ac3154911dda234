"""API keys and organisation scope."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2

from flowsvc.v1 import live_flow_service_pb2 as svc
from flowsvc.v1 import resources_pb2 as pb
from tests.conftest import Deployment
from tests.errors import rpc_error
from tests.graphs import chain5, create_request
from tests.harness import ChildServer, Client, connect, sqlite_url

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
LIST = svc.ListLiveFlowsRequest()


def test_call_without_key_is_unauthenticated(anonymous: Client) -> None:
    rpc_error(lambda: anonymous.flows.ListLiveFlows(LIST), UNAUTH)


def test_malformed_key_is_unauthenticated(deployment: Deployment) -> None:
    c = connect(deployment.address, [("authorization", "Bearer not-a-key")])
    rpc_error(lambda: c.flows.ListLiveFlows(LIST), UNAUTH)


def test_wrong_secret_is_unauthenticated(deployment: Deployment) -> None:
    forged = deployment.acme_key[:-4] + (
        "AAAA" if not deployment.acme_key.endswith("AAAA") else "BBBB"
    )
    c = connect(deployment.address, [("api-key", forged)])
    rpc_error(lambda: c.flows.ListLiveFlows(LIST), UNAUTH)


def test_a_wrong_secret_is_refused_after_the_right_one_was_accepted(
    deployment: Deployment,
) -> None:
    """A key whose secret was verified once is not hashed again at each call: a call with
    the same key id and another secret must still be refused, and the right one still work."""
    from tests.harness import mint_key

    key = mint_key(deployment.database_url, "acme")
    right = connect(deployment.address, [("api-key", key)])
    right.flows.ListLiveFlows(LIST)
    for forged in (key[:-1] + ("A" if key[-1] != "A" else "B"), key + "x", key[:-1]):
        wrong = connect(deployment.address, [("api-key", forged)])
        rpc_error(lambda: wrong.flows.ListLiveFlows(LIST), UNAUTH)  # noqa: B023
    right.flows.ListLiveFlows(LIST)


def test_api_key_header_is_accepted(deployment: Deployment) -> None:
    c = connect(deployment.address, [("api-key", deployment.acme_key)])
    assert c.flows.CreateLiveFlow(create_request()).organisation_id == "acme"


def test_matching_current_org_id_is_accepted(deployment: Deployment) -> None:
    c = connect(deployment.address, [("api-key", deployment.acme_key), ("current-org-id", "acme")])
    assert c.flows.CreateLiveFlow(create_request()).organisation_id == "acme"


def test_other_current_org_id_is_permission_denied(deployment: Deployment) -> None:
    c = connect(
        deployment.address, [("api-key", deployment.acme_key), ("current-org-id", "globex")]
    )
    rpc_error(lambda: c.flows.ListLiveFlows(LIST), grpc.StatusCode.PERMISSION_DENIED)


def test_keys_are_stored_only_as_hashes(deployment: Deployment) -> None:
    import sqlite3

    # Read through SQLite, never open()/close() on the file: closing a plain descriptor
    # would drop this process's SQLite locks on it (the in-process server's too).
    path = deployment.database_url.split("///", 1)[1]
    secret = deployment.acme_key.split("_", 2)[2]
    with sqlite3.connect(path) as db:
        dump = "\n".join(db.iterdump())
    assert _key_id(deployment.acme_key) in dump
    assert secret not in dump


def test_key_command_prints_key_alone_on_last_line(deployment: Deployment) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "flowsvc",
            "keys",
            "create",
            "--org",
            "initech",
            "--database-url",
            deployment.database_url,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    last = out.strip().splitlines()[-1]
    assert last.startswith("fsk_") and " " not in last
    c = connect(deployment.address, [("api-key", last)])
    assert c.flows.CreateLiveFlow(create_request()).organisation_id == "initech"


def test_keys_made_anywhere_work_against_a_server_started_anywhere(tmp_path: Path) -> None:
    # No database URL anywhere: both must find the same default, whatever their directories.
    env = {**os.environ, "FLOWSVC_DATABASE_URL": "", "FLOWSVC_DATA_DIR": str(tmp_path / "data")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    minted = subprocess.run(
        [sys.executable, "-m", "flowsvc", "keys", "create", "--org", "acme"],
        cwd=elsewhere,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"keys in sqlite+aiosqlite:///{tmp_path / 'data' / 'flowsvc.db'}" in minted.stderr
    assert list(elsewhere.iterdir()) == []
    server = ChildServer("", tmp_path / "serve.log", extra_env=env)
    try:
        c = connect(server.address, [("api-key", minted.stdout.strip().splitlines()[-1])])
        assert list(c.flows.ListLiveFlows(LIST).live_flows) == []
        c.close()
    finally:
        server.signal(signal.SIGTERM)
        server.wait()


def test_key_command_refuses_bad_org(deployment: Deployment) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flowsvc",
            "keys",
            "create",
            "--org",
            "no spaces please",
            "--database-url",
            deployment.database_url,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2


def test_other_organisations_flows_are_not_found(client: Client, other_org: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request("private"))
    steps, transitions = chain5()
    nf = grpc.StatusCode.NOT_FOUND
    rpc_error(lambda: other_org.flows.GetLiveFlow(svc.GetLiveFlowRequest(id=flow.id)), nf)
    rpc_error(
        lambda: other_org.flows.UpdateLiveFlow(
            svc.UpdateLiveFlowRequest(
                live_flow=pb.LiveFlow(id=flow.id, name="stolen"),
                update_mask=field_mask_pb2.FieldMask(paths=["name"]),
            )
        ),
        nf,
    )
    rpc_error(
        lambda: other_org.flows.CreateFlowVersion(
            svc.CreateFlowVersionRequest(flow_id=flow.id, steps=steps, step_transitions=transitions)
        ),
        nf,
    )
    rpc_error(
        lambda: other_org.flows.GetFlowVersion(
            svc.GetFlowVersionRequest(id=flow.current_version.id)
        ),
        nf,
    )
    rpc_error(
        lambda: other_org.flows.ListFlowVersions(svc.ListFlowVersionsRequest(flow_id=flow.id)), nf
    )
    rpc_error(lambda: other_org.flows.DeleteLiveFlow(svc.DeleteLiveFlowRequest(id=flow.id)), nf)
    assert client.flows.GetLiveFlow(svc.GetLiveFlowRequest(id=flow.id)).name == "private"


def test_list_shows_only_own_organisation(client: Client, other_org: Client) -> None:
    mine = client.flows.CreateLiveFlow(create_request("mine")).id
    theirs = other_org.flows.CreateLiveFlow(create_request("theirs")).id
    listed = {
        f.id for f in client.flows.ListLiveFlows(svc.ListLiveFlowsRequest(page_size=100)).live_flows
    }
    assert mine in listed and theirs not in listed


def test_same_request_id_in_two_organisations_makes_two_flows(
    client: Client, other_org: Client
) -> None:
    a = client.flows.CreateLiveFlow(create_request(request_id="shared-id"))
    b = other_org.flows.CreateLiveFlow(create_request(request_id="shared-id"))
    assert a.id != b.id and b.organisation_id == "globex"


def _cli(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowsvc", "keys", *args, "--database-url", deployment.database_url],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _key_id(key: str) -> str:
    return key.split("_", 2)[1]


def test_keys_list_shows_keys_but_never_secrets(deployment: Deployment) -> None:
    listing = _cli(deployment, "list", "--org", "acme")
    assert listing.returncode == 0
    assert _key_id(deployment.acme_key) in listing.stdout
    assert deployment.acme_key.split("_", 2)[2] not in listing.stdout
    assert _key_id(deployment.globex_key) not in listing.stdout


def test_revoked_key_is_refused(deployment: Deployment) -> None:
    from tests.harness import mint_key, wait_until

    key = mint_key(deployment.database_url, "acme")
    c = connect(deployment.address, [("api-key", key)])
    c.flows.ListLiveFlows(LIST)
    assert _cli(deployment, "revoke", _key_id(key)).returncode == 0

    def refused() -> bool:
        try:
            c.flows.ListLiveFlows(LIST)
        except grpc.RpcError as err:
            return bool(err.code() == UNAUTH)
        return False

    wait_until(refused, timeout=10)
    assert _cli(deployment, "revoke", _key_id(key)).returncode == 1  # already revoked


def test_revoking_a_key_ends_its_open_streams(deployment: Deployment) -> None:
    from flowsvc.v1 import flow_run_service_pb2 as fr
    from flowsvc.v1 import session_service_pb2 as ss
    from tests.graphs import struct, with_input
    from tests.harness import mint_key

    key = mint_key(deployment.database_url, "acme")
    c = connect(deployment.address, [("api-key", key)])
    flow = c.flows.CreateLiveFlow(create_request(graph=with_input()))
    waiting = c.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(topic="t")))
    stream = c.sessions.WatchSession(ss.WatchSessionRequest(session_id=waiting.session_id))
    assert _cli(deployment, "revoke", _key_id(key)).returncode == 0
    try:
        for _ in stream:
            pass
    except grpc.RpcError as err:
        assert err.code() == UNAUTH
    else:
        raise AssertionError("the stream went on after its key was revoked")


def test_expired_key_is_refused(deployment: Deployment) -> None:
    from tests.harness import wait_until

    out = _cli(deployment, "create", "--org", "acme", "--expires-in", "2s")
    assert out.returncode == 0 and "expires at" in out.stdout
    c = connect(deployment.address, [("api-key", out.stdout.strip().splitlines()[-1])])

    def refused() -> bool:
        try:
            c.flows.ListLiveFlows(LIST)
        except grpc.RpcError as err:
            return bool(err.code() == UNAUTH)
        return False

    wait_until(refused, timeout=15)


def test_bad_expiry_is_refused_by_the_cli(deployment: Deployment) -> None:
    assert _cli(deployment, "create", "--org", "acme", "--expires-in", "soon").returncode == 2


def test_keys_create_beside_a_server_starting_on_a_new_database_succeeds(tmp_path: Path) -> None:
    """Both processes create and migrate the same new SQLite file at once: neither may fail."""
    for attempt in range(6):
        url = sqlite_url(tmp_path / f"new-{attempt}.db")
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flowsvc",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            minted = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "flowsvc",
                    "keys",
                    "create",
                    "--org",
                    "acme",
                    "--database-url",
                    url,
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
        assert minted.returncode == 0, minted.stderr[-400:]
        assert minted.stdout.strip().splitlines()[-1].startswith("fsk_")


def test_revoking_a_key_ends_every_stream_it_opened_and_no_other(deployment: Deployment) -> None:
    """The guard rechecks each key once for all of its open streams."""
    from flowsvc.v1 import flow_run_service_pb2 as fr
    from flowsvc.v1 import session_service_pb2 as ss
    from tests.graphs import struct, with_input
    from tests.harness import mint_key

    revoked = mint_key(deployment.database_url, "acme")
    kept = mint_key(deployment.database_url, "acme")
    a = connect(deployment.address, [("api-key", revoked)])
    b = connect(deployment.address, [("api-key", kept)])
    flow = a.flows.CreateLiveFlow(create_request(graph=with_input()))
    waiting = a.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(topic="t")))
    watch = ss.WatchSessionRequest(session_id=waiting.session_id)
    # A deadline: a stream the guard failed to end fails the test rather than hanging it.
    doomed = [a.sessions.WatchSession(watch, timeout=60) for _ in range(3)]
    survivor = b.sessions.WatchSession(watch, timeout=60)
    assert [next(s).seq for s in [*doomed, survivor]] == [1, 1, 1, 1]  # all four are open
    assert _cli(deployment, "revoke", _key_id(revoked)).returncode == 0
    for stream in doomed:
        with pytest.raises(grpc.RpcError) as info:
            for _ in stream:
                pass
        assert info.value.code() == UNAUTH
    # The other key's stream is still open and goes on with the session.
    b.sessions.SubmitUserInput(
        ss.SubmitUserInputRequest(session_id=waiting.session_id, user_input="x", wait=True)
    )
    for event in survivor:
        if event.seq == 10:  # the run's last event, after the answer
            break
    survivor.cancel()
