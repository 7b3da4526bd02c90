"""What a plan's engine section (its ENGN entry) says beyond the container header.

TensorRT does not publish this layout. What is read here was worked out on the eleven real plans
of ../shared/plans and ../shared/plans/more (TensorRT 8.6.1.6 to 11.0.0.114, built on GPUs of
compute capability 8.0 to 12.0), and nothing is reported that those plans do not confirm:

- The section is a stream of tagged fields: a u32 tag 0x000180TT, then a value for the value
  types TT (02: u8, 07: u32, 08 and 09: u64, 0a: a bool byte); any other TT opens a record.
- It starts with the TensorRT version as four u8 fields (equal to the container's), then opens
  the engine record, whose first field is a u32: TensorRT's HardwareCompatibilityLevel (0 none,
  1 AMPERE_PLUS, 2 SAME_COMPUTE_CAPABILITY). It reads 1 in all six plans built with AMPERE_PLUS
  and 0 in the five built without.
- Two records later come the properties of the GPU that built the plan, in one of two layouts:
  up to TensorRT 10.5 the compute capability first (u32 major, u32 minor; the SM count is the
  11th value, the memory the last u64); from 10.15 on the memory first (u64), the SM count 9th,
  the compute capability 13th and 14th. Both match every GPU named in the plans' READMEs.
- A layer that runs a plugin stores "PluginType\\0<name>\\0PluginVersion\\0<version>\\0".

Which field says "version-compatible", if any, is NOT known: the version-compatible plans and
those that are not differ in no field found (see plan_compatibility).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum

_FIELD = 0x00018000
_U8, _U32, _U64, _U64_B, _BOOL = 0x02, 0x07, 0x08, 0x09, 0x0A
_VALUE_SIZES = {_U8: 1, _U32: 4, _U64: 8, _U64_B: 8, _BOOL: 1}
# The version fields lie within the section's own small header (20 or 24 bytes seen).
_VERSION_SEARCH = 64
_PLUGIN_KEY = b"PluginType\x00"
_PLUGIN_VERSION_KEY = "PluginVersion"
# A plugin's key/value text is short; a longer one is not what this reader knows.
_MAX_PLUGIN_TEXT = 4096


class HardwareLevel(StrEnum):
    """TensorRT's hardware compatibility levels, as `trtserve inspect --json` names them."""

    NONE = "none"
    AMPERE_PLUS = "ampere_plus"
    SAME_COMPUTE_CAPABILITY = "same_compute_capability"


_LEVELS = {
    0: HardwareLevel.NONE,
    1: HardwareLevel.AMPERE_PLUS,
    2: HardwareLevel.SAME_COMPUTE_CAPABILITY,
}


@dataclass(frozen=True)
class BuildDevice:
    """The GPU a plan was built on, as its engine section records it."""

    compute_capability: tuple[int, int]
    sm_count: int
    memory_bytes: int

    def describe(self) -> str:
        major, minor = self.compute_capability
        gib = self.memory_bytes / (1 << 30)
        return f"compute capability {major}.{minor}, {self.sm_count} SMs, {gib:.1f} GiB"


@dataclass(frozen=True)
class PluginUse:
    """A plugin a layer of the engine runs."""

    name: str
    version: str

    def describe(self) -> str:
        return f"{self.name} (version {self.version})" if self.version else self.name


@dataclass(frozen=True)
class EngineFacts:
    """What the engine section tells; None where it cannot be read, with the reason."""

    hardware_level: HardwareLevel | None
    built_on: BuildDevice | None
    plugins: tuple[PluginUse, ...]
    # Why hardware_level or built_on is None ("" when both are known).
    unknown_reason: str = ""


def read_engine_facts(
    section: bytes | memoryview, version: tuple[int, int, int, int]
) -> EngineFacts:
    """Read the engine section of a plan built with TensorRT `version` (major..build)."""
    data = memoryview(section)
    plugins = plugins_in(data)
    start = _after_version(data, version)
    if start is None:
        return EngineFacts(
            None,
            None,
            plugins,
            "the engine section does not begin with the TensorRT version fields that every "
            "known plan has (a layout this reader does not know, or a damaged plan)",
        )
    reader = _Reader(data, start)
    level = _hardware_level(reader)
    if level is None:
        return EngineFacts(
            None, None, plugins, "the engine record does not begin with a known field layout"
        )
    built_on = _build_device(reader)
    reason = "" if built_on is not None else "the build GPU's record has an unknown layout"
    return EngineFacts(level, built_on, plugins, reason)


