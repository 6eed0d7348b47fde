"""End-to-end behaviour of plain cells, through a real Jupyter client."""
import json
import os
import time
from pathlib import Path

import pytest

from conftest import execute, interrupt, local_crate, ok, start, stop, wait_for_output


def test_execution_count_starts_at_one(fresh_kernel):
    _, kc = fresh_kernel
    first = execute(kc, "1 + 1")
    assert first.reply["content"]["execution_count"] == 1
    assert first.result() == "2"
    assert execute(kc, "2 + 2").reply["content"]["execution_count"] == 2


def test_stdout_streams_while_the_cell_runs(kernel):
    code = """
for i in 0..4 {
    println!("tick {i}");
    std::thread::sleep(std::time::Duration::from_millis(400));
}
"""
    run = execute(kernel, code)
    assert run.reply["content"]["status"] == "ok"
    assert run.stream() == "".join(f"tick {i}\n" for i in range(4))
    ticks = [t for m, t in zip(run.outputs, run.arrival) if m["msg_type"] == "stream"]
    # Lines arrive as they are printed, not all at the end.
    assert ticks[-1] - ticks[0] > 0.8, ticks


def test_partial_lines_stream_and_trailing_print_is_shown(kernel):
    code = """
use std::io::Write;
print!("progress: 10%");
std::io::stdout().flush().unwrap();
std::thread::sleep(std::time::Duration::from_millis(700));
print!(" done")
"""
    run = execute(kernel, code)
    chunks = [(m["content"]["text"], t) for m, t in zip(run.outputs, run.arrival) if m["msg_type"] == "stream"]
    assert "".join(c for c, _ in chunks) == "progress: 10% done"
    assert chunks[0][0] == "progress: 10%"
    assert chunks[-1][1] - chunks[0][1] > 0.4


def test_stderr_goes_to_stderr(kernel):
    run = execute(kernel, 'eprintln!("to stderr"); println!("to stdout");')
    assert run.stream("stderr") == "to stderr\n"
    assert run.stream("stdout") == "to stdout\n"


def test_panic_is_an_error_and_keeps_earlier_variables(kernel):
    execute(kernel, "let kept = 41;")
    run = execute(kernel, 'let lost = 1;\npanic!("boom {}", 7);')
    content = run.reply["content"]
    assert content["status"] == "error"
    assert content["ename"] == "panic"
    assert "boom 7" in content["evalue"]
    assert run.kinds() == ["error"], run.kinds()  # the panic text is not also dumped on stderr
    assert execute(kernel, "kept + 1").result() == "42"


def test_compile_error_points_at_the_users_line(kernel):
    run = execute(kernel, 'let a = 1;\nlet b: i32 = "text";\na + b')
    assert run.reply["content"]["status"] == "error"
    assert run.reply["content"]["ename"] == "CompilationError"
    text = run.error_text()
    assert "mismatched types" in text
    assert "cell:2:" in text, text
    assert 'let b: i32 = "text";' in text


def test_compile_error_in_the_tail_line_keeps_its_column(kernel):
    run = execute(kernel, "let a = 1;\na + undefined_name")
    text = run.error_text()
    assert "cell:2:5" in text, text


def test_every_display_block_is_shown(kernel):
    code = '''
println!("EVCXR_BEGIN_CONTENT text/html\\n<b>one</b>\\nEVCXR_END_CONTENT");
println!("between");
println!("EVCXR_BEGIN_CONTENT text/html\\n<b>two</b>\\nEVCXR_END_CONTENT");
println!("EVCXR_BEGIN_CONTENT text/html\\n<b>three</b>\\nEVCXR_END_CONTENT");
'''
    run = execute(kernel, code)
    assert [d["text/html"] for d in run.displays()] == ["<b>one</b>", "<b>two</b>", "<b>three</b>"]
    assert run.stream() == "between\n"
    assert run.result() is None


def test_tail_value_is_the_execute_result(kernel):
    run = execute(kernel, 'let v = vec![1, 2];\nformat!("{:?}", v)')
    assert run.result() == '"[1, 2]"'
    assert run.kinds() == ["execute_result"]


