# Shared settings for the install scripts (sourced, not run).
# Cargo builds are cached outside the checkout so a fresh clone (or CI) reuses them.
export RANCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ranch/target}"
export RANCH_VENV="${RANCH_VENV:-$RANCH_ROOT/.venv}"
export PATH="$RANCH_VENV/bin:$HOME/.cargo/bin:$PATH"

# rust-analyzer's `stdx` (built into the kernel through evcxr) is fingerprinted on the CI
# variable: building with and without it would rebuild half the dependency tree each time.
cargo_() { env -u CI cargo "$@"; }
