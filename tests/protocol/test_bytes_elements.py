"""The BYTES element splitter against the element-by-element parser it replaced."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trtserve.protocol import tensors

_LENGTH = struct.Struct("<I")


def reference(name: str, raw: bytes, count: int) -> np.ndarray:
    """The parser before the splitter: one struct call and one check per element."""
    view = memoryview(raw)
    out = np.empty(count, dtype=np.object_)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise tensors.TensorDataError(
                f"input '{name}': BYTES data holds fewer elements than its shape needs: "
                f"expected {count}, received {i}"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise tensors.TensorDataError(
                f"input '{name}': BYTES element {i} declares {length} bytes, "
                f"only {len(view) - offset} remain"
            )
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise tensors.TensorDataError(
            f"input '{name}': BYTES data has {len(view) - offset} bytes after the "
            f"{count} elements its shape declares"
        )
    return out


def outcome(parse: object, raw: bytes, count: int) -> tuple[str, object]:
    try:
        array = parse("s", raw, count)  # type: ignore[operator]
    except tensors.TensorDataError as error:
        return "error", str(error)
    assert array.dtype == np.object_ and array.shape == (count,)
    assert all(type(item) is bytes for item in array)
    return "ok", list(array)


def frame(items: list[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


elements = st.lists(st.binary(max_size=12), max_size=40)
# Fixed-width elements take the vectorized path; zero bytes inside must survive it.
fixed_width = st.integers(1, 6).flatmap(
    lambda width: st.lists(st.binary(min_size=width, max_size=width), max_size=40)
)


@settings(max_examples=300, deadline=None)
@given(items=st.one_of(elements, fixed_width), extra=st.integers(-2, 2))
def test_well_formed_data_and_wrong_counts_match_the_reference(
    items: list[bytes], extra: int
) -> None:
    raw = frame(items)
    count = max(0, len(items) + extra)
    assert outcome(tensors.deserialize_bytes, raw, count) == outcome(reference, raw, count)


@settings(max_examples=300, deadline=None)
@given(items=st.one_of(elements, fixed_width), cut=st.integers(0, 8), tail=st.binary(max_size=6))
def test_cut_or_padded_data_matches_the_reference(
    items: list[bytes], cut: int, tail: bytes
) -> None:
    raw = frame(items)
    raw = raw[: max(0, len(raw) - cut)] + tail
    count = len(items)
    assert outcome(tensors.deserialize_bytes, raw, count) == outcome(reference, raw, count)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=64), count=st.integers(0, 12))
def test_arbitrary_bytes_match_the_reference(raw: bytes, count: int) -> None:
    assert outcome(tensors.deserialize_bytes, raw, count) == outcome(reference, raw, count)


@pytest.mark.parametrize("width", [0, 1, 7])
def test_more_elements_than_one_chunk_decode_in_order(width: int) -> None:
    items = [i.to_bytes(4, "little")[:width] for i in range(70_000)]
    items[-1] = items[-1] + b"!"  # one element of another length: the general path
    for data in (items[:-1], items):
        decoded = tensors.deserialize_bytes("s", frame(data), len(data))
        assert list(decoded) == data


def reference_serialize(array: np.ndarray) -> bytes:
    """The encoder before join_elements: one struct call per element."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


@settings(max_examples=300, deadline=None)
@given(items=st.lists(st.one_of(st.binary(max_size=12), st.text(max_size=6)), max_size=40))
def test_serialize_matches_the_reference_and_round_trips(items: list[bytes | str]) -> None:
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    raw = tensors.serialize_bytes(array)
    assert raw == reference_serialize(array)
    decoded = tensors.deserialize_bytes("s", raw, len(items))
    assert list(decoded) == [i.encode() if isinstance(i, str) else i for i in items]


def test_serialize_more_elements_than_one_chunk() -> None:
    array = np.empty(70_007, dtype=np.object_)
    array[:] = [str(i).encode() for i in range(len(array))]
    assert tensors.serialize_bytes(array.reshape(7, -1)) == reference_serialize(array)
