# Shared settings for the install scripts (sourced, not run).
# Cargo builds are cached outside the checkout so a fresh clone (or CI) reuses them.
export RANCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ranch/target}"
export RANCH_VENV="${RANCH_VENV:-$RANCH_ROOT/.venv}"
# Tools the tests use that are built from crates (mdbook), kept beside the build cache.
export RANCH_TOOLS="${RANCH_TOOLS:-$HOME/.cache/ranch/tools}"
export PATH="$RANCH_VENV/bin:$HOME/.cargo/bin:$RANCH_TOOLS/bin:$PATH"

# rust-analyzer's `stdx` (built into the kernel through evcxr) is fingerprinted on the CI
# variable: building with and without it would rebuild half the dependency tree each time.
cargo_() { env -u CI cargo "$@"; }

# System packages (apt) are installed only with consent: under CI, or when the user set
# RANCH_SYSTEM_PACKAGES=yes; and only as root where apt exists. Otherwise this says what
# would be installed and which tests skip without it. Usage: system_packages WHY PKG...
system_packages() {
  local why=$1; shift
  if [ "${CI:-}" != "true" ] && [ "${RANCH_SYSTEM_PACKAGES:-}" != "yes" ]; then
    echo "==> not installing $* (system packages; $why will skip): to install them, run as root" \
         "with RANCH_SYSTEM_PACKAGES=yes, or: sudo apt-get install $*" >&2
    return 1
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "==> $* missing and cannot be installed here (needs root and apt): $why will skip" >&2
    return 1
  fi
  echo "==> installing $* ($why)"
  { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; } \
    || { echo "==> installing $* failed: $why will skip" >&2; return 1; }
}

# The toolchain components ranch uses: rust-src (completion and `name?` read the standard
# library's source), rustfmt and clippy (the test command). A rustup toolchain ships
# without rust-src; rustup adds it for this user, no root needed. Without rustup the
# doctor names what is missing.
rust_components() {
  command -v rustup >/dev/null 2>&1 || return 0
  local have want=() c
  have=$(rustup component list --installed 2>/dev/null) || return 0
  for c in rust-src rustfmt clippy; do
    grep -q "^$c" <<<"$have" || want+=("$c")
  done
  [ ${#want[@]} -eq 0 ] && return 0
  echo "==> adding the Rust components ranch uses: ${want[*]} (rustup component add)"
  rustup component add "${want[@]}" || echo "==> rustup could not add ${want[*]}" >&2
}
