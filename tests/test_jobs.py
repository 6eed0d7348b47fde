"""Background cells (`%%ranch --bg`, `%in_ddp --bg`) through a real kernel: the cell returns
once its ranks start; its status table goes on updating in that cell while other cells run;
`%ranch_jobs`, `%ranch_wait` (outputs as the cell would have shown them, `--out` bound) and
`%ranch_cancel`; nothing of a job lands in another cell, and nothing of it outlives a
cancel or the kernel."""
import time

import pytest

from conftest import execute, ok, rank_processes, start, stop

SLOW_JOB = ("%%ranch 2 --bg --out v\n"
            "for i in 0..12u64 {\n"
            "    ranch::progress(i + 1, 12);\n"
            '    println!("step {i} of rank {}", ranch::rank());\n'
            "    std::thread::sleep(std::time::Duration::from_millis(400));\n"
            "}\n"
            "ranch::rank() * 10")


@pytest.fixture(scope="module")
def kernel():
    km, kc = start()
    yield km, kc
    stop(km, kc)


def collect(kc, msg_id, others, timeout=120):
    """Runs until the cell `msg_id` is idle; returns its outputs, and every IOPub message
    meanwhile whose parent is one of the cells `others` (a job's late messages)."""
    mine, theirs = [], []
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        parent = msg["parent_header"].get("msg_id")
        if parent == msg_id:
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return mine, theirs
            mine.append(msg)
        elif parent in others and msg["msg_type"] != "status":
            theirs.append(msg)


def test_a_background_cell_returns_while_its_ranks_run_and_wait_shows_what_it_gave(kernel):
    km, kc = kernel
    started = execute(kc, SLOW_JOB, timeout=300)
    ok(started)
    assert "job-1: 2 ranks run in the background" in started.stream(), started.stream()
    assert started.status_messages(), "the job's status table is shown in its cell"
    assert started.result() is None and "step" not in started.stream(), "nothing of the ranks' output in the cell"
    assert rank_processes(kc.pid), "the ranks run on after the cell returned"
    listing = ok(execute(kc, "%ranch_jobs")).result()
    assert listing.splitlines()[0].split() == ["job", "cell", "ranks", "state", "elapsed"], listing
    assert "job-1" in listing and "running" in listing, listing

    # A plain cell and a foreground %%ranch cell run meanwhile, and get only their own output;
    # the job's table updates in the cell that started it.
    bg_id = started.outputs[0]["parent_header"]["msg_id"]
    plain_id = kc.execute("let x = 41; x + 1")
    plain, late = collect(kc, plain_id, {bg_id})
    assert [m["content"]["data"]["text/plain"] for m in plain if m["msg_type"] == "execute_result"] == ["42"]
    assert not any("step" in str(m["content"]) for m in plain), plain
    front = ok(execute(kc, "%%ranch 2\nranch::rank() + 100", timeout=300))
    assert front.result() == "[100, 101]" and "step" not in front.stream()
    deadline = time.monotonic() + 60
    while not any(m["msg_type"] == "update_display_data" for m in late) and time.monotonic() < deadline:
        late += collect(kc, kc.execute(""), {bg_id})[1]
    updates = [m for m in late if m["msg_type"] == "update_display_data"]
    assert updates and all(m["content"]["metadata"]["ranch"]["status"] for m in updates), late
    assert {m["content"]["transient"]["display_id"] for m in updates} == \
        {started.status_messages()[0]["content"]["transient"]["display_id"]}
    assert not [m for m in late if m["msg_type"] == "stream"], "rank output is kept for %ranch_wait"

    waited = ok(execute(kc, "%ranch_wait job-1", timeout=300))
    assert waited.result() == "[0, 10]", waited.result()
    out = waited.stream()
    assert "[0] step 11 of rank 0" in out and "[1] step 0 of rank 1" in out, out
    assert ok(execute(kc, "v")).result() == "[0, 10]", "--out bound by the wait"
    final = waited.status_messages()
    assert final and "done" in final[-1]["content"]["data"]["text/plain"], "the table's final state"
    assert "done" in ok(execute(kc, "%ranch_jobs")).result()
    assert not rank_processes(kc.pid)
    # The job's output, shown again grouped by rank: all of rank 0's before rank 1's.
    regrouped = ok(execute(kc, "%ranch_output job-1 --group-outputs rank")).stream()
    assert regrouped.index("[0] step 11 of rank 0") < regrouped.index("[1] step 0 of rank 1"), regrouped
    # The front cell's interrupt-free run and this job did not touch each other: both gave
    # their values; an interrupt of a plain cell does not reach a job either.
    job = ok(execute(kc, SLOW_JOB.replace("--out v", "--out w"), timeout=300))
    assert "job-2" in job.stream()
    sleeper = kc.execute("std::thread::sleep(std::time::Duration::from_secs(30));")
    time.sleep(1.5)
    km.interrupt_kernel()
    collect(kc, sleeper, set())
    assert ok(execute(kc, "%ranch_wait", timeout=300)).result() == "[0, 10]", "the last job, untouched"


