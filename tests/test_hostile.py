"""Hostile and faulty input through real clients and raw sockets: every request gets an
answer in bounded time, nothing crashes the kernel, and nothing unauthenticated runs."""
import json
import subprocess
import time

import pytest

from conftest import execute, ok
from test_protocol import VENV_BIN, frames, raw_shell, recv_reply


def answer_within(kc, send, seconds):
    """Sends a request with `send(kc)` and returns its reply content, asserting it came
    within `seconds`."""
    t0 = time.monotonic()
    msg_id = send(kc)
    while True:
        reply = kc.get_shell_msg(timeout=max(0.1, seconds - (time.monotonic() - t0)))
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    assert time.monotonic() - t0 < seconds
    return reply["content"]


def test_deeply_nested_code_is_answered_and_the_kernel_lives(kernel):
    for code in ["{" * 100_000, "(" * 100_000 + ")" * 100_000, "let x: " + "Vec<" * 50_000 + "u8" + ">" * 50_000 + " = 1;",
                 "let x = " + "-" * 100_000 + "1;"]:
        content = answer_within(kernel, lambda kc: kc.is_complete(code), 10)
        assert content["status"] == "unknown", content
    # Within the limit, a real answer.
    assert answer_within(kernel, lambda kc: kc.is_complete("{" * 400), 10)["status"] == "incomplete"
    run = execute(kernel, "let x = " + "[" * 100_000 + "1u8" + "]" * 100_000 + ";", timeout=30)
    assert run.reply["content"]["ename"] == "CellRefused"
    assert "100000 levels" in run.reply["content"]["evalue"] and "Nothing ran" in run.reply["content"]["evalue"]
    assert ok(execute(kernel, "let y = " + "(" * 400 + "7u8" + ")" * 400 + ";\ny", timeout=300)).result() == "7"


def test_pathological_history_searches_are_answered_fast(kernel):
    ok(execute(kernel, "let filler = 1;\n// " + "a" * 20_000))
    for pattern in ["*a*a*a*a*a*a*a*a*a*a*b", "*" * 100_000]:
        content = answer_within(kernel, lambda kc: kc.history(hist_access_type="search", pattern=pattern), 10)
        assert content["status"] == "ok"
    content = answer_within(kernel, lambda kc: kc.history(hist_access_type="search", pattern="a?" * 1000), 10)
    assert content["status"] == "error" and "longer than 1024" in content["evalue"]
    found = answer_within(kernel, lambda kc: kc.history(hist_access_type="search", pattern="let filler*"), 10)
    assert len(found["history"]) == 1


@pytest.mark.parametrize("line,needle", [
    ("%%ranch 2 --timeout 1e300", "at most"),
    ("%%ranch 2 --timeout 1e19", "at most"),
    ("%%ranch 2 --collective-timeout 1e300", "at most"),
    ("%%ranch 2 --world-size 4 --port 9 --base-rank 18446744073709551615", "do not fit"),
])
def test_magic_values_that_overflow_are_usage_errors(kernel, line, needle):
    run = execute(kernel, line + "\n1")
    assert run.reply["content"]["ename"] == "UsageError", run.reply["content"]
    assert needle in run.reply["content"]["evalue"]
    assert ok(execute(kernel, "2 + 2")).result() == "4", "the session goes on"


def test_a_replayed_message_is_dropped(kernel, tmp_path):
    marker = tmp_path / "runs"
    sock = raw_shell(kernel)
    code = f'std::fs::OpenOptions::new().create(true).append(true).open("{marker}").unwrap();\n' \
           f'{{ use std::io::Write; std::fs::OpenOptions::new().append(true).open("{marker}").unwrap().write_all(b"x").unwrap(); }}'
    _, msg = frames(kernel.session.key, "execute_request", {"code": code, "silent": False, "store_history": True})
    sock.send_multipart(msg)
    header, content = recv_reply(sock, 60000)
    assert content["status"] == "ok"
    sock.send_multipart(msg)  # the same bytes, signature included
    assert recv_reply(sock, 3000) is None
    assert marker.read_text() == "x", "the replay did not run"
    # A new message (new id, new signature) still runs.
    _, msg = frames(kernel.session.key, "execute_request", {"code": code, "silent": False, "store_history": True})
    sock.send_multipart(msg)
    assert recv_reply(sock, 60000)[1]["status"] == "ok"
    assert marker.read_text() == "xx"
    sock.close()


