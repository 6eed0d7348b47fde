//! Where ranks run: the launcher (`--launcher local|mpirun|srun`) and the hosts with their
//! slots (`--hosts h1:2,h2:2`, `--hostfile FILE`), checked before anything is built.

use clap::ValueEnum;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LauncherKind {
    /// Spawn the ranks on this host.
    Local,
    /// Open MPI's `mpirun` (on this host, or on `--hosts`/`--hostfile`).
    Mpirun,
    /// Slurm's `srun`, inside an allocation (`salloc`, `sbatch`).
    Srun,
}

impl LauncherKind {
    pub fn name(self) -> &'static str {
        match self {
            LauncherKind::Local => "local",
            LauncherKind::Mpirun => "mpirun",
            LauncherKind::Srun => "srun",
        }
    }
}

/// One host and how many ranks it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSlots {
    pub name: String,
    pub slots: usize,
}

/// The launcher and hosts of one launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub launcher: LauncherKind,
    /// Empty: the launcher's default (this host for `local` and `mpirun`, the allocation for
    /// `srun`).
    pub hosts: Vec<HostSlots>,
}

impl Default for Placement {
    fn default() -> Placement {
        Placement::LOCAL
    }
}

impl Placement {
    pub const LOCAL: Placement = Placement { launcher: LauncherKind::Local, hosts: Vec::new() };

    /// The host each rank runs on, when hosts were named: ranks fill each host's slots in
    /// order (mpirun's `--map-by slot`, srun's arbitrary distribution over the same list).
    pub fn rank_hosts(&self) -> Vec<String> {
        self.hosts.iter().flat_map(|h| std::iter::repeat_n(h.name.clone(), h.slots)).collect()
    }

    /// Whether ranks may run on other hosts than this one (named hosts, or srun's allocation).
    pub fn elsewhere(&self) -> bool {
        !self.hosts.is_empty() || self.launcher == LauncherKind::Srun
    }

    /// An address of this host that the ranks can reach: toward the first of the hosts when
    /// they are named, this host's own name's under srun (its tasks run on the allocation's
    /// nodes), else loopback.
    pub fn reach_addr(&self) -> Result<String, String> {
        match (self.hosts.first(), self.launcher) {
            (Some(h), _) => address_toward(&h.name).map(|a| a.to_string()),
            (None, LauncherKind::Srun) => Ok(own_address().map_or("127.0.0.1".into(), |a| a.to_string())),
            (None, _) => Ok("127.0.0.1".into()),
        }
    }

    /// Most ranks on one host (for thread defaults): all `n` when no hosts were named.
    pub fn most_on_one_host(&self, n: usize) -> usize {
        self.hosts.iter().map(|h| h.slots).max().unwrap_or(n)
    }
}

/// Most bytes of a hostfile read.
const MAX_HOSTFILE: u64 = 1 << 20;

/// A host name as launchers and resolvers take it: letters, digits, `.`, `-`, `_`, not
/// starting with `-` (it would read as an option).
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok { Ok(()) } else { Err(format!("{name:?} is not a host name")) }
}

fn slots_of(s: &str, host: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("host {host}: slots must be a whole number of at least 1, got {s:?}")),
    }
}

/// Adds `host` to `hosts`, summing the slots of a host named twice.
fn add(hosts: &mut Vec<HostSlots>, name: &str, slots: usize) {
    match hosts.iter_mut().find(|h| h.name == name) {
        Some(h) => h.slots += slots,
        None => hosts.push(HostSlots { name: name.to_string(), slots }),
    }
}

/// `--hosts h1:2,h2:2` (a host without `:S` has one slot).
pub fn parse_hosts(spec: &str) -> Result<Vec<HostSlots>, String> {
    let mut hosts = Vec::new();
    for item in spec.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!("--hosts {spec:?}: expected hosts such as h1:2,h2:2"));
        }
        let (name, slots) = match item.split_once(':') {
            Some((name, slots)) => (name, slots_of(slots, name)?),
            None => (item, 1),
        };
        check_name(name)?;
        add(&mut hosts, name, slots);
    }
    Ok(hosts)
}

/// An Open MPI hostfile: one host per line, `name [slots=N]` (or `name:N`); `#` starts a
/// comment; other keywords (`max_slots=`) are ignored.
pub fn parse_hostfile(text: &str) -> Result<Vec<HostSlots>, String> {
    let mut hosts = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let first = words.next().expect("not empty");
        let (name, mut slots) = match first.split_once(':') {
            Some((name, slots)) => (name, slots_of(slots, name)?),
            None => (first, 1),
        };
        check_name(name).map_err(|e| format!("line {}: {e}", i + 1))?;
        for word in words {
            if let Some(n) = word.strip_prefix("slots=") {
                slots = slots_of(n, name).map_err(|e| format!("line {}: {e}", i + 1))?;
            }
        }
        add(&mut hosts, name, slots);
    }
    if hosts.is_empty() {
        return Err("the hostfile names no host".into());
    }
    Ok(hosts)
}

