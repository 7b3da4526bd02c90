"""What the real plans say about where they run, read without TensorRT: the plans of
../shared/plans (version-compatible, AMPERE_PLUS) and ../shared/plans/more (the ones that do
not simply run), each against what its source documents about it."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from trtserve.server.backends.tensorrt_backend import TensorRTBackend
from trtserve.server.errors import FailedPrecondition
from trtserve.server.runtime.cuda_device import DeviceDescription
from trtserve.server.runtime.lean_store import LeanStore
from trtserve.server.runtime.plan_compatibility import (
    PlanCompatibility,
    assess,
    assess_legacy,
    explain_failure,
)
from trtserve.server.runtime.plan_engine import HardwareLevel, PluginUse
from trtserve.server.runtime.plan_header import (
    FOOTER,
    LegacyEngineError,
    TrtVersion,
    engine_section,
    read_plan_header,
)
from trtserve.server.specs import ModelSettings

AMPERE_PLUS = HardwareLevel.AMPERE_PLUS
NONE = HardwareLevel.NONE


@dataclass(frozen=True)
class Expected:
    version: str
    hardware: HardwareLevel
    # (compute capability, SM count, memory in GiB rounded down) of the GPU that built it.
    built_on: tuple[tuple[int, int], int, int]
    plugins: tuple[PluginUse, ...] = ()


# Hardware levels as the plans' READMEs give them: every ../shared/plans plan is AMPERE_PLUS; in
# more/ only the two matmul_hc parts are. The build GPU as each plan records it; where a README
# names the GPU (A100 for the 8.6 conv plan, A40 for conv 10.0.1.6, RTX 5090 for 11.0, H100 for
# linear_sm90, sm_86 for the autoencoder) the record agrees. The 10.0.0.6 plan records the same
# GPU as the 10.0.1.6 one, where its README says RTX 3080 Ti (compute capability 8.6 as well).
EXPECTED = {
    "conv_relu_trt11.0.0.114.plan": Expected("11.0.0.114", AMPERE_PLUS, ((12, 0), 170, 31)),
    "conv_relu_trt10.0.1.6.plan": Expected("10.0.1.6", AMPERE_PLUS, ((8, 6), 84, 44)),
    "conv_relu_trt10.0.0.6.plan": Expected("10.0.0.6", AMPERE_PLUS, ((8, 6), 84, 44)),
    "conv_relu_trt8.6.1.6.plan": Expected("8.6.1.6", AMPERE_PLUS, ((8, 0), 108, 39)),
    "more/autoencoder_fp16_trt10.15.1.29_not_vc.plan": Expected(
        "10.15.1.29", NONE, ((8, 6), 28, 11)
    ),
    "more/mnist_trt10.5.0.18.plan": Expected("10.5.0.18", NONE, ((8, 6), 48, 7)),
    "more/addscalar_plugin_trt10.0.1.6.plan": Expected(
        "10.0.1.6", NONE, ((8, 9), 142, 47), (PluginUse("AddScalar", "1"),)
    ),
    "more/matmul_hc_part1_trt8.6.1.6.plan": Expected("8.6.1.6", AMPERE_PLUS, ((8, 6), 80, 11)),
    "more/matmul_hc_part2_trt8.6.1.6.plan": Expected("8.6.1.6", AMPERE_PLUS, ((8, 6), 80, 11)),
    "more/identity_trt8.6.1.6.plan": Expected("8.6.1.6", NONE, ((8, 9), 128, 23)),
    "more/linear_sm90_trt8.6.1.6.plan": Expected("8.6.1.6", NONE, ((9, 0), 114, 79)),
}
LEGACY = "more/legacy_ptrt_format.plan"
H200 = DeviceDescription(0, "NVIDIA H200", (9, 0))
TURING = DeviceDescription(1, "Tesla T4", (7, 5))


def plans_dir() -> Path:
    configured = os.environ.get("TRTSERVE_TEST_PLANS")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / ".." / "shared" / "plans"


def plan_path(name: str) -> Path:
    path = plans_dir() / name
    if not path.is_file():
        pytest.skip(f"real plan {path} not present")
    return path


def compatibility_of(name: str) -> PlanCompatibility:
    data = plan_path(name).read_bytes()
    header = read_plan_header(data)
    return assess(header, engine_section(data, header))


def with_entry(data: bytes, tag: str, payload: bytes) -> bytes:
    """The plan with one more entry appended, 8-byte aligned as TensorRT lays entries out."""
    count = struct.unpack_from("<Q", data, 8)[0]
    entries = [struct.unpack_from("<IIQQ", data, 0x20 + 24 * i) for i in range(count)]
    blobs = [(raw, data[offset : offset + size]) for raw, _, offset, size in entries]
    blobs.append((int.from_bytes(tag.encode(), "big"), payload))
    position, placed = 0x20 + 24 * len(blobs), []
    for raw, blob in blobs:
        position = (position + 7) // 8 * 8
        placed.append((raw, position, blob))
        position += len(blob)
    out = bytearray(position + 4)
    out[0:0x20] = struct.pack("<IIQQ", 0x74727466, 0, len(blobs), len(out)) + data[0x18:0x20]
    for i, (raw, offset, blob) in enumerate(placed):
        struct.pack_into("<IIQQ", out, 0x20 + 24 * i, raw, 0, offset, len(blob))
        out[offset : offset + len(blob)] = blob
    struct.pack_into("<I", out, len(out) - 4, FOOTER)
    return bytes(out)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_real_plan_reads_as_its_source_documents(name: str) -> None:
    expected = EXPECTED[name]
    found = compatibility_of(name)
    assert str(found.version) == expected.version
    assert found.hardware is expected.hardware
    assert found.built_on is not None
    capability, sm_count, gib = expected.built_on
    assert found.built_on.compute_capability == capability
    assert found.built_on.sm_count == sm_count
    assert found.built_on.memory_bytes >> 30 == gib
    assert found.plugins == expected.plugins
    # Never claimed either way: no field tells version compatibility in these plans.
    assert found.version_compatible is None
    assert "records it nowhere" in found.version_compatible_reason


def test_the_legacy_engine_is_known_not_version_compatible() -> None:
    data = plan_path(LEGACY).read_bytes()
    with pytest.raises(LegacyEngineError) as caught:
        read_plan_header(data)
    assert caught.value.version == TrtVersion(8, 0, 1, 6)
    found = assess_legacy(caught.value, data)
    assert found.version_compatible is False
    assert found.hardware is NONE
    refusal = found.refusal()
    assert refusal is not None and "not version-compatible" in refusal
    assert "VERSION_COMPATIBLE" in refusal


def test_an_engine_cut_out_of_its_container_is_told_as_such() -> None:
    data = plan_path("conv_relu_trt11.0.0.114.plan").read_bytes()
    section = bytes(engine_section(data, read_plan_header(data)))
    with pytest.raises(LegacyEngineError, match=r"bare TensorRT 11\.0\.0\.114 engine section"):
        read_plan_header(section)


def test_a_plan_that_embeds_its_lean_runtime_is_version_compatible() -> None:
    data = plan_path("conv_relu_trt11.0.0.114.plan").read_bytes()
    embedded = with_entry(data, "LEAN", b"\x7fELF" + bytes(60))
    header = read_plan_header(embedded)
    assert header.tags == ("ENGN", "WGHT", "LEAN")
    found = assess(header, engine_section(embedded, header))
    assert found.version_compatible is True
    assert "embeds its lean runtime" in found.version_compatible_reason


def test_the_plugin_plan_is_refused_naming_the_plugin() -> None:
    refusal = compatibility_of("more/addscalar_plugin_trt10.0.1.6.plan").refusal()
    assert refusal is not None
    assert "AddScalar (version 1)" in refusal
    assert "no PLGN entry" in refusal


def test_a_plugin_carried_in_the_plan_is_not_refused() -> None:
    data = plan_path("more/addscalar_plugin_trt10.0.1.6.plan").read_bytes()
    carried = with_entry(data, "PLGN", b"\x7fELF" + bytes(60))
    header = read_plan_header(carried)
    assert header.has_plugins and header.has_host_code
    found = assess(header, engine_section(carried, header))
    assert found.plugins == (PluginUse("AddScalar", "1"),)
    assert found.refusal() is None


@pytest.mark.parametrize(
    ("name", "device", "refused"),
    [
        # Built on 8.6 without hardware compatibility: not on a 9.0 GPU.
        ("more/autoencoder_fp16_trt10.15.1.29_not_vc.plan", H200, True),
        ("more/linear_sm90_trt8.6.1.6.plan", H200, False),
        # AMPERE_PLUS runs on 8.0 and later only.
        ("conv_relu_trt11.0.0.114.plan", H200, False),
        ("conv_relu_trt11.0.0.114.plan", TURING, True),
    ],
)
def test_hardware_compatibility_against_a_device(
    name: str, device: DeviceDescription, refused: bool
) -> None:
    refusal = compatibility_of(name).refusal_on(device)
    assert (refusal is not None) == refused
    if refusal is not None:
        assert device.describe() in refusal
        assert "AMPERE_PLUS" in refusal


def test_the_not_version_compatible_plan_on_another_gpu_names_both_capabilities() -> None:
    refusal = compatibility_of("more/autoencoder_fp16_trt10.15.1.29_not_vc.plan").refusal_on(H200)
    assert refusal is not None
    assert "compute capability 8.6 without hardware compatibility" in refusal
    assert "compute capability 9.0" in refusal


def test_a_failure_message_lists_causes_in_order_and_tensorrt_once() -> None:
    found = compatibility_of("more/mnist_trt10.5.0.18.plan")
    same_gpu = DeviceDescription(0, "NVIDIA GeForce RTX 3070 Ti", (8, 6))
    message = explain_failure(
        found, "lean runtime 10.5.0.18 on device 0", same_gpu, "Engine deserialization failed"
    )
    assert message.startswith("TensorRT could not load the plan. Tried: lean runtime 10.5.0.18")
    assert message.endswith("TensorRT said: Engine deserialization failed")
    assert message.count("Engine deserialization failed") == 1
    first, damaged = (
        message.index("(1) the plan is not version-compatible"),
        message.index("damaged"),
    )
    assert first < damaged
    # The build GPU is known and equals the device: "another GPU" is no cause here.
    assert "another GPU" not in message


def test_an_unreadable_engine_section_is_unknown_not_guessed() -> None:
    data = bytearray(plan_path("conv_relu_trt11.0.0.114.plan").read_bytes())
    header = read_plan_header(bytes(data))
    engine = header.entries[0]
    # Overwrite the engine's first 64 bytes: the version fields are gone.
    data[engine.offset : engine.offset + 64] = bytes(64)
    found = assess(header, engine_section(bytes(data), header))
    assert found.hardware is None and found.built_on is None
    assert "version fields" in found.hardware_reason
    assert found.refusal_on(H200) is None
    causes = found.likely_causes(H200)
    assert any("another GPU" in cause for cause in causes)


def test_an_unknown_hardware_level_value_is_unknown() -> None:
    data = bytearray(plan_path("conv_relu_trt11.0.0.114.plan").read_bytes())
    header = read_plan_header(bytes(data))
    section = bytes(engine_section(bytes(data), header))
    # The level follows the version fields and the engine record's opening tag.
    fields = b"".join(struct.pack("<IB", 0x18002, part) for part in (11, 0, 0, 114))
    level_at = header.entries[0].offset + section.index(fields) + len(fields) + 8
    assert struct.unpack_from("<I", data, level_at)[0] == 1
    struct.pack_into("<I", data, level_at, 7)
    found = assess(header, engine_section(bytes(data), header))
    assert found.hardware is None
    assert "field layout" in found.hardware_reason


def test_the_backend_refuses_what_cannot_run_before_it_needs_a_gpu(tmp_path: Path) -> None:
    backend = TensorRTBackend(store=LeanStore(tmp_path))
    settings = ModelSettings(name="m", platform="tensorrt_plan")
    with pytest.raises(FailedPrecondition, match=r"model 'm': .*AddScalar \(version 1\)"):
        backend.load(plan_path("more/addscalar_plugin_trt10.0.1.6.plan"), settings)
    with pytest.raises(FailedPrecondition, match=r"model 'm': .*TensorRT 8\.0\.1\.6"):
        backend.load(plan_path(LEGACY), settings)
