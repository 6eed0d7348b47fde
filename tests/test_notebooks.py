"""The example notebooks, executed headless with nbclient through the installed kernel.
RANCH_SAVE_NOTEBOOKS=1 writes each executed notebook back (for those only a test can run,
such as the one on simulated hosts; install/run_notebook.py --save does the others)."""
import json
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from simhosts import simulated_hosts
from test_mpi_backend import needs_mpi_build

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def run(name, **kernel):
    """Executes the notebook (`kernel`: cwd, env for its kernel); fails on an error output
    outside cells tagged `raises-exception` (nbclient's convention for deliberate failures)."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, kernel_name="ranch", timeout=600, record_timing=False).execute(**kernel)
    if os.environ.get("RANCH_SAVE_NOTEBOOKS"):
        nbformat.write(nb, NOTEBOOKS / name)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    for i, c in enumerate(cells):
        if "raises-exception" not in c.metadata.get("tags", []):
            errors = [o for o in c.outputs if o.output_type == "error"]
            assert not errors, (name, i, errors)
    return cells


# Where a saved output could name the machine it ran on: home directories, temporary
# directories, and this checkout and home (wherever they are).
MACHINE_PATHS = [r"/root/", r"/home/[^/\s\"]+/", r"/Users/[^/\s\"]+/", r"/tmp/", r"/var/tmp/",
                 re.escape(str(NOTEBOOKS.parent)) + "/", re.escape(str(Path.home())) + "/"]


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_saved_notebooks_name_no_machine_path_and_tag_their_failures(name):
    """What the repo ships: outputs a reader on another machine can trust, and a "Run All"
    that only stops where the notebook says it fails on purpose."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    for i, c in enumerate(c for c in nb.cells if c.cell_type == "code"):
        outputs = json.dumps(c.outputs)
        for pattern in MACHINE_PATHS:
            found = re.search(pattern, outputs)
            assert not found, f"{name}, code cell {i}: its saved output names a path of the machine it ran on " \
                              f"({outputs[max(0, found.start() - 60):found.end() + 40]!r})"
        if any(o.output_type == "error" for o in c.outputs):
            assert "raises-exception" in c.metadata.get("tags", []), \
                f"{name}, code cell {i}: a saved failure not tagged raises-exception"


def is_status(output):
    return output.get("metadata", {}).get("ranch", {}).get("status") is True


def is_progress(output):
    """A plain cell's own `ranch::progress` bar."""
    return output.get("metadata", {}).get("ranch", {}).get("progress") is True


def status(cell):
    """A launch's status table as the notebook keeps it (its final state)."""
    tables = [o.data["text/plain"] for o in cell.outputs if is_status(o)]
    assert len(tables) == 1, cell.outputs
    return tables[0]


def text(cell):
    """What a reader sees, less the status table, progress bars and cargo's build lines."""
    parts = []
    for o in cell.outputs:
        if o.output_type == "stream":
            parts.extend(l for l in o.text.splitlines(keepends=True) if not l.lstrip().startswith("Compiling "))
        elif o.output_type in ("execute_result", "display_data") and not is_status(o) and not is_progress(o):
            parts.append(o.data.get("text/plain") or o.data.get("text/html", ""))
    return "".join(parts)


def test_quickstart():
    cells = run("quickstart.ipynb")
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1))
    assert text(cells[0]) == "Hello from Rust, 1 + 1 = 2\n"
    assert text(cells[2]) == "5.0"
    assert text(cells[3]) == "385"
    # ranch::display: two displays, the second updated in place.
    assert [o.data for o in cells[4].outputs] == [{"text/html": "<b>bold from Rust</b>"},
                                                  {"text/html": "<i>done: a display updated in place</i>"}]
    assert "squares" in text(cells[5]) and "Vec<u64>" in text(cells[5])
    hello = cells[6]
    # (ranch's once-per-session note on machines with fewer than 4 cores is not the ranks' output.)
    said = [l for l in text(hello).splitlines() if not l.startswith("ranch: ")]
    assert sorted(said[:4]) == [f"[{r}] hello from {r} of 4" for r in range(4)]
    assert hello.outputs[-1].data["text/plain"] == "[0, 1, 4, 9]"
    assert [l.split()[4] for l in status(hello).splitlines()[1:]] == ["done"] * 4
    paced = cells[7]
    rows = status(paced).splitlines()[1:]
    assert all(r.split()[4] == "done" and "[##########] 40/40" in r for r in rows), rows
    assert sorted(text(paced).splitlines()) == [f"[{r}] rank {r} finished 40 steps" for r in range(4)]
    assert text(cells[9]) == "[31375.0, 93875.0, 156375.0, 218875.0]"
    assert text(cells[10]) == "500500.0"
    failing = cells[11]
    error = [o for o in failing.outputs if o.output_type == "error"]
    assert len(error) == 1 and "rank 2 panicked at cell line 5: rank 2 found a bad record" in error[0].evalue
    assert any("<table" in o.data.get("text/html", "") for o in failing.outputs if o.output_type == "display_data" and not is_status(o))
    states = {int(l.split()[0]): l.split()[4] for l in status(failing).splitlines()[1:]}
    assert states == {0: "stopped", 1: "stopped", 2: "panicked", 3: "stopped"}, status(failing)


