"""ranch across hosts against plain Open MPI, on two simulated hosts (tests/simhosts.py:
network namespaces on a bridge, 2 ranks each), in one run.

Times all-reduce (f32 sum) of 4 KiB and 64 MiB over 4 ranks on 2 hosts with ranch's
hierarchical backend (the default across hosts: shared memory inside a host, MPI between
host leaders), with `--backend mpi` (flat MPI through ranch), and with a C program calling
`MPI_Allreduce` directly (bench/mpi_collectives.c) over the same hosts and MCA settings,
and in a pool on the same hosts (`%ranch_start 4 --hosts`: TCP, by host for large buffers:
shared memory inside a host, a ring of the hosts' leaders between them);
and what a launch costs: a trivial `%%ranch 4` cell (program already built) with the local
launcher, with mpirun on this host, and with mpirun on the two hosts (without a collective,
which starts no MPI, and with one barrier, which does), beside a bare `mpirun ... /bin/true`
and a C program that only starts MPI and meets every rank once. Prints figures and ratios; asserts
nothing. Needs root (namespaces), mpirun, mpicc and libclang (install/mpi.sh).

`--quick` (the test suite's form): fewer rounds and launches.

Simulated hosts share this machine's cores and memory: the figures say what ranch adds to
MPI and what the hierarchy saves in bytes over the network, not what a real cluster's
network gives.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import pytest  # noqa: E402  (simhosts skips through pytest)
from conftest import execute, logged_kernel, timed  # noqa: E402
from simhosts import simulated_hosts  # noqa: E402

CELL = """%%ranch 4 --hosts {hosts}{backend} --see 0
use std::time::Instant;
let c = ranch::comm();
// Median over rounds of the mean of `iters` calls: of ranch's all_reduce and, in launches
// that started MPI, of MPI's own MPI_Allreduce in the same ranks, alternating round by round
// (launches vary more from one to the next than the two differ).
let time = |rounds: usize, iters: usize, buf: &mut [f32]| {{
    let mut t = [Vec::new(), Vec::new()];
    for _ in 0..rounds {{
        for raw in [false, true] {{
            if raw && !{raw_on} {{ continue; }}
            c.barrier().unwrap();
            let s = Instant::now();
            for _ in 0..iters {{ if raw {{ {raw_call} }} else {{ c.all_reduce(buf, ranch::Op::Sum).unwrap() }} }}
            t[raw as usize].push(s.elapsed().as_secs_f64() / iters as f64);
        }}
    }}
    t.map(|mut v| {{ v.sort_by(f64::total_cmp); v.get(v.len() / 2).copied().unwrap_or(0.0) }})
}};
let mut small = vec![1.0f32; 1024];
let mut large = vec![1.0f32; 16 << 20];
time(1, 20, &mut small);
time(1, 1, &mut large);
let [allreduce_4k, raw_4k] = time({rounds}, {iters}, &mut small);
let [allreduce_64m, raw_64m] = time({rounds}, 1, &mut large);
(allreduce_4k, allreduce_64m, raw_4k, raw_64m)"""


def cell(hosts, backend, rounds, iters, raw):
    """The timing cell; `raw`: also time MPI's own all-reduce (a launch that started MPI)."""
    call = "ranch::__mpi_all_reduce_sum(buf).unwrap()" if raw else "unreachable!()"
    return CELL.format(hosts=hosts, backend=backend, rounds=rounds, iters=iters, raw_on=str(raw).lower(), raw_call=call)


def figures(run):
    """Rank 0's (ranch 4 KiB, ranch 64 MiB, MPI 4 KiB, MPI 64 MiB) seconds."""
    assert run.reply["content"]["status"] == "ok", run.error_text()
    first = run.result().strip("[]").split("), (")[0].strip("()")
    return tuple(float(x) for x in first.split(","))


def ranch_allreduce(kc, hosts, backend, rounds, iters):
    return figures(execute(kc, cell(hosts, backend, rounds, iters, True), timeout=600))


def pool_allreduce(kc, hosts, rounds, iters):
    """The same body in a `%%px` cell of a pool on the hosts (collectives over TCP)."""
    run = execute(kc, f"%ranch_start 4 --hosts {hosts}", timeout=600)
    assert run.reply["content"]["status"] == "ok", run.error_text()
    try:
        body = cell(hosts, "", rounds, iters, False).split("\n", 1)[1]
        # In braces: a pool keeps top-level variables, and a closure cannot be kept.
        return figures(execute(kc, "%%px --quiet\n{\n" + body + "\n}", timeout=600))
    finally:
        execute(kc, "%ranch_stop", timeout=60)


def mpi_program(sim, hosts, args, runs=1):
    """Runs bench/mpi_collectives.c over the same hosts with `args`: its last line of output
    and the median seconds of `runs` launches."""
    # Outside /tmp: each simulated host has a /tmp of its own.
    build = tempfile.mkdtemp(prefix="ranch-bench-", dir="/var/tmp")
    exe = os.path.join(build, "mpi_collectives")
    try:
        subprocess.run(["mpicc", "-O2", "-o", exe, os.path.join(HERE, "mpi_collectives.c")], check=True)
        cmd = ["mpirun", "-np", "4", "--host", hosts, "--allow-run-as-root", *sim.mpirun_args.split(), exe, *args]
        samples, out = [], ""
        for _ in range(runs):
            t = time.monotonic()
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
            samples.append(time.monotonic() - t)
        return (out.strip().splitlines() or [""])[-1], statistics.median(samples)
    finally:
        subprocess.run(["rm", "-rf", build])


