"""`%%ranch N` through a real Jupyter client: real rank processes, real merging."""
import os
import re
import shutil
import signal
import time

import pytest

from conftest import alive, descendants, execute, interrupt, local_crate, ok, rank_processes, start, stop, is_status


@pytest.fixture(autouse=True)
def no_rank_survives():
    """After every test, no rank of any kernel this run started is left."""
    yield
    deadline = time.monotonic() + 5
    while rank_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rank_processes() == {}


@pytest.fixture(scope="module")
def kc():
    km, kc = start()
    setup = execute(kc, ':dep serde = { version = "1", features = ["derive"] }', timeout=300)
    assert setup.reply["content"]["status"] == "ok", setup.error_text()
    yield kc
    stop(km, kc)


def test_a_segfault_is_named_as_such(kc):
    run = execute(kc, "%%ranch 2\nif ranch::rank() == 1 { unsafe { std::ptr::null_mut::<u8>().write_volatile(1) } }\nranch::rank()")
    assert run.error()["ename"] == "RankFailed", run.error()
    assert "rank 1 was killed by signal 11 (SIGSEGV): a segmentation fault" in run.error()["evalue"], run.error_text()


@pytest.mark.skipif(not shutil.which("prlimit"), reason="prlimit (util-linux) is not installed")
def test_a_rank_past_its_memory_limit_is_named_as_out_of_memory(kc):
    # Rank 1 limits its own address space (as `ulimit -v` or a job's limit would), then asks
    # for more: Rust says which allocation failed and aborts.
    run = execute(kc, "%%ranch 2\n"
                      "if ranch::rank() == 1 {\n"
                      '    let me = std::process::id().to_string();\n'
                      '    assert!(std::process::Command::new("prlimit").args(["--pid", &me, "--as=1000000000"]).status().unwrap().success());\n'
                      "    let v: Vec<u8> = Vec::with_capacity(2 << 30);\n"
                      "    std::hint::black_box(&v);\n"
                      "}\n"
                      "ranch::rank()")
    assert run.error()["ename"] == "RankFailed", run.error_text()
    assert "rank 1 ran out of memory: an allocation of 2.0 GiB failed" in run.error()["evalue"], run.error_text()
    assert "out of memory" in run.status(), run.status()


def test_four_ranks_print_and_return(kc):
    run = ok(execute(kc, '%%ranch 4\nlet r = ranch::rank();\nprintln!("hello from {r} of {}", ranch::world_size());\nr * r',
                     timeout=300))
    assert sorted(run.stream().splitlines()) == [f"[{r}] hello from {r} of 4" for r in range(4)]
    assert run.result() == "[0, 1, 4, 9]"
    html = run.result("text/html")
    assert "<td>3</td>" in html and "<pre>9</pre>" in html


def test_ranks_get_the_launch_environment(kc):
    code = ('%%ranch 2\nlet v = |k: &str| std::env::var(k).unwrap();\n'
            '(v("RANK"), v("LOCAL_RANK"), v("WORLD_SIZE"), v("LOCAL_WORLD_SIZE"), v("MASTER_ADDR"), v("MASTER_PORT"), std::process::id())')
    first = ok(execute(kc, code)).result()
    second = ok(execute(kc, code)).result()
    rows = re.findall(r'\("(\d)", "(\d)", "2", "2", "127.0.0.1", "(\d+)", (\d+)\)', first)
    assert [(r, l) for r, l, _, _ in rows] == [("0", "0"), ("1", "1")]
    assert rows[0][2] == rows[1][2], "one MASTER_PORT per run"
    assert 0 < int(rows[0][2]) < 65536
    assert rows[0][3] != rows[1][3], "separate processes"
    # Each run gets a port that is free for it (the OS may hand out the same one again).
    assert re.findall(r'"127.0.0.1", "(\d+)"', second)


def test_session_items_and_variables_are_shipped(kc):
    ok(execute(kc, '#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]\n'
                   'struct Cfg { scale: f64, name: String }\nfn scaled(c: &Cfg, x: f64) -> f64 { c.scale * x }'))
    ok(execute(kc, 'let cfg = Cfg { scale: 10.0, name: "w".into() };\nlet data: Vec<f64> = (0..8).map(|i| i as f64).collect();'))
    run = ok(execute(kc, '%%ranch 2\nlet part: f64 = ranch::shard(&data).iter().map(|x| scaled(&cfg, *x)).sum();\n'
                         '(cfg.name.clone(), part)'))
    assert run.result() == '[("w", 60.0), ("w", 220.0)]'
    # The session's own values of session types are still there afterwards.
    assert execute(kc, "cfg.name.clone()").result() == '"w"'


