from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from flowsvc.config import Settings
from tests import postgres
from tests.harness import Client, InProcessServer, bearer, connect, mint_key, sqlite_url


@dataclass
class Deployment:
    """A running server with one key for each of two organisations."""

    server: InProcessServer
    database_url: str
    acme_key: str
    globex_key: str

    @property
    def address(self) -> str:
        return self.server.address


@contextmanager
def database_for(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[str]:
    if backend == "postgresql":
        with postgres.fresh_database() as url:
            yield url
    else:
        yield sqlite_url(tmp_path_factory.mktemp("db") / "flowsvc.db")


# Modules whose tests run on both backends: the whole API, as a client sees it, on PostgreSQL
# too. The rest run on SQLite (the default); PostgreSQL-only suites (store contract, replicas)
# choose their database themselves.
BOTH_BACKENDS = {
    "test_runs",
    "test_streams",
    "test_stream_batches",
    "test_live_flows",
    "test_evals",
    "test_tenancy",
    "test_models",
    "test_limits",
    "test_expiry",
    "test_forks",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        module = metafunc.module.__name__.rsplit(".", 1)[-1]
        both = module in BOTH_BACKENDS or os.environ.get("FLOWSVC_TEST_BACKEND") == "both"
        metafunc.parametrize(
            "backend", ["sqlite", "postgresql"] if both else ["sqlite"], scope="module"
        )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[Deployment]:
    with database_for(tmp_path_factory, backend) as url:
        server = InProcessServer(Settings(listen="127.0.0.1:0", database_url=url))
        try:
            yield Deployment(server, url, mint_key(url, "acme"), mint_key(url, "globex"))
        finally:
            server.stop()


@pytest.fixture(scope="module")
def client(deployment: Deployment) -> Iterator[Client]:
    """A client of organisation acme."""
    c = connect(deployment.address, bearer(deployment.acme_key))
    yield c
    c.close()


@pytest.fixture(scope="module")
def other_org(deployment: Deployment) -> Iterator[Client]:
    """A client of organisation globex."""
    c = connect(deployment.address, bearer(deployment.globex_key))
    yield c
    c.close()


@pytest.fixture(scope="module")
def anonymous(deployment: Deployment) -> Iterator[Client]:
    c = connect(deployment.address)
    yield c
    c.close()


@pytest.fixture
def examples() -> Path:
    return Path(__file__).resolve().parent.parent / "examples"


def pytest_report_header() -> str:
    from tests import postgres

    if postgres.reachable():
        return f"postgresql: {postgres.ADMIN.rsplit('@', 1)[-1]} (PostgreSQL tests run)"
    return f"postgresql: {postgres.SKIP_REASON}: the PostgreSQL tests skip"
