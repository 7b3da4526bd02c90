"""`trtserve models list|load|unload`: the server's model repository."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from trtserve.cli.connection import add_connection_arguments, connect
from trtserve.client import InferenceServerError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `models` subcommand and its list, load and unload commands."""
    p = subparsers.add_parser(
        "models",
        help="list, load or unload the server's models",
        description="List, load or unload the models of a running server's repository.",
    )
    sub = p.add_subparsers(dest="models_command", required=True, metavar="{list,load,unload}")

    ls = sub.add_parser("list", help="list models with their version and state")
    add_connection_arguments(ls)
    ls.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    ls.set_defaults(func=run_list)

    load = sub.add_parser(
        "load",
        help="load or reload a model, optionally sending its config and files",
        description=(
            "Load (or reload) model NAME. --config sends a configuration (JSON, or Triton's "
            "config.pbtxt text format); --file writes a file into the model folder before loading, "
            "e.g. --file 1/model.onnx=./model.onnx (the way tritonclient's load_model does)."
        ),
    )
    load.add_argument("name", metavar="NAME", help="model name")
    add_connection_arguments(load)
    load.add_argument(
        "--config",
        metavar="FILE",
        help="model configuration: JSON (.json) or Triton's text format (config.pbtxt)",
    )
    load.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="VERSION/NAME=PATH",
        help="send the local file PATH as VERSION/NAME in the model folder (repeatable)",
    )
    load.set_defaults(func=run_load)

    unload = sub.add_parser("unload", help="unload a model")
    unload.add_argument("name", metavar="NAME", help="model name")
    add_connection_arguments(unload)
    unload.set_defaults(func=run_unload)


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def run_list(args: argparse.Namespace) -> int:
    """Print the repository index; 1 on a server error."""
    try:
        with connect(args) as client:
            entries = client.repository_index()
    except InferenceServerError as e:
        return _fail(str(e), 1)
    if args.json:
        print(json.dumps([asdict(e) for e in entries], indent=2))
        return 0
    rows = [("NAME", "VERSION", "STATE", "REASON")]
    rows += [(e.name, e.version, e.state, e.reason) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)), r[3], sep="  ")
    return 0


def read_json_file(path: str) -> str:
    """A JSON file's text, checked to parse; ValueError names the file."""
    text = Path(path).read_text()
    try:
        json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    return text


def read_config_file(path: str) -> str:
    """A model configuration file as the JSON the load call sends: JSON as it is, anything
    else read as Triton's text format (config.pbtxt); ValueError names the file."""
    if Path(path).suffix.lower() == ".json":
        return read_json_file(path)
    from google.protobuf import json_format, text_format

    from trtserve.protocol import model_config_pb2

    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(Path(path).read_text(), config)
    except text_format.ParseError as e:
        raise ValueError(f"{path}: not a model configuration in text format: {e}") from None
    return json_format.MessageToJson(config)


def _read_files(specs: list[str]) -> dict[str, bytes]:
    files = {}
    for spec in specs:
        target, sep, path = spec.partition("=")
        if not sep or "/" not in target or not path:
            raise ValueError(
                f"--file {spec!r}: expected VERSION/NAME=PATH, e.g. 1/model.onnx=m.onnx"
            )
        files[target] = Path(path).read_bytes()
    return files


def run_load(args: argparse.Namespace) -> int:
    """Load a model; 1 on a server error, 2 on unreadable or malformed arguments."""
    try:
        config = None if args.config is None else read_config_file(args.config)
        files = _read_files(args.file)
    except (OSError, ValueError) as e:
        return _fail(str(e), 2)
    try:
        with connect(args) as client:
            client.load_model(args.name, config=config, files=files or None)
    except InferenceServerError as e:
        return _fail(str(e), 1)
    print(f"loaded {args.name}")
    return 0


def run_unload(args: argparse.Namespace) -> int:
    """Unload a model; 1 on a server error."""
    try:
        with connect(args) as client:
            client.unload_model(args.name)
    except InferenceServerError as e:
        return _fail(str(e), 1)
    print(f"unloaded {args.name}")
    return 0