@pytest.mark.parametrize("ip", ["0.0.0.0", "*"])
def test_an_empty_key_off_loopback_is_refused(tmp_path, ip):
    conn = tmp_path / "conn.json"
    conn.write_text(json.dumps({"ip": ip, "transport": "tcp", "shell_port": 0, "iopub_port": 0, "stdin_port": 0,
                                "control_port": 0, "hb_port": 0, "key": "", "signature_scheme": "hmac-sha256"}))
    proc = subprocess.run([VENV_BIN / "ranch-kernel", "--connection-file", conn], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode != 0
    assert "empty key" in proc.stderr and "127.0.0.1" in proc.stderr


# ZMTP 3.0 by hand, to be a peer no library would let us be.
def zmtp_peer(port, socket_type, rcvbuf=None):
    import socket
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32)
    recv_exact(s, 64)  # the kernel's greeting
    props = b"\x0bSocket-Type" + len(socket_type).to_bytes(4, "big") + socket_type
    body = b"\x05READY" + props
    s.sendall(bytes([0x04, len(body)]) + body)
    flags, size = recv_exact(s, 2)  # the kernel's READY
    recv_exact(s, size if not flags & 0x02 else int.from_bytes(bytes([size]) + recv_exact(s, 7), "big"))
    return s


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def closed_by_peer(s, timeout=10):
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except OSError:
        return False


def test_a_frame_announcing_two_to_the_fifty_bytes_is_refused(kernel):
    ok(execute(kernel, "0"))  # started: rust-analyzer's memory is in the baseline
    before = rss_kib(kernel.pid)
    for handshake in (False, True):
        if handshake:
            s = zmtp_peer(kernel.shell_port, b"DEALER")
        else:
            import socket
            s = socket.create_connection(("127.0.0.1", kernel.shell_port), timeout=10)
            s.sendall(b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32)
        s.sendall(b"\x02" + (1 << 50).to_bytes(8, "big"))
        assert closed_by_peer(s), "the kernel drops the connection"
        s.close()
    assert ok(execute(kernel, "1 + 2")).result() == "3"
    assert rss_kib(kernel.pid) - before < 100_000


def test_a_message_streamed_past_the_limit_is_cut_off(tmp_path):
    from conftest import start, stop
    km, kc = start(env=dict(__import__("os").environ, RANCH_MAX_MESSAGE_BYTES=str(8 << 20)))
    try:
        ok(execute(kc, "0"))
        before = rss_kib(kc.pid)
        s = zmtp_peer(kc.shell_port, b"DEALER")
        chunk = b"\x03" + (1 << 20).to_bytes(8, "big") + b"x" * (1 << 20)  # long frame, more follows
        sent = 0
        try:
            for _ in range(64):
                s.sendall(chunk)
                sent += 1
        except (ConnectionResetError, BrokenPipeError):
            pass
        assert closed_by_peer(s)
        assert sent < 64, "cut off near 8 MiB, not after 64"
        assert ok(execute(kc, "40 + 2")).result() == "42"
        assert rss_kib(kc.pid) - before < 100_000
    finally:
        stop(km, kc)


def test_a_subscriber_that_never_reads_does_not_stop_the_others(kernel):
    stuck = zmtp_peer(kernel.iopub_port, b"SUB", rcvbuf=4096)
    stuck.sendall(b"\x00\x01\x01")  # subscribe to everything, then never read again
    time.sleep(0.5)  # the subscription reaches the kernel (nothing to synchronise on)
    t0 = time.monotonic()
    run = ok(execute(kernel, 'for i in 0..20000 { println!("line {i} {}", "x".repeat(200)); }', timeout=120))
    assert run.stream().count("\n") == 20000
    assert time.monotonic() - t0 < 60
    assert ok(execute(kernel, "1")).result() == "1"
    stuck.close()


def test_printed_protocol_lines_do_not_steer_the_kernel(kernel):
    run = ok(execute(kernel, 'println!("EVCXR_EXECUTION_COMPLETE");\nprintln!("after");\n5'))
    assert run.stream() == "EVCXR_EXECUTION_COMPLETE\nafter\n"
    assert run.result() == "5"
    assert ok(execute(kernel, "1 + 1")).result() == "2", "later cells are not shifted"
    lookalike = "RANCH_CELL_DONE_" + "0" * 32
    run = ok(execute(kernel, f'print!("x{lookalike}");\nprint!("EVCXR_EXECUTION_COMPLETE")'))
    assert run.stream() == f"x{lookalike}EVCXR_EXECUTION_COMPLETE"
    assert ok(execute(kernel, "2 + 2")).result() == "4"


