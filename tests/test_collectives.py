"""Collectives, `%in_ddp` and `--ddp` through a real Jupyter client, on real ranks."""
import glob
import re
import threading
import time

import pytest

from conftest import cell_running, execute, interrupt, ok, start, stop
from test_ranch import no_rank_survives  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="module")
def kc():
    km, kc = start()
    yield kc
    stop(km, kc)


def segments(pid):
    return glob.glob(f"/dev/shm/ranch-{pid}-*")


def test_all_reduce_every_op_and_type(kc):
    code = """%%ranch 4
let c = ranch::comm();
let r = ranch::rank();
let mut s = vec![r as f32 + 1.0; 7];            // 7 does not divide by 4
c.all_reduce(&mut s, ranch::Op::Sum).unwrap();
let mut mn = vec![r as i64 - 2; 3];
c.all_reduce(&mut mn, ranch::Op::Min).unwrap();
let mut mx = vec![r as u32; 2];
c.all_reduce(&mut mx, ranch::Op::Max).unwrap();
let mut p = vec![(r + 1) as f64; 1];
c.all_reduce(&mut p, ranch::Op::Prod).unwrap();
let mut empty: Vec<u64> = vec![];
c.all_reduce(&mut empty, ranch::Op::Sum).unwrap();
(s, mn, mx, p, empty.len())"""
    run = ok(execute(kc, code))
    one = "([10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0], [-2, -2, -2], [3, 3], [24.0], 0)"
    assert run.result() == f"[{', '.join([one] * 4)}]"


def test_large_buffers_span_many_chunks(kc):
    # 256 MiB of f32 per rank: far larger than a shared-memory slot.
    code = """%%ranch 2
let n = 64 << 20;
let mut v = vec![1.0f32 + ranch::rank() as f32; n];
v[n - 1] = 10.0;
ranch::comm().all_reduce(&mut v, ranch::Op::Sum).unwrap();
(v[0], v[n / 2], v[n - 1], v.len())"""
    run = ok(execute(kc, code, timeout=300))
    assert run.result() == "[(3.0, 3.0, 20.0, 67108864), (3.0, 3.0, 20.0, 67108864)]"


def test_back_to_back_collectives_of_every_size_keep_their_data_apart(kc):
    # Small collectives (up to 16 KiB) take one barrier and alternate two buffers per rank;
    # ranks running ahead by one collective must never see or clobber another's data.
    code = """%%ranch 3
let c = ranch::comm();
let r = ranch::rank() as u64;
let mut bad = 0u32;
for i in 0..300u64 {
    if (i + r) % 7 == 0 { std::thread::sleep(std::time::Duration::from_micros(300)); }
    for n in [1usize, 4096, 4097] {
        let mut a = vec![i * 10 + r; n];
        c.all_reduce(&mut a, ranch::Op::Sum).unwrap();
        bad += a.iter().filter(|x| **x != 30 * i + 3).count() as u32;
        let root = (i % 3) as usize;
        let mut b = vec![if r == root as u64 { i } else { u64::MAX }; n];
        c.broadcast_slice(&mut b, root).unwrap();
        bad += b.iter().filter(|x| **x != i).count() as u32;
        let mut m = vec![i + r; n];
        c.reduce(&mut m, ranch::Op::Max, root).unwrap();
        let want = if r == root as u64 { i + 2 } else { i + r };
        bad += m.iter().filter(|x| **x != want).count() as u32;
    }
}
bad"""
    assert ok(execute(kc, code, timeout=300)).result() == "[0, 0, 0]"


def test_every_element_of_a_many_chunk_reduction_lands_in_place(kc):
    # 3 ranks, chunks that do not divide evenly: every rank's own share of each chunk is
    # combined from its buffer, the others' through the slots.
    code = """%%ranch 3
let c = ranch::comm();
let r = ranch::rank() as u64;
let n = 200_001usize;
let mut a: Vec<u64> = (0..n as u64).map(|i| i * (r + 1)).collect();
c.all_reduce(&mut a, ranch::Op::Sum).unwrap();
let all_ok = a.iter().enumerate().all(|(i, x)| *x == 6 * i as u64);
let mut b: Vec<u64> = (0..n as u64).map(|i| i * (r + 1)).collect();
c.reduce(&mut b, ranch::Op::Max, 1).unwrap();
let want = |i: u64| if r == 1 { 3 * i } else { i * (r + 1) };
(all_ok, b.iter().enumerate().all(|(i, x)| *x == want(i as u64)))"""
    run = ok(execute(kc, code, timeout=300))
    assert run.result() == "[(true, true), (true, true), (true, true)]"


