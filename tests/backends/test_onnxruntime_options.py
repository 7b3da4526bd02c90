"""Triton's ONNX Runtime parameters reach the sessions; bad values are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from trtserve.server.backends.onnxruntime_backend import _create_session
from trtserve.server.backends.onnxruntime_options import SessionSettings, session_settings
from trtserve.server.default_model import build_simple_model
from trtserve.server.errors import InvalidArgument


def test_tritons_names_are_read() -> None:
    found = session_settings(
        "m",
        {
            "intra_op_thread_count": "3",
            "inter_op_thread_count": "2",
            "execution_mode": "1",
            "enable_mem_arena": "0",
            "enable_mem_pattern": "1",
            "something_else": "kept for whoever reads it",
        },
    )
    assert found == SessionSettings(3, 2, True, False, True)
    assert session_settings("m", {}) == SessionSettings()
    # trtserve's earlier name still works, alone or agreeing.
    assert session_settings("m", {"intra_op_threads": "4"}).intra_op_threads == 4


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"intra_op_thread_count": "0"}, "'intra_op_thread_count': expected a positive integer"),
        ({"inter_op_thread_count": "two"}, "'inter_op_thread_count': expected a positive"),
        ({"execution_mode": "2"}, "'execution_mode': expected one of 0, 1, received '2'"),
        ({"enable_mem_arena": "yes"}, "'enable_mem_arena': expected one of 0, 1"),
        (
            {"intra_op_thread_count": "2", "intra_op_threads": "3"},
            "name the same setting: expected equal values, received 2 and 3",
        ),
    ],
)
def test_bad_values_are_refused_naming_the_parameter(
    parameters: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        session_settings("m", parameters)
    assert message in str(refused.value) and "model 'm'" in str(refused.value)


def test_a_session_is_made_with_them(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(build_simple_model())
    settings = session_settings(
        "m", {"intra_op_thread_count": "3", "inter_op_thread_count": "2", "execution_mode": "1"}
    )
    options = _create_session(model, "m", settings).get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 2)
    assert options.execution_mode.name == "ORT_PARALLEL"
