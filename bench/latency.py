"""Plain-cell latency of the ranch kernel, and of evcxr_jupyter when its kernelspec
(`rust`, or $EVCXR_KERNEL_NAME; `bench/install_evcxr_jupyter.sh` installs it) is there,
measured in one run. Prints figures and ratios; asserts nothing (speed goals live here,
not in tests).

First cell = from starting the kernel to the result of `1 + 1`, sent as soon as the kernel
answers `kernel_info` (what nbclient and papermill do):
- cold: on empty cache directories (`XDG_CACHE_HOME`, `RANCH_CACHE_DIR`), as on a machine
  that never ran the kernel (crates already downloaded);
- warm: later kernels on the cache directories the cold one left, ranch's and
  evcxr_jupyter's alternating (5 of each; the figure is their median), each shut down as a
  notebook server does (a shutdown request).

`--quick` measures ranch only, warm only, with fewer cells (a smoke run for the suite)."""
import argparse
import os
import statistics
import sys
import tempfile
import time

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_client.manager import KernelManager

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from conftest import execute  # noqa: E402


def measure(name, cache, cells=10, calls=5):
    env = dict(os.environ, XDG_CACHE_HOME=cache, RANCH_CACHE_DIR=os.path.join(cache, "ranch"))
    km = KernelManager(kernel_name=name)
    t0 = time.monotonic()
    km.start_kernel(env=env)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=300)
        ready = time.monotonic() - t0

        def timed(code):
            t = time.monotonic()
            run = execute(kc, code, timeout=300)
            assert run.reply["content"]["status"] == "ok", run.reply["content"]
            return time.monotonic() - t

        first = timed("1 + 1")
        figures = {"start to kernel_info_reply": ready, "start to first result": ready + first}
        if cells:
            figures["median trivial cell"] = statistics.median(timed(f"{i} + 1") for i in range(cells))
            timed("fn add_one(x: i64) -> i64 { x + 1 }")
            figures["cell calling an earlier fn"] = statistics.median(timed(f"add_one({i})") for i in range(calls))
        return figures
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


WARM_RUNS = 5


def cold_and_warm(names, quick=False):
    """{name: {"cold": figures, "warm": figures}}: the warm figures are medians over
    alternating kernels of each name."""
    caches = {n: tempfile.TemporaryDirectory(prefix="ranch-latency-") for n in names}
    try:
        out = {n: {"cold": measure(n, caches[n].name, cells=0)} for n in names}
        runs = {n: [] for n in names}
        for i in range(1 if quick else WARM_RUNS):
            for n in names:
                cells = (3, 2) if quick else (10, 5)
                runs[n].append(measure(n, caches[n].name, *(cells if i == 0 else (0, 0))))
        for n in names:
            first = [r["start to first result"] for r in runs[n]]
            warm = dict(runs[n][0])
            warm["start to kernel_info_reply"] = statistics.median(r["start to kernel_info_reply"] for r in runs[n])
            warm["start to first result"] = statistics.median(first)
            print(f"{n}: warm start to first result, each run: {', '.join(f'{f:.2f}' for f in first)} s", file=sys.stderr)
            out[n]["warm"] = warm
            if quick:
                del out[n]["cold"]
        return out
    finally:
        for c in caches.values():
            c.cleanup()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="ranch only, warm only, fewer cells")
    args = parser.parse_args()
    other_name = os.environ.get("EVCXR_KERNEL_NAME", "rust")
    names = ["ranch"]
    if not args.quick:
        try:
            KernelSpecManager().get_kernel_spec(other_name)
            names.append(other_name)
        except NoSuchKernel:
            print(f"(no '{other_name}' kernelspec: run bench/install_evcxr_jupyter.sh to compare)")
    figures = cold_and_warm(names, args.quick)
    ranch, evcxr = figures["ranch"], figures.get(other_name)
    print(f"{'metric':42} {'ranch':>9} {'evcxr_jupyter':>14} {'ratio':>7}")
    for when, figures in ranch.items():
        for key, value in figures.items():
            label = f"{when}: {key}"
            if evcxr:
                other = evcxr[when][key]
                print(f"{label:42} {value:8.3f}s {other:13.3f}s {value / other:7.2f}")
            else:
                print(f"{label:42} {value:8.3f}s {'-':>14}")
    if evcxr:
        print("goal: every ratio <= 1.0 (ranch no slower than evcxr_jupyter); warm start to first result: 2 s")


if __name__ == "__main__":
    main()
