"""ranch's shared-memory collectives against Open MPI on this machine, in one run.

Times, for 2 and 4 ranks: all-reduce (f32 sum) of 4 KiB and 64 MiB, broadcast of 4 KiB,
barrier; and one plain memcpy of 64 MiB. ranch runs through the installed kernel
(`%%ranch N`); Open MPI runs a small C program built here (installs Debian's openmpi-bin
and libopenmpi-dev when mpicc is missing). Prints figures and ratios; asserts nothing.

Goals: 64 MiB all-reduce at least 2x faster than Open MPI and within 4x of one memcpy;
4 KiB all-reduce and barrier latency within 2x of Open MPI's.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from jupyter_client.manager import KernelManager

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from conftest import execute  # noqa: E402

RANCH_CELL = """%%ranch {n} --ddp --see 0
use std::time::Instant;
let c = ranch::comm();
// Median over rounds of the mean of `iters` calls: robust to a noisy machine.
let time_rounds = |rounds: usize, iters: usize, f: &mut dyn FnMut()| {{
    let mut t: Vec<f64> = (0..rounds).map(|_| {{ c.barrier().unwrap(); let t = Instant::now(); for _ in 0..iters {{ f(); }} t.elapsed().as_secs_f64() / iters as f64 }}).collect();
    t.sort_by(f64::total_cmp);
    t[rounds / 2]
}};
let time = |iters: usize, f: &mut dyn FnMut()| time_rounds(1, iters, f);
let mut small = vec![1.0f32; 1024];
let mut large = vec![1.0f32; 16 << 20];
time(100, &mut || c.all_reduce(&mut small, ranch::Op::Sum).unwrap());
time(1, &mut || c.all_reduce(&mut large, ranch::Op::Sum).unwrap());
let allreduce_4k = time_rounds(5, 400, &mut || c.all_reduce(&mut small, ranch::Op::Sum).unwrap());
let allreduce_64m = time_rounds(21, 1, &mut || c.all_reduce(&mut large, ranch::Op::Sum).unwrap());
let bcast_4k = time(2000, &mut || c.broadcast_slice(&mut small, 0).unwrap());
let barrier = time(2000, &mut || c.barrier().unwrap());
// One plain memcpy, by rank 0 alone while the others wait.
let src = vec![2.0f32; 16 << 20];
c.barrier().unwrap();
let memcpy_64m = if ranch::rank() == 0 {{
    let mut t: Vec<f64> = (0..21).map(|_| {{ let t = Instant::now(); large.copy_from_slice(&src); std::hint::black_box(&large); t.elapsed().as_secs_f64() }}).collect();
    t.sort_by(f64::total_cmp);
    t[10]
}} else {{ 0.0 }};
c.barrier().unwrap();
(allreduce_4k, allreduce_64m, bcast_4k, barrier, memcpy_64m)"""


def ensure_mpi():
    if shutil.which("mpicc") and shutil.which("mpirun"):
        return
    print("installing Open MPI (openmpi-bin, libopenmpi-dev)...", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "openmpi-bin", "libopenmpi-dev"], check=True, env=env)


def mpi_times(n, exe):
    out = subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(n), exe],
                         check=True, capture_output=True, text=True,
                         env=dict(os.environ, OMPI_MCA_mpi_yield_when_idle="1")).stdout
    return json.loads(out.strip().splitlines()[-1])


def ranch_times(kc, n):
    run = execute(kc, RANCH_CELL.format(n=n), timeout=600)
    assert run.reply["content"]["status"] == "ok", run.reply["content"]
    first = run.result().strip("[]").split("), (")[0].strip("()")
    a4, a64, b4, bar, mc = (float(x) for x in first.split(","))
    return {"allreduce_4k": a4, "allreduce_64m": a64, "bcast_4k": b4, "barrier": bar, "memcpy_64m": mc}


def fmt(t):
    return f"{t * 1e6:10.1f}us" if t < 1e-3 else f"{t * 1e3:10.2f}ms"


def main():
    ensure_mpi()
    build = tempfile.mkdtemp()
    exe = os.path.join(build, "mpi_collectives")
    subprocess.run(["mpicc", "-O2", "-o", exe, os.path.join(HERE, "mpi_collectives.c")], check=True)
    km = KernelManager(kernel_name="ranch")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=300)
        rows = []
        for n in (2, 4):
            ours, theirs = ranch_times(kc, n), mpi_times(n, exe)
            rows.append((n, ours, theirs))
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        shutil.rmtree(build, ignore_errors=True)
    print(f"{'ranks':>5} {'measure':16} {'ranch':>12} {'Open MPI':>12} {'MPI/ranch':>10}")
    for n, ours, theirs in rows:
        for key in ("allreduce_4k", "allreduce_64m", "bcast_4k", "barrier"):
            print(f"{n:>5} {key:16} {fmt(ours[key])} {fmt(theirs[key])} {theirs[key] / ours[key]:10.2f}")
        print(f"{n:>5} {'memcpy_64m':16} {fmt(ours['memcpy_64m'])}")
        print(f"{n:>5} {'  allreduce_64m / memcpy_64m':40} {ours['allreduce_64m'] / ours['memcpy_64m']:6.2f}")
    print("goals: MPI/ranch >= 2 for allreduce_64m; >= 0.5 for allreduce_4k and barrier; "
          "allreduce_64m / memcpy_64m <= 4")


if __name__ == "__main__":
    main()
