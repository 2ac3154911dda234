"""The `flowsvc` client commands, run as a person or a script runs them: subprocesses against a
real server, exit codes and output asserted; the live view in a real pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from flowsvc.v1 import live_flow_service_pb2 as lfs
from tests.conftest import Deployment
from tests.graphs import create_request
from tests.harness import ROOT, Client


def flowsvc(
    deployment: Deployment, *args: str, key: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLOWSVC_SERVER": deployment.address,
           "FLOWSVC_API_KEY": key if key is not None else deployment.acme_key}  # fmt: skip
    env.pop("NO_COLOR", None)
    return subprocess.run(
        [sys.executable, "-m", "flowsvc", *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip


def test_apply_creates_then_says_unchanged_then_publishes_a_changed_graph(
    deployment: Deployment, tmp_path: Path
) -> None:
    first = flowsvc(deployment, "flows", "apply", "examples/input_flow.json")
    assert first.returncode == 0, first.stderr
    assert "ask-then-answer created" in first.stdout and "version 1" in first.stdout
    again = flowsvc(deployment, "flows", "apply", "examples/input_flow.json")
    assert again.returncode == 0 and "graph unchanged, version 1" in again.stdout
    # The same flow as YAML with short enum names and one prompt changed.
    document = json.loads((ROOT / "examples/input_flow.json").read_text())
    for step in document["steps"]:
        step["step_type"] = step["step_type"].removeprefix("STEP_TYPE_")
    document["steps"][3]["prompt_template"]["text"] = "Finally: ${answer.result}"
    changed = tmp_path / "flow.yaml"
    changed.write_text(yaml.safe_dump(document))
    third = flowsvc(deployment, "flows", "apply", str(changed), "-o", "json")
    assert third.returncode == 0, third.stderr
    assert json.loads(third.stdout)["current_version"]["version"] == 2
    listed = flowsvc(deployment, "flows", "list")
    assert listed.returncode == 0 and "ask-then-answer" in listed.stdout
    shown = flowsvc(deployment, "flows", "get", "ask-then-answer")
    assert shown.returncode == 0 and "INPUT" in shown.stdout and "version:     2" in shown.stdout


def test_apply_to_a_name_several_flows_share_asks_for_the_id_and_takes_it(
    deployment: Deployment, client: Client, tmp_path: Path
) -> None:
    document = json.loads((ROOT / "examples/flow.json").read_text())
    document["name"] = "shared-name"
    path = tmp_path / "flow.json"
    path.write_text(json.dumps(document))
    first = flowsvc(deployment, "flows", "apply", str(path), "-o", "json")
    assert first.returncode == 0, first.stderr
    flow_id = json.loads(first.stdout)["id"]
    client.flows.CreateLiveFlow(create_request("shared-name"))  # another of that name
    ambiguous = flowsvc(deployment, "flows", "apply", str(path))
    assert ambiguous.returncode == 2
    assert flow_id in ambiguous.stderr and "--id" in ambiguous.stderr
    named = flowsvc(deployment, "flows", "apply", str(path), "--id", flow_id)
    assert named.returncode == 0, named.stderr
    assert f"({flow_id}): graph unchanged, version 1" in named.stdout
    document["name"] = "renamed"
    path.write_text(json.dumps(document))
    renamed = flowsvc(deployment, "flows", "apply", str(path), "--id", flow_id)
    assert renamed.returncode == 0 and "updated name" in renamed.stdout, renamed.stderr
    assert client.flows.GetLiveFlow(lfs.GetLiveFlowRequest(id=flow_id)).name == "renamed"


def test_bad_flow_files_are_refused_locally_naming_the_field(
    deployment: Deployment, tmp_path: Path
) -> None:
    bad_graph = tmp_path / "bad.yaml"
    bad_graph.write_text(
        "name: broken\nsteps:\n  - {name: start, step_type: START}\n"
        "  - {name: x y, step_type: LLM}\n  - {name: end, step_type: END}\n"
        "step_transitions:\n  - {source: start, target: end}\n"
    )
    done = flowsvc(deployment, "flows", "apply", str(bad_graph))
    assert done.returncode == 2
    assert "is not a valid flow" in done.stderr
    assert "steps[1].name: must be an identifier" in done.stderr
    assert "steps[1].prompt_template: required" in done.stderr
    assert "Traceback" not in done.stderr

    cases = {
        "syntax.yaml": ("name: [", "not YAML"),
        "enum.json": ('{"name": "x", "steps": [{"step_type": "NOPE"}]}', "STEP_TYPE_NOPE"),
        "list.yaml": ("- a\n- b\n", "a flow file is an object"),
        "field.json": (
            '{"name": "x", "steps": [{"name": "a", "weird": 2}]}',
            "steps[0]: unknown field 'weird' (there: id, name, step_type,",
        ),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        done = flowsvc(deployment, "flows", "apply", str(tmp_path / name))
        assert done.returncode == 2 and expected in done.stderr, (name, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1
    missing = flowsvc(deployment, "flows", "apply", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_run_without_a_terminal_prints_the_question_then_answer_finishes_it(
    deployment: Deployment,
) -> None:
    assert flowsvc(deployment, "flows", "apply", "examples/input_flow.json").returncode == 0
    asked = flowsvc(deployment, "run", "ask-then-answer", "--input", "topic=tides")
    assert asked.returncode == 3, asked.stderr
    assert "waiting for input: What would you like to know about tides?" in asked.stdout
    session = asked.stdout.split("session: ")[1].split()[0]

    answered = flowsvc(deployment, "answer", session, "Why twice a day?")
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout.strip() == "Answer about tides: Why twice a day?"
    assert "COMPLETE" in answered.stderr  # the summary and the steps go to stderr

    runs = flowsvc(deployment, "runs", "list", "--session", session, "-o", "json")
    assert runs.returncode == 0
    (run,) = json.loads(runs.stdout)["flow_runs"]
    assert run["status"] == "RUN_STATUS_COMPLETE"
    got = flowsvc(deployment, "runs", "get", run["id"])
    assert got.returncode == 0 and "Answer about tides" in got.stdout
    sessions = flowsvc(deployment, "sessions", "list", "--flow", "ask-then-answer")
    assert sessions.returncode == 0 and session in sessions.stdout
    shown = flowsvc(deployment, "sessions", "get", session)
    assert shown.returncode == 0 and "COMPLETED" in shown.stdout

    watched = flowsvc(deployment, "watch", session, "-o", "json")
    assert watched.returncode == 0, watched.stderr
    events = [json.loads(line) for line in watched.stdout.splitlines()]
    assert [int(e["seq"]) for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "RUN_EVENT_TYPE_RUN_COMPLETED"
    later = flowsvc(deployment, "watch", session, "--after-seq", "5", "-o", "json")
    assert int(json.loads(later.stdout.splitlines()[0])["seq"]) == 6


def test_run_json_and_failed_calls_exit_codes(deployment: Deployment) -> None:
    assert flowsvc(deployment, "flows", "apply", "examples/flow.json").returncode == 0
    done = flowsvc(deployment, "run", "support-answer", "-i", "question=Why?", "-o", "json")
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert run["status"] == "RUN_STATUS_COMPLETE" and "Why?" in run["response"]

    missing_input = flowsvc(deployment, "run", "support-answer")
    assert missing_input.returncode == 2
    assert missing_input.stderr.startswith("flowsvc: INVALID_ARGUMENT: ")
    assert "question" in missing_input.stderr
    # Its one violation is the message itself: said once.
    assert len(missing_input.stderr.strip().splitlines()) == 1, missing_input.stderr
    unknown = flowsvc(deployment, "run", "no-such-flow")
    assert unknown.returncode == 4 and "no flow named 'no-such-flow'" in unknown.stderr
    bad_pair = flowsvc(deployment, "run", "support-answer", "-i", "question")
    assert bad_pair.returncode == 2 and "key=value" in bad_pair.stderr
    cancel = flowsvc(deployment, "cancel", "00000000-0000-0000-0000-000000000000")
    assert cancel.returncode == 4 and cancel.stderr.startswith("flowsvc: NOT_FOUND")
    bad_key = flowsvc(deployment, "flows", "list", key="not-a-key")
    assert bad_key.returncode == 4 and "UNAUTHENTICATED" in bad_key.stderr
    for result in (missing_input, unknown, cancel, bad_key):
        assert "Traceback" not in result.stderr


def test_unreachable_server_is_one_line(deployment: Deployment) -> None:
    done = flowsvc(deployment, "flows", "list", "--server", "127.0.0.1:1")
    assert done.returncode == 5
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("flowsvc: cannot reach the server at 127.0.0.1:1")


def _read_until(fd: int, needle: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> str:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle.encode() not in seen:
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} never appeared in: {seen.decode(errors='replace')}")
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
        elif proc.poll() is not None:
            break
    return seen.decode(errors="replace")


def _run_asking_in_a_terminal(deployment: Deployment) -> tuple[subprocess.Popen[bytes], int]:
    """`flowsvc run` of the example INPUT flow on a pseudo-terminal: the process and the
    terminal's other end (the caller closes it)."""
    assert flowsvc(deployment, "flows", "apply", "examples/input_flow.json").returncode == 0
    primary, secondary = pty.openpty()
    env = {**os.environ, "FLOWSVC_SERVER": deployment.address,
           "FLOWSVC_API_KEY": deployment.acme_key, "TERM": "xterm-256color"}  # fmt: skip
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowsvc", "run", "ask-then-answer", "-i", "topic=tides"],
        stdin=secondary, stdout=secondary, stderr=secondary, env=env, cwd=ROOT,
    )  # fmt: skip
    os.close(secondary)
    return proc, primary


