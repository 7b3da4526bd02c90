"""Regenerate the Python protocol code in proto/ from the .proto files beside it.

    python scripts/generate_protocol.py          # rewrite the generated files
    python scripts/generate_protocol.py --check  # exit 1 if they drifted from the .proto files

The .proto files are copied under `trtserve/protocol/` in a scratch include root so that the
generated imports read `from trtserve.protocol import ...`, which is where the package installs.
The generator is pinned (pyproject's `dev` extra) because the generated code embeds its version.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

PROTO_DIR = Path(__file__).resolve().parent.parent / "proto"
PACKAGE_PATH = Path("trtserve") / "protocol"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc over every .proto file; return the generated files (inside out_dir)."""
    include_root = out_dir / "include"
    package_dir = include_root / PACKAGE_PATH
    package_dir.mkdir(parents=True)
    sources = sorted(PROTO_DIR.glob("*.proto"))
    for source in sources:
        shutil.copy(source, package_dir / source.name)
    grpc_include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{include_root}",
        f"-I{grpc_include}",
        f"--python_out={include_root}",
        f"--pyi_out={include_root}",
        f"--grpc_python_out={include_root}",
        *(str(PACKAGE_PATH / s.name) for s in sources),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = sorted(p for p in package_dir.iterdir() if p.name.endswith(GENERATED_SUFFIXES))
    for module in generated:
        if module.name.endswith("_pb2.py"):
            module.write_text(use_own_pool(module.read_text(), module.name))
    return generated


# protoc registers every file in protobuf's default pool, where Triton's client registers the
# same `inference.*` names: the modules use trtserve.protocol.descriptor_pool instead.
_DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_OWN_POOL = "DESCRIPTOR = _protocol_pool.POOL.AddSerializedFile("
_IMPORTS_END = "# @@protoc_insertion_point(imports)"
_POOL_IMPORT = "from trtserve.protocol import descriptor_pool as _protocol_pool\n"


def use_own_pool(source: str, name: str) -> str:
    """The generated module, registering its file in trtserve's own descriptor pool."""
    if source.count(_DEFAULT_POOL) != 1 or source.count(_IMPORTS_END) != 1:
        raise SystemExit(f"{name}: protoc's output changed shape; cannot point it at our pool")
    source = source.replace(_DEFAULT_POOL, _OWN_POOL)
    return source.replace(_IMPORTS_END, _POOL_IMPORT + _IMPORTS_END)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated code drifted")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        drifted = [
            p.name
            for p in fresh
            if not (PROTO_DIR / p.name).exists()
            or (PROTO_DIR / p.name).read_bytes() != p.read_bytes()
        ]
        stale = [
            p.name
            for p in PROTO_DIR.iterdir()
            if p.name.endswith(GENERATED_SUFFIXES) and p.name not in {f.name for f in fresh}
        ]
        if args.check:
            if drifted or stale:
                print(f"generated protocol code is out of date: {sorted(drifted + stale)}")
                print("run: python scripts/generate_protocol.py")
                return 1
            print(f"generated protocol code matches the .proto files ({len(fresh)} files)")
            return 0
        for name in stale:
            (PROTO_DIR / name).unlink()
        for p in fresh:
            shutil.copy(p, PROTO_DIR / p.name)
        print(f"wrote {len(fresh)} files to {PROTO_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
