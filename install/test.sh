#!/usr/bin/env bash
# The README's second command: every test. Builds and installs first (idempotent).
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$RANCH_ROOT/install/build.sh"
"$RANCH_ROOT/install/mpi.sh"
cd "$RANCH_ROOT"
echo "==> cargo tests"
cargo_ test --release --locked --workspace
echo "==> the runtime's GPU features build (no CUDA needed: it is loaded at run time)"
cargo_ check --release --locked -p ranch --features cuda
cargo_ check --release --locked -p ranch --features nccl
echo "==> end-to-end tests through Jupyter clients"
"$RANCH_VENV/bin/python" -m pytest tests "$@"
