"""Fault soak: many launches with random faults, through real kernels (loopback only).

Each launch is one of: a clean run, a rank that panics, a rank killed with SIGKILL, an
interrupt, a timeout, a rank that finishes while others wait for it in a collective. After
each launch the soak checks that the failure was reported as it should be (which rank, what
happened), that no rank process is left, and that the launch's segment is gone. Kernels are
sometimes ended with kill -9 instead of a shutdown; then nothing of theirs may remain.

Prints launches, failures reported correctly, orphaned processes, leaked segments, the
kernels' fd growth and RSS growth (from after a warm-up to the end). Goal: 0 orphans, 0 leaked
segments, no fd growth, flat RSS. `--quick` is the short form the test suite runs."""
import argparse
import glob
import os
import random
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from conftest import (alive, cell_running, execute, interrupt, rank_processes,  # noqa: E402
                      start, stop, wait_for_output)

BODY = """%%ranch {n}
let me = ranch::rank();
if me == victim && fault == 1 { panic!("soak panic"); }
if me == victim && fault == 2 { std::process::Command::new("kill").args(["-9", &std::process::id().to_string()]).status().unwrap(); }
if fault == 3 { println!("up"); std::io::Write::flush(&mut std::io::stdout()).unwrap(); std::thread::sleep(std::time::Duration::from_secs(60)); }
if fault == 4 { std::thread::sleep(std::time::Duration::from_secs(60)); }
let mut v = vec![me as u64 + 1; 16];
if !(fault == 5 && me == victim) { ranch::comm().all_reduce(&mut v, ranch::Op::Sum).map_err(|e| e.message)?; }
v[0]"""
TIMEOUT = "--timeout 0.5 "
FAULTS = ["none", "panic", "kill9", "interrupt", "timeout", "finished-early"]


def kernel_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def kernel_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) * 1024


def segments(pid):
    return glob.glob(f"/dev/shm/ranch-{pid}-*")


def private_dirs(pid):
    return glob.glob(f"{os.environ.get('TMPDIR', '/tmp')}/ranch-session-{pid}-*")


def settle(check, seconds=5):
    deadline = time.monotonic() + seconds
    while check() and time.monotonic() < deadline:
        time.sleep(0.05)
    return check()


def expected(fault, n, victim, run):
    """Whether the launch's outcome says what happened."""
    c = run.reply["content"]
    if fault == "none":
        return c["status"] == "ok" and run.result() == str([n * (n + 1) // 2] * n)
    if fault == "panic":
        return c.get("ename") == "RankFailed" and f"rank {victim} panicked" in c["evalue"] and "soak panic" in c["evalue"]
    if fault == "kill9":
        return c.get("ename") == "RankFailed" and f"rank {victim} was killed by signal 9" in c["evalue"]
    if fault == "timeout":
        return c.get("ename") == "RankFailed" and "timed out" in c["evalue"]
    if fault == "finished-early":
        return (c.get("ename") == "RankFailed" or c["status"] == "ok") and (
            f"rank {victim} finished without joining all_reduce" in (c.get("evalue", "") + run.error_text()))
    raise AssertionError(fault)


def body(n):
    return BODY.replace("{n}", str(n))


def soak(launches, kernels, seed):
    rnd = random.Random(seed)
    totals = {"launches": 0, "reported correctly": 0, "orphaned processes": 0, "leaked segments": 0,
              "kernels": 0, "kernels killed": 0, "left by killed kernels": 0}
    fd_growth, rss_growth, wrong = [], [], []
    per_kernel = max(1, launches // kernels)
    for k in range(kernels):
        km, kc = start()
        totals["kernels"] += 1
        pid = kc.pid
        execute(kc, "let victim: usize = 0;\nlet fault: u8 = 0;", timeout=300)
        # Warm up: build the program once, then measure from a steady state.
        for _ in range(3):
            execute(kc, body(2), timeout=300)
        fds0, rss0 = kernel_fds(pid), kernel_rss(pid)
        for i in range(per_kernel):
            fault = rnd.choice(FAULTS)
            n = rnd.randint(2, 4)
            victim = rnd.randrange(n)
            code = FAULTS.index(fault)
            execute(kc, f"let victim: usize = {victim};\nlet fault: u8 = {code};")
            cell = body(n)
            if fault == "timeout":
                cell = cell.replace(f"%%ranch {n}\n", f"%%ranch {n} {TIMEOUT}\n")
            if fault == "interrupt":
                msg_id = kc.execute(cell)
                wait_for_output(kc, msg_id, "up", timeout=300)
                try:
                    interrupt(km, kc, msg_id)
                    ok_report = True
                except AssertionError:
                    ok_report = False
                # drain the idle of the interrupted cell
                run = None
            else:
                run = execute(kc, cell, timeout=300)
                ok_report = expected(fault, n, victim, run)
            totals["launches"] += 1
            totals["reported correctly"] += ok_report
            if not ok_report:
                wrong.append((fault, n, victim, (run.reply["content"].get("evalue") if run else "interrupt")))
            if settle(lambda: rank_processes(pid)):
                totals["orphaned processes"] += len(rank_processes(pid))
            if settle(lambda: segments(pid)):
                totals["leaked segments"] += len(segments(pid))
        fd_growth.append(kernel_fds(pid) - fds0)
        rss_growth.append(kernel_rss(pid) - rss0)
        if k % 2 == 1:
            # A kernel killed in the middle of a launch: nothing of it may remain.
            msg_id = kc.execute(body(3).replace("fault == 3", "true"))
            wait_for_output(kc, msg_id, "up", timeout=300)
            ranks = list(rank_processes(pid))
            os.kill(pid, signal.SIGKILL)
            totals["kernels killed"] += 1
            settle(lambda: alive(pid))
            left = [r for r in ranks if alive(r)]
            settle(lambda: [r for r in ranks if alive(r)] or segments(pid) or private_dirs(pid), seconds=10)
            left = [r for r in ranks if alive(r)] + segments(pid) + private_dirs(pid)
            totals["left by killed kernels"] += len(left)
            kc.stop_channels()
            km.cleanup_resources()
        else:
            stop(km, kc)
    return totals, fd_growth, rss_growth, wrong


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launches", type=int, default=300)
    parser.add_argument("--kernels", type=int, default=4)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--quick", action="store_true", help="24 launches on 2 kernels (the test suite's form)")
    args = parser.parse_args()
    if args.quick:
        args.launches, args.kernels = 24, 2
    t0 = time.monotonic()
    totals, fd_growth, rss_growth, wrong = soak(args.launches, args.kernels, args.seed)
    print(f"seed {args.seed}, {time.monotonic() - t0:.0f} s")
    for key, value in totals.items():
        print(f"{key:28} {value}")
    print(f"{'fd growth per kernel':28} {fd_growth}")
    print(f"{'RSS growth per kernel (MiB)':28} {[round(r / 2**20, 1) for r in rss_growth]}")
    for w in wrong:
        print("reported wrongly:", w)
    print("goal: every launch reported correctly, 0 orphans, 0 leaked segments, nothing left by killed kernels, "
          "fd growth 0, RSS flat")


if __name__ == "__main__":
    main()
