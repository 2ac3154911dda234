from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flowsvc.config import Settings
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


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    url = sqlite_url(tmp_path_factory.mktemp("db") / "flowsvc.db")
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
