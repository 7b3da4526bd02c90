"""Model configuration: parsing, validation, completion from the model file, reporting."""

from __future__ import annotations

import json

import pytest

from trtserve.protocol import model_config_pb2
from trtserve.server.errors import FailedPrecondition, InvalidArgument
from trtserve.server.repository.model_config import (
    complete_settings,
    config_from_settings,
    parse_config_text,
    settings_from_config,
)
from trtserve.server.specs import (
    BatchingSettings,
    DeviceKind,
    InstanceGroup,
    ModelIO,
    ModelSettings,
    TensorSpec,
)

PBTXT = """
name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 16 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_STRING, dims: [ -1, 3 ] } ]
dynamic_batching {
  preferred_batch_size: [ 4, 2 ]
  max_queue_delay_microseconds: 250
  default_queue_policy { max_queue_size: 77 }
}
instance_group [ { count: 3, kind: KIND_CPU } ]
parameters { key: "intra_op_threads" value: { string_value: "2" } }
"""

# What tritonclient's load_model(config=...) sends.
TRITONCLIENT_JSON = json.dumps(
    {
        "name": "m",
        "platform": "onnxruntime_onnx",
        "max_batch_size": 8,
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [16]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [16]}],
        "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
        "dynamic_batching": {"max_queue_delay_microseconds": 100},
    }
)


def settings(text: str, fmt: str = "pbtxt", name: str = "m") -> ModelSettings:
    return settings_from_config(parse_config_text(text, fmt, name), name)  # type: ignore[arg-type]


def test_pbtxt_is_parsed_into_settings() -> None:
    s = settings(PBTXT)
    assert s.name == "m"
    assert s.platform == "onnxruntime_onnx"
    assert s.max_batch_size == 8
    assert s.inputs == (TensorSpec("INPUT0", "FP32", (16,)),)
    assert s.outputs == (TensorSpec("OUTPUT0", "BYTES", (-1, 3)),)
    assert s.batching == BatchingSettings(True, (2, 4), 250, 77)
    assert s.instance_groups == (InstanceGroup(3, DeviceKind.CPU, ()),)
    assert s.parameters == {"intra_op_threads": "2"}


def test_tritonclient_json_is_parsed_into_settings() -> None:
    s = settings(TRITONCLIENT_JSON, "json")
    assert s.max_batch_size == 8
    assert s.inputs == (TensorSpec("INPUT0", "FP32", (16,)),)
    assert s.outputs == (TensorSpec("OUTPUT0", "FP32", (16,)),)
    assert s.batching == BatchingSettings(True, (), 100, 0)
    assert s.instance_groups == (InstanceGroup(2, DeviceKind.CPU, ()),)


def test_backend_names_the_platform_and_defaults_fill_the_rest() -> None:
    trt = settings('backend: "tensorrt"')
    assert trt.platform == "tensorrt_plan"
    assert trt.max_batch_size == 0
    assert trt.batching.enabled is False
    assert trt.instance_groups == (InstanceGroup(1, DeviceKind.GPU, ()),)
    ort = settings('backend: "onnxruntime"')
    assert ort.instance_groups == (InstanceGroup(1, DeviceKind.CPU, ()),)


def test_gpu_group_keeps_device_ids_and_unset_count_means_one() -> None:
    s = settings('platform: "tensorrt_plan" instance_group [ { kind: KIND_GPU, gpus: [0, 2] } ]')
    assert s.instance_groups == (InstanceGroup(1, DeviceKind.GPU, (0, 2)),)


def test_dynamic_batching_without_batch_dimension_runs_one_by_one() -> None:
    s = settings('platform: "onnxruntime_onnx" dynamic_batching { }')
    assert s.batching.enabled is False


def test_default_platform_applies_only_when_config_names_none() -> None:
    cfg = parse_config_text("max_batch_size: 2", "pbtxt", "m")
    assert settings_from_config(cfg, "m", default_platform="tensorrt_plan").platform == (
        "tensorrt_plan"
    )


@pytest.mark.parametrize(
    ("text", "fmt", "fragments"),
    [
        ("name: ", "pbtxt", ["model 'm'", "pbtxt", "does not parse"]),
        ("{not json", "json", ["model 'm'", "json", "does not parse"]),
        ('input [ { name: "a", data_type: TYPE_NOPE } ]', "pbtxt", ["TYPE_NOPE"]),
    ],
)
def test_unparsable_config_is_invalid_argument(text: str, fmt: str, fragments: list[str]) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse_config_text(text, fmt, "m")  # type: ignore[arg-type]
    for fragment in fragments:
        assert fragment in str(e.value)


