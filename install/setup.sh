#!/usr/bin/env bash
# The README's first command: build and install everything, then run the quickstart
# notebook headless through the installed kernel and print what it shows.
set -euo pipefail
source "$(dirname "$0")/env.sh"
rust_components
# Preflight: what the build and the kernel need, each missing thing with its fix.
bash "$RANCH_ROOT/install/doctor.sh" --build || exit 1
"$RANCH_ROOT/install/build.sh"
# For the user as well, so a JupyterLab, Notebook 7 or VS Code already installed lists
# "Rust (ranch)"; it records where cargo is, for a Jupyter started without a login shell.
echo "==> installing the ranch kernelspec for your user (every Jupyter you run finds it)"
"$RANCH_VENV/bin/ranch-kernel" install --user
echo "==> running notebooks/quickstart.ipynb through the installed 'ranch' kernel"
"$RANCH_VENV/bin/python" "$RANCH_ROOT/install/run_notebook.py" "$RANCH_ROOT/notebooks/quickstart.ipynb"
echo
echo "Done. Start Jupyter with:  $RANCH_VENV/bin/jupyter lab   (pick the 'Rust (ranch)' kernel)"
