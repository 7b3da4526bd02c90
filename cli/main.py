"""Entry point of the `trtserve` command."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from trtserve.cli.connection import ConnectionSettingsError

# Each module adds one subcommand. Server-side ones import the server lazily, so a client-only
# install (no onnxruntime, TensorRT or prometheus-client) still runs the client commands.
_COMMANDS = ("serve", "infer", "models", "upload", "bench", "inspect", "runtimes")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="trtserve",
        description="A KServe v2 gRPC inference server for TensorRT version-compatible engines.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(f"trtserve.cli.{name}").register(subparsers)
    return parser


# The status a shell gives a command killed by SIGPIPE (128 + 13).
_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and run the chosen subcommand; the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConnectionSettingsError as e:
        # Raised by every client command alike, so answered here once, as a usage error.
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`trtserve models list --json | head`): stop quietly, as
        # command-line tools do. Python would report the pipe again when it flushes stdout
        # at exit, so stdout is pointed at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return _BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
