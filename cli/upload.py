"""`trtserve upload`: stream a model file (a TensorRT plan) to the server, which loads it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from trtserve.cli.connection import add_connection_arguments, connect
from trtserve.cli.models import read_json_file
from trtserve.client import InferenceServerError

_DESCRIPTION = """\
Stream a model file to a running server in chunks, with its sha256; the server checks the
hash, stores the file atomically as <NAME>/<VERSION>/<FILENAME> in its repository and loads
the model. Without --version the server picks one above the newest stored version.

example:
  trtserve upload resnet50.plan --name resnet50 --config resnet50.json
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `upload` subcommand."""
    p = subparsers.add_parser(
        "upload",
        help="upload a model file (e.g. a TensorRT plan) and load it",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("plan", metavar="PLAN", help="local model file to upload")
    p.add_argument("--name", required=True, help="model name")
    p.add_argument(
        "--version", type=int, default=0, metavar="V", help="version folder (0: next one)"
    )
    p.add_argument(
        "--filename",
        help="file name in the version folder (default: model.plan for a .plan or .engine "
        "file, model.onnx for a .onnx file)",
    )
    p.add_argument("--config", metavar="FILE.json", help="model configuration (JSON)")
    p.add_argument(
        "--chunk-mib", type=float, default=1.0, metavar="M", help="chunk size in MiB (1)"
    )
    add_connection_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


# The file name each backend loads by default, by the uploaded file's extension.
_STORED_NAMES = {".plan": "model.plan", ".engine": "model.plan", ".onnx": "model.onnx"}


def stored_name(path: Path, given: str | None) -> str:
    """The file name in the version folder: `given`, else the default for the extension."""
    if given:
        return given
    name = _STORED_NAMES.get(path.suffix.lower())
    if name is None:
        raise ValueError(
            f"{path}: cannot tell the stored file name from the extension "
            f"'{path.suffix or '(none)'}'; expected {', '.join(_STORED_NAMES)}, or give "
            "--filename"
        )
    return name


def run(args: argparse.Namespace) -> int:
    """Run `trtserve upload`; 1 on a server error, 2 on unreadable arguments."""
    path = Path(args.plan)
    try:
        filename = stored_name(path, args.filename)
        config = "" if args.config is None else read_json_file(args.config)
        total = path.stat().st_size
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    chunk_bytes = max(1, int(args.chunk_mib * (1 << 20)))
    try:
        with (
            connect(args) as client,
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=args.no_progress,
                desc=path.name,
            ) as bar,
        ):

            def progress(sent: int, _total: int) -> None:
                bar.update(sent - bar.n)

            result = client.upload_model(
                args.name,
                path,
                version=args.version,
                filename=filename,
                config_json=config,
                chunk_bytes=chunk_bytes,
                progress=progress,
            )
    except InferenceServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"stored {result.model_name} version {result.version}: "
        f"{result.stored_bytes} bytes, sha256 {result.sha256}"
    )
    return 0
