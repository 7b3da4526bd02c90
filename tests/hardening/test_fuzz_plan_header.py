"""Fuzzing the plan-header reader: every input parses or raises PlanHeaderError, nothing else.

Inputs are the real plans of ../shared/plans (or $TRTSERVE_TEST_PLANS; skipped when absent)
mutated by hypothesis: cut, bit-flipped, header fields overwritten with boundary values,
resized, spliced; plus arbitrary bytes. What parses must be self-consistent, and the reader of
files must agree with the reader of bytes. TRTSERVE_FUZZ_EXAMPLES sets the number of examples
per test (default 2000).
"""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trtserve.server.runtime.plan_header import (
    ENTRY_SIZE,
    FOOTER_SIZE,
    HEADER_SIZE,
    MAGIC,
    TAG_ENGINE,
    PlanHeader,
    PlanHeaderError,
    read_plan_header,
    read_plan_header_file,
)

EXAMPLES = int(os.environ.get("TRTSERVE_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def plans_dir() -> Path:
    configured = os.environ.get("TRTSERVE_TEST_PLANS")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / ".." / "shared" / "plans"


def load_plans() -> list[bytes]:
    folder = plans_dir()
    return [p.read_bytes() for p in sorted(folder.glob("*.plan"))] if folder.is_dir() else []


PLANS = load_plans()
needs_plans = pytest.mark.skipif(not PLANS, reason=f"no real plans in {plans_dir()}")

# u64 and u32 values that break naive bounds arithmetic.
BOUNDARY = [
    0,
    1,
    2,
    23,
    24,
    31,
    32,
    255,
    256,
    1023,
    1024,
    1025,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**63 - 1,
    2**63,
    2**64 - 24,
    2**64 - 1,
]


@dataclass(frozen=True)
class Mutation:
    """One change to a plan's bytes."""

    kind: str
    position: int
    value: int
    data: bytes

    def apply(self, plan: bytes) -> bytes:
        out = bytearray(plan)
        at = self.position % (len(out) + 1)
        if self.kind == "cut":
            return bytes(out[:at])
        if self.kind == "flip" and out:
            out[at % len(out)] ^= 1 << (self.value % 8)
        elif self.kind in ("u64", "u32") and len(out) >= 8:
            fmt, size = ("<Q", 8) if self.kind == "u64" else ("<I", 4)
            offset = self._field_offset(len(out), size)
            struct.pack_into(fmt, out, offset, self.value % (1 << (8 * size)))
        elif self.kind == "insert":
            out[at:at] = self.data
        elif self.kind == "delete":
            del out[at : at + 1 + self.value % 64]
        elif self.kind == "append":
            out += self.data
        elif self.kind == "footer" and len(out) >= FOOTER_SIZE:
            out[-FOOTER_SIZE:] = struct.pack("<I", self.value % 2**32)
        return bytes(out)

    def _field_offset(self, size: int, width: int) -> int:
        # Mostly the header and the entry table, where the reader looks; sometimes anywhere.
        fields = [0x04, 0x08, 0x10, 0x18, 0x1C] + [
            HEADER_SIZE + ENTRY_SIZE * i + part for i in range(4) for part in (0, 8, 16)
        ]
        offset = fields[self.position % len(fields)] if self.value % 4 else self.position
        return min(offset, size - width)


mutations = st.builds(
    Mutation,
    kind=st.sampled_from(
        ["cut", "flip", "flip", "u64", "u64", "u32", "insert", "delete", "append", "footer"]
    ),
    position=st.one_of(st.integers(0, HEADER_SIZE + 4 * ENTRY_SIZE), st.integers(0, 2**20)),
    value=st.one_of(st.sampled_from(BOUNDARY), st.integers(0, 2**64 - 1)),
    data=st.binary(max_size=48),
)


def check_answer(data: bytes) -> PlanHeader | None:
    """The header, or None when the reader refused; anything else fails the test."""
    try:
        header = read_plan_header(data)
    except PlanHeaderError as error:
        assert str(error), "a refusal must say what is wrong"
        return None
    # What parses is consistent with the bytes it came from.
    assert header.total_size == len(data)
    assert any(e.tag == TAG_ENGINE for e in header.entries)
    table_end = HEADER_SIZE + ENTRY_SIZE * len(header.entries)
    for entry in header.entries:
        assert table_end <= entry.offset and entry.end <= len(data) - FOOTER_SIZE
    assert struct.unpack_from("<I", data, 0)[0] == MAGIC
    return header


def check_file_agrees(data: bytes, expected: PlanHeader | None) -> None:
    with tempfile.NamedTemporaryFile(suffix=".plan") as f:
        f.write(data)
        f.flush()
        try:
            header = read_plan_header_file(f.name)
        except PlanHeaderError:
            assert expected is None, "the file reader refused what the bytes reader read"
            return
    assert header == expected


@needs_plans
@FUZZ
@given(
    plan=st.sampled_from(range(len(PLANS)) if PLANS else [0]),
    changes=st.lists(mutations, min_size=1, max_size=4),
)
def test_mutated_real_plans_parse_or_raise_plan_header_error(
    plan: int, changes: list[Mutation]
) -> None:
    data = PLANS[plan]
    for change in changes:
        data = change.apply(data)
    check_answer(data)


@needs_plans
@settings(FUZZ, max_examples=max(EXAMPLES // 4, 10))
@given(
    plan=st.sampled_from(range(len(PLANS)) if PLANS else [0]),
    changes=st.lists(mutations, min_size=1, max_size=3),
)
def test_file_reader_agrees_with_bytes_reader(plan: int, changes: list[Mutation]) -> None:
    data = PLANS[plan]
    for change in changes:
        data = change.apply(data)
    check_file_agrees(data, check_answer(data))


@needs_plans
@FUZZ
@given(donor=st.integers(0, 3), plan=st.integers(0, 3), cut=st.integers(0, 256))
def test_spliced_headers_parse_or_raise(donor: int, plan: int, cut: int) -> None:
    """The head of one plan on the body of another: sizes and offsets disagree."""
    head = PLANS[donor % len(PLANS)][:cut]
    body = PLANS[plan % len(PLANS)][cut:]
    check_answer(head + body)


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=512),
        st.binary(max_size=512).map(lambda tail: struct.pack("<I", MAGIC) + tail),
    )
)
def test_arbitrary_bytes_parse_or_raise(data: bytes) -> None:
    check_answer(data)


def test_the_fuzzer_reaches_both_answers() -> None:
    """The mutations keep some plans readable and break others: both paths are exercised."""
    if not PLANS:
        pytest.skip(f"no real plans in {plans_dir()}")
    plan = PLANS[0]
    assert check_answer(Mutation("flip", 0, 0, b"").apply(plan)) is None  # the magic
    assert check_answer(Mutation("flip", len(plan) // 2, 3, b"").apply(plan)) is not None  # payload
    assert check_answer(Mutation("cut", len(plan) - 1, 0, b"").apply(plan)) is None
