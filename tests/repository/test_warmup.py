"""model_warmup as Triton defines it: samples of zeros, random values or file data run on every
instance before a version serves, and a sample that fails fails the load, naming it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from managed import index, with_loaded_repository

from trtserve.server.default_model import SIMPLE_CONFIG, build_simple_model
from trtserve.server.errors import InvalidArgument
from trtserve.server.repository.model_config import parse_config_text, settings_from_config

ZERO_AND_RANDOM = """
model_warmup [
  {
    name: "zeros"
    batch_size: 4
    count: 3
    inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 16 ] zero_data: true } }
    inputs { key: "INPUT1" value: { data_type: TYPE_FP32 dims: [ 16 ] random_data: true } }
  },
  {
    name: "from a file"
    batch_size: 1
    inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 16 ] input_data_file: "x.bin" } }
    inputs { key: "INPUT1" value: { data_type: TYPE_FP32 dims: [ 16 ] zero_data: true } }
  }
]
"""


def load(root: Path, warmup: str, files: dict[str, bytes] | None = None) -> tuple[str, str]:
    """The built-in model with `warmup`, loaded: (state, reason)."""
    (root / "m" / "1").mkdir(parents=True)
    (root / "m" / "1" / "model.onnx").write_bytes(build_simple_model())
    (root / "m" / "config.pbtxt").write_text(SIMPLE_CONFIG.replace('"simple"', '"m"') + warmup)
    for name, data in (files or {}).items():
        (root / "m" / "warmup").mkdir(exist_ok=True)
        (root / "m" / "warmup" / name).write_bytes(data)
    (entry,) = with_loaded_repository(root, index)
    return entry.state, entry.reason


def test_samples_run_on_every_instance_before_the_version_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = np.arange(16, dtype=np.float32).tobytes()
    with caplog.at_level(logging.INFO, logger="trtserve.server.models.warmup"):
        assert load(tmp_path, ZERO_AND_RANDOM, {"x.bin": data}) == ("READY", "")
    ran = [r.getMessage() for r in caplog.records if r.name.endswith("warmup")]
    assert ran == [
        "warmup zeros ran 3 time(s) on 2 instance(s) of model 'm' version 1",
        "warmup from a file ran 1 time(s) on 2 instance(s) of model 'm' version 1",
    ]


@pytest.mark.parametrize(
    ("warmup", "files", "reason"),
    [
        (
            ZERO_AND_RANDOM.replace("dims: [ 16 ] zero_data", "dims: [ 3 ] zero_data"),
            {"x.bin": bytes(64)},
            "model 'm' version 1: model_warmup 'zeros' failed on instance 0",
        ),
        (ZERO_AND_RANDOM, {}, "model_warmup 'from a file' input 'INPUT0': cannot read"),
        (
            ZERO_AND_RANDOM,
            {"x.bin": bytes(10)},
            "model_warmup 'from a file' input_data_file x.bin: input 'INPUT0': raw data of "
            "FP32 shape [16] must be 64 bytes, received 10",
        ),
    ],
    ids=["execution fails", "file missing", "file of the wrong size"],
)
def test_a_failing_sample_fails_the_load_naming_it(
    tmp_path: Path, warmup: str, files: dict[str, bytes], reason: str
) -> None:
    state, found = load(tmp_path, warmup, files)
    assert state == "UNAVAILABLE"
    assert reason in found, found


def settings_error(warmup: str) -> str:
    cfg = parse_config_text(SIMPLE_CONFIG + warmup, "pbtxt", "simple")
    with pytest.raises(InvalidArgument) as refused:
        settings_from_config(cfg, "simple")
    return str(refused.value)


@pytest.mark.parametrize(
    ("warmup", "message"),
    [
        (
            'model_warmup [ { name: "w" batch_size: 9 inputs { key: "INPUT0" value: '
            "{ data_type: TYPE_FP32 dims: [ 16 ] zero_data: true } } } ]",
            "model_warmup 'w': batch_size: expected 1 to max_batch_size 8, received 9",
        ),
        (
            'model_warmup [ { name: "w" batch_size: 1 } ]',
            "model_warmup 'w': inputs: expected at least one, received none",
        ),
        (
            'model_warmup [ { name: "w" batch_size: 1 inputs { key: "INPUT0" value: '
            "{ data_type: TYPE_FP32 dims: [ 16 ] } } } ]",
            "input 'INPUT0': expected one of zero_data, random_data or input_data_file",
        ),
        (
            'model_warmup [ { name: "w" batch_size: 1 inputs { key: "INPUT0" value: '
            '{ data_type: TYPE_FP32 dims: [ 16 ] input_data_file: "../x" } } } ]',
            "input_data_file: expected a plain file name in the model's warmup folder",
        ),
        (
            'model_warmup [ { batch_size: 1 inputs { key: "INPUT0" value: '
            "{ data_type: TYPE_FP32 dims: [ 16 ] zero_data: true } } } ]",
            "model_warmup: expected a name, received none",
        ),
    ],
)
def test_bad_samples_are_refused_naming_the_field(warmup: str, message: str) -> None:
    assert message in settings_error(warmup)
