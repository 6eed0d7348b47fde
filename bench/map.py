"""`ranch::map` against `ranch::shard` on tasks of uneven cost, measured in one `%%ranch`
cell and printed as ratios to the ideal (the total cost divided among the ranks); no
assertions. `--quick` runs a short form (the test suite runs it).

The tasks sleep (1 to 100 ms, cheap ones first, as a sorted work list often is), so ranks do
not compete for cores: what is measured is how the work is spread. `shard` gives each rank
one contiguous block, so the last rank gets the costliest; `map` hands chunks out as ranks
are free. Each figure is the best and the median of several alternating runs.
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from conftest import execute, logged_kernel, ok  # noqa: E402

CELL = """%%ranch {ranks}
use std::time::{{Duration, Instant}};
let costs: Vec<u64> = (0..{tasks}u64).map(|i| 1 + i * 99 / ({tasks} - 1)).collect();
let work = |ms: &u64| {{ std::thread::sleep(Duration::from_millis(*ms)); *ms }};
let c = ranch::comm();
let mut figures = Vec::new();
for _ in 0..{repeat} {{
    c.barrier().unwrap();
    let t = Instant::now();
    let done = ranch::map(&costs, work).unwrap();
    assert_eq!(done, costs);
    let map_s = t.elapsed().as_secs_f64();
    c.barrier().unwrap();
    let t = Instant::now();
    for ms in ranch::shard(&costs) {{ work(ms); }}
    c.barrier().unwrap();
    let shard_s = t.elapsed().as_secs_f64();
    figures.push((map_s, shard_s));
}}
let ideal = costs.iter().sum::<u64>() as f64 / 1000.0 / ranch::world_size() as f64;
if ranch::rank() == 0 {{
    for (m, s) in &figures {{ println!("run {{m:.4}} {{s:.4}} {{ideal:.4}}"); }}
}}
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="few tasks and runs (for the test suite)")
    ap.add_argument("--ranks", type=int, default=4)
    args = ap.parse_args()
    tasks, repeat = (16, 2) if args.quick else (64, 5)
    with logged_kernel() as (kc, _log):
        run = ok(execute(kc, CELL.format(ranks=args.ranks, tasks=tasks, repeat=repeat), timeout=900))
    rows = [line.split()[2:] for line in run.stream().splitlines() if line.startswith("[0] run ")]
    maps, shards, ideal = [float(r[0]) for r in rows], [float(r[1]) for r in rows], float(rows[0][2])
    print(f"{tasks} tasks of 1-100 ms (sorted) on {args.ranks} ranks; ideal {ideal * 1000:.0f} ms; "
          f"best / median of {repeat} alternating runs")
    for name, xs in (("map", maps), ("shard", shards)):
        print(f"{name:6} {min(xs) * 1000:7.0f} ms {statistics.median(xs) * 1000:7.0f} ms   "
              f"x ideal: {min(xs) / ideal:.2f} / {statistics.median(xs) / ideal:.2f}")
    print(f"shard/map (median): {statistics.median(shards) / statistics.median(maps):.2f}  (> 1: map is faster)")


if __name__ == "__main__":
    main()
