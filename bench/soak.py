"""Fault soak: many launches with random faults, through real kernels (loopback only).

Each launch is one of: a clean run, a rank that panics, a rank killed with SIGKILL, an
interrupt, a timeout, a rank that finishes while others wait for it in a collective. After
each launch the soak checks that the failure was reported as it should be (which rank, what
happened), that no rank process is left, and that the launch's segment is gone. Kernels are
sometimes ended with kill -9 instead of a shutdown; then nothing of theirs may remain.

Prints launches, failures reported correctly, orphaned processes, leaked segments, the
kernels' fd growth and RSS growth (from after a warm-up to the end). Goal: 0 orphans, 0 leaked
segments, no fd growth, flat RSS. `--quick` is the short form the test suite runs.

`--strangers SECONDS`: instead, one kernel and a client that runs cells (plain and
`%%ranch 2`) while strangers without the key send mixed hostile traffic to every Jupyter
port (the client's identity claimed, junk frames, frames announcing 1 GiB, long
subscriptions, silent and reset connections, pings never read). Prints the replies the
client got of those it asked for, and the kernel's RSS and fd count over the run. Goal:
every reply, RSS within 64 MiB of the start, fds back where they were."""
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


def stranger_traffic(kc, stop_at, counts):
    """One stranger's loop until `stop_at`: a random hostile act on a random port."""
    import socket
    import zmq
    from test_hostile import zmtp_peer
    rnd = random.Random()
    ports = [kc.shell_port, kc.control_port, kc.stdin_port, kc.iopub_port, kc.hb_port]
    ctx = zmq.Context.instance()

    def dealer(port, identity=None):
        # A send never blocks the stranger: a DEALER whose connection the kernel refused has
        # no peer, and would wait for one forever.
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.setsockopt(zmq.SNDTIMEO, 200)
        if identity is not None:
            d.setsockopt(zmq.IDENTITY, identity)
        d.connect(f"tcp://127.0.0.1:{port}")
        return d

    held = []
    while time.monotonic() < stop_at:
        port = rnd.choice(ports)
        act = rnd.randrange(7)
        try:
            if act == 0:  # claim the client's identity
                d = dealer(port, kc.session.bsession)
                held.append(d)
                d.send_multipart([b"<IDS|MSG>", b"0" * 64, b"{}", b"{}", b"{}", b"{}"])
            elif act == 1:  # junk: one frame, no delimiter
                d = dealer(port)
                held.append(d)
                d.send(os.urandom(rnd.randrange(1, 4096)))
            elif act == 2:  # a frame announcing 1 GiB, then a little of it
                s = zmtp_peer(port, b"SUB" if port == kc.iopub_port else b"DEALER")
                s.sendall(b"\x02" + (1 << 30).to_bytes(8, "big") + b"x" * 65536)
                held.append(s)
            elif act == 3:  # long subscriptions
                s = zmtp_peer(kc.iopub_port, b"SUB")
                topic = b"\x01" + b"t" * (1 << 16)
                for _ in range(16):
                    s.sendall(b"\x02" + len(topic).to_bytes(8, "big") + topic)
                held.append(s)
            elif act == 4:  # a connection that never says a word
                held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            elif act == 5:  # a reset in the middle of a greeting
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(b"\xff\x00")
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.close()
            else:  # pings whose echoes are never read
                s = zmtp_peer(kc.hb_port, b"DEALER", rcvbuf=4096)
                for _ in range(200):
                    s.sendall(b"\x01\x00\x02" + (2000).to_bytes(8, "big") + b"p" * 2000)
                held.append(s)
            counts["acts"] += 1
        except (OSError, zmq.ZMQError):  # closed, or (a DEALER the kernel refused) no peer to send to
            counts["refused"] += 1
        if len(held) > 200:  # let go of the oldest, as strangers come and go
            old = held.pop(0)
            old.close()
        time.sleep(rnd.uniform(0, 0.02))
    for h in held:
        h.close()


def heartbeat_echoes(port):
    """Whether a new client's ping on the heartbeat port comes back (a Jupyter server restarts
    a kernel whose heartbeat stops, and the user loses the session)."""
    import zmq
    s = zmq.Context.instance().socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 5000)
    s.connect(f"tcp://127.0.0.1:{port}")
    try:
        s.send(b"ping")
        return s.recv() == b"ping"
    except zmq.ZMQError:
        return False
    finally:
        s.close()


def stranger_soak(seconds, strangers=4):
    import threading
    km, kc = start()
    pid = kc.pid
    try:
        execute(kc, "0", timeout=300)
        execute(kc, "%%ranch 2\nranch::rank()", timeout=300)  # built once: later runs are launches
        fds0, rss0 = kernel_fds(pid), kernel_rss(pid)
        counts = {"acts": 0, "refused": 0}
        stop_at = time.monotonic() + seconds
        threads = [threading.Thread(target=stranger_traffic, args=(kc, stop_at, counts), daemon=True)
                   for _ in range(strangers)]
        for t in threads:
            t.start()
        asked = answered = 0
        rss_peak = rss0
        while time.monotonic() < stop_at:
            asked += 1
            code = "%%ranch 2\nranch::rank()" if asked % 4 == 0 else f"{asked} + 1"
            want = "[0, 1]" if asked % 4 == 0 else str(asked + 1)
            try:
                run = execute(kc, code, timeout=60)
                answered += run.reply["content"]["status"] == "ok" and run.result() == want
            except Exception as e:  # a lost reply: count it, go on
                print("lost:", code.splitlines()[0], type(e).__name__)
            rss_peak = max(rss_peak, kernel_rss(pid))
        for t in threads:
            t.join()
        settle(lambda: kernel_fds(pid) > fds0, seconds=15)
        fd_growth = kernel_fds(pid) - fds0
        answers = kc.kernel_info(reply=True, timeout=10)["content"]["status"] == "ok"
        return {"seconds": seconds, "stranger acts": counts["acts"], "acts refused by the kernel": counts["refused"],
                "cells asked": asked, "cells answered right": answered, "kernel still answers": answers,
                "heartbeat still echoes": heartbeat_echoes(kc.hb_port),
                "RSS growth at peak (MiB)": round((rss_peak - rss0) / 2**20, 1),
                "RSS growth at end (MiB)": round((kernel_rss(pid) - rss0) / 2**20, 1),
                "fd growth at end": fd_growth}
    finally:
        stop(km, kc)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launches", type=int, default=300)
    parser.add_argument("--kernels", type=int, default=4)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--quick", action="store_true", help="24 launches on 2 kernels (the test suite's form)")
    parser.add_argument("--strangers", type=float, metavar="SECONDS",
                        help="hostile traffic from strangers on every Jupyter port for this long, while a client runs cells")
    args = parser.parse_args()
    if args.strangers:
        for key, value in stranger_soak(args.strangers).items():
            print(f"{key:28} {value}")
        print("goal: every cell answered right, the heartbeat echoes, RSS growth < 64 MiB, fd growth 0")
        return
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
