#!/usr/bin/env bash
# What the browser test needs: Debian's Chromium (installed when missing and apt can) and
# Playwright's Python client in the venv, which drives that Chromium (Playwright's own
# browser downloads are not used). Never fails: without them the browser test skips and
# says why.
set -uo pipefail
source "$(dirname "$0")/env.sh"
PLAYWRIGHT=1.64.1
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing Debian's chromium for the browser test"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; } \
      || echo "==> installing chromium failed: the browser test will skip" >&2
  else
    echo "==> chromium missing and cannot be installed here (needs root and apt): the browser test will skip" >&2
  fi
fi
if ! "$RANCH_VENV/bin/python" -c "import playwright" >/dev/null 2>&1; then
  echo "==> installing playwright $PLAYWRIGHT (Python client) into $RANCH_VENV"
  "$RANCH_VENV/bin/python" -m pip install --quiet "playwright==$PLAYWRIGHT" \
    || echo "==> installing playwright failed: the browser test will skip" >&2
fi
exit 0
