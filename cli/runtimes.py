"""`trtserve runtimes list | install VERSION | remove VERSION`: the installed lean runtimes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trtserve.server.errors import ServerError
from trtserve.server.runtime.lean_store import CUDA_MAJORS, InstalledRuntime, LeanStore


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "runtimes",
        help="list, install or remove TensorRT lean runtimes",
        description="TensorRT lean runtimes, one folder per exact version. A plan built "
        "without its lean runtime loads only through the runtime of exactly its version.",
    )
    actions = parser.add_subparsers(dest="runtimes_action", required=True)
    listing = actions.add_parser("list", help="list the installed versions")
    listing.set_defaults(func=run_list)
    install = actions.add_parser("install", help="download and install one version with pip")
    install.add_argument("version", help="exact TensorRT version, e.g. 11.0.0.114")
    install.add_argument(
        "--cuda", type=int, choices=CUDA_MAJORS, default=13, help="CUDA major version"
    )
    install.add_argument("--force", action="store_true", help="reinstall when present")
    source = install.add_mutually_exclusive_group()
    source.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=None,
        metavar="PATH",
        help="install from a file instead of running pip (hosts without the package index, "
        "versions it lacks): a downloaded tensorrt-lean wheel, or NVIDIA's TensorRT tar "
        "archive (TensorRT-<version>.Linux...tar.gz)",
    )
    source.add_argument(
        "--wheel", dest="source", type=Path, default=None, help="the same as --from (a wheel)"
    )
    install.set_defaults(func=run_install)
    remove = actions.add_parser("remove", help="remove one installed version")
    remove.add_argument("version", help="exact TensorRT version")
    remove.set_defaults(func=run_remove)
    for sub in (parser, listing, install, remove):
        sub.add_argument(
            "--runtimes-dir",
            type=Path,
            default=argparse.SUPPRESS if sub is not parser else None,
            help="lean runtimes folder (default: $TRTSERVE_RUNTIMES_DIR or "
            "~/.local/share/trtserve/runtimes)",
        )


def run_list(args: argparse.Namespace) -> int:
    store = LeanStore(args.runtimes_dir)
    installed = store.list()
    if not installed:
        print(f"no lean runtimes installed in {store.root}")
        return 0
    print(f"lean runtimes in {store.root}:")
    for runtime in installed:
        print("  " + describe(runtime))
    return 0


def run_install(args: argparse.Namespace) -> int:
    store = LeanStore(args.runtimes_dir)
    print(f"installing lean runtime {args.version} (CUDA {args.cuda}) into {store.root}")
    try:
        if args.source is not None and args.source.name.endswith(".whl"):
            runtime = store.install_wheel(args.source, args.version, args.cuda, replace=args.force)
        elif args.source is not None:
            runtime = store.install_tensorrt_tar(args.source, args.version, replace=args.force)
        else:
            runtime = store.install(args.version, cuda_major=args.cuda, force=args.force)
    except ServerError as e:
        print(f"trtserve runtimes install: {e}", file=sys.stderr)
        return 1
    print("installed " + describe(runtime))
    return 0


def run_remove(args: argparse.Namespace) -> int:
    store = LeanStore(args.runtimes_dir)
    try:
        store.remove(args.version)
    except ServerError as e:
        print(f"trtserve runtimes remove: {e}", file=sys.stderr)
        return 1
    print(f"removed lean runtime {args.version} from {store.root}")
    return 0


def describe(runtime: InstalledRuntime) -> str:
    cuda = f"CUDA {runtime.cuda_major}" if runtime.cuda_major is not None else "CUDA ?"
    return f"{runtime.version}  {cuda}  {runtime.library}"
