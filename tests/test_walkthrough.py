"""The README's grpcurl walkthrough, run as written with the real grpcurl binary."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import Deployment

ROOT = Path(__file__).resolve().parent.parent


def _walkthrough(name: str) -> str:
    readme = (ROOT / "README.md").read_text()
    block = re.search(rf"<!-- walkthrough:{name} -->\s*```sh\n(.*?)```", readme, re.S)
    assert block, f"README has no walkthrough:{name} block"
    return block.group(1)


def run_walkthrough(
    name: str, deployment: Deployment, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    return _run_script(_walkthrough(name), deployment, tmp_path)


def _run_script(
    script: str, deployment: Deployment, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    script = script.replace("localhost:50051", deployment.address)
    script = script.replace("/tmp/", f"{tmp_path}/")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "FLOWSVC_DATABASE_URL": deployment.database_url,
    }
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _json_objects(text: str) -> list[dict[str, object]]:
    decoder = json.JSONDecoder()
    out, i = [], 0
    while (start := text.find("{", i)) >= 0:
        obj, i = decoder.raw_decode(text, start)
        out.append(obj)
    return out


def test_readme_flow_walkthrough_creates_versions_and_fetches(
    deployment: Deployment, tmp_path: Path
) -> None:
    result = run_walkthrough("flows", deployment, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "flowsvc.v1.LiveFlowService" in lines and "grpc.health.v1.Health" in lines
    objects = _json_objects(result.stdout)
    created, fetched, v2, listed, updated = objects[:5]
    assert created["name"] == "support-answer"
    assert fetched["id"] == created["id"]
    assert v2["version"] == 2 and v2["flow_id"] == created["id"]
    assert [v["version"] for v in listed["flow_versions"]] == [2, 1]  # type: ignore[index]
    assert (updated["id"], updated["name"]) == (created["id"], created["name"])
    assert updated["description"] == "Answers support questions."


def test_grpcurl_describes_services_through_reflection(deployment: Deployment) -> None:
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "grpcurl"),
            "-plaintext",
            deployment.address,
            "describe",
            "flowsvc.v1.LiveFlowService",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "rpc CreateFlowVersion" in out


def test_grpcurl_sees_field_violations(deployment: Deployment) -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "grpcurl"),
            "-plaintext",
            "-H",
            f"api-key: {deployment.acme_key}",
            "-d",
            '{"name": "x", "steps": [{"name": "a b"}]}',
            deployment.address,
            "flowsvc.v1.LiveFlowService/CreateLiveFlow",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr and "steps[0].name" in result.stderr


def test_readme_runs_walkthrough_pauses_answers_and_replays(
    deployment: Deployment, tmp_path: Path
) -> None:
    script = _walkthrough("flows") + _walkthrough("runs")
    result = _run_script(script, deployment, tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "SESSION_STATUS_WAITING_FOR_INPUT - What would you like to know about tides?" in out
    assert '"status": "SESSION_STATUS_COMPLETED"' in out
    watched = [line.strip() for line in out.splitlines() if '"type": "RUN_EVENT_TYPE_' in line]
    assert "RUN_EVENT_TYPE_RUN_COMPLETED" in watched[-1]
    assert any("RUN_EVENT_TYPE_INPUT_REQUIRED" in line for line in watched)
    seqs = [
        int(line.split(":")[1].strip(' ",'))
        for line in out.splitlines()
        if line.strip().startswith('"seq"')
    ]
    rejoined = seqs[-6:]
    assert rejoined == list(range(6, 12))


def test_readme_model_walkthrough_streams_tokens(tmp_path: Path) -> None:
    """The README's model example against a loopback OpenAI-compatible endpoint."""
    from tests.fake_openai import FakeOpenAI
    from tests.harness import ChildServer, mint_key, sqlite_url

    fake = FakeOpenAI()
    url = sqlite_url(tmp_path / "db.sqlite")
    key = mint_key(url, "acme")
    server = ChildServer(
        url,
        tmp_path / "server.log",
        extra_env={
            "FLOWSVC_OPENAI_BASE_URL": f"{fake.url}/v1",
            "FLOWSVC_OPENAI_API_KEY": "sk-walkthrough",
        },
    )
    try:
        script = f'export PATH="$PWD/.venv/bin:$PATH"\nAUTH="authorization: Bearer {key}"\n'
        script += _walkthrough("models").replace("localhost:50051", server.address)
        script = script.replace("/tmp/", f"{tmp_path}/")
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        deltas = [
            line.split('"delta": ')[1].strip().strip('",')
            for line in result.stdout.splitlines()
            if '"delta"' in line
        ]
        assert "".join(deltas) == "Answer in two sentences: Why is the sea salty?"
        assert "RUN_EVENT_TYPE_RUN_COMPLETED" in result.stdout
        assert fake.requests[-1]["model"] == "gpt-4o-mini"
        assert "sk-walkthrough" not in (tmp_path / "server.log").read_text()
    finally:
        server.signal(15)
        server.wait()
        fake.close()


