#!/usr/bin/env bash
# The README's second command: every test. Builds and installs first (idempotent).
set -euo pipefail
source "$(dirname "$0")/env.sh"
rust_components
"$RANCH_ROOT/install/build.sh"
"$RANCH_ROOT/install/mpi.sh"
"$RANCH_ROOT/install/browser.sh"
"$RANCH_ROOT/install/mdbook.sh"
cd "$RANCH_ROOT"
echo "==> rustfmt and clippy"
cargo_ fmt --version >/dev/null 2>&1 && cargo_ clippy --version >/dev/null 2>&1 \
  || { echo "rustfmt or clippy is missing: rustup component add rustfmt clippy" >&2; exit 1; }
cargo_ fmt --all -- --check
cargo_ clippy --release --locked --workspace --all-targets -- -D warnings
echo "==> cargo tests"
cargo_ test --release --locked --workspace
echo "==> the runtime's GPU features build (no CUDA needed: it is loaded at run time)"
cargo_ check --release --locked -p ranch --features cuda
cargo_ check --release --locked -p ranch --features nccl
echo "==> the runtime's candle collectives (feature candle)"
cargo_ clippy --release --locked -p ranch --features candle -- -D warnings
if command -v mpicc >/dev/null 2>&1; then
  echo "==> the runtime's MPI feature builds and its unit tests pass (against this host's MPI; install/mpi.sh installs it)"
  cargo_ test --release --locked -p ranch --features mpi --lib comm::mpi
fi
echo "==> end-to-end tests through Jupyter clients"
"$RANCH_VENV/bin/python" -m pytest tests "$@"
