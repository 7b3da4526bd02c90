"""The container header of a TensorRT plan file, read without TensorRT or a GPU.

Layout (little-endian), confirmed on plans of TensorRT 8.6, 10.0 and 11.0:

    0x00 u32 magic "ftrt"            0x04 u32 container version (0)
    0x08 u64 number of entries       0x10 u64 total size (the file size)
    0x18 u8 major, minor, patch, build: the TensorRT version that built the plan
    0x1C u32 platform tag            0x20 entries, 24 bytes each: u32 tag, u32 0, u64 offset,
                                          u64 size
    end-4 u32 footer

It tells which TensorRT version built the plan and whether a lean runtime (host code) or a
plugin library is embedded. Each version part is one byte, so a build number above 255 cannot
be represented; no TensorRT release has one.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = 0x74727466
# A bare engine ("ptrt"), without the container every TensorRT from 8.6 on writes around it.
LEGACY_MAGIC = 0x74727470
# In a bare engine the version follows the engine's own header as four u8 fields, each tagged
# 0x00010002 in a TensorRT 8.0.1.6 engine and 0x00018002 in the engine sections of 8.6 and later.
_BARE_VERSION_AT = (20, 24)
_BARE_U8_TAGS = (0x00010002, 0x00018002)
FOOTER = 0x8B8D8B99
# Seen in 10.x and 11.x plans built on Linux; 8.6 plans have 0 here.
PLATFORM_LINUX = 0x74727472
KNOWN_CONTAINER_VERSIONS = frozenset({0})
HEADER_SIZE = 0x20
ENTRY_SIZE = 24
FOOTER_SIZE = 4
# Version-compatible plans (the only kind a lean runtime loads) exist since TensorRT 8.6.
MIN_VERSION = (8, 6)
# Real plans have 1 to 4 entries; a huge count means a corrupt header, not a huge table.
MAX_ENTRIES = 1024

TAG_ENGINE = "ENGN"
TAG_LEAN = "LEAN"
TAG_PLUGINS = "PLGN"
TAG_WEIGHTS = "WGHT"
KNOWN_TAGS = frozenset({TAG_ENGINE, TAG_LEAN, TAG_PLUGINS, TAG_WEIGHTS})

_HEAD = struct.Struct("<IIQQ4BI")
_ENTRY = struct.Struct("<IIQQ")
_FOOTER = struct.Struct("<I")
_VERSION_TEXT = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+)$")


class PlanHeaderError(ValueError):
    """The bytes are not a readable TensorRT plan; the message says what is wrong."""


class LegacyEngineError(PlanHeaderError):
    """A bare engine from before TensorRT 8.6: no runtime here loads it.

    `version` is the TensorRT version the engine records, or None when it cannot be read.
    """

    def __init__(self, version: TrtVersion | None, where: str = "") -> None:
        self.version = version
        prefix = f"{where}: " if where else ""
        if not self.before_version_compatibility:
            message = (
                f"a bare TensorRT {version} engine section, without the 'ftrt' plan container "
                "that TensorRT writes around it (an engine cut out of a plan file?): serve the "
                "whole plan file as TensorRT wrote it"
            )
        else:
            built = f"TensorRT {version}" if version is not None else "a TensorRT older than 8.6"
            message = (
                "a TensorRT engine in the format before 8.6 (it starts with 'ptrt', without the "
                f"'ftrt' plan container), built with {built}: it is not version-compatible, "
                "since version-compatible plans exist only since 8.6, so no lean runtime can "
                "load it. Rebuild it with TensorRT 8.6 or later with the VERSION_COMPATIBLE "
                "flag, or serve it with the full TensorRT it was built with"
            )
        super().__init__(prefix + message)

    @property
    def before_version_compatibility(self) -> bool:
        """True unless the engine records a version of 8.6 or later."""
        return self.version is None or (self.version.major, self.version.minor) < MIN_VERSION


@dataclass(frozen=True, order=True)
class TrtVersion:
    """A TensorRT version, major.minor.patch.build (e.g. 11.0.0.114)."""

    major: int
    minor: int
    patch: int
    build: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}.{self.build}"

    @classmethod
    def parse(cls, text: str) -> TrtVersion:
        """Parse "11.0.0.114"; ValueError names the expected form."""
        match = _VERSION_TEXT.match(text.strip())
        if match is None:
            raise ValueError(
                f"TensorRT version {text!r}: expected four numbers major.minor.patch.build, "
                "e.g. 11.0.0.114"
            )
        major, minor, patch, build = (int(part) for part in match.groups())
        return cls(major, minor, patch, build)


@dataclass(frozen=True)
class PlanEntry:
    """One entry of the container: a tag such as ENGN and where its payload lies."""

    tag: str
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class PlanHeader:
    """What the container header of a plan says."""

    container_version: int
    total_size: int
    version: TrtVersion
    platform_tag: int
    entries: tuple[PlanEntry, ...]
    footer: int

    @property
    def has_lean_runtime(self) -> bool:
        """True when the plan embeds its lean runtime: it carries host code."""
        return any(e.tag == TAG_LEAN for e in self.entries)

    @property
    def has_plugins(self) -> bool:
        """True when the plan embeds a serialized plugin library."""
        return any(e.tag == TAG_PLUGINS for e in self.entries)

    @property
    def engine(self) -> PlanEntry:
        """The ENGN entry (the reader refuses a plan without one)."""
        return next(e for e in self.entries if e.tag == TAG_ENGINE)

    @property
    def has_host_code(self) -> bool:
        """True when loading the plan runs code it carries (a lean runtime or plugin library)."""
        return self.has_lean_runtime or self.has_plugins

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(e.tag for e in self.entries)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view, for `trtserve inspect --json`."""
        return {
            "tensorrt_version": str(self.version),
            "container_version": self.container_version,
            "total_size": self.total_size,
            "platform_tag": f"0x{self.platform_tag:08x}",
            "entries": [{"tag": e.tag, "offset": e.offset, "size": e.size} for e in self.entries],
            "has_lean_runtime": self.has_lean_runtime,
            "has_plugins": self.has_plugins,
        }


