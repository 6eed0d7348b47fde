"""The pool's costs (`%ranch_start`, `%%px`), measured in one run and printed as ratios (no
assertions). `--quick` runs a short form (the test suite runs it).

- a trivial `%%px` cell on N pool ranks vs the same body as a plain cell (goal <= 1.2x: the
  cell is compiled once, as a plain cell is);
- the fan-out's dispatch of a built cell to N ranks and back (goal < 5 ms for 8), from the
  kernel's log;
- a `%%px` cell that reads existing rank state (a 100 MB vector per rank) vs a `%%ranch`
  cell that must rebuild it;
- `%ranch_start N` (it returns at once) and until a first cell ran (evcxr's context included), first
  and after `%ranch_stop`;
- ipyparallel's engines beside it when ipyparallel is installed.
"""
import argparse
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from conftest import logged_kernel, timed  # noqa: E402


def dispatches(log_path, n):
    return [float(m) for m in re.findall(rf"%%px {n}: dispatch (\S+) ms", open(log_path).read())]


def ranks_running(log_path, n):
    """Seconds from each `%ranch_start` until its N rank processes ran (the kernel's log)."""
    return [float(m) for m in re.findall(rf"pool: {n} ranks running after (\S+) s", open(log_path).read())]


def ipyparallel_figures(n, repeat):
    try:
        import ipyparallel as ipp
    except ImportError:
        return None
    t = time.monotonic()
    cluster = ipp.Cluster(n=n, log_level=40)
    rc = cluster.start_and_connect_sync()
    started = time.monotonic() - t
    try:
        view = rc[:]
        view.execute("x = 1", block=True)
        times = []
        for _ in range(repeat):
            t = time.monotonic()
            view.execute("y = x + 1", block=True)
            times.append(time.monotonic() - t)
        return started, statistics.median(times)
    finally:
        cluster.stop_cluster_sync()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="few repetitions, small state (for the test suite)")
    ap.add_argument("--ranks", type=int, default=8)
    opts = ap.parse_args()
    n, repeat = opts.ranks, (3 if opts.quick else 7)
    mb = 10 if opts.quick else 100
    elems = mb * 1024 * 1024 // 8
    with logged_kernel() as (kc, log):
        timed(kc, "1")  # the session and its runtime crate: not what is measured
        # `%ranch_start` returns at once; the first pool cell waits until the pool is up.
        first_start = timed(kc, f"%ranch_start {n}")
        first_ready = first_start + timed(kc, "%px 0")
        timed(kc, "%ranch_stop")
        restart = timed(kc, f"%ranch_start {n}")
        restart_ready = restart + timed(kc, "%px 0")
        # A new body each time, so that both paths compile it.
        plain = statistics.median(timed(kc, f"let a{i} = {i};\na{i} + 1") for i in range(repeat))
        px = statistics.median(timed(kc, f"%%px\nlet b{i} = {i};\nb{i} + 1") for i in range(repeat))
        dispatch = statistics.median(dispatches(log, n)[-repeat:])
        running = ranks_running(log, n)
        timed(kc, f"%%px\nlet state: Vec<u64> = (0..{elems}u64).collect();")
        reads = statistics.median(timed(kc, f"%%px\nstate.iter().sum::<u64>() + {i}") for i in range(repeat))
        rebuilds = statistics.median(
            timed(kc, f"%%ranch {n}\nlet state: Vec<u64> = (0..{elems}u64).collect();\nstate.iter().sum::<u64>() + {i}")
            for i in range(repeat)
        )
        timed(kc, "%ranch_stop")
    print(f"pool of {n} ranks on {os.cpu_count()} cores, medians of {repeat}")
    print(f"  %%px cell (new body, compiled once): {px * 1000:7.1f} ms   plain cell {plain * 1000:7.1f} ms   ratio {px / plain:.2f} (goal <= 1.2)")
    print(f"  dispatch of a built cell to {n} ranks and back: {dispatch:.2f} ms (goal < 5 ms)")
    print(f"  read {mb} MB of rank state: %%px {reads * 1000:7.1f} ms   rebuild it in %%ranch {rebuilds * 1000:7.1f} ms   saving {rebuilds / reads:.1f}x")
    print(f"  %ranch_start {n} returns in {restart * 1000:.0f} ms (first time {first_start * 1000:.0f} ms; the pool starts in the background)")
    print(f"  %ranch_start {n} until its {n} rank processes ran: {running[-1]:.2f} s (first time {running[0]:.2f} s; goal < 1 s)")
    print(f"  %ranch_start {n} until a first %px cell ran: {restart_ready:.2f} s (first time {first_ready:.2f} s: evcxr's context, the runtime crate)")
    ipp = ipyparallel_figures(n, repeat)
    if ipp is None:
        print("  ipyparallel: not installed (pip install ipyparallel to compare)")
    else:
        print(f"  ipyparallel {n} engines: start {ipp[0]:.2f} s, trivial cell {ipp[1] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
