"""GPUs without a GPU: a fake CUDA driver (tests/fake_cuda/fake_cuda.c, built here) on the
kernel's LD_LIBRARY_PATH describes 0, 1, 2 or 8 devices, so discovery through cudarc, the
pinning plan, `--gpus`, `--gpu-visibility`, a preset CUDA_VISIBLE_DEVICES and `ranch::gpu()`
are checked end to end through Jupyter."""
import os
import shutil
from contextlib import contextmanager
import subprocess
from pathlib import Path

import pytest

from conftest import execute, ok, start, stop
from test_ranch import no_rank_survives  # noqa: F401  (autouse fixture)

HERE = Path(__file__).resolve().parent
# What each rank says about its GPU: ranch::gpu() and the visibility it was given.
PROBE = """%%ranch {n} {flags}
(ranch::gpu(), std::env::var("CUDA_VISIBLE_DEVICES").ok(), std::env::var("CUDA_DEVICE_ORDER").ok())"""


def uuid(i):
    return f"GPU-fa4e0000-0000-0000-0000-0000000000{i:02x}"


def build_fake(source, out_dir, soname):
    """Compiles tests/fake_cuda/<source> into out_dir/<soname>; returns out_dir."""
    cc = shutil.which("cc") or shutil.which("gcc")
    subprocess.run([cc, "-shared", "-fPIC", "-O2", f"-Wl,-soname,{soname}", "-o", str(out_dir / soname),
                    str(HERE / "fake_cuda" / source)], check=True)
    return out_dir


@pytest.fixture(scope="module")
def fake_driver(tmp_path_factory):
    return build_fake("fake_cuda.c", tmp_path_factory.mktemp("fake_cuda"), "libcuda.so.1")