def test_large_broadcasts_arrive_whole_at_any_alignment(kc):
    # 16 MiB and more is copied out with streaming stores; a slice starting 4 bytes into its
    # allocation exercises the unaligned head and tail.
    code = """%%ranch 3
let n = (4 << 20) + 5;
let mut b: Vec<u32> = if ranch::rank() == 1 { (0..n as u32).collect() } else { vec![7; n] };
ranch::comm().broadcast_slice(&mut b[1..], 1).unwrap();
(b[0], b[1..].iter().enumerate().all(|(i, x)| *x == i as u32 + 1))"""
    run = ok(execute(kc, code, timeout=300))
    assert run.result() == "[(7, true), (0, true), (7, true)]"


def test_reduce_broadcast_gather_scatter_send_recv(kc):
    code = """%%ranch 3
let c = ranch::comm();
let r = ranch::rank();
let mut red = vec![r as i32 + 1; 4];
c.reduce(&mut red, ranch::Op::Sum, 2).unwrap();
let b: String = c.broadcast(if r == 1 { Some(format!("from {r}")) } else { None }, 1).unwrap();
let mut bs = vec![r as u64; 5];
c.broadcast_slice(&mut bs, 2).unwrap();
let all = c.all_gather(&(r * 10)).unwrap();
let g = c.gather(&format!("r{r}"), 0).unwrap();
let s: (usize, String) = c.scatter(if r == 0 { Some(vec![(0, "a".into()), (1, "b".into()), (2, "c".into())]) } else { None }, 0).unwrap();
let big: Vec<u8> = if r == 0 { c.send(&vec![7u8; 300_000], 2).unwrap(); vec![] } else if r == 2 { c.recv(0).unwrap() } else { vec![] };
(red[0], b, bs[0], all, g, s, big.len())"""
    run = ok(execute(kc, code))
    assert run.result() == (
        '[(1, "from 1", 2, [0, 10, 20], Some(["r0", "r1", "r2"]), (0, "a"), 0), '
        '(2, "from 1", 2, [0, 10, 20], None, (1, "b"), 0), '
        '(6, "from 1", 2, [0, 10, 20], None, (2, "c"), 300000)]'
    )


def test_a_plain_cell_is_a_group_of_one(kc):
    run = ok(execute(kc, "let mut z = vec![1.5f64, 2.5];\nranch::comm().all_reduce(&mut z, ranch::Op::Sum).unwrap();\n"
                         "let all = ranch::comm().all_gather(&3u8).unwrap();\n(z, all, ranch::rank(), ranch::world_size())"))
    assert run.result() == "([1.5, 2.5], [3], 0, 1)"


def test_a_dead_rank_fails_the_waiting_ranks_by_name(kc):
    code = """%%ranch 3 --on-error continue
let c = ranch::comm();
if ranch::rank() == 2 { panic!("rank 2 gives up"); }
c.barrier().unwrap();"""
    t0 = time.monotonic()
    run = execute(kc, code)
    assert time.monotonic() - t0 < 20
    text = run.error_text()
    assert "rank 2 panicked at cell line 3: rank 2 gives up" in text
    # The two survivors fail with a CommError: said once with both ranks when their messages
    # are the same, else once each.
    unwrap = "panicked at cell line 4: called `Result::unwrap()` on an `Err` value: CommError"
    assert f"ranks 0, 1 {unwrap}" in text or (f"rank 0 {unwrap}" in text and f"rank 1 {unwrap}" in text), text
    assert "rank 2 exited before joining barrier" in text
    # And as a table before the error, for notebooks.
    html = [d["text/html"] for d in run.displays() if "text/html" in d]
    assert html and ">rank 2</td>" in html[-1] and ">rank 2 gives up</td>" in html[-1], html[-1]
    assert ">ranks 0, 1</td>" in html[-1] or (">rank 0</td>" in html[-1] and ">rank 1</td>" in html[-1])