def test_ranks_get_copies(kc):
    ok(execute(kc, "let mut counter: u64 = 5;"))
    ok(execute(kc, "%%ranch 2\ncounter += 100;\ncounter"))
    assert execute(kc, "counter").result() == "5"


def test_unshippable_variable_is_named_before_launch(kc):
    ok(execute(kc, "struct Opaque { x: u8 }\nlet opaque = Opaque { x: 1 };"))
    run = execute(kc, '%%ranch 2\nprintln!("launched");\nopaque.x')
    assert run.reply["content"]["status"] == "error"
    assert run.reply["content"]["ename"] == "UnshippableVariable"
    assert "`opaque: Opaque`" in run.reply["content"]["evalue"]
    assert "launched" not in run.stream()


def test_share_names_must_exist(kc):
    run = execute(kc, "%%ranch 2 --share nope\n1")
    assert run.reply["content"]["ename"] == "UsageError"
    assert "no variable `nope`" in run.reply["content"]["evalue"]


def test_compile_errors_are_shown_once_at_the_cells_line_and_nothing_runs(kc):
    run = execute(kc, '%%ranch 3\nprintln!("running");\nlet x: u32 = "nope";\nx')
    assert run.reply["content"]["ename"] == "CompilationError"
    assert run.kinds().count("error") == 1
    text = run.error_text()
    assert text.count("mismatched types") == 1
    assert "cell:3:" in text and 'let x: u32 = "nope";' in text
    assert "running" not in run.stream()


def test_unchanged_cell_reuses_its_artifact(kc):
    code = ('%%ranch 2\nlet exe = std::env::current_exe().unwrap();\n'
            'format!("{} {:?}", exe.display(), std::fs::metadata(&exe).unwrap().modified().unwrap())')
    first = ok(execute(kc, code)).result()
    second = ok(execute(kc, code)).result()
    assert first == second, "same binary, not rebuilt"
    changed = ok(execute(kc, code + " // edited")).result()
    assert changed != first


def test_rank_only_dependencies(kc):
    run = ok(execute(kc, '%%ranch 2\n:dep itoa = "1"\nitoa::Buffer::new().format(ranch::rank() * 7).to_string()',
                     timeout=300))
    assert run.result() == '["0", "7"]'


def test_many_lines_arrive_labelled_and_in_order(kc):
    run = ok(execute(kc, '%%ranch 4\nfor i in 0..2000 { println!("line {i}"); }'))
    lines = run.stream().splitlines()
    assert len(lines) == 8000
    for r in range(4):
        mine = [l for l in lines if l.startswith(f"[{r}] ")]
        assert mine == [f"[{r}] line {i}" for i in range(2000)]
    assert run.result() is None  # unit tail: no execute_result


def test_stderr_goes_to_stderr(kc):
    run = ok(execute(kc, '%%ranch 2\neprintln!("warn {}", ranch::rank());'))
    # (Without ranch's own note, given once on a machine with fewer cores than ranks.)
    lines = [l for l in run.stream("stderr").splitlines() if not l.startswith("ranch: ")]
    assert sorted(lines) == ["[0] warn 0", "[1] warn 1"]
    assert run.stream() == ""


def test_group_outputs_by_rank(kc):
    code = ('%%ranch 3 --group-outputs rank\nfor i in 0..3 { println!("{i}"); '
            'std::thread::sleep(std::time::Duration::from_millis(30)); }')
    lines = ok(execute(kc, code)).stream().splitlines()
    assert lines == [f"[{r}] {i}" for r in range(3) for i in range(3)]


def test_group_outputs_by_type_and_by_ipyparallels_engine(kc):
    code = ('%%ranch 3 --group-outputs type\nlet r = ranch::rank();\neprintln!("err {r}");\n'
            'std::thread::sleep(std::time::Duration::from_millis(30));\nprintln!("out {r}");')
    run = ok(execute(kc, code))
    # (Without ranch's own note, given before the ranks start on a machine with fewer cores.)
    streams = [m["content"] for m in run.outputs
               if m["msg_type"] == "stream" and not m["content"]["text"].startswith("ranch: ")]
    names = [s["name"] for s in streams]
    assert names == sorted(names, key=lambda n: n != "stdout"), f"every stdout before every stderr: {streams}"
    assert "".join(s["text"] for s in streams) == "".join(f"[{r}] out {r}\n" for r in range(3)) + \
        "".join(f"[{r}] err {r}\n" for r in range(3))
    code = '%%ranch 2 --group-outputs engine\nfor i in 0..2 { println!("{i}"); std::thread::sleep(std::time::Duration::from_millis(30)); }'
    assert ok(execute(kc, code)).stream().splitlines() == [f"[{r}] {i}" for r in range(2) for i in range(2)]


