"""The benchmarks run in short form, so they keep working; their figures are read by
people (bench/*.py print them), never asserted here."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_latency_benchmark_runs_in_short_form():
    out = subprocess.run([sys.executable, str(BENCH / "latency.py"), "--quick"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [l for l in out.stdout.splitlines() if l.startswith("warm: ")]
    assert [r.split("  ")[0] for r in rows] == [
        "warm: start to kernel_info_reply", "warm: start to first result",
        "warm: median trivial cell", "warm: cell calling an earlier fn"], out.stdout


def test_fault_soak_in_short_form():
    out = subprocess.run([sys.executable, str(BENCH / "soak.py"), "--quick", "--seed", "7"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = dict(l.rsplit(None, 1) if "[" not in l else (l.split("  ")[0], l.split("  ")[-1].strip())
                   for l in out.stdout.splitlines() if l and not l.startswith(("seed", "goal", "reported wrongly")))
    figures = {k.strip(): v for k, v in figures.items()}
    assert figures["reported correctly"] == figures["launches"], out.stdout
    for key in ("orphaned processes", "leaked segments", "left by killed kernels"):
        assert figures[key] == "0", out.stdout
    assert figures["fd growth per kernel"] == "[0, 0]", out.stdout
    rss = [float(x) for x in figures["RSS growth per kernel (MiB)"].strip("[]").split(",")]
    assert max(rss) < 64, out.stdout


def test_stranger_soak_in_short_form():
    out = subprocess.run([sys.executable, str(BENCH / "soak.py"), "--strangers", "20"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = {l[:28].strip(): l[28:].strip() for l in out.stdout.splitlines() if l and not l.startswith(("goal", "lost"))}
    assert int(figures["stranger acts"]) > 20, out.stdout
    assert figures["cells answered right"] == figures["cells asked"], out.stdout
    assert figures["kernel still answers"] == "True", out.stdout
    assert figures["heartbeat still echoes"] == "True", out.stdout
    assert float(figures["RSS growth at peak (MiB)"]) < 64, out.stdout
    assert int(figures["fd growth at end"]) <= 0, out.stdout


def test_collectives_benchmark_runs_in_short_form_and_waiters_sleep():
    out = subprocess.run([sys.executable, str(BENCH / "collectives.py"), "--quick"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [l.split() for l in out.stdout.splitlines() if l.strip()[:1].isdigit()]
    measures = {(r[0], r[1]) for r in rows}
    for n in ("2", "4"):
        for key in ("allreduce_4k", "allreduce_1m", "allreduce_64m", "bcast_4k", "bcast_64m", "barrier",
                    "waiting_cpu", "memcpy_64m"):
            assert (n, key) in measures, out.stdout
    # Ranks waiting for one that computes sleep (a futex), not spin: a behaviour, not a speed.
    waiting = [float(r[2].rstrip("%")) for r in rows if r[1] == "waiting_cpu"]
    assert max(waiting) < 50, out.stdout


def test_pool_benchmark_runs_in_short_form():
    out = subprocess.run([sys.executable, str(BENCH / "pool.py"), "--quick", "--ranks", "4"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    for what in ("%%px cell", "dispatch of a built cell", "read 10 MB of rank state", "%ranch_start 4"):
        assert what in out.stdout, out.stdout


def test_hosts_benchmark_runs_in_short_form():
    out = subprocess.run([sys.executable, str(BENCH / "hosts.py"), "--quick"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    if out.stdout.startswith("skipped:"):
        pytest.skip(out.stdout.strip())
    for what in ("4 KiB", "64 MiB", "hier/MPI", "pool/MPI", "in the same ranks", "flat/MPI", "mpirun, 2 hosts  ", "mpirun, 2 hosts, one barrier (MPI started)",
                 "bare mpirun /bin/true", "an MPI program's start"):
        assert what in out.stdout, out.stdout


def test_map_benchmark_runs_in_short_form():
    out = subprocess.run([sys.executable, str(BENCH / "map.py"), "--quick"], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    for what in ("map ", "shard ", "x ideal", "shard/map (median)"):
        assert what in out.stdout, out.stdout


def test_shared_array_benchmark_runs_in_short_form():
    out = subprocess.run([sys.executable, str(BENCH / "shared.py"), "--quick"], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    for what in ("shipped ", "shared ", "private memory", "shipped/shared"):
        assert what in out.stdout, out.stdout
