"""The plan header reader on the four real plans and on broken copies of them."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from trtserve.server.runtime.plan_header import (
    FOOTER,
    PlanHeaderError,
    TrtVersion,
    read_plan_header,
    read_plan_header_file,
)

PLANS = {
    "conv_relu_trt11.0.0.114.plan": (TrtVersion(11, 0, 0, 114), ("ENGN", "WGHT"), 0x74727472),
    "conv_relu_trt10.0.1.6.plan": (TrtVersion(10, 0, 1, 6), ("ENGN",), 0x74727472),
    "conv_relu_trt10.0.0.6.plan": (TrtVersion(10, 0, 0, 6), ("ENGN",), 0x74727472),
    "conv_relu_trt8.6.1.6.plan": (TrtVersion(8, 6, 1, 6), ("ENGN",), 0),
}


def plans_dir() -> Path:
    configured = os.environ.get("TRTSERVE_TEST_PLANS")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / ".." / "shared" / "plans"


def plan_bytes(name: str) -> bytes:
    path = plans_dir() / name
    if not path.is_file():
        pytest.skip(f"real plan {path} not present")
    return path.read_bytes()


@pytest.fixture
def plan11() -> bytes:
    return plan_bytes("conv_relu_trt11.0.0.114.plan")


def patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize("name", sorted(PLANS))
def test_real_plans(name: str) -> None:
    data = plan_bytes(name)
    version, tags, platform = PLANS[name]
    header = read_plan_header(data)
    assert header.version == version
    assert str(header.version) == name.removeprefix("conv_relu_trt").removesuffix(".plan")
    assert header.tags == tags
    assert header.total_size == len(data)
    assert header.platform_tag == platform
    assert header.container_version == 0
    assert header.footer == FOOTER
    assert not header.has_lean_runtime
    assert not header.has_plugins
    engine = header.entries[0]
    assert data[engine.offset : engine.offset + 4] == b"ptrt"
    assert read_plan_header_file(plans_dir() / name) == header


def test_to_dict_names_version_and_entries(plan11: bytes) -> None:
    data = read_plan_header(plan11).to_dict()
    assert data["tensorrt_version"] == "11.0.0.114"
    assert [e["tag"] for e in data["entries"]] == ["ENGN", "WGHT"]
    assert data["has_lean_runtime"] is False


def test_embedded_lean_and_plugin_entries_are_reported(plan11: bytes) -> None:
    # Retag the WGHT entry (entry 1, at 0x20 + 24) as LEAN, then as PLGN.
    lean = patched(plan11, 0x38, "<I", int.from_bytes(b"LEAN", "big"))
    assert read_plan_header(lean).has_lean_runtime
    plugins = patched(plan11, 0x38, "<I", int.from_bytes(b"PLGN", "big"))
    header = read_plan_header(plugins)
    assert header.has_plugins and not header.has_lean_runtime


def test_version_parse_and_order() -> None:
    assert TrtVersion.parse("11.0.0.114") == TrtVersion(11, 0, 0, 114)
    assert str(TrtVersion.parse(" 8.6.1.6 ")) == "8.6.1.6"
    assert TrtVersion.parse("10.16.1.11") < TrtVersion.parse("11.0.0.114")
    with pytest.raises(ValueError, match=r"major\.minor\.patch\.build"):
        TrtVersion.parse("11.0")


def test_wrong_magic(plan11: bytes) -> None:
    with pytest.raises(PlanHeaderError, match="not a TensorRT plan"):
        read_plan_header(b"PK\x03\x04" + plan11[4:])


def test_not_a_plan_at_all() -> None:
    with pytest.raises(PlanHeaderError, match="not a TensorRT plan"):
        read_plan_header(b"ONNX model bytes, not a plan at all" * 4)
    with pytest.raises(PlanHeaderError, match="not a TensorRT plan"):
        read_plan_header(b"")


@pytest.mark.parametrize("keep", [4, 16, 31, 40, 1000, 100_000, -1])
def test_cut_plan_is_truncated(plan11: bytes, keep: int) -> None:
    with pytest.raises(PlanHeaderError, match="truncated"):
        read_plan_header(plan11[:keep])


def test_cut_plan_file_is_truncated(plan11: bytes, tmp_path: Path) -> None:
    path = tmp_path / "cut.plan"
    path.write_bytes(plan11[: len(plan11) // 2])
    with pytest.raises(PlanHeaderError, match=r"cut\.plan: truncated plan"):
        read_plan_header_file(path)


def test_trailing_bytes_are_a_size_mismatch(plan11: bytes) -> None:
    with pytest.raises(PlanHeaderError, match="size mismatch"):
        read_plan_header(plan11 + b"\0" * 16)


def test_header_total_smaller_than_data(plan11: bytes) -> None:
    with pytest.raises(PlanHeaderError, match="size mismatch"):
        read_plan_header(patched(plan11, 0x10, "<Q", len(plan11) - 8))


def test_unknown_container_version(plan11: bytes) -> None:
    with pytest.raises(PlanHeaderError, match="unknown plan container version 1"):
        read_plan_header(patched(plan11, 0x04, "<I", 1))


@pytest.mark.parametrize(("major", "minor"), [(8, 5), (7, 1), (0, 0)])
def test_older_than_8_6(plan11: bytes, major: int, minor: int) -> None:
    data = patched(patched(plan11, 0x18, "<B", major), 0x19, "<B", minor)
    with pytest.raises(PlanHeaderError, match=r"older than 8\.6"):
        read_plan_header(data)


def test_entry_count_out_of_bounds(plan11: bytes) -> None:
    with pytest.raises(PlanHeaderError, match="entries"):
        read_plan_header(patched(plan11, 0x08, "<Q", 1 << 40))
    with pytest.raises(PlanHeaderError, match="out of bounds"):
        read_plan_header(patched(plan11, 0x08, "<Q", 1000))


def test_entry_payload_out_of_bounds(plan11: bytes) -> None:
    # The WGHT entry's size (entry 1: 0x38 + 16) grown past the end of the plan.
    with pytest.raises(PlanHeaderError, match=r"out of bounds: entry 1 \(WGHT\)"):
        read_plan_header(patched(plan11, 0x38 + 16, "<Q", len(plan11)))


def test_bad_footer(plan11: bytes) -> None:
    with pytest.raises(PlanHeaderError, match="bad plan footer"):
        read_plan_header(plan11[:-4] + b"\0\0\0\0")


def test_every_header_bit_flip_is_read_or_rejected_cleanly(plan11: bytes) -> None:
    table_end = 0x20 + 2 * 24
    original = read_plan_header(plan11)
    rejected = 0
    for bit in range(table_end * 8):
        data = bytearray(plan11)
        data[bit // 8] ^= 1 << (bit % 8)
        try:
            header = read_plan_header(bytes(data))
        except PlanHeaderError:
            rejected += 1
            continue
        # What still reads is a different header, unless the bit is in an entry's reserved
        # u32, which the reader ignores.
        reserved = {0x20 + 24 * i + k for i in range(2) for k in range(4, 8)}
        assert header != original or bit // 8 in reserved
    # Every bit of the magic, container version, count and total size must be rejected.
    assert rejected >= 4 * 8 + 4 * 8 + 8 * 8 + 8 * 8