@contextmanager
def kernel(driver_dir, devices, libs=(), **extra):
    """A kernel whose CUDA driver is the fake one in driver_dir (None: no driver at all)
    describing `devices` GPUs, with more fake libraries' directories first on its path."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "FAKE_CUDA_DEVICES")}
    if driver_dir is not None:
        env["LD_LIBRARY_PATH"] = ":".join([*map(str, libs), str(driver_dir), env.get("LD_LIBRARY_PATH", "")])
        env["FAKE_CUDA_DEVICES"] = str(devices)
    env.update(extra)
    km, kc = start(env=env)
    try:
        yield kc
    finally:
        stop(km, kc)


@pytest.fixture(scope="module")
def two_gpus(fake_driver):
    with kernel(fake_driver, 2) as kc:
        yield kc


def test_ranks_see_every_chosen_gpu_by_uuid_and_their_ordinal(two_gpus):
    run = ok(execute(two_gpus, PROBE.format(n=2, flags="")))
    both = f"{uuid(0)},{uuid(1)}"
    assert run.result() == (f'[(Some(0), Some("{both}"), Some("PCI_BUS_ID")), '
                            f'(Some(1), Some("{both}"), Some("PCI_BUS_ID"))]')
    assert "GPU" not in run.stream("stderr")


def test_isolate_gives_each_rank_its_gpu_only_and_more_ranks_wrap_with_a_warning(two_gpus):
    run = ok(execute(two_gpus, PROBE.format(n=3, flags="--gpu-visibility isolate")))
    assert run.result() == (f'[(Some(0), Some("{uuid(0)}"), Some("PCI_BUS_ID")), '
                            f'(Some(0), Some("{uuid(1)}"), Some("PCI_BUS_ID")), '
                            f'(Some(0), Some("{uuid(0)}"), Some("PCI_BUS_ID"))]')
    assert "3 ranks share 2 GPUs" in run.stream("stderr")
    pinned = ok(execute(two_gpus, PROBE.format(n=1, flags="--gpu-visibility pinned --gpus 1")))
    assert pinned.result() == f'[(Some(0), Some("{uuid(1)}"), Some("PCI_BUS_ID"))]'


def test_gpus_none_hides_the_gpus(two_gpus):
    run = ok(execute(two_gpus, PROBE.format(n=2, flags="--gpus none")))
    assert run.result() == '[(None, Some(""), None), (None, Some(""), None)]'


def test_a_gpu_that_is_not_there_is_a_usage_error_before_any_build(two_gpus):
    run = execute(two_gpus, '%%ranch 2 --gpus 0,5\nprintln!("ran");')
    c = run.reply["content"]
    assert c["ename"] == "UsageError" and "no GPU 5" in c["evalue"] and "GPUs 0..1" in c["evalue"]
    assert run.stream() == "" and "Compiling" not in run.stream("stderr")


def test_the_kernels_own_cuda_visible_devices_is_never_renumbered(fake_driver):
    # The kernel may use physical GPUs 2 and 3 (one as an index, one as a UUID): its
    # GPU 1 is physical GPU 3, and the rank is told so by UUID.
    with kernel(fake_driver, 4, CUDA_VISIBLE_DEVICES=f"2,{uuid(3)}") as kc:
        run = ok(execute(kc, PROBE.format(n=1, flags="--gpus 1 --gpu-visibility isolate")))
        assert run.result() == f'[(Some(0), Some("{uuid(3)}"), Some("PCI_BUS_ID"))]'
        auto = ok(execute(kc, PROBE.format(n=2, flags="")))
        assert f'Some("{uuid(2)},{uuid(3)}")' in auto.result()
        bad = execute(kc, PROBE.format(n=1, flags="--gpus 2"))
        assert bad.reply["content"]["ename"] == "UsageError"


def test_eight_gpus_eight_ranks_each_its_own(fake_driver):
    with kernel(fake_driver, 8) as kc:
        run = ok(execute(kc, PROBE.format(n=8, flags="--gpu-visibility isolate")))
        assert run.result() == "[" + ", ".join(f'(Some(0), Some("{uuid(i)}"), Some("PCI_BUS_ID"))' for i in range(8)) + "]"
        assert "GPU" not in run.stream("stderr")


@pytest.mark.parametrize("devices", [None, 0])
def test_no_driver_or_no_device_means_no_gpu_even_with_cuda_visible_devices_set(fake_driver, devices):
    # The old discovery reported a GPU here (it trusted CUDA_VISIBLE_DEVICES).
    with kernel(fake_driver if devices is not None else None, devices or 0, CUDA_VISIBLE_DEVICES="0,1") as kc:
        run = ok(execute(kc, "%%ranch 2\n(ranch::gpu(), std::env::var(\"RANCH_GPU\").ok())"))
        assert run.result() == "[(None, None), (None, None)]"
        bad = execute(kc, '%%ranch 1 --gpus 0\nprintln!("ran");')
        assert bad.reply["content"]["ename"] == "UsageError" and "sees no GPU" in bad.reply["content"]["evalue"]


def test_a_driver_that_fails_to_start_is_said_not_crashed(fake_driver):
    with kernel(fake_driver, 2, FAKE_CUDA_INIT_ERROR="999") as kc:
        run = ok(execute(kc, "%%ranch 1\nranch::gpu()"))
        assert run.result() == "[None]"
        bad = execute(kc, '%%ranch 1 --gpus 0\n1')
        assert "did not start" in bad.reply["content"]["evalue"]


# The runtime's `cuda` and `nccl` features, switched on by a body that names `ranch::cuda`,
# as far as a machine without a GPU can take them.

def has_real_nccl():
    out = subprocess.run(["sh", "-c", "ldconfig -p 2>/dev/null || /sbin/ldconfig -p"], capture_output=True, text=True).stdout
    return "libnccl.so" in out


@pytest.fixture(scope="module")
def fake_nccl(tmp_path_factory):
    return build_fake("fake_nccl.c", tmp_path_factory.mktemp("fake_nccl"), "libnccl.so.2")


README_EXAMPLE = """%%ranch 2
let gpu = ranch::cuda::context()?;
let mut x = gpu.stream.clone_htod(&vec![ranch::rank() as f32; 1 << 20])?;
ranch::cuda::nccl()?.all_reduce(&mut x, ranch::Op::Sum)?;
gpu.stream.clone_dtoh(&x)?[0]"""


def test_a_rank_without_a_gpu_gets_a_clear_error_from_cuda_context(fake_driver):
    with kernel(None, 0) as kc:
        # The README's example: it builds (with the runtime's nccl feature), and says why it cannot run.
        # (--on-error continue: both ranks fail at once, and neither is stopped for the other's failure.)
        run = execute(kc, README_EXAMPLE.replace("%%ranch 2", "%%ranch 2 --on-error continue", 1), timeout=300)
        assert run.reply["content"]["status"] == "error"
        text = run.error_text()
        assert "rank 0: this rank has no GPU" in text and "rank 1: this rank has no GPU" in text, text


def test_each_rank_opens_its_own_gpu_in_one_line(two_gpus):
    run = ok(execute(two_gpus, "%%ranch 2\nranch::cuda::context()?.context.ordinal()", timeout=300))
    assert run.result() == "[0, 1]"


def test_nccl_refuses_two_ranks_on_one_gpu(fake_driver):
    with kernel(fake_driver, 1) as kc:
        run = execute(kc, "%%ranch 2\nranch::cuda::nccl()?;\n1", timeout=300)
        assert "cannot put two ranks on one GPU" in run.error_text(), run.error_text()


@pytest.mark.skipif(has_real_nccl(), reason="this machine has a real NCCL")
def test_nccl_missing_is_said(two_gpus):
    run = execute(two_gpus, "%%ranch 2\nranch::cuda::nccl()?;\n1", timeout=300)
    assert "NCCL (libnccl.so.2) cannot be loaded" in run.error_text(), run.error_text()


def test_nccl_is_found_under_its_real_name(fake_driver, fake_nccl):
    # Only libnccl.so.2 exists (as pip's wheel ships it); ranks still load it, and the fake
    # fails the unique id, which says they did.
    with kernel(fake_driver, 2, libs=[fake_nccl]) as kc:
        run = execute(kc, "%%ranch 2\nranch::cuda::nccl()?;\n1", timeout=300)
        assert "ncclGetUniqueId failed" in run.error_text(), run.error_text()


def test_ranch_gpus_lists_the_devices_and_what_gpus_numbers_mean(fake_driver):
    with kernel(fake_driver, 2, CUDA_VISIBLE_DEVICES="1") as kc:
        run = ok(execute(kc, "%ranch_gpus"))
        lines = run.result().splitlines()
        assert lines[0].split() == ["--gpus", "name", "UUID", "PCI", "bus", "memory", "free", "busy", "compute"]
        assert lines[1].split() == ["0", "Fake", "GPU", "1", uuid(1), "00000000:11:00.0", "2.0", "GiB", "?", "?", "9.0"]
        assert lines[2].split()[:5] == ["-", "Fake", "GPU", "0", uuid(0)]
        assert "CUDA_VISIBLE_DEVICES=1" in run.result() and "NVML (libnvidia-ml.so.1), which is not here" in run.result()
        assert "<td>Fake GPU 1</td>" in run.result("text/html")


def test_ranch_gpus_without_a_gpu(fake_driver):
    with kernel(None, 0) as kc:
        assert ok(execute(kc, "%ranch_gpus")).result() == "No GPU: ranks run on CPUs (`ranch::gpu()` is None)."
        assert execute(kc, "%ranch_gpus --all").reply["content"]["ename"] == "UsageError"


def test_ranch_gpus_adds_free_memory_and_utilisation_from_nvml(fake_driver, tmp_path):
    nvml = build_fake("fake_nvml.c", tmp_path, "libnvidia-ml.so.1")
    with kernel(fake_driver, 2, libs=[nvml]) as kc:
        lines = ok(execute(kc, "%ranch_gpus")).result().splitlines()
        assert lines[1].split()[8:] == ["0.5", "GiB", "0%", "9.0"], lines
        assert lines[2].split()[8:] == ["1.0", "GiB", "10%", "9.0"], lines
        assert len(lines) == 3


def test_nccl_collectives_move_device_buffers(fake_driver, fake_nccl):
    # The fake NCCL computes as if every rank held the same data: the point is the path from
    # a host vector through cudarc's buffers, NCCL's four collectives and back.
    # It does not wait for the peers as a real NCCL does, so a fast rank could finish the cell
    # while the other still calls NCCL (which then refuses: its peer is gone); the barrier at
    # the end keeps both in the cell, as a real NCCL's collectives would.
    body = """%%ranch 2
