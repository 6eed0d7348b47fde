#!/usr/bin/env bash
# Builds ranch-kernel, makes the Python environment with Jupyter, and installs the
# kernelspec into it. Idempotent: re-running only redoes what changed.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$RANCH_ROOT"

command -v cargo >/dev/null || { echo "cargo not found: install Rust 1.95+ (https://rustup.rs)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 not found: install Python 3.9+" >&2; exit 1; }

echo "==> building ranch-kernel (release; cache: $CARGO_TARGET_DIR)"
cargo_ build --release --locked -p ranch-kernel

stamp="$RANCH_VENV/.requirements"
# A venv whose creation failed halfway (no ensurepip: python3-venv missing) has a python but
# no pip; it is made again, in place, so a rerun after the fix works. Only a venv is cleared.
if ! "$RANCH_VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  if [ -e "$RANCH_VENV" ] && [ ! -f "$RANCH_VENV/pyvenv.cfg" ]; then
    echo "$RANCH_VENV exists and is not a Python environment: move it away, or set RANCH_VENV" >&2
    exit 1
  fi
  echo "==> creating Python environment $RANCH_VENV"
  python3 -m venv --clear "$RANCH_VENV" || {
    echo "cannot create the Python environment $RANCH_VENV: install Python's venv (Debian/Ubuntu: sudo apt-get install python3-venv), then run this again" >&2
    exit 1
  }
fi
if ! cmp -s install/requirements.txt "$stamp"; then
  echo "==> installing Jupyter into $RANCH_VENV"
  "$RANCH_VENV/bin/python" -m pip install --quiet --upgrade pip
  "$RANCH_VENV/bin/python" -m pip install --quiet -r install/requirements.txt
  cp install/requirements.txt "$stamp"
fi

echo "==> installing the ranch kernelspec"
install -m 755 "$CARGO_TARGET_DIR/release/ranch-kernel" "$RANCH_VENV/bin/ranch-kernel"
"$RANCH_VENV/bin/ranch-kernel" install --sys-prefix
