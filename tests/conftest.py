"""Shared fixtures: real kernels of the installed `ranch` kernelspec, driven by
jupyter_client, and a helper that collects everything a cell publishes."""
from __future__ import annotations

import os
import re
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from jupyter_client.manager import KernelManager, start_new_kernel

KERNEL = os.environ.get("RANCH_KERNEL_NAME", "ranch")
# The kernelspec this checkout's build installed into its venv comes first: `install/setup.sh`
# also installs one for the user (~/.local/share/jupyter, which Jupyter searches before the
# venv), which may be another checkout's.
os.environ["JUPYTER_PATH"] = os.pathsep.join(
    [os.path.join(os.environ.get("RANCH_VENV", os.path.join(os.path.dirname(__file__), "..", ".venv")), "share", "jupyter")]
    + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p])
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Run:
    reply: dict
    outputs: list = field(default_factory=list)  # iopub messages between busy and idle
    arrival: list = field(default_factory=list)  # time each output arrived

    def kinds(self):
        return [m["msg_type"] for m in self.outputs]

    def stream(self, name="stdout"):
        return "".join(m["content"]["text"] for m in self.outputs
                       if m["msg_type"] == "stream" and m["content"]["name"] == name)

    def result(self, mime="text/plain"):
        res = [m for m in self.outputs if m["msg_type"] == "execute_result"]
        return res[-1]["content"]["data"].get(mime) if res else None

    def displays(self):
        """What the cell displayed, less the launch's status table."""
        return [m["content"]["data"] for m in self.outputs
                if m["msg_type"] == "display_data" and not is_status(m)]

    def failure_table(self, mime="text/plain"):
        """The failure table a failed launch shows before its error ("" when none)."""
        tables = [d for d in self.displays() if 'class="ranch-failure"' in d.get("text/html", "")]
        return tables[-1].get(mime, "") if tables else ""

    def status_messages(self):
        """The status table as shown, then each redraw (display_data, update_display_data...)."""
        return [m for m in self.outputs if is_status(m)]

    def status(self, mime="text/plain"):
        """The status table in its final state, as a notebook shows it after the cell."""
        shown = self.status_messages()
        return shown[-1]["content"]["data"].get(mime) if shown else None

    def error(self):
        errs = [m["content"] for m in self.outputs if m["msg_type"] == "error"]
        return errs[-1] if errs else None

    def error_text(self):
        e = self.error()
        return ANSI.sub("", "\n".join(e["traceback"])) if e else ""


def is_status(msg) -> bool:
    return (msg["msg_type"] in ("display_data", "update_display_data")
            and msg["content"].get("metadata", {}).get("ranch", {}).get("status") is True)


def execute(kc, code, timeout=120, **kwargs) -> Run:
    """Runs a cell and returns its reply and every output published before `idle`."""
    msg_id = kc.execute(code, **kwargs)
    run = Run(reply={})
    deadline = time.monotonic() + timeout
    idle = False
    while not idle:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "status":
            idle = msg["content"]["execution_state"] == "idle"
        elif kind != "execute_input":
            run.outputs.append(msg)
            run.arrival.append(time.monotonic())
    # Skip stale replies (e.g. to the kernel_info requests of wait_for_ready).
    while True:
        run.reply = kc.get_shell_msg(timeout=max(1, deadline - time.monotonic()))
        if run.reply["parent_header"].get("msg_id") == msg_id:
            return run


def ok(run: Run) -> Run:
    """Asserts the cell succeeded, showing its error otherwise."""
    assert run.reply["content"]["status"] == "ok", run.error_text() or run.reply["content"]
    return run


def start(**kwargs):
    km, kc = start_new_kernel(kernel_name=KERNEL, startup_timeout=120, **kwargs)
    kc.pid = km.provisioner.pid
    STARTED.append(kc.pid)
    return km, kc


# Kernels this test run started: process checks look only at their process trees, never
# at the whole host (other kernels, other test runs).
STARTED: list[int] = []


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] == "Z":  # exited, not yet reaped
            continue
        table[int(entry)] = (int(fields[1]), cmdline)
    return table


def descendants(pid: int) -> dict[int, str]:
    """pid -> command line of every live process below `pid`."""
    table = processes()
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, cmd) in table.items():
            if ppid == parent and child not in found:
                found[child] = cmd
                frontier.append(child)
    return found


