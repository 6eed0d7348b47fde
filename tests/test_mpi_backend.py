"""Collectives over MPI on this host (ranks started by mpirun): `--backend mpi` (flat) and
`--backend hierarchical` (a host's shared memory, then MPI between host leaders) give what
the serial computation gives, for every `Comm` method; ranks that call different things
fail alike instead of hanging; a rank stuck in MPI ends at the collective timeout; a
panicking rank is named by mpirun's report. Several hosts: test_hosts.py."""
import glob
import shutil

import pytest

from conftest import execute, ok, rank_processes, start, stop


def _libclang():
    return any(glob.glob(p) for p in ["/usr/lib/llvm-*/lib/libclang.so*", "/usr/lib/*/libclang-[0-9]*.so*"])


# What a rank program built with the runtime's `mpi` feature needs (install/mpi.sh).
needs_mpi_build = pytest.mark.skipif(
    not (shutil.which("mpirun") and shutil.which("mpicc") and _libclang()),
    reason="mpirun, mpicc or libclang not found: install/mpi.sh installs Debian's openmpi-bin, libopenmpi-dev "
           "and libclang-dev (needs root and apt)")

EVERY_METHOD = r"""
let c = ranch::comm();
let (r, n) = (c.rank(), c.world_size());
let mut v: Vec<f64> = (0..1000).map(|i| (i * (r + 1)) as f64).collect();
c.all_reduce(&mut v, ranch::Op::Sum)?;
let mut m = vec![r as i32; 5];
c.all_reduce(&mut m, ranch::Op::Max)?;
let mut big = vec![1u32; 3 << 20];
c.all_reduce(&mut big, ranch::Op::Sum)?;
let mut red = vec![r as u64 + 1; 4];
c.reduce(&mut red, ranch::Op::Prod, 1)?;
// Too large to move with the ranks' agreement: MPI_Reduce (flat) or the host's group.
let mut bigred = vec![r as u32 + 1; 1 << 12];
c.reduce(&mut bigred, ranch::Op::Sum, 2)?;
let bigred_kept = bigred.iter().all(|&x| x == if r == 2 { 6 } else { r as u32 + 1 });
let mut b = if r == 2 { vec![7i64, 8, 9] } else { vec![0; 3] };
c.broadcast_slice(&mut b, 2)?;
let word: String = c.broadcast(if r == 0 { Some("hi".to_string()) } else { None }, 0)?;
let all: Vec<String> = c.all_gather(&"x".repeat(r))?;
let g = c.gather(&(r * 2), 0)?;
let s: usize = c.scatter(if r == 1 { Some((0..n).map(|i| i * 100).collect()) } else { None }, 1)?;
if r == 0 { c.send(&vec![1.5f32, 2.5], 1)?; }
let got: Vec<f32> = if r == 1 { c.recv(0)? } else { vec![] };
c.barrier()?;
(v[999], m[0], big.iter().all(|&x| x == n as u32) && bigred_kept, red, b, word, all, g, s, got)
"""

EXPECTED = [
    '(5994.0, 2, true, [1, 1, 1, 1], [7, 8, 9], "hi", ["", "x", "xx"], Some([0, 2, 4]), 0, [])',
    '(5994.0, 2, true, [6, 6, 6, 6], [7, 8, 9], "hi", ["", "x", "xx"], None, 100, [1.5, 2.5])',
    '(5994.0, 2, true, [3, 3, 3, 3], [7, 8, 9], "hi", ["", "x", "xx"], None, 200, [])',
]


def failed(kernel, cell):
    """The error a cell ends with (it must end with one)."""
    run = execute(kernel, cell, timeout=300)
    assert run.reply["content"]["status"] == "error", run.reply["content"]
    return run.error_text()


@pytest.fixture(scope="module")
def kernel():
    km, kc = start()
    yield kc
    stop(km, kc)


@needs_mpi_build
@pytest.mark.parametrize("backend", ["mpi", "hierarchical"])
def test_every_comm_method_over_mpi_equals_the_serial_result(kernel, backend):
    run = ok(execute(kernel, f"%%ranch 3 --backend {backend} --out got\n" + EVERY_METHOD, timeout=600))
    assert run.result() == "[" + ", ".join(EXPECTED) + "]", run.result()
    assert "mpirun" not in run.stream("stderr"), run.stream("stderr")
    assert ok(execute(kernel, "got.len()")).result() == "3"
    assert rank_processes(kernel.pid) == {}


@needs_mpi_build
def test_ranks_calling_different_collectives_fail_alike(kernel):
    run = execute(kernel, "%%ranch 2 --backend mpi --on-error continue\n"
                          "let mut v = vec![1.0f32; if ranch::rank() == 0 { 4 } else { 3 }];\n"
                          "match ranch::comm().all_reduce(&mut v, ranch::Op::Sum) {\n"
                          "    Err(e) => e.to_string(),\n"
                          "    Ok(()) => \"no error\".to_string(),\n"
                          "}", timeout=300)
    text = run.result() if run.reply["content"]["status"] == "ok" else run.error_text()
    # Each rank names the other as the odd one, and says what each called.
    calls = "(rank 0: all_reduce<f32> of 4 elements, Sum; rank 1: all_reduce<f32> of 3 elements, Sum)"
    assert f'["all_reduce failed (rank 1): the ranks called different collectives here {calls}", ' \
           f'"all_reduce failed (rank 0): the ranks called different collectives here {calls}"]' == text, text


@needs_mpi_build
def test_a_rank_stuck_in_mpi_ends_at_the_collective_timeout(kernel):
    text = failed(kernel, "%%ranch 2 --backend mpi --collective-timeout 2\n"
                          "if ranch::rank() == 1 { std::thread::sleep(std::time::Duration::from_secs(60)); }\n"
                          "ranch::comm().barrier().unwrap();")
    assert "rank 0 panicked" in text and "barrier did not complete within 2 s over MPI" in text, text
    assert rank_processes(kernel.pid) == {}


@needs_mpi_build
def test_a_panicking_rank_is_named_by_mpiruns_report(kernel):
    text = failed(kernel, "%%ranch 3 --backend mpi\n"
                          "if ranch::rank() == 2 { panic!(\"bad shard\"); }\n"
                          "let mut v = vec![1.0f64; 8];\n"
                          "ranch::comm().all_reduce(&mut v, ranch::Op::Sum).unwrap();\n"
                          "v[0]")
    assert "rank 2 panicked" in text and "bad shard" in text, text
    assert "CommError" not in text, text
    assert rank_processes(kernel.pid) == {}


def test_mpi_flags_are_checked_before_anything_is_built(kernel):
    for magic, says in [("%%ranch 2 --backend mpi --launcher local", "not --launcher local"),
                        ("%%ranch 4 --hosts a:2,b:2 --backend shm", "does not reach other hosts"),
                        ("%ranch_start 2 --backend mpi", "a pool's collectives use shared memory")]:
        run = execute(kernel, magic + "\n1" if magic.startswith("%%") else magic)
        assert run.reply["content"]["status"] == "error"
        assert says in run.error_text(), run.error_text()
