"""Access control over real gRPC: bearer tokens, roles, the default without credentials.

Default (no tokens, no mutual TLS): inference and metadata are open to everyone, load, unload
and upload are refused with PERMISSION_DENIED and a message saying how to enable them; with
--insecure-local-admin they are open and the server binds to 127.0.0.1 only. Health checks,
reflection, ServerLive and ServerReady are open in every mode.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest
import rest_calls
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from rest_calls import Answer, add_infer_body, bearer
from served import Served, serving, status_of
from server_process import serve_fails, start_server
from tiny_models import add_config, add_constant_model, add_request, output_of, tree, write_model

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.protocol import trtserve_pb2 as tpb
from trtserve.server.api import auth
from trtserve.server.api.auth import Role, TokenFile

INFER_TOKEN = "infer-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-fedcba9876543210"
TIMEOUT_S = 20.0
Metadata = Sequence[tuple[str, str]]


def metadata_bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def serve(
    tmp: Path, args: Sequence[str], local_admin: bool = False, host: str | None = "127.0.0.1"
) -> Generator[Served, None, None]:
    repository = tmp / "repository"
    write_model(repository, "add", 1, add_constant_model(1.0))
    process = start_server(
        ["--repository", str(repository), *args], local_admin=local_admin, host=host
    )
    with serving(process, repository) as served:
        yield served


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    path.write_text(f"# token role\n{INFER_TOKEN} infer\n\n{ADMIN_TOKEN}   admin\n")
    return path


@pytest.fixture(scope="module")
def with_tokens(tmp_path_factory: pytest.TempPathFactory, token_file: Path) -> Iterator[Served]:
    yield from serve(
        tmp_path_factory.mktemp("tokens-server"), ["--auth-tokens-file", str(token_file)]
    )


@pytest.fixture(scope="module")
def no_credentials(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(tmp_path_factory.mktemp("default-server"), [])


def infer(served: Served, metadata: Metadata | None, name: str = "add") -> object:
    request, _ = add_request(name)
    return lambda: served.stub.ModelInfer(request, metadata=metadata, timeout=TIMEOUT_S)


def upload_messages(name: str, data: bytes) -> list[tpb.UploadRequest]:
    header = tpb.UploadHeader(
        model_name=name,
        version=1,
        filename="model.onnx",
        total_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        config_json=add_config(name),
    )
    chunks = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    return [tpb.UploadRequest(header=header), *(tpb.UploadRequest(data=c) for c in chunks)]


def admin_calls(served: Served, metadata: Metadata | None, name: str) -> dict[str, object]:
    """Each admin RPC, as a zero-argument call."""
    data = add_constant_model(5.0)
    load = pb.RepositoryModelLoadRequest(model_name=name)
    load.parameters["config"].string_param = add_config(name)
    load.parameters["file:1/model.onnx"].bytes_param = data
    return {
        "RepositoryModelLoad": lambda: served.stub.RepositoryModelLoad(
            load, metadata=metadata, timeout=TIMEOUT_S
        ),
        "RepositoryModelUnload": lambda: served.stub.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="add"), metadata=metadata, timeout=TIMEOUT_S
        ),
        "UploadModel": lambda: served.uploads.UploadModel(
            iter(upload_messages(name, data)), metadata=metadata, timeout=TIMEOUT_S
        ),
    }


def assert_open_endpoints(served: Served) -> None:
    health = health_pb2_grpc.HealthStub(served.channel)  # type: ignore[no-untyped-call]
    # The server's health, by "" and by Triton's name for it, answers callers without tokens.
    for service in ("", "inference.GRPCInferenceService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    assert served.stub.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT_S).live
    assert served.stub.ServerReady(pb.ServerReadyRequest(), timeout=TIMEOUT_S).ready
    reflection = reflection_pb2_grpc.ServerReflectionStub(served.channel)  # type: ignore[no-untyped-call]
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    (answer,) = list(reflection.ServerReflectionInfo(iter([ask]), timeout=TIMEOUT_S))
    names = {s.name for s in answer.list_services_response.service}
    assert "inference.GRPCInferenceService" in names


# --- bearer tokens --------------------------------------------------------------------------


def test_without_a_token_every_protected_call_is_unauthenticated(with_tokens: Served) -> None:
    code, message = status_of(infer(with_tokens, None))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "ModelInfer" in message and "'infer'" in message and "Bearer" in message
    for method, call in admin_calls(with_tokens, None, "never_stored").items():
        code, message = status_of(call)
        assert code == grpc.StatusCode.UNAUTHENTICATED, (method, code, message)
        assert method in message and "'admin'" in message
    assert not (with_tokens.repository / "never_stored").exists()


@pytest.mark.parametrize(
    "metadata",
    [
        metadata_bearer("infer-token-0123456789abcdeX"),  # one character off
        metadata_bearer(INFER_TOKEN[:-1]),
        metadata_bearer(""),
        (("authorization", f"Basic {INFER_TOKEN}"),),
        (("authorization", INFER_TOKEN),),
        (*metadata_bearer(INFER_TOKEN), *metadata_bearer(ADMIN_TOKEN)),
    ],
    ids=["wrong", "prefix", "empty", "basic-scheme", "no-scheme", "two-headers"],
)
def test_a_bad_token_is_unauthenticated(with_tokens: Served, metadata: Metadata) -> None:
    code, message = status_of(infer(with_tokens, metadata))
    assert code == grpc.StatusCode.UNAUTHENTICATED, (code, message)
    assert "ModelInfer" in message
    assert INFER_TOKEN not in message and ADMIN_TOKEN not in message


def test_infer_token_runs_inference_and_reads_metadata(with_tokens: Served) -> None:
    request, x = add_request("add", rows=2)
    response = with_tokens.stub.ModelInfer(
        request, metadata=metadata_bearer(INFER_TOKEN), timeout=TIMEOUT_S
    )
    np.testing.assert_array_equal(output_of(response), x + 1.0)
    stream = with_tokens.stub.ModelStreamInfer(
        iter([request, request]), metadata=metadata_bearer(INFER_TOKEN), timeout=TIMEOUT_S
    )
    replies = list(stream)
    assert [r.error_message for r in replies] == ["", ""]
    meta = with_tokens.stub.ModelMetadata(
        pb.ModelMetadataRequest(name="add"),
        metadata=metadata_bearer(INFER_TOKEN),
        timeout=TIMEOUT_S,
    )
    assert meta.name == "add"
    index = with_tokens.stub.RepositoryIndex(
        pb.RepositoryIndexRequest(), metadata=metadata_bearer(INFER_TOKEN), timeout=TIMEOUT_S
    )
    assert [m.name for m in index.models] == ["add"]


def test_infer_token_cannot_load_unload_or_upload(with_tokens: Served) -> None:
    before = tree(with_tokens.repository)
    for method, call in admin_calls(
        with_tokens, metadata_bearer(INFER_TOKEN), "infer_upload"
    ).items():
        code, message = status_of(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED, (method, code, message)
        assert method in message and "needs role 'admin'" in message
        assert "has role 'infer'" in message
    assert tree(with_tokens.repository) == before
    code, _ = status_of(infer(with_tokens, metadata_bearer(INFER_TOKEN)))
    assert code == grpc.StatusCode.OK  # the refused unload did not unload


def test_admin_token_loads_uploads_and_unloads(with_tokens: Served) -> None:
    calls = admin_calls(with_tokens, metadata_bearer(ADMIN_TOKEN), "admin_upload")
    assert status_of(calls["UploadModel"]) == (grpc.StatusCode.OK, "")
    stored = with_tokens.repository / "admin_upload" / "1" / "model.onnx"
    assert stored.read_bytes() == add_constant_model(5.0)
    request, x = add_request("admin_upload")
    response = with_tokens.stub.ModelInfer(
        request, metadata=metadata_bearer(INFER_TOKEN), timeout=TIMEOUT_S
    )
    np.testing.assert_array_equal(output_of(response), x + 5.0)
    calls = admin_calls(with_tokens, metadata_bearer(ADMIN_TOKEN), "admin_load")
    assert status_of(calls["RepositoryModelLoad"]) == (grpc.StatusCode.OK, "")
    assert status_of(calls["RepositoryModelUnload"]) == (grpc.StatusCode.OK, "")
    code, message = status_of(
        infer(with_tokens, metadata_bearer(ADMIN_TOKEN))
    )  # admin may infer too
    assert code == grpc.StatusCode.UNAVAILABLE and "unloaded" in message
    reload = pb.RepositoryModelLoadRequest(model_name="add")
    with_tokens.stub.RepositoryModelLoad(
        reload, metadata=metadata_bearer(ADMIN_TOKEN), timeout=TIMEOUT_S
    )
    assert status_of(infer(with_tokens, metadata_bearer(ADMIN_TOKEN)))[0] == grpc.StatusCode.OK


def test_health_reflection_and_liveness_stay_open_with_tokens(with_tokens: Served) -> None:
    assert_open_endpoints(with_tokens)


def health_of(served: Served, service: str, metadata: Metadata | None = None) -> object:
    health = health_pb2_grpc.HealthStub(served.channel)  # type: ignore[no-untyped-call]
    request = health_pb2.HealthCheckRequest(service=service)
    return lambda: health.Check(request, metadata=metadata, timeout=TIMEOUT_S)


def test_model_health_needs_a_token_and_does_not_tell_which_models_exist(
    with_tokens: Served,
) -> None:
    known = status_of(health_of(with_tokens, "add"))
    unknown = status_of(health_of(with_tokens, "no_such_model"))
    assert known[0] == unknown[0] == grpc.StatusCode.UNAUTHENTICATED
    assert known[1] == unknown[1] and "'infer'" in known[1] and "Bearer" in known[1]
    bad = status_of(health_of(with_tokens, "add", metadata_bearer("x" * 20)))
    assert bad[0] == grpc.StatusCode.UNAUTHENTICATED
    health = health_pb2_grpc.HealthStub(with_tokens.channel)  # type: ignore[no-untyped-call]
    watch = health.Watch(health_pb2.HealthCheckRequest(service="add"), timeout=TIMEOUT_S)
    assert status_of(lambda: next(watch))[0] == grpc.StatusCode.UNAUTHENTICATED
    # With a token, the answers are grpc's own; the overall service needs none.
    assert status_of(health_of(with_tokens, "add", metadata_bearer(INFER_TOKEN))) == (
        grpc.StatusCode.OK,
        "",
    )
    assert (
        status_of(health_of(with_tokens, "no_such_model", metadata_bearer(INFER_TOKEN)))[0]
        == grpc.StatusCode.NOT_FOUND
    )
    assert status_of(health_of(with_tokens, "")) == (grpc.StatusCode.OK, "")


def test_metrics_listen_on_loopback_when_tokens_are_on(tmp_path: Path, token_file: Path) -> None:
    args = ["--host", "0.0.0.0", "--auth-tokens-file", str(token_file)]
    guarded = start_server(args, local_admin=False)
    try:
        assert listening_addresses(guarded.metrics_port) == {ipaddress.ip_address("127.0.0.1")}
        assert listening_addresses(guarded.grpc_port) & {
            ipaddress.ip_address("0.0.0.0"),
            ipaddress.ip_address("::"),
        }
        assert any("metrics on 127.0.0.1" in line for line in guarded.output)
    finally:
        assert guarded.terminate() == 0


# --- no credentials configured --------------------------------------------------------------


def test_default_opens_inference_and_refuses_admin_calls(no_credentials: Served) -> None:
    request, x = add_request("add")
    np.testing.assert_array_equal(
        output_of(no_credentials.stub.ModelInfer(request, timeout=TIMEOUT_S)), x + 1.0
    )
    assert no_credentials.stub.ModelMetadata(pb.ModelMetadataRequest(name="add")).name == "add"
    before = tree(no_credentials.repository)
    for method, call in admin_calls(no_credentials, None, "default_upload").items():
        code, message = status_of(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED, (method, code, message)
        assert method in message and "'admin'" in message
        for how in ("--auth-tokens-file", "--tls-client-ca", "--insecure-local-admin"):
            assert how in message, (how, message)
    assert tree(no_credentials.repository) == before
    assert_open_endpoints(no_credentials)


def test_default_leaves_model_health_open(no_credentials: Served) -> None:
    assert status_of(health_of(no_credentials, "add")) == (grpc.StatusCode.OK, "")


def test_default_ignores_tokens_it_was_not_given(no_credentials: Served) -> None:
    load = admin_calls(no_credentials, metadata_bearer(ADMIN_TOKEN), "default_upload")[
        "RepositoryModelLoad"
    ]
    assert status_of(load)[0] == grpc.StatusCode.PERMISSION_DENIED


# --- refused before the message is read ------------------------------------------------------

LOAD_METHOD = "/inference.GRPCInferenceService/RepositoryModelLoad"
REFUSED_CALLS = 8
REFUSED_MIB = 40


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise KeyError("VmRSS")


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("with_tokens", grpc.StatusCode.UNAUTHENTICATED),
        ("no_credentials", grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_large_refused_loads_are_not_held_by_the_server(
    request: pytest.FixtureRequest, fixture: str, expected: grpc.StatusCode
) -> None:
    served: Served = request.getfixturevalue(fixture)
    load = pb.RepositoryModelLoadRequest(model_name="refused_large")
    load.parameters["file:1/model.onnx"].bytes_param = b"\0" * (REFUSED_MIB << 20)
    data = load.SerializeToString()
    before = rss_mib(served.process.process.pid)
    with grpc.insecure_channel(
        served.process.address, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        call = channel.unary_unary(LOAD_METHOD)
        futures = [call.future(data, timeout=TIMEOUT_S) for _ in range(REFUSED_CALLS)]
        codes = {status_of(f.result)[0] for f in futures}
    assert codes == {expected}
    # Read and parsed, each message would cost the server at least its own size (320 MiB in
    # all); refused before reading, about the flow-control windows of the calls.
    grown = rss_mib(served.process.process.pid) - before
    assert grown < REFUSED_CALLS * REFUSED_MIB / 4, f"server RSS grew {grown:.0f} MiB"
    assert not (served.repository / "refused_large").exists()


def test_a_checked_unary_call_without_its_message_is_invalid(with_tokens: Served) -> None:
    call = with_tokens.channel.stream_unary(LOAD_METHOD)
    code, message = status_of(
        lambda: call(iter([]), metadata=metadata_bearer(ADMIN_TOKEN), timeout=5)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected one request message, received none" in message


def listening_addresses(port: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Local addresses listening on TCP `port`, read from /proc/net/tcp and tcp6."""
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                hex_address, hex_port = fields[1].split(":")
                if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                    continue
                # The kernel prints each 32-bit word in host (little-endian) order.
                raw = b"".join(
                    bytes.fromhex(hex_address[i : i + 8])[::-1]
                    for i in range(0, len(hex_address), 8)
                )
                address = ipaddress.ip_address(raw)
                if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                    found.add(address.ipv4_mapped)
                else:
                    found.add(address)
    return found


