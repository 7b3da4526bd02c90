#!/usr/bin/env bash
# The GPU checks of docs/gpu-results.md, run on the GPU machine from the project root.
#
#   bash scripts/gpu_run.sh unpack   # unpack the staged lean wheel(s) into /tmp/lean/<VERSION>/
#   bash scripts/gpu_run.sh full     # unpack, install, GPU tests, benchmarks; results in $OUT
#   bash scripts/gpu_run.sh shm [ARGS]  # unpack, install, the shared-memory benchmark [ARGS]
#   bash scripts/gpu_run.sh workers [ARGS]  # unpack, install, benchmarks/workers_bench.py [ARGS]
#   bash scripts/gpu_run.sh tests    # unpack, install, the GPU tests alone (pytest.log)
#   bash scripts/gpu_run.sh multi    # the same on a two-GPU host, with the multi-GPU benchmark
#   bash scripts/gpu_run.sh prepare  # unpack and install only; then PYTHONPATH=/tmp/site python3 ...
#
# The machine has no package index: what is not installed there travels as wheels in .whl/
# (scripts/build_gpu_wheels.sh builds them) and .gpu/ (../shared/gpu/stage.sh stages them). Each
# call carries one lean runtime folder (64 MiB limit per call) and /tmp survives between quick
# calls, so earlier calls run `unpack` with the other versions and /tmp/lean collects them all.
# `full` and `multi` write a few flat files to $OUT: env.txt (unpack.log folded in), pytest.log,
# servers.log, bench.log and the benchmark's .json and .md; `full` also shm_bench.json, its
# table appended to gpu_bench.md and its log to bench.log. That is 8 files with the tests'
# corrupt_plans.json: the most a device call brings back. `workers` writes env.txt,
# workers_bench.json, workers_bench.md and workers_bench.log.
set -uo pipefail
cd "$(dirname "$0")/.." || exit
mode=${1:-full}
OUT=${OUT:-/tmp/trtserve-gpu-out}
mkdir -p "$OUT"
LEAN=/tmp/lean
SITE=/tmp/site

unpack() {
  python3 .gpu/plans/unpack_lean.py 2>&1 | tee -a "$OUT/unpack.log"
  echo "lean runtimes now in $LEAN: $(ls "$LEAN" 2>/dev/null | tr '\n' ' ')" | tee -a "$OUT/unpack.log"
}

install() {
  rm -rf "$SITE"
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" \
    .gpu/dispatch/*.whl .whl/*.whl || return 1
  export PYTHONPATH=$SITE
  # The wheel of trtserve may predate the carried tree: the tree's sources are what runs.
  python3 - "$SITE" <<'PY'
import filecmp, shutil, sys
from pathlib import Path
site = Path(sys.argv[1]) / "trtserve"
changed = 0
for package, folder in (("protocol", "proto"), ("server", "server"), ("client", "client"), ("cli", "cli")):
    for src in Path(folder).rglob("*"):
        if not src.is_file() or "__pycache__" in src.parts or src.suffix not in (".py", ".pyi", ".proto", ".typed"):
            continue
        dst = site / package / src.relative_to(folder)
        if not dst.is_file() or not filecmp.cmp(src, dst, shallow=False):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            changed += 1
print(f"trtserve sources newer than the wheel, copied over it: {changed} files")
PY
  # Triton's perf_analyzer (binary, libcudart.so.12, libb64), packed from
  # scripts/install_perf_analyzer.sh's install, for the shared-memory GPU tests.
  # A call that does not carry it uses the one an earlier call unpacked (/tmp survives).
  if [[ -f .gpu/perf_analyzer/perf_analyzer.tar.gz ]]; then
    rm -rf /tmp/pa && mkdir -p /tmp/pa && tar -C /tmp/pa -xzf .gpu/perf_analyzer/perf_analyzer.tar.gz
  fi
  if [[ -x /tmp/pa/perf_analyzer/perf_analyzer ]]; then
    export TRTSERVE_PERF_ANALYZER=/tmp/pa/perf_analyzer/perf_analyzer
  fi
  # NVIDIA ships the `tensorrt_dispatch` import package as a source distribution only; the
  # build script makes a wheel of it. Should that be missing, the same two lines stand in.
  if ! python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorrt_dispatch') is None)"; then
    echo "tensorrt_dispatch wheel missing: writing the re-export package by hand"
    mkdir -p "$SITE/tensorrt_dispatch"
    printf 'from tensorrt_dispatch_bindings import *\nfrom tensorrt_dispatch_bindings import __version__\n' \
      >"$SITE/tensorrt_dispatch/__init__.py"
  fi
}

