"""TLS and mutual TLS over real gRPC, with a CA and certificates made here by `cryptography`.

Server with a certificate only: TLS clients that trust the CA are served, plaintext ones are
not. With a client CA: a client without a certificate, or with one from another CA, fails the
handshake; an accepted certificate's subject CN picks the role (mapped, else admin).
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rest_calls import add_infer_body, call
from served import status_of
from server_process import ServerProcess, run_cli, serve_fails, start_server
from tiny_models import add_config, add_constant_model, add_request, output_of, write_model

from trtserve.client import InferenceClient, InferenceServerError, InferInput, TlsConfig
from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import grpc_service_pb2_grpc as pb_grpc

TIMEOUT_S = 20.0
ADMIN_TOKEN = "admin-token-fedcba9876543210"


@dataclass(frozen=True)
class Identity:
    """A PEM certificate and its private key, and the files they were written to."""

    cert: bytes
    key: bytes
    cert_file: Path
    key_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(folder: Path, common_name: str) -> tuple[Identity, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return _write(folder, common_name, cert, key), key


def make_leaf(
    folder: Path,
    common_name: str,
    ca: Identity,
    ca_key: ec.EllipticCurvePrivateKey,
    server: bool,
) -> Identity:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    issuer = x509.load_pem_x509_certificate(ca.cert).subject
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return _write(folder, common_name, builder.sign(ca_key, hashes.SHA256()), key)


def _write(
    folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Identity:
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_file, key_file = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_file.write_bytes(cert_pem)
    key_file.write_bytes(key_pem)
    return Identity(cert_pem, key_pem, cert_file, key_file)


@dataclass(frozen=True)
class Pki:
    ca: Identity
    server: Identity
    reader: Identity  # CN mapped to infer
    operator: Identity  # CN not mapped: the default role, admin
    rogue: Identity  # signed by another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, ca_key = make_ca(folder, "trtserve-test-ca")
    other_ca, other_key = make_ca(folder, "someone-else-ca")
    return Pki(
        ca=ca,
        server=make_leaf(folder, "server", ca, ca_key, server=True),
        reader=make_leaf(folder, "reader", ca, ca_key, server=False),
        operator=make_leaf(folder, "operator", ca, ca_key, server=False),
        rogue=make_leaf(folder, "operator-rogue", other_ca, other_key, server=False),
    )


def serve(tmp: Path, args: Sequence[str]) -> Iterator[ServerProcess]:
    repository = tmp / "repository"
    write_model(repository, "add", 1, add_constant_model(1.0))
    process = start_server(["--repository", str(repository), *args], local_admin=False)
    try:
        yield process
    finally:
        assert process.terminate() == 0


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[ServerProcess]:
    args = ["--tls-cert", str(pki.server.cert_file), "--tls-key", str(pki.server.key_file)]
    yield from serve(tmp_path_factory.mktemp("tls"), args)


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("mtls")
    tokens = folder / "tokens"
    tokens.write_text(f"{ADMIN_TOKEN} admin\n")
    args = [
        "--tls-cert",
        str(pki.server.cert_file),
        "--tls-key",
        str(pki.server.key_file),
        "--tls-client-ca",
        str(pki.ca.cert_file),
        "--tls-client-roles",
        "reader=infer",
        "--auth-tokens-file",
        str(tokens),
    ]
    yield from serve(folder, args)


def tls_channel(address: str, pki: Pki, client: Identity | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert,
        private_key=client.key if client else None,
        certificate_chain=client.cert if client else None,
    )
    return grpc.secure_channel(
        address, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    )


def stub_of(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]


def infers(channel: grpc.Channel) -> None:
    request, x = add_request("add", rows=3)
    response = stub_of(channel).ModelInfer(request, timeout=TIMEOUT_S)
    np.testing.assert_array_equal(output_of(response), x + 1.0)


def load_call(
    channel: grpc.Channel, version: int, metadata: Sequence[tuple[str, str]] | None = None
) -> object:
    request = pb.RepositoryModelLoadRequest(model_name="add")
    request.parameters["config"].string_param = add_config("add")
    request.parameters[f"file:{version}/model.onnx"].bytes_param = add_constant_model(1.0)
    return lambda: stub_of(channel).RepositoryModelLoad(
        request, metadata=metadata, timeout=TIMEOUT_S
    )


# --- TLS, server certificate only -----------------------------------------------------------


def test_tls_client_is_served(tls_server: ServerProcess, pki: Pki) -> None:
    assert "(TLS)" in "".join(tls_server.output)
    with tls_channel(tls_server.address, pki) as channel:
        infers(channel)
        health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # TLS alone is no credential: admin calls stay refused.
        code, message = status_of(load_call(channel, 2))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "--tls-client-ca" in message


def test_plaintext_client_is_not_served_by_a_tls_server(tls_server: ServerProcess) -> None:
    with grpc.insecure_channel(tls_server.address) as channel:
        code, _ = status_of(lambda: stub_of(channel).ServerLive(pb.ServerLiveRequest(), timeout=5))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_client_that_does_not_trust_the_ca_refuses_the_server(
    tls_server: ServerProcess, pki: Pki
) -> None:
    untrusted = Pki(pki.rogue, pki.server, pki.reader, pki.operator, pki.rogue)
    with tls_channel(tls_server.address, untrusted) as channel:
        code, _ = status_of(lambda: stub_of(channel).ServerLive(pb.ServerLiveRequest(), timeout=5))
    assert code == grpc.StatusCode.UNAVAILABLE


# --- mutual TLS -----------------------------------------------------------------------------


@pytest.mark.parametrize("client", ["none", "rogue"])
def test_mtls_refuses_clients_without_an_accepted_certificate(
    mtls_server: ServerProcess, pki: Pki, client: str
) -> None:
    identity = None if client == "none" else pki.rogue
    with tls_channel(mtls_server.address, pki, identity) as channel:
        # Refused in the handshake: not even the open ServerLive (nor a token) gets through.
        metadata = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
        code, _ = status_of(
            lambda: stub_of(channel).ServerLive(
                pb.ServerLiveRequest(), metadata=metadata, timeout=5
            )
        )
    assert code == grpc.StatusCode.UNAVAILABLE


def test_mapped_common_name_gets_its_role(mtls_server: ServerProcess, pki: Pki) -> None:
    with tls_channel(mtls_server.address, pki, pki.reader) as channel:
        infers(channel)
        code, message = status_of(load_call(channel, 2))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "RepositoryModelLoad needs role 'admin', the caller has role 'infer'" in message


def test_unmapped_common_name_gets_admin(mtls_server: ServerProcess, pki: Pki) -> None:
    with tls_channel(mtls_server.address, pki, pki.operator) as channel:
        assert status_of(load_call(channel, 3)) == (grpc.StatusCode.OK, "")
        infers(channel)


def test_token_raises_a_certificate_role(mtls_server: ServerProcess, pki: Pki) -> None:
    with tls_channel(mtls_server.address, pki, pki.reader) as channel:
        metadata = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
        assert status_of(load_call(channel, 4, metadata)) == (grpc.StatusCode.OK, "")


# --- trtserve's own client and commands -----------------------------------------------------


def our_tls(pki: Pki, client: Identity | None = None) -> TlsConfig:
    return TlsConfig(
        ca=pki.ca.cert,
        cert=client.cert if client else None,
        key=client.key if client else None,
        server_name="localhost",
    )


def test_our_client_infers_over_tls(tls_server: ServerProcess, pki: Pki) -> None:
    x = np.arange(3 * 4, dtype=np.float32).reshape(3, 4)
    with InferenceClient(tls_server.address, timeout=TIMEOUT_S, tls=our_tls(pki)) as client:
        result = client.infer("add", [InferInput("X", x)])
    np.testing.assert_array_equal(result.as_numpy("Y"), x + 1.0)


def test_our_client_presents_its_certificate_for_mutual_tls(
    mtls_server: ServerProcess, pki: Pki
) -> None:
    files = {"5/model.onnx": add_constant_model(1.0)}
    tls = our_tls(pki, pki.operator)
    with InferenceClient(mtls_server.address, timeout=TIMEOUT_S, tls=tls) as client:
        client.load_model("add", config=add_config("add"), files=files)
        assert client.model_ready("add")
    reader = InferenceClient(mtls_server.address, timeout=TIMEOUT_S, tls=our_tls(pki, pki.reader))
    with reader, pytest.raises(InferenceServerError) as raised:
        reader.load_model("add", config=add_config("add"), files=files)
    assert raised.value.code == grpc.StatusCode.PERMISSION_DENIED
    anonymous = InferenceClient(mtls_server.address, timeout=5, tls=our_tls(pki))
    with anonymous, pytest.raises(InferenceServerError) as raised:
        anonymous.server_live()
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE


def test_commands_infer_and_bench_over_tls(tls_server: ServerProcess, pki: Pki) -> None:
    tls = ["--tls-ca", str(pki.ca.cert_file), "--tls-server-name", "localhost"]
    address = ["--address", tls_server.address]
    done = run_cli("infer", "add", *address, *tls, "--json")
    assert done.returncode == 0, done.stderr
    # Two load processes: the TLS settings travel to each.
    done = run_cli("bench", "add", *address, *tls, "--requests", "40", "--processes", "2")
    assert done.returncode == 0, done.stderr
    done = run_cli("bench", "add", *address, *tls, "--requests", "40", "--json", "--no-progress")
    assert done.returncode == 0 and '"count": 40' in done.stdout, done.stdout + done.stderr
    plaintext = run_cli("infer", "add", *address, "--timeout", "5")
    assert plaintext.returncode == 1, plaintext.stdout + plaintext.stderr


def test_unreadable_tls_file_is_a_usage_error(tmp_path: Path) -> None:
    done = run_cli("models", "list", "--tls-ca", str(tmp_path / "missing.pem"))
    assert done.returncode == 2
    assert f"tls CA file {tmp_path / 'missing.pem'}" in done.stderr


def test_certificate_without_key_is_refused() -> None:
    with pytest.raises(ValueError, match="a client cert needs its key too"):
        TlsConfig(cert=b"pem")


# --- configuration errors -------------------------------------------------------------------


def test_certificate_without_key_stops_the_start(pki: Pki) -> None:
    output = serve_fails(["--tls-cert", str(pki.server.cert_file)])
    assert "tls_cert and tls_key: expected both or neither" in output


def test_client_ca_without_server_certificate_stops_the_start(pki: Pki) -> None:
    output = serve_fails(["--tls-client-ca", str(pki.ca.cert_file)])
    assert "tls_client_ca" in output and "tls_cert" in output


def test_file_that_is_not_pem_stops_the_start(pki: Pki, tmp_path: Path) -> None:
    bogus = tmp_path / "server.key"
    bogus.write_bytes(b"not a key")
    output = serve_fails(["--tls-cert", str(pki.server.cert_file), "--tls-key", str(bogus)])
    assert "setting tls_key: expected PEM text" in output


def test_key_of_another_certificate_stops_the_start(pki: Pki) -> None:
    output = serve_fails(
        ["--tls-cert", str(pki.server.cert_file), "--tls-key", str(pki.reader.key_file)]
    )
    assert "expected the key of the certificate CN=server" in output


def test_bad_client_role_mapping_stops_the_start(pki: Pki) -> None:
    args = [
        "--tls-cert",
        str(pki.server.cert_file),
        "--tls-key",
        str(pki.server.key_file),
        "--tls-client-ca",
        str(pki.ca.cert_file),
        "--tls-client-roles",
        "reader=root",
    ]
    assert "expected role 'infer' or 'admin', received 'root'" in serve_fails(args)


# --- the same certificates on the REST port -------------------------------------------------


def https_context(pki: Pki, client: Identity | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=pki.ca.cert.decode())
    if client is not None:
        context.load_cert_chain(client.cert_file, client.key_file)
    return context


def test_rest_serves_https_with_the_server_certificate(tls_server: ServerProcess, pki: Pki) -> None:
    address = f"localhost:{tls_server.http_port}"
    answer = call(address, "POST", "/v2/models/add/infer", add_infer_body(), tls=https_context(pki))
    assert answer.status == 200, answer.body
    assert answer.json()["outputs"][0]["data"] == [1.0, 2.0, 3.0, 4.0]
    # Plain HTTP to the TLS port gets no answer.
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        call(address, "GET", "/v2/health/ready")


def test_rest_maps_client_certificates_to_roles(mtls_server: ServerProcess, pki: Pki) -> None:
    address = f"localhost:{mtls_server.http_port}"
    load = "/v2/repository/models/add/load"
    reader = https_context(pki, pki.reader)
    assert call(address, "POST", "/v2/models/add/infer", add_infer_body(), tls=reader).status == 200
    denied = call(address, "POST", load, tls=reader)
    assert denied.status == 403 and "the caller has role 'infer'" in denied.error
    assert call(address, "POST", load, tls=https_context(pki, pki.operator)).status == 200
    # No certificate, or one another CA signed: the handshake fails before any request.
    for context in (https_context(pki), https_context(pki, pki.rogue)):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            call(address, "GET", "/v2/health/ready", tls=context)