QUESTION = "What would you like to know about tides?"


def test_ctrl_c_at_the_question_exits_130_at_once(deployment: Deployment) -> None:
    proc, primary = _run_asking_in_a_terminal(deployment)
    try:
        _read_until(primary, QUESTION, proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130  # not after a line is typed: none ever is
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)


def test_live_view_in_a_terminal_asks_and_continues(deployment: Deployment) -> None:
    proc, primary = _run_asking_in_a_terminal(deployment)
    try:
        screen = _read_until(primary, QUESTION, proc)
        assert "STEP" in screen and "STATUS" in screen  # the live table's header
        assert "start" in screen and "START" in screen
        os.write(primary, b"Why twice a day?\r")
        screen += _read_until(primary, "session", proc)  # the summary line ends the run
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)
    assert "Answer about tides: Why twice a day?" in screen
    assert "COMPLETE" in screen and "answer" in screen and "LLM" in screen
    assert "\x1b[" in screen  # a terminal gets colours and redraws


def test_reflection_describes_methods_with_their_comments(deployment: Deployment) -> None:
    grpcurl = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or "grpcurl"
    done = subprocess.run(
        [grpcurl, "-plaintext", deployment.address, "describe",
         "flowsvc.v1.FlowRunService.RunFlow"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "is a method" in done.stdout
    assert "// Runs a flow and answers when the run completes" in done.stdout
    field = subprocess.run(
        [grpcurl, "-plaintext", deployment.address, "describe", "flowsvc.v1.RunEvent"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "// Per session, from 1, gapless" in field.stdout


def test_committed_descriptor_set_matches_the_protos(tmp_path: Path) -> None:
    """`make proto` was run after the last contract change: reflection serves the truth."""
    out = tmp_path / "descriptors.binpb"
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "protos/flowsvc/v1").glob("*.proto"))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-Iprotos", "--include_imports",
         "--include_source_info", f"--descriptor_set_out={out}", *protos],
        cwd=ROOT, check=True,
    )  # fmt: skip
    committed = ROOT / "generated/flowsvc/v1/descriptors.binpb"
    assert out.read_bytes() == committed.read_bytes(), "run `make proto` and commit the result"


