#!/usr/bin/env bash
# The README's first command: build and install everything, then run the quickstart
# notebook headless through the installed kernel and print what it shows.
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$RANCH_ROOT/install/build.sh"
echo "==> running notebooks/quickstart.ipynb through the installed 'ranch' kernel"
"$RANCH_VENV/bin/python" "$RANCH_ROOT/install/run_notebook.py" "$RANCH_ROOT/notebooks/quickstart.ipynb"
echo
echo "Done. Start Jupyter with:  $RANCH_VENV/bin/jupyter lab   (pick the 'Rust (ranch)' kernel)"
