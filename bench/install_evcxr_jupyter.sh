#!/usr/bin/env bash
# Installs evcxr_jupyter 0.22.0 (the evcxr ranch builds on) and its kernelspec (`rust`) into
# ranch's Python environment, so bench/latency.py can compare the two kernels in one run.
# Builds once (about 8 minutes on 2 cores); later runs only reinstall the kernelspec.
set -euo pipefail
source "$(dirname "$0")/../install/env.sh"
root="${EVCXR_JUPYTER_ROOT:-$HOME/.cache/ranch/evcxr_jupyter}"
if [ ! -x "$root/bin/evcxr_jupyter" ]; then
  echo "==> building evcxr_jupyter 0.22.0 into $root"
  # Its own target dir: its lockfile differs from ranch's, so sharing would only rebuild.
  CARGO_TARGET_DIR="$root/target" cargo_ install evcxr_jupyter --version 0.22.0 --locked --root "$root"
fi
echo "==> installing the evcxr_jupyter kernelspec 'rust' into $RANCH_VENV"
JUPYTER_PATH="$RANCH_VENV/share/jupyter" "$root/bin/evcxr_jupyter" --install
