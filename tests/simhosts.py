"""Simulated hosts for the multi-host tests: Linux network namespaces on a bridge, each
entered by mpirun's remote-start agent with its own hostname (UTS namespace) and its own
/dev/shm, /tmp and home directory (mount namespace), so a rank there shares nothing with
the kernel but the system's directories (/usr, /etc): not the kernel's files, its cache or
the Rust toolchain. A host's /dev/shm, /tmp and home outlive the processes on it, as a real
host's do: a test can look there for what ranks left (`SimHosts.dir`). The fixture makes
them and removes them; where they cannot be made (not root, no `ip`/`unshare`, no mpirun)
the tests skip and say why.

Host i is 10.77.S.i on bridge 10.77.S.254 (S from this process's id, so parallel runs do
not meet); its hostname is simhost<i>. Traffic stays on those addresses: mpirun's and the
ranks' interfaces are pinned to the subnet."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import pytest

AGENT = """#!/bin/sh
# mpirun's remote-start agent for simulated hosts: runs the command ("$@" after the host)
# in the host's network namespace, with its own hostname, /dev/shm, /tmp and home directory
# (so the kernel's files, its cache and the Rust toolchain are not there): the host's own
# directories, bound there. The home directory is bound after /tmp, in case it is under /tmp
# (HOME=/tmp/...), where the host's /tmp hid it.
host="$1"; shift
case "$host" in
{cases}
  *) echo "simulated hosts: unknown host $host" >&2; exit 1;;
esac
exec ip netns exec "$ns" unshare --uts --mount --propagation private sh -c \\
  'hostname "$0"; mount --bind "$3/shm" /dev/shm && mount --bind "$3/tmp" /tmp && mkdir -p "$2" && mount --bind "$3/home" "$2" \\
   || {{ echo "simulated host $0: cannot make its /dev/shm, /tmp and home directory $2" >&2; exit 1; }}; exec sh -c "$1"' \\
  "$name" "$*" {home} "$files"
"""


@dataclass
class SimHosts:
    addresses: list[str]
    names: list[str]
    namespaces: list[str]
    mpirun_args: str
    files: list[str]

    def dir(self, i: int, which: str) -> str:
        """Host i's "shm" (its /dev/shm), "tmp" (its /tmp) or "home" directory, seen from here."""
        return os.path.join(self.files[i], which)

    def pids(self, i: int) -> list[int]:
        """Processes running in host i's namespace."""
        out = subprocess.run(["ip", "netns", "pids", self.namespaces[i]], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]


def _run(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def simulated_hosts(n: int = 2):
    """Generator for a fixture: yields SimHosts, removes everything afterwards."""
    if os.geteuid() != 0:
        pytest.skip("simulated hosts need root (network and mount namespaces)")
    for tool in ("ip", "unshare", "mpirun"):
        if shutil.which(tool) is None:
            pytest.skip(f"simulated hosts need `{tool}` (install/mpi.sh installs Open MPI; iproute2 and util-linux give the rest)")
    tag = os.getpid() % 100000
    subnet = f"10.77.{100 + os.getpid() % 150}"
    bridge = f"rbr{tag}"
    namespaces = [f"rh{i + 1}-{tag}" for i in range(n)]
    addresses = [f"{subnet}.{i + 1}" for i in range(n)]
    names = [f"simhost{i + 1}" for i in range(n)]
    # Outside /tmp: every simulated host has a /tmp of its own, and its daemons start the agent too.
    agent_dir = tempfile.mkdtemp(prefix="ranch-simhosts-", dir="/var/tmp")
    files = [os.path.join(agent_dir, f"host{i + 1}") for i in range(n)]
    try:
        for host in files:
            for d in ("shm", "tmp", "home"):
                os.makedirs(os.path.join(host, d))
            os.chmod(os.path.join(host, "tmp"), 0o1777)
            os.chmod(os.path.join(host, "shm"), 0o1777)
            _run("mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", os.path.join(host, "shm"))
        _run("ip", "link", "add", bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{subnet}.254/24", "dev", bridge)
        _run("ip", "link", "set", bridge, "up")
        for i, ns in enumerate(namespaces):
            veth = f"vh{i + 1}-{tag}"
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _run("ip", "link", "set", veth, "master", bridge, "up")
            _run("ip", "-n", ns, "addr", "add", f"{addresses[i]}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as e:
        _teardown(bridge, namespaces, agent_dir, files)
        pytest.skip(f"cannot make simulated hosts here: `{' '.join(e.cmd)}` failed: {e.stderr.strip()}")
    cases = "\n".join(f'  {a}) ns={ns}; name={name}; files={shlex.quote(f)};;'
                      for a, ns, name, f in zip(addresses, namespaces, names, files))
    agent = os.path.join(agent_dir, "agent")
    with open(agent, "w") as f:
        f.write(AGENT.format(cases=cases, home=shlex.quote(os.path.expanduser("~"))))
    os.chmod(agent, 0o755)
    mca = {
        "plm_rsh_agent": agent,
        "plm_rsh_no_tree_spawn": "1",
        "oob_tcp_if_include": f"{subnet}.0/24",
        "btl_tcp_if_include": f"{subnet}.0/24",
        "pml": "ob1",
        "btl": "self,vader,tcp",
        "btl_vader_single_copy_mechanism": "none",
    }
    args = " ".join(f"--mca {k} {v}" for k, v in mca.items())
    try:
        yield SimHosts(addresses, names, namespaces, args, files)
    finally:
        _teardown(bridge, namespaces, agent_dir, files)


def _teardown(bridge, namespaces, agent_dir, files):
    for ns in namespaces:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        for pid in out.split():
            subprocess.run(["kill", "-9", pid], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    for host in files:
        subprocess.run(["umount", os.path.join(host, "shm")], capture_output=True)
    shutil.rmtree(agent_dir, ignore_errors=True)
