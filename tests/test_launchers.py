"""Ranks started by a launcher: Open MPI's mpirun on this host, and srun (a stand-in that
behaves as Slurm's does, since no Slurm runs here): labelled output, gathered values,
failures named with their rank, interrupt and timeout leaving nothing, the token on no
command line, and the flags checked together before anything is built."""
import json
import os
import pathlib
import re
import shutil
import time

import pytest

from conftest import execute, interrupt, ok, processes, rank_processes, start, stop, wait_for_output

HERE = pathlib.Path(__file__).parent
needs_mpirun = pytest.mark.skipif(shutil.which("mpirun") is None,
                                  reason="mpirun not found: install/mpi.sh installs Debian's openmpi-bin (needs root and apt)")


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    log = tmp_path_factory.mktemp("srun") / "srun.log"
    env = dict(os.environ, RANCH_SRUN=str(HERE / "fake_srun"), FAKE_SRUN_LOG=str(log))
    km, kc = start(env=env)
    yield km, kc, log
    stop(km, kc)


@pytest.fixture(scope="module")
def kernel(kernel_env):
    return kernel_env[1]


def nothing_left(kc):
    deadline = time.monotonic() + 5
    while rank_processes(kc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rank_processes(kc.pid) == {}
    launchers = {p: c for p, (_, c) in processes().items() if c.startswith(("mpirun", "orted"))}
    assert not any("/artifacts/" in c for c in launchers.values()), launchers


@needs_mpirun
def test_mpirun_ranks_label_output_and_gather_values(kernel):
    run = ok(execute(kernel, '%%ranch 2 --launcher mpirun --out got\n'
                             'println!("rank {} of {} (OMPI rank {})", ranch::rank(), ranch::world_size(),\n'
                             '         std::env::var("OMPI_COMM_WORLD_RANK").unwrap());\n'
                             'eprintln!("warn {}", ranch::rank());\n'
                             'ranch::rank() * 10'))
    out = run.stream()
    assert "[0] rank 0 of 2 (OMPI rank 0)" in out and "[1] rank 1 of 2 (OMPI rank 1)" in out, out
    assert "[0] warn 0" in run.stream("stderr") and "[1] warn 1" in run.stream("stderr")
    assert run.result() == "[0, 10]"
    assert ok(execute(kernel, "got")).result() == "[0, 10]"
    nothing_left(kernel)


@needs_mpirun
def test_mpirun_collectives_on_one_host(kernel):
    run = ok(execute(kernel, "%in_ddp 3 --launcher mpirun --gather "
                             "{ let mut v = [ranch::rank() as f64 + 1.0]; ranch::comm().all_reduce(&mut v, ranch::Op::Sum).unwrap(); v[0] }"))
    assert run.result() == "[6.0, 6.0, 6.0]"


@needs_mpirun
def test_mpirun_failures_name_the_rank(kernel):
    run = execute(kernel, '%%ranch 3 --launcher mpirun\n'
                          'if ranch::rank() == 1 { panic!("boom on one") }\n'
                          'std::thread::sleep(std::time::Duration::from_secs(20));')
    text = run.error_text()
    assert run.reply["content"]["status"] == "error"
    assert "rank 1 panicked at cell line 2: boom on one" in text, text
    assert "stopped because of the failure (--on-error abort): ranks 0, 2" in text, text
    run = execute(kernel, '%%ranch 2 --launcher mpirun\n'
                          'if ranch::rank() == 1 { std::process::exit(3) }\n'
                          'std::thread::sleep(std::time::Duration::from_secs(20));')
    # What mpirun said goes with a failure: the rank is named from its report.
    assert "rank 1 exited with status 3" in run.error_text(), run.error_text() + "\n--- the cell's stderr:\n" + run.stream("stderr")
    # mpirun's own report is shown, labelled as its.
    assert "[mpirun]" in run.stream("stderr")
    nothing_left(kernel)


@needs_mpirun
def test_mpirun_timeout_and_token_off_the_command_line(kernel):
    msg_id = kernel.execute('%%ranch 2 --launcher mpirun --timeout 4\n'
                            'println!("up {}", ranch::rank());\n'
                            'std::thread::sleep(std::time::Duration::from_secs(60));')
    wait_for_output(kernel, msg_id, "up")
    mpiruns = {p: c for p, (_, c) in processes().items() if c.startswith("mpirun") and "/artifacts/" in c}
    assert mpiruns, "mpirun runs the ranks"
    for pid, cmd in mpiruns.items():
        assert "-x RANCH_TOKEN" in cmd, cmd
        environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        token = re.search(r"(?:^|\0)RANCH_TOKEN=([0-9a-f]{32})\0", environ).group(1)
        assert token not in cmd, f"the token is on mpirun's command line: {cmd}"
    reply = kernel.get_shell_msg(timeout=60)
    assert reply["content"]["status"] == "error"
    assert "timed out after 4.0s" in reply["content"]["evalue"], reply["content"]
    nothing_left(kernel)


@needs_mpirun
def test_mpirun_interrupt_leaves_nothing():
    km, kc = start()
    try:
        msg_id = kc.execute('%%ranch 2 --launcher mpirun\nprintln!("up");\nstd::thread::sleep(std::time::Duration::from_secs(60));')
        wait_for_output(kc, msg_id, "up")
        assert rank_processes(kc.pid)
        reply = interrupt(km, kc, msg_id, within=8)
        assert "interrupted" in reply["evalue"], reply
        nothing_left(kc)
        assert ok(execute(kc, "%%ranch 2 --launcher mpirun\nranch::rank()")).result() == "[0, 1]"
    finally:
        stop(km, kc)


def test_srun_command_line_environment_and_failures(kernel_env):
    km, kc, log = kernel_env
    run = ok(execute(kc, '%%ranch 3 --launcher srun\n'
                         'println!("task {} of {} local {}", ranch::rank(), ranch::world_size(), ranch::local_rank());\n'
                         'ranch::rank()'))
    out = run.stream()
    for r in range(3):
        assert f"[{r}] task {r} of 3 local {r}" in out, out
    assert run.result() == "[0, 1, 2]"
    text = log.read_text()
    command, variables = text.split("\n", 1)
    command = json.loads(command)
    # Tasks may run on other nodes: they fetch the program from the kernel (see test_hosts).
    assert command[:6] == ["-n", "3", "--label", "--export=ALL", "--kill-on-bad-exit=1", "bash"], command
    assert command[-1] == "ranch-rank" and "PROGRAM" in command[-2], command
    token = re.search(r"^RANCH_TOKEN=([0-9a-f]{32})$", variables, re.M).group(1)
    assert token not in " ".join(command), "the token is in srun's environment, not on its command line"
    assert "WORLD_SIZE=3" in variables and "RANCH_BASE_RANK=0" in variables
    run = execute(kc, '%%ranch 2 --launcher srun\nif ranch::rank() == 1 { std::process::exit(7) }\n'
                      'std::thread::sleep(std::time::Duration::from_secs(20));')
    text = run.error_text()
    assert re.search(r"rank 1 exited with status 7 \(host [^)]+\)", text), text
    assert "stopped because of the failure (--on-error abort): ranks 0" in text, text
    assert "[srun] srun: error:" in run.stream("stderr")
    nothing_left(kc)


def test_srun_with_hosts_lists_each_tasks_host(kernel_env):
    km, kc, log = kernel_env
    # The stand-in runs every task here whatever the list says; Slurm reads the list.
    run = execute(kc, "%%ranch 3 --launcher srun --hosts localhost:2,127.0.0.1:1\nranch::rank()")
    assert ok(run).result() == "[0, 1, 2]"
    text = log.read_text()
    assert "--distribution=arbitrary" in json.loads(text.split("\n", 1)[0])
    hostfile = re.search(r"^SLURM_HOSTFILE=(.*)$", text, re.M).group(1)
    assert hostfile.endswith("slurm-hosts")
    assert not pathlib.Path(hostfile).exists(), "it lived in the launch's run directory, removed after the cell"


@pytest.mark.parametrize("magic, message", [
    ("%%ranch 4 --hosts h1:2,h2:2 --launcher local", "use --launcher mpirun or srun, not local"),
    ("%%ranch 3 --hosts h1:2,h2:2", "the hosts have 4 slots (h1:2,h2:2) but N is 3"),
    ("%%ranch 2 --hosts 'h1;reboot:2'", "is not a host name"),
    ("%%ranch 2 --hostfile /nonexistent/hosts", "--hostfile /nonexistent/hosts"),
    ("%%ranch 2 --hosts a:1,b:1 --hostfile /x", "cannot be used with"),
    ("%%ranch 2 --launcher pbs", "invalid value 'pbs'"),
    ("%%ranch 2 --launcher mpirun --gpus 0", "see the GPUs of their own host"),
])
def test_bad_launcher_flags_are_usage_errors(kernel, magic, message):
    run = execute(kernel, magic + "\npanic!(\"must not run\")")
    assert run.reply["content"]["status"] == "error"
    assert run.error()["ename"] == "UsageError", run.error()
    assert message in run.error_text(), run.error_text()


def test_a_hostfile_is_read(kernel, tmp_path):
    f = tmp_path / "hosts"
    f.write_text("# two hosts\nnode1 slots=2\nnode2 slots=1\n")
    run = execute(kernel, f"%%ranch 2 --hostfile {f}\n1")
    assert "the hosts have 3 slots (node1:2,node2:1) but N is 2" in run.error_text(), run.error_text()


def test_a_launcher_that_fails_without_a_word_is_described(tmp_path):
    # mpirun failing before it prints anything (seen: exit status 135 when a host's working
    # directory is missing and its remote shell says nothing).
    silent = tmp_path / "mpirun"
    silent.write_text("#!/bin/sh\nexit 135\n")
    silent.chmod(0o755)
    km, kc = start(env=dict(os.environ, RANCH_MPIRUN=str(silent)))
    try:
        run = execute(kc, "%%ranch 2 --hosts 127.0.0.1:1,localhost:1\nranch::rank()")
        text = run.error_text()
        assert "mpirun failed (exit status 135) before this rank finished and printed nothing" in text, text
        assert "on the hosts (127.0.0.1, localhost)" in text and "working directories exist there" in text, text
        assert "messages are above" not in text, text
    finally:
        stop(km, kc)


LISTENERS = r"""%%ranch 2 --launcher mpirun --backend mpi
ranch::comm().barrier().unwrap(); // MPI is up, with whatever it listens on
let inodes: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd").unwrap().flatten()
    .filter_map(|e| std::fs::read_link(e.path()).ok())
    .filter_map(|l| Some(l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.to_string()))
    .collect();
let mut open = Vec::new(); // listening sockets of this rank on other addresses than loopback
for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
    for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let loopback = f[1].starts_with("0100007F:") || f[1].starts_with("00000000000000000000000001000000:");
        if f[3] == "0A" && inodes.contains(f[9]) && !loopback { open.push(f[1].to_string()); }
    }
}
(open, std::env::var("OMPI_MCA_oob_tcp_if_include").ok())"""


@needs_mpirun
def test_mpirun_on_one_host_keeps_open_mpi_on_loopback_unless_the_user_says(tmp_path):
    from test_mpi_backend import needs_mpi_build
    if needs_mpi_build.args[0]:
        pytest.skip(needs_mpi_build.kwargs["reason"])
    km, kc = start()
    try:
        run = ok(execute(kc, LISTENERS, timeout=600))
        assert run.result() == '[([], Some("127.0.0.0/8")), ([], Some("127.0.0.0/8"))]', run.result()
    finally:
        stop(km, kc)
    # The user's own settings win.
    km, kc = start(env=dict(os.environ, OMPI_MCA_oob_tcp_if_exclude="192.0.2.0/24", RANCH_MPIRUN_ARGS="--mca btl self,vader,tcp"))
    try:
        run = ok(execute(kc, LISTENERS, timeout=600))
        assert 'None)' in run.result() and "[]" not in run.result(), run.result()
    finally:
        stop(km, kc)