def test_readme_evals_walkthrough(deployment: Deployment, tmp_path: Path) -> None:
    result = _run_script(_walkthrough("flows") + _walkthrough("evals"), deployment, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "EVAL_JOB_STATUS_COMPLETE 0.9 True" in result.stdout
    job = _json_objects(result.stdout)[-1]
    assert job["status"] == "EVAL_JOB_STATUS_COMPLETE"
    assert job["results"][0]["score"] == 0.4  # type: ignore[index]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_readme_replicas_walkthrough_answers_on_one_replica_what_another_started(
    tmp_path: Path,
) -> None:
    from tests import postgres

    with postgres.fresh_database() as url:
        script = _walkthrough("replicas")
        script = script.replace("DB=postgresql://postgres@127.0.0.1:5432/flowsvc", f"DB={url}")
        for port in ("50061", "50062"):
            script = script.replace(port, str(_free_port()))
        script = script.replace("/tmp/", f"{tmp_path}/")
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert '"status": "SESSION_STATUS_COMPLETED",' in [line.strip() for line in lines]
    types = [line.split('"')[3] for line in lines if line.startswith('"type"')]
    assert types[0] == "RUN_EVENT_TYPE_RUN_STARTED"
    assert "RUN_EVENT_TYPE_INPUT_REQUIRED" in types
    assert types[-1] == "RUN_EVENT_TYPE_RUN_COMPLETED"


def test_readme_schedules_walkthrough_ticks_and_pauses(
    deployment: Deployment, tmp_path: Path
) -> None:
    script = _walkthrough("flows") + _walkthrough("schedules")
    result = _run_script(script, deployment, tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert '"paused": true' in out
    counted = [int(line) for line in out.splitlines() if line.strip().isdigit()]
    assert counted and counted[-1] >= 2
    assert '"next_run_times"' in out


def test_readme_fork_walkthrough_asks_again_about_another_topic(
    deployment: Deployment, tmp_path: Path
) -> None:
    script = _walkthrough("flows") + _walkthrough("runs") + _walkthrough("fork")
    result = _run_script(script, deployment, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    session = json.loads((tmp_path / "session.json").read_text())["id"]
    assert (
        "SESSION_STATUS_WAITING_FOR_INPUT - What would you like to know about volcanoes? - "
        f"forked from {session}"
    ) in lines
    fork = json.loads((tmp_path / "fork.json").read_text())
    assert fork["forked_from_step_id"] == json.loads(
        (tmp_path / "session.json").read_text()
    )["current_step"]["id"]
    assert lines[-1].strip() == '"status": "SESSION_STATUS_COMPLETED",'


def test_readme_webhooks_walkthrough_delivers_a_signed_run_completed(tmp_path: Path) -> None:
    """The README's webhook block against a loopback receiver on the server's allow-list."""
    from flowsvc.config import Settings
    from tests.harness import InProcessServer, sqlite_url
    from tests.webhook_receiver import Receiver, verify

    receiver = Receiver()
    url = sqlite_url(tmp_path / "db.sqlite")
    server = InProcessServer(
        Settings(listen="127.0.0.1:0", database_url=url, http_allow_hosts=(receiver.host,))
    )
    try:
        deployment = Deployment(server, url, "", "")
        script = _walkthrough("flows") + _walkthrough("webhooks")
        script = script.replace("127.0.0.1:8089", receiver.host)
        result = _run_script(script, deployment, tmp_path)
        assert result.returncode == 0, result.stderr
        secret = json.loads((tmp_path / "webhook.json").read_text())["secret"]
        (delivered,) = receiver.at("/hook")
        assert verify(secret, delivered)
        assert delivered.json["type"] == "run.completed"
        assert delivered.json["data"]["response"].endswith("Hooked?")
        deliveries = json.loads((tmp_path / "deliveries.json").read_text())["webhook_deliveries"]
        assert [(d["event_type"], d["status"], d["id"]) for d in deliveries] == [
            ("run.completed", "WEBHOOK_DELIVERY_STATUS_DELIVERED", delivered.id)
        ]
        assert '"status": "WEBHOOK_DELIVERY_STATUS_DELIVERED"' in result.stdout
    finally:
        server.stop()
        receiver.close()