def test_a_rank_that_finishes_without_joining_is_named_at_once(kc):
    # Rank 2 never touches the group; the others must not wait for the 120 s timeout.
    code = """%%ranch 3
if ranch::rank() == 2 { None } else { ranch::comm().barrier().err().map(|e| (e.ranks, e.message)) }"""
    t0 = time.monotonic()
    run = ok(execute(kc, code))
    assert time.monotonic() - t0 < 20
    # Each waiter names rank 2: directly, or as the cause of the group breaking when the
    # other waiter noticed first.
    waiters = re.findall(r'Some\(\(\[(\d)\], "([^"]*)"\)\)', run.result())
    assert [r for r, _ in waiters] == ["2", "2"], run.result()
    assert all("rank 2 finished without joining barrier" in m for _, m in waiters), run.result()
    assert run.result().endswith(", None]")


def test_a_caught_panic_does_not_fail_the_rank(kc):
    code = """%%ranch 2
let caught = std::panic::catch_unwind(|| panic!("caught here")).is_err();
let joined = std::thread::spawn(|| panic!("in a thread")).join().is_err();
(caught, joined, ranch::rank())"""
    run = ok(execute(kc, code))
    assert run.result() == "[(true, true, 0), (true, true, 1)]"
    # An uncaught one still fails the rank, with its own message.
    run = execute(kc, '%%ranch 2\nlet _ = std::panic::catch_unwind(|| panic!("first"));\npanic!("second");')
    # (Both ranks fail the same way, said once; or the one that fails first stops the other,
    # --on-error abort.)
    assert re.match(r"(rank 0|rank 1|ranks 0, 1) panicked at cell line 3: second", run.reply["content"]["evalue"]), run.reply["content"]


def test_after_a_comm_error_every_later_collective_fails_at_once(kc):
    # Rank 0's barrier times out (it raises the error); rank 1 arrives later. From then on
    # every operation fails at once on both, rank 0 included.
    code = """%%ranch 2 --collective-timeout 1
let c = ranch::comm();
if ranch::rank() == 1 { std::thread::sleep(std::time::Duration::from_secs(3)); }
let first = c.barrier().err().map(|e| e.ranks);
let t = std::time::Instant::now();
let later = c.all_reduce(&mut [1.0f32], ranch::Op::Sum).err().map(|e| e.message.contains("the group is broken: rank 0's barrier failed"));
let again = c.barrier().is_err() && c.all_gather(&1u8).is_err();
let p2p = if ranch::rank() == 0 { c.send(&1u8, 1).is_err() } else { c.recv::<u8>(0).is_err() };
(first, later, again, p2p, t.elapsed() < std::time::Duration::from_millis(500))"""
    run = ok(execute(kc, code))
    # Both name rank 1, the one that was late (rank 1 learns it from the broken group).
    assert run.result() == "[(Some([1]), Some(true), true, true, true), (Some([1]), Some(true), true, true, true)]"


def test_different_collectives_or_lengths_are_errors(kc):
    code = """%%ranch 2
let c = ranch::comm();
let skipped = if ranch::rank() == 0 { c.barrier().err() } else { c.all_reduce(&mut [1.0f32], ranch::Op::Sum).err() };
let mut v = vec![1u32; 3 + ranch::rank()];
let lengths = c.all_reduce(&mut v, ranch::Op::Sum).err();
(skipped.map(|e| e.to_string()), lengths.map(|e| e.ranks))"""
    run = ok(execute(kc, code))
    res = run.result()
    assert "the ranks called different collectives here (rank 0: barrier; rank 1: all_reduce<f32> of 1 elements, Sum)" in res
    # After an error the group is unusable, and says so rather than hanging.
    assert res.count("Some(") == 4, res


def test_mismatched_lengths_name_the_odd_ranks(kc):
    code = """%%ranch 3
let mut v = vec![1u32; if ranch::rank() == 1 { 5 } else { 4 }];
ranch::comm().all_reduce(&mut v, ranch::Op::Sum).err().map(|e| (e.op, e.ranks))"""
    run = ok(execute(kc, code))
    assert run.result() == '[Some(("all_reduce", [1])), Some(("all_reduce", [0, 2])), Some(("all_reduce", [1]))]'


