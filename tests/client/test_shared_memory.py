"""The shared-memory region helpers: system regions under /dev/shm, CUDA regions on a GPU."""

from __future__ import annotations

import importlib.util
import os
import stat
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from trtserve.client import (
    CudaSharedMemoryError,
    CudaSharedMemoryRegion,
    SharedMemoryInput,
    SharedMemoryOutput,
    SystemSharedMemoryRegion,
)
from trtserve.client.request import bf16_to_float32, float32_to_bf16
from trtserve.client.shared_memory import SHM_DIR

pytestmark = pytest.mark.skipif(not SHM_DIR.is_dir(), reason="no /dev/shm on this host")


@pytest.fixture
def key() -> Iterator[str]:
    """A fresh object key; the test must leave no object behind."""
    key = f"/trtserve-test-{uuid.uuid4().hex[:12]}"
    yield key
    path = SHM_DIR / key[1:]
    leaked = path.exists()
    path.unlink(missing_ok=True)
    assert not leaked, f"{path} was left behind"


ARRAYS: dict[str, np.ndarray] = {
    "FP32": np.arange(12, dtype=np.float32).reshape(3, 4) / 3,
    "FP16": np.array([[1.5, -2.0, 65504.0]], dtype=np.float16),
    "FP64": np.array([np.pi, -np.e], dtype=np.float64),
    "INT8": np.array([-128, 0, 127], dtype=np.int8),
    "INT64": np.array([[-(2**62), 2**62]], dtype=np.int64),
    "UINT16": np.array([0, 65535], dtype=np.uint16),
    "BOOL": np.array([[True, False], [False, True]]),
    "BYTES": np.array([b"", b"abc", "\u00e9t\u00e9".encode(), b"\x00\xff"], dtype=np.object_),
}


def test_written_arrays_read_back_equal_at_their_offsets(key: str) -> None:
    with SystemSharedMemoryRegion.create("r", key, 4096) as region:
        offsets = {}
        offset = 8  # not aligned: any offset works
        for datatype, array in ARRAYS.items():
            offsets[datatype] = offset
            offset += region.write(array, offset) + 3
        for datatype, array in ARRAYS.items():
            back = region.read(datatype, array.shape, offsets[datatype])
            assert back.dtype == array.dtype and back.shape == array.shape
            np.testing.assert_array_equal(back, array)


def test_bf16_is_written_from_floats_and_read_as_bit_patterns(key: str) -> None:
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)
    with SystemSharedMemoryRegion.create("r", key, 64) as region:
        assert region.write(values, 0, "BF16") == 6
        patterns = region.read("BF16", (3,))
        np.testing.assert_array_equal(patterns, float32_to_bf16(values))
        np.testing.assert_array_equal(bf16_to_float32(patterns), values)


def test_the_object_is_a_private_file_of_the_size_asked(key: str) -> None:
    with SystemSharedMemoryRegion.create("r", key, 1000) as region:
        assert region.path == SHM_DIR / key[1:]
        info = os.stat(region.path)
        assert info.st_size == 1000 == region.byte_size
        assert stat.S_IMODE(info.st_mode) == 0o600
    assert not region.path.exists()


def test_an_attached_mapping_sees_the_same_bytes(key: str) -> None:
    data = np.arange(16, dtype=np.int32)
    with SystemSharedMemoryRegion.create("writer", key, 256) as writer:
        with SystemSharedMemoryRegion.attach("reader", key) as reader:
            assert reader.byte_size == 256
            writer.write(data, 64)
            np.testing.assert_array_equal(reader.read("INT32", (16,), 64), data)
            reader.write(-data, 0)
            np.testing.assert_array_equal(writer.read("INT32", (16,), 0), -data)
        # Leaving the attached mapping's block unmaps it but keeps the object.
        assert reader.closed and writer.path.exists()
        np.testing.assert_array_equal(writer.read("INT32", (16,), 64), data)


def test_reads_are_copies_that_outlive_the_region(key: str) -> None:
    region = SystemSharedMemoryRegion.create("r", key, 64)
    region.write(np.ones(4, dtype=np.float32))
    back = region.read("FP32", (4,))
    region.destroy()
    back += 1  # writable, and still readable after the mapping is gone
    np.testing.assert_array_equal(back, np.full(4, 2.0, dtype=np.float32))


def test_an_existing_key_is_not_taken_over(key: str) -> None:
    with SystemSharedMemoryRegion.create("r", key, 64), pytest.raises(FileExistsError):
        SystemSharedMemoryRegion.create("other", key, 64)


@pytest.mark.parametrize("bad", ["name", "/", "/a/b", "//x", "/" + "x" * 255])
def test_keys_must_be_one_slash_and_a_name(bad: str) -> None:
    with pytest.raises(ValueError, match="must be '/' and a name"):
        SystemSharedMemoryRegion.create("r", bad, 64)


def test_sizes_must_be_positive(key: str) -> None:
    with pytest.raises(ValueError, match="byte_size must be positive"):
        SystemSharedMemoryRegion.create("r", key, 0)


