"""A local user without the key, on the Jupyter ports: the ports are readable in
/proc/net/tcp, and the client's ZeroMQ identity (its session id) is in every IOPub parent
header. Whatever such a stranger sends, the client keeps every reply, heartbeats go on,
input prompts are answered by the client only, and the kernel holds little for them."""
import os
import socket
import threading
import time

import pytest
import zmq

from conftest import execute, ok, start, stop
from test_hostile import closed_by_peer, rss_kib, zmtp_peer


def vm_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":"))


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def dealer(port, identity=None):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 5000)  # a refused DEALER has no peer: fail, never hang
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


def ping(port, payload=b"ping", timeout_ms=3000):
    """One heartbeat as jupyter_client sends it (REQ); the echo, or None."""
    req = zmq.Context.instance().socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(f"tcp://127.0.0.1:{port}")
    try:
        req.send(payload)
        return req.recv() if req.poll(timeout_ms) else None
    finally:
        req.close()


@pytest.fixture
def own_kernel():
    km, kc = start()
    yield kc
    stop(km, kc)


def test_a_stranger_claiming_the_clients_identity_takes_none_of_its_replies(own_kernel):
    kc = own_kernel
    ok(execute(kc, "0"))
    identity = kc.session.bsession  # what jupyter_client's shell and stdin sockets use
    strangers = [dealer(port, identity) for port in (kc.shell_port, kc.stdin_port, kc.control_port)]
    time.sleep(0.5)  # libzmq connects in the background; let the claims reach the kernel
    for i in range(5):
        assert ok(execute(kc, f"{i} * 2", timeout=60)).result() == str(i * 2)
    assert kc.kernel_info(reply=True, timeout=10)["content"]["status"] == "ok"
    for s in strangers:
        assert not s.poll(100), "the stranger received nothing"
        s.close()


def test_heartbeats_go_on_whatever_a_stranger_sends(own_kernel):
    kc = own_kernel
    port = kc.hb_port
    assert ping(port) == b"ping"
    # One frame, no delimiter: not a REQ's message.
    junk = dealer(port)
    junk.send(b"a single frame")
    # A connection reset in the middle of a message.
    raw = socket.create_connection(("127.0.0.1", port))
    raw.sendall(b"\xff\x00\x00")
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    raw.close()
    # Pings whose echoes are never read, from a peer with a tiny receive buffer; and a
    # ping too large for a heartbeat.
    never_reads = zmtp_peer(port, b"DEALER", rcvbuf=4096)
    for _ in range(2000):
        never_reads.sendall(b"\x01\x00" + b"\x02" + (3000).to_bytes(8, "big") + b"p" * 3000)
    huge = zmtp_peer(port, b"DEALER")
    huge.sendall(b"\x02" + (64 << 20).to_bytes(8, "big") + b"x" * 65536)
    assert closed_by_peer(huge), "a huge ping closes its connection"
    for i in range(5):
        assert ping(port, f"beat {i}".encode(), timeout_ms=2000) == f"beat {i}".encode()
    assert ok(execute(kc, "1 + 1")).result() == "2"
    junk.close()
    never_reads.close()


def test_junk_on_stdin_does_not_answer_the_users_prompt(own_kernel):
    kc = own_kernel
    execute(kc, ':dep evcxr_input = "1"', timeout=300)
    msg_id = kc.execute('let secret = evcxr_input::get_string("secret? ");\nformat!("got {secret}")',
                        allow_stdin=True)
    req = kc.get_stdin_msg(timeout=120)
    assert req["content"]["prompt"] == "secret? "
    junk = dealer(kc.stdin_port)
    junk.send_multipart([b"<IDS|MSG>", b"0" * 64, b"{}", b"{}", b"{}", b"{}"])
    junk.send(b"garbage")
    time.sleep(1)  # the junk reaches the kernel first (nothing to synchronise on)
    kc.input("hunter2")
    reply = kc.get_shell_msg(timeout=60)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "ok", reply["content"]
    run = ok(execute(kc, "secret.clone()"))
    assert run.result() == '"hunter2"', "the client's answer, not the stranger's junk"
    junk.close()


def test_what_strangers_send_costs_the_kernel_little(own_kernel):
    kc = own_kernel
    ok(execute(kc, "0"))
    pid = kc.pid
    rss0, vm0, fds0 = rss_kib(pid), vm_kib(pid, "VmSize"), open_fds(pid)
    held = []
    # 2,000 subscriptions of 1 MiB on IOPub (each used to be stored, and welcomed).
    def send(port, data, peer_type=b"DEALER", times=1):
        try:
            s = zmtp_peer(port, peer_type)
            held.append(s)
            for _ in range(times):
                s.sendall(data)
        except OSError:
            pass  # the kernel closed the connection: refused

    topic = b"\x01" + b"t" * ((1 << 20) - 1)
    send(kc.iopub_port, b"\x02" + len(topic).to_bytes(8, "big") + topic, b"SUB", times=2000)
    # Frames announcing 1 GiB on every channel, a little of each sent (the announced
    # length used to be reserved at once).
    for port in (kc.control_port, kc.shell_port, kc.stdin_port, kc.control_port, kc.shell_port):
        send(port, b"\x02" + (1 << 30).to_bytes(8, "big") + b"x" * 4096)
    # Many strangers each holding most of a 1 MiB message.
    for port in (kc.shell_port, kc.control_port, kc.stdin_port) * 30:
        send(port, b"\x02" + ((1 << 20) - 200).to_bytes(8, "big") + b"y" * ((1 << 20) - 4096))
    # Connections that never say a word (the handshake has a deadline).
    for _ in range(100):
        held.append(socket.create_connection(("127.0.0.1", kc.shell_port)))
    time.sleep(1)
    grown_rss = rss_kib(pid) - rss0
    grown_vm = vm_kib(pid, "VmSize") - vm0
    for _ in range(5):
        assert ok(execute(kc, "6 * 7", timeout=60)).result() == "42", "the client is served meanwhile"
    assert grown_rss < 64 << 10, f"strangers made the kernel hold {grown_rss >> 10} MiB"
    assert grown_vm < 1 << 20, f"strangers made the kernel reserve {grown_vm >> 10} MiB"
    # Silent connections are dropped once their handshake time is up, and refused
    # strangers are gone: what stays is the few that hold the budget (16 MiB).
    bound = fds0 + 24
    deadline = time.monotonic() + 30
    while open_fds(pid) > bound and time.monotonic() < deadline:
        time.sleep(0.5)
    assert open_fds(pid) <= bound, f"{open_fds(pid) - fds0} connections of strangers stay open"
    for s in held:
        s.close()
    assert kc.kernel_info(reply=True, timeout=10)["content"]["status"] == "ok"


