"""TLS for HTTP and gRPC from PEM files, optionally with client certificates (mTLS), over real
loopback connections with certificates made here; plain connections to a TLS port fail."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from router.cli import DEFAULTS
from router.config import RouterConfig, RouterConfigError
from router.proto import tierserve_pb2 as pb
from router.proto import tierserve_pb2_grpc as pb_grpc
from tests.router.conftest import serve

REQUEST = pb.GenerateRequest(text="Hello", sampling=pb.SamplingParams(max_tokens=2))


def issue(name: str, signer: tuple | None, out: Path, *, ca: bool = False, usage=None) -> tuple:
    """A key and certificate for ``name`` signed by ``signer`` (key, cert) or self-signed; PEM files in ``out``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_key, issuer = signer if signer else (key, subject)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer if isinstance(issuer, x509.Name) else issuer.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    (out / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    (out / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    ca = issue("ca", None, out, ca=True)
    issue("server", ca, out, usage=ExtendedKeyUsageOID.SERVER_AUTH)
    issue("client", ca, out, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    issue("stranger", issue("other-ca", None, out, ca=True), out, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return out


@pytest.fixture(scope="module")
def tls_router(tiny_model, pki):
    yield from serve(tiny_model, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"))


@pytest.fixture(scope="module")
def mtls_router(tiny_model, pki):
    yield from serve(tiny_model, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"),
                     tls_client_ca=str(pki / "ca.pem"))


def https(pki: Path, client: str | None = None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if client:
        context.load_cert_chain(str(pki / f"{client}.pem"), str(pki / f"{client}.key"))
    return httpx.Client(verify=context, timeout=30)


def grpc_credentials(pki: Path, client: str | None = None) -> grpc.ChannelCredentials:
    chain = {"private_key": (pki / f"{client}.key").read_bytes(),
             "certificate_chain": (pki / f"{client}.pem").read_bytes()} if client else {}
    return grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes(), **chain)


def test_https_and_grpc_over_tls(tls_router, pki):
    port = tls_router.router.http_port
    with https(pki) as client:
        assert client.get(f"https://127.0.0.1:{port}/v1/models").status_code == 200
    with grpc.secure_channel(tls_router.grpc_target, grpc_credentials(pki)) as channel:
        assert len(pb_grpc.GenerationStub(channel).Generate(REQUEST, timeout=30).token_ids) == 2


def test_plain_connections_to_tls_ports_fail(tls_router):
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls_router.router.http_port}/health", timeout=10)
    with grpc.insecure_channel(tls_router.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.GenerationStub(channel).Generate(REQUEST, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("client", [None, "stranger"])
def test_mtls_refuses_clients_without_a_trusted_certificate(mtls_router, pki, client):
    with https(pki, client) as http, pytest.raises(httpx.TransportError):
        http.get(f"https://127.0.0.1:{mtls_router.router.http_port}/health")
    with grpc.secure_channel(mtls_router.grpc_target, grpc_credentials(pki, client)) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.GenerationStub(channel).Generate(REQUEST, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_serves_clients_with_a_certificate(mtls_router, pki):
    with https(pki, "client") as http:
        assert http.get(f"https://127.0.0.1:{mtls_router.router.http_port}/v1/models").status_code == 200
    with grpc.secure_channel(mtls_router.grpc_target, grpc_credentials(pki, "client")) as channel:
        assert len(pb_grpc.GenerationStub(channel).Generate(REQUEST, timeout=30).token_ids) == 2


def test_listeners_default_to_loopback_and_tls_options_are_checked(pki):
    assert RouterConfig().host == DEFAULTS.host == "127.0.0.1"
    for kwargs, message in [({"tls_cert": str(pki / "server.pem")}, "together"),
                            ({"tls_client_ca": str(pki / "ca.pem")}, "tls_client_ca needs"),
                            ({"tls_cert": str(pki / "nope.pem"), "tls_key": str(pki / "server.key")}, "tls_cert")]:
        with pytest.raises(RouterConfigError, match=message):
            RouterConfig(**kwargs)