def test_collective_timeout_bounds_the_wait(kc):
    code = """%%ranch 2 --collective-timeout 1
if ranch::rank() == 1 { std::thread::sleep(std::time::Duration::from_secs(4)); }
ranch::comm().barrier().err().map(|e| (e.ranks, e.message.contains("timed out after 1s")))"""
    t0 = time.monotonic()
    run = ok(execute(kc, code))
    assert time.monotonic() - t0 < 15
    assert run.result().startswith("[Some(([1], true)), ")


def test_strangers_at_the_rendezvous_get_nothing_and_break_nothing(kc):
    code = """%%ranch 2
use std::io::{Read, Write};
let port = std::env::var("MASTER_PORT").unwrap();
let mut s = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
s.write_all(b"RANCH1 not-the-token 0\\n").unwrap();
s.set_read_timeout(Some(std::time::Duration::from_secs(3))).unwrap();
let mut got = Vec::new();
let _ = s.read_to_end(&mut got);
let mut v = vec![1u8; 4];
ranch::comm().all_reduce(&mut v, ranch::Op::Sum).unwrap();
(got.len(), v[0])"""
    run = ok(execute(kc, code))
    assert run.result() == "[(0, 2), (0, 2)]"


def test_segments_are_removed_even_when_ranks_crash(kc):
    run = execute(kc, "%%ranch 2\nranch::comm().barrier().unwrap();\nstd::process::abort();")
    assert "killed by signal 6 (SIGABRT)" in run.reply["content"]["evalue"], run.error_text()
    assert segments(kc.pid) == []


def test_in_ddp_returns_the_base_ranks_value(kc):
    ok(execute(kc, "fn work(scale: usize) -> usize {\n    let mut v = vec![ranch::rank() * scale];\n"
                   "    ranch::comm().all_reduce(&mut v, ranch::Op::Sum).unwrap();\n    v[0] + ranch::rank()\n}"))
    assert ok(execute(kc, "%in_ddp 4 work(10)")).result() == "60"
    assert ok(execute(kc, "%in_ddp 4 --gather work(10)")).result() == "[60, 61, 62, 63]"
    env = ok(execute(kc, '%in_ddp 2 --gather (std::env::var("RANK").unwrap(), std::env::var("MASTER_ADDR").unwrap())'))
    assert env.result() == '[("0", "127.0.0.1"), ("1", "127.0.0.1")]'


def test_in_ddp_usage_errors(kc):
    for line, needle in [("%in_ddp 4", "needs an expression"), ("%in_ddp x f()", "whole number"),
                         ("%in_ddp 2 --world-size 4 f()", "--port"), ("%%ranch 2 --gather\n1", "%in_ddp")]:
        run = execute(kc, line)
        assert run.reply["content"]["ename"] == "UsageError", line
        assert needle in run.reply["content"]["evalue"], (line, run.reply["content"]["evalue"])


def unused_port():
    """A port to host a group on (the kernel reports it if someone took it meanwhile)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_two_kernels(kc, kc2, code):
    """Runs `code` (formatted with the base rank b) in both kernels at once."""
    results = {}

    def run(k, b):
        results[b] = execute(k, code.format(b=b), timeout=300)

    host = threading.Thread(target=run, args=(kc, 0))
    host.start()
    run(kc2, 2)
    host.join(timeout=300)
    return results[0], results[2]


def test_two_kernels_form_one_group(kc):
    km2, kc2 = start()
    try:
        port = unused_port()
        code = ("%in_ddp 2 --gather --world-size 4 --base-rank {b} --port PORT --see {b}\n"
                '{{ println!("hi from {{}}", ranch::rank()); let mut v = vec![ranch::rank() as u64 + 1]; '
                "ranch::comm().all_reduce(&mut v, ranch::Op::Sum).unwrap(); (ranch::rank(), ranch::world_size(), v[0]) }}")
        code = code.replace("PORT", str(port))
        host, joined = in_two_kernels(kc, kc2, code)
        assert ok(host).result() == "[(0, 4, 10), (1, 4, 10)]"
        assert ok(joined).result() == "[(2, 4, 10), (3, 4, 10)]"
        # Global ranks everywhere: --see, the table, the labels.
        assert joined.stream() == "[2] hi from 2\n"
        html = joined.result("text/html")
        assert "<td>2</td>" in html and "<td>3</td>" in html and "<td>0</td>" not in html
        # ... and the error report.
        # (--ddp: the group forms across both kernels before the body runs.)
        fail = ("%%ranch 2 --ddp --world-size 4 --base-rank {b} --port PORT --on-error continue\n"
                'if ranch::rank() == 3 {{ println!("about to fail"); panic!("three"); }}\nranch::rank()').replace("PORT", str(port))
        host, joined = in_two_kernels(kc, kc2, fail)
        assert "rank 3 panicked at cell line 2: three" in joined.reply["content"]["evalue"]
        assert "    [3] about to fail" in joined.failure_table(), joined.failure_table()
        assert "rank 3 exited before joining barrier" in host.error_text()
    finally:
        stop(km2, kc2)


def test_waiting_for_another_kernels_group_can_be_interrupted():
    port = unused_port()  # nobody hosts a group there
    code = f"%%ranch 2 --world-size 4 --base-rank 2 --port {port}\nranch::rank()"
    with cell_running(code, f"waiting for the group on port {port}") as (km, kc, msg_id):
        assert "nothing was launched" in interrupt(km, kc, msg_id)["evalue"]
        assert ok(execute(kc, "1 + 1")).result() == "2"


def test_values_of_different_types_are_errors_not_reinterpretations(kc):
    code = """%%ranch 2
