"""The directory of installed TensorRT lean runtimes, one folder per exact version.

Layout: ``<root>/<version>/libnvinfer_lean.so.<major>`` with ``libnvinfer_vc_plugin.so.<major>``
beside it and a ``manifest.json`` saying where it came from. A plan built without its lean
runtime loads only through the lean runtime of exactly its build version, so versions are never
shared or upgraded in place. Installing downloads the ``tensorrt-lean-cu<N>-libs`` wheel with
pip, checks it against its own RECORD and renames a finished folder into place, so a reader
never sees a half-installed version.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtserve.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from trtserve.server.runtime.lean_tar import unpack_tensorrt_tar
from trtserve.server.runtime.plan_header import TrtVersion

ENV_RUNTIMES_DIR = "TRTSERVE_RUNTIMES_DIR"
MANIFEST_NAME = "manifest.json"
CUDA_MAJORS = (12, 13)
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class InstalledRuntime:
    """One installed lean runtime."""

    version: TrtVersion
    directory: Path
    library: Path
    plugins: tuple[Path, ...]
    # From manifest.json: cuda_major, wheel, wheel_sha256, library_sha256, installed_at.
    manifest: dict[str, Any]

    @property
    def cuda_major(self) -> int | None:
        value = self.manifest.get("cuda_major")
        return value if isinstance(value, int) else None


def default_runtimes_dir() -> Path:
    """$TRTSERVE_RUNTIMES_DIR, else the user's data folder (~/.local/share/trtserve/runtimes)."""
    configured = os.environ.get(ENV_RUNTIMES_DIR)
    if configured:
        return Path(configured).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "trtserve" / "runtimes"


def lean_library_name(version: TrtVersion) -> str:
    return f"libnvinfer_lean.so.{version.major}"


def wheel_package(cuda_major: int) -> str:
    """The index package holding the lean libraries built for one CUDA major version."""
    if cuda_major not in CUDA_MAJORS:
        raise InvalidArgument(
            f"cuda major version: expected one of {', '.join(map(str, CUDA_MAJORS))}, "
            f"received {cuda_major}"
        )
    return f"tensorrt-lean-cu{cuda_major}-libs"


def install_command(version: TrtVersion | str) -> str:
    """The command a user runs to install a missing version."""
    return f"trtserve runtimes install {version}"


