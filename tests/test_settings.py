"""Server settings: defaults, TOML file, environment and flags, in that order of strength."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from trtserve.cli.main import build_parser
from trtserve.cli.serve import settings_of
from trtserve.server.settings import (
    SETTINGS,
    ServerSettings,
    SettingKind,
    env_name,
    load_settings,
)


def test_defaults_without_sources() -> None:
    assert load_settings(environ={}) == ServerSettings()


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "trtserve.toml"
    config.write_text('[server]\ngrpc_port = 9100\nmetrics_port = 9101\nlog_level = "DEBUG"\n')
    environ = {"TRTSERVE_METRICS_PORT": "9201", "TRTSERVE_LOG_LEVEL": "WARNING"}
    settings = load_settings(config, environ, overrides={"log_level": "ERROR", "host": None})
    assert (settings.grpc_port, settings.metrics_port, settings.log_level) == (9100, 9201, "ERROR")
    # A flag left unset (None) keeps the default: no host, every interface.
    assert settings.host is None and settings.bind_host == "0.0.0.0"


def test_types_are_converted(tmp_path: Path) -> None:
    environ = {
        "TRTSERVE_REPOSITORY": str(tmp_path),
        "TRTSERVE_ALLOW_RUNTIME_INSTALL": "true",
        "TRTSERVE_TRUSTED_PLAN_SHA256": "aa, bb",
        "TRTSERVE_GRACE_PERIOD_S": "2.5",
    }
    settings = load_settings(environ=environ)
    assert settings.repository == tmp_path
    assert settings.allow_runtime_install is True
    assert settings.trusted_plan_sha256 == ("aa", "bb")
    assert settings.grace_period_s == 2.5


def test_bad_value_names_the_setting() -> None:
    with pytest.raises(ValueError, match=r"setting grpc_port: expected int, received 'abc'"):
        load_settings(environ={"TRTSERVE_GRPC_PORT": "abc"})


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("grpc_prot = 1\n")
    with pytest.raises(ValueError, match="unknown settings \\['grpc_prot'\\]"):
        load_settings(config, environ={})


def test_list_flags_accept_repeats_and_commas() -> None:
    overrides = {"preload_runtimes": ["10.16.1.11,11.0.0.114", "11.4.0.106"]}
    settings = load_settings(environ={}, overrides=overrides)
    assert settings.preload_runtimes == ("10.16.1.11", "11.0.0.114", "11.4.0.106")


def test_malloc_keep_is_bounded() -> None:
    assert ServerSettings().malloc_keep_mb == 64
    assert load_settings(environ={"TRTSERVE_MALLOC_KEEP_MB": "0"}).malloc_keep_mb == 0
    for bad in (-1, 2048):
        with pytest.raises(ValueError, match=f"malloc_keep_mb: expected 0 to 2047, received {bad}"):
            ServerSettings(malloc_keep_mb=bad)


def test_upload_idle_timeout_from_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "trtserve.toml"
    config.write_text("[server]\nupload_idle_timeout_s = 5\n")
    assert load_settings(config, environ={}).upload_idle_timeout_s == 5.0
    environ = {"TRTSERVE_UPLOAD_IDLE_TIMEOUT_S": "2.5"}
    assert load_settings(config, environ).upload_idle_timeout_s == 2.5
    with pytest.raises(ValueError, match="upload_idle_timeout_s: expected a positive"):
        load_settings(environ={"TRTSERVE_UPLOAD_IDLE_TIMEOUT_S": "0"})


def test_metrics_host_is_loopback_when_credentials_guard_grpc(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    assert ServerSettings(host="0.0.0.0").metrics_bind_host == "0.0.0.0"
    assert ServerSettings(auth_tokens_file=tokens).metrics_bind_host == "127.0.0.1"
    pem = tmp_path / "x.pem"
    mutual = ServerSettings(host="0.0.0.0", tls_cert=pem, tls_key=pem, tls_client_ca=pem)
    assert mutual.metrics_bind_host == "127.0.0.1"
    assert ServerSettings(tls_cert=pem, tls_key=pem).metrics_bind_host == "0.0.0.0"
    explicit = ServerSettings(auth_tokens_file=tokens, metrics_host="10.0.0.5")
    assert explicit.metrics_bind_host == "10.0.0.5"
    from_env = load_settings(environ={"TRTSERVE_METRICS_HOST": "::1"})
    assert from_env.metrics_bind_host == "::1"


def test_connection_settings_from_environment_and_their_checks() -> None:
    settings = load_settings(
        environ={"TRTSERVE_MAX_CONNECTIONS": "500", "TRTSERVE_KEEPALIVE_TIME_S": "30"}
    )
    assert settings.max_connections == 500 and settings.keepalive_time_s == 30.0
    assert load_settings(environ={}).max_connections is None
    with pytest.raises(ValueError, match="max_connections: expected a positive integer"):
        ServerSettings(max_connections=0)
    with pytest.raises(ValueError, match="handshake_timeout_s: expected a positive number"):
        ServerSettings(handshake_timeout_s=0)


def test_max_bytes_elements_from_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "trtserve.toml"
    config.write_text("[server]\nmax_bytes_elements = 1000\n")
    assert load_settings(config, environ={}).max_bytes_elements == 1000
    environ = {"TRTSERVE_MAX_BYTES_ELEMENTS": "2000"}
    assert load_settings(config, environ).max_bytes_elements == 2000
    with pytest.raises(ValueError, match="max_bytes_elements: expected a positive integer"):
        ServerSettings(max_bytes_elements=0)


def test_max_stream_in_flight_from_file_and_positive(tmp_path: Path) -> None:
    config = tmp_path / "trtserve.toml"
    config.write_text("max_stream_in_flight = 8\n")
    assert load_settings(config, environ={}).max_stream_in_flight == 8
    with pytest.raises(
        ValueError, match="setting max_stream_in_flight: expected a positive integer, received 0"
    ):
        load_settings(environ={"TRTSERVE_MAX_STREAM_IN_FLIGHT": "0"})


# --- each kind of setting, from each source ------------------------------------------------

# (setting, TOML value, environment text, flags, expected): one setting of each kind.
KIND_CASES = [
    ("repository", '"/models"', "/models", ["--repository", "/models"], Path("/models")),
    ("trusted_keys", '["/k/a.pub", "/k/b.pub"]', "/k/a.pub,/k/b.pub",
     ["--trusted-keys", "/k/a.pub", "--trusted-keys", "/k/b.pub"],
     (Path("/k/a.pub"), Path("/k/b.pub"))),
    ("preload_runtimes", '["10.16.1.11", "11.0.0.114"]', "10.16.1.11, 11.0.0.114",
     ["--preload-runtimes", "10.16.1.11,11.0.0.114"], ("10.16.1.11", "11.0.0.114")),
    ("allow_runtime_install", "true", "yes", ["--allow-runtime-install"], True),
    ("probe_plans", "false", "0", ["--no-probe-plans"], False),
    ("grpc_port", "9001", "9001", ["--grpc-port", "9001"], 9001),
    ("grace_period_s", "2.5", "2.5", ["--grace-period-s", "2.5"], 2.5),
    ("log_format", '"json"', "json", ["--log-format", "json"], "json"),
    ("max_connections", "500", "500", ["--max-connections", "500"], 500),
    ("metrics_host", '"::1"', "::1", ["--metrics-host", "::1"], "::1"),
]  # fmt: skip
KIND_IDS = [case[0] for case in KIND_CASES]


def serve_flags(argv: list[str]) -> ServerSettings:
    args = build_parser().parse_args(["serve", *argv])
    return settings_of(args, environ={})


@pytest.mark.parametrize(("name", "toml", "env", "flags", "expected"), KIND_CASES, ids=KIND_IDS)
def test_each_kind_from_toml_environment_and_flags(
    tmp_path: Path, name: str, toml: str, env: str, flags: list[str], expected: object
) -> None:
    config = tmp_path / "trtserve.toml"
    config.write_text(f"{name} = {toml}\n")
    from_file = getattr(load_settings(config, environ={}), name)
    from_env = getattr(load_settings(environ={env_name(name): env}), name)
    from_flags = getattr(serve_flags(flags), name)
    assert (from_file, from_env, from_flags) == (expected, expected, expected)
    assert type(from_file) is type(expected)


def test_flags_not_given_leave_the_defaults() -> None:
    assert serve_flags([]) == ServerSettings()


def test_kinds_come_from_the_field_types() -> None:
    labels = {name: SETTINGS[name].kind.label for name in KIND_IDS}
    assert labels == {
        "repository": "Path | None",
        "trusted_keys": "tuple[Path, ...]",
        "preload_runtimes": "tuple[str, ...]",
        "allow_runtime_install": "bool",
        "probe_plans": "bool",
        "grpc_port": "int",
        "grace_period_s": "float",
        "log_format": "str",
        "max_connections": "int | None",
        "metrics_host": "str | None",
    }
    assert set(SETTINGS) == {f.name for f in fields(ServerSettings)}


def test_a_type_no_source_can_give_is_refused() -> None:
    for hint in (list[str], dict[str, int], tuple[int, int], tuple[Path | None, ...], bytes):
        with pytest.raises(TypeError, match="expected one of"):
            SettingKind.of(hint)


def test_empty_optional_values_are_none_and_paths_expand_home() -> None:
    empty = {env_name(name): "" for name in ("repository", "max_connections", "metrics_host")}
    settings = load_settings(environ=empty)
    assert (settings.repository, settings.max_connections, settings.metrics_host) == (None,) * 3
    home = load_settings(environ={"TRTSERVE_RUNTIMES_DIR": "~/runtimes"}).runtimes_dir
    assert home == Path.home() / "runtimes"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"TRTSERVE_PROBE_PLANS": "maybe"}, "setting probe_plans: expected bool, received 'maybe'"),
        ({"TRTSERVE_MAX_CONNECTIONS": "many"},
         "setting max_connections: expected int | None, received 'many'"),
        ({"TRTSERVE_GRACE_PERIOD_S": "soon"},
         "setting grace_period_s: expected float, received 'soon'"),
        ("grpc_port = 8001.5", "setting grpc_port: expected int, received 8001.5"),
        ("grpc_port = true", "setting grpc_port: expected int, received True"),
        ("log_level = [\"INFO\"]", "setting log_level: expected str, received ['INFO']"),
        ("preload_runtimes = 11",
         "setting preload_runtimes: expected tuple[str, ...], received 11"),
    ],
    ids=["bool", "optional-int", "float", "toml-float-for-int", "toml-bool-for-int", "toml-list",
         "toml-int-for-tuple"],
)  # fmt: skip
def test_bad_values_name_setting_type_and_value(
    tmp_path: Path, source: dict[str, str] | str, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        if isinstance(source, str):
            config = tmp_path / "trtserve.toml"
            config.write_text(source + "\n")
            load_settings(config, environ={})
        else:
            load_settings(environ=source)


def test_bad_flag_value_names_the_setting() -> None:
    with pytest.raises(ValueError, match=r"setting grpc_port: expected int, received 'x'"):
        serve_flags(["--grpc-port", "x"])


def test_insecure_local_admin_with_credentials_is_refused_by_the_settings() -> None:
    mutual_tls = {"TRTSERVE_TLS_CLIENT_CA": "ca", "TRTSERVE_TLS_CERT": "c", "TRTSERVE_TLS_KEY": "k"}
    for credentials in ({"TRTSERVE_AUTH_TOKENS_FILE": "tokens"}, mutual_tls):
        with pytest.raises(ValueError, match=r"setting insecure_local_admin: .* auth_tokens_file"):
            load_settings(environ={"TRTSERVE_INSECURE_LOCAL_ADMIN": "1", **credentials})


def test_gpu_wait_is_spin_or_block() -> None:
    assert ServerSettings().gpu_wait == "spin"
    assert load_settings(environ={"TRTSERVE_GPU_WAIT": "block"}).gpu_wait == "block"
    with pytest.raises(ValueError, match="gpu_wait: expected one of spin, block, received 'yield'"):
        ServerSettings(gpu_wait="yield")


def test_insecure_local_admin_binds_loopback_and_refuses_another_host() -> None:
    assert ServerSettings().bind_host == "0.0.0.0"
    assert ServerSettings(insecure_local_admin=True).bind_host == "127.0.0.1"
    assert ServerSettings(insecure_local_admin=True, host="::1").bind_host == "::1"
    with pytest.raises(ValueError, match=r"insecure_local_admin: .* received host '0\.0\.0\.0'"):
        ServerSettings(insecure_local_admin=True, host="0.0.0.0")
    with pytest.raises(ValueError, match=r"received host '10\.1\.2\.3'"):
        load_settings(environ={"TRTSERVE_INSECURE_LOCAL_ADMIN": "1", "TRTSERVE_HOST": "10.1.2.3"})


def test_log_level_and_format_are_checked() -> None:
    assert ServerSettings(log_level="debug").log_level == "debug"
    with pytest.raises(ValueError, match=r"log_level: expected one of DEBUG, .* 'verbose'"):
        ServerSettings(log_level="verbose")
    with pytest.raises(ValueError, match=r"log_format: expected one of text, json, .* 'xml'"):
        ServerSettings(log_format="xml")
