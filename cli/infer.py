"""`trtserve infer`: one inference with random or file inputs; prints outputs and latency."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from trtserve.cli.connection import add_connection_arguments, connect
from trtserve.client import InferenceServerError, InferResult
from trtserve.client.request import random_inputs

_DESCRIPTION = """\
Send one inference request to a running server and print each output's name, datatype,
shape and first values, and the round-trip latency.

Inputs not given with --input are random data of the datatype and shape from the model's
metadata: the batch dimension (when the model batches) becomes --batch, other variable
dimensions become 1.

example:
  trtserve infer simple
  trtserve infer simple --input INPUT0=a.npy --input INPUT1=b.npy --json
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `infer` subcommand."""
    p = subparsers.add_parser(
        "infer",
        help="run one inference (random or .npy inputs) and print outputs and latency",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="model name")
    add_connection_arguments(p)
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=FILE.npy",
        help="take input NAME from a .npy file (repeat for several inputs)",
    )
    p.add_argument(
        "--batch", type=int, default=1, metavar="N", help="batch size of random inputs (1)"
    )
    p.add_argument("--version", default="", metavar="V", help="model version (server's choice)")
    p.add_argument(
        "--max-values",
        type=int,
        default=8,
        metavar="K",
        help="values printed per output (8; 0 prints all)",
    )
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="deadline in seconds")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def parse_input_files(specs: list[str]) -> dict[str, np.ndarray]:
    """NAME=FILE.npy arguments to arrays; ValueError names a malformed argument."""
    arrays = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--input {spec!r}: expected NAME=FILE.npy")
        arrays[name] = np.load(path, allow_pickle=False)
    return arrays


def _values(array: np.ndarray, limit: int) -> list[Any]:
    flat = array.reshape(-1)
    head = flat if limit <= 0 else flat[:limit]
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in head.tolist()]


def _report(result: InferResult, latency_ms: float, limit: int) -> dict[str, Any]:
    return {
        "model": result.model_name,
        "version": result.model_version,
        "latency_ms": latency_ms,
        "outputs": [
            {
                "name": name,
                "datatype": result.datatypes[name],
                "shape": list(array.shape),
                "values": _values(array, limit),
            }
            for name, array in result.outputs.items()
        ],
    }


def _print_text(report: dict[str, Any]) -> None:
    for out in report["outputs"]:
        print(f"{out['name']}  {out['datatype']}  {out['shape']}  {out['values']}")
    print(f"latency: {report['latency_ms']:.3f} ms")


def run(args: argparse.Namespace) -> int:
    """Run `trtserve infer`; 0 on success, 1 on a server error, 2 on bad arguments."""
    try:
        given = parse_input_files(args.input)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.batch < 1:
        print(f"error: --batch must be at least 1, received {args.batch}", file=sys.stderr)
        return 2
    try:
        with connect(args, timeout=args.timeout) as client:
            metadata = client.model_metadata(args.model, args.version)
            unknown = sorted(set(given) - {t.name for t in metadata.inputs})
            if unknown:
                expected = [t.name for t in metadata.inputs]
                print(
                    f"error: model '{args.model}' has no input {unknown}; expected {expected}",
                    file=sys.stderr,
                )
                return 2
            config = client.model_config(args.model, args.version)
            inputs = random_inputs(
                metadata,
                batch=args.batch,
                max_batch_size=int(config.get("max_batch_size", 0)),
                given=given,
            )
            t0 = time.perf_counter_ns()
            result = client.infer(args.model, inputs, version=args.version)
            latency_ms = (time.perf_counter_ns() - t0) / 1e6
    except InferenceServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report = _report(result, latency_ms, args.max_values)
    if args.json:
        print(json.dumps(report, default=str))
    else:
        _print_text(report)
    return 0