class LeanStore:
    """Lean runtimes installed under one root folder, found by scanning it."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_runtimes_dir()

    def list(self) -> list[InstalledRuntime]:
        """The installed runtimes, oldest version first."""
        found = (self._read(d) for d in self._version_dirs())
        return sorted((r for r in found if r is not None), key=lambda r: r.version)

    def get(self, version: TrtVersion) -> InstalledRuntime | None:
        return self._read(self.root / str(version))

    def path_for(self, version: TrtVersion) -> Path | None:
        """The lean library of exactly `version`, or None when it is not installed."""
        installed = self.get(version)
        return installed.library if installed is not None else None

    def install(
        self,
        version: TrtVersion | str,
        cuda_major: int = 13,
        progress: bool = True,
        force: bool = False,
    ) -> InstalledRuntime:
        """Download the lean wheel of `version` with pip and install it.

        With `progress`, pip's own output (its progress bar) goes to this process's stderr;
        without, it is kept and quoted when pip fails. An installed version is returned as is
        unless `force`.
        """
        version = _as_version(version)
        installed = self.get(version)
        if installed is not None and not force:
            return installed
        package = wheel_package(cuda_major)
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=_TMP_PREFIX + "download-", dir=self.root) as tmp:
            wheel = _pip_download(package, version, Path(tmp), progress)
            return self.install_wheel(wheel, version, cuda_major, replace=force)

    def install_wheel(
        self,
        wheel: Path,
        version: TrtVersion | str,
        cuda_major: int,
        replace: bool = False,
    ) -> InstalledRuntime:
        """Check a downloaded lean wheel and unpack its libraries as `<root>/<version>`."""
        version = _as_version(version)
        _check_wheel_name(wheel, wheel_package(cuda_major), version)

        def unpack(staging: Path) -> dict[str, Any]:
            return {**_unpack(wheel, version, staging), "cuda_major": cuda_major}

        return self._install_staged(version, replace, unpack)

    def install_tensorrt_tar(
        self, archive: Path, version: TrtVersion | str, replace: bool = False
    ) -> InstalledRuntime:
        """Install `version`'s lean library from NVIDIA's TensorRT tar archive (lean_tar)."""
        version = _as_version(version)

        def unpack(staging: Path) -> dict[str, Any]:
            manifest = unpack_tensorrt_tar(archive, version, staging)
            return {**manifest, "archive_sha256": _sha256_file(archive)}

        return self._install_staged(version, replace, unpack)

    def _install_staged(
        self, version: TrtVersion, replace: bool, unpack: Callable[[Path], dict[str, Any]]
    ) -> InstalledRuntime:
        """Fill a staging folder (`unpack` returns its manifest), then move it into place as
        `<root>/<version>` in one rename; nothing half-written is ever seen there."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{version}-", dir=self.root))
        try:
            staging.chmod(0o755)
            _write_manifest(staging / MANIFEST_NAME, unpack(staging))
            self._move_into_place(staging, version, replace)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        installed = self.get(version)
        if installed is None:
            raise FailedPrecondition(f"lean runtime {version}: installed but not readable")
        return installed

    def remove(self, version: TrtVersion | str) -> None:
        """Uninstall `version`; NotFound when it is not installed."""
        version = _as_version(version)
        target = self.root / str(version)
        if not target.is_dir():
            raise NotFound(f"lean runtime {version} is not installed in {self.root}")
        trash = self.root / f"{_TRASH_PREFIX}{version}-{os.getpid()}-{time.monotonic_ns()}"
        # Renaming first makes the version vanish at once; deleting 100 MB comes after.
        target.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _move_into_place(self, staging: Path, version: TrtVersion, replace: bool) -> None:
        target = self.root / str(version)
        if replace and target.exists():
            self.remove(version)
        try:
            staging.rename(target)
        except OSError as e:
            if target.is_dir():
                # Another process finished the same install first; keep its copy.
                return
            raise FailedPrecondition(f"lean runtime {version}: cannot install: {e}") from e

    def _version_dirs(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for child in self.root.iterdir():
            if child.is_dir() and not child.name.startswith("."):
                yield child

    def _read(self, directory: Path) -> InstalledRuntime | None:
        try:
            version = TrtVersion.parse(directory.name)
        except ValueError:
            return None
        library = directory / lean_library_name(version)
        if not library.is_file():
            return None
        plugins = tuple(sorted(directory.glob("libnvinfer_vc_plugin*")))
        return InstalledRuntime(version, directory, library, plugins, _read_manifest(directory))


def _as_version(version: TrtVersion | str) -> TrtVersion:
    if isinstance(version, TrtVersion):
        return version
    try:
        return TrtVersion.parse(version)
    except ValueError as e:
        raise InvalidArgument(str(e)) from None


def _pip_download(package: str, version: TrtVersion, dest: Path, progress: bool) -> Path:
    output = None if progress else subprocess.PIPE
    result = subprocess.run(
        _download_command(package, version, dest),
        stdout=output,
        stderr=subprocess.STDOUT if output else None,
        text=True,
    )
    if result.returncode != 0:
        said = result.stdout if not progress else _quiet_retry(package, version, dest)
        offered = _offered_versions(said or "")
        if offered is not None and str(version) not in offered:
            raise Unavailable(
                f"lean runtime {version}: the package index has no {package} wheel of "
                f"{version} for this platform; it has {', '.join(offered) or 'none'}. A plan "
                f"built with TensorRT {version} loads only with exactly that lean runtime: "
                "install its wheel downloaded elsewhere with --wheel PATH, or try the other "
                "CUDA major version's build (--cuda)"
            )
        tail = (said or "").strip().splitlines()[-5:]
        detail = (": " + " | ".join(tail)) if tail else ""
        raise Unavailable(
            f"lean runtime {version}: pip could not download {package}=={version} "
            f"(exit status {result.returncode}){detail}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise FailedPrecondition(
            f"lean runtime {version}: expected one wheel from pip, found {len(wheels)}"
        )
    return wheels[0]


def _download_command(package: str, version: TrtVersion, dest: Path) -> list[str]:
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--progress-bar", "off", "--dest", str(dest), f"{package}=={version}",
    ]  # fmt: skip


