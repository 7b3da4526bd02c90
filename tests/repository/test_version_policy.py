"""Triton's version_policy: latest N (one by default), all, or specific versions, each served
at once; a request without a version goes to the newest served, one naming a version not
served is refused naming those that are."""

from __future__ import annotations

from pathlib import Path

import pytest
from managed import with_loaded_repository

from trtserve.server.default_model import SIMPLE_CONFIG, build_simple_model
from trtserve.server.errors import InvalidArgument, NotFound, ServerError
from trtserve.server.models.manager import IndexEntry, ModelManager
from trtserve.server.repository.model_config import (
    config_from_settings,
    parse_config_text,
    settings_from_config,
)
from trtserve.server.specs import PolicyKind, VersionPolicy


def policy_of(text: str) -> VersionPolicy:
    cfg = parse_config_text(f'platform: "onnxruntime_onnx"\n{text}', "pbtxt", "m")
    return settings_from_config(cfg, "m").version_policy


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("", VersionPolicy(PolicyKind.LATEST, count=1)),
        ("version_policy { latest { num_versions: 3 } }", VersionPolicy(count=3)),
        ("version_policy { all { } }", VersionPolicy(PolicyKind.ALL)),
        ("version_policy: { all: {} }", VersionPolicy(PolicyKind.ALL)),
        (
            "version_policy { specific { versions: [ 3, 1, 3 ] } }",
            VersionPolicy(PolicyKind.SPECIFIC, versions=(1, 3)),
        ),
        (
            "version_policy: { specific: { versions: 7 } }",
            VersionPolicy(PolicyKind.SPECIFIC, versions=(7,)),
        ),
    ],
)
def test_every_policy_is_read(text: str, policy: VersionPolicy) -> None:
    assert policy_of(text) == policy


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "version_policy { latest { num_versions: 0 } }",
            "version_policy: latest num_versions: expected a number >= 1, received 0",
        ),
        (
            "version_policy { specific { } }",
            "specific versions: expected one or more version numbers >= 1, received []",
        ),
        ("version_policy { specific { versions: [ 2, -1 ] } }", "received [2, -1]"),
    ],
)
def test_a_policy_that_serves_nothing_is_refused_naming_it(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        policy_of(text)
    assert message in str(refused.value)
    assert "model 'm'" in str(refused.value)


def test_each_policy_chooses_its_versions_newest_first() -> None:
    available = [1, 4, 2, 9]
    assert VersionPolicy().choose(available) == [9]
    assert VersionPolicy(count=2).choose(available) == [9, 4]
    assert VersionPolicy(count=10).choose(available) == [9, 4, 2, 1]
    assert VersionPolicy(PolicyKind.ALL).choose(available) == [9, 4, 2, 1]
    assert VersionPolicy(PolicyKind.SPECIFIC, versions=(1, 4)).choose(available) == [4, 1]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "version_policy { latest { num_versions: 2 } }",
        "version_policy { all { } }",
        "version_policy { specific { versions: [ 1, 3 ] } }",
    ],
)
def test_the_reported_config_says_the_policy_as_written(text: str) -> None:
    cfg = parse_config_text(f'platform: "onnxruntime_onnx"\n{text}', "pbtxt", "m")
    settings = settings_from_config(cfg, "m")
    reported = config_from_settings(settings, None)
    assert settings_from_config(reported, "m").version_policy == settings.version_policy


def repository(root: Path, policy: str, versions: tuple[int, ...] = (1, 2, 3)) -> Path:
    """Versions of the built-in model named 'm' with `policy` in its config."""
    for version in versions:
        (root / "m" / str(version)).mkdir(parents=True, exist_ok=True)
        (root / "m" / str(version) / "model.onnx").write_bytes(build_simple_model())
    config = SIMPLE_CONFIG.replace('"simple"', '"m"') + policy
    (root / "m" / "config.pbtxt").write_text(config)
    return root


def served(root: Path, policy: str) -> list[int]:
    async def inspect(manager: ModelManager) -> list[int]:
        return [m.version for m in manager.serving_models()]

    return sorted(with_loaded_repository(repository(root, policy), inspect))


@pytest.mark.parametrize(
    ("policy", "versions"),
    [
        ("", [3]),
        ("version_policy { latest { num_versions: 2 } }", [2, 3]),
        ("version_policy { latest { num_versions: 5 } }", [1, 2, 3]),
        ("version_policy { all { } }", [1, 2, 3]),
        ("version_policy { specific { versions: [ 1, 3 ] } }", [1, 3]),
        ("version_policy { specific { versions: [ 1 ] } }", [1]),
    ],
)
def test_the_policy_s_versions_serve_at_once(
    tmp_path: Path, policy: str, versions: list[int]
) -> None:
    assert served(tmp_path, policy) == versions


