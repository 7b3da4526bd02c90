"""The lean runtime of one TensorRT version, taken from NVIDIA's TensorRT tar archive.

Hosts without the package index (air-gapped ones), and TensorRT versions that never had lean
wheels there, have NVIDIA's archive instead: `TensorRT-<version>/lib/` holds
`libnvinfer_lean.so.<major>.<minor>.<patch>` (the `.so.<major>` names are links to it) and
`libnvinfer_vc_plugin.so.<major>.<minor>.<patch>`. The archive's top folder names its
version, which must be the one asked for. The archive (gigabytes) is read once as a stream
and only those files are written.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import time
from pathlib import Path
from typing import Any

from trtserve.server.errors import FailedPrecondition
from trtserve.server.runtime.plan_header import TrtVersion

_ELF = b"\x7fELF"
_CHUNK = 1 << 20


def unpack_tensorrt_tar(archive: Path, version: TrtVersion, dest: Path) -> dict[str, Any]:
    """Write the lean library (and VC plugin) of `version` from `archive` into `dest`, named
    as a lean wheel names them; the manifest of what was written."""
    top = f"TensorRT-{version}"
    release = f"{version.major}.{version.minor}.{version.patch}"
    wanted = {
        f"libnvinfer_lean.so.{release}": f"libnvinfer_lean.so.{version.major}",
        f"libnvinfer_vc_plugin.so.{release}": f"libnvinfer_vc_plugin.so.{version.major}",
    }
    written: dict[str, str] = {}
    tops: set[str] = set()
    try:
        with tarfile.open(archive, mode="r|*") as stream:
            for member in stream:
                parts = member.name.removeprefix("./").split("/")
                tops.add(parts[0])
                if len(parts) != 3 or parts[1] != "lib" or parts[2] not in wanted:
                    continue
                if parts[0] != top or not member.isfile():
                    continue
                source = stream.extractfile(member)
                assert source is not None, "a regular member has contents"
                written[wanted[parts[2]]] = _write(source, dest / wanted[parts[2]], archive)
    except (tarfile.TarError, OSError) as e:
        raise FailedPrecondition(f"{archive.name}: not a readable tar archive: {e}") from None
    lean = wanted[f"libnvinfer_lean.so.{release}"]
    if lean not in written:
        found = ", ".join(sorted(t for t in tops if t.startswith("TensorRT-"))) or "no TensorRT"
        raise FailedPrecondition(
            f"{archive.name}: expected NVIDIA's TensorRT {version} archive with "
            f"{top}/lib/libnvinfer_lean.so.{release}, received an archive of {found}"
        )
    return {
        "version": str(version),
        "archive": archive.name,
        "library_sha256": written[lean],
        "files": sorted(written),
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _write(source: Any, target: Path, archive: Path) -> str:
    """Copy one member to `target`; its sha256. Refused unless it is an ELF library."""
    digest = hashlib.sha256()
    first = True
    with target.open("wb") as out:
        while chunk := source.read(_CHUNK):
            if first and not chunk.startswith(_ELF):
                raise FailedPrecondition(
                    f"{archive.name}: {target.name}: expected an ELF shared library, "
                    f"received bytes starting {chunk[:4]!r}"
                )
            first = False
            digest.update(chunk)
            out.write(chunk)
    os.chmod(target, 0o755)
    return digest.hexdigest()