def read_plan_header(data: bytes) -> PlanHeader:
    """Read and check the header of a plan held in memory."""
    view = memoryview(data)
    return _parse(view[: _table_end_bound(view)], len(data), bytes(view[-FOOTER_SIZE:]))


def read_plan_header_file(path: str | os.PathLike[str]) -> PlanHeader:
    """Read and check the header of a plan file, reading only its header, table and footer."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(HEADER_SIZE)
            table = f.read(_table_size(head)) if len(head) == HEADER_SIZE else b""
            footer = b""
            if size >= FOOTER_SIZE:
                f.seek(size - FOOTER_SIZE)
                footer = f.read(FOOTER_SIZE)
    except OSError as e:
        raise PlanHeaderError(f"{path}: cannot read: {e.strerror or e}") from e
    try:
        return _parse(memoryview(head + table), size, footer)
    except LegacyEngineError as e:
        raise LegacyEngineError(e.version, where=str(path)) from None
    except PlanHeaderError as e:
        raise PlanHeaderError(f"{path}: {e}") from None


def read_engine_section(path: str | os.PathLike[str], header: PlanHeader) -> bytes:
    """The bytes of the plan file's ENGN entry (the header was read from the same file)."""
    engine = header.engine
    try:
        with Path(path).open("rb") as f:
            f.seek(engine.offset)
            return f.read(engine.size)
    except OSError as e:
        raise PlanHeaderError(f"{path}: cannot read: {e.strerror or e}") from e


def engine_section(data: bytes, header: PlanHeader) -> memoryview:
    """The ENGN entry of a plan held in memory, without a copy."""
    return memoryview(data)[header.engine.offset : header.engine.end]


def _table_size(head: bytes) -> int:
    count = struct.unpack_from("<Q", head, 8)[0]
    return int(min(count, MAX_ENTRIES)) * ENTRY_SIZE


def _table_end_bound(view: memoryview) -> int:
    if len(view) < HEADER_SIZE:
        return len(view)
    return HEADER_SIZE + _table_size(bytes(view[:HEADER_SIZE]))


