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
from slow_model import SlowModel  # noqa: E402

ROOT = HERE.parent
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process from /proc/PID/stat (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of stat(5)


def postgres_cpu() -> dict[int, float]:
    """CPU seconds of every process whose comm starts with 'postgres', by pid."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().startswith("postgres"):
                    out[int(entry.name)] = cpu_seconds(int(entry.name))
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
    out = subprocess.run(args, check=True, capture_output=True, text=True, cwd=ROOT)
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
    parser.add_argument(
        "--takeover-trials", type=int, default=3, help="W7 kill -9 trials per lease setting"
    )
    args = parser.parse_args()
    results: dict[str, Any] = {"seconds": args.seconds, "rounds": args.rounds}
    work = Path(tempfile.mkdtemp(prefix="flowsvc-bench-"))
    chosen = {w.strip() for w in args.only.split(",") if w.strip()} or {
        "w1",
        "w2",
        "w3",
        "w4",
        "w5",
        "w7",
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

    # W3: one session running chain5 back to back, 200 subscribers following it.
    if "w3" in chosen:
        results["w3"] = w3(server, key, chain, args.seconds)
    server.stop()

    # W4: reads against an almost empty store, then with 100,000 sessions stored.
    if "w4" in chosen:
        results["w4"] = w4(work, args.sessions, args.seconds)
    echo.stop()

    Path(args.out).write_text(json.dumps(results, indent=2, default=float))
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