# --- launches, rendezvous, shared memory ---------------------------------------------

def as_nobody(*cmd):
    return subprocess.run(["runuser", "-u", "nobody", "--", *cmd], capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="needs root to act as another user")
def test_another_user_reads_nothing_of_a_launch():
    import glob
    import os
    from conftest import cell_running, interrupt, rank_processes
    code = '%%ranch 2\nranch::comm().barrier().unwrap();\nprintln!("ready");\nstd::thread::sleep(std::time::Duration::from_secs(120));'
    with cell_running(code, "ready") as (km, kc, msg_id):
        segments = glob.glob(f"/dev/shm/ranch-{kc.pid}-*")
        assert len(segments) == 1
        rank = next(iter(rank_processes(kc.pid)))
        with open(f"/proc/{rank}/environ", "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        assert env[b"RANCH_TOKEN"].decode() not in segments[0], "the segment's name gives nothing away"
        assert os.stat(segments[0]).st_mode & 0o777 == 0o600
        assert as_nobody("cat", segments[0]).returncode != 0
        private = glob.glob(f"{os.environ.get('TMPDIR', '/tmp')}/ranch-session-{kc.pid}-*")
        assert len(private) == 1 and os.stat(private[0]).st_mode & 0o777 == 0o700
        for probe in (["ls", private[0]], ["cat", f"{private[0]}/output.sock"]):
            assert as_nobody(*probe).returncode != 0, probe
        interrupt(km, kc, msg_id)


def test_a_rank_cannot_be_registered_twice(kernel):
    code = """%%ranch 2
use std::io::{Read, Write};
ranch::comm().barrier().unwrap();
let addr = format!("{}:{}", std::env::var("MASTER_ADDR").unwrap(), std::env::var("MASTER_PORT").unwrap());
let mut s = std::net::TcpStream::connect(addr).unwrap();
write!(s, "RANCH1 {} {}\\n", std::env::var("RANCH_TOKEN").unwrap(), ranch::rank()).unwrap();
s.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
let mut got = Vec::new();
let _ = s.read_to_end(&mut got);
let mut v = vec![1u8; 3];
ranch::comm().all_reduce(&mut v, ranch::Op::Sum).unwrap();
(got.len(), v[0])"""
    assert ok(execute(kernel, code)).result() == "[(0, 2), (0, 2)]"


def test_a_stranger_flood_does_not_stop_the_ranks(kernel):
    import socket
    import threading
    code = """%%ranch 2
use std::io::Write;
println!("port {}", std::env::var("MASTER_PORT").unwrap());
std::io::stdout().flush().unwrap();
std::thread::sleep(std::time::Duration::from_secs(3));
let mut v = vec![ranch::rank() as u32 + 1; 2];
ranch::comm().all_reduce(&mut v, ranch::Op::Sum).unwrap();
v[0]"""
    msg_id = kernel.execute(code)
    from conftest import wait_for_output
    port = None
    deadline = time.monotonic() + 180
    seen = ""
    while port is None and time.monotonic() < deadline:
        msg = kernel.get_iopub_msg(timeout=180)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            seen += msg["content"]["text"]
            if "port " in seen:
                port = int(seen.split("port ")[1].split()[0])
    socks = []

    def flood():
        for _ in range(500):
            try:
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                pass
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.sendall(b"RANCH1 " + b"x" * (8 << 20))
        except OSError:
            pass

    t = threading.Thread(target=flood)
    t.start()
    t.join(timeout=60)
    with open(f"/proc/{kernel.pid}/status") as f:
        threads = next(int(l.split()[1]) for l in f if l.startswith("Threads:"))
    assert threads < 100, f"{threads} threads"
    reply = kernel.get_shell_msg(timeout=120)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kernel.get_shell_msg(timeout=120)
    assert reply["content"]["status"] == "ok", reply["content"]
    for s in socks:
        s.close()


def test_strangers_at_the_channel_get_nothing_and_do_not_stop_the_ranks(kernel):
    """The channel that carries variables and results: strangers fill its connection slots,
    send garbage, a wrong token and an endless line; the ranks still fetch their variable and
    hand in their values (they try again while the slots are taken), and nobody but them
    gets a byte."""
    import socket
    ok(execute(kernel, "let secret_input = 41u64;"))
    code = """%%ranch 2 --out got
use std::io::Write;
println!("channel {}", std::env::var("RANCH_CHANNEL").unwrap());
std::io::stdout().flush().unwrap();
std::thread::sleep(std::time::Duration::from_secs(2));
secret_input + 1"""
    msg_id = kernel.execute(code)
    deadline, seen, addr = time.monotonic() + 180, "", None
    while addr is None and time.monotonic() < deadline:
        msg = kernel.get_iopub_msg(timeout=180)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            seen += msg["content"]["text"]
            if "channel " in seen and "\n" in seen.split("channel ", 1)[1]:
                addr = seen.split("channel ", 1)[1].split()[0]
    host, port = addr.rsplit(":", 1)
    answers, socks = [], []
    for hello in [b"garbage\n", b"RANCH-CHANNEL1 wrongtoken GET secret_input\n",
                  b"RANCH-CHANNEL1 " + b"x" * (1 << 20), b"\xff\x00\x01" * 1000]:
        s = socket.create_connection((host, int(port)), timeout=10)
        try:
            s.sendall(hello)
            s.shutdown(socket.SHUT_WR)
            answers.append(s.recv(65536))
        except OSError:
            answers.append(b"")
        s.close()
    for _ in range(100):  # idle strangers take every slot for a while
        try:
            socks.append(socket.create_connection((host, int(port)), timeout=2))
        except OSError:
            pass
    assert answers == [b""] * 4, answers
    reply = kernel.get_shell_msg(timeout=120)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kernel.get_shell_msg(timeout=120)
    for s in socks:
        s.close()
    assert reply["content"]["status"] == "ok", reply["content"]
    assert ok(execute(kernel, "got")).result() == "[42, 42]"


@pytest.mark.parametrize("addr", ["::1", "localhost", "HOSTNAME"])
def test_other_addresses_work_and_the_cell_ends(kernel, addr):
    import socket
    if addr == "HOSTNAME":
        addr = socket.gethostname()
    if addr == "::1":
        try:
            socket.socket(socket.AF_INET6).bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
    code = f"%%ranch 2 --addr {addr}\nlet mut v = vec![1u8];\nranch::comm().all_reduce(&mut v, ranch::Op::Sum).unwrap();\nv[0]"
    t0 = time.monotonic()
    run = ok(execute(kernel, code, timeout=120))
    assert run.result() == "[2, 2]"
    assert time.monotonic() - t0 < 60


# --- what ranks leave behind, and how much they write -------------------------------

def processes_running(needle):
    from conftest import processes
    return [p for p, (_, cmd) in processes().items() if needle in cmd]


def gone_soon(needle, seconds=5):
    """Whether no process runs `needle` within `seconds`."""
    deadline = time.monotonic() + seconds
    while processes_running(needle) and time.monotonic() < deadline:
        time.sleep(0.1)
    return processes_running(needle) == []


def test_a_process_holding_a_ranks_pipes_does_not_keep_the_cell_open(kernel):
    code = ('%%ranch 2\nstd::process::Command::new("setsid").args(["sleep", "987.654"]).spawn().unwrap();\n'
            'std::thread::sleep(std::time::Duration::from_millis(200));\nranch::rank()')
    t0 = time.monotonic()
    run = ok(execute(kernel, code, timeout=120))
    assert run.result() == "[0, 1]"
    assert time.monotonic() - t0 < 30
    assert gone_soon("sleep 987.654"), "what the ranks started in sessions of their own is gone"


def test_a_process_holding_a_ranks_pipes_does_not_block_an_interrupt():
    from conftest import cell_running, interrupt
    code = ('%%ranch 2\nstd::process::Command::new("setsid").args(["sleep", "987.655"]).spawn().unwrap();\n'
            'println!("up");\nstd::thread::sleep(std::time::Duration::from_secs(300));')
    with cell_running(code, "up") as (km, kc, msg_id):
        interrupt(km, kc, msg_id)
        assert gone_soon("sleep 987.655")


def test_grouped_output_is_capped_and_says_what_was_dropped(kernel):
    ok(execute(kernel, "0"))
    before = rss_kib(kernel.pid)
    code = ('%%ranch 2 --group-outputs rank\nlet line = "y".repeat(1000);\n'
            'for _ in 0..40_000 { println!("{line}"); }')
    run = ok(execute(kernel, code, timeout=300))
    out = run.stream()
    assert len(out) < 2 * (17 << 20), len(out)
    notes = [l for l in run.stream("stderr").splitlines() if "not kept" in l]
    assert len(notes) == 2 and "ranch keeps 16 MiB of a rank's output" in notes[0], notes
    assert rss_kib(kernel.pid) - before < 300_000


def test_a_huge_line_without_newline_is_read_in_linear_time(kernel):
    code = '%%ranch 1\nprint!("{}", "x".repeat(64 << 20));'
    t0 = time.monotonic()
    run = ok(execute(kernel, code, timeout=300))
    assert time.monotonic() - t0 < 60
    pieces = run.stream().splitlines()
    assert len(pieces) == 64 and all(p == "[0] " + "x" * (1 << 20) for p in pieces)


def test_a_flooding_rank_does_not_grow_the_kernel(kernel):
    import threading
    ok(execute(kernel, "0"))
    before = rss_kib(kernel.pid)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(kernel.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        run = ok(execute(kernel, '%%ranch 2\nlet s = "z".repeat(200);\nfor i in 0..300_000 { println!("{i} {s}"); }',
                         timeout=600))
    finally:
        done.set()
        sampler.join()
    assert run.stream().count("\n") == 600_000
    assert peak[0] - before < 300_000, f"the kernel grew by {(peak[0] - before) // 1024} MiB"


# --- when the kernel is killed ------------------------------------------------------

def kernel_leftovers(pid):
    import glob
    import os
    return (glob.glob(f"/dev/shm/ranch-{pid}-*")
            + glob.glob(f"{os.environ.get('TMPDIR', '/tmp')}/ranch-session-{pid}-*"))


def wait_gone(check, seconds=10):
    deadline = time.monotonic() + seconds
    while check() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not check()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_nothing_is_left_when_the_kernel_is_killed_during_a_launch(how):
    import os
    import signal
    from conftest import cell_running, rank_processes
    code = ('%%ranch 2\nranch::comm().barrier().unwrap();\nprintln!("up");\n'
            'std::thread::sleep(std::time::Duration::from_secs(300));')
    with cell_running(code, "up") as (km, kc, msg_id):
        ranks = list(rank_processes(kc.pid))
        assert len(ranks) == 2 and kernel_leftovers(kc.pid)
        pid = kc.pid
        os.kill(pid, getattr(signal, how))
        assert wait_gone(lambda: __import__("conftest").alive(pid)), "the kernel ended"
        assert wait_gone(lambda: any(__import__("conftest").alive(r) for r in ranks))
        assert wait_gone(lambda: kernel_leftovers(pid)), kernel_leftovers(pid)


def test_a_rank_build_does_not_outlive_a_killed_kernel(tmp_path):
    import os
    import signal
    from conftest import alive, descendants, local_crate, start, stop
    km, kc = start()
    try:
        name, dep = local_crate(tmp_path, build_rs="fn main() { std::thread::sleep(std::time::Duration::from_secs(600)); }\n")
        msg_id = kc.execute(f"%%ranch 2\n{dep}\n{name}::answer()")
        deadline = time.monotonic() + 180
        builders = []
        while not builders and time.monotonic() < deadline:
            builders = [p for p, c in descendants(kc.pid).items() if "build-script-build" in c]
            time.sleep(0.2)
        assert builders, "the build script runs"
        pid = kc.pid
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(lambda: any(alive(b) for b in builders)), "the janitor stopped the build"
        assert wait_gone(lambda: kernel_leftovers(pid))
    finally:
        kc.stop_channels()
        km.cleanup_resources()


def test_a_token_published_by_a_dead_kernel_is_not_used(tmp_path):
    import os
    from conftest import start, stop
    runtime = tmp_path / "run"
    (runtime / "ranch" / "groups").mkdir(parents=True)
    port = 1 + os.getpid() % 60000
    child = subprocess.Popen(["true"])
    child.wait()
    (runtime / "ranch" / "groups" / f"{port}.token").write_text(f"{child.pid} deadbeef")
    km, kc = start(env=dict(os.environ, XDG_RUNTIME_DIR=str(runtime)))
    try:
        run = execute(kc, f"%%ranch 1 --world-size 2 --base-rank 1 --port {port}\n1", timeout=120)
        assert run.reply["content"]["ename"] == "UsageError"
        assert "no running kernel hosts a group" in run.reply["content"]["evalue"]
    finally:
        stop(km, kc)


def test_without_home_the_cache_is_the_users_own():
    import os
    import pwd
    from conftest import start, stop
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_CACHE_HOME", "RANCH_CACHE_DIR")}
    km, kc = start(env=env)
    try:
        where = ok(execute(kc, 'std::env::var("EVCXR_TMPDIR").unwrap()', timeout=300)).result().strip('"')
        assert where.startswith(pwd.getpwuid(os.getuid()).pw_dir + "/.cache/ranch/work/"), where
    finally:
        stop(km, kc)