def test_commands_keep_working(kernel):
    execute(kernel, "let answer: u32 = 42;")
    run = execute(kernel, ":vars")
    assert "answer" in run.result("text/plain")
    assert "u32" in run.result("text/plain")


def test_dep_shows_cargo_progress_in_the_cell(kernel, tmp_path):
    name, dep = local_crate(tmp_path)
    run = execute(kernel, dep, timeout=300)
    assert run.reply["content"]["status"] == "ok", run.error_text()
    assert f"Compiling {name} v0.1.0" in run.stream("stderr")
    assert execute(kernel, f"{name}::answer()").result() == "42"


def test_input_request_round_trip(kernel):
    code = 'let name = evcxr_input::get_string("name? ");\nformat!("hi {name}")'
    execute(kernel, ':dep evcxr_input = "1"', timeout=300)
    msg_id = kernel.execute(code, allow_stdin=True)
    req = kernel.get_stdin_msg(timeout=120)
    assert req["msg_type"] == "input_request"
    assert req["content"]["prompt"] == "name? "
    kernel.input("rust")
    reply = kernel.get_shell_msg(timeout=60)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "ok"


def test_interrupt_stops_a_running_cell_and_says_what_was_lost(fresh_kernel):
    km, kc = fresh_kernel
    execute(kc, "let before = 3;")
    msg_id = kc.execute('println!("running");\nloop { std::thread::sleep(std::time::Duration::from_millis(50)); }')
    wait_for_output(kc, msg_id, "running")  # compiled and running: interrupt now
    assert "variables were lost" in interrupt(km, kc, msg_id)["evalue"]
    assert execute(kc, "1 + 2").result() == "3"


def test_process_crash_is_reported(kernel):
    run = execute(kernel, "std::process::abort();")
    assert run.reply["content"]["status"] == "error"
    assert run.reply["content"]["ename"] == "ProcessDied"
    assert "variables were lost" in run.reply["content"]["evalue"]
    assert execute(kernel, "5 * 5").result() == "25"


def test_backtraces_stay_off_in_cells(kernel):
    """evcxr's child gets RUST_BACKTRACE=0 on its command (cell code has no debug info, so a
    backtrace is noise), without it or the kernel changing their own environment."""
    assert ok(execute(kernel, 'std::env::var("RUST_BACKTRACE").unwrap()', timeout=300)).result() == '"0"'


def test_heartbeat(kernel):
    assert kernel.hb_channel.is_beating()


def test_comm_messages_get_answers(kernel):
    msg_id = kernel.comm_info()
    reply = kernel.get_shell_msg(timeout=10)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"] == {"status": "ok", "comms": {}}
    # comm_open to an unknown target is closed on iopub; nothing hangs.
    msg = kernel.session.msg("comm_open", {"comm_id": "c1", "target_name": "nope", "data": {}})
    kernel.shell_channel.send(msg)
    closed = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and closed is None:
        m = kernel.get_iopub_msg(timeout=10)
        if m["msg_type"] == "comm_close" and m["content"]["comm_id"] == "c1":
            closed = m
    assert closed is not None
    kernel.shell_channel.send(kernel.session.msg("comm_msg", {"comm_id": "c1", "data": {}}))
    assert execute(kernel, "1").result() == "1"


def test_restart_gives_a_fresh_working_kernel(fresh_kernel):
    km, kc = fresh_kernel
    execute(kc, "let gone = 1;")
    km.restart_kernel(now=False)
    kc.wait_for_ready(timeout=120)
    run = execute(kc, "gone")
    assert run.reply["content"]["status"] == "error"
    assert execute(kc, "7").result() == "7"


def test_sigint_interrupts_like_interrupt_request(fresh_kernel):
    import signal
    km, kc = fresh_kernel
    msg_id = kc.execute('println!("running");\nloop { std::thread::sleep(std::time::Duration::from_millis(50)); }')
    wait_for_output(kc, msg_id, "running")
    # Signal the whole process group, as jupyter_client does for interrupt_mode "signal".
    km.signal_kernel(signal.SIGINT)
    reply = kc.get_shell_msg(timeout=10)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["ename"] == "Interrupted", reply["content"]
    assert execute(kc, "2 * 3").result() == "6"


