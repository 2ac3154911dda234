"""`make bench`: the reference workloads of BENCHMARKS.md against a real server on loopback,
load from separate processes, each figure beside a baseline measured in the same run."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine

from flowsvc.domain.runs import Session, SessionStatus
from flowsvc.store.run_codec import session_row
from flowsvc.store.run_store import sessions as sessions_table
from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import flow_run_service_pb2_grpc as fr_grpc
from flowsvc.v1 import live_flow_service_pb2 as lf
from flowsvc.v1 import live_flow_service_pb2_grpc as lf_grpc
from flowsvc.v1 import resources_pb2 as pb

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    def __init__(self, db: Path) -> None:
        self.url = f"sqlite+aiosqlite:///{db}"
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = open(db.with_suffix(".log"), "ab")  # noqa: SIM115
        env = {**os.environ, "FLOWSVC_LOG_LEVEL": "WARNING"}
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [PY, "-m", "flowsvc", "serve", "--listen", self.address, "--database-url", self.url],
            stdout=self.log,
            stderr=self.log,
            env=env,
            cwd=ROOT,
        )
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5).status == 1:
                        break
                except grpc.RpcError:
                    pass
                if self.proc.poll() is not None:
                    raise RuntimeError("flowsvc exited during start")
                time.sleep(0.01)
        self.start_seconds = time.perf_counter() - started

    def key(self, org: str = "bench") -> str:
        out = subprocess.run(
            [PY, "-m", "flowsvc", "keys", "create", "--org", org, "--database-url", self.url],
            check=True,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        return out.stdout.strip().splitlines()[-1]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


class Echo:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [PY, str(HERE / "echo_server.py")], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.address = f"127.0.0.1:{self.proc.stdout.readline().strip()}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def load(workload: str, target: str, **options: Any) -> dict[str, Any]:
    args = [PY, str(HERE / "load.py"), workload, "--target", target]
    for name, value in options.items():
        args += [f"--{name}", str(value)]
    out = subprocess.run(args, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def step(name: str, kind: int, text: str | None = None, **config: Any) -> pb.Step:
    s = pb.Step(name=name, step_type=kind)
    if text is not None:
        s.prompt_template.CopyFrom(pb.PromptTemplate(type="text", text=text))
    for k, v in config.items():
        getattr(s, k).CopyFrom(v)
    return s


def linear(*steps: pb.Step) -> dict[str, Any]:
    return {
        "steps": list(steps),
        "step_transitions": [
            pb.StepTransition(source=a.name, target=b.name) for a, b in itertools.pairwise(steps)
        ],
    }


CHAIN5 = linear(
    step(
        "start",
        pb.STEP_TYPE_START,
        start=pb.StartConfig(inputs=[pb.FlowInput(name="question", required=True)]),
    ),
    step("draft", pb.STEP_TYPE_LLM, "Answer briefly: ${inputs.question}"),
    step("critique", pb.STEP_TYPE_LLM, "Critique: ${draft.result}"),
    step("final", pb.STEP_TYPE_LLM, "Improve: ${draft.result} | ${critique.result}"),
    step("end", pb.STEP_TYPE_END, "${final.result}"),
)
WITH_INPUT = linear(
    step("start", pb.STEP_TYPE_START),
    step("ask", pb.STEP_TYPE_INPUT, "What about ${inputs.topic}?"),
    step("answer", pb.STEP_TYPE_LLM, "About ${inputs.topic}: ${ask.user_input}"),
    step("end", pb.STEP_TYPE_END, "${answer.result}"),
)


def make_flow(address: str, key: str, graph: dict[str, Any]) -> str:
    with grpc.insecure_channel(address) as channel:
        flows = lf_grpc.LiveFlowServiceStub(channel)
        flow = flows.CreateLiveFlow(
            lf.CreateLiveFlowRequest(name="bench", **graph), metadata=(("api-key", key),)
        )
        return flow.id


def one_run(address: str, key: str, flow_id: str, session_id: str = "") -> pb.FlowRun:
    body = struct_pb2.Struct()
    body.update({"question": "q"})
    with grpc.insecure_channel(address) as channel:
        return fr_grpc.FlowRunServiceStub(channel).RunFlow(
            fr.RunFlowRequest(
                flow_id=flow_id, body=body, options=pb.RunOptions(session_id=session_id)
            ),
            metadata=(("api-key", key),),
        )


def populate_sessions(db: Path, like: pb.FlowRun, count: int) -> None:
    """Store `count` more sessions of the same flow straight into the table."""
    engine = create_engine(f"sqlite:///{db}")
    base = datetime.now(UTC) - timedelta(days=1)
    with engine.begin() as conn:
        org = conn.exec_driver_sql(
            "SELECT organisation_id, flow_version_id FROM sessions WHERE id = ?", (like.session_id,)
        ).one()
        for start in range(0, count, 5000):
            rows = []
            for i in range(start, min(count, start + 5000)):
                when = base + timedelta(milliseconds=i)
                rows.append(
                    session_row(
                        Session(
                            id=f"00000000-0000-4000-8000-{i:012d}",
                            organisation_id=org[0],
                            live_flow_id=like.flow_id,
                            flow_version_id=org[1],
                            version=1,
                            name="",
                            status=SessionStatus.COMPLETED,
                            inputs={"question": "q"},
                            variables={},
                            messages=[],
                            customer=None,
                            expiration_seconds=86400,
                            expires_at=when + timedelta(days=1),
                            created_at=when,
                            updated_at=when,
                            steps_count=5,
                        )
                    )
                )
            conn.execute(sessions_table.insert(), rows)
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="W1/W2 rounds; medians reported")
    parser.add_argument("--sessions", type=int, default=100_000, help="W4 stored sessions")
    parser.add_argument("--out", default=str(ROOT / "bench-results.json"))
    parser.add_argument("--only", default="", help="e.g. w3: run just these workloads")
    args = parser.parse_args()
    results: dict[str, Any] = {"seconds": args.seconds, "rounds": args.rounds}
    work = Path(tempfile.mkdtemp(prefix="flowsvc-bench-"))
    chosen = {w.strip() for w in args.only.split(",") if w.strip()} or {
        "w1",
        "w2",
        "w3",
        "w4",
        "w5",
    }

    # W5: start to SERVING, idle memory (three starts on empty stores).
    starts, idle = [], []
    for i in range(3 if "w5" in chosen else 0):
        s = Server(work / f"w5-{i}.db")
        starts.append(s.start_seconds)
        time.sleep(1.0)
        idle.append(rss_mib(s.proc.pid))
        s.stop()
    if starts:
        results["w5"] = {
            "start_to_serving_s": statistics.median(starts),
            "idle_rss_mib": statistics.median(idle),
        }

    echo = Echo()
    server = Server(work / "main.db")
    key = server.key()
    chain = make_flow(server.address, key, CHAIN5)
    asked = make_flow(server.address, key, WITH_INPUT)

    # W1 and W2, with the echo baseline measured in between, in rounds.
    rounds: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("echo1", "echo16", "w1_1", "w1_16", "w2")
    }
    for _ in range(args.rounds if chosen & {"w1", "w2"} else 0):
        rounds["echo1"].append(load("echo", echo.address, concurrency=1, seconds=args.seconds))
        rounds["w1_1"].append(
            load("w1", server.address, key=key, flow=chain, concurrency=1, seconds=args.seconds)
        )
        rounds["echo16"].append(load("echo", echo.address, concurrency=16, seconds=args.seconds))
        rounds["w1_16"].append(
            load("w1", server.address, key=key, flow=chain, concurrency=16, seconds=args.seconds)
        )
        rounds["w2"].append(
            load("w2", server.address, key=key, flow=asked, concurrency=16, seconds=args.seconds)
        )

    def med(name: str, field: str) -> float:
        return statistics.median(r[field] for r in rounds[name])

    if not rounds["w1_1"]:
        rounds.clear()
    results["w1"] = rounds and {
        str(c): {
            "runs_per_s": med(f"w1_{c}", "per_second"),
            "p50_ms": med(f"w1_{c}", "p50_ms"),
            "p99_ms": med(f"w1_{c}", "p99_ms"),
            "echo_per_s": med(f"echo{c}", "per_second"),
            "ratio": statistics.median(
                w["per_second"] / e["per_second"]
                for w, e in zip(rounds[f"w1_{c}"], rounds[f"echo{c}"], strict=True)
            ),
            "errors": sum(r["errors"] for r in rounds[f"w1_{c}"]),
        }
        for c in (1, 16)
    }
    results["w2"] = rounds and {
        "round_trips_per_s": med("w2", "per_second"),
        "p50_ms": med("w2", "p50_ms"),
        "p99_ms": med("w2", "p99_ms"),
        "echo16_per_s": med("echo16", "per_second"),
        "errors": sum(r["errors"] for r in rounds["w2"]),
    }

    # W3: one session running chain5 back to back, 200 subscribers following it.
    if "w3" in chosen:
        results["w3"] = w3(server, key, chain, args.seconds)
    server.stop()

    # W4: reads against an almost empty store, then with 100,000 sessions stored.
    if "w4" in chosen:
        results["w4"] = w4(work, args.sessions, args.seconds)
    echo.stop()

    Path(args.out).write_text(json.dumps(results, indent=2))
    print(table(results))


def w3(server: Server, key: str, chain: str, seconds: float) -> dict[str, Any]:
    first = one_run(server.address, key, chain)
    watcher = subprocess.Popen(
        [
            PY,
            str(HERE / "load.py"),
            "w3-watch",
            "--target",
            server.address,
            "--key",
            key,
            "--session",
            first.session_id,
            "--concurrency",
            "200",
            "--seconds",
            str(seconds + 2),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    time.sleep(1.5)
    peak = [rss_mib(server.proc.pid)]
    driver = subprocess.Popen(
        [
            PY,
            str(HERE / "load.py"),
            "w3-drive",
            "--target",
            server.address,
            "--key",
            key,
            "--flow",
            chain,
            "--session",
            first.session_id,
            "--seconds",
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    while driver.poll() is None:
        peak.append(rss_mib(server.proc.pid))
        time.sleep(0.5)
    drive = json.loads(driver.communicate()[0])
    watched = json.loads(watcher.communicate()[0])
    return {**watched, "runs_per_s": drive["per_second"], "server_peak_rss_mib": max(peak)}


def w4(work: Path, sessions: int, seconds: float) -> dict[str, Any]:
    def reads(db: Path, extra: int) -> dict[str, Any]:
        s = Server(db)
        k = s.key()
        flow = make_flow(s.address, k, CHAIN5)
        run = one_run(s.address, k, flow)
        if extra:
            s.stop()
            populate_sessions(db, run, extra)
            s = Server(db)
        figures = load(
            "w4",
            s.address,
            key=k,
            flow=flow,
            session=run.session_id,
            concurrency=16,
            seconds=max(3.0, seconds / 2),
        )
        s.stop()
        return figures

    # The "empty" store holds a few pages' worth, so both list the same number of rows.
    empty = reads(work / "w4-empty.db", 100)
    full = reads(work / "w4-full.db", sessions)
    return {
        "sessions": sessions,
        "get_p50_ms": [empty["get"]["p50_ms"], full["get"]["p50_ms"]],
        "list_p50_ms": [empty["list"]["p50_ms"], full["list"]["p50_ms"]],
        "get_ratio": full["get"]["p50_ms"] / empty["get"]["p50_ms"],
        "list_ratio": full["list"]["p50_ms"] / empty["list"]["p50_ms"],
    }


def table(r: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str, str]] = []
    if r.get("w1"):
        for c, label in (("1", "1 caller"), ("16", "16 callers")):
            w = r["w1"][c]
            rows.append(
                (
                    f"W1 RunFlow chain5, {label}",
                    f"{w['runs_per_s']:.0f} runs/s",
                    f"p50 {w['p50_ms']:.2f} ms, p99 {w['p99_ms']:.2f} ms",
                    f"echo {w['echo_per_s']:.0f}/s",
                    f"{w['ratio']:.3f}x",
                )
            )
    if r.get("w2"):
        w2 = r["w2"]
        rows.append(
            (
                "W2 CreateSession(wait)+SubmitUserInput(wait), 16",
                f"{w2['round_trips_per_s']:.0f} pairs/s",
                f"p50 {w2['p50_ms']:.2f} ms, p99 {w2['p99_ms']:.2f} ms",
                f"echo {w2['echo16_per_s']:.0f}/s",
                f"{w2['round_trips_per_s'] / w2['echo16_per_s']:.3f}x",
            )
        )
    if r.get("w3"):
        w3 = r["w3"]
        rows.append(
            (
                "W3 200 subscribers, chain5 back to back",
                f"{w3['events_received']} events",
                f"delivery p50 {w3['p50_ms']:.1f} ms, p99 {w3['p99_ms']:.1f} ms",
                f"{w3['runs_per_s']:.0f} runs/s, cut off {w3['cut_off']}",
                f"peak RSS {w3['server_peak_rss_mib']:.0f} MiB",
            )
        )
    if r.get("w4"):
        w4 = r["w4"]
        for name, label in (("get", "GetSession"), ("list", "ListSessions")):
            rows.append(
                (
                    f"W4 {label} p50, 100 vs {w4['sessions']} sessions",
                    f"{w4[f'{name}_p50_ms'][0]:.2f} / {w4[f'{name}_p50_ms'][1]:.2f} ms",
                    "",
                    "",
                    f"{w4[f'{name}_ratio']:.2f}x",
                )
            )
    if r.get("w5"):
        w5 = r["w5"]
        rows.append(
            (
                "W5 start to SERVING / idle RSS",
                f"{w5['start_to_serving_s']:.2f} s",
                f"{w5['idle_rss_mib']:.0f} MiB",
                "",
                "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)] if rows else [0] * 5
    return "\n".join(
        "| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |"
        for row in rows
    )


if __name__ == "__main__":
    main()
