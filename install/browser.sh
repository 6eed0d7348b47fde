#!/usr/bin/env bash
# What the browser test needs: Debian's Chromium (installed when missing, with consent: see
# `system_packages` in env.sh) and
# Playwright's Python client in the venv, which drives that Chromium (Playwright's own
# browser downloads are not used). Never fails: without them the browser test skips and
# says why.
set -uo pipefail
source "$(dirname "$0")/env.sh"
PLAYWRIGHT=1.64.1
if ! command -v chromium >/dev/null 2>&1; then
  system_packages "the browser test" chromium fonts-dejavu-core || true
fi
if ! "$RANCH_VENV/bin/python" -c "import playwright" >/dev/null 2>&1; then
  echo "==> installing playwright $PLAYWRIGHT (Python client) into $RANCH_VENV"
  "$RANCH_VENV/bin/python" -m pip install --quiet "playwright==$PLAYWRIGHT" \
    || echo "==> installing playwright failed: the browser test will skip" >&2
fi
exit 0
