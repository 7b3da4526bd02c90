"""`trtserve inspect PLAN`: what a TensorRT plan says about itself, and which runtime loads it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from trtserve.server.runtime.lean_store import LeanStore
from trtserve.server.runtime.plan_compatibility import (
    PlanCompatibility,
    assess,
    assess_legacy,
)
from trtserve.server.runtime.plan_header import (
    LegacyEngineError,
    PlanHeader,
    PlanHeaderError,
    read_engine_section,
    read_plan_header_file,
)
from trtserve.server.runtime.routing import RoutePreview, preview_route


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show a TensorRT plan's version, entries and the runtime that loads it",
        description="Read a TensorRT plan (no GPU needed): the TensorRT version that built it, "
        "its entries, whether it is version-compatible and its hardware compatibility (where "
        "the plan says so; 'unknown' and why where it does not), the GPU it was built on, the "
        "plugins it needs, whether a lean runtime or plugin library is embedded, which runtime "
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
    except LegacyEngineError as e:
        legacy = assess_legacy(e, args.plan.read_bytes())
        if args.json:
            print(json.dumps(legacy_report(args.plan, e, legacy), indent=2))
        else:
            print(legacy_text_report(args.plan, e, legacy))
        return 0
    except PlanHeaderError as e:
        return _failed(args, e)
    try:
        compatibility = assess(header, read_engine_section(args.plan, header))
    except PlanHeaderError as e:
        return _failed(args, e)
    preview = preview_route(header, LeanStore(args.runtimes_dir))
    if args.json:
        print(json.dumps(report(args.plan, header, compatibility, preview), indent=2))
    else:
        print(text_report(args.plan, header, compatibility, preview))
    return 0


def _failed(args: argparse.Namespace, error: PlanHeaderError) -> int:
    """Exit 1 saying why; with --json also as JSON on stdout, where a script reads."""
    print(f"trtserve inspect: {error}", file=sys.stderr)
    if args.json:
        print(json.dumps({"plan": str(args.plan), "error": str(error)}, indent=2))
    return 1


def report(
    plan: Path, header: PlanHeader, compatibility: PlanCompatibility, preview: RoutePreview
) -> dict[str, Any]:
    """The JSON form of the inspection."""
    data = {"plan": str(plan), "format": "plan", **header.to_dict(), **compatibility.to_dict()}
    data["runtime"] = {
        "kind": preview.kind.value,
        "description": preview.runtime,
        "version": str(preview.version),
        "installed": preview.installed,
        "library": str(preview.library) if preview.library is not None else None,
        "hint": preview.hint,
    }
    return data


def legacy_report(
    plan: Path, error: LegacyEngineError, compatibility: PlanCompatibility
) -> dict[str, Any]:
    """The JSON form for a bare engine without the plan container."""
    return {
        "plan": str(plan),
        "format": "bare engine",
        "tensorrt_version": str(error.version) if error.version else None,
        **compatibility.to_dict(),
        "runtime": None,
        "problem": str(error),
    }


def text_report(
    plan: Path, header: PlanHeader, compatibility: PlanCompatibility, preview: RoutePreview
) -> str:
    lines = [
        f"plan:                   {plan}",
        f"size:                   {header.total_size} bytes",
        f"built with TensorRT:    {header.version}",
        f"container version:      {header.container_version}",
        f"platform tag:           0x{header.platform_tag:08x}",
        "entries:",
        *(f"  {e.tag:<6} offset {e.offset:>12}  size {e.size:>12}" for e in header.entries),
        f"embedded lean runtime:  {'yes (host code)' if header.has_lean_runtime else 'no'}",
        f"embedded plugins:       {'yes (host code)' if header.has_plugins else 'no'}",
        *_compatibility_lines(compatibility),
    ]
    refusal = compatibility.refusal()
    if refusal is not None:
        lines.append(f"loaded by:              none here: {refusal}")
    else:
        condition = (
            ", if the plan is version-compatible"
            if compatibility.version_compatible is None
            else ""
        )
        lines += [
            f"loaded by:              {preview.runtime}{condition}",
            f"installed here:         {'yes' if preview.installed else 'no'} ({preview.hint})",
        ]
    return "\n".join(lines)


def legacy_text_report(
    plan: Path, error: LegacyEngineError, compatibility: PlanCompatibility
) -> str:
    version = str(error.version) if error.version else "unknown"
    lines = [
        f"plan:                   {plan}",
        f"size:                   {plan.stat().st_size} bytes",
        "format:                 bare engine ('ptrt'), without the 'ftrt' plan container",
        f"built with TensorRT:    {version}",
        *_compatibility_lines(compatibility),
        f"loaded by:              none here: {compatibility.refusal() or error}",
    ]
    return "\n".join(lines)


def _compatibility_lines(compatibility: PlanCompatibility) -> list[str]:
    vc = {True: "yes", False: "no", None: "unknown"}[compatibility.version_compatible]
    hardware = compatibility.hardware.value if compatibility.hardware else "unknown"
    built_on = compatibility.built_on.describe() if compatibility.built_on else "unknown"
    plugins = ", ".join(p.describe() for p in compatibility.plugins) or "none found"
    return [
        f"version-compatible:     {vc} ({compatibility.version_compatible_reason})",
        f"hardware compatibility: {hardware} ({compatibility.hardware_reason})",
        f"built on GPU:           {built_on}",
        f"runs on GPUs of:        {compatibility.runs_on() or 'unknown'}",
        f"plugins needed:         {plugins}",
    ]