let c = ranch::comm();
(if ranch::rank() == 0 { c.all_gather(&1i32).err() } else { c.all_gather(&1u32).err() }).map(|e| e.message)"""
    res = ok(execute(kc, code)).result()
    assert res.count("the ranks passed values of different types to all_gather (rank") == 2, res
    code = """%%ranch 2
let c = ranch::comm();
(if ranch::rank() == 0 { c.send(&7i32, 1).err() } else { c.recv::<u32>(0).err() }).map(|e| e.message)"""
    res = ok(execute(kc, code)).result()
    assert res == '[None, Some("rank 0 sent a value of another type than the `u32` this rank receives")]', res


def test_garbage_in_a_mailbox_is_an_error_not_a_crash(kc):
    code = """%%ranch 2
use std::os::unix::fs::FileExt;
let c = ranch::comm();
c.barrier().unwrap();
if ranch::rank() == 0 {
    // Scribble a mailbox header (0 -> 1) claiming 2^40 bytes in a 64 KiB mailbox.
    let seg = std::fs::read_dir("/dev/shm").unwrap().filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with(&format!("ranch-{}-", std::os::unix::process::parent_id())))
        .unwrap().path();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(seg).unwrap();
    let lay = ranch::__rt::group::Layout::new(2);
    let mb = (lay.mailboxes + (0 * 2 + 1) * (64 + lay.mailbox_bytes)) as u64;
    f.write_all_at(&(1u64 << 40).to_ne_bytes(), mb + 8).unwrap();
    f.write_all_at(&(1u64 << 40).to_ne_bytes(), mb + 16).unwrap();
    f.write_all_at(&1u64.to_ne_bytes(), mb).unwrap();
    None
} else {
    Some(c.recv::<u8>(0).unwrap_err().message)
}"""
    res = ok(execute(kc, code)).result()
    assert 'Some("rank 0 wrote a malformed message into its mailbox")' in res, res


def test_threads_of_one_rank_may_send_and_receive_at_once(kc):
    code = """%%ranch 2
let c = ranch::comm();
let per_thread = 40;
let bad = std::thread::scope(|s| {
    let workers: Vec<_> = (0..2u8).map(|t| s.spawn(move || {
        let mut bad = 0;
        for i in 0..per_thread {
            if ranch::rank() == 0 {
                // 200 KB: several mailbox chunks each, from two threads at once.
                c.send(&vec![t * 100 + (i % 100) as u8; 200_000], 1).unwrap();
            } else {
                let v: Vec<u8> = c.recv(0).unwrap();
                if v.len() != 200_000 || v.iter().any(|&b| b != v[0]) { bad += 1; }
            }
        }
        bad
    })).collect();
    workers.into_iter().map(|w| w.join().unwrap()).sum::<usize>()
});
bad"""
    assert ok(execute(kc, code, timeout=300)).result() == "[0, 0]"