def zmtp_message(parts):
    out = b""
    for i, p in enumerate(parts):
        more = 1 if i < len(parts) - 1 else 0
        out += bytes([more, len(p)]) + p if len(p) < 256 else bytes([more | 2]) + len(p).to_bytes(8, "big") + p
    return out


def test_what_the_kernel_signed_sent_back_to_it_is_refused(own_kernel):
    kc = own_kernel
    # Anyone may subscribe to IOPub and read what the kernel signed there.
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{kc.iopub_port}")
    time.sleep(0.5)
    ok(execute(kc, "1"))
    assert sub.poll(10000)
    signed = sub.recv_multipart()[1:]  # without the topic
    stranger = zmtp_peer(kc.shell_port, b"DEALER")
    stranger.sendall(zmtp_message(signed))
    # Not taken as the stranger's credentials: its messages are still limited as a stranger's.
    stranger.sendall(b"\x02" + (2 << 20).to_bytes(8, "big") + b"z" * 4096)
    assert closed_by_peer(stranger), "a 2 MiB message from a stranger is refused"
    assert ok(execute(kc, "2")).result() == "2"
    sub.close()


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_out_of_descriptors_the_kernel_waits_instead_of_spinning(own_kernel):
    import shutil
    import subprocess
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit (util-linux) to lower the kernel's descriptor limit")
    kc = own_kernel
    ok(execute(kc, "0"))
    pid = kc.pid
    limit = subprocess.run(["prlimit", "--pid", str(pid), "--nofile", "--output", "SOFT", "--noheadings"],
                           capture_output=True, text=True, check=True).stdout.strip()
    held = []
    try:
        subprocess.run(["prlimit", "--pid", str(pid), f"--nofile={open_fds(pid) + 2}:"], check=True)
        for _ in range(20):  # queued in the listen backlog: every accept fails with EMFILE
            held.append(socket.create_connection(("127.0.0.1", kc.shell_port)))
        time.sleep(0.5)
        t0 = cpu_ticks(pid)
        time.sleep(3)
        used = (cpu_ticks(pid) - t0) / os.sysconf("SC_CLK_TCK")
        assert used < 0.5, f"the kernel used {used:.1f} s of CPU in 3 s while out of descriptors"
    finally:
        subprocess.run(["prlimit", "--pid", str(pid), f"--nofile={limit}:"], check=True)
        for s in held:
            s.close()
    assert ok(execute(kc, "3 + 4", timeout=60)).result() == "7"


def test_strangers_holding_every_connection_do_not_keep_a_new_client_out(own_kernel):
    kc = own_kernel
    ok(execute(kc, "0"))
    # Strangers that finished the handshake and then wait: more than a socket keeps.
    held = [zmtp_peer(port, b"DEALER") for port in (kc.shell_port, kc.control_port, kc.stdin_port, kc.hb_port)
            for _ in range(70)]
    # A new frontend connects: it sends its first message at once, and is authenticated by it.
    late = kc.__class__(connection_file=kc.connection_file)
    late.load_connection_file()
    late.start_channels()
    try:
        assert late.kernel_info(reply=True, timeout=30)["content"]["status"] == "ok"
        assert ok(execute(late, "5 + 5", timeout=60)).result() == "10"
        assert ping(kc.hb_port, b"new", timeout_ms=5000) == b"new", "a new heartbeat client is answered"
        assert ok(execute(kc, "6 + 6", timeout=60)).result() == "12", "and the first client still is"
    finally:
        late.stop_channels()
        for s in held:
            s.close()


def test_an_interrupt_ends_a_prompt_and_a_late_answer_does_not_answer_the_next(fresh_kernel):
    km, kc = fresh_kernel
    execute(kc, ':dep evcxr_input = "1"', timeout=300)
    code = 'let answer = evcxr_input::get_string("name? ");\nanswer'
    msg_id = kc.execute(code, allow_stdin=True)
    assert kc.get_stdin_msg(timeout=120)["content"]["prompt"] == "name? "
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=30)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"].get("ename") == "Interrupted", reply["content"]  # not an empty answer
    kc.input("too late")  # the answer to the prompt the interrupt ended
    time.sleep(0.5)
    msg_id = kc.execute(code, allow_stdin=True)
    assert kc.get_stdin_msg(timeout=120)["content"]["prompt"] == "name? "
    kc.input("on time")
    reply = kc.get_shell_msg(timeout=60)
    assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["status"] == "ok", reply["content"]
    assert ok(execute(kc, "answer.clone()")).result() == '"on time"'