def test_see_filters_ranks(kc):
    run = ok(execute(kc, '%%ranch 4 --see 0,2\nprintln!("me {}", ranch::rank());\nranch::rank()'))
    assert sorted(run.stream().splitlines()) == ["[0] me 0", "[2] me 2"]
    assert run.result() == "[0, 1, 2, 3]", "--see filters output, not results"


def test_rich_display_carries_the_rank(kc):
    run = ok(execute(kc, '%%ranch 2\nprintln!("EVCXR_BEGIN_CONTENT text/html\\n<b>{}</b>\\nEVCXR_END_CONTENT", ranch::rank());'))
    shown = sorted((m["metadata"]["ranch"]["rank"], m["data"]["text/html"])
                   for m in (o["content"] for o in run.outputs if o["msg_type"] == "display_data" and not is_status(o)))
    assert shown == [(0, "<b>0</b>"), (1, "<b>1</b>")]


def test_out_binds_the_gathered_values(kc):
    ok(execute(kc, "%%ranch 3 --out squares\n(ranch::rank() * ranch::rank()) as u64"))
    assert execute(kc, "squares.iter().sum::<u64>()").result() == "5"
    ok(execute(kc, "%%ranch 2 --out pairs: (u8, String)\n(ranch::rank() as u8, format!(\"r{}\", ranch::rank()))"))
    assert execute(kc, "pairs[1].1.clone()").result() == '"r1"'


def test_ctx_is_setup_and_teardown(kc):
    ok(execute(kc, 'struct Guard(usize);\nimpl Drop for Guard { fn drop(&mut self) { println!("teardown {}", self.0); } }\n'
                   'fn setup(n: usize) -> Guard { println!("setup {n}"); Guard(n) }'))
    run = ok(execute(kc, '%%ranch 2 --ctx "setup(7)"\nprintln!("body");'))
    for r in range(2):
        mine = [l for l in run.stream().splitlines() if l.startswith(f"[{r}]")]
        assert mine == [f"[{r}] setup 7", f"[{r}] body", f"[{r}] teardown 7"]


def test_a_panicking_rank_stops_the_others_and_is_named(kc):
    code = ('%%ranch 3\nprintln!("started {}", ranch::rank());\n'
            'if ranch::rank() == 1 { panic!("bad shard {}", 42); }\n'
            'std::thread::sleep(std::time::Duration::from_secs(60));')
    t0 = time.monotonic()
    run = execute(kc, code)
    assert time.monotonic() - t0 < 30
    c = run.reply["content"]
    assert c["status"] == "error" and c["ename"] == "RankFailed"
    assert c["evalue"] == "rank 1 panicked at cell line 3: bad shard 42"
    text = run.error_text()
    assert "ranks 0, 2" in text
    # What the failed rank wrote last is in the table before the error, and said once.
    table = run.failure_table()
    assert "last output of rank 1:\n    [1] started 1" in table, table
    assert "started 1" not in text and text.count("bad shard 42") == 1, text


def test_on_error_continue_lets_the_others_finish(kc):
    code = ('%%ranch 3 --on-error continue\nif ranch::rank() == 0 { panic!("early"); }\n'
            'std::thread::sleep(std::time::Duration::from_millis(300));\nprintln!("finished {}", ranch::rank());')
    run = execute(kc, code)
    assert run.reply["content"]["evalue"] == "rank 0 panicked at cell line 2: early"
    assert sorted(run.stream().splitlines()) == ["[1] finished 1", "[2] finished 2"]


def test_exit_status_and_kill_9_are_reported(kc):
    run = execute(kc, "%%ranch 2\nif ranch::rank() == 1 { std::process::exit(3); }\n0")
    assert run.reply["content"]["evalue"] == "rank 1 exited with status 3"
    code = ('%%ranch 2\nif ranch::rank() == 0 {\n    std::process::Command::new("kill").args(["-9", &std::process::id().to_string()]).status().unwrap();\n}\n'
            'std::thread::sleep(std::time::Duration::from_secs(60));')
    run = execute(kc, code)
    assert run.reply["content"]["evalue"] == "rank 0 was killed by signal 9 (SIGKILL)"