pub fn read_hostfile(path: &Path) -> Result<Vec<HostSlots>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("--hostfile {}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_HOSTFILE + 1).read_to_string(&mut text).map_err(|e| format!("--hostfile {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_HOSTFILE {
        return Err(format!("--hostfile {}: larger than {} KiB, not a hostfile", path.display(), MAX_HOSTFILE >> 10));
    }
    parse_hostfile(&text).map_err(|e| format!("--hostfile {}: {e}", path.display()))
}

/// This host's address on the route to `host`: where ranks on `host` can reach the kernel
/// (no packet is sent; the kernel asks which interface a datagram would leave by).
pub fn address_toward(host: &str) -> Result<std::net::IpAddr, String> {
    use std::net::{ToSocketAddrs, UdpSocket};
    let target = (host, 9).to_socket_addrs().map_err(|e| format!("host {host}: {e}"))?.next();
    let target = target.ok_or_else(|| format!("host {host} resolves to no address"))?;
    let any: std::net::SocketAddr = if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = UdpSocket::bind(any).map_err(|e| format!("cannot find this host's address toward {host}: {e}"))?;
    socket.connect(target).map_err(|e| format!("no route to host {host} ({target}): {e}"))?;
    socket.local_addr().map(|a| a.ip()).map_err(|e| format!("cannot find this host's address toward {host}: {e}"))
}

/// This host's address under its own name, when the name resolves.
pub fn own_address() -> Option<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    (name.trim(), 9).to_socket_addrs().ok()?.map(|a| a.ip()).next()
}

/// The flags that say where ranks run (`%%ranch`, `%in_ddp`, `%ranch_start`).
#[derive(clap::Args, Debug, Clone, PartialEq, Default)]
pub struct PlacementFlags {
    /// How ranks are started: on this host, by Open MPI's `mpirun`, or by Slurm's `srun`
    /// (default: local, or mpirun when hosts are given).
    #[arg(long, value_enum, value_name = "local|mpirun|srun")]
    pub launcher: Option<LauncherKind>,
    /// Hosts and their slots, e.g. `h1:2,h2:2`; N must be the sum of the slots.
    #[arg(long, value_name = "H:S,H:S", conflicts_with = "hostfile")]
    pub hosts: Option<String>,
    /// A hostfile (Open MPI's form: `h1 slots=2` per line) instead of --hosts.
    #[arg(long, value_name = "FILE")]
    pub hostfile: Option<std::path::PathBuf>,
}

impl PlacementFlags {
    /// The placement the flags ask for, for `n` ranks (a hostfile is read here: a bad one
    /// is a usage error before anything starts).
    pub fn resolve(&self, n: usize) -> Result<Placement, String> {
        let hosts = match (&self.hosts, &self.hostfile) {
            (Some(spec), _) => Some(parse_hosts(spec)?),
            (None, Some(file)) => Some(read_hostfile(file)?),
            (None, None) => None,
        };
        resolve(self.launcher, hosts, n)
    }
}

/// Checks the launch's flags together: hosts imply `mpirun` unless another launcher is
/// named, `local` takes no hosts, and the hosts' slots hold exactly the `n` ranks.
pub fn resolve(launcher: Option<LauncherKind>, hosts: Option<Vec<HostSlots>>, n: usize) -> Result<Placement, String> {
    let Some(hosts) = hosts else {
        return Ok(Placement { launcher: launcher.unwrap_or(LauncherKind::Local), hosts: Vec::new() });
    };
    let launcher = match launcher {
        Some(LauncherKind::Local) => {
            return Err("--hosts/--hostfile run ranks on other hosts: use --launcher mpirun or srun, not local".into());
        }
        Some(l) => l,
        None => LauncherKind::Mpirun,
    };
    let slots: usize = hosts.iter().map(|h| h.slots).sum();
    if slots != n {
        let listed: Vec<String> = hosts.iter().map(|h| format!("{}:{}", h.name, h.slots)).collect();
        return Err(format!(
            "the hosts have {slots} slots ({}) but N is {n}: make N the sum of the slots, or change the slots",
            listed.join(",")
        ));
    }
    Ok(Placement { launcher, hosts })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, slots: usize) -> HostSlots {
        HostSlots { name: name.into(), slots }
    }

    #[test]
    fn hosts_spec_and_hostfile() {
        assert_eq!(parse_hosts("h1:2,h2:2").unwrap(), vec![h("h1", 2), h("h2", 2)]);
        assert_eq!(parse_hosts("a, b:3, a").unwrap(), vec![h("a", 2), h("b", 3)]);
        for bad in ["", "h1:0", "h1:x", "-oops:1", "h 1:2", "h1:2,", "h;rm:1"] {
            assert!(parse_hosts(bad).is_err(), "{bad:?}");
        }
        let file = "# cluster\nnode1 slots=4 max_slots=8\nnode2:2\n\nnode3   # one slot\n";
        assert_eq!(parse_hostfile(file).unwrap(), vec![h("node1", 4), h("node2", 2), h("node3", 1)]);
        assert!(parse_hostfile("# nothing\n").unwrap_err().contains("names no host"));
        assert!(parse_hostfile("node1 slots=zero\n").unwrap_err().contains("line 1"));
    }

    #[test]
    fn flags_are_checked_together() {
        let local = resolve(None, None, 4).unwrap();
        assert_eq!(local, Placement::LOCAL);
        assert_eq!(resolve(Some(LauncherKind::Srun), None, 4).unwrap().launcher, LauncherKind::Srun);
        let two = || Some(vec![h("h1", 2), h("h2", 2)]);
        let p = resolve(None, two(), 4).unwrap();
        assert_eq!(p.launcher, LauncherKind::Mpirun, "hosts imply mpirun");
        assert_eq!(p.rank_hosts(), ["h1", "h1", "h2", "h2"]);
        assert_eq!(resolve(Some(LauncherKind::Srun), two(), 4).unwrap().launcher, LauncherKind::Srun);
        assert!(resolve(Some(LauncherKind::Local), two(), 4).unwrap_err().contains("not local"));
        let e = resolve(None, two(), 3).unwrap_err();
        assert!(e.contains("4 slots (h1:2,h2:2) but N is 3"), "{e}");
    }
}
