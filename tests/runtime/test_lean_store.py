"""The lean runtime store: scanning, checking and unpacking wheels, removing versions.

The wheels here are zips built by the test with the real wheel's layout and RECORD: the store's
file handling is under test, not TensorRT. The real download runs with TRTSERVE_TEST_NETWORK=1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

from trtserve.server.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from trtserve.server.runtime.lean_store import (
    ENV_RUNTIMES_DIR,
    LeanStore,
    default_runtimes_dir,
    install_command,
)
from trtserve.server.runtime.plan_header import TrtVersion

VERSION = TrtVersion(11, 0, 0, 114)
LIBRARY = b"\x7fELF fake lean library " * 1000
PLUGIN = b"\x7fELF fake vc plugin " * 100


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(
    folder: Path,
    version: str = "11.0.0.114",
    cuda: int = 13,
    files: dict[str, bytes] | None = None,
    record_override: dict[str, bytes] | None = None,
) -> Path:
    """A wheel shaped like tensorrt-lean-cu13-libs: libraries plus a RECORD of their hashes."""
    major = version.split(".")[0]
    if files is None:
        files = {
            f"tensorrt_lean_libs/libnvinfer_lean.so.{major}": LIBRARY,
            f"tensorrt_lean_libs/libnvinfer_vc_plugin.so.{major}": PLUGIN,
            "tensorrt_lean_libs/__init__.py": b"",
        }
    dist = f"tensorrt_lean_cu{cuda}_libs-{version}.dist-info"
    hashed = {**files, **(record_override or {})}
    record = "".join(f"{name},{record_hash(data)},{len(data)}\n" for name, data in hashed.items())
    record += f"{dist}/RECORD,,\n"
    path = folder / f"tensorrt_lean_cu{cuda}_libs-{version}-py3-none-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(f"{dist}/RECORD", record)
    return path


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_install_wheel_unpacks_libraries_and_manifest(tmp_path: Path) -> None:
    store = LeanStore(tmp_path / "runtimes")
    wheel = make_wheel(tmp_path)
    installed = store.install_wheel(wheel, "11.0.0.114", cuda_major=13)
    directory = tmp_path / "runtimes" / "11.0.0.114"
    assert installed.version == VERSION
    assert installed.library == directory / "libnvinfer_lean.so.11"
    assert installed.library.read_bytes() == LIBRARY
    assert [p.name for p in installed.plugins] == ["libnvinfer_vc_plugin.so.11"]
    assert not (directory / "__init__.py").exists()
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["library_sha256"] == hashlib.sha256(LIBRARY).hexdigest()
    assert manifest["wheel_sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert manifest["cuda_major"] == 13
    assert installed.cuda_major == 13
    assert store.path_for(VERSION) == installed.library
    assert [r.version for r in store.list()] == [VERSION]
    assert leftovers(store.root) == []


def test_install_is_found_by_a_new_store(tmp_path: Path) -> None:
    root = tmp_path / "runtimes"
    LeanStore(root).install_wheel(make_wheel(tmp_path), VERSION, cuda_major=13)
    assert LeanStore(root).path_for(VERSION) == root / "11.0.0.114" / "libnvinfer_lean.so.11"


def test_library_not_matching_record_is_refused(tmp_path: Path) -> None:
    store = LeanStore(tmp_path / "runtimes")
    wheel = make_wheel(
        tmp_path, record_override={"tensorrt_lean_libs/libnvinfer_lean.so.11": b"other bytes"}
    )
    with pytest.raises(FailedPrecondition, match=r"libnvinfer_lean\.so\.11 does not match RECORD"):
        store.install_wheel(wheel, VERSION, cuda_major=13)
    assert store.list() == []
    assert leftovers(store.root) == []


def test_wheel_without_the_library_is_refused(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, files={"tensorrt_lean_libs/__init__.py": b""})
    with pytest.raises(FailedPrecondition, match=r"no libnvinfer_lean\.so\.11 inside"):
        LeanStore(tmp_path / "runtimes").install_wheel(wheel, VERSION, cuda_major=13)


def test_corrupt_wheel_is_refused(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path)
    data = wheel.read_bytes()
    wheel.write_bytes(data[: len(data) // 2])
    store = LeanStore(tmp_path / "runtimes")
    with pytest.raises(FailedPrecondition, match="corrupt wheel"):
        store.install_wheel(wheel, VERSION, cuda_major=13)
    assert store.list() == []


def test_wheel_of_another_version_is_refused(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, version="11.4.0.106")
    with pytest.raises(FailedPrecondition, match=r"expected the wheel of .* 11\.0\.0\.114"):
        LeanStore(tmp_path / "runtimes").install_wheel(wheel, VERSION, cuda_major=13)


def test_wheel_of_another_cuda_is_refused(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, cuda=12)
    with pytest.raises(FailedPrecondition, match="tensorrt_lean_cu13_libs"):
        LeanStore(tmp_path / "runtimes").install_wheel(wheel, VERSION, cuda_major=13)


def test_unknown_cuda_major_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="received 11"):
        LeanStore(tmp_path).install("11.0.0.114", cuda_major=11)


def test_bad_version_text_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"major\.minor\.patch\.build"):
        LeanStore(tmp_path).install("latest")


def test_installed_version_is_not_downloaded_again(tmp_path: Path) -> None:
    store = LeanStore(tmp_path / "runtimes")
    first = store.install_wheel(make_wheel(tmp_path), VERSION, cuda_major=13)
    # Already there: no pip run (this would need the network otherwise).
    assert store.install(VERSION) == first


def test_remove(tmp_path: Path) -> None:
    store = LeanStore(tmp_path / "runtimes")
    store.install_wheel(make_wheel(tmp_path), VERSION, cuda_major=13)
    store.remove("11.0.0.114")
    assert store.list() == []
    assert store.path_for(VERSION) is None
    assert list(store.root.iterdir()) == []
    with pytest.raises(NotFound, match=r"11\.0\.0\.114 is not installed"):
        store.remove(VERSION)


def test_scan_ignores_what_is_not_a_runtime(tmp_path: Path) -> None:
    (tmp_path / "11.4.0.106").mkdir()  # no library inside
    (tmp_path / "notes").mkdir()
    (tmp_path / ".tmp-10.16.1.11-x").mkdir()
    (tmp_path / ".tmp-10.16.1.11-x" / "libnvinfer_lean.so.10").write_bytes(b"partial")
    (tmp_path / "10.16.1.11").mkdir()
    (tmp_path / "10.16.1.11" / "libnvinfer_lean.so.10").write_bytes(b"x")
    (tmp_path / "10.16.1.11" / "libnvinfer_lean.so.11").write_bytes(b"wrong major")
    store = LeanStore(tmp_path)
    assert [str(r.version) for r in store.list()] == ["10.16.1.11"]
    assert store.list()[0].manifest == {}
    assert store.path_for(TrtVersion(11, 4, 0, 106)) is None


def test_missing_root_lists_nothing(tmp_path: Path) -> None:
    assert LeanStore(tmp_path / "absent").list() == []


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_RUNTIMES_DIR, str(tmp_path / "rt"))
    assert default_runtimes_dir() == tmp_path / "rt"
    assert LeanStore().root == tmp_path / "rt"
    monkeypatch.delenv(ENV_RUNTIMES_DIR)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_runtimes_dir() == tmp_path / "data" / "trtserve" / "runtimes"


def test_install_command_names_the_version() -> None:
    assert install_command(VERSION) == "trtserve runtimes install 11.0.0.114"


@pytest.mark.skipif(
    os.environ.get("TRTSERVE_TEST_NETWORK") != "1",
    reason="downloads a 45 MB wheel; set TRTSERVE_TEST_NETWORK=1",
)
def test_install_downloads_the_real_wheel(tmp_path: Path) -> None:
    store = LeanStore(tmp_path)
    installed = store.install("11.0.0.114", cuda_major=13, progress=False)
    assert installed.library.name == "libnvinfer_lean.so.11"
    assert installed.library.stat().st_size > 50_000_000
    assert installed.library.read_bytes()[:4] == b"\x7fELF"
    assert installed.manifest["wheel"].startswith("tensorrt_lean_cu13_libs-11.0.0.114-")
    assert [p.name for p in installed.plugins] == ["libnvinfer_vc_plugin.so.11"]


def test_a_version_the_index_lacks_is_refused_naming_what_it_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pip itself, against a local index holding one real-shaped wheel: the message lists what
    the index has instead of quoting pip."""
    index = tmp_path / "index"
    index.mkdir()
    make_wheel(index, "11.0.0.114")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    store = LeanStore(tmp_path / "runtimes")
    for progress in (False, True):
        with pytest.raises(Unavailable) as refused:
            store.install("10.0.1.6", progress=progress)
        message = str(refused.value)
        assert "no tensorrt-lean-cu13-libs wheel of 10.0.1.6" in message, message
        assert "it has 11.0.0.114." in message and "--wheel PATH" in message, message
        assert store.list() == []
