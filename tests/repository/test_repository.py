"""The model repository on disk: layout, settings, atomic writes and refused paths."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from trtserve.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from trtserve.server.repository.repository import ModelRepository
from trtserve.server.repository.staging import stage
from trtserve.server.specs import DeviceKind, InstanceGroup


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    return ModelRepository(tmp_path)


def test_model_names_lists_folders_with_config_or_versions(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.pbtxt").write_text('platform: "onnxruntime_onnx"')
    (tmp_path / "b" / "3").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("x")
    (tmp_path / "file.txt").write_text("x")
    assert ModelRepository(tmp_path).model_names() == ["a", "b"]


def test_model_names_of_missing_root_is_empty(tmp_path: Path) -> None:
    assert ModelRepository(tmp_path / "nope").model_names() == []


def test_versions_are_sorted_positive_integers(tmp_path: Path) -> None:
    for folder in ("10", "2", "1", "0", "x", "03"):
        (tmp_path / "m" / folder).mkdir(parents=True)
    assert ModelRepository(tmp_path).versions("m") == [1, 2, 10]


def test_versions_of_unknown_model_is_not_found(repo: ModelRepository) -> None:
    with pytest.raises(NotFound, match="model 'ghost'"):
        repo.versions("ghost")


def test_read_settings_from_pbtxt(repo: ModelRepository) -> None:
    repo.write_config(
        "m",
        'name: "m" platform: "onnxruntime_onnx" max_batch_size: 4 '
        "instance_group [ { count: 2, kind: KIND_CPU } ]",
        "pbtxt",
    )
    s = repo.read_settings("m")
    assert (s.name, s.platform, s.max_batch_size) == ("m", "onnxruntime_onnx", 4)
    assert s.instance_groups == (InstanceGroup(2, DeviceKind.CPU),)


def test_config_json_takes_precedence_over_pbtxt(repo: ModelRepository) -> None:
    repo.write_config("m", 'platform: "onnxruntime_onnx" max_batch_size: 4', "pbtxt")
    repo.write_config_json("m", '{"platform": "onnxruntime_onnx", "max_batch_size": 2}')
    assert repo.read_settings("m").max_batch_size == 2


def test_config_without_platform_takes_it_from_the_model_file(repo: ModelRepository) -> None:
    repo.write_config("m", "max_batch_size: 4", "pbtxt")
    repo.write_file("m", "1/model.plan", b"plan")
    assert repo.read_settings("m").platform == "tensorrt_plan"


@pytest.mark.parametrize(
    ("filename", "platform", "kind"),
    [
        ("model.onnx", "onnxruntime_onnx", DeviceKind.CPU),
        ("model.plan", "tensorrt_plan", DeviceKind.GPU),
    ],
)
def test_folder_without_config_gets_minimal_settings(
    repo: ModelRepository, filename: str, platform: str, kind: DeviceKind
) -> None:
    repo.write_file("m", f"1/{filename}", b"x")
    s = repo.read_settings("m")
    assert (s.name, s.platform, s.max_batch_size, s.inputs) == ("m", platform, 0, ())
    assert s.instance_groups == (InstanceGroup(1, kind),)


def test_folder_without_config_or_model_file_fails(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    with pytest.raises(FailedPrecondition, match=r"model 'm': expected config\.json or"):
        ModelRepository(tmp_path).read_settings("m")


def test_read_settings_of_unknown_model_is_not_found(repo: ModelRepository) -> None:
    with pytest.raises(NotFound, match="model 'ghost'"):
        repo.read_settings("ghost")


def test_read_settings_reports_parse_errors(repo: ModelRepository) -> None:
    repo.write_config("m", "max_batch_size: [", "pbtxt")
    with pytest.raises(InvalidArgument, match="model 'm'"):
        repo.read_settings("m")


def test_model_path_uses_default_or_configured_filename(repo: ModelRepository) -> None:
    repo.write_config("m", 'platform: "tensorrt_plan"', "pbtxt")
    s = repo.read_settings("m")
    assert repo.model_path("m", 3, s) == repo.root / "m" / "3" / "model.plan"
    repo.write_config(
        "n", 'platform: "onnxruntime_onnx" default_model_filename: "net.onnx"', "pbtxt"
    )
    s = repo.read_settings("n")
    assert repo.model_path("n", 1, s) == repo.root / "n" / "1" / "net.onnx"


def test_write_file_is_exact_and_leaves_no_temporaries(repo: ModelRepository) -> None:
    data = bytes(range(256)) * 1000
    path = repo.write_file("m", "1/model.plan", data)
    assert path == repo.root / "m" / "1" / "model.plan"
    assert path.read_bytes() == data
    repo.write_file("m", "1/model.plan", b"second")
    assert path.read_bytes() == b"second"
    assert all_files(repo.root) == ["m", "m/1", "m/1/model.plan"]
    assert repo.model_names() == ["m"]
    assert repo.versions("m") == [1]


def test_write_config_json_is_exact(repo: ModelRepository) -> None:
    text = '{"name": "m", "platform": "onnxruntime_onnx"}'
    path = repo.write_config_json("m", text)
    assert path.read_text() == text
    assert all_files(repo.root) == ["m", "m/config.json"]


def test_staged_upload_has_its_size_and_digest(repo: ModelRepository) -> None:
    chunks = [b"a" * 1000, b"b" * 5, b""]
    digest = hashlib.sha256(b"".join(chunks)).hexdigest()
    staged = stage(repo, "m", "2/model.onnx", chunks, digest.upper(), max_bytes=1005)
    assert (staged.size, staged.sha256) == (1005, digest)
    assert staged.path.parent == repo.root / "m" and staged.path.name.startswith(".tmp-")
    assert staged.path.read_bytes() == b"".join(chunks)
    staged.discard()
    assert all_files(repo.root) == []


def test_upload_with_wrong_sha_leaves_nothing(repo: ModelRepository) -> None:
    with pytest.raises(InvalidArgument) as e:
        stage(repo, "m", "1/model.onnx", [b"data"], "0" * 64, max_bytes=100)
    assert f"expected {'0' * 64}, received {hashlib.sha256(b'data').hexdigest()}" in str(e.value)
    assert "model 'm' file '1/model.onnx'" in str(e.value)
    assert all_files(repo.root) == []


def test_upload_over_the_limit_leaves_nothing_and_stops_reading(repo: ModelRepository) -> None:
    consumed: list[int] = []

    def chunks() -> Iterator[bytes]:
        for i in range(100):
            consumed.append(i)
            yield b"x" * 10

    with pytest.raises(ResourceExhausted, match="expected at most 25 bytes, received more"):
        stage(repo, "m", "1/model.onnx", chunks(), None, max_bytes=25)
    assert len(consumed) == 3
    assert all_files(repo.root) == []


def test_failed_upload_keeps_the_previous_file(repo: ModelRepository) -> None:
    repo.write_file("m", "1/model.onnx", b"old")
    with pytest.raises(ResourceExhausted):
        stage(repo, "m", "1/model.onnx", [b"new" * 10], None, max_bytes=5)
    assert (repo.root / "m" / "1" / "model.onnx").read_bytes() == b"old"
    assert all_files(repo.root) == ["m", "m/1", "m/1/model.onnx"]


def test_failing_chunk_source_leaves_nothing(repo: ModelRepository) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"partial"
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        stage(repo, "m", "1/model.onnx", chunks(), None, max_bytes=100)
    assert all_files(repo.root) == []


def test_malformed_sha_is_invalid_argument(repo: ModelRepository) -> None:
    with pytest.raises(InvalidArgument, match="sha256: expected 64 hexadecimal digits"):
        stage(repo, "m", "1/model.onnx", [b"x"], "abc", max_bytes=10)


@pytest.mark.parametrize(
    "relative_path",
    [
        "../x",
        "/etc/passwd",
        "1/../../x",
        "0/model.onnx",
        "abc/model.onnx",
        "1/sub/dir.onnx",
        "1/..",
        "1/.",
        "1/",
        "model.onnx",
        "-1/model.onnx",
        "1\\model.onnx",
        "1/" + "a" * 300,
    ],
)
def test_bad_relative_paths_are_refused(repo: ModelRepository, relative_path: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        repo.write_file("m", relative_path, b"x")
    assert "file path: expected '<version>/<file name>'" in str(e.value)
    # The received value is quoted (cut to 64 characters when longer).
    assert f"received {repr(relative_path[:64])[:-1]}" in str(e.value)
    with pytest.raises(InvalidArgument):
        stage(repo, "m", relative_path, [b"x"], None, max_bytes=10)
    assert all_files(repo.root) == []


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../x", "/abs", "a b", "x" * 300, "é"])
def test_bad_model_names_are_refused(repo: ModelRepository, name: str) -> None:
    with pytest.raises(InvalidArgument, match="model name: expected 1 to 128 characters"):
        repo.write_file(name, "1/model.onnx", b"x")
    with pytest.raises(InvalidArgument, match="model name"):
        repo.write_config_json(name, "{}")
    with pytest.raises(InvalidArgument, match="model name"):
        repo.read_settings(name)
    assert all_files(repo.root) == []


def test_longest_valid_model_name_is_accepted(repo: ModelRepository) -> None:
    name = "a" * 128
    repo.write_file(name, "1/model.onnx", b"x")
    assert repo.model_names() == [name]