def test_data_parallel_matches_serial_and_plots_its_loss():
    cells = run("data_parallel.ipynb")
    w, b = (float(v) for v in text(cells[2]).strip("()").split(","))
    assert abs(w - 3.0) < 0.1 and abs(b - 0.5) < 0.1
    assert text(cells[4]) == "true", "every rank's parameters equal the serial ones"
    assert not [o for o in cells[3].outputs if o.output_type == "execute_result"], "`EXPR;` shows no value"
    chart = [o.data for o in cells[7].outputs if o.output_type == "display_data"]
    assert len(chart) == 1 and chart[0]["image/svg+xml"].startswith("<svg") and "mean squared error" in chart[0]["image/svg+xml"]
    first, last = re.match(r"loss: ([\d.]+) at step 1, ([\d.]+) at step 500", text(cells[7])).groups()
    assert float(last) < float(first) / 100


def test_candle_notebook_trains_like_serial_on_2_and_4_ranks_and_splits_a_layer_exactly():
    cells = run("candle_ddp.ipynb")
    stdout = lambda c: "".join(o.text for o in c.outputs if o.output_type == "stream" and o.name == "stdout")
    curves = stdout(cells[6])
    gaps = re.search(r"largest gap from serial: (\S+) on 2 ranks, (\S+) on 4 ranks", curves)
    assert gaps and all(float(g) < 1e-4 for g in gaps.groups()), curves
    rows = [line.split() for line in curves.splitlines()[1:] if line.strip()[:1].isdigit()]
    assert len(rows) == 9 and float(rows[-1][1]) < float(rows[0][1]) / 3, "the model learned: " + curves
    chart = [o.data for o in cells[7].outputs if o.output_type == "display_data"]
    assert len(chart) == 1 and chart[0]["image/svg+xml"].startswith("<svg") and "4 ranks" in chart[0]["image/svg+xml"]
    split = re.search(r"w1 (\S+), b1 (\S+), w2 (\S+), b2 (\S+)", stdout(cells[10]))
    assert split and all(float(g) < 1e-6 for g in split.groups()), stdout(cells[10])


def test_monte_carlo_estimates_pi_and_charts_the_speed_up():
    cells = run("monte_carlo.ipynb")
    assert abs(float(text(cells[1])) - 3.14159) < 0.01
    lines = text(cells[5]).splitlines()
    assert lines[0] == f"on {os.cpu_count()} cores:", lines
    lines = lines[1:]
    assert [l.split()[0] for l in lines] == ["1", "2", "4"], lines
    assert all(re.search(r"efficiency \d+%$", l) for l in lines), lines
    for l in lines:
        pi = float(re.search(r"pi = ([\d.]+)", l).group(1))
        assert abs(pi - 3.14159) < 0.01, l
    # Four ranks reported their progress to the end.
    assert status(cells[4]).count("10000000/10000000") == 4
    charts = [o.data["image/svg+xml"] for o in cells[8].outputs if o.output_type == "display_data"]
    assert len(charts) == 2 and "speed-up" in charts[0] and "efficiency" in charts[1], [c[:200] for c in charts]
    assert all(f"on {os.cpu_count()} cores" in c for c in charts)


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
    # Only the cells tagged raises-exception fail, and they name their rank.
    assert [cells[i].metadata.get("tags") for i, _ in errors] == [["raises-exception"]] * 2, errors
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
    # Training in the background: the cell returns with a job name and its table; the
    # session runs cells meanwhile; the wait shows the ranks' output and binds --out.
    assert "job-1: 4 ranks run in the background" in text(cells[12])
    assert any(is_status(o) for o in cells[12].outputs)
    assert text(cells[13]) == '"the ranks train with lr = 0.5"'
    assert text(cells[14]).splitlines()[0].split() == ["job", "cell", "ranks", "state", "elapsed"]
    assert "[0] trained 400 more steps" in text(cells[15]), text(cells[15])
    assert text(cells[16]) == "(4, true)"
    assert text(cells[23]) == "[250000, 250000, 250000, 250000]"
    # Rank 3 killed with SIGKILL: restarted alone; ranks 0-2 kept their shards.
    assert "Rank 3 was killed by signal 9 (SIGKILL)" in cells[24].outputs[-1].evalue
    assert "ranks 0, 1, 2 kept their variables" in cells[24].outputs[-1].evalue
    assert text(cells[25]).endswith("[250000, 250000, 250000]"), text(cells[25])
    assert "rank 3 sits this cell out" in text(cells[25])
    assert "no variables" in text(cells[26])
    assert "Stopped the pool's 4 ranks" in text(cells[27])


@pytest.fixture
def two_hosts():
    yield from simulated_hosts(2)


@needs_mpi_build
def test_hosts_notebook_on_two_simulated_hosts(two_hosts, tmp_path):
    a, b = two_hosts.addresses
    (tmp_path / "hosts.txt").write_text(f"{a} slots=2\n{b} slots=2\n")
    cells = run("hosts.ipynb", cwd=str(tmp_path), env=dict(os.environ, RANCH_MPIRUN_ARGS=two_hosts.mpirun_args))
    said = sorted(l for l in text(cells[0]).splitlines() if re.match(r"\[\d\] ", l))
    assert said == [f"[{r}] rank {r} of 4 runs on simhost{1 + r // 2}" for r in range(4)], said
    assert cells[0].outputs[-1].data["text/plain"] == '["simhost1", "simhost1", "simhost2", "simhost2"]'
    assert text(cells[2]) == "(true, 499999500000.0)"
    assert text(cells[4]) == '[(1.5, "simhost1"), (1.5, "simhost1"), (1.5, "simhost2"), (1.5, "simhost2")]'
    # The pool on the same hosts keeps each rank's shard and reduces over TCP.
    assert cells[6].outputs[-1].data["text/plain"] == (
        '["250000 values on simhost1", "250000 values on simhost1", "250000 values on simhost2", "250000 values on simhost2"]')
    assert cells[7].outputs[-1].data["text/plain"] == "[true, true, true, true]"