def plain_mpi(sim, hosts, quick):
    """bench/mpi_collectives.c over the same hosts: {allreduce_4k, allreduce_64m, ...}."""
    return json.loads(mpi_program(sim, hosts, ["0.1", "10" if quick else "1"])[0])


def launch_costs(kc, sim, hosts, launches):
    """Seconds per trivial launch (median), by launcher; the programs are built first."""
    cells = {
        "local launcher (this host)": "%%ranch 4\nranch::rank()",
        "mpirun, this host": "%%ranch 4 --launcher mpirun\nranch::rank()",
        # Names no collective: MPI is not started.
        "mpirun, 2 hosts": f"%%ranch 4 --hosts {hosts}\nranch::rank()",
        "mpirun, 2 hosts, one barrier (MPI started)": f"%%ranch 4 --hosts {hosts}\nranch::comm().barrier().unwrap();\nranch::rank()",
    }
    costs = {}
    for name, cell in cells.items():
        timed(kc, cell)  # builds
        costs[name] = statistics.median(timed(kc, cell) for _ in range(launches))
    bare = ["mpirun", "-np", "4", "--host", hosts, "--allow-run-as-root", *sim.mpirun_args.split(), "/bin/true"]
    samples = []
    for _ in range(launches):
        t = time.monotonic()
        subprocess.run(bare, check=True, capture_output=True)
        samples.append(time.monotonic() - t)
    costs["bare mpirun /bin/true, 2 hosts"] = statistics.median(samples)
    costs["mpirun of a C program that starts MPI, 2 hosts"] = mpi_program(sim, hosts, ["start"], launches)[1]
    return costs


def main():
    quick = "--quick" in sys.argv
    rounds, iters, launches = (3, 50, 3) if quick else (11, 400, 9)
    gen = simulated_hosts(2)
    try:
        sim = next(gen)
    except pytest.skip.Exception as e:
        print(f"skipped: {e}")
        return
    try:
        a, b = sim.addresses
        hosts = f"{a}:2,{b}:2"
        os.environ["RANCH_MPIRUN_ARGS"] = sim.mpirun_args
        with logged_kernel() as (kc, _log):
            hier = ranch_allreduce(kc, hosts, "", rounds, iters)
            flat = ranch_allreduce(kc, hosts, " --backend mpi", rounds, iters)
            pool = pool_allreduce(kc, hosts, rounds, iters)
            costs = launch_costs(kc, sim, hosts, launches)
        mpi = plain_mpi(sim, hosts, quick)
    finally:
        next(gen, None)  # removes the simulated hosts
    print("all-reduce, 4 ranks on 2 simulated hosts (f32 sum; median seconds per call)")
    print("(x/MPI: time over MPI_Allreduce's; below 1 is faster than MPI. MPI in a separate launch:")
    print(" bench/mpi_collectives.c; MPI in the same ranks: MPI_Allreduce called in ranch's launch,")
    print(" alternating with ranch's all_reduce round by round)")
    print(f"{'size':<8}{'hierarchical':>14}{'ranch mpi':>14}{'pool tcp':>12}{'MPI_Allreduce':>16}{'hier/MPI':>10}{'flat/MPI':>10}{'pool/MPI':>10}")
    for label, i, key in (("4 KiB", 0, "allreduce_4k"), ("64 MiB", 1, "allreduce_64m")):
        ref = mpi[key]
        print(f"{label:<8}{hier[i]:>14.6f}{flat[i]:>14.6f}{pool[i]:>12.6f}{ref:>16.6f}{hier[i] / ref:>10.2f}{flat[i] / ref:>10.2f}{pool[i] / ref:>10.2f}")
    print("in the same ranks (each launch's own MPI_Allreduce):")
    print(f"{'size':<8}{'hierarchical':>14}{'its MPI':>10}{'hier/MPI':>10}{'ranch mpi':>14}{'its MPI':>10}{'flat/MPI':>10}")
    for label, i in (("4 KiB", 0), ("64 MiB", 1)):
        h, hr, f, fr = hier[i], hier[i + 2], flat[i], flat[i + 2]
        print(f"{label:<8}{h:>14.6f}{hr:>10.6f}{h / hr:>10.2f}{f:>14.6f}{fr:>10.6f}{f / fr:>10.2f}")
    print()
    print("launch cost: a trivial %%ranch 4 cell end to end (median seconds)")
    base = costs["local launcher (this host)"]
    for name, s in costs.items():
        print(f"  {name:<48}{s:>8.3f}  ({s / base:.1f}x local)")
    bare, mpi_start = costs["bare mpirun /bin/true, 2 hosts"], costs["mpirun of a C program that starts MPI, 2 hosts"]
    print(f"%%ranch across 2 hosts / bare mpirun: {costs['mpirun, 2 hosts'] / bare:.2f}x; "
          f"with a barrier / an MPI program's start: {costs['mpirun, 2 hosts, one barrier (MPI started)'] / mpi_start:.2f}x")


if __name__ == "__main__":
    main()
