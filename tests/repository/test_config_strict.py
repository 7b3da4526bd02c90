"""A config is read whole or refused: names that are no Triton field are refused with the
nearest one, Triton fields trtserve does not implement are refused by path, in pbtxt and
JSON alike, and the configs the README shows still load."""

from __future__ import annotations

import json

import pytest

from trtserve.server.default_model import SIMPLE_CONFIG
from trtserve.server.errors import InvalidArgument
from trtserve.server.repository.model_config import parse_config_text, settings_from_config

BASE = 'name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'


def refusal(text: str, fmt: str = "pbtxt") -> str:
    with pytest.raises(InvalidArgument) as refused:
        parse_config_text(text, fmt, "m")  # type: ignore[arg-type]
    return str(refused.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'name: "m"\nmax_batch_sise: 8\n',
            "config (pbtxt) (line 2): 'max_batch_sise' is no field of ModelConfig in Triton's "
            "model configuration; did you mean 'max_batch_size'?",
        ),
        (
            BASE + "dynamic_batching { max_queue_delay_microsecond: 100 }\n",
            "'max_queue_delay_microsecond' is no field of ModelDynamicBatching in Triton's "
            "model configuration; did you mean 'max_queue_delay_microseconds'?",
        ),
        (
            BASE + 'input [ { name: "x" data_typ: TYPE_FP32 dims: [ 1 ] } ]\n',
            "did you mean 'data_type'?",
        ),
    ],
)
def test_a_name_that_is_no_field_is_refused_with_the_nearest(text: str, expected: str) -> None:
    message = refusal(text)
    assert "model 'm'" in message and expected in message, message


def test_the_same_in_json() -> None:
    message = refusal(json.dumps({"name": "m", "max_batch_sise": 8}), "json")
    assert "config (json): 'max_batch_sise' is no field of ModelConfig" in message
    assert "did you mean 'max_batch_size'?" in message


@pytest.mark.parametrize(
    ("text", "paths"),
    [
        ("sequence_batching { max_sequence_idle_microseconds: 5000000 }\n", "sequence_batching"),
        ("optimization { graph { level: 1 } }\n", "optimization"),
        ("response_cache { enable: true }\n", "response_cache"),
        ("dynamic_batching { priority_levels: 2 }\n", "dynamic_batching.priority_levels"),
        (
            "dynamic_batching { default_queue_policy { default_timeout_microseconds: 100 } }\n",
            "dynamic_batching.default_queue_policy.default_timeout_microseconds",
        ),
        (
            'ensemble_scheduling { step [ { model_name: "a" model_version: -1 } ] }\n',
            "ensemble_scheduling",
        ),
        (
            'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ]\n'
            "  format: FORMAT_NCHW is_shape_tensor: true } ]\n",
            "input.format, input.is_shape_tensor",
        ),
        (
            'instance_group [ { count: 1 kind: KIND_CPU profile: [ "0" ] } ]\n'
            "model_transaction_policy { decoupled: true }\n",
            "instance_group.profile, model_transaction_policy",
        ),
    ],
)
def test_triton_fields_not_implemented_are_refused_by_path(text: str, paths: str) -> None:
    message = refusal(BASE + text)
    assert f"config: {paths}: not supported by this server" in message, message


def test_a_field_left_at_its_default_is_no_refusal() -> None:
    # proto3 cannot tell `preserve_ordering: false` from no such line: it asks for nothing.
    cfg = parse_config_text(BASE + "dynamic_batching { preserve_ordering: false }\n", "pbtxt", "m")
    assert settings_from_config(cfg, "m").batching.enabled


def test_the_configs_this_project_shows_still_load() -> None:
    readme = (
        BASE
        + 'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]\n'
        + 'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]\n'
        + "dynamic_batching {\n  preferred_batch_size: [ 4, 8 ]\n"
        + "  max_queue_delay_microseconds: 100\n"
        + "  default_queue_policy { max_queue_size: 256 }\n}\n"
        + "instance_group [ { count: 2 kind: KIND_CPU } ]\n"
        + "version_policy { specific { versions: [ 1 ] } }\n"
        + 'parameters { key: "intra_op_thread_count" value: { string_value: "2" } }\n'
    )
    for name, text in (("m", readme), ("simple", SIMPLE_CONFIG)):
        settings_from_config(parse_config_text(text, "pbtxt", name), name)
