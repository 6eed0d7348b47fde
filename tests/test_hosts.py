"""Ranks on several hosts, launched by mpirun: two simulated hosts (network namespaces with
their own hostname, /tmp, /dev/shm and home directory; see simhosts.py), so nothing reaches
a rank but through mpirun and the kernel's TCP channel, the program included."""
import contextlib
import os
import re
import shutil
import signal
import tempfile
import time

import pytest

from conftest import execute, interrupt, ok, pool_processes, processes, start, stop, wait_for_output
from simhosts import simulated_hosts
from test_mpi_backend import needs_mpi_build

# Across hosts collectives default to the hierarchical backend: every rank program links MPI.
pytestmark = needs_mpi_build

HOSTNAME = 'std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string()'


@pytest.fixture(scope="module")
def hosts():
    yield from simulated_hosts(2)


@pytest.fixture(scope="module")
def kernel_km(hosts):
    km, kc = start(env=dict(os.environ, RANCH_MPIRUN_ARGS=hosts.mpirun_args))
    yield km, kc
    stop(km, kc)


def ranch_files_on(hosts):
    """What ranch left in the hosts' /dev/shm and /tmp (segments, relays' and ranks' directories)."""
    return [os.path.join(hosts.dir(i, d), f) for i in range(2) for d in ("shm", "tmp")
            for f in os.listdir(hosts.dir(i, d)) if f.startswith("ranch")]


