"""Raw BYTES tensor data (4-byte little-endian length, then the bytes, per element) and arrays.

The elements are read without a struct call per element: when every element has the length
of the first (fixed-width strings, tokens, the common case) numpy reads the lengths and the
elements in one pass; otherwise a tight loop slices them out of the bytes. Either way the
result holds one bytes object per element, built in chunks so that a thread decoding a large
tensor gives the interpreter lock back to the event loop between them.
"""

from __future__ import annotations

import struct

import numpy as np

_LENGTH = struct.Struct("<I")
# Elements converted per C call: about a millisecond of holding the interpreter lock.
_CHUNK = 1 << 16


class BytesDataError(ValueError):
    """BYTES data that does not hold the elements its shape declares."""


def split_elements(name: str, raw: bytes | memoryview, count: int) -> np.ndarray:
    """Raw BYTES data to a flat object array of `count` bytes elements."""
    data = raw if isinstance(raw, bytes) else bytes(raw)
    out = np.empty(count, dtype=np.object_)
    if count == 0:
        _check_consumed(name, data, 0, count)
        return out
    if len(data) >= 4:
        width = _LENGTH.unpack_from(data, 0)[0]
        if width > 0 and len(data) == count * (4 + width) and _fill_uniform(out, data, width):
            return out
    _fill_varying(name, out, data)
    return out


def _fill_uniform(out: np.ndarray, data: bytes, width: int) -> bool:
    """Fill `out` from elements of `width` bytes each; False if some length differs."""
    records = np.frombuffer(data, dtype=np.dtype([("length", "<u4"), ("value", f"V{width}")]))
    if not bool((records["length"] == width).all()):
        return False
    values = records["value"]
    for start in range(0, len(out), _CHUNK):
        # void items come out as bytes objects of exactly `width` bytes (zeros kept).
        out[start : start + _CHUNK] = values[start : start + _CHUNK].tolist()
    return True


def _fill_varying(name: str, out: np.ndarray, data: bytes) -> None:
    count = len(out)
    unpack = _LENGTH.unpack_from
    offset = 0
    for chunk_start in range(0, count, _CHUNK):
        items: list[bytes] = []
        append = items.append
        try:
            for _ in range(min(_CHUNK, count - chunk_start)):
                start = offset + 4
                offset = start + unpack(data, offset)[0]
                append(data[start:offset])
        except struct.error:
            offset = len(data) + 1
        if offset > len(data):
            _raise_malformed(name, data, count)
        out[chunk_start : chunk_start + len(items)] = items
    _check_consumed(name, data, offset, count)


def _check_consumed(name: str, data: bytes, offset: int, count: int) -> None:
    if offset != len(data):
        raise BytesDataError(
            f"input '{name}': BYTES data has {len(data) - offset} bytes after the "
            f"{count} elements its shape declares"
        )


def _raise_malformed(name: str, data: bytes, count: int) -> None:
    """Walk the elements again, one by one, to say which one the data cuts short."""
    offset = 0
    for i in range(count):
        if offset + 4 > len(data):
            raise BytesDataError(
                f"input '{name}': BYTES data holds fewer elements than its shape needs: "
                f"expected {count}, received {i}"
            )
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += 4
        if offset + length > len(data):
            raise BytesDataError(
                f"input '{name}': BYTES element {i} declares {length} bytes, "
                f"only {len(data) - offset} remain"
            )
        offset += length
    raise AssertionError("unreachable: the fast walk found these elements malformed")


def join_elements(array: np.ndarray) -> bytes:
    """An array of bytes (or str, sent as UTF-8) elements to raw BYTES data.

    Chunk by chunk, the lengths are written by numpy instead of a struct call per element.
    """
    flat = array.reshape(-1)
    return b"".join(
        _join_chunk(flat[start : start + _CHUNK]) for start in range(0, len(flat), _CHUNK)
    )


def _join_chunk(chunk: np.ndarray) -> bytes:
    items = [item.encode("utf-8") if isinstance(item, str) else bytes(item) for item in chunk]
    lengths = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
    framed = lengths + 4
    out = np.empty(int(framed.sum()), dtype=np.uint8)
    # Each element's 4 length bytes go at its start; its bytes fill the positions between.
    length_at = ((np.cumsum(framed) - framed)[:, None] + np.arange(4)).reshape(-1)
    out[length_at] = lengths.astype("<u4").view(np.uint8)
    body = np.ones(len(out), dtype=np.bool_)
    body[length_at] = False
    out[body] = np.frombuffer(b"".join(items), dtype=np.uint8)
    return out.tobytes()