def test_timeout_names_the_ranks_still_running(kc):
    code = '%%ranch 3 --timeout 1\nif ranch::rank() != 0 { std::thread::sleep(std::time::Duration::from_secs(60)); }'
    t0 = time.monotonic()
    run = execute(kc, code)
    assert time.monotonic() - t0 < 20
    assert run.reply["content"]["status"] == "error"
    assert "ranks still running were stopped: 1, 2" in run.reply["content"]["evalue"]


@pytest.mark.parametrize("line,needle", [
    ("%%ranch", "<N>"),
    ("%%ranch four", "whole number"),
    ("%%ranch 0", "at least 1"),
    ("%%ranch 100000", "limit of 256"),
    ("%%ranch 2 --bogus", "--bogus"),
    ("%%ranch 2 --timeout soon", "positive number"),
    ("%%ranch 2 --gpus 7", "GPU"),
])
def test_bad_magic_lines_are_usage_errors(kc, line, needle):
    run = execute(kc, line + '\nprintln!("ran");')
    c = run.reply["content"]
    assert c["status"] == "error" and c["ename"] == "UsageError"
    assert needle in c["evalue"]
    assert run.stream() == ""
    assert execute(kc, "1 + 1").result() == "2"


def test_help_is_normal_output(kc):
    run = ok(execute(kc, "%%ranch --help"))
    assert "Usage: %%ranch" in run.stream() and "--on-error" in run.stream()