def nothing_left_on(hosts, within=10):
    deadline = time.monotonic() + within
    while (any(hosts.pids(i) for i in range(2)) or ranch_files_on(hosts)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [hosts.pids(i) for i in range(2)] == [[], []], "processes left on the simulated hosts"
    assert ranch_files_on(hosts) == [], "files left on the simulated hosts"


def test_ranks_on_two_hosts_get_variables_and_return_values(hosts, kernel_km):
    _, kc = kernel_km
    a, b = hosts.addresses
    ok(execute(kc, 'let greeting = String::from("hello");'))
    run = ok(execute(kc, f"%%ranch 4 --hosts {a}:2,{b}:2 --out got\n"
                         f"let host = {HOSTNAME};\n"
                         'println!("rank {} runs on {host}", ranch::rank());\n'
                         # The program came over the channel: the kernel's home is not there,
                         # and the rank's copy was deleted before it ran.
                         f'let home_seen = std::path::Path::new("{os.path.expanduser("~/.cache")}").exists();\n'
                         'let exe = std::fs::read_link("/proc/self/exe").unwrap();\n'
                         'println!("rank {} home seen: {home_seen}, exe {}", ranch::rank(), exe.display());\n'
                         'format!("{greeting} from {host}, rank {} of {}", ranch::rank(), ranch::world_size())'))
    out = run.stream()
    for rank, host in [(0, "simhost1"), (1, "simhost1"), (2, "simhost2"), (3, "simhost2")]:
        assert f"[{rank}] rank {rank} runs on {host}" in out, out
        assert f"[{rank}] rank {rank} home seen: false, exe /tmp/ranch-rank." in out, out
    assert out.count("/rank (deleted)") == 4, out
    got = ok(execute(kc, "got")).result()
    assert got == ('["hello from simhost1, rank 0 of 4", "hello from simhost1, rank 1 of 4", '
                   '"hello from simhost2, rank 2 of 4", "hello from simhost2, rank 3 of 4"]'), got
    nothing_left_on(hosts)


def test_a_shared_array_is_copied_once_to_each_host_and_removed_after(hosts, kernel_km):
    _, kc = kernel_km
    a, b = hosts.addresses
    ok(execute(kc, "let across: Vec<f64> = (0..100_000).map(|i| i as f64).collect();"))
    ok(execute(kc, "%ranch_share across"))
    try:
        run = ok(execute(kc, f"%%ranch 4 --hosts {a}:2,{b}:2\n"
                             "let g = across;\n"
                             f"let host = {HOSTNAME};\n"
                             'let maps = std::fs::read_to_string("/proc/self/maps").unwrap();\n'
                             'let copy = maps.lines().find(|l| l.contains("hostarray")).and_then(|l| l.split_whitespace().last()).unwrap_or("none").to_string();\n'
                             "ranch::comm().barrier().unwrap(); // every rank has mapped it before its maker lets go\n"
                             'format!("{host} {} {copy}", g.iter().sum::<f64>())', timeout=300))
        rows = [r.split() for r in re.findall(r'"([^"]*)"', run.result())]
        assert len(rows) == 4 and all(r[1] == "4999950000" for r in rows), run.result()
        copies = {host: {r[2] for r in rows if r[0] == host} for host in ("simhost1", "simhost2")}
        # One copy per host, mapped by both of its ranks; each host its own.
        assert all(len(c) == 1 and "-hostarray-" in next(iter(c)) for c in copies.values()), copies
        assert copies["simhost1"] != copies["simhost2"], copies
        nothing_left_on(hosts)
        # A name the session has no array of is refused by the kernel, and nothing is left.
        run = execute(kc, f"%%ranch 2 --hosts {a}:1,{b}:1\n"
                          'ranch::shared::Array::<f64>::attach("nosuch").map(|a| a.len()).map_err(|e| e.to_string())')
        assert "no shared array `nosuch` in the session" in run.result(), run.result()
        nothing_left_on(hosts)
    finally:
        execute(kc, "drop(across);")


MAP_BODY = (f"let host = {HOSTNAME};\n"
            "let items: Vec<u32> = (0..32).collect();\n"
            "let done = ranch::map(&items, |&i| {\n"
            # The first rank of each host (ranks 0 and 2) is slow per item.
            "    let ms = if ranch::rank() % 2 == 0 { 60 } else { 5 };\n"
            "    std::thread::sleep(std::time::Duration::from_millis(ms));\n"
            "    (i, ranch::rank(), host.clone())\n"
            "}).unwrap();\n"
            "if ranch::rank() == 0 { for (i, r, h) in &done { println!(\"item {i} rank {r} {h}\"); } }\n"
            "done.len()")


def assert_map_dealt_per_host(run):
    """32 items, one per chunk: host 1 got the even chunks, host 2 the odd ones (dealt in
    advance), and on each host the rank that is slow per item took fewer of them."""
    assert run.result() == "[32, 32, 32, 32]", run.result()
    done = [line.split() for line in run.stream().splitlines() if " item " in line]
    assert [int(d[2]) for d in done] == list(range(32)), "every item once, in order"
    for host, parity in [("simhost1", 0), ("simhost2", 1)]:
        items = [int(d[2]) for d in done if d[5] == host]
        assert items and all(i % 2 == parity for i in items), (host, items)
        by_rank = {}
        for d in done:
            if d[5] == host:
                by_rank[int(d[4])] = by_rank.get(int(d[4]), 0) + 1
        slow, fast = sorted(by_rank)  # the host's first rank is the slow one
        assert by_rank[slow] < by_rank[fast], f"{host}: the slow rank took {by_rank[slow]} of its host's 16, the fast one {by_rank[fast]}"


def test_map_across_hosts_hands_each_hosts_items_to_whichever_of_its_ranks_is_free(hosts, kernel_km):
    _, kc = kernel_km
    a, b = hosts.addresses
    assert_map_dealt_per_host(ok(execute(kc, f"%%ranch 4 --hosts {a}:2,{b}:2\n" + MAP_BODY, timeout=300)))


THREADS = 'std::fs::read_dir("/proc/self/task").unwrap().count()'


def test_mpi_is_started_only_by_code_that_names_a_collective(hosts):
    """MPI's start is most of a launch across hosts: a cell whose code names no collective
    skips it (its ranks stay single-threaded: MPI's start adds its progress threads), one
    that names one in the cell or in a session fn it calls starts it."""
    a, b = hosts.addresses
    cell = f"%%ranch 4 --hosts {a}:2,{b}:2\n"
    # A kernel of its own: the session fn below goes into every later launch's program.
    km, kc = start(env=dict(os.environ, RANCH_MPIRUN_ARGS=hosts.mpirun_args))
    try:
        assert ok(execute(kc, cell + THREADS, timeout=300)).result() == "[1, 1, 1, 1]"
        # Iterators' own `map` is not ranch's: no group for it.
        run = ok(execute(kc, cell + f"let v: Vec<u32> = (0..3).map(|x| x * 2).collect();\n(v.len(), {THREADS})", timeout=300))
        assert run.result() == "[(3, 1), (3, 1), (3, 1), (3, 1)]", run.result()
        ok(execute(kc, "fn world_of_group() -> usize { ranch::comm().world_size() }"))
        run = ok(execute(kc, cell + f"(world_of_group(), {THREADS} > 1)", timeout=300))
        assert run.result() == "[(4, true), (4, true), (4, true), (4, true)]", run.result()
        nothing_left_on(hosts)
    finally:
        stop(km, kc)


def test_a_rank_killed_on_host_2_is_named_with_its_host(hosts, kernel_km):
    _, kc = kernel_km
    a, b = hosts.addresses
    run = execute(kc, f"%%ranch 4 --hosts {a}:2,{b}:2\n"
                      "if ranch::rank() == 3 {\n"
                      '    std::process::Command::new("kill").args(["-9", &std::process::id().to_string()]).status().unwrap();\n'
                      "}\n"
                      "// The others wait for rank 3 inside MPI (hierarchical: rank 2 in its host's\n"
                      "// shared memory, the leaders between hosts).\n"
                      "let mut v = vec![1.0f32; 1000];\n"
                      "ranch::comm().all_reduce(&mut v, ranch::Op::Sum).unwrap();")
    text = run.error_text()
    assert run.reply["content"]["status"] == "error"
    assert f"rank 3 was killed by signal 9 (SIGKILL) (host {b})" in text, text
    assert "stopped because of the failure (--on-error abort): ranks 0, 1, 2" in text, text
    assert "CommError" not in text and "all_reduce failed" not in text, text
    nothing_left_on(hosts)


# Each rank's vector differs; the sum over ranks is known in closed form.
ALL_REDUCE = r"""
let r = ranch::rank() as f64;
let mut small: Vec<f64> = (0..512).map(|i| i as f64 * (r + 1.0)).collect();
let mut large = vec![r + 1.0; 1 << 20];
let c = ranch::comm();
c.all_reduce(&mut small, ranch::Op::Sum).unwrap();
c.all_reduce(&mut large, ranch::Op::Sum).unwrap();
let mut most = [ranch::rank() as i64];
c.all_reduce(&mut most, ranch::Op::Max).unwrap();
let names = c.all_gather(&HOST).unwrap();
(small[511], large.iter().all(|&x| x == 10.0), most[0], names)
"""


@pytest.mark.parametrize("backend", ["", " --backend mpi"])
def test_all_reduce_across_hosts_equals_the_serial_sum(hosts, kernel_km, backend):
    _, kc = kernel_km
    a, b = hosts.addresses
    body = ALL_REDUCE.replace("HOST", HOSTNAME)
    run = ok(execute(kc, f"%%ranch 4 --hosts {a}:2,{b}:2{backend}\n{body}", timeout=600))
    # 511 * (1 + 2 + 3 + 4); 1 + 2 + 3 + 4 everywhere; rank 3 the largest.
    one = '(5110.0, true, 3, ["simhost1", "simhost1", "simhost2", "simhost2"])'
    assert run.result() == "[" + ", ".join([one] * 4) + "]", run.result()
    assert "flat MPI" not in run.stream("stderr"), "each host formed its shared-memory group"
    nothing_left_on(hosts)


def test_in_ddp_across_hosts(hosts, kernel_km):
    _, kc = kernel_km
    a, b = hosts.addresses
    ok(execute(kc, "fn mean_of_ranks(scale: f64) -> (f64, String) {\n"
                   "    let mut v = [ranch::rank() as f64 * scale];\n"
                   "    ranch::comm().all_reduce(&mut v, ranch::Op::Sum).unwrap();\n"
                   f"    (v[0] / ranch::world_size() as f64, {HOSTNAME})\n"
                   "}"))
    run = ok(execute(kc, f"%in_ddp 4 --hosts {a}:2,{b}:2 --gather mean_of_ranks(2.0)", timeout=600))
    assert run.result() == ('[(3.0, "simhost1"), (3.0, "simhost1"), (3.0, "simhost2"), (3.0, "simhost2")]'), run.result()
    nothing_left_on(hosts)


def sleeping_on_both_hosts(hosts, pool=False):
    """A new kernel whose cell has a rank sleeping on each host (a `%%ranch` cell, or a pool's
    `%%px` cell): (km, kc, the cell's msg_id)."""
    km, kc = start(env=dict(os.environ, RANCH_MPIRUN_ARGS=hosts.mpirun_args))
    a, b = hosts.addresses
    if pool:
        ok(execute(kc, f"%ranch_start 2 --hosts {a}:1,{b}:1", timeout=600))
    # Two ranks on each host: the hierarchical backend gives each host a shared-memory segment.
    magic = "%%px" if pool else f"%%ranch 4 --hosts {a}:2,{b}:2\nranch::comm().barrier().unwrap();"
    msg_id = kc.execute(f"{magic}\n"
                        'println!("up on {}", ' + HOSTNAME + ");\n"
                        "std::thread::sleep(std::time::Duration::from_secs(120));")
    wait_for_output(kc, msg_id, "up on simhost2")
    assert hosts.pids(0) and hosts.pids(1), "ranks run on both hosts"
    return km, kc, msg_id


def test_interrupt_leaves_nothing_on_either_host(hosts):
    km, kc, msg_id = sleeping_on_both_hosts(hosts)
    try:
        reply = interrupt(km, kc, msg_id, within=10)
        assert "interrupted" in reply["evalue"], reply
        nothing_left_on(hosts)
    finally:
        stop(km, kc)


@pytest.mark.parametrize("pool", [False, True], ids=["ranch-cell", "pool"])
def test_a_killed_kernel_leaves_nothing_on_either_host(hosts, pool):
    km, kc, _ = sleeping_on_both_hosts(hosts, pool)
    try:
        # kill -9: the kernel runs no code; its janitor ends mpirun, whose daemons on the
        # hosts end their ranks when they lose it.
        os.kill(kc.pid, signal.SIGKILL)
        nothing_left_on(hosts, within=30)
        agent = hosts.mpirun_args.split()[2]  # --mca plm_rsh_agent PATH: this test's mpirun only
        assert agent.endswith("/agent")
        launchers = [cmd for _, cmd in processes().values()
                     if cmd and os.path.basename(cmd.split()[0]) in ("mpirun", "mpiexec", "orterun") and agent in cmd]
        assert not launchers, f"mpirun left running: {launchers}"
    finally:
        kc.stop_channels()
        km.cleanup_resources()


def test_what_killed_ranks_and_relays_left_on_a_host_is_removed_by_the_next(hosts, kernel_km):
    import subprocess
    _, kc = kernel_km
    dead = subprocess.Popen(["true"])
    dead.wait()
    shm, tmp = hosts.dir(0, "shm"), hosts.dir(0, "tmp")
    stale = [os.path.join(shm, f"ranch-{dead.pid}-host-0123"), os.path.join(tmp, f"ranch-pool-{dead.pid}-AbCdEf")]
    live = [os.path.join(shm, f"ranch-{os.getpid()}-host-4567"), os.path.join(tmp, f"ranch-pool-{os.getpid()}-GhIjKl")]
    theirs = os.path.join(tmp, f"ranch-pool-{dead.pid}-Theirs")
    for path in [stale[0], live[0]]:
        open(path, "w").close()
    for path in [stale[1], live[1], theirs]:
        os.mkdir(path)
    os.chown(theirs, 65534, 65534)
    try:
        a, b = hosts.addresses
        # A %%ranch cell makes each host's segment; a pool's relays make their directories.
        ok(execute(kc, f"%%ranch 2 --hosts {a}:1,{b}:1\nranch::comm().barrier().unwrap();"))
        assert not os.path.exists(stale[0]), "a dead rank's segment is removed"
        ok(execute(kc, f"%ranch_start 2 --hosts {a}:1,{b}:1", timeout=600))
        try:
            ok(execute(kc, "%px ranch::rank()", timeout=600))
            assert not os.path.exists(stale[1]), "a dead relay's directory is removed"
        finally:
            ok(execute(kc, "%ranch_stop"))
        assert all(os.path.exists(p) for p in live + [theirs]), "a live process's and another user's stay"
    finally:
        for path in live + [theirs]:
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)


