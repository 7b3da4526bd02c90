"""Installing a lean runtime from NVIDIA's TensorRT tar archive (laid out as NVIDIA ships it:
versioned files, links to them, a top folder named for the version), through the CLI."""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

import pytest

from trtserve.cli import runtimes as runtimes_cli
from trtserve.server.runtime.lean_store import LeanStore
from trtserve.server.runtime.plan_header import TrtVersion

LEAN = b"\x7fELF fake lean library " * 1000
PLUGIN = b"\x7fELF fake vc plugin " * 100


def tensorrt_tar(folder: Path, version: str, lean: bytes = LEAN) -> Path:
    """A .tar.gz shaped like NVIDIA's TensorRT archive of `version`."""
    major, minor, patch, _build = version.split(".")
    release = f"{major}.{minor}.{patch}"
    path = folder / f"TensorRT-{version}.Linux.x86_64-gnu.cuda-12.4.tar.gz"
    with tarfile.open(path, "w:gz") as archive:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"TensorRT-{version}/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))

        def link(name: str, target: str) -> None:
            info = tarfile.TarInfo(f"TensorRT-{version}/lib/{name}")
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)

        add("include/NvInfer.h", b"// header")
        add(f"lib/libnvinfer.so.{release}", b"\x7fELF the full runtime")
        add(f"lib/libnvinfer_lean.so.{release}", lean)
        link(f"libnvinfer_lean.so.{major}", f"libnvinfer_lean.so.{release}")
        add(f"lib/libnvinfer_vc_plugin.so.{release}", PLUGIN)
    return path


def install(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="trtserve")
    runtimes_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["runtimes", "install", *argv])
    return int(args.func(args))


def test_the_lean_library_and_plugin_are_installed_from_the_archive(tmp_path: Path) -> None:
    archive = tensorrt_tar(tmp_path, "10.0.1.6")
    root = tmp_path / "runtimes"
    assert install("10.0.1.6", "--from", str(archive), "--runtimes-dir", str(root)) == 0
    installed = LeanStore(root).get(TrtVersion(10, 0, 1, 6))
    assert installed is not None
    assert installed.library.read_bytes() == LEAN
    assert installed.library.name == "libnvinfer_lean.so.10"
    assert [p.name for p in installed.plugins] == ["libnvinfer_vc_plugin.so.10"]
    assert installed.manifest["archive"] == archive.name


def test_an_archive_of_another_version_is_refused_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tensorrt_tar(tmp_path, "10.0.0.6")
    root = tmp_path / "runtimes"
    assert install("10.0.1.6", "--from", str(archive), "--runtimes-dir", str(root)) == 1
    error = capsys.readouterr().err
    assert "expected NVIDIA's TensorRT 10.0.1.6 archive" in error
    assert "received an archive of TensorRT-10.0.0.6" in error
    assert LeanStore(root).list() == []


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: tensorrt_tar(p, "10.0.1.6", lean=b"not a library"), "expected an ELF"),
        (lambda p: p / "plain.tar.gz", "not a readable tar archive"),
    ],
    ids=["not ELF", "not a tar"],
)
def test_what_is_not_a_lean_library_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: object, expected: str
) -> None:
    archive = make(tmp_path)  # type: ignore[operator]
    if not archive.exists():
        archive.write_bytes(b"plain bytes")
    root = tmp_path / "runtimes"
    assert install("10.0.1.6", "--from", str(archive), "--runtimes-dir", str(root)) == 1
    assert expected in capsys.readouterr().err
    assert LeanStore(root).list() == []
    # Nothing half-written stays behind.
    assert not root.exists() or list(root.iterdir()) == []
