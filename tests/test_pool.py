"""The pool of persistent ranks (`%ranch_start`, `%%px`, `%px`, `%autopx`, `%ranch_status`,
`%ranch_stop`), through a real Jupyter client: rank-local state across cells, labelled
output, gathered values, failures named per rank, interrupt, and no process left behind."""
import glob
import re
import shutil
import time

import pytest

from conftest import execute, interrupt, ok, pool_processes, start, stop, wait_for_output


@pytest.fixture(scope="module")
def pool():
    km, kc = start()
    run = ok(execute(kc, "%ranch_start 3", timeout=600))
    assert "Starting a pool of 3 ranks in the background" in run.stream()
    assert ok(execute(kc, "%px ranch::rank()", timeout=600)).result() == "[0, 1, 2]"
    yield km, kc
    stop(km, kc)
    deadline = time.monotonic() + 10
    while pool_processes(kc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pool_processes(kc.pid) == {}


def pids(kc):
    text = ok(execute(kc, "%ranch_status")).result()
    return [int(m) for m in re.findall(r"^\d+\s+\S+\s+(\d+)\s", text, re.M)]


def test_rank_local_state_lives_across_cells(pool):
    _, kc = pool
    ok(execute(kc, "%%px\nlet x = ranch::rank() * 10;\nlet v: Vec<u64> = (0..1_000_000).map(|i| i + x as u64).collect();\n"
                   "fn twice(a: usize) -> usize { 2 * a }\nuse std::collections::BTreeMap;", timeout=300))
    run = ok(execute(kc, '%%px\nprintln!("rank {} has x={x} and {} values", ranch::rank(), v.len());\n'
                         "let m: BTreeMap<usize, u64> = [(x, v[0])].into();\n(twice(x), v[1], m.len())", timeout=300))
    assert sorted(run.stream().splitlines()) == [f"[{r}] rank {r} has x={10 * r} and 1000000 values" for r in range(3)]
    assert run.result() == "[(0, 1, 1), (20, 11, 1), (40, 21, 1)]"
    # The same processes answered both cells.
    assert ok(execute(kc, "%px std::process::id()")).result() == ok(execute(kc, "%px std::process::id()")).result()


def test_rank_displays_carry_their_rank_and_follow_see(pool):
    _, kc = pool
    run = ok(execute(kc, '%%px --see 0,2\nranch::display::html(format!("<p>rank {}</p>", ranch::rank()));'))
    shown = [m["content"] for m in run.outputs if m["msg_type"] == "display_data" and "ranch" in m["content"]["metadata"]
             and "rank" in m["content"]["metadata"]["ranch"]]
    assert sorted((d["metadata"]["ranch"]["rank"], d["data"]["text/html"]) for d in shown) == \
        [(0, "<p>rank 0</p>"), (2, "<p>rank 2</p>")], run.outputs


def test_px_line_autopx_and_the_session_stay_apart(pool):
    _, kc = pool
    ok(execute(kc, "let x = 99;"))  # the session's own x
    ok(execute(kc, "%%px\nlet x = ranch::rank();"))
    assert ok(execute(kc, "%px x + ranch::world_size()")).result() == "[3, 4, 5]"
    assert "autopx on" in ok(execute(kc, "%autopx")).stream()
    assert ok(execute(kc, "x * 2")).result() == "[0, 2, 4]"
    assert "autopx off" in ok(execute(kc, "%autopx")).stream()
    assert ok(execute(kc, "x")).result() == "99"


def test_a_panicking_rank_is_named_and_every_rank_keeps_its_state(pool):
    _, kc = pool
    ok(execute(kc, "%%px\nlet kept = ranch::rank() + 100;"))
    run = execute(kc, '%%px\nlet lost = 1;\nif ranch::rank() == 1 { panic!("rank one gives up") }\nlost')
    assert run.reply["content"]["status"] == "error"
    assert run.error()["ename"] == "RankPanicked"
    assert "rank 1 panicked: rank one gives up" in run.error_text(), run.error_text()
    assert ok(execute(kc, "%px kept")).result() == "[100, 101, 102]"


def shm_mappings(pid):
    with open(f"/proc/{pid}/maps") as f:
        return [line for line in f if "/dev/shm/ranch-" in line]


def test_every_cell_has_a_working_group_and_a_comm_error_breaks_only_its_cell(pool):
    _, kc = pool
    run = ok(execute(kc, "%%px\nlet mut g = vec![ranch::rank() as f64 + 1.0; 1 << 16];\n"
                         "ranch::comm().all_reduce(&mut g, ranch::Op::Sum).unwrap();\n(g[0], g[(1 << 16) - 1])", timeout=300))
    assert run.result() == "[(6.0, 6.0), (6.0, 6.0), (6.0, 6.0)]"
    # Rank 0 waits alone: the others finished the cell, which the error says at once (it
    # names those seen finished by then: one of them, or both).
    run = ok(execute(kc, "%px if ranch::rank() == 0 { ranch::comm().barrier().unwrap_err().to_string() } else { String::new() }"))
    assert re.search(r"ranks? (1|2|1, 2) finished without joining barrier", run.result()), run.result()
    # The next cell has a new group; one kept from an earlier cell says so.
    ok(execute(kc, "%%px\nlet old = ranch::comm();"))
    assert ok(execute(kc, "%px ranch::comm().barrier().is_ok()")).result() == "[true, true, true]"
    assert "earlier %%px cell" in ok(execute(kc, "%px old.barrier().unwrap_err().to_string()")).result()
    # Each cell's shared memory is unmapped when the cell ends.
    for pid in pids(kc):
        assert shm_mappings(pid) == [], shm_mappings(pid)


def test_targets_run_a_subset_in_a_group_of_its_own(pool):
    _, kc = pool
    ok(execute(kc, "%%px\nlet mut hits = 0;"))
    run = ok(execute(kc, "%%px --targets 2,0\nhits += 1;\n"
                         "{ let c = ranch::comm(); (ranch::rank(), c.rank(), c.world_size(), c.all_gather(&ranch::rank()).unwrap()) }"))
    assert run.result() == "[(0, 0, 2, [0, 2]), (2, 1, 2, [0, 2])]"
    assert ok(execute(kc, "%px --targets 1 { let c = ranch::comm(); (c.rank(), c.world_size()) }")).result() == "[(0, 1)]"
    assert ok(execute(kc, "%px hits")).result() == "[1, 0, 1]"
    assert "cannot define variables with `let`" in execute(kc, "%%px --targets 1\nlet y = 1;").error_text()
    assert "the pool has ranks 0-2 (no rank 3)" in execute(kc, "%px --targets 0,3 1").error_text()
    assert ok(execute(kc, "%px hits")).result() == "[1, 0, 1]"


def test_a_dead_rank_is_restarted_alone_and_the_cell_says_who_lost_what(pool):
    _, kc = pool
    before = pids(kc)
    ok(execute(kc, "%%px\nlet doomed = 5;"))
    run = execute(kc, "%%px\nif ranch::rank() == 2 { std::process::exit(4) }\nstd::thread::sleep(std::time::Duration::from_secs(1));")
    assert run.error()["ename"] == "RankDied"
    assert "Rank 2 exited with status 4." in run.error_text(), run.error_text()
    assert "Only rank 2 was restarted: ranks 0, 1 kept their variables; it has none" in run.error_text()
    # The others kept their processes and variables; rank 2 sits the cells out.
    assert ok(execute(kc, "%px doomed")).result() == "[5, 5]"
    now = pids(kc)
    assert now[:2] == before[:2] and now[2] != before[2], (before, now)
    run = execute(kc, "%%px\nif ranch::rank() == 1 { unsafe { std::ptr::null_mut::<u8>().write_volatile(1) } }")
    assert "Rank 1 was killed by signal 11 (SIGSEGV): a segmentation fault" in run.error_text(), run.error_text()
    # Every rank afresh: up again, with new processes, and the variables gone on every rank.
    ok(execute(kc, "%ranch_restart", timeout=600))
    assert ok(execute(kc, "%px ranch::rank()", timeout=600)).result() == "[0, 1, 2]"
    after = pids(kc)
    assert len(after) == 3 and not set(after) & set(before)
    assert "cannot find value `doomed`" in execute(kc, "%px doomed").error_text()


def test_interrupt_stops_every_rank_within_two_seconds_and_the_pool_stays_up(pool):
    km, kc = pool
    before = pids(kc)
    msg_id = kc.execute('%%px\nprintln!("spinning");\nloop { std::hint::spin_loop(); }')
    wait_for_output(kc, msg_id, "spinning")
    content = interrupt(km, kc, msg_id, within=2.0)
    assert "every rank's variables are lost" in content["evalue"]
    for pid in before:
        assert pid not in pool_processes(kc.pid)
    assert ok(execute(kc, "%px ranch::rank()")).result() == "[0, 1, 2]"


def test_px_takes_the_flags_of_ranch_cells(pool):
    """--see, --timing, --timeout and --on-error, as %%ranch has them (defined once)."""
    _, kc = pool
    ok(execute(kc, "%%px\nlet kept = ranch::rank();"))
    run = ok(execute(kc, '%%px --see 1 --timing --quiet\nprintln!("from {}", ranch::rank());\nkept'))
    assert run.stream() == "[1] from 1\n", run.stream()
    assert run.result() == "[0, 1, 2]"
    timing = [d for d in run.displays() if "image/svg+xml" in d]
    assert len(timing) == 1 and "rank 2" in timing[0]["image/svg+xml"], run.displays()
    assert timing[0]["text/plain"].startswith("export "), timing[0]["text/plain"]
    assert "--see 5: the pool has ranks 0..2" in execute(kc, "%%px --see 5\n1").error_text()
    grouped = ok(execute(kc, '%%px --group-outputs rank\nlet r = ranch::rank();\nprintln!("first {r}");\n'
                             'std::thread::sleep(std::time::Duration::from_millis(300));\nprintln!("second {r}");'))
    assert grouped.stream().splitlines() == [f"[{r}] {w} {r}" for r in range(3) for w in ("first", "second")], grouped.stream()
    by_type = ok(execute(kc, '%%px --group-outputs type\nlet r = ranch::rank();\neprintln!("err {r}");\n'
                             'std::thread::sleep(std::time::Duration::from_millis(100));\nprintln!("out {r}");'))
    texts = [(m["content"]["name"], m["content"]["text"]) for m in by_type.outputs if m["msg_type"] == "stream"]
    assert "".join(t for _, t in texts) == "".join(f"[{r}] out {r}\n" for r in range(3)) + "".join(f"[{r}] err {r}\n" for r in range(3)), texts
    # The pool's own --see comes back for the next cell.
    assert sorted(ok(execute(kc, '%%px\nprintln!("again {}", ranch::rank());')).stream().splitlines()) == \
        [f"[{r}] again {r}" for r in range(3)]

    t0 = time.monotonic()
    run = execute(kc, "%%px --timeout 1\nstd::thread::sleep(std::time::Duration::from_secs(60));", timeout=120)
    assert run.error()["ename"] == "Timeout", run.error()
    assert "Timed out after 1 s (--timeout)" in run.error_text() and "variables are lost" in run.error_text()
    assert time.monotonic() - t0 < 30
    assert ok(execute(kc, "%px ranch::rank()")).result() == "[0, 1, 2]"

    # By default one rank's panic lets the others finish (pool ranks are independent) ...
    slow_panic = '%%px{}\nif ranch::rank() == 1 {{ panic!("one gives up") }}\nstd::thread::sleep(std::time::Duration::from_secs({}));'
    ok(execute(kc, "%%px\nlet kept = 7;"))
    t0 = time.monotonic()
    run = execute(kc, slow_panic.format("", 3), timeout=120)
    assert run.error()["ename"] == "RankPanicked" and time.monotonic() - t0 >= 3
    assert ok(execute(kc, "%px kept")).result() == "[7, 7, 7]"
    # ... and --on-error abort stops them, as %%ranch does: the ranks lose their variables.
    t0 = time.monotonic()
    run = execute(kc, slow_panic.format(" --on-error abort", 60), timeout=120)
    assert run.error()["ename"] == "RankPanicked", run.error()
    assert "rank 1 panicked: one gives up" in run.error_text()
    assert "--on-error abort stopped the other ranks" in run.error_text() and "variables are lost" in run.error_text()
    assert time.monotonic() - t0 < 30
    assert "cannot find value `kept`" in execute(kc, "%px kept").error_text()


def test_usage_errors_change_nothing(pool):
    _, kc = pool
    assert "a pool of 3 ranks is running" in execute(kc, "%ranch_start 2").error_text()
    assert "--bogus" in execute(kc, "%%px --bogus\n1").error_text()
    assert "--targets <R,R>" in ok(execute(kc, "%%px --help")).stream()
    assert "invalid value '0'" in execute(kc, "%ranch_start 0").error_text()
    assert "--bogus" in execute(kc, "%ranch_start 2 --bogus").error_text()
    refused = execute(kc, "%ranch_start 3 --hosts a:1,b:1").error()
    assert refused["ename"] == "UsageError" and "the hosts have 2 slots" in refused["evalue"], refused
    assert "not local" in execute(kc, "%ranch_start 2 --hosts a:1,b:1 --launcher local").error_text()
    assert ok(execute(kc, "%px ranch::world_size()")).result() == "[3, 3, 3]"


def test_the_pools_plan_is_in_no_environment_and_the_kernels_own_is_unchanged(pool):
    """The fan-out's configuration (every rank's environment; with remote ranks the pool's
    token) reaches it on an inherited descriptor, not in its environment, which every process
    below it would inherit and /proc would show. The pool builds in a directory of its own
    without the kernel changing its environment: processes the kernel starts later (a
    `%%ranch` rank) see the environment it was started with."""
    import os
    _, kc = pool
    procs = pool_processes(kc.pid)
    environs = {}
    for pid in procs:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environs[pid] = f.read().split(b"\0")
    fanouts = [pid for pid, env in environs.items() if any(v.startswith(b"RANCH_ROLE=pool-fanout:") for v in env)]
    assert len(fanouts) == 1 and len(procs) == 4, {pid: procs[pid] for pid in procs}
    fanout = fanouts[0]
    assert not any(v.startswith((b"RANCH_POOL_PLAN=", b"RANCH_POOL_REMOTE=")) or b'[["' in v for v in environs[fanout])
    for pid, env in environs.items():
        if pid != fanout:
            assert not any(v.startswith(b"RANCH_ROLE=") for v in env), "a rank is evcxr's child, not a fan-out"
    # The configuration's descriptor was read and closed: no process of the pool holds it.
    for pid in procs:
        held = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        assert not any("ranch-role" in h for h in held), (pid, held)
    # The session and the pool build in directories of their own.
    session = ok(execute(kc, 'std::env::var("EVCXR_TMPDIR").unwrap()', timeout=300)).result()
    ranks = ok(execute(kc, '%px std::env::var("EVCXR_TMPDIR").unwrap()', timeout=300)).result()
    assert ok(execute(kc, '%px std::env::var("RUST_BACKTRACE").unwrap()')).result() == '["0", "0", "0"]'
    rank_dirs = set(re.findall(r'"([^"]+)"', ranks))
    assert len(rank_dirs) == 1 and session.strip('"') not in rank_dirs, (session, ranks)
    # A `%%ranch` rank is started from the kernel's environment as it is now.
    run = ok(execute(kc, '%%ranch 1\nprintln!("EVCXR_TMPDIR={:?}", std::env::var("EVCXR_TMPDIR").ok());', timeout=600))
    own = os.environ.get("EVCXR_TMPDIR")
    want = "None" if own is None else f'Some("{own}")'
    assert f"EVCXR_TMPDIR={want}" in run.stream(), run.stream()


def test_stop_ends_the_ranks_and_a_new_pool_can_start(fresh_kernel):
    _, kc = fresh_kernel
    assert "no pool is running" in execute(kc, "%%px\n1").error_text()
    ok(execute(kc, "%ranch_start 2", timeout=600))
    # Started in the background: a second start is refused at once, status says how far it is.
    # A refused start says nothing else (not even the more-ranks-than-cores note).
    refused = execute(kc, "%ranch_start 64")
    assert "a pool of 2 ranks is running" in refused.error_text() and refused.stream() == "", refused.stream()
    assert "pool of 2 ranks" in ok(execute(kc, "%ranch_status", timeout=600)).result()
    assert ok(execute(kc, "%px ranch::world_size()", timeout=600)).result() == "[2, 2]"
    assert len(pool_processes(kc.pid)) == 3  # the fan-out and two ranks
    assert "Stopped the pool's 2 ranks" in ok(execute(kc, "%ranch_stop")).stream()
    assert pool_processes(kc.pid) == {}
    assert "no pool is running" in execute(kc, "%px 1").error_text()
    # --see: only those ranks' output is shown (values still come from every rank).
    assert "--see: the pool has ranks 0-1 (no rank 5)" in execute(kc, "%ranch_start 2 --see 5").error_text()
    ok(execute(kc, "%ranch_start 2 --see 1", timeout=600))
    run = ok(execute(kc, '%%px\nprintln!("from {}", ranch::rank());\nranch::rank()', timeout=600))
    assert run.stream() == "[1] from 1\n" and run.result() == "[0, 1]", (run.stream(), run.result())
    # %ranch_restart: the same pool again (its --see too), with new ranks and no variables.
    ok(execute(kc, "%%px\nlet kept = ranch::rank();"))
    before = set(pool_processes(kc.pid))
    said = ok(execute(kc, "%ranch_restart", timeout=600)).stream()
    assert "Stopped the pool's 2 ranks" in said and "Starting a pool of 2 ranks" in said, said
    run = ok(execute(kc, '%%px\nprintln!("from {}", ranch::rank());\nranch::rank()', timeout=600))
    assert run.stream() == "[1] from 1\n" and run.result() == "[0, 1]", (run.stream(), run.result())
    assert before and not set(pool_processes(kc.pid)) & before, "new processes"
    assert "`kept`" in execute(kc, "%px kept").error_text(), "every rank's variables are gone"
    ok(execute(kc, "%ranch_stop"))
    assert "no pool is running" in execute(kc, "%ranch_restart").error_text()
    # Stopped while it is still starting: it is waited for, then ended.
    ok(execute(kc, "%ranch_start 3", timeout=600))
    assert "Stopped the pool's 3 ranks" in ok(execute(kc, "%ranch_stop", timeout=600)).stream()
    assert pool_processes(kc.pid) == {}
    # --ddp: each cell's group is formed before its body runs (a cell that uses the runtime but
    # never calls ranch::comm() has the segment mapped); --collective-timeout bounds a wait.
    maps = '%px (ranch::rank(), std::fs::read_to_string("/proc/self/maps").unwrap().contains("/dev/shm/ranch-")).1'
    ok(execute(kc, "%ranch_start 2 --ddp --backend shm --collective-timeout 1", timeout=600))
    assert ok(execute(kc, maps, timeout=600)).result() == "[true, true]"
    run = ok(execute(kc, "%%px\nif ranch::rank() == 1 { std::thread::sleep(std::time::Duration::from_secs(3)); None }\n"
                         "else { ranch::comm().barrier().err().map(|e| e.to_string()) }", timeout=300))
    assert "timed out after 1s" in run.result() and run.result().endswith(", None]"), run.result()
    ok(execute(kc, "%ranch_stop"))
    ok(execute(kc, "%ranch_start 4", timeout=600))
    assert ok(execute(kc, "%px ranch::rank()", timeout=600)).result() == "[0, 1, 2, 3]"
    assert ok(execute(kc, maps)).result() == "[false, false, false, false]"


def test_the_sessions_items_and_deps_are_usable_and_pool_values_of_their_types_survive(pool):
    _, kc = pool
    ok(execute(kc, "#[derive(Debug, Clone)]\nstruct Shard { rank: usize }\nfn label(s: &Shard) -> String { format!(\"shard {}\", s.rank) }\n"
                   "use std::collections::HashMap;"))
    run = ok(execute(kc, "%%px\nlet mine = Shard { rank: ranch::rank() };\nlet m: HashMap<u8, u8> = HashMap::new();\nlabel(&mine)", timeout=300))
    assert run.result() == '["shard 0", "shard 1", "shard 2"]'
    ok(execute(kc, "let unrelated = 1;"))  # the session changes, its items do not
    assert ok(execute(kc, "%px mine.rank + m.len()")).result() == "[0, 1, 2]"


def test_a_huge_value_is_cut_not_held(pool):
    _, kc = pool
    run = ok(execute(kc, '%px "x".repeat(3 << 20)', timeout=300))
    assert run.result().count("(cut: over 1 MiB)") == 3 and len(run.result()) < 4 << 20
    assert ok(execute(kc, "%px 1")).result() == "[1, 1, 1]"


def test_push_pull_and_out_move_values_between_the_session_and_the_ranks(pool):
    _, kc = pool
    ok(execute(kc, 'let mut lr = vec![0.5f64, 0.25];\nlet tag = String::from("run-7");'))
    assert "Pushed `lr`, `tag` to the pool's 3 ranks" in ok(execute(kc, "%px_push lr, tag", timeout=300)).stream()
    ok(execute(kc, "lr[0] = 9.0;"))  # ranks got copies
    assert ok(execute(kc, "%px { lr.push(1.0); (lr[0], tag.len()) }")).result() == "[(0.5, 5), (0.5, 5), (0.5, 5)]"
    ok(execute(kc, "%px lr.pop()"))
    run = ok(execute(kc, "%%px --out sums\nlet w: Vec<f64> = lr.iter().map(|x| x * ranch::rank() as f64).collect();\nw.iter().sum::<f64>()"))
    assert run.result() == "[0.0, 0.75, 1.5]"
    assert ok(execute(kc, "sums.iter().sum::<f64>()")).result() == "2.25"
    run = ok(execute(kc, "%px_pull w --out ws --targets 2,1"))
    assert "Pulled `w` from ranks 1, 2 into `ws: Vec<Vec<f64>>`" in run.stream()
    assert ok(execute(kc, "ws")).result() == "[[0.5, 0.25], [1.0, 0.5]]"
    ok(execute(kc, "%px_pull tag"))
    assert ok(execute(kc, "tag.len()")).result() == "3"
    # --share copies session variables into every rank first (as %px_push), then runs the cell.
    assert ok(execute(kc, "%%px --share lr\nlr[0]")).result() == "[9.0, 9.0, 9.0]"


def test_data_magics_say_what_is_wrong(pool):
    _, kc = pool
    assert "the pool's ranks have no variable `missing`" in execute(kc, "%px_pull missing").error_text()
    ok(execute(kc, "%%px\nstruct Opaque;\nlet opaque = Opaque;"))
    assert "`Opaque` is not Serialize + Deserialize" in execute(kc, "%px_pull opaque").error_text()
    assert "the session has no variable `nope`" in execute(kc, "%px_push nope").error_text()
    ok(execute(kc, "struct Local;\nlet local = Local;"))
    assert "cannot send `local: Local`" in execute(kc, "%px_push local").error_text()
    assert "--out needs the cell to end in an expression" in execute(kc, "%%px --out z\nlet q = 1;").error_text()


def test_interrupting_the_wait_for_a_starting_pool_leaves_session_and_pool_alone(fresh_kernel):
    km, kc = fresh_kernel
    ok(execute(kc, "let keep = 5;", timeout=300))
    ok(execute(kc, "%ranch_start 2", timeout=600))
    msg_id = kc.execute("%px ranch::rank()")
    time.sleep(0.2)  # the pool's evcxr context takes seconds to start
    content = interrupt(km, kc, msg_id, within=2.0)
    assert "waiting for the pool to start" in content["evalue"], content
    assert ok(execute(kc, "keep")).result() == "5"
    assert ok(execute(kc, "%px ranch::rank()", timeout=600)).result() == "[0, 1]"


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs Open MPI's mpirun (install/test.sh installs openmpi-bin)")
def test_a_pool_started_by_mpirun_moves_variables_and_reduces(fresh_kernel):
    _, kc = fresh_kernel
    relay_dirs = set(glob.glob("/tmp/ranch-pool-*"))
    ok(execute(kc, "%ranch_start 2 --launcher mpirun", timeout=600))
    # mpirun started each rank's relay; the ranks are this host's, so the group is shared memory.
    run = ok(execute(kc, "%%px\nlet mut v = [ranch::rank() as f64 + 1.0];\n"
                         "ranch::comm().all_reduce(&mut v, ranch::Op::Sum).unwrap();\n"
                         'println!("sum {}", v[0]);\n'
                         "(v[0], std::env::var(\"OMPI_COMM_WORLD_RANK\").unwrap())", timeout=600))
    assert run.result() == '[(3.0, "0"), (3.0, "1")]', run.result()
    assert sorted(run.stream().splitlines()) == ["[0] sum 3", "[1] sum 3"]
    ok(execute(kc, 'let words = vec!["a".to_string(), "b".to_string()];'))
    ok(execute(kc, "%px_push words"))
    ok(execute(kc, "%%px\nlet mine = words[ranch::rank()].repeat(3);"))
    ok(execute(kc, "%px_pull mine"))
    assert ok(execute(kc, "mine")).result() == '["aaa", "bbb"]'
    ok(execute(kc, "%ranch_stop"))
    deadline = time.monotonic() + 10
    while pool_processes(kc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pool_processes(kc.pid) == {}
    # Each rank's relay removed its directory (libstd, pushed and pulled variables) as it ended.
    assert set(glob.glob("/tmp/ranch-pool-*")) <= relay_dirs
