"""The image's lean runtime step (deploy/install-runtimes.sh), run outside Docker.

The wheels are built here (a zip with the index's file name, the lean library and a RECORD),
so the test needs no network; the real 45 MB download runs only with
TRTSERVE_TEST_DOWNLOAD_RUNTIME=1.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "install-runtimes.sh"
ENTRYPOINT = ROOT / "deploy" / "docker-entrypoint.sh"
VERSIONS = ("11.0.0.114", "11.4.0.106")


def build_lean_wheel(folder: Path, version: str, cuda: int = 13) -> Path:
    """A wheel shaped like tensorrt-lean-cu<N>-libs: the libraries and a RECORD of them."""
    major = version.split(".")[0]
    dist = f"tensorrt_lean_cu{cuda}_libs-{version}"
    files = {
        f"tensorrt_lean_libs/libnvinfer_lean.so.{major}": f"lean {version}".encode(),
        f"tensorrt_lean_libs/libnvinfer_vc_plugin.so.{major}": f"plugin {version}".encode(),
        "tensorrt_lean_libs/__init__.py": b"",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}.dist-info/RECORD,,")
    wheel = folder / f"{dist}-py3-none-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


def env_with(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRTSERVE_", "LEAN_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(values)
    return env


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    folder = tmp_path / "wheels"
    folder.mkdir()
    for version in VERSIONS:
        build_lean_wheel(folder, version)
    return folder


def test_dockerfile_runs_this_script_with_the_build_arg() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ARG LEAN_VERSIONS="' in dockerfile
    assert 'LEAN_VERSIONS="${LEAN_VERSIONS}"' in dockerfile
    assert "/opt/trtserve/bin/install-runtimes.sh /opt/trtserve/runtimes" in dockerfile


def test_installs_every_listed_version(tmp_path: Path, wheels: Path) -> None:
    target = tmp_path / "runtimes"
    result = run(
        [str(SCRIPT), str(target)],
        env_with(LEAN_VERSIONS=" ".join(VERSIONS), LEAN_WHEELS_DIR=str(wheels)),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for version in VERSIONS:
        library = target / version / "libnvinfer_lean.so.11"
        assert library.read_bytes() == f"lean {version}".encode()
        assert (target / version / "manifest.json").is_file()
        assert version in result.stdout  # the closing `trtserve runtimes list`


def test_commas_work_and_no_versions_installs_nothing(tmp_path: Path, wheels: Path) -> None:
    target = tmp_path / "runtimes"
    result = run([str(SCRIPT), str(target)], env_with(LEAN_WHEELS_DIR=str(wheels)))
    assert result.returncode == 0, result.stderr
    assert "no lean runtimes installed" in result.stdout
    result = run(
        [str(SCRIPT), str(target)],
        env_with(LEAN_VERSIONS=",".join(VERSIONS), LEAN_WHEELS_DIR=str(wheels)),
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in target.iterdir()) == sorted(VERSIONS)


def test_missing_wheel_and_bad_usage_fail(tmp_path: Path, wheels: Path) -> None:
    result = run(
        [str(SCRIPT), str(tmp_path / "runtimes")],
        env_with(LEAN_VERSIONS="10.16.1.11", LEAN_WHEELS_DIR=str(wheels)),
    )
    assert result.returncode == 1
    assert "tensorrt_lean_cu13_libs-10.16.1.11" in result.stderr
    assert run([str(SCRIPT)], env_with()).returncode == 2


def test_entrypoint_links_baked_runtimes_into_the_runtimes_volume(
    tmp_path: Path, wheels: Path
) -> None:
    baked, volume = tmp_path / "baked", tmp_path / "volume"
    env = env_with(LEAN_VERSIONS=" ".join(VERSIONS), LEAN_WHEELS_DIR=str(wheels))
    assert run([str(SCRIPT), str(baked)], env).returncode == 0
    # A version the volume already has (installed there later) is kept, not replaced.
    own = volume / VERSIONS[1]
    own.mkdir(parents=True)
    result = run(
        [str(ENTRYPOINT), "runtimes", "list"],
        env_with(TRTSERVE_BAKED_RUNTIMES_DIR=str(baked), TRTSERVE_RUNTIMES_DIR=str(volume)),
    )
    assert result.returncode == 0, result.stderr
    assert (volume / VERSIONS[0]).is_symlink()
    assert (volume / VERSIONS[0]).resolve() == (baked / VERSIONS[0]).resolve()
    assert not own.is_symlink()
    assert VERSIONS[0] in result.stdout


@pytest.mark.skipif(
    os.environ.get("TRTSERVE_TEST_DOWNLOAD_RUNTIME") != "1",
    reason="downloads a 45 MB wheel; set TRTSERVE_TEST_DOWNLOAD_RUNTIME=1",
)
def test_downloads_from_the_package_index(tmp_path: Path) -> None:
    target = tmp_path / "runtimes"
    result = run([str(SCRIPT), str(target)], env_with(LEAN_VERSIONS=VERSIONS[1]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (target / VERSIONS[1] / "libnvinfer_lean.so.11").stat().st_size > 10_000_000
