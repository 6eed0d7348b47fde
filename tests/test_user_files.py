"""The user's files and the machine's shared memory: ranch works in its own subdirectory of
RANCH_SHARED_DIR and runs only the program it wrote there; a full /dev/shm fails a launch
with a message that says so (or is used at a lower speed), never with SIGBUS mid-cell."""
import json
import os
import shutil
import stat
import subprocess
from contextlib import contextmanager

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from conftest import KERNEL, STARTED, execute, ok, start, stop

needs_mpirun = pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs Open MPI's mpirun (bash install/mpi.sh)")


@needs_mpirun
def test_the_shared_directory_keeps_the_users_files_and_runs_only_what_ranch_wrote(tmp_path):
    shared = tmp_path / "scratch"
    shared.mkdir()
    mine = {f"data-{i}.bin": os.urandom(1024) for i in range(80)}  # more than ranch keeps of its own
    mine["rank-00ff"] = b"the user's, named like ranch's programs"
    for name, data in mine.items():
        (shared / name).write_bytes(data)
    marker = tmp_path / "planted-ran"
    km, kc = start(env=dict(os.environ, RANCH_SHARED_DIR=str(shared)))
    try:
        for k in range(3):
            run = ok(execute(kc, f"%%ranch 2 --hosts localhost:2\nranch::rank() * 10 + {k}", timeout=300))
            assert run.result() == f"[{k}, {10 + k}]"
        assert {p.name: p.read_bytes() for p in shared.iterdir() if p.is_file()} == mine, "the user's files are untouched"
        ours = shared / f"ranch-{os.geteuid()}"
        assert stat.S_IMODE(ours.stat().st_mode) == 0o700
        programs = sorted(ours.iterdir(), key=lambda p: p.stat().st_mtime)
        assert len(programs) == 3 and all(p.name.startswith("rank-") and len(p.name) == 5 + 64 for p in programs)

        # A program changed there is not run: the kernel puts its own back, ranks check it.
        first = programs[0]
        original = first.read_bytes()
        first.write_text(f"#!/bin/sh\ntouch {marker}\necho planted\n")
        run = ok(execute(kc, "%%ranch 2 --hosts localhost:2\nranch::rank() * 10 + 0", timeout=300))
        assert run.result() == "[0, 10]" and "planted" not in run.stream()
        assert not marker.exists() and first.read_bytes() == original

        # A subdirectory others can write is not used; nothing runs.
        ours.chmod(0o777)
        run = execute(kc, f"%%ranch 2 --hosts localhost:2\nstd::fs::write({json.dumps(str(marker))}, \"ran\").unwrap();", timeout=300)
        assert run.reply["content"]["status"] == "error"
        evalue = run.reply["content"]["evalue"]
        assert "RANCH_SHARED_DIR" in evalue and f"{ours} can be written by other users (mode 777)" in evalue, evalue
        assert not marker.exists()
        ours.chmod(0o700)
        assert ok(execute(kc, "%%ranch 2 --hosts localhost:2\nranch::rank() * 10 + 1", timeout=300)).result() == "[1, 11]"
    finally:
        stop(km, kc)


needs_mount_namespace = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None
    or subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0,
    reason="needs root and unshare to give the kernel a /dev/shm of its own")


@contextmanager
def kernel_with_small_shm(tmp_path, size):
    """A kernel in a mount namespace of its own whose /dev/shm is a tmpfs of `size`."""
    spec = KernelSpecManager().get_kernel_spec(KERNEL)
    spec_dir = tmp_path / "kernels" / "ranch-small-shm"
    spec_dir.mkdir(parents=True)
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount -t tmpfs -o size={size} tmpfs /dev/shm && exec "$@"', "sh", *spec.argv]
    (spec_dir / "kernel.json").write_text(json.dumps(dict(spec.to_dict(), argv=argv)))
    km = KernelManager(kernel_name="ranch-small-shm", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]))
    km.start_kernel(env=dict(os.environ))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        kernel_pid = km.provisioner.pid  # `unshare` execs `sh`, which execs the kernel
        STARTED.append(kernel_pid)
        yield kc, f"/proc/{kernel_pid}/root/dev/shm"
    finally:
        stop(km, kc)


ALL_REDUCE_32_MIB = """%%ranch 2
let mut v = vec![1.0f32; 8 << 20];
ranch::comm().all_reduce(&mut v, ranch::Op::Sum).unwrap();
(v[0], v[v.len() - 1])"""


@needs_mount_namespace
def test_a_full_dev_shm_is_said_and_a_small_one_is_used(tmp_path):
    with kernel_with_small_shm(tmp_path, "4m") as (kc, shm):
        # Another program has taken all but 256 KiB.
        filler = os.path.join(shm, "filler")
        free = os.statvfs(shm).f_bavail * os.statvfs(shm).f_frsize
        subprocess.run(["fallocate", "-l", str(free - (256 << 10)), filler], check=True)
        run = execute(kc, ALL_REDUCE_32_MIB, timeout=300)
        assert run.reply["content"]["status"] == "error"
        text = run.reply["content"]["evalue"] + run.error_text() + run.stream("stderr")
        assert "/dev/shm has 256 KiB free" in text and "needs" in text and "--shm-size" in text, text
        assert "SIGBUS" not in text and "signal 7" not in text, text
        assert [f for f in os.listdir(shm) if f != "filler"] == [], "no segment is left behind"
        # 4 MiB is less than two ranks' full-speed segment: a smaller one does, more slowly.
        os.remove(filler)
        assert ok(execute(kc, ALL_REDUCE_32_MIB, timeout=300)).result() == "[(2.0, 2.0), (2.0, 2.0)]"