def test_failed_cell_aborts_the_cells_queued_behind_it(kernel):
    # Both requests are sent before the first finishes, as JupyterLab's "Run All" does.
    first = kernel.execute('std::thread::sleep(std::time::Duration::from_millis(500)); panic!("stop here")')
    second = kernel.execute("1 + 1")
    replies = {}
    while len(replies) < 2:
        m = kernel.get_shell_msg(timeout=120)
        replies[m["parent_header"]["msg_id"]] = m["content"]
    assert replies[first]["status"] == "error"
    assert replies[second]["status"] == "aborted"
    # Only what was queued is aborted: a cell sent as soon as the error arrived runs.
    assert execute(kernel, "3 + 3").result() == "6"


def test_help_is_a_page_and_the_question_mark_operator_still_works(kernel):
    kc = kernel
    def page(run):
        payload = ok(run).reply["content"]["payload"]
        assert len(payload) == 1 and payload[0]["source"] == "page", payload
        return payload[0]["data"]["text/plain"]
    text = page(execute(kc, ":help"))
    assert "%%ranch N" in text and "%ranch_start N" in text and ":dep" in text, text
    assert "The guide (every magic" in text and "docs/ in ranch's repository" in text, text
    assert "Vec" in page(execute(kc, "std::vec::Vec::new?")), "rust-analyzer's hover of the item"
    run = ok(execute(kc, "no_such_item_here?"))
    assert run.stream() == "No documentation found for `no_such_item_here`.\n" and run.reply["content"]["payload"] == []
    # A session variable followed by `?` is Rust's operator, not a question.
    ok(execute(kc, "let maybe: Result<i32, String> = Ok(41);"))
    run = ok(execute(kc, "maybe? + 1"))
    assert run.result() == "42" and run.reply["content"]["payload"] == []


CUSTOM_DISPLAYS = r"""
#[derive(Debug)]
pub struct Page(pub u32);
impl Page {
    pub fn evcxr_display(&self) {
        println!("EVCXR_BEGIN_CONTENT text/html\n<b>page {}</b>\nEVCXR_END_CONTENT", self.0);
    }
}
#[derive(Debug)]
pub struct Card(pub u32);
pub trait Show { fn evcxr_display(&self); }
impl Show for Card {
    fn evcxr_display(&self) {
        println!("EVCXR_BEGIN_CONTENT text/html\n<i>card {}</i>\nEVCXR_END_CONTENT", self.0);
    }
}
pub struct Opaque;
"""


def test_a_cells_value_is_shown_after_one_build_and_its_own_display_still_wins(tmp_path):
    """evcxr built `(value).evcxr_display();` first and, for every type without that method
    (nearly all), built the cell again with the value formatted: two builds per cell. Its
    patched copy (vendor/evcxr/RANCH-PATCH.md, 5) shows a value after one build, and a type's
    own `evcxr_display` still wins, inherent or through a trait of the user's. Builds are
    counted by a rustc wrapper (cargo runs it for every rustc it starts)."""
    count = tmp_path / "builds"
    wrapper = tmp_path / "rustc-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho build >> "{count}"\nexec "$@"\n')
    wrapper.chmod(0o755)
    km, kc = start(env={**os.environ, "RUSTC_WRAPPER": str(wrapper)})

    def built(code):
        """The cell's run and how many times rustc ran for it."""
        before = len(count.read_text().splitlines()) if count.exists() else 0
        run = execute(kc, code, timeout=300)
        return run, len(count.read_text().splitlines()) - before

    try:
        ok(execute(kc, CUSTOM_DISPLAYS, timeout=300))
        ok(execute(kc, "1 + 1", timeout=300))
        for code, shown in [("40 + 2", "42"), ("let v = vec![1, 2];\nv.clone()", "[1, 2]"),
                            ('String::from("a")', '"a"'), ("Some(2.5f32)", "Some(2.5)")]:
            run, builds = built(code)
            assert ok(run).result() == shown, code
            assert builds == 1, f"{code!r} took {builds} builds"
        run, builds = built("Page(3)")
        assert ok(run).result("text/html") == "<b>page 3</b>" and builds == 1, (run.outputs, builds)
        # A trait of the user's that names evcxr_display too: ambiguous in the first build,
        # so evcxr's own call is built next, and the card shows as its trait says.
        run, builds = built("Card(4)")
        assert ok(run).result("text/html") == "<i>card 4</i>", run.outputs
        run, builds = built("Opaque")
        assert run.reply["content"]["status"] == "error" and "Debug" in run.error_text(), run.error_text()
        ok(execute(kc, ":fmt {:#?}", timeout=60))
        run, builds = built("vec![7]")
        assert ok(run).result() == "[\n    7,\n]" and builds == 1, (run.result(), builds)
    finally:
        stop(km, kc)


