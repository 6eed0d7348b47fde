"""%%ranch costs, measured in one run and printed as ratios (no assertions):

- `%%ranch 1` vs `%%ranch 8` on the same new cell, end to end, build included (goal:
  ratio <= 1.2: the cell is compiled once, whatever N is), and with the artifact reused;
- fan-out overhead, excluding the build: spawn + supervise + collect + merge of 8 ranks
  (goal: <= 20 ms), from the kernel's own phase log;
- the build of a `%%ranch` cell vs the same body as a plain evcxr cell.
"""
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from conftest import logged_kernel, timed  # noqa: E402

BODY = 'let v: Vec<u64> = (0..100_000).collect();\nv.iter().sum::<u64>() + ranch::rank() as u64'


def phases(log_path, n):
    text = open(log_path).read()
    return [tuple(map(float, m)) for m in re.findall(rf"%%ranch {n}: export (\S+)s build (\S+)s fanout (\S+)s", text)]


def main():
    with logged_kernel() as (kc, log):
        timed(kc, "%%ranch 1\n0")  # the session gets the runtime crate: not what we measure
        # Build of a new %%ranch cell vs the same body as a plain cell (each body new to its path).
        plain_build = timed(kc, BODY.replace("100_000", "100_001"))
        ranch_build = timed(kc, "%%ranch 1\n" + BODY.replace("100_000", "100_002"))
        # A new cell each time (so it is built), 1 rank vs 8 ranks.
        cold1 = statistics.median(timed(kc, "%%ranch 1\n" + BODY.replace("100_000", str(200_000 + i))) for i in range(3))
        cold8 = statistics.median(timed(kc, "%%ranch 8\n" + BODY.replace("100_000", str(300_000 + i))) for i in range(3))
        # Same cell, artifact reused: end to end for 1 and 8 ranks.
        one = statistics.median(timed(kc, "%%ranch 1\n" + BODY) for _ in range(5))
        eight = statistics.median(timed(kc, "%%ranch 8\n" + BODY) for _ in range(5))
        fan8 = statistics.median(p[2] for p in phases(log, 8)[-5:])
        fan1 = statistics.median(p[2] for p in phases(log, 1)[-5:])
        help_rt = statistics.median(timed(kc, "%%ranch --help") for _ in range(5))
    if os.environ.get("RANCH_BENCH_PHASES"):
        print(open(log).read())
    print(f"{'measure':48} {'value':>10}")
    print(f"{'%%ranch 1, new cell (built; median of 3)':48} {cold1 * 1000:8.1f}ms")
    print(f"{'%%ranch 8, new cell (built; median of 3)':48} {cold8 * 1000:8.1f}ms")
    print(f"{'  ratio 8/1 (goal <= 1.2)':48} {cold8 / cold1:10.2f}")
    print(f"{'%%ranch 1, same cell again (no build; median 5)':48} {one * 1000:8.1f}ms")
    print(f"{'%%ranch 8, same cell again (no build; median 5)':48} {eight * 1000:8.1f}ms")
    print(f"{'fan-out of 8 ranks, no build (goal <= 20 ms)':48} {fan8 * 1000:8.1f}ms")
    print(f"{'fan-out of 1 rank, no build':48} {fan1 * 1000:8.1f}ms")
    print(f"{'kernel round trip (%%ranch --help)':48} {help_rt * 1000:8.1f}ms")
    print(f"{'new body as a plain evcxr cell':48} {plain_build * 1000:8.1f}ms")
    print(f"{'new body as a %%ranch 1 cell (export+build+run)':48} {ranch_build * 1000:8.1f}ms")
    print(f"{'  ratio %%ranch/plain':48} {ranch_build / plain_build:10.2f}")


if __name__ == "__main__":
    main()