def test_insecure_local_admin_allows_admin_and_binds_loopback(tmp_path: Path) -> None:
    # No --host: every interface normally, this machine only with --insecure-local-admin
    # (which refuses any other host: tests/test_serve_start.py).
    served_iter = serve(tmp_path, [], local_admin=True, host=None)
    served = next(served_iter)
    try:
        assert "serving gRPC on 127.0.0.1:" in "".join(served.process.output)
        loopback = {ipaddress.ip_address("127.0.0.1")}
        assert listening_addresses(served.process.grpc_port) == loopback
        assert listening_addresses(served.process.metrics_port) == loopback
        for method, call in admin_calls(served, None, "local_upload").items():
            assert status_of(call) == (grpc.StatusCode.OK, ""), method
    finally:
        served_iter.close()


# --- start-up refusals ----------------------------------------------------------------------


def test_insecure_local_admin_cannot_be_combined_with_tokens(token_file: Path) -> None:
    output = serve_fails(["--insecure-local-admin", "--auth-tokens-file", str(token_file)])
    assert "insecure_local_admin" in output and "auth_tokens_file" in output


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("short-token admin\n", "line 1: expected a token of at least 16 characters"),
        (f"{ADMIN_TOKEN} root\n", "line 1: expected role 'infer' or 'admin', received 'root'"),
        (f"# comment\n{ADMIN_TOKEN}\n", "line 2: expected 'TOKEN ROLE' (two fields)"),
        ("# nothing\n", "expected at least one 'TOKEN ROLE' line"),
        (f"{ADMIN_TOKEN} admin\n{ADMIN_TOKEN} infer\n", "line 2: this token was given another"),
    ],
    ids=["short", "role", "fields", "empty", "two-roles"],
)
def test_bad_token_file_stops_the_start(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(content)
    output = serve_fails(["--auth-tokens-file", str(path)])
    assert expected in output
    assert ADMIN_TOKEN not in output and "short-token" not in output


def test_missing_token_file_stops_the_start(tmp_path: Path) -> None:
    output = serve_fails(["--auth-tokens-file", str(tmp_path / "absent")])
    assert "auth_tokens_file" in output and "absent" in output


# --- the policy itself ----------------------------------------------------------------------


def test_every_rpc_of_the_services_is_classified() -> None:
    from trtserve.protocol import grpc_service_pb2, trtserve_pb2

    classified = auth.OPEN_METHODS | auth.INFER_METHODS | auth.ADMIN_METHODS
    for module, service in (
        (grpc_service_pb2, "GRPCInferenceService"),
        (trtserve_pb2, "ModelUpload"),
    ):
        descriptor = module.DESCRIPTOR.services_by_name[service]
        for method in descriptor.methods:
            assert f"/{descriptor.full_name}/{method.name}" in classified, method.name
    assert auth.required_role("/inference.GRPCInferenceService/SomethingNew") == Role.ADMIN
    assert auth.required_role("/grpc.health.v1.Health/Watch") is None


def rotate(path: Path, text: str) -> None:
    """Replace the file as a secret rotation does: a new file renamed over the old one."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(text)
    os.replace(fresh, path)


def test_token_file_is_reread_when_rotated(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{INFER_TOKEN} infer\n")
    tokens = TokenFile(path, recheck_s=0.0)
    assert tokens.role_of(INFER_TOKEN) == Role.INFER
    assert tokens.role_of(ADMIN_TOKEN) is None
    rotate(path, f"{ADMIN_TOKEN} admin\n")
    assert tokens.role_of(ADMIN_TOKEN) == Role.ADMIN
    assert tokens.role_of(INFER_TOKEN) is None
    rotate(path, "half-written")  # a broken rotation keeps the tokens that worked
    assert tokens.role_of(ADMIN_TOKEN) == Role.ADMIN


# --- the same policy over REST ---------------------------------------------------------------


def rest(served: Served, method: str, path: str, token: str | None = None) -> Answer:
    body = add_infer_body() if path.endswith("/infer") else None
    headers = bearer(token) if token else None
    return rest_calls.call(served.process.http_address, method, path, body, headers)


def test_rest_with_tokens_checks_each_endpoint_s_role(with_tokens: Served) -> None:
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert rest(with_tokens, "GET", path).status == 200, path
    refused = rest(with_tokens, "GET", "/v2")
    assert refused.status == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert "GET /v2 needs role 'infer'" in refused.error, refused.error
    assert rest(with_tokens, "POST", "/v2/models/add/infer", "not-a-token").status == 401
    answer = rest(with_tokens, "POST", "/v2/models/add/infer", INFER_TOKEN)
    assert answer.status == 200 and answer.json()["outputs"][0]["data"] == [1.0, 2.0, 3.0, 4.0]
    load = "/v2/repository/models/add/load"
    denied = rest(with_tokens, "POST", load, INFER_TOKEN)
    assert denied.status == 403
    assert denied.error == f"POST {load} needs role 'admin', the caller has role 'infer'"
    assert rest(with_tokens, "POST", load, ADMIN_TOKEN).status == 200


def test_rest_without_credentials_opens_inference_and_refuses_admin(no_credentials: Served) -> None:
    assert rest(no_credentials, "POST", "/v2/models/add/infer").status == 200
    denied = rest(no_credentials, "POST", "/v2/repository/models/add/unload")
    assert denied.status == 403
    assert "no credentials configured" in denied.error
    assert rest(no_credentials, "GET", "/v2/models/add/ready").status == 200