def test_spans_outside_the_region_are_refused(key: str) -> None:
    four = np.zeros(4, dtype=np.float32)  # 16 bytes
    with SystemSharedMemoryRegion.create("r", key, 64) as region:
        region.write(four, 48)  # ends exactly at the end
        with pytest.raises(ValueError, match="16 bytes at offset 49 do not fit in its 64"):
            region.write(four, 49)
        with pytest.raises(ValueError, match="at offset -1 do not fit"):
            region.write(four, -1)
        with pytest.raises(ValueError, match="68 bytes at offset 0 do not fit"):
            region.read("FP32", (17,))
        with pytest.raises(ValueError, match="do not fit"):
            region.output_reference("Y", 16, 56)
        # BYTES: element lengths that lead past the end.
        region.write(np.array([5], dtype=np.int32).view(np.uint8), 60)  # a length of 5
        with pytest.raises(ValueError, match="the 1 BYTES elements at offset 60 run past"):
            region.read("BYTES", (1,), 60)
        region.write(np.array([b"abcd"], dtype=np.object_), 56)  # fills 56..64
        assert region.read("BYTES", (1,), 56).tolist() == [b"abcd"]
        with pytest.raises(ValueError, match="BYTES element 1 of 2 at offset 64 runs past"):
            region.read("BYTES", (2,), 56)


def test_references_name_the_region_and_the_span(key: str) -> None:
    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    with SystemSharedMemoryRegion.create("region-a", key, 256) as region:
        ref = region.write_input("INPUT0", data, 128)
        assert ref == SharedMemoryInput("INPUT0", "FP32", (2, 4), "region-a", 32, 128)
        np.testing.assert_array_equal(region.read("FP32", (2, 4), 128), data)
        out = region.output_reference("OUTPUT0", 32, 64)
        assert out == SharedMemoryOutput("OUTPUT0", "region-a", 32, 64)


def test_destroy_unlinks_and_closes_and_may_repeat(key: str) -> None:
    region = SystemSharedMemoryRegion.create("r", key, 64)
    path = region.path
    assert path.exists()
    region.destroy()
    assert not path.exists() and region.closed
    region.destroy()
    with pytest.raises(ValueError, match="region 'r' is closed"):
        region.read("FP32", (1,))
    with pytest.raises(ValueError, match="is closed"):
        region.write(np.zeros(1, dtype=np.float32))


def test_leaving_the_block_on_an_error_still_unlinks(key: str) -> None:
    with pytest.raises(RuntimeError), SystemSharedMemoryRegion.create("r", key, 64) as region:
        raise RuntimeError("boom")
    assert not region.path.exists()


def test_close_keeps_the_object(key: str) -> None:
    region = SystemSharedMemoryRegion.create("r", key, 64)
    region.write(np.array([7], dtype=np.int64))
    region.close()
    assert region.path.exists()
    again = SystemSharedMemoryRegion.attach("r", key)
    assert again.read("INT64", (1,))[0] == 7
    again.destroy()


# --- CUDA ----------------------------------------------------------------------------------

_HAVE_BINDINGS = importlib.util.find_spec("cuda") is not None and (
    importlib.util.find_spec("cuda.bindings") is not None
)


def _gpu_count() -> int:
    if not _HAVE_BINDINGS:
        return 0
    from cuda.bindings import runtime

    error, count = runtime.cudaGetDeviceCount()
    return int(count) if error == runtime.cudaError_t.cudaSuccess else 0


@pytest.mark.skipif(_HAVE_BINDINGS, reason="cuda-bindings is installed")
def test_cuda_without_bindings_says_what_to_install() -> None:
    with pytest.raises(CudaSharedMemoryError, match="pip install cuda-bindings"):
        CudaSharedMemoryRegion.create("g", 64)


@pytest.mark.skipif(not _HAVE_BINDINGS or _gpu_count() > 0, reason="needs bindings, no GPU")
def test_cuda_without_a_gpu_fails_clearly() -> None:
    with pytest.raises(CudaSharedMemoryError, match="failed: cuda"):
        CudaSharedMemoryRegion.create("g", 64)


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_count() == 0, reason="needs cuda-bindings and a CUDA device")
def test_cuda_region_round_trip_handle_and_free() -> None:
    with CudaSharedMemoryRegion.create("g", 4096, device_id=0) as region:
        handle = region.raw_handle()
        assert isinstance(handle, bytes) and len(handle) == 64 and any(handle)
        assert region.raw_handle() == handle
        offsets = {}
        offset = 0
        for datatype, array in ARRAYS.items():
            if datatype != "BYTES":
                offsets[datatype] = offset
                offset += region.write(array, offset) + 5
        for datatype, offset in offsets.items():
            np.testing.assert_array_equal(
                region.read(datatype, ARRAYS[datatype].shape, offset), ARRAYS[datatype]
            )
        ref = region.write_input("X", ARRAYS["FP32"], 2048)
        assert ref == SharedMemoryInput("X", "FP32", (3, 4), "g", 48, 2048)
        with pytest.raises(ValueError, match="do not fit"):
            region.write(ARRAYS["FP32"], 4096 - 47)
    assert region.closed
    region.free()  # again: harmless
    with pytest.raises(ValueError, match="is freed"):
        region.raw_handle()
