"""The example notebooks, executed headless with nbclient through the installed kernel."""
import json
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def run(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, kernel_name="ranch", timeout=600).execute()
    return [c for c in nb.cells if c.cell_type == "code"]


def text(cell):
    parts = []
    for o in cell.outputs:
        if o.output_type == "stream":
            parts.append(o.text)
        elif o.output_type in ("execute_result", "display_data"):
            parts.append(o.data.get("text/plain") or o.data.get("text/html", ""))
    return "".join(parts)


def test_quickstart():
    cells = run("quickstart.ipynb")
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1))
    assert text(cells[0]) == "Hello from Rust, 1 + 1 = 2\n"
    assert text(cells[2]) == "5.0"
    assert text(cells[3]) == "385"
    assert [o.output_type for o in cells[4].outputs] == ["display_data", "display_data"]
    assert "squares" in text(cells[5]) and "Vec<u64>" in text(cells[5])
    hello = cells[6]
    # (ranch's once-per-session note on machines with fewer than 4 cores is not the ranks' output.)
    said = [l for l in text(hello).splitlines() if not l.startswith("ranch: ")]
    assert sorted(said[:4]) == [f"[{r}] hello from {r} of 4" for r in range(4)]
    assert hello.outputs[-1].data["text/plain"] == "[0, 1, 4, 9]"
    assert text(cells[8]) == "[31375.0, 93875.0, 156375.0, 218875.0]"
    assert text(cells[9]) == "500500.0"


def test_data_parallel_gradient_descent_matches_serial():
    cells = run("ddp_gradient_descent.ipynb")
    serial = cells[2].outputs[-1].data["text/plain"]
    ddp = cells[3].outputs[-1].data["text/plain"]
    w, b = (float(v) for v in serial.strip("()").split(","))
    assert abs(w - 3.0) < 0.1 and abs(b - 0.5) < 0.1, serial
    dw, db = (float(v) for v in ddp.strip("()").split(","))
    assert abs(dw - w) < 1e-9 and abs(db - b) < 1e-9, (serial, ddp)
    assert text(cells[4]) == "true"


def test_gpus_notebook_runs_its_cpu_path_without_a_gpu():
    import os
    has_gpu = os.path.isdir("/proc/driver/nvidia/gpus") and os.listdir("/proc/driver/nvidia/gpus")
    cells = run("gpus.ipynb")
    assert all(o.output_type != "error" for c in cells for o in c.outputs)
    if has_gpu:
        assert "--gpus" in text(cells[0])
        assert text(cells[2]).count("GPU + NCCL: 3") == 2
        assert cells[3].outputs[-1].data["text/plain"] == '["GPU (cuBLAS): 256", "GPU (cuBLAS): 512"]'
    else:
        assert text(cells[0]).startswith("No GPU")
        assert text(cells[1]) == '[(None, ""), (None, "")]'
        assert text(cells[2]) == '["CPU + shared memory: 3", "CPU + shared memory: 3"]'
        assert cells[3].outputs[-1].data["text/plain"] == '["CPU: 256", "CPU: 512"]'


def test_pool_notebook_keeps_rank_state_across_cells():
    cells = run("pool.ipynb")
    errors = [(i, o.ename) for i, c in enumerate(cells) for o in c.outputs if o.output_type == "error"]
    # Only the cell tagged raises-exception fails, and it names its rank.
    assert [cells[i].metadata.get("tags") for i, _ in errors] == [["raises-exception"]], errors
    assert "rank 2 panicked" in cells[errors[0][0]].outputs[-1].evalue
    assert text(cells[1]) == "[250000, 250000, 250000, 250000]"
    assert sorted(l for l in text(cells[2]).splitlines() if l.startswith("[")) [0].startswith("[0] rank 0 holds 250000 values")
    # Two training cells continue from the weights the ranks kept; every rank agrees.
    first, second = (json.loads(text(cells[i])) for i in (6, 7))
    assert len(set(first)) == 1 and len(set(second)) == 1 and second[0] < first[0] / 10, (first, second)
    assert "Pulled `w` from rank 0 into `weights: Vec<[f64; 2]>`" in text(cells[9])
    slope, intercept = re.match(r'"y = ([\d.]+) x \+ ([\d.]+)"', text(cells[10])).groups()
    assert abs(float(slope) - 3) < 0.05 and abs(float(intercept) - 1) < 0.05
    assert text(cells[11]) == "[(1, 0, [1, 3]), (3, 1, [1, 3])]"
    assert text(cells[18]) == "[250000, 250000, 250000, 250000]"
    assert "Stopped the pool's 4 ranks" in text(cells[20])