def test_wait_with_a_timeout_and_cancel_leave_nothing_running(kernel):
    km, kc = kernel
    ok(execute(kc, "%%ranch 2 --bg\nstd::thread::sleep(std::time::Duration::from_secs(300));", timeout=300))
    name = ok(execute(kc, "%ranch_jobs")).result().splitlines()[-1].split()[0]
    pids = rank_processes(kc.pid)
    assert len(pids) == 2, pids
    early = execute(kc, f"%ranch_wait {name} --timeout 0.5")
    assert early.error()["ename"] == "JobRunning", early.error_text()
    assert f"{name} is still running" in early.error_text() and f"%ranch_cancel {name}" in early.error_text()
    cancelled = ok(execute(kc, f"%ranch_cancel {name}"))
    assert "cancelled" in cancelled.result(), cancelled.result()
    assert not rank_processes(kc.pid), "cancel stops the job's ranks"
    waited = execute(kc, f"%ranch_wait {name}")
    assert waited.error()["ename"] == "Interrupted", waited.error_text()
    assert "cancelled" in ok(execute(kc, "%ranch_jobs")).result()
    for bad, says in [("%ranch_wait job-99", "no job `job-99`"), ("%ranch_cancel", "JOB"), ("%ranch_jobs x", "no arguments")]:
        run = execute(kc, bad)
        assert run.error()["ename"] == "UsageError" and says in run.error_text(), (bad, run.error_text())


def test_in_ddp_in_the_background():
    km, kc = start()
    try:
        ok(execute(kc, "fn step(k: u64) -> u64 {\n"
                       "    let mut v = [k as f64];\n"
                       "    ranch::comm().all_reduce(&mut v, ranch::Op::Sum).unwrap();\n"
                       "    v[0] as u64 + ranch::rank() as u64\n"
                       "}"))
        started = ok(execute(kc, "%in_ddp 2 --bg --gather step(5)", timeout=300))
        assert "job-1" in started.stream()
        assert ok(execute(kc, "%ranch_wait job-1", timeout=300)).result() == "[10, 11]"
    finally:
        stop(km, kc)


def test_kernel_shutdown_ends_every_job():
    km, kc = start()
    try:
        ok(execute(kc, "%%ranch 2 --bg\nstd::thread::sleep(std::time::Duration::from_secs(300));", timeout=300))
        ok(execute(kc, "%%ranch 1 --bg --quiet\nstd::thread::sleep(std::time::Duration::from_secs(300));", timeout=300))
        pids = rank_processes(kc.pid)
        assert len(pids) == 3, pids
    finally:
        stop(km, kc)
    deadline = time.monotonic() + 20
    while any(p in rank_processes_anywhere() for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in pids if p in rank_processes_anywhere()], "the jobs' ranks outlived the kernel"


