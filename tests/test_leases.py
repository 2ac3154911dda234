"""A replica's hold on the sessions it runs: kept a moment after their last run (the next
turn needs no claim), then given up, together, in one commit."""

from __future__ import annotations

from pathlib import Path

from flowsvc.config import Settings
from flowsvc.v1 import flow_run_service_pb2 as fr
from tests.graphs import create_request, struct
from tests.harness import InProcessServer, bearer, connect, mint_key, sqlite_url, wait_until


def test_sessions_let_go_within_a_moment_are_given_up_in_one_or_two_commits(
    tmp_path: Path,
) -> None:
    url = sqlite_url(tmp_path / "db.sqlite")
    server = InProcessServer(Settings(listen="127.0.0.1:0", database_url=url))
    client = connect(server.address, bearer(mint_key(url, "acme")))
    try:
        registry = server.server.engine.sessions
        # A keep of 2 s: the runs below (a few ms each, unloaded) end within its quarter
        # however slow the machine.
        registry.keep_seconds = 2.0
        flow = client.flows.CreateLiveFlow(create_request())
        writer = server.server.run_store.writer
        committed = writer.commits
        for _ in range(8):  # each on a new session, one after the other
            client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(question="q")))
        runs_committed = writer.commits
        wait_until(lambda: not registry.states)
        # The first is due alone, the rest a quarter of the keep later (a commit each, as
        # each session's own timer made them, would be 8).
        assert runs_committed - committed <= 8
        assert writer.commits - runs_committed <= 2
    finally:
        client.close()
        server.stop()
