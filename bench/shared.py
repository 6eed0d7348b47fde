"""A shared array against a shipped vector: `%%ranch N` ranks that read every element of a
large `Vec<f64>` from the session, sent to each rank (the variable is shipped: a copy per
rank) or shared (`%ranch_share`: one copy that every rank maps). Printed: the cell's time
(export + start + first touch of every page; the rank programs are built before), the ranks' private memory (what each holds
that no other process shares, summed), and the ratios; no assertions. `--quick` runs a short
form (the test suite runs it). Full form: 1 GiB on 8 ranks.
"""
import argparse
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from conftest import execute, logged_kernel, ok  # noqa: E402

# Each rank touches every element, then says how much of its memory is its own.
BODY = """%%ranch {ranks}
let sum: f64 = {name}.iter().sum();
let status = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
let private_kib: u64 = status.lines().filter(|l| l.starts_with("Private_")).map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()).sum();
(sum, private_kib)
"""


def run_cell(kc, ranks, name):
    t = time.monotonic()
    run = ok(execute(kc, BODY.format(ranks=ranks, name=name), timeout=1800))
    took = time.monotonic() - t
    private = sum(int(k) for k in re.findall(r"\(\S+, (\d+)\)", run.result())) * 1024
    return took, private


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="64 MiB on 4 ranks, one run each (for the test suite)")
    ap.add_argument("--ranks", type=int)
    ap.add_argument("--mib", type=int)
    args = ap.parse_args()
    ranks = args.ranks or (4 if args.quick else 8)
    mib = args.mib or (64 if args.quick else 1024)
    repeat = 1 if args.quick else 3
    n = mib * (1 << 20) // 8
    with logged_kernel() as (kc, _log):
        ok(execute(kc, f"let shipped: Vec<f64> = vec![1.0; {n}];\nlet shared: Vec<f64> = vec![1.0; {n}];", timeout=600))
        ok(execute(kc, "%ranch_share shared", timeout=600))
        for name in ("shipped", "shared"):
            run_cell(kc, ranks, name)  # builds each rank program once, outside the figures
        figures = {"shipped": [], "shared": []}
        for _ in range(repeat):
            for name in ("shipped", "shared"):
                figures[name].append(run_cell(kc, ranks, name))
    print(f"{mib} MiB of f64 read by each of {ranks} ranks (median of {repeat} alternating runs)")
    med = {k: (statistics.median(t for t, _ in v), statistics.median(p for _, p in v)) for k, v in figures.items()}
    for name, (took, private) in med.items():
        print(f"{name:8} cell {took:7.2f} s   ranks' private memory {private / (1 << 30):7.2f} GiB")
    print(f"shipped/shared: time {med['shipped'][0] / med['shared'][0]:.1f}x, "
          f"memory {med['shipped'][1] / max(med['shared'][1], 1):.1f}x  (> 1: shared is better)")


if __name__ == "__main__":
    main()
