"""`trtserve inspect PLAN`: what a TensorRT plan's header says, and which runtime loads it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from trtserve.server.runtime.lean_store import LeanStore
from trtserve.server.runtime.plan_header import PlanHeader, PlanHeaderError, read_plan_header_file
from trtserve.server.runtime.routing import RoutePreview, preview_route


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show a TensorRT plan's version, entries and the runtime that loads it",
        description="Read a TensorRT plan's header (no GPU needed): the TensorRT version that "
        "built it, its entries, whether a lean runtime or plugins are embedded, which runtime "
        "will load it and whether that runtime is installed here.",
    )
    parser.add_argument("plan", type=Path, help="the plan file")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--runtimes-dir",
        type=Path,
        default=None,
        help="lean runtimes folder (default: $TRTSERVE_RUNTIMES_DIR or "
        "~/.local/share/trtserve/runtimes)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        header = read_plan_header_file(args.plan)
    except PlanHeaderError as e:
        print(f"trtserve inspect: {e}", file=sys.stderr)
        return 1
    preview = preview_route(header, LeanStore(args.runtimes_dir))
    if args.json:
        print(json.dumps(report(args.plan, header, preview), indent=2))
    else:
        print(text_report(args.plan, header, preview))
    return 0


def report(plan: Path, header: PlanHeader, preview: RoutePreview) -> dict[str, Any]:
    """The JSON form of the inspection."""
    data = {"plan": str(plan), **header.to_dict()}
    data["runtime"] = {
        "kind": preview.kind.value,
        "description": preview.runtime,
        "version": str(preview.version),
        "installed": preview.installed,
        "library": str(preview.library) if preview.library is not None else None,
        "hint": preview.hint,
    }
    return data


def text_report(plan: Path, header: PlanHeader, preview: RoutePreview) -> str:
    lines = [
        f"plan:                   {plan}",
        f"size:                   {header.total_size} bytes",
        f"built with TensorRT:    {header.version}",
        f"container version:      {header.container_version}",
        f"platform tag:           0x{header.platform_tag:08x}",
        "entries:",
        *(f"  {e.tag:<6} offset {e.offset:>12}  size {e.size:>12}" for e in header.entries),
        f"embedded lean runtime:  {'yes (host code)' if header.has_lean_runtime else 'no'}",
        f"embedded plugins:       {'yes' if header.has_plugins else 'no'}",
        f"loaded by:              {preview.runtime}",
        f"installed here:         {'yes' if preview.installed else 'no'} ({preview.hint})",
    ]
    return "\n".join(lines)
