"""The `trtserve` command: every subcommand is there, and client commands need no server deps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trtserve.cli.main import build_parser
from trtserve.cli.models import read_config_file
from trtserve.cli.upload import stored_name

# (grpc_health and grpc_reflection are left out: `import grpc` itself looks for them.)
SERVER_ONLY = ("onnxruntime", "onnx", "prometheus_client", "cryptography", "tensorrt_dispatch",
               "cuda")  # fmt: skip


def test_every_subcommand_is_registered() -> None:
    for command in ("serve", "infer", "models", "upload", "bench", "inspect", "runtimes"):
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args([command, "--help"])
        assert done.value.code == 0


def test_the_parser_imports_no_server_dependency() -> None:
    # A load-test machine installs only the core dependencies: building the parser (and so
    # every client command) must not import what the `server` extra brings.
    code = (
        "import sys; from trtserve.cli.main import build_parser; build_parser(); "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({SERVER_ONLY!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("file", "given", "stored"),
    [
        ("resnet.plan", None, "model.plan"),
        ("resnet.engine", None, "model.plan"),
        ("net.ONNX", None, "model.onnx"),
        ("weights.bin", "model.plan", "model.plan"),
    ],
)
def test_upload_names_the_stored_file_after_the_extension(
    file: str, given: str | None, stored: str
) -> None:
    assert stored_name(Path(file), given) == stored


def test_upload_of_an_unknown_extension_asks_for_filename() -> None:
    expected = r"weights\.bin: .* extension '\.bin'; expected .*--filename"
    with pytest.raises(ValueError, match=expected):
        stored_name(Path("weights.bin"), None)


def test_models_load_reads_a_pbtxt_config_as_the_json_it_sends(tmp_path: Path) -> None:
    config = tmp_path / "config.pbtxt"
    config.write_text(
        'name: "add"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]\n'
    )
    sent = json.loads(read_config_file(str(config)))
    assert sent["name"] == "add" and sent["maxBatchSize"] == 8
    assert sent["input"] == [{"name": "INPUT0", "dataType": "TYPE_FP32", "dims": ["16"]}]
    as_json = tmp_path / "config.json"
    as_json.write_text('{"name": "add"}')
    assert read_config_file(str(as_json)) == '{"name": "add"}'


def test_models_load_names_a_misspelt_pbtxt_field(tmp_path: Path) -> None:
    config = tmp_path / "config.pbtxt"
    config.write_text("max_batch_sise: 8\n")
    with pytest.raises(ValueError, match=r"config\.pbtxt: .*max_batch_sise"):
        read_config_file(str(config))


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    """`trtserve ... | head`: the pipe closes before the command writes; no traceback."""
    plan = Path(__file__).resolve().parents[1].parent / "shared" / "plans"
    plan = plan / "conv_relu_trt11.0.0.114.plan"
    if not plan.is_file():
        pytest.skip(f"real plan {plan} not present")
    command = [sys.executable, "-m", "trtserve.cli.main", "inspect", "--json", str(plan)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stderr is not None
    # Closed long before the interpreter has started and written anything.
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(60) == 141, stderr
    assert stderr == ""
