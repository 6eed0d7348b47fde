"""On a machine with NVIDIA GPUs: each rank on its own GPU, a kernel launch of work through
cudarc, and an NCCL all-reduce. Skipped elsewhere, with a message; RANCH_REQUIRE_GPU=1 makes
a missing GPU a failure instead (for runs on GPU machines)."""
import os
import re

import pytest

from conftest import execute, ok
from test_ranch import no_rank_survives  # noqa: F401  (autouse fixture)


def real_gpus():
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


GPUS = real_gpus()
if GPUS == 0:
    if os.environ.get("RANCH_REQUIRE_GPU") == "1":
        raise RuntimeError("RANCH_REQUIRE_GPU=1 but this machine has no NVIDIA GPU (/proc/driver/nvidia/gpus)")
    pytest.skip("no NVIDIA GPU on this machine (set RANCH_REQUIRE_GPU=1 to fail instead)", allow_module_level=True)


def test_every_rank_has_its_own_gpu_and_nccl_all_reduces(kernel):
    kc = kernel
    n = GPUS
    run = ok(execute(kc, f"""%%ranch {n}
let gpu = ranch::cuda::context()?;
let mut x = gpu.stream.clone_htod(&vec![ranch::rank() as f32 + 1.0; 1 << 20])?;
ranch::cuda::nccl()?.all_reduce(&mut x, ranch::Op::Sum)?;
let host = gpu.stream.clone_dtoh(&x)?;
(gpu.context.ordinal(), host[0], host[(1 << 20) - 1])""", timeout=600))
    want = float(n * (n + 1) // 2)
    values = re.findall(r"\((\d+), ([\d.]+), ([\d.]+)\)", run.result())
    assert len(values) == n
    assert all(float(a) == want and float(b) == want for _, a, b in values), run.result()
