#!/usr/bin/env bash
# Install Triton's perf_analyzer 2.50 into .perf_analyzer/ (git-ignored), for the tests that
# drive trtserve with it (tests/e2e/test_perf_analyzer.py skips without it).
#
#   bash scripts/install_perf_analyzer.sh        # then .perf_analyzer/perf_analyzer ...
#
# NVIDIA ships the binary inside the tritonclient 2.50.0 wheel (later wheels dropped it). It
# needs libcudart.so.12 at start-up even when no CUDA is used (NVIDIA's CUDA runtime wheel
# gives it) and libb64.so.0d (Debian's libb64-0d, unpacked here, not installed). It lives in a
# virtual environment of its own: that wheel pins numpy < 2 and protobuf 4, trtserve needs 6+.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=$PWD/.perf_analyzer
if [[ -x $DIR/perf_analyzer ]]; then
  echo "perf_analyzer already in $DIR"
  exit 0
fi
rm -rf "$DIR"
mkdir -p "$DIR/deb"
python3 -m venv "$DIR/venv"
"$DIR/venv/bin/pip" install -q "tritonclient[grpc]==2.50.0" "nvidia-cuda-runtime-cu12==12.9.79"
(
  cd "$DIR/deb"
  apt-get download libb64-0d 2>/dev/null || { apt-get update -qq && apt-get download libb64-0d; }
  dpkg-deb -x libb64-0d_*.deb root
)
cudart=$("$DIR/venv/bin/python" -c \
  "import nvidia.cuda_runtime, os; print(os.path.join(list(nvidia.cuda_runtime.__path__)[0], 'lib'))")
libb64=$(dirname "$(find "$DIR/deb/root" -name 'libb64.so.0d*' | head -1)")
cat >"$DIR/perf_analyzer" <<WRAPPER
#!/usr/bin/env bash
export LD_LIBRARY_PATH="$cudart:$libb64\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$DIR/venv/bin/perf_analyzer" "\$@"
WRAPPER
chmod +x "$DIR/perf_analyzer"
# It answers an unknown option with its usage and exit status 99: proof that it starts.
"$DIR/perf_analyzer" --version >/dev/null 2>&1 || [[ $? == 99 ]]
echo "perf_analyzer installed in $DIR"