def test_unknown_json_data_type_is_named() -> None:
    text = json.dumps({"input": [{"name": "a", "data_type": "TYPE_NOPE", "dims": [1]}]})
    with pytest.raises(InvalidArgument) as e:
        parse_config_text(text, "json", "m")
    assert "model 'm': input 'a': data_type: expected one of TYPE_BOOL" in str(e.value)
    assert "received TYPE_NOPE" in str(e.value)


def test_unknown_format_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="config format: expected 'pbtxt' or 'json'"):
        parse_config_text("", "toml", "m")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'name: "other" platform: "onnxruntime_onnx"',
            "model 'm': config name: expected 'm' (the model's folder or load name), "
            "received 'other'",
        ),
        (
            'platform: "pytorch_libtorch"',
            "model 'm': platform: expected one of onnxruntime_onnx, tensorrt_plan, "
            "received 'pytorch_libtorch'",
        ),
        (
            'backend: "python"',
            "model 'm': backend: expected one of onnxruntime, tensorrt, received 'python'",
        ),
        (
            'platform: "onnxruntime_onnx" backend: "tensorrt"',
            "model 'm': backend: expected 'onnxruntime' for platform 'onnxruntime_onnx', "
            "received 'tensorrt'",
        ),
        ("max_batch_size: 4", "model 'm': platform: expected one of"),
        (
            'platform: "onnxruntime_onnx" max_batch_size: -1',
            "model 'm': max_batch_size: expected 0 or more, received -1",
        ),
        (
            'platform: "onnxruntime_onnx" max_batch_size: 4 '
            "dynamic_batching { preferred_batch_size: [2, 8] }",
            "model 'm': dynamic_batching.preferred_batch_size: expected values from 1 to "
            "max_batch_size 4, received [2, 8]",
        ),
        (
            'platform: "onnxruntime_onnx" instance_group [ { count: -2 } ]',
            "model 'm': instance_group[0].count: expected 1 or more, received -2",
        ),
        (
            'platform: "tensorrt_plan" instance_group [ { kind: KIND_GPU, gpus: [-1] } ]',
            "model 'm': instance_group[0].gpus: expected device ordinals of 0 or more, "
            "received [-1]",
        ),
        (
            'platform: "onnxruntime_onnx" input [ { name: "a", dims: [1] } ]',
            "model 'm': input 'a': data_type: expected one of TYPE_BOOL",
        ),
        (
            'platform: "onnxruntime_onnx" output [ { name: "o", data_type: TYPE_FP32, '
            "dims: [4, -3] } ]",
            "model 'm': output 'o': dims: expected values of -1 or more, received [4, -3]",
        ),
        (
            'platform: "onnxruntime_onnx" input [ { name: "a", data_type: TYPE_FP32 }, '
            '{ name: "a", data_type: TYPE_FP32 } ]',
            "model 'm': input 'a': expected a unique name, received it twice",
        ),
        (
            'platform: "onnxruntime_onnx" input [ { data_type: TYPE_FP32 } ]',
            "model 'm': input name: expected a non-empty name, received ''",
        ),
        (
            'platform: "onnxruntime_onnx" default_model_filename: "../x.onnx"',
            "model 'm': default_model_filename: expected a plain file name",
        ),
    ],
)
def test_invalid_config_names_field_expected_and_received(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        settings(text)
    assert message in str(e.value)


def test_received_data_type_is_named() -> None:
    with pytest.raises(InvalidArgument, match="received TYPE_INVALID"):
        settings('platform: "onnxruntime_onnx" input [ { name: "a", dims: [1] } ]')


BATCHED_IO = ModelIO(
    inputs=(TensorSpec("x", "FP32", (-1, 16)), TensorSpec("n", "INT64", (-1, -1))),
    outputs=(TensorSpec("y", "FP32", (-1, 16)),),
    max_batch_size=-1,
)


def base(max_batch_size: int = 8, **kwargs: object) -> ModelSettings:
    return ModelSettings(
        name="m",
        platform="onnxruntime_onnx",
        max_batch_size=max_batch_size,
        **kwargs,  # type: ignore[arg-type]
    )


def test_complete_takes_undeclared_tensors_from_the_file_without_batch_dim() -> None:
    done = complete_settings(base(8), BATCHED_IO)
    assert done.inputs == (TensorSpec("x", "FP32", (16,)), TensorSpec("n", "INT64", (-1,)))
    assert done.outputs == (TensorSpec("y", "FP32", (16,)),)


def test_complete_keeps_zero_max_batch_size_and_full_shapes() -> None:
    done = complete_settings(base(0), BATCHED_IO)
    assert done.max_batch_size == 0
    assert done.inputs == BATCHED_IO.inputs
    assert done.batching.enabled is False


def test_complete_keeps_declared_tensors_that_narrow_variable_dims() -> None:
    declared = (TensorSpec("x", "FP32", (16,)), TensorSpec("n", "INT64", (4,)))
    done = complete_settings(base(8, inputs=declared), BATCHED_IO)
    assert done.inputs == declared
    assert done.outputs == (TensorSpec("y", "FP32", (16,)),)


@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        (
            base(8, inputs=(TensorSpec("x", "FP32", (16,)), TensorSpec("z", "FP32", (1,)))),
            "model 'm': input 'z': expected one of the model file's inputs 'x', 'n', received 'z'",
        ),
        (
            base(8, inputs=(TensorSpec("x", "FP16", (16,)), TensorSpec("n", "INT64", (1,)))),
            "model 'm': input 'x': expected datatype FP32 (the model file's), received FP16",
        ),
        (
            base(8, inputs=(TensorSpec("x", "FP32", (8,)), TensorSpec("n", "INT64", (1,)))),
            "model 'm': input 'x': expected dims compatible with [16] (the model file's, batch "
            "dimension left out), received [8]",
        ),
        (
            base(8, inputs=(TensorSpec("x", "FP32", (-1, 16)), TensorSpec("n", "INT64", (1,)))),
            "model 'm': input 'x': expected dims compatible with [16]",
        ),
        (
            base(8, inputs=(TensorSpec("x", "FP32", (16,)),)),
            "model 'm': input 'n': expected in the config because the model file needs it",
        ),
        (
            base(8, outputs=(TensorSpec("y", "FP32", (-1,)),)),
            "model 'm': output 'y': expected dims compatible with [16]",
        ),
        (
            base(0, inputs=(TensorSpec("x", "FP32", (16,)), TensorSpec("n", "INT64", (1, 1)))),
            "model 'm': input 'x': expected dims compatible with [-1, 16] (the model file's), "
            "received [16]",
        ),
    ],
)
def test_complete_rejects_config_that_disagrees_with_file(
    settings_: ModelSettings, message: str
) -> None:
    with pytest.raises(FailedPrecondition) as e:
        complete_settings(settings_, BATCHED_IO)
    assert message in str(e.value)