def alive(pid: int) -> bool:
    return pid in processes()


def rank_processes(kernel_pid: int | None = None) -> dict[int, str]:
    """Rank programs (they run from a ranch session's artifacts dir) below one kernel, or
    below any kernel this test run started."""
    kernels = [kernel_pid] if kernel_pid is not None else STARTED
    ranks = {}
    for k in kernels:
        ranks.update({p: c for p, c in descendants(k).items() if "/artifacts/" in c})
    return ranks


def pool_processes(kernel_pid: int | None = None) -> dict[int, str]:
    """A pool's fan-out and rank processes (the kernel binary, told so in its environment:
    `RANCH_ROLE=pool-fanout:FD`, `RANCH_POOL_RANK=N`) below one kernel, or below any kernel
    this test run started."""
    kernels = [kernel_pid] if kernel_pid is not None else STARTED
    found = {}
    for k in kernels:
        for pid, cmd in descendants(k).items():
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read()
            except OSError:
                continue
            if b"RANCH_ROLE=pool-fanout:" in env or b"RANCH_POOL_RANK=" in env:
                found[pid] = cmd
    return found


def local_crate(where, lib="pub fn answer() -> u32 { 42 }\n", build_rs=None) -> tuple[str, str]:
    """Writes a crate with a name no earlier run used (kernels keep their build
    directories, so a crates.io dependency may already be compiled). Returns the name and
    the `:dep` line that adds it."""
    name = f"probe_{uuid.uuid4().hex[:12]}"
    (where / "src").mkdir(parents=True)
    (where / "Cargo.toml").write_text(f'[package]\nname = "{name}"\nversion = "0.1.0"\nedition = "2021"\n')
    (where / "src" / "lib.rs").write_text(lib)
    if build_rs is not None:
        (where / "build.rs").write_text(build_rs)
    return name, f':dep {name} = {{ path = "{where}" }}'


def interrupt(km, kc, msg_id, within=2.0) -> dict:
    """Interrupts the running cell `msg_id`; asserts its reply comes within `within`
    seconds and says it was interrupted. Returns the reply's content."""
    t0 = time.monotonic()
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=30)
    elapsed = time.monotonic() - t0
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "Interrupted", reply["content"]
    assert elapsed < within, elapsed
    return reply["content"]


def wait_for_output(kc, msg_id, needle, timeout=180):
    """Reads IOPub until the cell `msg_id` has written `needle` (to know it is running)."""
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            seen += msg["content"]["text"]
            if needle in seen:
                return
        elif msg["msg_type"] == "error":
            seen += f"\n[error] {msg['content']['ename']}: {msg['content']['evalue']}"
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            raise AssertionError(f"the cell ended without writing {needle!r} (it wrote {seen!r})")
    raise AssertionError(f"the cell did not write {needle!r} within {timeout}s (wrote {seen!r})")


def stop(km, kc):
    kc.stop_channels()
    km.shutdown_kernel(now=False)


@pytest.fixture(scope="module")
def kernel():
    km, kc = start()
    yield kc
    stop(km, kc)


@pytest.fixture
def fresh_kernel():
    km, kc = start()
    yield km, kc
    stop(km, kc)


@contextmanager
def cell_running(code, ready):
    """A fresh kernel running `code` until it has written `ready`: yields (km, kc, msg_id)."""
    km, kc = start()
    try:
        msg_id = kc.execute(code)
        wait_for_output(kc, msg_id, ready)
        yield km, kc, msg_id
    finally:
        stop(km, kc)


# For the benchmarks (bench/*.py import this module).

@contextmanager
def logged_kernel():
    """A kernel whose log (its stderr: the phase timings benchmarks read) goes to a file.
    Yields the client and the log's path; the kernel is shut down after."""
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    km = KernelManager(kernel_name=KERNEL)
    km.start_kernel(stderr=log)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=300)
        yield kc, log.name
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def timed(kc, code) -> float:
    """Seconds a cell takes, end to end; asserts it succeeded."""
    t = time.monotonic()
    run = execute(kc, code, timeout=600)
    assert run.reply["content"]["status"] == "ok", (code, run.error_text() or run.reply["content"])
    return time.monotonic() - t