environment() {
  {
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 --version
    python3 - <<'PY'
import importlib
from importlib.metadata import PackageNotFoundError, version
for dist in ("trtserve", "tensorrt_dispatch_cu13_bindings", "cuda-bindings", "grpcio", "protobuf",
             "numpy", "tritonclient", "onnxruntime", "prometheus_client", "pytest"):
    try:
        print(f"{dist}: {version(dist)}")
    except PackageNotFoundError:
        print(f"{dist}: not installed")
# tritonclient is checked by its own interpreter below: it cannot share one with trtserve.
for module in ("tensorrt_dispatch", "cuda.bindings.runtime", "grpc_health.v1",
               "grpc_reflection.v1alpha", "cryptography", "trtserve.server.app"):
    try:
        importlib.import_module(module)
        print(f"import {module}: ok")
    except Exception as e:  # report every failure, keep going
        print(f"import {module}: FAILED {type(e).__name__}: {e}")
from trtserve.server.runtime.cuda_device import cuda_device_count
print(f"CUDA devices: {cuda_device_count()}")
PY
    python3 -c "import tritonclient.grpc, ml_dtypes; print('import tritonclient.grpc: ok')" ||
      echo "import tritonclient.grpc: FAILED"
    echo "lean runtimes: $(ls "$LEAN" 2>/dev/null | tr '\n' ' ')"
  } 2>&1 | tee "$OUT/env.txt"
  # One file fewer to bring back (a device call returns at most 8).
  if [[ -f $OUT/unpack.log ]]; then
    { echo; echo "---- unpack.log"; cat "$OUT/unpack.log"; } >>"$OUT/env.txt"
    rm -f "$OUT/unpack.log"
  fi
}

# The shared-memory benchmark (benchmarks/shm_bench.py): 12 cells of 3 s and the in-process
# run, about 2 minutes. Its log goes to bench.log; its table is printed and appended to $1.
shm_bench() {
  local append_to=$1
  timeout 300 python3 benchmarks/shm_bench.py --runtimes-dir "$LEAN" --plans .gpu/plans \
    --duration-s 3 --warmup-s 1 --out "$OUT/shm_bench.json" "${@:2}" 2>&1 | tee -a "$OUT/bench.log"
  local rc=${PIPESTATUS[0]}
  if [[ -f $OUT/shm_bench.md ]]; then
    { echo; cat "$OUT/shm_bench.md"; } >>"$append_to"
    rm -f "$OUT/shm_bench.md"
  fi
  return "$rc"
}

case $mode in
unpack)
  unpack
  ;;
prepare)
  unpack && install
  ;;
tests)
  started=$SECONDS
  unpack
  install || exit 1
  environment
  export TRTSERVE_RUNTIMES_DIR=$LEAN TRTSERVE_TEST_PLANS=$PWD/.gpu/plans
  export TRTSERVE_SERVER_LOG=$OUT/servers.log PYTHONDONTWRITEBYTECODE=1
  export TRTSERVE_GPU_REPORT=$OUT/corrupt_plans.json TRTSERVE_GPU_MEMORY_REPORT=$OUT/embedded_memory.json
  : >"$TRTSERVE_SERVER_LOG"
  timeout 420 python3 -m pytest -m gpu -v tests/gpu tests/client -p no:cacheprovider -rA 2>&1 | tee "$OUT/pytest.log"
  tests_rc=${PIPESTATUS[0]}
  echo "==================== summary ($((SECONDS - started)) s) ===================="
  echo "pytest (exit $tests_rc): $(grep -E '^=+ .*(passed|failed|skipped|error).* =+$' "$OUT/pytest.log" | tail -1)"
  grep -E '^(PASSED|FAILED|ERROR|SKIPPED) |^perf_analyzer ' "$OUT/pytest.log" | sed 's/^/  /'
  exit "$tests_rc"
  ;;