class _Reader:
    """Tagged fields of the engine section, read one at a time from `position`."""

    def __init__(self, data: memoryview, position: int) -> None:
        self.data = data
        self.position = position

    def tag(self) -> int | None:
        """The record or value type of the next field, or None when no field starts here."""
        if self.position + 4 > len(self.data):
            return None
        raw = struct.unpack_from("<I", self.data, self.position)[0]
        return raw & 0xFF if raw & ~0xFF == _FIELD else None

    def value(self) -> tuple[int, int] | None:
        """(type, value) of the next field when it is a value; the reader moves past it."""
        kind = self.tag()
        if kind is None or kind not in _VALUE_SIZES:
            return None
        size = _VALUE_SIZES[kind]
        begin = self.position + 4
        if begin + size > len(self.data):
            return None
        self.position = begin + size
        return kind, int.from_bytes(self.data[begin : begin + size], "little")

    def open_record(self) -> bool:
        """Move past a field that opens a record; False (not moving) when the next is not one."""
        kind = self.tag()
        if kind is None or kind in _VALUE_SIZES:
            return False
        self.position += 4
        return True


def _after_version(data: memoryview, version: tuple[int, int, int, int]) -> int | None:
    fields = b"".join(struct.pack("<IB", _FIELD | _U8, part & 0xFF) for part in version)
    found = bytes(data[: _VERSION_SEARCH + len(fields)]).find(fields)
    return None if found < 0 else found + len(fields)


def _hardware_level(reader: _Reader) -> HardwareLevel | None:
    if not reader.open_record():
        return None
    field = reader.value()
    if field is None or field[0] != _U32:
        return None
    return _LEVELS.get(field[1])


def _build_device(reader: _Reader) -> BuildDevice | None:
    if not (reader.open_record() and reader.open_record()):
        return None
    values: list[tuple[int, int]] = []
    while (field := reader.value()) is not None:
        values.append(field)
    kinds = [kind for kind, _ in values]
    numbers = [value for _, value in values]
    # Up to 10.5: major, minor, two clocks, then two u64; memory is the last u64.
    if kinds[:7] == [_U32] * 5 + [_U64] * 2 and len(values) >= 11 and _U64_B in kinds:
        memory = max(i for i, kind in enumerate(kinds) if kind == _U64_B)
        return _device((numbers[0], numbers[1]), numbers[10], numbers[memory])
    # From 10.15: memory (u64), two u64, then u32s; SMs 9th, compute capability 13th and 14th.
    if kinds[:3] == [_U64_B, _U64, _U64] and len(values) >= 14 and set(kinds[3:14]) == {_U32}:
        return _device((numbers[12], numbers[13]), numbers[8], numbers[0])
    return None


def _device(capability: tuple[int, int], sm_count: int, memory: int) -> BuildDevice | None:
    major, minor = capability
    # Outside these bounds the values are not what the layout above says they are.
    if not (3 <= major <= 20 and 0 <= minor <= 9 and 1 <= sm_count <= 1024 and memory >= 1 << 28):
        return None
    return BuildDevice(capability, sm_count, memory)


def plugins_in(section: bytes | memoryview) -> tuple[PluginUse, ...]:
    """The plugins that layers of an engine run, each once, in order of appearance."""
    data = bytes(section)
    found: dict[tuple[str, str], PluginUse] = {}
    at = data.find(_PLUGIN_KEY)
    while at >= 0:
        text = data[at : at + _MAX_PLUGIN_TEXT]
        parts = [p.decode("utf-8", "replace") for p in text.split(b"\x00")]
        # Key/value pairs: PluginType, name, PluginVersion, "version", ...
        name = parts[1] if len(parts) > 1 else ""
        version = ""
        if len(parts) > 3 and parts[2] == _PLUGIN_VERSION_KEY:
            version = parts[3].strip('"')
        if name:
            found.setdefault((name, version), PluginUse(name, version))
        at = data.find(_PLUGIN_KEY, at + len(_PLUGIN_KEY))
    return tuple(found.values())