def test_a_shared_directory_named_by_the_user_is_used_instead_of_shipping(hosts):
    # /var/tmp stands for a cluster's shared file system: the simulated hosts see it.
    shared = tempfile.mkdtemp(prefix="ranch-shared-", dir="/var/tmp")
    km, kc = start(env=dict(os.environ, RANCH_MPIRUN_ARGS=hosts.mpirun_args, RANCH_SHARED_DIR=shared))
    try:
        a, b = hosts.addresses
        run = ok(execute(kc, f"%%ranch 2 --hosts {a}:1,{b}:1\n"
                             'println!("exe {}", std::fs::read_link("/proc/self/exe").unwrap().display());'))
        out = run.stream()
        assert out.count(f"exe {shared}/") == 2, out
        nothing_left_on(hosts)
    finally:
        stop(km, kc)
        shutil.rmtree(shared, ignore_errors=True)


def test_open_mpi_is_kept_on_the_subnet_that_reaches_the_hosts(hosts):
    # Without the fixture's own interface settings, ranch's are what keep Open MPI there.
    args = re.sub(r"--mca (oob|btl)_tcp_if_include \S+ ?", "", hosts.mpirun_args)
    assert "if_include" not in args
    km, kc = start(env=dict(os.environ, RANCH_MPIRUN_ARGS=args))
    try:
        a, b = hosts.addresses
        subnet = a.rsplit(".", 1)[0] + ".0/24"
        run = ok(execute(kc, f"%%ranch 2 --hosts {a}:1,{b}:1\n"
                             "let mut v = vec![1.0f32; 1000];\n"
                             "ranch::comm().all_reduce(&mut v, ranch::Op::Sum).unwrap();\n"
                             'let mca = |p: &str| std::env::var(format!("OMPI_MCA_{p}")).ok();\n'
                             '(v[0], mca("oob_tcp_if_include"), mca("btl_tcp_if_include"))'))
        assert run.result() == f'[(2.0, Some("{subnet}"), Some("{subnet}")), (2.0, Some("{subnet}"), Some("{subnet}"))]'
        nothing_left_on(hosts)
    finally:
        stop(km, kc)