shm)
  unpack
  install || exit 1
  environment
  : >"$OUT/bench.log"
  shm_bench "$OUT/shm_bench_table.md" "${@:2}"
  shm_rc=$?
  echo "shared-memory benchmark (exit $shm_rc):"
  cat "$OUT/shm_bench_table.md" 2>/dev/null || tail -20 "$OUT/bench.log"
  exit "$shm_rc"
  ;;
workers)
  # `trtserve serve --workers N` against N floors, N = 1, 2, 4, 8 (or the ARGS' --workers-list):
  # about 4 to 5 minutes with the defaults.
  unpack
  install || exit 1
  environment
  timeout 480 python3 benchmarks/workers_bench.py --runtimes-dir "$LEAN" --plans .gpu/plans \
    --out "$OUT/workers_bench.json" "${@:2}" 2>&1 | tee "$OUT/workers_bench.log"
  workers_rc=${PIPESTATUS[0]}
  echo "workers benchmark (exit $workers_rc):"
  cat "$OUT/workers_bench.md" 2>/dev/null || tail -20 "$OUT/workers_bench.log"
  ls -la "$OUT"
  exit "$workers_rc"
  ;;
full | multi)
  started=$SECONDS
  unpack
  install || {
    echo "install failed" | tee "$OUT/env.txt"
    exit 1
  }
  environment
  export TRTSERVE_RUNTIMES_DIR=$LEAN TRTSERVE_TEST_PLANS=$PWD/.gpu/plans
  export TRTSERVE_SERVER_LOG=$OUT/servers.log TRTSERVE_GPU_REPORT=$OUT/corrupt_plans.json PYTHONDONTWRITEBYTECODE=1
  : >"$TRTSERVE_SERVER_LOG"
  timeout 300 python3 -m pytest -m gpu -v tests/gpu -p no:cacheprovider -rA 2>&1 | tee "$OUT/pytest.log"
  tests_rc=${PIPESTATUS[0]}
  if [[ $mode == multi ]]; then
    bench=multi_gpu_bench
    timeout 200 python3 benchmarks/multi_gpu_bench.py --runtimes-dir "$LEAN" --plans .gpu/plans \
      --out "$OUT/$bench.json" 2>&1 | tee "$OUT/bench.log"
  else
    bench=gpu_bench
    timeout 180 python3 benchmarks/gpu_bench.py --runtimes-dir "$LEAN" --plans .gpu/plans \
      --out "$OUT/$bench.json" 2>&1 | tee "$OUT/bench.log"
  fi
  bench_rc=${PIPESTATUS[0]}
  shm_rc=0
  if [[ $mode == full ]]; then
    shm_bench "$OUT/$bench.md.shm"
    shm_rc=$?
  fi
  echo
  echo "==================== summary ($((SECONDS - started)) s) ===================="
  grep -E "^GPU [0-9]" "$OUT/env.txt" || true
  echo "lean runtimes: $(ls "$LEAN" | tr '\n' ' ')"
  echo "pytest (exit $tests_rc): $(grep -E '^=+ .*(passed|failed|skipped|error).* =+$' "$OUT/pytest.log" | tail -1)"
  grep -E '^(PASSED|FAILED|ERROR|SKIPPED) ' "$OUT/pytest.log" | sed 's/^/  /'
  echo "benchmark (exit $bench_rc):"
  cat "$OUT/$bench.md" 2>/dev/null || tail -20 "$OUT/bench.log"
  if [[ $mode == full ]]; then
    echo "shared-memory benchmark (exit $shm_rc):"
    if [[ -f $OUT/$bench.md.shm ]]; then
      cat "$OUT/$bench.md.shm"
      cat "$OUT/$bench.md.shm" >>"$OUT/$bench.md"
      rm -f "$OUT/$bench.md.shm"
    else
      grep -A3 -E "^(failed|Traceback)" "$OUT/bench.log" | tail -20
    fi
  fi
  ls -la "$OUT"
  ((tests_rc == 0 && bench_rc == 0 && shm_rc == 0))
  ;;
*)
  echo "usage: bash scripts/gpu_run.sh unpack|prepare|full|multi|shm|workers|tests" >&2
  exit 2
  ;;
esac