def test_interrupt_stops_every_rank_and_keeps_the_session():
    km, kc = start()
    try:
        ok(execute(kc, "let kept = 11;"))
        msg_id = kc.execute("%%ranch 3\nprintln!(\"up\");\nstd::thread::sleep(std::time::Duration::from_secs(120));")
        deadline = time.monotonic() + 180
        while len(rank_processes(kc.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(rank_processes(kc.pid)) == 3
        interrupt(km, kc, msg_id)
        assert rank_processes(kc.pid) == {}
        assert execute(kc, "kept").result() == "11", "variables survive a %%ranch interrupt"
    finally:
        stop(km, kc)


def test_killing_the_kernel_kills_its_ranks():
    km, kc = start()
    try:
        kc.execute("%%ranch 2\nstd::thread::sleep(std::time::Duration::from_secs(120));")
        deadline = time.monotonic() + 180
        while len(rank_processes(kc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        ranks = rank_processes(kc.pid)
        assert len(ranks) == 2
        os.kill(kc.pid, signal.SIGKILL)
        # Orphans would no longer be below the kernel: follow the ranks themselves.
        deadline = time.monotonic() + 5
        while any(alive(p) for p in ranks) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p for p in ranks if alive(p)] == []
    finally:
        kc.stop_channels()
        km.cleanup_resources()


def test_interrupt_during_the_rank_build_keeps_the_session(tmp_path):
    km, kc = start()
    try:
        ok(execute(kc, "let kept = 12;"))
        # A rank-only dependency whose build never ends on its own.
        name, dep = local_crate(tmp_path, build_rs="fn main() { std::thread::sleep(std::time::Duration::from_secs(600)); }\n")
        msg_id = kc.execute(f"%%ranch 2\n{dep}\n{name}::answer()")
        deadline = time.monotonic() + 120
        seen_build = False
        while time.monotonic() < deadline and not seen_build:
            msg = kc.get_iopub_msg(timeout=120)
            text = msg["content"].get("text", "") if msg["msg_type"] == "stream" else ""
            seen_build = "Compiling" in text and msg["parent_header"].get("msg_id") == msg_id
        assert seen_build, "the rank build streams cargo's progress"
        assert "nothing was launched" in interrupt(km, kc, msg_id)["evalue"]
        builds = [c for c in descendants(kc.pid).values() if "build-script" in c or c.startswith("cargo")]
        assert builds == [], "the stopped build left processes behind"
        assert execute(kc, "kept").result() == "12"
    finally:
        stop(km, kc)


def test_ranks_share_the_cores_out_and_a_users_setting_wins(kc):
    run = ok(execute(kc, '%%ranch 2\n(std::env::var("OMP_NUM_THREADS").unwrap(), std::env::var("RAYON_NUM_THREADS").unwrap())'))
    pairs = re.findall(r'\("(\d+)", "(\d+)"\)', run.result())
    assert len(pairs) == 2 and all(a == b and 1 <= int(a) <= os.cpu_count() for a, b in pairs), run.result()
    km, kc2 = start(env=dict(os.environ, OMP_NUM_THREADS="7"))
    try:
        mine = ok(execute(kc2, '%%ranch 1\nstd::env::var("OMP_NUM_THREADS").unwrap()')).result()
        assert mine == '["7"]'
    finally:
        stop(km, kc2)


def test_more_ranks_than_cores_is_said_once_per_session():
    km, kc = start()
    try:
        n = os.cpu_count() + 1
        first = ok(execute(kc, f"%%ranch {n}\nranch::rank()"))
        assert f"ranch: {n} ranks share " in first.stream("stderr")
        again = ok(execute(kc, f"%%ranch {n}\nranch::rank()"))
        assert "ranks share" not in again.stream("stderr")
    finally:
        stop(km, kc)


def test_each_rank_gets_its_own_reproducible_seed(kc):
    code = "%%ranch 3\n(ranch::seed(42), ranch::seed(42), ranch::seed(43))"
    first, second = ok(execute(kc, code)).result(), ok(execute(kc, code)).result()
    assert first == second
    triples = [tuple(map(int, t)) for t in re.findall(r"\((\d+), (\d+), (\d+)\)", first)]
    assert len(triples) == 3 and all(a == b != c for a, b, c in triples)
    assert len({a for a, _, _ in triples}) == 3


PANICS_IN_A_FN = ("%%ranch 2\n"
                  "#[inline(never)]\n"
                  'fn find_bad_record(r: usize) { if r == 1 { panic!("bad record"); } }\n'
                  "find_bad_record(ranch::rank());\n"
                  "ranch::rank()")


@pytest.mark.parametrize("backtrace", ["1", None])
def test_a_panicking_rank_brings_its_backtrace_when_rust_backtrace_is_set(backtrace):
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE")}
    if backtrace:
        env["RUST_BACKTRACE"] = backtrace
    km, kc = start(env=env)
    try:
        text = execute(kc, PANICS_IN_A_FN).error_text()
        assert "rank 1 panicked at cell line 3: bad record" in text, text
        if not backtrace:
            assert "backtrace" not in text, text
            return
        trace = text.split("backtrace of rank 1 (RUST_BACKTRACE):\n", 1)[1]
        frames = [l for l in trace.splitlines() if re.match(r"\s+\d+: ", l)]
        assert frames and "find_bad_record" in frames[0], trace
        # Rank programs have line tables: the cell's frame says its line, and no build path shows.
        assert trace.splitlines()[1].strip() == "at cell line 3", trace
        assert "/.cache/" not in trace and "src/main.rs" not in trace, trace
        assert "__ranch_main" not in trace and "catch_unwind" not in trace, "cut below the cell: " + trace
        assert not any(m in f for f in frames for m in ("panicking", "lang_start", "libc_start")), trace
    finally:
        stop(km, kc)


def test_map_hands_items_to_free_ranks_and_gives_every_rank_all_results_in_order(kc):
    # Item 0 costs 600 ms, the 39 others 5 ms: the rank that takes item 0 does little else
    # (with `shard` every rank would do 10), and every rank gets all 40 results in order.
    run = ok(execute(kc, "%%ranch 4\n"
                         "let items: Vec<u64> = (0..40).collect();\n"
                         "let out = ranch::map(&items, |&i| {\n"
                         "    std::thread::sleep(std::time::Duration::from_millis(if i == 0 { 600 } else { 5 }));\n"
                         "    (i * i, ranch::rank())\n"
                         "}).unwrap();\n"
                         "assert_eq!(out.iter().map(|p| p.0).collect::<Vec<_>>(), items.iter().map(|i| i * i).collect::<Vec<_>>());\n"
                         "let by_rank: Vec<usize> = (0..4).map(|r| out.iter().filter(|p| p.1 == r).count()).collect();\n"
                         "by_rank", timeout=300))
    counts = [[int(x) for x in v.strip("[] ").split(",")] for v in run.result().strip("[]").split("], [")]
    assert len(counts) == 4 and all(c == counts[0] for c in counts), "every rank has the same results"
    assert sum(counts[0]) == 40 and min(counts[0]) <= 2, counts[0]
    # In a plain cell: a serial map.
    assert ok(execute(kc, "ranch::map(&[1u32, 2, 3], |x| x * 2).unwrap()")).result() == "[2, 4, 6]"
