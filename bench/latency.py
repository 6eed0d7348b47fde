"""Plain-cell latency of the ranch kernel, and of evcxr_jupyter when its kernelspec
(`rust`, or $EVCXR_KERNEL_NAME) is installed, measured in one run. Prints figures and ratios;
asserts nothing (speed goals live here, not in tests)."""
import os
import statistics
import sys
import time

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_client.manager import KernelManager

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from conftest import execute  # noqa: E402


def measure(name):
    km = KernelManager(kernel_name=name)
    t0 = time.monotonic()
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=300)
        start = time.monotonic() - t0

        def timed(code):
            t = time.monotonic()
            run = execute(kc, code, timeout=300)
            assert run.reply["content"]["status"] == "ok", run.reply["content"]
            return time.monotonic() - t

        first = timed("1 + 1")
        trivial = statistics.median(timed(f"{i} + 1") for i in range(10))
        timed("fn add_one(x: i64) -> i64 { x + 1 }")
        call = statistics.median(timed(f"add_one({i})") for i in range(5))
        return {"start to kernel_info_reply": start, "first trivial cell": first,
                "median trivial cell (10)": trivial, "cell calling an earlier fn": call}
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def main():
    ranch = measure("ranch")
    other_name = os.environ.get("EVCXR_KERNEL_NAME", "rust")
    try:
        KernelSpecManager().get_kernel_spec(other_name)
        evcxr = measure(other_name)
    except NoSuchKernel:
        evcxr = None
    print(f"{'metric':32} {'ranch':>9} {'evcxr_jupyter':>14} {'ratio':>7}")
    for key, value in ranch.items():
        if evcxr:
            print(f"{key:32} {value:8.3f}s {evcxr[key]:13.3f}s {value / evcxr[key]:7.2f}")
        else:
            print(f"{key:32} {value:8.3f}s {'(not installed)':>14}")
    if evcxr:
        print("goal: every ratio <= 1.0 (ranch no slower than evcxr_jupyter)")


if __name__ == "__main__":
    main()
