"""Every TCP port that ranch opens for its ranks (a launch's channel and rendezvous, a pool's
hub, address book and mesh) is reachable by anyone on the machine or the network. Strangers
that connect to every one of them and dribble a byte every few seconds (never finishing a
hello) must not cost the ranks their wait: the cells finish with the right values in about
their usual time, and no stranger gets a byte. And a link to another host notices when that
host vanishes without a word (no reset ever comes)."""
from __future__ import annotations

import os
import select
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import descendants, execute, ok, start, stop, wait_for_output
from simhosts import simulated_hosts
from test_mpi_backend import needs_mpi_build

# More strangers per port than a service keeps connections (64): they must not crowd out ranks.
PER_PORT = 80
# A byte every 2.5 s: more often than the 5 s a service gives a hello, so a deadline per read
# would never end one of them.
EVERY = 2.5
# Processes of the tree whose ports are not ranch's (MPI's own daemons).
NOT_RANCH = {"mpirun", "mpiexec", "orterun", "orted", "prte", "prterun", "prted", "srun"}


def _address(hex_addr: str) -> tuple[str, int]:
    """An address of /proc/net/tcp{,6} (each 32-bit word in host order) as (ip, port)."""
    ip_hex, port_hex = hex_addr.split(":")
    raw = b"".join(struct.pack("=I", int(ip_hex[i:i + 8], 16)) for i in range(0, len(ip_hex), 8))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    ip = socket.inet_ntop(family, raw)
    ip = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(ip, ip)
    return ip, int(port_hex, 16)