def _quiet_retry(package: str, version: TrtVersion, dest: Path) -> str:
    """pip's words for a failed download whose output went to the terminal (asked again)."""
    retry = subprocess.run(
        _download_command(package, version, dest),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return retry.stdout or ""


# pip's "Could not find a version that satisfies the requirement ... (from versions: a, b)".
_FROM_VERSIONS = re.compile(r"\(from versions: ([^)]*)\)")


def _offered_versions(pip_output: str) -> list[str] | None:
    """The versions pip saw on the index (binary wheels only, as asked), or None if unsaid."""
    found = _FROM_VERSIONS.search(pip_output)
    if found is None:
        return None
    listed = found.group(1).strip()
    return [] if listed == "none" else [v.strip() for v in listed.split(",") if v.strip()]


def _check_wheel_name(wheel: Path, package: str, version: TrtVersion) -> None:
    parts = wheel.name.split("-")
    expected = package.replace("-", "_")
    if not wheel.name.endswith(".whl") or len(parts) < 5:
        raise FailedPrecondition(f"{wheel.name}: not a wheel file name")
    if parts[0].lower() != expected or parts[1] != str(version):
        raise FailedPrecondition(
            f"{wheel.name}: expected the wheel of {expected} {version}, "
            f"received {parts[0]} {parts[1]}"
        )


def _is_library(name: str, version: TrtVersion) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base == lean_library_name(version) or base.startswith("libnvinfer_vc_plugin")


def _unpack(wheel: Path, version: TrtVersion, dest: Path) -> dict[str, Any]:
    """Extract the lean libraries flat into `dest`, checking each against the wheel's RECORD."""
    wheel_sha = _sha256_file(wheel)
    try:
        with zipfile.ZipFile(wheel) as archive:
            record = _read_record(archive, wheel.name)
            members = [
                i for i in archive.infolist() if not i.is_dir() and _is_library(i.filename, version)
            ]
            names = [m.filename.rsplit("/", 1)[-1] for m in members]
            if lean_library_name(version) not in names:
                raise FailedPrecondition(
                    f"{wheel.name}: no {lean_library_name(version)} inside; "
                    f"found {', '.join(names) or 'no TensorRT library'}"
                )
            digests = {}
            for member in members:
                digests[member.filename] = _extract(archive, member, dest, record, wheel.name)
    except zipfile.BadZipFile as e:
        raise FailedPrecondition(f"{wheel.name}: corrupt wheel: {e}") from e
    library_sha = next(
        d
        for n, d in digests.items()
        if n.endswith("/" + lean_library_name(version)) or n == lean_library_name(version)
    )
    return {
        "version": str(version),
        "wheel": wheel.name,
        "wheel_sha256": wheel_sha,
        "library_sha256": library_sha,
        "files": sorted(n.rsplit("/", 1)[-1] for n in digests),
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _read_record(archive: zipfile.ZipFile, wheel_name: str) -> dict[str, str]:
    """Path -> "sha256=<urlsafe b64>" from the wheel's RECORD."""
    records = [n for n in archive.namelist() if n.endswith(".dist-info/RECORD")]
    if len(records) != 1:
        raise FailedPrecondition(
            f"{wheel_name}: expected one .dist-info/RECORD, found {len(records)}"
        )
    text = archive.read(records[0]).decode("utf-8")
    return {row[0]: row[1] for row in csv.reader(io.StringIO(text)) if len(row) >= 2}


def _extract(
    archive: zipfile.ZipFile,
    member: zipfile.ZipInfo,
    dest: Path,
    record: dict[str, str],
    wheel_name: str,
) -> str:
    """Write one member as `dest/<basename>`; return its sha256 hex after checking RECORD."""
    expected = record.get(member.filename, "")
    if not expected.startswith("sha256="):
        raise FailedPrecondition(f"{wheel_name}: {member.filename} has no sha256 in RECORD")
    digest = hashlib.sha256()
    # Only the basename is used: a member path can never point outside `dest`.
    target = dest / member.filename.rsplit("/", 1)[-1]
    with archive.open(member) as src, target.open("wb") as out:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    found = "sha256=" + base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    if found != expected:
        raise FailedPrecondition(
            f"{wheel_name}: {member.filename} does not match RECORD: expected {expected}, "
            f"received {found}"
        )
    os.chmod(target, 0o755)
    return digest.hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _read_manifest(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