@contextlib.contextmanager
def pool_on(hosts, kc, slots):
    """A pool of ranks on both simulated hosts, `slots` on each; stopped afterwards, leaving nothing."""
    a, b = hosts.addresses
    ok(execute(kc, f"%ranch_start {2 * slots} --hosts {a}:{slots},{b}:{slots}", timeout=600))
    try:
        ok(execute(kc, "%px ranch::rank()", timeout=600))
        yield
    finally:
        ok(execute(kc, "%ranch_stop"))
    nothing_left_on(hosts)


def test_a_pool_on_two_hosts_keeps_state_and_moves_variables(hosts, kernel_km):
    _, kc = kernel_km
    with pool_on(hosts, kc, 2):
        # The relays came over the channel: no toolchain, no home, no shared directory there.
        run = ok(execute(kc, "%%px\n"
                             f"let host = {HOSTNAME};\n"
                             "let x = ranch::rank() * 10;\n"
                             'println!("pool rank {} on {host}", ranch::rank());\n'
                             f'std::path::Path::new("{os.path.expanduser("~/.cache")}").exists()', timeout=600))
        out = run.stream()
        for rank, host in [(0, "simhost1"), (1, "simhost1"), (2, "simhost2"), (3, "simhost2")]:
            assert f"[{rank}] pool rank {rank} on {host}" in out, out
        assert run.result() == "[false, false, false, false]", run.result()
        assert hosts.pids(0) and hosts.pids(1), "the pool's ranks live on between cells"
        # State lives across cells; the session's variables go out and the ranks' come back.
        ok(execute(kc, "let scale = vec![0.5f64, 2.0];"))
        ok(execute(kc, "%px_push scale"))
        assert ok(execute(kc, "%px (x as f64 * scale[1], host.clone())")).result() == (
            '[(0.0, "simhost1"), (20.0, "simhost1"), (40.0, "simhost2"), (60.0, "simhost2")]')
        ok(execute(kc, "%px_pull x --out xs"))
        assert ok(execute(kc, "xs")).result() == "[0, 10, 20, 30]"
        assert ok(execute(kc, "%px --targets 3 ranch::comm().world_size()")).result() == "[1]"
        status = ok(execute(kc, "%ranch_status")).result()
        assert re.search(r"^3\s+simhost2\s", status, re.M), status
        # The fan-out got the launch (the pool's token in it) on a descriptor, not in its
        # environment; the launcher and the relays have the token (a relay shows it to the hub).
        environs = {pid: open(f"/proc/{pid}/environ", "rb").read() for pid in pool_processes(kc.pid)}
        fanouts = [env for env in environs.values() if b"RANCH_ROLE=pool-fanout:" in env]
        assert len(fanouts) == 1 and b"RANCH_TOKEN=" not in fanouts[0] and b'"token"' not in fanouts[0]