def rank_processes_anywhere():
    import os
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def test_a_pool_cell_in_the_background_keeps_the_ranks_state():
    km, kc = start()
    try:
        ok(execute(kc, "%ranch_start 2", timeout=600))
        ok(execute(kc, "%%px\nlet mut steps = 0u64;", timeout=600))
        ok(execute(kc, "%autopx"))
        started = ok(execute(kc, "%%px --bg --out got\n"
                                 "for i in 0..10u64 {\n"
                                 "    ranch::progress(i + 1, 10);\n"
                                 '    println!("tick {i}");\n'
                                 "    std::thread::sleep(std::time::Duration::from_millis(300));\n"
                                 "    steps += 1;\n"
                                 "}\n"
                                 "steps * 10 + ranch::rank() as u64", timeout=600))
        assert "job-1: 2 ranks run in the background" in started.stream(), started.stream()
        assert started.status_messages(), "the pool cell's table is shown in its cell"
        assert "tick" not in started.stream()
        # The pool, busy with the job, says so (to %autopx's cells too); %autopx goes off,
        # and the session runs cells meanwhile.
        busy = execute(kc, "1 + 2")
        assert busy.error()["ename"] == "UsageError" and "running job-1 in the background" in busy.error_text(), busy.error_text()
        assert "%autopx off" in ok(execute(kc, "%autopx")).stream()
        assert ok(execute(kc, "1 + 2")).result() == "3"
        busy = execute(kc, "%px steps")
        assert busy.error()["ename"] == "UsageError" and "running job-1 in the background" in busy.error_text(), busy.error_text()
        waited = ok(execute(kc, "%ranch_wait job-1", timeout=600))
        assert "[0] tick 9" in waited.stream() and "[1] tick 0" in waited.stream(), waited.stream()
        by_rank = ok(execute(kc, "%ranch_output job-1")).stream()
        assert by_rank.index("[0] tick 9") < by_rank.index("[1] tick 0"), by_rank
        assert waited.result() == "[100, 101]", waited.result()
        assert ok(execute(kc, "got")).result() == "[100, 101]", "--out bound by the wait"
        assert ok(execute(kc, "%px steps")).result() == "[10, 10]", "the pool is back, with its ranks' state"
        # Cancelled: the ranks are stopped as an interrupt stops them (the pool restarts).
        ok(execute(kc, "%%px --bg\nstd::thread::sleep(std::time::Duration::from_secs(300));", timeout=600))
        assert "cancelled" in ok(execute(kc, "%ranch_cancel job-2", timeout=120)).result()
        assert execute(kc, "%ranch_wait job-2").error()["ename"] == "Interrupted"
        assert ok(execute(kc, "%px ranch::rank()", timeout=600)).result() == "[0, 1]"
    finally:
        stop(km, kc)


def test_the_last_cells_output_shows_again_grouped_another_way(kernel):
    km, kc = kernel
    ok(execute(kc, "%%ranch 2\n"
                   "for i in 0..3 {\n"
                   '    println!("out {i} of {}", ranch::rank());\n'
                   '    eprintln!("err {i} of {}", ranch::rank());\n'
                   "    std::thread::sleep(std::time::Duration::from_millis(100));\n"
                   "}", timeout=300))
    by_rank = ok(execute(kc, "%ranch_output"))
    out = by_rank.stream()
    assert out.index("[0] out 2 of 0") < out.index("[1] out 0 of 1"), out
    assert by_rank.stream("stderr").index("[0] err 2 of 0") < by_rank.stream("stderr").index("[1] err 0 of 1")
    in_order = ok(execute(kc, "%ranch_output --group-outputs order")).stream()
    assert in_order.index("[1] out 0 of 1") < in_order.index("[0] out 2 of 0"), in_order
    only_one = ok(execute(kc, "%ranch_output --group-outputs type --see 1"))
    assert "[0]" not in only_one.stream() + only_one.stream("stderr")
    assert only_one.stream() == "".join(f"[1] out {i} of 1\n" for i in range(3))
    assert execute(kc, "%ranch_output --group-outputs bogus").error()["ename"] == "UsageError"
