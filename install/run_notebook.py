"""Executes a notebook headless through the installed kernel and prints every cell's
source and outputs, the way a reader would see them. Exits non-zero if a cell fails (cells
tagged `raises-exception` may fail: nbclient's convention). With `--save`, writes the
outputs into the notebook (how the committed notebooks got theirs)."""
import re
import sys

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def show(cell):
    print(f"\n[{cell.get('execution_count') or ' '}] " + cell.source.replace("\n", "\n    "))
    for out in cell.get("outputs", []):
        kind = out["output_type"]
        if kind == "stream":
            text = out["text"]
        elif kind in ("execute_result", "display_data"):
            text = out["data"].get("text/plain", "<" + ", ".join(out["data"]) + ">")
        elif kind == "error":
            text = ANSI.sub("", "\n".join(out["traceback"]))
        else:
            continue
        prefix = {"stream": "  " + out.get("name", "") + "> ", "error": "  error> "}.get(kind, "  out> ")
        for line in text.rstrip("\n").split("\n"):
            print(prefix + line)


def main(path, save=False):
    nb = nbformat.read(path, as_version=4)
    # record_timing=False: saved notebooks change only where their outputs do.
    client = NotebookClient(nb, kernel_name="ranch", timeout=600, allow_errors=False, record_timing=False)
    failed = None
    try:
        client.execute()
    except CellExecutionError as e:
        failed = e
    for cell in nb.cells:
        if cell.cell_type == "code":
            show(cell)
    if save and not failed:
        nbformat.write(nb, path)
    if failed:
        print(f"\nnotebook failed: {ANSI.sub('', str(failed)).splitlines()[-1]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], save="--save" in sys.argv[2:]))