def test_a_pool_across_hosts_reduces_over_tcp(hosts, kernel_km):
    _, kc = kernel_km
    with pool_on(hosts, kc, 2):
        # Every cell's group spans both hosts: all-reduce equals the serial sum (1 + 2 + 3 + 4).
        run = ok(execute(kc, "%%px\n"
                             f"let host = {HOSTNAME};\n"
                             "let c = ranch::comm();\n"
                             "let mut v = vec![ranch::rank() as f64 + 1.0; 1 << 20];\n"
                             "c.all_reduce(&mut v, ranch::Op::Sum).unwrap();\n"
                             "let hosts = c.all_gather(&host).unwrap();\n"
                             "(v[0], v.iter().all(|&x| x == 10.0), hosts, c.broadcast(Some(host.clone()), 3).unwrap())",
                         timeout=300))
        one = '(10.0, true, ["simhost1", "simhost1", "simhost2", "simhost2"], "simhost2")'
        assert run.result() == "[" + ", ".join([one] * 4) + "]", run.result()
        # A --targets group across the hosts, numbered 0.. in target order.
        run = ok(execute(kc, "%%px --targets 1,2\n{ let c = ranch::comm(); let mut v = [ranch::rank()];\n"
                             "c.all_reduce(&mut v, ranch::Op::Sum).unwrap(); (c.rank(), v[0]) }"))
        assert run.result() == "[(0, 3), (1, 3)]", run.result()
        # A rank that skips the group ends the others' wait with its name, not a timeout.
        run = ok(execute(kc, "%%px\nif ranch::rank() == 3 { String::new() } else {\n"
                             "    ranch::comm().barrier().map_err(|e| e.to_string()).unwrap_err() }", timeout=120))
        assert run.result().count("ranks 3 of this cell's group finished the cell without joining it") == 3, run.result()
        # Different calls fail on every rank with one error.
        run = ok(execute(kc, "%%px\nlet c = ranch::comm();\n"
                             "let r = if ranch::rank() == 2 { c.barrier() } else { c.all_reduce(&mut [1u8], ranch::Op::Sum) };\n"
                             "r.map_err(|e| e.to_string()).unwrap_err()", timeout=120))
        assert run.result().count("the ranks called different collectives here") == 4, run.result()
        # The session's shared array: one copy per host for the cell, mapped by that host's
        # ranks through the pool's own array channel, and gone when the cell let go of it.
        ok(execute(kc, "let pooled: Vec<f64> = (0..100_000).map(|i| i as f64).collect();"))
        ok(execute(kc, "%ranch_share pooled"))
        try:
            cell = ("%%px\n{\n"
                    'let g = ranch::shared::Array::<f64>::attach("pooled").unwrap();\n'
                    f"let host = {HOSTNAME};\n"
                    'let maps = std::fs::read_to_string("/proc/self/maps").unwrap();\n'
                    'let copy = maps.lines().find(|l| l.contains("hostarray")).and_then(|l| l.split_whitespace().last()).unwrap_or("none").to_string();\n'
                    "ranch::comm().barrier().unwrap();\n"
                    'format!("{host} {} {copy}", g.iter().sum::<f64>())\n}')
            seen = []
            for _ in range(2):
                run = ok(execute(kc, cell, timeout=300))
                rows = [r.split() for r in re.findall(r'"([^"]*)"', run.result())]
                assert len(rows) == 4 and all(r[1] == "4999950000" for r in rows), run.result()
                copies = {host: {r[2] for r in rows if r[0] == host} for host in ("simhost1", "simhost2")}
                assert all(len(c) == 1 and "-hostarray-" in next(iter(c)) for c in copies.values()), copies
                assert copies["simhost1"] != copies["simhost2"], copies
                seen.append(copies)
                deadline = time.monotonic() + 10
                while [f for f in ranch_files_on(hosts) if "hostarray" in f] and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert [f for f in ranch_files_on(hosts) if "hostarray" in f] == [], "a cell's copies outlived it"
            assert seen[0]["simhost1"] != seen[1]["simhost1"], "each cell makes its own copies"
        finally:
            execute(kc, "drop(pooled);")
        # map: each host's chunks go to whichever of its ranks is free (a counter the host's
        # ranks share, formed over TCP at the first map), as in %%ranch.
        assert_map_dealt_per_host(ok(execute(kc, "%%px\n" + MAP_BODY, timeout=300)))
        assert [f for f in ranch_files_on(hosts) if "-host-" in f] == [], "the hosts' segments are unlinked once mapped"


