#!/bin/sh
# Install TensorRT lean runtimes into a folder: the Dockerfile's build step, also usable in an
# init container or by hand.
#
#   LEAN_VERSIONS="11.0.0.114 11.4.0.106" deploy/install-runtimes.sh DIR
#
# Variables: LEAN_VERSIONS (exact versions, space- or comma-separated; none installs nothing),
# LEAN_CUDA (CUDA major of the wheels, default 13), LEAN_WHEELS_DIR (take the
# tensorrt_lean_cu<N>_libs-<version>-*.whl files from this folder instead of the package index).
set -eu

if [ "$#" -ne 1 ]; then
    echo "usage: LEAN_VERSIONS=\"11.0.0.114 ...\" $0 RUNTIMES_DIR" >&2
    exit 2
fi
dir=$1
cuda=${LEAN_CUDA:-13}
versions=$(printf '%s' "${LEAN_VERSIONS:-}" | tr ',' ' ')
mkdir -p "$dir"

for version in $versions; do
    if [ -n "${LEAN_WHEELS_DIR:-}" ]; then
        wheel=$(find "$LEAN_WHEELS_DIR" -maxdepth 1 \
            -name "tensorrt_lean_cu${cuda}_libs-${version}-*.whl" | head -n 1)
        if [ -z "$wheel" ]; then
            echo "install-runtimes: no tensorrt_lean_cu${cuda}_libs-${version}-*.whl" \
                "in $LEAN_WHEELS_DIR" >&2
            exit 1
        fi
        trtserve runtimes install "$version" --cuda "$cuda" --wheel "$wheel" --runtimes-dir "$dir"
    else
        trtserve runtimes install "$version" --cuda "$cuda" --runtimes-dir "$dir"
    fi
done
trtserve runtimes list --runtimes-dir "$dir"