def test_complete_rejects_batching_a_model_without_batch_dimension() -> None:
    io = ModelIO((TensorSpec("x", "FP32", (1, 16)),), (TensorSpec("y", "FP32", (1, 16)),), 0)
    with pytest.raises(FailedPrecondition) as e:
        complete_settings(base(4), io)
    assert "max_batch_size: expected 0" in str(e.value)
    assert "received 4" in str(e.value)


def test_complete_rejects_batch_above_the_file_limit() -> None:
    io = ModelIO((TensorSpec("x", "FP32", (-1, 16)),), (TensorSpec("y", "FP32", (-1, 16)),), 4)
    with pytest.raises(FailedPrecondition, match=r"expected at most 4 .* received 8"):
        complete_settings(base(8), io)


def test_config_from_settings_reports_file_tensors_and_batching() -> None:
    s = base(
        8,
        batching=BatchingSettings(True, (2, 4), 100, 50),
        instance_groups=(InstanceGroup(2, DeviceKind.CPU),),
        parameters={"intra_op_threads": "1"},
    )
    cfg = config_from_settings(s, BATCHED_IO)
    assert cfg.name == "m"
    assert cfg.platform == "onnxruntime_onnx"
    assert cfg.backend == "onnxruntime"
    assert cfg.max_batch_size == 8
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.input] == [
        ("x", model_config_pb2.TYPE_FP32, [16]),
        ("n", model_config_pb2.TYPE_INT64, [-1]),
    ]
    assert [(t.name, list(t.dims)) for t in cfg.output] == [("y", [16])]
    assert cfg.HasField("dynamic_batching")
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert cfg.dynamic_batching.default_queue_policy.max_queue_size == 50
    assert [(g.count, g.kind) for g in cfg.instance_group] == [
        (2, model_config_pb2.ModelInstanceGroup.KIND_CPU)
    ]
    assert cfg.parameters["intra_op_threads"].string_value == "1"


def test_config_from_settings_prefers_declared_tensors_and_omits_batching() -> None:
    s = base(0, inputs=(TensorSpec("a", "BYTES", (3,)),), outputs=(TensorSpec("b", "BOOL", ()),))
    cfg = config_from_settings(s, BATCHED_IO)
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.input] == [
        ("a", model_config_pb2.TYPE_STRING, [3])
    ]
    assert [(t.name, t.data_type) for t in cfg.output] == [("b", model_config_pb2.TYPE_BOOL)]
    assert not cfg.HasField("dynamic_batching")


def test_config_round_trips_through_settings() -> None:
    s = settings(PBTXT)
    again = settings_from_config(config_from_settings(s, None), "m")
    assert again == s