let nccl = ranch::cuda::nccl()?;
let s = &nccl.gpu.stream;
let mut x = s.clone_htod(&vec![1.5f32; 4])?;
nccl.all_reduce(&mut x, ranch::Op::Sum)?;
nccl.broadcast(&mut x, 0)?;
let mut all = s.alloc_zeros::<f32>(8)?;
nccl.all_gather(&x, &mut all)?;
let mut mine = s.alloc_zeros::<f32>(4)?;
nccl.reduce_scatter(&all, &mut mine, ranch::Op::Sum)?;
nccl.synchronize()?;
let wrong = nccl.all_gather(&x, &mut mine).unwrap_err().to_string();
ranch::comm().barrier()?;
(s.clone_dtoh(&x)?, s.clone_dtoh(&all)?.len(), s.clone_dtoh(&mine)?, wrong)"""
    with kernel(fake_driver, 2, libs=[fake_nccl], FAKE_NCCL="works") as kc:
        run = ok(execute(kc, body, timeout=300))
        wrong = "all_gather failed: recv holds 4 elements, expected world_size x 4"
        mine = "[6.0, 6.0, 6.0, 6.0]"
        assert run.result() == f'[([3.0, 3.0, 3.0, 3.0], 8, {mine}, "{wrong}"), ([3.0, 3.0, 3.0, 3.0], 8, {mine}, "{wrong}")]'


def test_a_peer_that_dies_ends_the_others_nccl_wait_with_its_name(fake_driver, fake_nccl):
    # Rank 0 is inside a collective that can never complete (the fake NCCL hangs, as a real
    # one does when a peer is gone) when rank 1 dies: the watchdog aborts the communicator
    # and rank 0's call fails naming rank 1; a later call is refused at once. Without the
    # watchdog rank 0 waits until --timeout.
    body = """%%ranch 2 --on-error continue --timeout 120
let nccl = ranch::cuda::nccl()?;
if ranch::rank() == 1 {
    std::thread::sleep(std::time::Duration::from_millis(500));
    std::process::exit(3);
}
let mut x = nccl.gpu.stream.alloc_zeros::<f32>(4)?;
let first = nccl.all_reduce(&mut x, ranch::Op::Sum).unwrap_err().to_string();
let then = nccl.broadcast(&mut x, 0).unwrap_err().to_string();
let sync = nccl.synchronize().unwrap_err().to_string();
println!("first: {first}\\nthen: {then}\\nsync: {sync}");"""
    with kernel(fake_driver, 2, libs=[fake_nccl], FAKE_NCCL="hang") as kc:
        run = execute(kc, body, timeout=300)
        out = run.stream()
        assert "first: all_reduce failed (rank 1): NCCL was aborted so that this rank does not wait forever: rank 1 exited" in out, out
        assert "then: broadcast failed (rank 1): " in out, out
        assert "sync: synchronize failed (rank 1): NCCL was aborted" in out, out
        assert "rank 1" in run.error_text() and "exit" in run.error_text(), run.error_text()