def _parse(head: memoryview, size: int, footer: bytes) -> PlanHeader:
    """Check a plan from its first bytes (header and table), its size and its last 4 bytes."""
    _check_magic(head)
    if len(head) < HEADER_SIZE:
        raise PlanHeaderError(
            f"truncated plan: {size} bytes, shorter than the {HEADER_SIZE}-byte header"
        )
    magic, container, count, total, major, minor, patch, build, platform = _HEAD.unpack_from(
        head, 0
    )
    del magic
    if container not in KNOWN_CONTAINER_VERSIONS:
        known = ", ".join(str(v) for v in sorted(KNOWN_CONTAINER_VERSIONS))
        raise PlanHeaderError(
            f"unknown plan container version {container}; this reader knows {known}"
        )
    _check_size(total, size)
    version = TrtVersion(major, minor, patch, build)
    if (major, minor) < MIN_VERSION:
        raise PlanHeaderError(
            f"plan built with TensorRT {version}: older than 8.6, which has no "
            "version-compatible plans (or the header is corrupt)"
        )
    entries = _read_entries(head, count, total)
    found_footer = _FOOTER.unpack(footer)[0]
    if found_footer != FOOTER:
        raise PlanHeaderError(
            f"bad plan footer: expected 0x{FOOTER:08x} in the last 4 bytes, "
            f"found 0x{found_footer:08x} (the file is corrupt or cut)"
        )
    return PlanHeader(container, total, version, platform, entries, found_footer)


def _check_magic(head: memoryview) -> None:
    if len(head) < 4:
        raise PlanHeaderError(f"not a TensorRT plan: only {len(head)} bytes")
    magic = struct.unpack_from("<I", head, 0)[0]
    if magic == LEGACY_MAGIC:
        raise LegacyEngineError(_legacy_version(bytes(head)))
    if magic != MAGIC:
        raise PlanHeaderError(
            f"not a TensorRT plan: expected magic 0x{MAGIC:08x} ('ftrt') at offset 0, "
            f"found 0x{magic:08x}"
        )


def _legacy_version(head: bytes) -> TrtVersion | None:
    for start in _BARE_VERSION_AT:
        for tag in _BARE_U8_TAGS:
            parts = []
            for i in range(4):
                at = start + 5 * i
                if at + 5 > len(head) or struct.unpack_from("<I", head, at)[0] != tag:
                    break
                parts.append(head[at + 4])
            if len(parts) == 4:
                return TrtVersion(*parts)
    return None


def _check_size(total: int, size: int) -> None:
    if size < total:
        raise PlanHeaderError(f"truncated plan: the header says {total} bytes, the data has {size}")
    if size > total:
        raise PlanHeaderError(
            f"plan size mismatch: the header says {total} bytes, the data has {size} "
            "(trailing bytes or a corrupt header)"
        )


def _read_entries(head: memoryview, count: int, total: int) -> tuple[PlanEntry, ...]:
    if count == 0 or count > MAX_ENTRIES:
        raise PlanHeaderError(f"bad plan header: {count} entries, expected 1 to {MAX_ENTRIES}")
    table_end = HEADER_SIZE + count * ENTRY_SIZE
    payload_end = total - FOOTER_SIZE
    if table_end > payload_end or len(head) < table_end:
        raise PlanHeaderError(
            f"entries out of bounds: a table of {count} entries ends at {table_end}, "
            f"beyond the plan's {total} bytes"
        )
    entries = []
    for i in range(count):
        raw_tag, _, offset, size = _ENTRY.unpack_from(head, HEADER_SIZE + i * ENTRY_SIZE)
        entry = PlanEntry(_tag_name(raw_tag), offset, size)
        if offset < table_end or entry.end > payload_end:
            raise PlanHeaderError(
                f"entries out of bounds: entry {i} ({entry.tag}) spans bytes "
                f"{offset}..{entry.end}, outside the payload {table_end}..{payload_end}"
            )
        entries.append(entry)
    if not any(e.tag == TAG_ENGINE for e in entries):
        raise PlanHeaderError(
            f"bad plan header: no {TAG_ENGINE} entry among {', '.join(e.tag for e in entries)}"
        )
    return tuple(entries)


def _tag_name(raw: int) -> str:
    # The tag is stored as a u32 whose big-endian bytes spell it ("ENGN" reads "NGNE" on disk).
    text = raw.to_bytes(4, "big")
    if all(0x20 < b < 0x7F for b in text):
        return text.decode("ascii")
    return f"0x{raw:08x}"