def test_a_request_goes_to_the_version_it_names_or_the_newest(tmp_path: Path) -> None:
    policy = "version_policy { specific { versions: [ 1, 3 ] } }"

    async def inspect(manager: ModelManager) -> tuple[int, int, int, str, list[IndexEntry]]:
        with pytest.raises(NotFound) as refused:
            manager.get("m", "2")
        return (
            manager.get("m").version,
            manager.get("m", "1").version,
            manager.get("m", "3").version,
            str(refused.value),
            await manager.index(),
        )

    newest, one, three, refusal, index = with_loaded_repository(
        repository(tmp_path, policy), inspect
    )
    assert (newest, one, three) == (3, 1, 3)
    assert refusal == "model 'm': version '2' is not served; served versions: [1, 3]"
    assert [(e.version, e.state, e.reason) for e in index] == [
        ("1", "READY", ""),
        ("3", "READY", ""),
    ]


def test_specific_versions_not_there_are_not_found_naming_those_there(tmp_path: Path) -> None:
    async def inspect(manager: ModelManager) -> list[IndexEntry]:
        return await manager.index()

    policy = "version_policy { specific { versions: [ 2, 4, 5 ] } }"
    [entry] = with_loaded_repository(repository(tmp_path, policy), inspect)
    assert entry.state == "UNAVAILABLE"
    assert (
        "specific versions: versions [4, 5] are not in the repository; versions there: [1, 2, 3]"
        in entry.reason
    )


def broken(root: Path, version: int) -> None:
    (root / "m" / str(version) / "model.onnx").write_bytes(b"not an onnx model")


def test_at_start_latest_falls_back_past_a_version_that_fails(tmp_path: Path) -> None:
    root = repository(tmp_path, "version_policy { latest { num_versions: 2 } }")
    broken(root, 3)

    async def inspect(manager: ModelManager) -> tuple[list[int], list[IndexEntry], str]:
        with pytest.raises(NotFound) as refused:
            manager.get("m", "3")
        return manager.versions("m"), await manager.index(), str(refused.value)

    versions, index, refusal = with_loaded_repository(root, inspect)
    assert versions == [1, 2]
    assert [(e.version, e.state) for e in index] == [
        ("1", "READY"),
        ("2", "READY"),
        ("3", "UNAVAILABLE"),
    ]
    assert "version 3" in index[2].reason, index[2].reason
    assert "version '3' is not served (it failed to load: " in refusal
    assert refusal.endswith("served versions: [1, 2]")


def test_at_start_all_serves_the_versions_that_load(tmp_path: Path) -> None:
    root = repository(tmp_path, "version_policy { all { } }")
    broken(root, 2)

    async def inspect(manager: ModelManager) -> list[tuple[str, str]]:
        return [(e.version, e.state) for e in await manager.index()]

    assert with_loaded_repository(root, inspect) == [
        ("1", "READY"),
        ("2", "UNAVAILABLE"),
        ("3", "READY"),
    ]


def test_a_reload_serves_the_new_policy_and_drops_the_versions_it_no_longer_names(
    tmp_path: Path,
) -> None:
    root = repository(tmp_path, "")
    config = (root / "m" / "config.pbtxt").read_text()

    async def steps(manager: ModelManager) -> list[list[int]]:
        seen = [manager.versions("m")]
        for policy in ("version_policy { all { } }", "version_policy { specific { versions: 1 } }"):
            (root / "m" / "config.pbtxt").write_text(config + policy)
            await manager.load("m")
            seen.append(manager.versions("m"))
        return seen

    assert with_loaded_repository(root, steps) == [[3], [1, 2, 3], [1]]


def test_a_reload_where_one_version_fails_keeps_every_served_version(tmp_path: Path) -> None:
    root = repository(tmp_path, "version_policy { latest { num_versions: 2 } }")

    async def steps(manager: ModelManager) -> tuple[list[int], str, list[tuple[str, str, str]]]:
        with pytest.raises(ServerError) as refused:
            await manager.load("m", files={"4/model.onnx": b"not an onnx model"})
        index = [(e.version, e.state, e.reason) for e in await manager.index()]
        return manager.versions("m"), str(refused.value), index

    versions, refusal, index = with_loaded_repository(root, steps)
    assert versions == [2, 3]
    assert "version 4" in refusal, refusal
    assert [(v, s) for v, s, _r in index] == [("2", "READY"), ("3", "READY")]
    assert index[0][2].startswith("reload failed, versions [2, 3] still serving: "), index[0][2]
    # The failed upload was rolled back: a restart serves what this one serves.
    assert not (root / "m" / "4").exists()


def test_an_unload_stops_every_version(tmp_path: Path) -> None:
    root = repository(tmp_path, "version_policy { all { } }")

    async def steps(manager: ModelManager) -> tuple[list[int], list[IndexEntry]]:
        await manager.unload("m")
        return manager.versions("m"), await manager.index()

    versions, index = with_loaded_repository(root, steps)
    assert versions == []
    assert [(e.version, e.state, e.reason) for e in index] == [("", "UNAVAILABLE", "unloaded")]


def test_a_version_that_is_no_ascii_number_is_not_found(tmp_path: Path) -> None:
    async def inspect(manager: ModelManager) -> list[str]:
        refusals = []
        for version in ("²", "٣", "-1", "1.0"):
            with pytest.raises(NotFound) as refused:
                manager.get("m", version)
            refusals.append(str(refused.value))
        return refusals

    for refusal in with_loaded_repository(repository(tmp_path, ""), inspect):
        assert refusal.endswith("is not served; served versions: [3]"), refusal
