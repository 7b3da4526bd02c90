"""Server settings: defaults, TOML file, environment and flags, in that order of strength."""

from __future__ import annotations

from pathlib import Path

import pytest

from trtserve.server.settings import ServerSettings, load_settings


def test_defaults_without_sources() -> None:
    assert load_settings(environ={}) == ServerSettings()


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "trtserve.toml"
    config.write_text('[server]\ngrpc_port = 9100\nmetrics_port = 9101\nlog_level = "DEBUG"\n')
    environ = {"TRTSERVE_METRICS_PORT": "9201", "TRTSERVE_LOG_LEVEL": "WARNING"}
    settings = load_settings(config, environ, overrides={"log_level": "ERROR", "host": None})
    assert (settings.grpc_port, settings.metrics_port, settings.log_level) == (9100, 9201, "ERROR")
    assert settings.host == "0.0.0.0"


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


def test_max_stream_in_flight_from_file_and_positive(tmp_path: Path) -> None:
    config = tmp_path / "trtserve.toml"
    config.write_text("max_stream_in_flight = 8\n")
    assert load_settings(config, environ={}).max_stream_in_flight == 8
    with pytest.raises(
        ValueError, match="setting max_stream_in_flight: expected a positive integer, received 0"
    ):
        load_settings(environ={"TRTSERVE_MAX_STREAM_IN_FLIGHT": "0"})
