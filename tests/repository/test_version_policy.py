"""Triton's version_policy: the newest version by default, exactly the one `specific` names,
and every policy that would serve several versions at once refused, never narrowed quietly."""

from __future__ import annotations

from pathlib import Path

import pytest
from managed import with_loaded_repository

from trtserve.server.default_model import SIMPLE_CONFIG, build_simple_model
from trtserve.server.errors import InvalidArgument, ServerError
from trtserve.server.models.manager import ModelManager
from trtserve.server.repository.model_config import (
    config_from_settings,
    parse_config_text,
    settings_from_config,
)


def policy_of(text: str) -> int | None:
    cfg = parse_config_text(f'platform: "onnxruntime_onnx"\n{text}', "pbtxt", "m")
    return settings_from_config(cfg, "m").version_policy.version


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("", None),
        ("version_policy { latest { num_versions: 1 } }", None),
        ("version_policy { specific { versions: [ 1 ] } }", 1),
        ("version_policy: { specific: { versions: 7 } }", 7),
    ],
)
def test_policies_one_version_can_follow(text: str, version: int | None) -> None:
    assert policy_of(text) == version


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "version_policy { latest { num_versions: 2 } }",
            "version_policy: latest num_versions: expected 1 (this server serves one version "
            "of a model at a time), received 2",
        ),
        ("version_policy { all { } }", "version_policy: all: not supported"),
        (
            "version_policy { specific { versions: [ 1, 2 ] } }",
            "specific versions: expected exactly one version number >= 1",
        ),
        ("version_policy { specific { } }", "received []"),
    ],
)
def test_policies_of_several_versions_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        policy_of(text)
    assert message in str(refused.value)
    assert "model 'm'" in str(refused.value)


def test_the_reported_config_says_the_policy() -> None:
    for text, expected in (
        ("", "latest"),
        ("version_policy { specific { versions: 3 } }", "specific"),
    ):
        cfg = parse_config_text(f'platform: "onnxruntime_onnx"\n{text}', "pbtxt", "m")
        reported = config_from_settings(settings_from_config(cfg, "m"), None)
        assert reported.version_policy.WhichOneof("policy_choice") == expected


def served_version(root: Path, policy: str) -> tuple[str, str]:
    """Versions 1 and 2 of the built-in model with `policy`: (state, version or reason)."""
    for version in (1, 2):
        (root / "m" / str(version)).mkdir(parents=True, exist_ok=True)
        (root / "m" / str(version) / "model.onnx").write_bytes(build_simple_model())
    config = SIMPLE_CONFIG.replace('"simple"', '"m"') + policy
    (root / "m" / "config.pbtxt").write_text(config)

    async def served(manager: ModelManager) -> tuple[str, str]:
        try:
            return "READY", str(manager.get("m").version)
        except ServerError:
            (entry,) = await manager.index()
            return entry.state, entry.reason

    return with_loaded_repository(root, served)


def test_specific_serves_that_version_not_the_newest(tmp_path: Path) -> None:
    assert served_version(tmp_path / "a", "") == ("READY", "2")
    pinned = "version_policy { specific { versions: [ 1 ] } }\n"
    assert served_version(tmp_path / "b", pinned) == ("READY", "1")


def test_specific_of_a_version_not_there_is_not_found_naming_those_there(tmp_path: Path) -> None:
    state, reason = served_version(tmp_path, "version_policy { specific { versions: [ 3 ] } }\n")
    assert state == "UNAVAILABLE"
    assert "version 3 is not in the repository; versions there: [1, 2]" in reason, reason
