"""Wire-level behaviour checked with a raw ZeroMQ client (pyzmq, i.e. libzmq), and the
kernel's command line."""
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import zmq

from conftest import execute

VENV_BIN = Path(sys.executable).parent


def sign(key, parts):
    h = hmac.new(key, digestmod=hashlib.sha256)
    for p in parts:
        h.update(p)
    return h.hexdigest().encode()


def frames(key, msg_type, content, sig=None):
    header = {"msg_id": uuid.uuid4().hex, "username": "t", "session": "raw", "date": "2026-01-01T00:00:00Z",
              "msg_type": msg_type, "version": "5.3"}
    parts = [json.dumps(p).encode() for p in (header, {}, {}, content)]
    return header["msg_id"], [b"<IDS|MSG>", sig or sign(key, parts), *parts]


def raw_shell(kc):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{kc.ip}:{kc.shell_port}")
    return sock


def recv_reply(sock, timeout_ms):
    if not sock.poll(timeout_ms):
        return None
    parts = sock.recv_multipart()
    i = parts.index(b"<IDS|MSG>")
    return json.loads(parts[i + 2]), json.loads(parts[i + 5])


def test_bad_signature_is_dropped_not_executed(kernel, tmp_path):
    marker = tmp_path / "executed"
    sock = raw_shell(kernel)
    code = f'std::fs::write("{marker}", "x").unwrap();'
    _, msg = frames(kernel.session.key, "execute_request",
                    {"code": code, "silent": False, "store_history": True}, sig=b"0" * 64)
    sock.send_multipart(msg)
    assert recv_reply(sock, 3000) is None
    # The kernel is still fine, and the forged cell never ran.
    assert execute(kernel, "1 + 1").result() == "2"
    assert not marker.exists()
    # The same request, correctly signed, does run: the test above can fail.
    _, msg = frames(kernel.session.key, "execute_request", {"code": code, "silent": False, "store_history": True})
    sock.send_multipart(msg)
    header, content = recv_reply(sock, 60000)
    assert header["msg_type"] == "execute_reply" and content["status"] == "ok"
    assert marker.exists()
    sock.close()


def test_malformed_request_gets_an_error_reply(kernel):
    sock = raw_shell(kernel)
    msg_id, msg = frames(kernel.session.key, "execute_request", {"silent": False})  # no "code"
    sock.send_multipart(msg)
    header, content = recv_reply(sock, 10000)
    assert header["msg_type"] == "execute_reply"
    assert content["status"] == "error"
    assert "malformed" in content["evalue"]
    # Minimal clients that omit silent/store_history are served (ipykernel's defaults).
    _, msg = frames(kernel.session.key, "execute_request", {"code": "40 + 2"})
    sock.send_multipart(msg)
    header, content = recv_reply(sock, 60000)
    assert content["status"] == "ok"
    sock.close()


def connection_file(tmp, scheme):
    path = Path(tmp) / "conn.json"
    path.write_text(json.dumps({"ip": "127.0.0.1", "transport": "tcp", "shell_port": 0, "iopub_port": 0,
                                "stdin_port": 0, "control_port": 0, "hb_port": 0, "key": "k",
                                "signature_scheme": scheme}))
    return path


def test_unsupported_signature_scheme_stops_the_kernel(tmp_path):
    proc = subprocess.run([VENV_BIN / "ranch-kernel", "--connection-file", connection_file(tmp_path, "hmac-md5")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "hmac-md5" in proc.stderr and "hmac-sha256" in proc.stderr


def test_install_and_uninstall_with_prefix(tmp_path):
    env = dict(os.environ, JUPYTER_PATH=str(tmp_path / "share/jupyter"))
    exe = VENV_BIN / "ranch-kernel"
    subprocess.run([exe, "install", "--prefix", tmp_path], check=True, env=env, capture_output=True)
    spec_dir = tmp_path / "share/jupyter/kernels/ranch"
    spec = json.loads((spec_dir / "kernel.json").read_text())
    assert "null" not in json.dumps(spec)
    assert spec["interrupt_mode"] == "message" and spec["language"] == "rust"
    assert (spec_dir / "logo-64x64.png").exists()
    listed = json.loads(subprocess.run([VENV_BIN / "jupyter", "kernelspec", "list", "--json"], env=env,
                                       check=True, capture_output=True, text=True).stdout)
    assert listed["kernelspecs"]["ranch"]["resource_dir"] == str(spec_dir)
    out = subprocess.run([exe, "uninstall", "--prefix", tmp_path], check=True, env=env,
                         capture_output=True, text=True).stdout
    assert "Removed" in out
    assert not spec_dir.exists()


def test_installed_kernel_runs_from_any_directory():
    from jupyter_client.manager import KernelManager
    km = KernelManager(kernel_name="ranch")
    with tempfile.TemporaryDirectory() as elsewhere:
        km.start_kernel(cwd=elsewhere)
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=120)
            run = execute(kc, 'std::env::current_dir().unwrap().display().to_string()')
            assert os.path.realpath(elsewhere) in run.result()
        finally:
            kc.stop_channels()
            km.shutdown_kernel()