def listening(root: int) -> set[tuple[str, int]]:
    """(ip, port) of every TCP socket listening in `root`'s process tree, in whatever network
    namespace each process is (a simulated host's ranks are in theirs)."""
    pids = [root, *descendants(root)]
    inodes, namespaces = set(), {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() in NOT_RANCH:
                    continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
            namespaces.setdefault(os.readlink(f"/proc/{pid}/ns/net"), pid)
        except OSError:
            continue
    found = set()
    for pid in namespaces.values():
        for table in ("tcp", "tcp6"):
            try:
                with open(f"/proc/{pid}/net/{table}") as f:
                    rows = f.read().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                cols = row.split()
                if cols[3] == "0A" and cols[9] in inodes:  # LISTEN, and one of the tree's
                    found.add(_address(cols[1]))
    return found


class Strangers:
    """Keeps PER_PORT connections on every port the kernel's tree listens on (but those it
    listened on before), dribbling one byte every EVERY seconds on each; a connection the
    service closes is opened again."""

    def __init__(self, kernel_pid: int):
        self.root = kernel_pid
        self.before = listening(kernel_pid)
        self.ports: set[tuple[str, int]] = set()  # listening now
        self.attacked: set[tuple[str, int]] = set()  # ever
        self.opened = 0
        self.received = 0  # bytes any stranger got: must stay 0
        self.peak_threads = self.peak_fds = 0  # the kernel's, while strangers are on it
        self.socks: dict[int, tuple[socket.socket, tuple[str, int], float]] = {}
        self.done = threading.Event()
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self._guarded, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join(timeout=30)
        for s, _, _ in self.socks.values():
            s.close()
        if self.failed is not None:
            raise self.failed

    def _guarded(self):
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 - raised again in the test's thread
            self.failed = e

    def _open(self, addr, now):
        try:
            s = socket.create_connection(addr, timeout=1)
        except OSError:
            return False
        s.setblocking(False)
        self.socks[s.fileno()] = (s, addr, now)
        self.opened += 1
        return True

    def _measure(self):
        try:
            with open(f"/proc/{self.root}/status") as f:
                threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
            fds = len(os.listdir(f"/proc/{self.root}/fd"))
        except OSError:
            return
        self.peak_threads, self.peak_fds = max(self.peak_threads, threads), max(self.peak_fds, fds)

    def _run(self):
        last_scan = 0.0
        while not self.done.is_set():
            now = time.monotonic()
            if now - last_scan > 0.2:
                self.ports |= listening(self.root) - self.before
                self.attacked |= self.ports
                last_scan = now
                self._measure()
            counts = {}
            for _, addr, _ in self.socks.values():
                counts[addr] = counts.get(addr, 0) + 1
            for addr in list(self.ports):
                for _ in range(PER_PORT - counts.get(addr, 0)):
                    if not self._open(addr, now):
                        self.ports.discard(addr)  # nothing listens there any more
                        break
            poller = select.poll()
            for fd, (s, addr, sent) in list(self.socks.items()):
                poller.register(fd, select.POLLIN)
                if now - sent >= EVERY:
                    try:
                        s.send(b"R")
                        self.socks[fd] = (s, addr, now)
                    except OSError:
                        pass  # found closed below
            # Readable: closed by the service (or, never, a byte for a stranger).
            for fd, _ in poller.poll(0):
                s = self.socks.pop(fd)[0]
                try:
                    self.received += len(s.recv(65536))
                except OSError:
                    pass
                s.close()
            # At most PER_PORT - 64 new connections per port per round: strangers, not a flood.
            self.done.wait(0.25)


def timed(kc, code, timeout=300):
    t0 = time.monotonic()
    run = ok(execute(kc, code, timeout=timeout))
    return run, time.monotonic() - t0


def attacked(strangers, kinds):
    assert len(strangers.attacked) >= kinds, f"strangers found {sorted(strangers.attacked)}"
    assert strangers.opened >= kinds * PER_PORT, strangers.opened
    assert strangers.received == 0, f"strangers got {strangers.received} bytes"


# The cell waits before its collective and its value: by then strangers are on every port.
RANCH_CELL = """%%ranch 2 --out got
std::thread::sleep(std::time::Duration::from_secs(4));
let mut v = vec![ranch::rank() as u64 + base; 4];
ranch::comm().all_reduce(&mut v, ranch::Op::Sum).unwrap();
v[0]"""


def test_strangers_dribbling_into_a_launchs_ports_do_not_slow_its_cell(kernel):
    ok(execute(kernel, "let base = 20u64;"))
    timed(kernel, RANCH_CELL)  # builds the rank program
    _, usual = timed(kernel, RANCH_CELL)
    with Strangers(kernel.pid) as strangers:
        run, took = timed(kernel, RANCH_CELL, timeout=120)
    assert ok(execute(kernel, "got")).result() == "[41, 41]"
    # The channel and the rendezvous.
    attacked(strangers, 2)
    print(f"the launch took {took:.1f} s with strangers, {usual:.1f} s without; "
          f"the kernel had at most {strangers.peak_threads} threads and {strangers.peak_fds} descriptors meanwhile")
    # Each listener reads at most 64 hellos at once, a thread each.
    assert strangers.peak_threads < 250, strangers.peak_threads
    assert took < usual + 5, f"the cell took {took:.1f} s with strangers, {usual:.1f} s without"


POOL_CELL = """%%px
std::thread::sleep(std::time::Duration::from_secs(4));
let mut v = vec![ranch::rank() as f64 + 1.0; 1024];
ranch::comm().all_reduce(&mut v, ranch::Op::Sum).unwrap();
v[0]"""


def test_strangers_dribbling_into_a_pools_ports_do_not_slow_its_cells(kernel):
    ok(execute(kernel, "%ranch_start 2", timeout=600))
    try:
        timed(kernel, POOL_CELL)
        _, usual = timed(kernel, POOL_CELL)
        with Strangers(kernel.pid) as strangers:
            run, took = timed(kernel, POOL_CELL, timeout=120)
        assert run.result() == "[3.0, 3.0]", run.result()
        attacked(strangers, 1)  # the cell's rendezvous
        print(f"the pool's cell took {took:.1f} s with strangers, {usual:.1f} s without")
        assert took < usual + 5, f"the cell took {took:.1f} s with strangers, {usual:.1f} s without"
    finally:
        ok(execute(kernel, "%ranch_stop"))


@pytest.fixture(scope="module")
def hosts():
    yield from simulated_hosts(2)


@needs_mpi_build
def test_strangers_dribbling_into_a_pool_across_hosts_do_not_stop_it(hosts, tmp_path):
    """The hub the relays connect to, the channel they fetch the kernel from, each cell's
    address book and the ranks' mesh (in the simulated hosts' namespaces)."""
    # mpirun starts 3 s late, so that strangers are at the hub and the channel before the relays.
    (tmp_path / "mpirun").write_text('#!/bin/sh\ncase "$*" in *--version*) ;; *) sleep 3;; esac\n'
                                     f'exec {shutil.which("mpirun")} "$@"\n')
    (tmp_path / "mpirun").chmod(0o755)
    env = dict(os.environ, RANCH_MPIRUN_ARGS=hosts.mpirun_args, PATH=f"{tmp_path}:{os.environ['PATH']}")
    km, kc = start(env=env)
    try:
        a, b = hosts.addresses
        with Strangers(kc.pid) as strangers:
            # The pool starts in the background; the cell waits for it.
            ok(execute(kc, f"%ranch_start 2 --hosts {a}:1,{b}:1", timeout=600))
            try:
                run, _ = timed(kc, POOL_CELL, timeout=180)
                assert run.result() == "[3.0, 3.0]", run.result()
            finally:
                ok(execute(kc, "%ranch_stop"))
        attacked(strangers, 3)  # the hub, the channel and the cell's address book
    finally:
        stop(km, kc)


@needs_mpi_build
def test_a_host_that_vanishes_ends_the_cell_within_the_collective_timeout_naming_it(hosts):
    """Host 2's network link drops in the middle of a pool's cell (inside its namespace: no
    reset, no FIN, nothing comes back): the cell ends within the collective timeout and says
    which rank and host went silent, instead of hanging until the user interrupts."""
    timeout = 10
    env = dict(os.environ, RANCH_MPIRUN_ARGS=hosts.mpirun_args, RANCH_COLLECTIVE_TIMEOUT=str(timeout))
    km, kc = start(env=env)
    link = ["ip", "-n", hosts.namespaces[1], "link", "set", "eth0"]
    try:
        a, b = hosts.addresses
        ok(execute(kc, f"%ranch_start 2 --hosts {a}:1,{b}:1", timeout=600))
        ok(execute(kc, "%px ranch::rank()", timeout=600))
        msg_id = kc.execute('%%px\nprintln!("up {}", ranch::rank());\nstd::thread::sleep(std::time::Duration::from_secs(600));')
        wait_for_output(kc, msg_id, "up 1")
        subprocess.run([*link, "down"], check=True)
        dropped = time.monotonic()
        reply = kc.get_shell_msg(timeout=timeout + 60)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = kc.get_shell_msg(timeout=timeout + 60)
        took = time.monotonic() - dropped
        print(f"the cell ended {took:.1f} s after host 2's link dropped (collective timeout {timeout} s)")
        assert reply["content"]["status"] == "error", reply["content"]
        why = reply["content"]["evalue"]
        assert "Rank 1 went silent" in why and "(host simhost2)" in why, why
        assert took < timeout, f"the cell ended {took:.1f} s after the link dropped"
    finally:
        subprocess.run([*link, "up"], capture_output=True)
        stop(km, kc)
