"""Which tensors TensorRT reads or writes in place, and which are copied where (no GPU needed)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from trtserve.server.backends.tensorrt_bindings import (
    Copy,
    CopyKind,
    OwnBuffers,
    coalesce,
    host_address,
    plan_input,
    plan_output,
)
from trtserve.server.errors import Internal, InvalidArgument
from trtserve.server.runtime.tensor_buffers import (
    DeviceArray,
    DeviceMemory,
    GatheredArray,
    OutputTarget,
    RowTarget,
)

F32 = np.dtype(np.float32)
OWN = OwnBuffers(device=0x10_0000, host=0x20_0000)
H2D, D2D, D2H = CopyKind.HOST_TO_DEVICE, CopyKind.DEVICE_TO_DEVICE, CopyKind.DEVICE_TO_HOST
# A row of a (N, 4) float32 tensor.
ROW = 16


def never_pinned(address: int, nbytes: int) -> bool:
    return False


def pinned_within(array: np.ndarray) -> Callable[[int, int], bool]:
    start = host_address(array)
    end = start + array.nbytes

    def pinned(address: int, nbytes: int) -> bool:
        return start <= address and address + nbytes <= end

    return pinned


def moves(copies: tuple[Copy, ...]) -> list[tuple[int, int, int, CopyKind]]:
    return [(c.dst, c.src, c.nbytes, c.kind) for c in copies]


def device(address: int, rows: int, device_id: int = 0) -> DeviceArray:
    return DeviceArray(device_id, address, F32, (rows, 4))


def test_a_pageable_host_input_is_staged_then_copied_as_before() -> None:
    x = np.ones((2, 4), np.float32)
    plan = plan_input("x", x, 0, OWN, never_pinned)
    assert plan.address == OWN.device
    assert [(s.array is x, s.dst) for s in plan.stages] == [(True, OWN.host)]
    assert moves(plan.copies) == [(OWN.device, OWN.host, 32, H2D)]


def test_a_pinned_host_input_is_copied_from_where_it_is() -> None:
    region = np.zeros(64, np.float32)
    x = region[8:16].reshape(2, 4)
    plan = plan_input("x", x, 0, OWN, pinned_within(region))
    assert plan.stages == ()
    assert moves(plan.copies) == [(OWN.device, host_address(x), 32, H2D)]


def test_a_strided_view_of_pinned_memory_is_staged() -> None:
    region = np.zeros((4, 8), np.float32)
    x = region[:, :4]
    plan = plan_input("x", x, 0, OWN, pinned_within(region))
    assert [s.dst for s in plan.stages] == [OWN.host]
    assert moves(plan.copies) == [(OWN.device, OWN.host, 64, H2D)]


def test_gpu_input_on_the_same_device_and_aligned_is_bound_in_place() -> None:
    plan = plan_input("x", device(0x7000_0000, 2), 0, OWN, never_pinned)
    assert plan.address == 0x7000_0000
    assert plan.copies == () and plan.stages == ()


@pytest.mark.parametrize(
    ("array", "why"),
    [
        (device(0x7000_0000 + 4, 2), "misaligned"),
        (device(0x7000_0000 + 128, 2), "aligned to 128 only"),
        (device(0x7000_0000, 2, device_id=1), "another device"),
    ],
)
def test_other_gpu_inputs_are_copied_into_the_instance_buffer(array: DeviceArray, why: str) -> None:
    plan = plan_input("x", array, 0, OWN, never_pinned)
    assert plan.address == OWN.device, why
    assert moves(plan.copies) == [(OWN.device, array.address, 32, D2D)], why


def test_gathered_parts_land_at_their_byte_offsets() -> None:
    region = np.zeros(64, np.float32)
    first = np.ones((2, 4), np.float32)
    second = device(0x7000_0000, 3)
    third = region[:4].reshape(1, 4)
    fourth = np.ones((1, 4), np.float32)
    gathered = GatheredArray((first, second, third, fourth))
    plan = plan_input("x", gathered, 0, OWN, pinned_within(region))
    assert plan.address == OWN.device
    assert [(s.array is first, s.dst) for s in plan.stages[:1]] == [(True, OWN.host)]
    assert [s.dst for s in plan.stages] == [OWN.host, OWN.host + 6 * ROW]
    assert moves(plan.copies) == [
        (OWN.device, OWN.host, 2 * ROW, H2D),
        (OWN.device + 2 * ROW, 0x7000_0000, 3 * ROW, D2D),
        (OWN.device + 5 * ROW, host_address(third), ROW, H2D),
        (OWN.device + 6 * ROW, OWN.host + 6 * ROW, ROW, H2D),
    ]


def test_gathered_staged_parts_side_by_side_go_in_one_copy() -> None:
    parts = (np.ones((2, 4), np.float32), np.ones((0, 4), np.float32), np.ones((3, 4), np.float32))
    plan = plan_input("x", GatheredArray(parts), 0, OWN, never_pinned)
    assert [s.dst for s in plan.stages] == [OWN.host, OWN.host + 2 * ROW]
    assert moves(plan.copies) == [(OWN.device, OWN.host, 5 * ROW, H2D)]


def test_coalesce_merges_only_continuing_copies_of_one_kind() -> None:
    a = Copy(100, 200, 10, H2D, "a")
    b = Copy(110, 210, 5, H2D, "b")
    gap = Copy(120, 220, 5, H2D, "gap")
    other_kind = Copy(125, 225, 5, D2D, "d")
    assert moves(coalesce([a, b, gap, other_kind])) == [
        (100, 200, 15, H2D),
        (120, 220, 5, H2D),
        (125, 225, 5, D2D),
    ]


def gpu_target(address: int, nbytes: int, device_id: int = 0, region: str = "g") -> OutputTarget:
    return OutputTarget(region, nbytes, device=DeviceMemory(device_id, address, nbytes))


def host_target(view: np.ndarray, region: str = "h") -> OutputTarget:
    return OutputTarget(region, view.nbytes, host=view)


def test_an_output_without_targets_comes_back_through_staging() -> None:
    plan = plan_output("y", F32, (3, 4), (), 0, OWN)
    assert plan.address == OWN.device
    assert moves(plan.copies) == [(OWN.host, OWN.device, 3 * ROW, D2H)]
    assert (plan.placed, plan.returned) == (False, True)


@pytest.mark.parametrize("rows", [None, 3])
def test_one_aligned_gpu_target_for_the_whole_output_is_written_by_the_engine(
    rows: int | None,
) -> None:
    target = RowTarget(0, rows, gpu_target(0x7000_0000, 3 * ROW))
    plan = plan_output("y", F32, (3, 4), [target], 0, OWN)
    assert plan.address == 0x7000_0000
    assert plan.copies == ()
    assert (plan.placed, plan.returned) == (True, False)


@pytest.mark.parametrize(
    ("target", "why"),
    [
        (gpu_target(0x7000_0004, 3 * ROW), "misaligned"),
        (gpu_target(0x7000_0000, 3 * ROW, device_id=1), "another device"),
    ],
)
def test_other_whole_gpu_targets_get_a_copy(target: OutputTarget, why: str) -> None:
    plan = plan_output("y", F32, (3, 4), [RowTarget(0, None, target)], 0, OWN)
    assert plan.address == OWN.device, why
    assert target.device is not None
    assert moves(plan.copies) == [(target.device.address, OWN.device, 3 * ROW, D2D)], why
    assert (plan.placed, plan.returned) == (True, False)


def test_a_host_target_gets_its_rows_copied_into_its_view() -> None:
    region = np.zeros(256, np.uint8)
    view = region[16 : 16 + 3 * ROW]
    plan = plan_output("y", F32, (3, 4), [RowTarget(0, None, host_target(view))], 0, OWN)
    assert plan.address == OWN.device
    assert moves(plan.copies) == [(host_address(view), OWN.device, 3 * ROW, D2H)]


def test_every_request_with_a_target_places_the_output_row_by_row() -> None:
    a = gpu_target(0x7000_0000, 2 * ROW)
    b = host_target(np.zeros(ROW, np.uint8))
    targets = [RowTarget(0, 2, a), RowTarget(2, 1, b)]
    plan = plan_output("y", F32, (3, 4), targets, 0, OWN)
    assert plan.address == OWN.device
    assert moves(plan.copies) == [
        (0x7000_0000, OWN.device, 2 * ROW, D2D),
        (host_address(b.host), OWN.device + 2 * ROW, ROW, D2H),
    ]
    assert (plan.placed, plan.returned) == (True, False)


def test_a_single_target_of_some_rows_is_copied_and_the_whole_comes_back() -> None:
    target = gpu_target(0x7000_0000, ROW)
    plan = plan_output("y", F32, (3, 4), [RowTarget(1, 1, target)], 0, OWN)
    assert plan.address == OWN.device
    assert moves(plan.copies) == [
        (0x7000_0000, OWN.device + ROW, ROW, D2D),
        (OWN.host, OWN.device, 3 * ROW, D2H),
    ]
    assert (plan.placed, plan.returned) == (True, True)


def test_a_gap_between_targeted_rows_brings_the_output_back() -> None:
    targets = [
        RowTarget(0, 1, gpu_target(0x7000_0000, ROW)),
        RowTarget(2, 1, gpu_target(0x7100_0000, ROW)),
    ]
    plan = plan_output("y", F32, (3, 4), targets, 0, OWN)
    assert plan.returned and plan.placed


def test_a_target_too_small_is_refused_with_both_sizes() -> None:
    target = gpu_target(0x7000_0000, 3 * ROW - 1, region="out_region")
    with pytest.raises(InvalidArgument, match=r"'out_region' has room for 47 bytes.*needs 48"):
        plan_output("y", F32, (3, 4), [RowTarget(0, None, target)], 0, OWN)


def test_rows_outside_the_output_are_a_server_bug() -> None:
    target = gpu_target(0x7000_0000, 4 * ROW)
    with pytest.raises(Internal, match=r"rows 2\.\.4"):
        plan_output("y", F32, (3, 4), [RowTarget(2, 2, target)], 0, OWN)


def test_a_read_only_host_target_is_a_server_bug() -> None:
    view = np.zeros(3 * ROW, np.uint8)
    view.flags.writeable = False
    with pytest.raises(Internal, match="writable host view"):
        plan_output("y", F32, (3, 4), [RowTarget(0, None, host_target(view))], 0, OWN)
