#!/usr/bin/env bash
# Run mypy over the packages under their import names. The source folders map onto
# `trtserve.*` only through the install, which mypy cannot follow, so it reads them through a
# tree of symbolic links (.typecheck/, git-ignored) instead.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .typecheck
mkdir -p .typecheck/trtserve
for pair in protocol:proto server:server client:client cli:cli; do
  ln -s "../../${pair#*:}" ".typecheck/trtserve/${pair%%:*}"
done
MYPYPATH=.typecheck mypy -p trtserve.protocol -p trtserve.server -p trtserve.client -p trtserve.cli "$@"
MYPYPATH=.typecheck exec mypy benchmarks/*.py "$@"