def test_sessions_fork_runs_again_from_a_named_step(deployment: Deployment) -> None:
    assert flowsvc(deployment, "flows", "apply", "examples/input_flow.json").returncode == 0
    asked = flowsvc(deployment, "run", "ask-then-answer", "--input", "topic=tides")
    session = asked.stdout.split("session: ")[1].split()[0]
    assert flowsvc(deployment, "answer", session, "Why?").returncode == 0

    forked = flowsvc(deployment, "sessions", "fork", session, "ask", "-i", "topic=moons")
    assert forked.returncode == 3, forked.stderr  # the fork asks the question again
    assert "waiting for input: What would you like to know about moons?" in forked.stdout
    new = forked.stdout.split("forked: session ")[1].split()[0]
    shown = json.loads(flowsvc(deployment, "sessions", "get", new, "-o", "json").stdout)
    assert shown["parent_session_id"] == session
    assert shown["inputs"] == {"topic": "moons"}
    assert flowsvc(deployment, "answer", new, "How many?").returncode == 0

    # Numbers are typed (the model's properties are): no `:=` needed for them.
    tuned = flowsvc(
        deployment, "sessions", "fork", session, "answer",
        "--override", "answer.temperature=0.2", "--override", "answer.max_tokens=50",
    )  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr

    missing = flowsvc(deployment, "sessions", "fork", session, "nope")
    assert missing.returncode == 2 and "no step named 'nope'" in missing.stderr


def test_cancel_of_an_id_neither_run_nor_session_names_both(deployment: Deployment) -> None:
    done = flowsvc(deployment, "cancel", "01a23f07-0000-7000-8000-000000000000")
    assert done.returncode == 4
    assert done.stderr.strip() == (
        "flowsvc: NOT_FOUND: no run or session '01a23f07-0000-7000-8000-000000000000'"
    )


def test_ctrl_c_at_any_moment_exits_130_without_a_traceback(deployment: Deployment) -> None:
    applied = flowsvc(deployment, "flows", "apply", "examples/flow.json")
    assert applied.returncode == 0, applied.stderr
    env = {**os.environ, "FLOWSVC_SERVER": deployment.address,
           "FLOWSVC_API_KEY": deployment.acme_key}  # fmt: skip
    said = []
    # From the imports through the call to the channel's end: every phase of a command.
    for delay in [0.1 + 0.08 * i for i in range(12)]:
        command = subprocess.Popen(
            [sys.executable, "-m", "flowsvc", "run", "support-answer", "-i", "question=hi"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        time.sleep(delay)
        command.send_signal(signal.SIGINT)
        _, stderr = command.communicate(timeout=60)
        if command.returncode != 0:
            said.append((command.returncode, stderr))
    assert said, "no command was interrupted: the delays are too long for this machine"
    # 130, or killed by the signal itself (-2) when it came before Python took SIGINT over.
    assert all(code in (130, -signal.SIGINT) and "Traceback" not in err and "Exception" not in err
               for code, err in said), said  # fmt: skip
