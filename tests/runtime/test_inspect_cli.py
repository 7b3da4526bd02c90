"""`trtserve inspect` and `trtserve runtimes`, called through their argparse registration."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from trtserve.cli import inspect as inspect_cli
from trtserve.cli import runtimes as runtimes_cli

PLAN_NAME = "conv_relu_trt11.0.0.114.plan"


def plans_dir() -> Path:
    configured = os.environ.get("TRTSERVE_TEST_PLANS")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / ".." / "shared" / "plans"


@pytest.fixture
def plan() -> Path:
    path = plans_dir() / PLAN_NAME
    if not path.is_file():
        pytest.skip(f"real plan {path} not present")
    return path


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="trtserve")
    subparsers = parser.add_subparsers(dest="command", required=True)
    inspect_cli.register(subparsers)
    runtimes_cli.register(subparsers)
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def fake_runtime(root: Path, version: str) -> None:
    folder = root / version
    folder.mkdir(parents=True)
    (folder / f"libnvinfer_lean.so.{version.split('.')[0]}").write_bytes(b"\x7fELF")


def test_inspect_text_not_installed(
    plan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("inspect", str(plan), "--runtimes-dir", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "built with TensorRT:    11.0.0.114" in out
    assert "ENGN" in out and "WGHT" in out
    assert "embedded lean runtime:  no" in out
    assert "loaded by:              lean runtime 11.0.0.114" in out
    assert "installed here:         no" in out
    assert "trtserve runtimes install 11.0.0.114" in out


def test_inspect_json_installed(
    plan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_runtime(tmp_path, "11.0.0.114")
    assert run("inspect", str(plan), "--json", "--runtimes-dir", str(tmp_path)) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tensorrt_version"] == "11.0.0.114"
    assert data["total_size"] == plan.stat().st_size
    assert [e["tag"] for e in data["entries"]] == ["ENGN", "WGHT"]
    assert data["has_lean_runtime"] is False and data["has_plugins"] is False
    assert data["runtime"]["kind"] == "lean"
    assert data["runtime"]["installed"] is True
    assert data["runtime"]["library"] == str(tmp_path / "11.0.0.114" / "libnvinfer_lean.so.11")


def test_inspect_broken_plan(
    plan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cut = tmp_path / "cut.plan"
    cut.write_bytes(plan.read_bytes()[:1000])
    assert run("inspect", str(cut)) == 1
    assert "truncated plan" in capsys.readouterr().err


def test_inspect_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("inspect", str(tmp_path / "absent.plan")) == 1
    assert "cannot read" in capsys.readouterr().err


def test_runtimes_list_and_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("runtimes", "list", "--runtimes-dir", str(tmp_path)) == 0
    assert "no lean runtimes installed" in capsys.readouterr().out
    fake_runtime(tmp_path, "11.0.0.114")
    fake_runtime(tmp_path, "10.16.1.11")
    assert run("runtimes", "--runtimes-dir", str(tmp_path), "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["10.16.1.11", "11.0.0.114"]
    assert run("runtimes", "remove", "10.16.1.11", "--runtimes-dir", str(tmp_path)) == 0
    assert not (tmp_path / "10.16.1.11").exists()
    assert run("runtimes", "remove", "10.16.1.11", "--runtimes-dir", str(tmp_path)) == 1
    assert "10.16.1.11 is not installed" in capsys.readouterr().err


def test_runtimes_install_of_an_installed_version_needs_no_download(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_runtime(tmp_path, "11.0.0.114")
    assert run("runtimes", "install", "11.0.0.114", "--runtimes-dir", str(tmp_path)) == 0
    assert "installed 11.0.0.114" in capsys.readouterr().out


def test_runtimes_install_rejects_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        run("runtimes", "install", "11.0.0.114", "--cuda", "11")
    assert run("runtimes", "install", "latest", "--runtimes-dir", str(tmp_path)) == 1
    assert "major.minor.patch.build" in capsys.readouterr().err


def test_main_has_the_commands(plan: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = pytest.importorskip("trtserve.cli.main")
    assert main.main(["inspect", str(plan), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tensorrt_version"] == "11.0.0.114"


def test_runtimes_install_from_a_wheel_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import zipfile

    wheel = tmp_path / "tensorrt_lean_cu13_libs-11.0.0.114-py3-none-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("tensorrt_lean_libs/libnvinfer_lean.so.11", b"not a library")
        archive.writestr("tensorrt_lean_cu13_libs-11.0.0.114.dist-info/RECORD", "")
    root = tmp_path / "runtimes"
    argv = ["runtimes", "install", "11.0.0.114", "--wheel", str(wheel), "--runtimes-dir", str(root)]
    # A wheel whose RECORD lacks the library's hash is refused.
    assert run(*argv) == 1
    assert "has no sha256 in RECORD" in capsys.readouterr().err
    assert not (root / "11.0.0.114").exists()


ALL_PLANS = sorted(
    [f"conv_relu_trt{v}.plan" for v in ("11.0.0.114", "10.0.1.6", "10.0.0.6", "8.6.1.6")]
    + [
        f"more/{name}.plan"
        for name in (
            "autoencoder_fp16_trt10.15.1.29_not_vc",
            "mnist_trt10.5.0.18",
            "addscalar_plugin_trt10.0.1.6",
            "matmul_hc_part1_trt8.6.1.6",
            "matmul_hc_part2_trt8.6.1.6",
            "identity_trt8.6.1.6",
            "linear_sm90_trt8.6.1.6",
            "legacy_ptrt_format",
        )
    ]
)


@pytest.mark.parametrize("name", ALL_PLANS)
def test_inspect_answers_for_every_real_plan(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = plans_dir() / name
    if not path.is_file():
        pytest.skip(f"real plan {path} not present")
    assert run("inspect", str(path), "--json", "--runtimes-dir", str(tmp_path)) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["version_compatible"] in (True, False, None)
    assert data["hardware_compatibility"] in ("none", "ampere_plus", "same_compute_capability")
    assert data["version_compatible_reason"] and data["hardware_compatibility_reason"]
    legacy = name.endswith("legacy_ptrt_format.plan")
    # Known not version-compatible only where the plan proves it; never "true" without LEAN.
    assert data["version_compatible"] is (False if legacy else None)
    assert (data["refused"] is not None) == (legacy or "plugin" in name)
    assert run("inspect", str(path), "--runtimes-dir", str(tmp_path)) == 0
    text = capsys.readouterr().out
    assert "version-compatible:" in text and "hardware compatibility:" in text
    if data["version_compatible"] is None and data["refused"] is None:
        assert ", if the plan is version-compatible" in text


def test_inspect_json_reports_an_error_as_json_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.plan"
    broken.write_bytes(b"not a plan at all")
    assert run("inspect", str(broken), "--json") == 1
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["plan"] == str(broken)
    assert "not a TensorRT plan" in data["error"]
    assert "not a TensorRT plan" in captured.err