def test_a_pool_rank_killed_on_host_2_is_named_and_the_pool_comes_back(hosts, kernel_km):
    _, kc = kernel_km
    with pool_on(hosts, kc, 1):
        run = execute(kc, "%%px\nif ranch::rank() == 1 {\n"
                          '    std::process::Command::new("kill").args(["-9", &std::process::id().to_string()]).status().unwrap();\n'
                          "}\nstd::thread::sleep(std::time::Duration::from_secs(5));", timeout=300)
        assert run.error()["ename"] == "RankDied", run.error_text()
        assert "Rank 1 was killed by signal 9 (SIGKILL) (host simhost2) during the cell" in run.error_text(), run.error_text()
        # Restarted on both hosts.
        assert ok(execute(kc, f"%px {HOSTNAME}", timeout=600)).result() == '["simhost1", "simhost2"]'


def test_interrupting_a_pool_cell_leaves_nothing_but_the_restarted_pool(hosts, kernel_km):
    km, kc = kernel_km
    with pool_on(hosts, kc, 1):
        before = [hosts.pids(0), hosts.pids(1)]
        msg_id = kc.execute("%%px\n" 'println!("up on {}", ' + HOSTNAME + ");\n"
                            "std::thread::sleep(std::time::Duration::from_secs(120));")
        wait_for_output(kc, msg_id, "up on simhost2")
        reply = interrupt(km, kc, msg_id, within=15)
        assert "the ranks were stopped" in reply["evalue"], reply
        assert ok(execute(kc, f"%px {HOSTNAME}", timeout=600)).result() == '["simhost1", "simhost2"]'
        # The interrupted ranks are gone (the old job's Open MPI daemon may take a moment).
        def ranks(i):
            table = processes()
            return {p for p in hosts.pids(i) if not table.get(p, (0, "orted"))[1].startswith("orted")}
        after = [ranks(0), ranks(1)]
        assert all(not set(b) & a for b, a in zip(before, after)), (before, after)
