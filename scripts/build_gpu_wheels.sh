#!/usr/bin/env bash
# Build the wheels a run on the GPU machine (no package index there) installs from `.whl/`, and
# check that everything scripts/gpu_run.sh needs is staged.
#
#   bash scripts/build_gpu_wheels.sh          # here, with the package index reachable
#
# It builds a wheel of trtserve itself (replacing an older one) and a wheel of the
# `tensorrt_dispatch` import package, which NVIDIA ships only as a source distribution
# (`tensorrt-dispatch-cu13`, the meta package over the `..._bindings` and `..._libs` wheels
# staged in .gpu/dispatch by ../shared/gpu/stage.sh). Then it lists what each device call
# should carry and how large that is (the limit is 64 MiB per call).
set -euo pipefail
top=$(git rev-parse --show-toplevel)
cd "$top"
python=${PYTHON:-python3}
mkdir -p .whl

rm -f .whl/trtserve-*.whl
"$python" -m pip wheel -q --no-deps -w .whl .

bindings=$(ls .gpu/dispatch/tensorrt_dispatch_cu*_bindings-*.whl 2>/dev/null | head -1 || true)
if [[ -z $bindings ]]; then
  echo "missing: .gpu/dispatch/tensorrt_dispatch_cu*_bindings-*.whl (run ../shared/gpu/stage.sh)" >&2
  exit 1
fi
# tensorrt_dispatch_cu13_bindings-11.4.0.106-cp312-... -> cu13, 11.4.0.106
name=$(basename "$bindings")
cuda=$(sed -E 's/^tensorrt_dispatch_(cu[0-9]+)_bindings-.*/\1/' <<<"$name")
dispatch=$(sed -E 's/^tensorrt_dispatch_cu[0-9]+_bindings-([0-9.]+)-.*/\1/' <<<"$name")
if ! ls .whl/tensorrt_dispatch_"$cuda"-"$dispatch"-py3-none-any.whl >/dev/null 2>&1; then
  rm -f .whl/tensorrt_dispatch_cu*-py3-none-any.whl
  "$python" -m pip wheel -q --no-deps -w .whl "tensorrt-dispatch-$cuda==$dispatch"
fi

# The REST transport's aiohttp and what it needs, for the GPU machine's Python 3.12.
if ! compgen -G ".whl/aiohttp-*cp312*.whl" >/dev/null; then
  "$python" -m pip download -q -d .whl --only-binary :all: --python-version 3.12 \
    --implementation cp --abi cp312 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 "aiohttp>=3.10"
fi

missing=0
need() { # GLOB WHAT
  if ! compgen -G "$1" >/dev/null; then
    echo "missing: $1 ($2)" >&2
    missing=1
  fi
}
need ".whl/trtserve-*-py3-none-any.whl" "trtserve itself"
need ".whl/tensorrt_dispatch_${cuda}-${dispatch}-py3-none-any.whl" "import tensorrt_dispatch"
need ".whl/tritonclient-*.whl" "tritonclient"
need ".whl/python_rapidjson-*cp312*.whl" "tritonclient's JSON"
need ".whl/grpcio_health_checking-*.whl" "server: grpc health"
need ".whl/grpcio_reflection-*.whl" "server: grpc reflection"
need ".whl/cryptography-*.whl" "server: plan signatures"
need ".whl/aiohttp-*cp312*.whl" "server: the REST transport"
need ".whl/multidict-*cp312*.whl" "aiohttp"
need ".whl/yarl-*cp312*.whl" "aiohttp"
need ".whl/cffi-*cp312*.whl" "cryptography"
need ".whl/pycparser-*.whl" "cffi"
need ".gpu/dispatch/tensorrt_dispatch_${cuda}_libs-*.whl" "dispatch runtime library"
need ".gpu/plans/conv_relu_trt11.0.0.114.plan" "the served plan"
need ".gpu/plans/conv_relu_trt10.0.1.6.plan" "a plan whose runtime is absent"
need ".gpu/plans/unpack_lean.py" "lean runtime unpacker"
need ".gpu/lean-11.0.0.114/*.whl" "lean runtime of the served plan"
for v in 10.16.1.11 11.4.0.106; do
  compgen -G ".gpu/lean-$v/*.whl" >/dev/null || echo "note: .gpu/lean-$v not staged (optional)"
done
if ((missing)); then
  exit 1
fi

tree_kib=$(git ls-files -z --cached --others --exclude-standard | du -ck --files0-from=- | tail -1 | cut -f1)
common_kib=$(du -sk .gpu/plans .gpu/dispatch .whl | awk '{s += $1} END {print s}')
echo "wheels in .whl:"
ls -1 .whl
echo
echo "per device call (64 MiB limit): working tree ${tree_kib} KiB + .gpu/plans .gpu/dispatch .whl ${common_kib} KiB + one lean folder:"
for folder in .gpu/lean-*; do
  kib=$(du -sk "$folder" | cut -f1)
  total=$((tree_kib + common_kib + kib))
  flag=ok
  ((total < 65536)) || flag="TOO LARGE"
  echo "  $folder: $((total / 1024)) MiB total ($flag)"
done
