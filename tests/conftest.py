"""Shared fixtures: real kernels of the installed `ranch` kernelspec, driven by
jupyter_client, and a helper that collects everything a cell publishes."""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field

import pytest
from jupyter_client.manager import start_new_kernel

KERNEL = os.environ.get("RANCH_KERNEL_NAME", "ranch")
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
        return [m["content"]["data"] for m in self.outputs if m["msg_type"] == "display_data"]

    def error(self):
        errs = [m["content"] for m in self.outputs if m["msg_type"] == "error"]
        return errs[-1] if errs else None

    def error_text(self):
        e = self.error()
        return ANSI.sub("", "\n".join(e["traceback"])) if e else ""


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


def start():
    km, kc = start_new_kernel(kernel_name=KERNEL, startup_timeout=120)
    return km, kc


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
