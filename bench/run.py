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
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
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
from flowsvc.v1 import session_service_pb2 as ss
from flowsvc.v1 import session_service_pb2_grpc as ss_grpc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from proc_stats import cpu_seconds  # noqa: E402
from slow_model import SlowModel  # noqa: E402

ROOT = HERE.parent
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_cpu() -> dict[int, float]:
    """CPU seconds of every process whose comm starts with 'postgres', by pid."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().startswith("postgres"):
                    out[int(entry.name)] = cpu_seconds(int(entry.name), with_children=False)
            except (FileNotFoundError, ProcessLookupError):
                continue
    return out


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """`python -m flowsvc serve` as a child process, at the server's default settings
    (log level INFO: one log line per call, as deployed). `db` is a SQLite file (its log goes
    beside it) or a postgresql:// URL (then `log` names the log file)."""

    def __init__(
        self, db: Path | str, *, log: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        if isinstance(db, Path):
            self.url = f"sqlite+aiosqlite:///{db}"
            log = log or db.with_suffix(".log")
        else:
            self.url = db
            assert log is not None
        self.log_path = log
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = open(log, "ab")  # noqa: SIM115
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [PY, "-m", "flowsvc", "serve", "--listen", self.address, "--database-url", self.url],
            stdout=self.log,
            stderr=self.log,
            env={**os.environ, **(env or {})},
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

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
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
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"{workload} load failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def with_cpu(server: Server, workload: str, **options: Any) -> dict[str, Any]:
    """load() against one server, plus the server's CPU milliseconds per successful call."""
    before = server.cpu()
    res = load(workload, server.address, **options)
    res["cpu_ms_per_run"] = 1000 * (server.cpu() - before) / max(1, res["calls"])
    return res


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
    parser.add_argument("--profile", default="", help="a directory: py-spy profiles of servers")
    parser.add_argument(
        "--takeover-trials", type=int, default=3, help="W7 kill -9 trials per lease setting"
    )
    args = parser.parse_args()
    global PROFILE_DIR
    if args.profile:
        PROFILE_DIR = Path(args.profile).resolve()
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"seconds": args.seconds, "rounds": args.rounds}
    work = Path(tempfile.mkdtemp(prefix="flowsvc-bench-"))
    chosen = {w.strip() for w in args.only.split(",") if w.strip()} or {
        "w1",
        "w2",
        "w3",
        "w4",
        "w5",
        "w6",
        "w7",
    }  # wtel and wlog only when asked for: with them the default run passes 15 minutes

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
    if "w7" in chosen:  # first, on a quiet machine: its servers and databases are its own
        results["w7"] = w7(work, echo, args.seconds, args.rounds, args.takeover_trials)
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
            with_cpu(server, "w1", key=key, flow=chain, concurrency=1, seconds=args.seconds)
        )
        rounds["echo16"].append(load("echo", echo.address, concurrency=16, seconds=args.seconds))
        rounds["w1_16"].append(
            with_cpu(server, "w1", key=key, flow=chain, concurrency=16, seconds=args.seconds)
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
            "cpu_ms_per_run": med(f"w1_{c}", "cpu_ms_per_run"),
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

    server.stop()
    # W3: 200 subscribers of a bare grpc.aio stream, then of one flowsvc session running
    # chain5 back to back, then paced at a quarter of the bare stream's deliveries.
    if "w3" in chosen:
        results["w3"] = w3(work, echo, args.seconds)
    # W6: RunFlow on sessions holding ~900 messages vs on new ones.
    if "w6" in chosen:
        results["w6"] = w6(work)
    # Telemetry (metrics + tracing) on vs off; log level INFO vs WARNING: W1 at 16 callers.
    if chosen & {"wtel", "wlog"}:
        results["wtel_wlog"] = telemetry_and_logs(
            work, args.seconds, args.rounds, "wtel" in chosen, "wlog" in chosen
        )

    # W4: reads against an almost empty store, then with 100,000 sessions stored.
    if "w4" in chosen:
        results["w4"] = w4(work, args.sessions, args.seconds)
    echo.stop()

    for p in PROFILERS:
        p.wait()
    Path(args.out).write_text(json.dumps(results, indent=2, default=float))
    print(table(results))


W4_IDLE_SECONDS = 5.0


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
        # The server's CPU while nobody calls it: its background polls (claims, expiry,
        # cancellations) must read what is due, not every session stored.
        time.sleep(1.0)
        before = s.cpu()
        time.sleep(W4_IDLE_SECONDS)
        idle = (s.cpu() - before) / W4_IDLE_SECONDS
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
        return {**figures, "idle_cpu": idle}

    # The "empty" store holds a few pages' worth, so both list the same number of rows.
    empty = reads(work / "w4-empty.db", 100)
    full = reads(work / "w4-full.db", sessions)
    return {
        "sessions": sessions,
        "get_p50_ms": [empty["get"]["p50_ms"], full["get"]["p50_ms"]],
        "list_p50_ms": [empty["list"]["p50_ms"], full["list"]["p50_ms"]],
        "get_ratio": full["get"]["p50_ms"] / empty["get"]["p50_ms"],
        "list_ratio": full["list"]["p50_ms"] / empty["list"]["p50_ms"],
        "idle_cpu_percent": [100 * empty["idle_cpu"], 100 * full["idle_cpu"]],
    }


# ---- W7: W1 on SQLite vs PostgreSQL with one and two replicas; takeover after kill -9 ----

ADMIN = os.environ.get("FLOWSVC_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
COUNTED_TABLES = ("sessions", "flow_runs", "session_steps", "run_events")


class Postgres:
    """A fresh database for one configuration, dropped by `drop()`. Counters are read on a
    connection to the admin database, so the reading is not counted against ours."""

    def __init__(self, tag: str) -> None:
        self.name = f"flowsvc_bench_{tag}_{uuid.uuid4().hex[:8]}"
        self.admin = psycopg.connect(ADMIN, autocommit=True)
        self.admin.execute(f'CREATE DATABASE "{self.name}"')
        self.url = ADMIN.rsplit("/", 1)[0] + f"/{self.name}"

    def counters(self) -> dict[str, Any]:
        db = self.admin.execute(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = %s",
            (self.name,),
        ).fetchone()
        xid, lsn = self.admin.execute(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
        ).fetchone()  # type: ignore[misc]
        wal = self.admin.execute(
            "SELECT wal_records, wal_write, wal_sync FROM pg_stat_wal"
        ).fetchone()
        assert db is not None and wal is not None
        with psycopg.connect(self.url, autocommit=True) as conn:
            tup = conn.execute(
                "SELECT coalesce(sum(n_tup_ins), 0)::bigint, coalesce(sum(n_tup_upd), 0)::bigint,"
                " coalesce(sum(n_tup_del), 0)::bigint FROM pg_stat_user_tables"
            ).fetchone()
            rows = {
                t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                for t in COUNTED_TABLES
            }
        assert tup is not None
        return {
            "commits": db[0],
            "rollbacks": db[1],
            "xids": xid,
            "wal_bytes": lsn,
            "wal_records": wal[0],
            "wal_writes": wal[1],
            "wal_syncs": wal[2],
            "tuples_inserted": tup[0],
            "tuples_updated": tup[1],
            "tuples_deleted": tup[2],
            **{f"rows_{t}": n for t, n in rows.items()},
        }

    def backends(self) -> set[int]:
        """Server processes connected to this database (client backends, autovacuum)."""
        return {
            r[0]
            for r in self.admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.name,)
            )
        }

    def other_backends(self) -> int:
        """Active client backends on other databases: a sign the PostgreSQL figures are shared."""
        row = self.admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname IS NOT NULL AND datname <> %s"
            " AND datname <> current_database() AND state = 'active'",
            (self.name,),
        ).fetchone()
        return int(row[0]) if row else 0

    def drop(self) -> None:
        self.admin.close()
        for attempt in range(10):  # a fresh connection: PostgreSQL may have restarted meanwhile
            try:
                with psycopg.connect(ADMIN, autocommit=True) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
                return
            except psycopg.OperationalError:
                if attempt == 9:
                    raise
                time.sleep(1)


