"""Optional TLS and mutual TLS (plaintext stays the loopback default)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import trustme

from flowsvc.config import Settings
from flowsvc.v1 import live_flow_service_pb2_grpc as lf_grpc
from tests.graphs import create_request
from tests.harness import InProcessServer, mint_key, sqlite_url


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _files(tmp: Path, ca: trustme.CA) -> tuple[Path, Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key, root = tmp / "chain.pem", tmp / "key.pem", tmp / "ca.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    root.write_bytes(ca.cert_pem.bytes())
    return chain, key, root


def _server(tmp: Path, ca: trustme.CA, mutual: bool) -> Iterator[tuple[InProcessServer, str, Path]]:
    chain, key, root = _files(tmp, ca)
    url = sqlite_url(tmp / "db.sqlite")
    server = InProcessServer(
        Settings(
            listen="127.0.0.1:0",
            database_url=url,
            tls_cert_file=str(chain),
            tls_key_file=str(key),
            tls_client_ca_file=str(root) if mutual else "",
        )
    )
    yield server, mint_key(url, "acme"), root
    server.stop()


@pytest.fixture
def tls_server(tmp_path: Path, ca: trustme.CA) -> Iterator[tuple[InProcessServer, str, Path]]:
    yield from _server(tmp_path, ca, mutual=False)


@pytest.fixture
def mtls_server(tmp_path: Path, ca: trustme.CA) -> Iterator[tuple[InProcessServer, str, Path]]:
    yield from _server(tmp_path, ca, mutual=True)


def _create(channel: grpc.Channel, key: str) -> str:
    """A flow made over the channel: its organisation, which only a served call can give."""
    flow = lf_grpc.LiveFlowServiceStub(channel).CreateLiveFlow(
        create_request(), metadata=(("api-key", key),), timeout=10
    )
    return flow.organisation_id


def test_tls_client_that_trusts_the_ca_is_served(
    tls_server: tuple[InProcessServer, str, Path],
) -> None:
    server, key, root = tls_server
    creds = grpc.ssl_channel_credentials(root_certificates=root.read_bytes())
    with grpc.secure_channel(server.address, creds) as channel:
        assert _create(channel, key) == "acme"


def test_plaintext_client_cannot_talk_to_a_tls_server(
    tls_server: tuple[InProcessServer, str, Path],
) -> None:
    server, key, _ = tls_server
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as info:
        _create(channel, key)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_a_client_without_a_certificate(
    mtls_server: tuple[InProcessServer, str, Path],
) -> None:
    server, key, root = mtls_server
    creds = grpc.ssl_channel_credentials(root_certificates=root.read_bytes())
    with (
        grpc.secure_channel(server.address, creds) as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        _create(channel, key)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_serves_a_client_with_a_certificate(
    mtls_server: tuple[InProcessServer, str, Path], ca: trustme.CA
) -> None:
    server, key, root = mtls_server
    client_cert = ca.issue_cert("flowsvc-client")
    creds = grpc.ssl_channel_credentials(
        root_certificates=root.read_bytes(),
        private_key=client_cert.private_key_pem.bytes(),
        certificate_chain=b"".join(b.bytes() for b in client_cert.cert_chain_pems),
    )
    with grpc.secure_channel(server.address, creds) as channel:
        assert _create(channel, key) == "acme"
