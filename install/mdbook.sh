#!/usr/bin/env bash
# mdBook, which builds the guide in docs/ (the tests build it and check its links), into a
# cache outside the checkout. Never fails: without it the book's build test skips and says why.
set -uo pipefail
source "$(dirname "$0")/env.sh"
MDBOOK=0.4.40
if [ -x "$RANCH_TOOLS/bin/mdbook" ] && [ "$("$RANCH_TOOLS/bin/mdbook" --version 2>/dev/null)" = "mdbook v$MDBOOK" ]; then
  exit 0
fi
echo "==> building mdbook $MDBOOK into $RANCH_TOOLS (once)"
cargo_ install mdbook --version "$MDBOOK" --locked --no-default-features --root "$RANCH_TOOLS" --quiet \
  || echo "==> building mdbook failed: the book's build test will skip" >&2
exit 0