def test_a_kernel_started_without_cargo_on_its_path_still_runs_cells():
    """Jupyter started from a desktop launcher or a service has no ~/.cargo/bin on PATH: the
    kernelspec's recorded toolchain (RANCH_TOOLCHAIN_PATH) lets the kernel find cargo."""
    spec = json.loads((Path(os.environ["JUPYTER_PATH"].split(os.pathsep)[0]) / "kernels" / "ranch" / "kernel.json").read_text())
    assert spec["env"].get("RANCH_TOOLCHAIN_PATH"), spec
    minimal = "/usr/bin:/bin"
    assert not any(os.path.isfile(os.path.join(d, "cargo")) for d in minimal.split(":")), "cargo is in /usr/bin here"
    env = {"PATH": minimal, "HOME": os.environ["HOME"], "LANG": "C.UTF-8"}
    for keep in ("RANCH_CACHE_DIR", "XDG_CACHE_HOME", "CARGO_HOME", "RUSTUP_HOME", "TMPDIR"):
        if keep in os.environ:
            env[keep] = os.environ[keep]
    km, kc = start(env=env)
    try:
        assert ok(execute(kc, "let v: Vec<u64> = (1..=4).collect();\nv.iter().sum::<u64>()", timeout=300)).result() == "10"
    finally:
        stop(km, kc)


# Every magic ranch has (magics/src/magic_table.rs).
MAGICS = {"%%ranch", "%in_ddp", "%ranch_start", "%%px", "%px", "%autopx", "%px_push", "%px_pull",
          "%ranch_status", "%ranch_stop", "%ranch_restart", "%ranch_jobs", "%ranch_wait", "%ranch_output", "%ranch_cancel", "%ranch_share",
          "%ranch_gpus", "%ranch_clean"}


def complete(kc, code, cursor=None):
    return kc.complete(code, len(code) if cursor is None else cursor, reply=True, timeout=60)["content"]


def test_magic_names_complete_at_the_start_of_a_cell(kernel):
    c = complete(kernel, "%ranch_st")
    assert (c["status"], c["matches"], c["cursor_start"], c["cursor_end"]) == (
        "ok", ["%ranch_start", "%ranch_status", "%ranch_stop"], 0, 9), c
    c = complete(kernel, "%%")
    assert (c["matches"], c["cursor_start"], c["cursor_end"]) == (["%%px", "%%ranch"], 0, 2), c
    # The cursor inside the word: the whole word is replaced.
    c = complete(kernel, "  %ranch_gp 1", 10)
    assert (c["matches"], c["cursor_start"], c["cursor_end"]) == (["%ranch_gpus"], 2, 11), c
    # Anywhere else evcxr completes Rust, as before.
    assert "some_long_name" in complete(kernel, "let some_long_name = 1; some_long_na")["matches"]


def test_a_misspelt_magic_names_the_closest_one_and_lists_them_all(kernel):
    for cell, meant in [("%ranch_stat", "%ranch_status"), ("%%rnach 4\n1 + 1", "%%ranch"), ("%%ranch_start 2", "%ranch_start")]:
        content = execute(kernel, cell).reply["content"]
        assert content["status"] == "error" and content["ename"] == "UsageError", content
        said = content["evalue"]
        assert said.startswith(f"unknown magic `{cell.split()[0]}`: did you mean `{meant}`?"), said
        assert all(f"`{m}`" in said for m in MAGICS), said


def test_help_lists_every_magic_the_kernel_knows(kernel):
    known = set(complete(kernel, "%")["matches"])
    assert known == MAGICS
    payload = ok(execute(kernel, ":help")).reply["content"]["payload"]
    listed = {line.split()[0] for line in payload[0]["data"]["text/plain"].splitlines() if line.startswith("  %")}
    assert listed == known