def retried(what: str, attempt: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The PostgreSQL cluster is shared (test suites restart it): a configuration whose
    database connection was cut is measured again, up to twice, and says so."""
    for n in range(3):
        try:
            return {**attempt(), "retries": n}
        except (psycopg.OperationalError, RuntimeError) as exc:
            if n == 2:
                raise
            print(f"bench: {what} failed ({str(exc).splitlines()[0]}), again", file=sys.stderr)
            time.sleep(3)
    raise AssertionError("unreachable")


# PostgreSQL 15 backends flush their statistics (pg_stat_database, pg_stat_wal, ...) at most
# once a second, and a backend that goes idle within that second waits up to 10 s: counters
# are read only after this long without load. What the idle service commits meanwhile is
# measured (IDLE_WINDOW, before the load) and subtracted.
STATS_SETTLE = 11.0
IDLE_WINDOW = 5.0


def w7_measure(
    servers: list[Server], key: str, flow: str, seconds: float, pg: Postgres | None
) -> dict[str, Any]:
    """W1 at 16 callers split over `servers`, with CPU and (PostgreSQL) commit costs; and the
    idle cost of the same servers (CPU, commits per second) just before the load."""
    target = ",".join(s.address for s in servers)
    load("w1", target, key=key, flow=flow, concurrency=16, seconds=min(2.0, seconds))  # warm-up
    if pg:
        time.sleep(STATS_SETTLE)
        ci, pi = pg.counters(), postgres_cpu()
    fi, ti = [s.cpu() for s in servers], time.perf_counter()
    time.sleep(IDLE_WINDOW)
    if pg:
        c0, p0, b0, others = pg.counters(), postgres_cpu(), pg.backends(), pg.other_backends()
    f0, m0, t0 = [s.cpu() for s in servers], machine_cpu(), time.perf_counter()
    idle_s = t0 - ti
    res = load("w1", target, key=key, flow=flow, concurrency=16, seconds=seconds)
    f1, m1, t1 = [s.cpu() for s in servers], machine_cpu(), time.perf_counter()
    runs = max(1, res["calls"])
    out: dict[str, Any] = {
        "replicas": len(servers),
        "runs_per_s": res["per_second"],
        "p50_ms": res["p50_ms"],
        "p99_ms": res["p99_ms"],
        "runs": res["calls"],
        "errors": res["errors"],
        "flowsvc_cpu_ms_per_run": 1000 * (sum(f1) - sum(f0)) / runs,
        "flowsvc_cores": (sum(f1) - sum(f0)) / res["seconds"],
        "flowsvc_cpu_s_by_replica": [b - a for a, b in zip(f0, f1, strict=True)],
        "flowsvc_idle_cores_per_replica": (sum(f0) - sum(fi)) / idle_s / len(servers),
        "client_cpu_ms_per_run": 1000 * res["client_cpu_s"] / runs,
        "machine_busy_cores": (m1[0] - m0[0]) / (m1[1] - m0[1]) * (os.cpu_count() or 1),
    }
    if pg:
        p1, b1 = postgres_cpu(), pg.backends()
        time.sleep(STATS_SETTLE)
        c1, t2 = pg.counters(), time.perf_counter()
        pg_all = sum(v - p0.get(pid, 0.0) for pid, v in p1.items())
        pg_db = sum(p1.get(pid, 0.0) - p0.get(pid, 0.0) for pid in b0 | b1)
        idle = {k: (c0[k] - ci[k]) / idle_s for k in c0}  # per second, the servers idle
        # the load's own share: less what the idle servers commit while the stats settle
        delta = {k: c1[k] - c0[k] - idle[k] * (t2 - t1) for k in c0}
        out.update(
            {
                "pg_cpu_ms_per_run": 1000 * pg_all / runs,
                "pg_db_backends_cpu_ms_per_run": 1000 * pg_db / runs,
                "pg_cores": pg_all / res["seconds"],
                "pg_idle_cores": sum(v - pi.get(pid, 0.0) for pid, v in p0.items()) / idle_s,
                "pg_backends": len(b1),
                "pg_other_active_backends": others,
                "idle_commits_per_s": idle["commits"],
                "idle_rollbacks_per_s": idle["rollbacks"],
                "idle_write_xacts_per_s": idle["xids"],
                "commits_per_run": delta["commits"] / runs,
                "commits_per_s": delta["commits"] / res["seconds"],
                "rollbacks_per_run": delta["rollbacks"] / runs,
                "write_xacts_per_run": delta["xids"] / runs,
                "write_xacts_per_s": delta["xids"] / res["seconds"],
                "wal_syncs_per_run": delta["wal_syncs"] / runs,
                "wal_syncs_per_s": delta["wal_syncs"] / res["seconds"],
                "wal_bytes_per_run": delta["wal_bytes"] / runs,
                "wal_records_per_run": delta["wal_records"] / runs,
                "tuples_inserted_per_run": delta["tuples_inserted"] / runs,
                "tuples_updated_per_run": delta["tuples_updated"] / runs,
                "tuples_deleted_per_run": delta["tuples_deleted"] / runs,
                **{f"rows_{t}_per_run": delta[f"rows_{t}"] / runs for t in COUNTED_TABLES},
            }
        )
    return out


def w7_config(work: Path, kind: str, seconds: float, n: int) -> dict[str, Any]:
    """One configuration on a fresh store: 'sqlite', 'pg1' or 'pg2'."""
    if kind == "sqlite":
        s = Server(work / f"w7-sqlite-{n}.db")
        try:
            key = s.key()
            return w7_measure([s], key, make_flow(s.address, key, CHAIN5), seconds, None)
        finally:
            s.stop()
    pg = Postgres(kind)
    servers: list[Server] = []
    try:
        for i in range(int(kind[-1])):
            servers.append(Server(pg.url, log=work / f"w7-{kind}-{n}-replica{i}.log"))
        key = servers[0].key()
        flow = make_flow(servers[0].address, key, CHAIN5)
        return w7_measure(servers, key, flow, seconds, pg)
    finally:
        for s in servers:
            s.stop()
        pg.drop()


W7_KINDS = ("sqlite", "pg1", "pg2")


def w7(work: Path, echo: Echo, seconds: float, rounds: int, trials: int) -> dict[str, Any]:
    per: dict[str, list[dict[str, Any]]] = {k: [] for k in (*W7_KINDS, "echo16")}
    for n in range(rounds):
        per["echo16"].append(load("echo", echo.address, concurrency=16, seconds=seconds))
        for kind in W7_KINDS:
            measure = lambda k=kind, i=n: w7_config(work, k, seconds, i)  # noqa: E731
            per[kind].append(retried(f"W7 {kind}", measure))

    def median_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            k: statistics.median(r[k] for r in rows)
            for k, v in rows[0].items()
            if isinstance(v, int | float)
        }

    out: dict[str, Any] = {k: median_of(per[k]) for k in W7_KINDS}
    out["echo16_per_s"] = statistics.median(r["per_second"] for r in per["echo16"])
    out["pg1_over_sqlite"] = statistics.median(
        p["runs_per_s"] / s["runs_per_s"] for p, s in zip(per["pg1"], per["sqlite"], strict=True)
    )
    out["pg2_over_pg1"] = statistics.median(
        b["runs_per_s"] / a["runs_per_s"] for a, b in zip(per["pg1"], per["pg2"], strict=True)
    )
    out["rounds"] = per
    out["takeover"] = {
        "default": takeover(work, None, trials),
        "lease_2s": takeover(work, 2.0, trials),
    }
    return out


SLOW_FLOW = linear(
    step("start", pb.STEP_TYPE_START),
    step("think", pb.STEP_TYPE_LLM, "thought", llm=pb.LlmConfig(model="openai/slow")),
    step("end", pb.STEP_TYPE_END, "${think.result}"),
)
SLOW_SECONDS = 3.0


def takeover(work: Path, lease: float | None, trials: int) -> dict[str, Any]:
    """Two replicas; a run whose model call takes SLOW_SECONDS is in flight on A; kill -9 A.
    Measured from the kill: B claims the session's lease (epoch grows), B commits the run's
    next event, the run completes."""
    model = SlowModel(SLOW_SECONDS)
    env = {"FLOWSVC_OPENAI_BASE_URL": f"{model.url}/v1", "FLOWSVC_OPENAI_API_KEY": "x"}
    if lease is not None:
        env["FLOWSVC_LEASE_SECONDS"] = str(lease)
    tag = "default" if lease is None else f"lease{lease:g}"

    def trial(n: int) -> dict[str, Any]:
        pg = Postgres("takeover")
        servers: list[Server] = []
        try:
            for i in range(2):
                log = work / f"takeover-{tag}-{n}-replica{i}.log"
                servers.append(Server(pg.url, log=log, env=env))
            model.requests = 0
            return takeover_once(pg, servers, model)
        finally:
            for s in servers:
                s.stop()
            pg.drop()

    try:
        results = [retried("W7 takeover", lambda n=n: trial(n)) for n in range(trials)]
    finally:
        model.close()
    figures = {
        k: statistics.median(r[k] for r in results)
        for k in ("claim_s", "next_event_s", "completed_s")
        if all(r[k] is not None for r in results)
    }
    return {
        "lease_seconds": lease or 10.0,
        "slow_step_seconds": SLOW_SECONDS,
        **figures,
        "trials": results,
    }


def takeover_once(pg: Postgres, servers: list[Server], model: SlowModel) -> dict[str, Any]:
    a = servers[0]  # the victim; servers[1] takes over
    key = a.key()
    flow = make_flow(a.address, key, SLOW_FLOW)
    with grpc.insecure_channel(a.address) as channel:
        session = (
            ss_grpc.SessionServiceStub(channel)
            .CreateSession(ss.CreateSessionRequest(live_flow_id=flow), metadata=(("api-key", key),))
            .id
        )
    with psycopg.connect(pg.url, autocommit=True) as conn:

        def state() -> tuple[int, str | None, int, list[str]]:
            epoch, owner, last = conn.execute(
                "SELECT lease_epoch, owner_id, last_seq FROM sessions WHERE id = %s", (session,)
            ).fetchone()  # type: ignore[misc]
            types = [
                r[0]
                for r in conn.execute(
                    "SELECT type FROM run_events WHERE session_id = %s ORDER BY seq", (session,)
                )
            ]
            return epoch, owner, last, types

        deadline = time.monotonic() + 30
        while model.requests == 0:  # until `think`'s model call is in flight on A
            if time.monotonic() > deadline:
                raise RuntimeError(f"the slow step never started: {state()}")
            time.sleep(0.01)
        time.sleep(0.3)
        epoch0, owner0, _, types0 = state()
        a.proc.kill()
        killed = time.perf_counter()
        claim = event = done = None
        event_type = ""
        while time.perf_counter() - killed < 60 and done is None:
            epoch, owner, _, types = state()
            now = time.perf_counter() - killed
            if claim is None and epoch != epoch0:
                claim = now
            if event is None and len(types) > len(types0):
                event, event_type = now, types[len(types0)]
            if types and types[-1] in ("RUN_COMPLETED", "RUN_FAILED"):
                done = now
            time.sleep(0.005)
    a.proc.wait()
    return {
        "claim_s": claim,
        "next_event_s": event,
        "next_event_type": event_type,
        "completed_s": done,
        "final_event": types[-1] if types else "",
        "events_before_kill": types0,
        "owner_changed": owner != owner0,
    }


# ---- W3 against a bare grpc.aio stream; W6 long sessions; telemetry and log-level costs ----

W3_SUBSCRIBERS = 200
W3_WATCH_PROCS = 2  # load processes sharing the subscribers (one alone is the ceiling)


def subscribers(workload: str, target: str, seconds: float, pid: int, **options: Any) -> Any:
    """W3_SUBSCRIBERS subscribers in W3_WATCH_PROCS load processes, all joined ("ready");
    returns the processes, whose windows start with go()."""
    procs = []
    for i in range(W3_WATCH_PROCS):
        n = W3_SUBSCRIBERS // W3_WATCH_PROCS + (i < W3_SUBSCRIBERS % W3_WATCH_PROCS)
        args = [PY, str(HERE / "load.py"), workload, "--target", target, "--concurrency", str(n)]
        args += ["--seconds", str(seconds), "--pid", str(pid if i == 0 else 0)]
        for name, value in options.items():
            args += [f"--{name}", str(value)]
        procs.append(
            subprocess.Popen(
                args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
            )
        )
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"subscribers did not join: {line!r}")
    return procs


def go(procs: list[subprocess.Popen[str]], pid: int = 0, name: str = "") -> None:
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    if pid and name:
        profile(pid, name)


PROFILE_DIR: Path | None = None  # --profile: py-spy records each measured server there
PROFILERS: list[subprocess.Popen[bytes]] = []


def profile(pid: int, name: str, seconds: float = 8) -> None:
    """With --profile, a py-spy sampling profile (GIL holders, raw stacks) of `pid` from now
    on, for `seconds`: `PROFILE_DIR/name.txt`. It takes CPU: figures of a profiled run are
    not the ones to quote."""
    if PROFILE_DIR is None:
        return
    out = PROFILE_DIR / f"{name}.txt"
    args = ["py-spy", "record", "--gil", "-p", str(pid), "-f", "raw", "-d", str(seconds)]
    PROFILERS.append(
        subprocess.Popen(
            [*args, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    )


def collect(procs: list[subprocess.Popen[str]]) -> dict[str, Any]:
    """Sum of the processes' windows. Latency percentiles: p50 the mean of the processes',
    p99 and max the largest (the subscribers are alike, so they differ little)."""
    parts = [json.loads(p.communicate()[0]) for p in procs]
    delivered_per_s = sum(r["delivered_per_s"] for r in parts)
    window = parts[0]["window_s"]
    cpu = parts[0]["server_cpu_s"]
    client_cpu = sum(r["client_window_cpu_s"] for r in parts)
    timed = [r for r in parts if r["events_timed"]]
    return {
        "subscribers": sum(r["subscribers"] for r in parts),
        "joined": sum(r["joined"] for r in parts),
        "delivered": sum(r["delivered"] for r in parts),
        "delivered_per_s": delivered_per_s,
        "messages_per_s": sum(r["messages_per_s"] for r in parts),
        "mean_bytes": statistics.fmean(r["mean_bytes"] for r in parts),
        "server_cores": cpu / window,
        "server_cpu_us_per_delivered": 1e6 * cpu / max(1.0, delivered_per_s * window),
        # The server's CPU per delivered message by thread: the event loop ("main") against
        # grpc's own threads (poller, event engine) and the store's.
        "server_thread_us_per_delivered": {
            name: round(1e6 * s / max(1.0, delivered_per_s * window), 2)
            for name, s in parts[0]["server_threads_cpu_s"].items()
        },
        "client_cores": client_cpu / window,
        "cut_off": sum(r["cut_off"] for r in parts),
        "events_timed": sum(r["events_timed"] for r in parts),
        "p50_ms": statistics.fmean(r["p50_ms"] for r in timed) if timed else float("nan"),
        "p99_ms": max((r["p99_ms"] for r in timed), default=float("nan")),
        "max_ms": max((r["max_ms"] for r in timed), default=float("nan")),
    }


def probe_events(address: str, key: str, session_id: str) -> list[pb.RunEvent]:
    """The events of a session (one finished run): its history, read until the stream idles."""
    out: list[pb.RunEvent] = []
    with grpc.insecure_channel(address) as channel:
        call = ss_grpc.SessionServiceStub(channel).WatchSession(
            ss.WatchSessionRequest(session_id=session_id, after_seq=0),
            metadata=(("api-key", key),),
            timeout=1.5,
        )
        try:
            for event in call:
                out.append(event)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                raise
    return out


def message_count(address: str, key: str, session_id: str) -> int:
    with grpc.insecure_channel(address) as channel:
        got = ss_grpc.SessionServiceStub(channel).GetSession(
            ss.GetSessionRequest(id=session_id), metadata=(("api-key", key),)
        )
        return len(got.messages)


W3_AHEAD = 3  # (b): runs started but not yet delivered (to the driver's own watcher), at most


def w3_flowsvc(
    work: Path, tag: str, env: dict[str, str], seconds: float, rate: float, batched: bool = False
) -> dict[str, Any]:
    """200 WatchSession (or, `batched`, WatchSessionBatches) subscribers on one session (one
    run in it before they join), then chain5 runs on it back to back, at most W3_AHEAD runs
    ahead of delivery (rate 0), or started `rate` times a second."""
    server = Server(work / f"w3-{tag}.db", env=env)
    try:
        key = server.key()
        chain = make_flow(server.address, key, CHAIN5)
        first = one_run(server.address, key, chain)
        procs = subscribers(
            "w3-watch",
            server.address,
            seconds,
            server.proc.pid,
            key=key,
            session=first.session_id,
            batched=int(batched),
        )
        args = [PY, str(HERE / "load.py"), "w3-drive", "--target", server.address, "--key", key]
        args += ["--flow", chain, "--session", first.session_id, "--seconds", str(seconds + 2)]
        args += ["--rate", str(rate), "--ahead", str(0 if rate else W3_AHEAD)]
        driver = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        time.sleep(1.0)  # the driver's process starts and its runs flow
        go(procs, server.proc.pid, f"w3-{tag}")
        peak = [rss_mib(server.proc.pid)]
        while driver.poll() is None:
            peak.append(rss_mib(server.proc.pid))
            time.sleep(0.5)
        drive = json.loads(driver.communicate()[0])
        out = collect(procs)
        out.update(
            {
                "env": env,
                "driver_runs_per_s": drive["per_second"],
                "driver_runs": drive["calls"],
                "driver_errors": drive["errors"],
                "driver_rate": rate,
                "session_messages_after": message_count(server.address, key, first.session_id),
                "server_peak_rss_mib": max(peak),
                "hub_cut_off_log": _cut_off_lines(server),
            }
        )
        return out
    finally:
        server.stop()


def _cut_off_lines(server: Server) -> int:
    server.log.flush()
    try:
        return server.log_path.read_text(errors="replace").count("subscriber_queue")
    except FileNotFoundError:
        return 0


def w3(work: Path, echo: Echo, seconds: float) -> dict[str, Any]:
    # The size of flowsvc's events: one chain5 run's, as WatchSession carries them.
    probe = Server(work / "w3-probe.db")
    try:
        key = probe.key()
        run = one_run(probe.address, key, make_flow(probe.address, key, CHAIN5))
        events = probe_events(probe.address, key, run.session_id)
    finally:
        probe.stop()
    sizes = [e.ByteSize() for e in events]
    size = round(statistics.fmean(sizes))
    # The baseline: the bare stream, the same subscribers, messages of that size.
    procs = subscribers("stream-watch", echo.address, seconds, echo.proc.pid, size=size)
    go(procs, echo.proc.pid, "w3-bare")
    bare = collect(procs)
    # flowsvc, as fast as the subscribers read: one session must not reach its message cap
    # (runs back to back on it for seconds + 3 s) nor cut subscribers off for falling behind
    # (the runs are produced faster than 200 subscribers can be sent them): both raised.
    fast_env = {
        "FLOWSVC_MAX_MESSAGES_PER_SESSION": "1000000",
        "FLOWSVC_SUBSCRIBER_QUEUE": "1000000",
    }
    fast = w3_flowsvc(work, "fast", fast_env, seconds, 0)
    # Paced: runs started at a fixed rate such that the deliveries are a quarter of the bare
    # stream's ceiling; default settings unless the session would near its message cap.
    # Live, a run also sends deltas (no seq, not replayed): its deliveries per subscriber are
    # counted from the unpaced run (all received ÷ those with a seq, times the seq'd ones).
    live_per_run = len(events) * fast["delivered"] / max(1, fast["events_timed"])
    rate = 0.25 * bare["delivered_per_s"] / W3_SUBSCRIBERS / live_per_run
    paced_env: dict[str, str] = {}
    if 2 * rate * (seconds + 4) + 2 > 0.9 * 1000:
        paced_env["FLOWSVC_MAX_MESSAGES_PER_SESSION"] = "1000000"
    paced = w3_flowsvc(work, "paced", paced_env, seconds, rate)
    # The same two with WatchSessionBatches: a run in a few messages per subscriber.
    batched = w3_flowsvc(work, "batched", fast_env, seconds, 0, batched=True)
    batched_paced = w3_flowsvc(work, "batched-paced", paced_env, seconds, rate, batched=True)
    return {
        "event_bytes_mean": size,
        "event_bytes_min_max": [min(sizes), max(sizes)],
        "events_per_run": len(events),
        "live_events_per_run": live_per_run,
        "bare": bare,
        "fast": fast,
        "paced": paced,
        "efficiency": fast["delivered_per_s"] / bare["delivered_per_s"],
        "cpu_per_delivered_ratio": fast["server_cpu_us_per_delivered"]
        / bare["server_cpu_us_per_delivered"],
        "paced_fraction_of_bare": paced["delivered_per_s"] / bare["delivered_per_s"],
        "batched": batched,
        "batched_paced": batched_paced,
        # Events delivered by the batched stream per message the bare stream delivers.
        "batched_efficiency": batched["delivered_per_s"] / bare["delivered_per_s"],
        "batched_cpu_per_delivered_ratio": batched["server_cpu_us_per_delivered"]
        / bare["server_cpu_us_per_delivered"],
    }


W6_PREPARE_RUNS = 450
W6_RUNS = 40  # measured runs per caller, per measurement (two of each kind, alternating)


def w6(work: Path) -> dict[str, Any]:
    """RunFlow on sessions that hold ~900 messages vs on new ones; 16 callers, each on its own
    session. The message cap is raised so that the long sessions can take 450 runs and more."""
    env = {"FLOWSVC_MAX_MESSAGES_PER_SESSION": "100000"}
    server = Server(work / "w6.db", env=env)
    pid = server.proc.pid
    try:
        key = server.key()
        chain = make_flow(server.address, key, CHAIN5)
        common = {"key": key, "flow": chain, "concurrency": 16, "pid": pid}
        started = time.perf_counter()
        prep = load("w6", server.address, runs=W6_PREPARE_RUNS, mode="prepare", **common)
        prepare_s = time.perf_counter() - started
        if len(prep["sessions"]) != 16:
            raise RuntimeError(f"W6: sessions not prepared: {prep['first_errors']}")
        long_sessions = ",".join(prep["sessions"])
        short = load("w6", server.address, runs=1, mode="prepare", **common)
        short_sessions = ",".join(short["sessions"])
        before = message_count(server.address, key, prep["sessions"][0])
        kinds = {
            "new": {"mode": "new"},
            "long": {"mode": "given", "session": long_sessions},
            "short": {"mode": "given", "session": short_sessions},
        }
        per: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        for order in (("new", "long", "short"), ("short", "long", "new")):
            for kind in order:
                if len(per[kind]) == 0:
                    profile(pid, f"w6-{kind}", 3)
                per[kind].append(load("w6", server.address, runs=W6_RUNS, **common, **kinds[kind]))
        after = message_count(server.address, key, prep["sessions"][0])
    finally:
        server.stop()

    def total(kind: str, field: str) -> float:
        return sum(r[field] for r in per[kind])

    out: dict[str, Any] = {"env": env, "prepare_runs": prep["calls"], "prepare_s": prepare_s}
    out["prepare_errors"] = prep["errors"] + short["errors"]
    out["long_messages_before_after"] = [before, after]
    for kind in kinds:
        runs = total(kind, "calls")
        out[kind] = {
            "runs": runs,
            "errors": total(kind, "errors"),
            "cpu_ms_per_run": 1000 * total(kind, "server_cpu_s") / max(1, runs),
            "runs_per_s": runs / total(kind, "seconds"),
            "p50_ms": statistics.median(r["p50_ms"] for r in per[kind]),
            "p99_ms": max(r["p99_ms"] for r in per[kind]),
        }
    out["long_over_new"] = out["long"]["cpu_ms_per_run"] / out["new"]["cpu_ms_per_run"]
    out["long_over_short"] = out["long"]["cpu_ms_per_run"] / out["short"]["cpu_ms_per_run"]
    out["rounds"] = per
    return out


class OtlpCollector:
    """A loopback OTLP/HTTP trace collector: POST /v1/traces answered 200 with an empty
    ExportTraceServiceResponse; counts the spans it receives."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.spans = 0
        self.requests = 0
        collector = self
        empty = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path == "/v1/traces":
                    req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                    collector.requests += 1
                    collector.spans += sum(
                        len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans
                    )
                    self.send_response(200)
                    self.send_header("Content-Type", "application/x-protobuf")
                    self.send_header("Content-Length", str(len(empty)))
                    self.end_headers()
                    self.wfile.write(empty)
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

        class HttpServer(ThreadingHTTPServer):
            daemon_threads = True

        self._server = HttpServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()


def w1_config(
    work: Path, tag: str, env: dict[str, str], seconds: float, collector: OtlpCollector | None
) -> dict[str, Any]:
    """W1 at 16 callers on a fresh server with `env`: 2 s warm-up, then `seconds`; the
    server's CPU over the load's own window."""
    server = Server(work / f"{tag}.db", env=env)
    try:
        key = server.key()
        flow = make_flow(server.address, key, CHAIN5)
        load("w1", server.address, key=key, flow=flow, concurrency=16, seconds=2)
        spans0 = collector.spans if collector else 0
        if tag.endswith("-0"):
            profile(server.proc.pid, tag)
        res = load(
            "w1",
            server.address,
            key=key,
            flow=flow,
            concurrency=16,
            seconds=seconds,
            pid=server.proc.pid,
        )
        runs = max(1, res["calls"])
        out = {
            "env": env,
            "runs_per_s": res["per_second"],
            "p50_ms": res["p50_ms"],
            "p99_ms": res["p99_ms"],
            "runs": res["calls"],
            "errors": res["errors"],
            "cpu_ms_per_run": 1000 * res["server_cpu_s"] / runs,
            "server_cores": res["server_cpu_s"] / res["seconds"],
        }
        if collector:
            time.sleep(6)  # the batch span processor exports every 5 s
            out["spans_per_run"] = (collector.spans - spans0) / runs
            metrics_at = env.get("FLOWSVC_METRICS_LISTEN")
            if metrics_at:
                import urllib.request

                with urllib.request.urlopen(f"http://{metrics_at}/metrics", timeout=5) as r:
                    text = r.read().decode()
                out["metrics_series"] = sum(
                    1 for line in text.splitlines() if line and not line.startswith("#")
                )
        log = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
        out["log_lines_per_run"] = len(log.splitlines()) / max(1, runs + 2)
        return out
    finally:
        server.stop()


def telemetry_and_logs(
    work: Path, seconds: float, rounds: int, tel: bool, logs: bool
) -> dict[str, Any]:
    """W1 at 16 callers, in the same rounds: at the defaults (INFO, no metrics, no tracing);
    with metrics and OTLP tracing on; at log level WARNING. Order reversed every other round."""
    collector = OtlpCollector() if tel else None
    kinds: dict[str, dict[str, str]] = {"base": {}}
    if tel and collector:
        kinds["telemetry"] = {
            "FLOWSVC_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        }
    if logs:
        kinds["warning"] = {"FLOWSVC_LOG_LEVEL": "WARNING"}
    per: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    try:
        for n in range(rounds):
            order = list(kinds) if n % 2 == 0 else list(reversed(kinds))
            for kind in order:
                env = dict(kinds[kind])
                if "FLOWSVC_METRICS_LISTEN" in env:
                    env["FLOWSVC_METRICS_LISTEN"] = f"127.0.0.1:{free_port()}"
                c = collector if kind == "telemetry" else None
                per[kind].append(w1_config(work, f"w1-{kind}-{n}", env, seconds, c))
    finally:
        if collector:
            collector.close()

    def summary(kind: str) -> dict[str, Any]:
        rows = per[kind]
        return {
            k: statistics.median(r[k] for r in rows)
            for k, v in rows[0].items()
            if isinstance(v, int | float)
        } | {"env": kinds[kind]}

    def ratio(kind: str, field: str) -> float:
        return statistics.median(
            r[field] / b[field] for r, b in zip(per[kind], per["base"], strict=True)
        )

    out: dict[str, Any] = {"rounds": per}
    out.update({k: summary(k) for k in kinds})
    if "telemetry" in kinds:
        out["telemetry_runs_ratio"] = ratio("telemetry", "runs_per_s")
        out["telemetry_cpu_ratio"] = ratio("telemetry", "cpu_ms_per_run")
    if "warning" in kinds:
        out["info_over_warning_cpu"] = 1 / ratio("warning", "cpu_ms_per_run")
        out["warning_runs_ratio"] = ratio("warning", "runs_per_s")
    return out


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
                    f"echo {w['echo_per_s']:.0f}/s, {w['cpu_ms_per_run']:.2f} ms CPU/run",
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
        bare, fast, paced = w3["bare"], w3["fast"], w3["paced"]
        rows.append(
            (
                f"W3 bare grpc.aio stream, 200 subscribers, {w3['event_bytes_mean']} B",
                f"{bare['delivered_per_s']:.0f} msgs/s",
                "",
                f"{bare['server_cpu_us_per_delivered']:.1f} us CPU/msg,"
                f" {bare['server_cores']:.2f} cores",
                "baseline",
            )
        )
        rows.append(
            (
                "W3 200 WatchSession, chain5 back to back",
                f"{fast['delivered_per_s']:.0f} events/s",
                f"delivery p50 {fast['p50_ms']:.1f} ms, p99 {fast['p99_ms']:.1f} ms",
                f"{fast['server_cpu_us_per_delivered']:.1f} us CPU/event,"
                f" {fast['driver_runs_per_s']:.0f} runs/s, cut off {fast['cut_off']}",
                f"{w3['efficiency']:.2f}x bare (target >= 0.70)",
            )
        )
        rows.append(
            (
                f"W3 paced {paced['driver_rate']:.1f} runs/s (0.25x bare)",
                f"{paced['delivered_per_s']:.0f} events/s",
                f"delivery p50 {paced['p50_ms']:.1f} ms, p99 {paced['p99_ms']:.1f} ms",
                f"{paced['server_cpu_us_per_delivered']:.1f} us CPU/event,"
                f" cut off {paced['cut_off']}, driver errors {paced['driver_errors']}",
                "p99 target < 50 ms",
            )
        )
        batched, batched_paced = w3["batched"], w3["batched_paced"]
        rows.append(
            (
                "W3 200 WatchSessionBatches, chain5 back to back",
                f"{batched['delivered_per_s']:.0f} events/s,"
                f" {batched['messages_per_s']:.0f} msgs/s",
                f"delivery p50 {batched['p50_ms']:.1f} ms, p99 {batched['p99_ms']:.1f} ms",
                f"{batched['server_cpu_us_per_delivered']:.1f} us CPU/event,"
                f" {batched['driver_runs_per_s']:.0f} runs/s, cut off {batched['cut_off']}",
                f"{w3['batched_efficiency']:.2f}x bare (target >= 0.70)",
            )
        )
        rows.append(
            (
                f"W3 batched, paced {batched_paced['driver_rate']:.1f} runs/s (as (c))",
                f"{batched_paced['delivered_per_s']:.0f} events/s,"
                f" {batched_paced['messages_per_s']:.0f} msgs/s",
                f"delivery p50 {batched_paced['p50_ms']:.1f} ms,"
                f" p99 {batched_paced['p99_ms']:.1f} ms",
                f"{batched_paced['server_cpu_us_per_delivered']:.1f} us CPU/event,"
                f" cut off {batched_paced['cut_off']},"
                f" driver errors {batched_paced['driver_errors']}",
                "p99 target < 50 ms",
            )
        )
    if r.get("w6"):
        w6r = r["w6"]
        for kind, label in (
            ("new", "new sessions"),
            ("short", "sessions of ~2-160 msgs"),
            ("long", "sessions of ~900 msgs"),
        ):
            w = w6r[kind]
            ratio = ""
            if kind == "long":
                ratio = (
                    f"{w6r['long_over_new']:.2f}x new, {w6r['long_over_short']:.2f}x short"
                    " (target <= 1.2)"
                )
            rows.append(
                (
                    f"W6 RunFlow chain5, 16 callers, {label}",
                    f"{w['runs_per_s']:.0f} runs/s",
                    f"p50 {w['p50_ms']:.2f} ms, p99 {w['p99_ms']:.2f} ms",
                    f"{w['cpu_ms_per_run']:.2f} ms CPU/run",
                    ratio,
                )
            )
    if r.get("wtel_wlog"):
        t = r["wtel_wlog"]
        labels = {
            "base": ("defaults (INFO, no metrics/tracing)", "baseline"),
            "telemetry": (
                "metrics + OTLP tracing on",
                f"{t.get('telemetry_runs_ratio', 0):.2f}x runs/s,"
                f" {t.get('telemetry_cpu_ratio', 0):.2f}x CPU (target runs >= 0.90)",
            ),
            "warning": (
                "log level WARNING",
                f"INFO/WARNING CPU {t.get('info_over_warning_cpu', 0):.3f}x (target <= 1.03)",
            ),
        }
        for kind, (label, ratio) in labels.items():
            if kind not in t:
                continue
            w = t[kind]
            rows.append(
                (
                    f"W1 16 callers, {label}",
                    f"{w['runs_per_s']:.0f} runs/s",
                    f"p50 {w['p50_ms']:.2f} ms, p99 {w['p99_ms']:.2f} ms",
                    f"{w['cpu_ms_per_run']:.2f} ms CPU/run",
                    ratio,
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
        idle = w4["idle_cpu_percent"]
        rows.append(
            (
                f"W4 idle server, 100 vs {w4['sessions']} sessions",
                f"{idle[0]:.1f} / {idle[1]:.1f} % of a core",
                "",
                "",
                f"{idle[1] / max(idle[0], 0.1):.2f}x",
            )
        )
    if r.get("w7"):
        w7r = r["w7"]
        labels = {
            "sqlite": (
                "SQLite, 1 server",
                f"{w7r['sqlite']['runs_per_s'] / w7r['echo16_per_s']:.3f}x echo16",
            ),
            "pg1": ("PostgreSQL, 1 replica", f"{w7r['pg1_over_sqlite']:.2f}x SQLite"),
            "pg2": ("PostgreSQL, 2 replicas (8+8)", f"{w7r['pg2_over_pg1']:.2f}x 1 replica"),
        }
        for kind, (label, ratio) in labels.items():
            w = w7r[kind]
            cost = f"flowsvc {w['flowsvc_cpu_ms_per_run']:.2f} ms CPU/run"
            if "pg_cpu_ms_per_run" in w:
                cost += (
                    f", PG {w['pg_cpu_ms_per_run']:.2f} ms CPU/run,"
                    f" {w['commits_per_run']:.1f} commits/run"
                    f" ({w['write_xacts_per_run']:.2f} writing,"
                    f" {w['wal_syncs_per_run']:.2f} fsyncs)"
                )
            rows.append(
                (
                    f"W7 W1 16 callers, {label}",
                    f"{w['runs_per_s']:.0f} runs/s",
                    f"p50 {w['p50_ms']:.2f} ms, p99 {w['p99_ms']:.2f} ms",
                    cost,
                    ratio,
                )
            )
        for t in w7r["takeover"].values():
            rows.append(
                (
                    f"W7 takeover after kill -9, lease {t['lease_seconds']:g} s",
                    f"{t.get('next_event_s', float('nan')):.2f} s to next event",
                    f"lease claimed {t.get('claim_s', float('nan')):.2f} s",
                    f"run completed {t.get('completed_s', float('nan')):.2f} s"
                    f" (step takes {t['slow_step_seconds']:g} s)",
                    f"median of {len(t['trials'])}",
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
