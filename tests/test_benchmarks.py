"""The benchmarks run in short form, so they keep working; their figures are read by
people (bench/*.py print them), never asserted here."""
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_latency_benchmark_runs_in_short_form():
    out = subprocess.run([sys.executable, str(BENCH / "latency.py"), "--quick"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [l for l in out.stdout.splitlines() if l.startswith("warm: ")]
    assert [r.split("  ")[0] for r in rows] == [
        "warm: start to kernel_info_reply", "warm: start to first result",
        "warm: median trivial cell", "warm: cell calling an earlier fn"], out.stdout
