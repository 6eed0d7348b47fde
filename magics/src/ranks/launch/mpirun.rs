//! Open MPI's `mpirun` as the launcher: its command line, and the rank its error report
//! blames.

use super::{Culprit, LaunchPlan, LauncherCommand, RankEnd, tagged::TagFormat};
use crate::hosts::HostSlots;

/// Options of one `mpirun` launch besides the plan.
#[derive(Debug, Clone, Default)]
pub struct MpirunOptions {
    /// Empty: every rank on this host.
    pub hosts: Vec<HostSlots>,
    /// `--on-error continue`: a failing rank does not end the others.
    pub keep_going: bool,
    /// Whether the kernel runs as root (mpirun refuses to unless told).
    pub as_root: bool,
    /// The `mpirun` to run (`RANCH_MPIRUN`, else `mpirun` on the PATH).
    pub program: Option<String>,
    /// More arguments, before the program (`RANCH_MPIRUN_ARGS`: MCA settings of a site).
    pub extra: Vec<String>,
    /// MCA settings that keep Open MPI on the network that reaches the hosts ([`network_args`]).
    pub network: Vec<String>,
}

/// `mpirun -np N ... exe`: ranks fill each host's slots in order, output tagged with the
/// rank, every variable of the plan passed by name with `-x` (its value travels in
/// mpirun's environment, so the launch's token is on no command line).
pub fn command(plan: &LaunchPlan, o: &MpirunOptions) -> LauncherCommand {
    let mut args: Vec<String> = vec!["-np".into(), plan.local_ranks.to_string()];
    if o.hosts.is_empty() {
        // Like the local launcher: N ranks whatever the number of cores.
        args.push("--oversubscribe".into());
    } else {
        let hosts: Vec<String> = o.hosts.iter().map(|h| format!("{}:{}", h.name, h.slots)).collect();
        args.extend(["--host".into(), hosts.join(",")]);
        // Not `--preload-binary`: Open MPI 4.1 copies the program but then runs it as
        // `./name` from the working directory, where it is not (seen on Debian's 4.1.4).
    }
    args.extend(["--map-by".into(), "slot".into(), "--bind-to".into(), "none".into(), "--tag-output".into()]);
    if o.as_root {
        args.push("--allow-run-as-root".into());
    }
    if o.keep_going {
        args.extend(["--mca".into(), "orte_abort_on_non_zero_status".into(), "0".into()]);
    }
    let env = plan.shared_env();
    for (name, _) in &env {
        args.extend(["-x".into(), name.clone()]);
    }
    args.extend(o.network.iter().cloned());
    args.extend(o.extra.iter().cloned());
    args.extend(plan.program_argv());
    LauncherCommand {
        name: "mpirun",
        program: o.program.clone().unwrap_or_else(|| "mpirun".into()),
        args,
        env,
        tags: TagFormat::OpenMpi,
        report,
        harmless,
    }
}

/// Open MPI's remote-shell starter and the process it forks both put the child in its own
/// process group; when the child has already run `exec`, the parent's call fails with
/// EACCES and mpirun warns (`plm:rsh: Warning: setpgid(...) failed in parent with
/// errno=Permission denied(13)`). The child did it itself, so nothing is wrong: a race
/// inside Open MPI that would otherwise land in the user's cell now and then.
pub fn harmless(line: &str) -> bool {
    line.contains("plm:rsh: Warning: setpgid(") && line.contains("failed in parent with errno=Permission denied")
}

/// MCA settings that keep Open MPI's out-of-band channel (mpirun and its daemons) and its
/// TCP transport (between ranks) on the network that reaches the hosts; by default Open MPI
/// uses, and advertises, every interface of every host. With every rank on this host: the
/// loopback interface, and neither the TCP transport nor libfabric's (`ofi`, which listens
/// on the first interface it finds) between ranks: they share memory.
/// Across hosts: the subnet of this host's address toward them (`reach`), when every host is
/// in it; hosts behind a router leave the choice to Open MPI. Whatever the user set for
/// either (include or exclude lists, `btl`), in `RANCH_MPIRUN_ARGS`, the environment
/// (`OMPI_MCA_*`) or their `mca-params.conf`, is left as they set it (`user_set`).
///
/// Open MPI 4.1 still binds its listening sockets to every address: these settings choose
/// which addresses it hands out and connects to, not which it listens on.
pub fn network_args(hosts: &[HostSlots], reach: &str, user_set: &dyn Fn(&str) -> bool) -> Vec<String> {
    let any_set = |params: &[&str]| params.iter().any(|p| user_set(p));
    let oob_set = any_set(&["oob_tcp_if_include", "oob_tcp_if_exclude", "oob_tcp_include", "oob_tcp_exclude"]);
    let btl_tcp_set = any_set(&["btl_tcp_if_include", "btl_tcp_if_exclude", "btl_tcp_include", "btl_tcp_exclude"]);
    let mut args = Vec::new();
    let mut set = |param: &str, value: &str| args.extend(["--mca".to_string(), param.to_string(), value.to_string()]);
    if hosts.iter().all(|h| is_loopback_host(&h.name)) {
        if !oob_set {
            set("oob_tcp_if_include", "127.0.0.0/8");
        }
        if !btl_tcp_set && !user_set("btl") {
            set("btl", "^tcp,ofi");
        }
    } else if let Some(subnet) = subnet_of(reach).filter(|net| hosts.iter().all(|h| host_in(&h.name, net))) {
        let cidr = subnet.to_string();
        if !oob_set {
            set("oob_tcp_if_include", &cidr);
        }
        if !btl_tcp_set {
            set("btl_tcp_if_include", &cidr);
        }
    }
    args
}

/// Whether the user set the MCA parameter `param`: on mpirun's command line in `extra`, in
/// the environment, or in their `~/.openmpi/mca-params.conf`.
pub fn user_sets(param: &str, extra: &[String]) -> bool {
    let on_line = extra.windows(2).any(|w| matches!(w[0].as_str(), "--mca" | "-mca" | "--gmca" | "-gmca") && w[1] == param);
    let in_env = std::env::var_os(format!("OMPI_MCA_{param}")).is_some();
    let in_file = || {
        let file = crate::group::home_dir().map(|h| h.join(".openmpi/mca-params.conf"));
        let text = file.and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default();
        text.lines().any(|l| l.split('=').next().is_some_and(|k| k.trim() == param))
    };
    on_line || in_env || in_file()
}

/// An IPv4 subnet: its address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Subnet(std::net::Ipv4Addr, u32);

impl Subnet {
    fn contains(&self, a: std::net::Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - self.1).unwrap_or(0);
        u32::from(a) & mask == u32::from(self.0) & mask
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mask = u32::MAX.checked_shl(32 - self.1).unwrap_or(0);
        write!(f, "{}/{}", std::net::Ipv4Addr::from(u32::from(self.0) & mask), self.1)
    }
}

/// The subnet of this host's interface that holds the address `addr` (IPv4 only).
fn subnet_of(addr: &str) -> Option<Subnet> {
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    nix::ifaddrs::getifaddrs().ok()?.find_map(|i| {
        let mine = i.address?.as_sockaddr_in()?.ip();
        let mask = i.netmask?.as_sockaddr_in()?.ip();
        (mine == addr).then(|| Subnet(mine, u32::from(mask).leading_ones()))
    })
}

fn resolve(host: &str) -> Vec<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    (host, 9).to_socket_addrs().map(|a| a.map(|a| a.ip()).collect()).unwrap_or_default()
}

fn is_loopback_host(host: &str) -> bool {
    let addrs = resolve(host);
    !addrs.is_empty() && addrs.iter().all(|a| a.is_loopback())
}

/// Whether `host` is in `net` (or is this host under a loopback name).
fn host_in(host: &str, net: &Subnet) -> bool {
    let addrs = resolve(host);
    !addrs.is_empty()
        && addrs.iter().all(|a| match a {
            std::net::IpAddr::V4(v4) => v4.is_loopback() || net.contains(*v4),
            std::net::IpAddr::V6(v6) => v6.is_loopback(),
        })
}

/// The ranks Open MPI's report says ended the job:
/// `process rank 1 with PID 0 on node h2 exited on signal 9 (Killed).`,
/// `Process name: [[17645,1],1]` then `Exit code: 3`, and
/// `MPI_ABORT was invoked on rank 1 in communicator MPI_COMM_WORLD with errorcode 3.`
pub fn report(lines: &[String]) -> Vec<Culprit> {
    let mut found: Vec<Culprit> = Vec::new();
    let mut named: Option<usize> = None; // a `Process name:` waiting for its exit code
    for line in lines.iter().map(|l| l.trim()) {
        let culprit = if let Some(rest) = after(line, "process rank ") {
            let rank = leading_number(rest);
            let host = after(rest, " on node ").and_then(|h| h.split_whitespace().next()).map(str::to_string);
            let signal = after(rest, "exited on signal ").map(leading_number);
            match (rank, signal) {
                (Some(rank), Some(Some(sig))) => Some(Culprit { rank, host, end: RankEnd::Signal(sig as i32) }),
                _ => None,
            }
        } else if let Some(rest) = line.strip_prefix("Process name:") {
            named = rest.trim().trim_end_matches(']').rsplit(',').next().and_then(|r| r.trim().parse().ok());
            None
        } else if let Some(code) = line.strip_prefix("Exit code:") {
            match (named.take(), code.trim().parse::<i32>()) {
                (Some(rank), Ok(code)) => Some(Culprit { rank, host: None, end: RankEnd::Code(code) }),
                _ => None,
            }
        } else if let Some(rest) = after(line, "MPI_ABORT was invoked on rank ") {
            let code = after(rest, "errorcode ").and_then(leading_number).unwrap_or(1);
            leading_number(rest).map(|rank| Culprit { rank, host: None, end: RankEnd::Code(code as i32) })
        } else {
            None
        };
        if let Some(c) = culprit
            && !found.iter().any(|f| f.rank == c.rank)
        {
            found.push(c);
        }
    }
    found
}

fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| &line[i + marker.len()..])
}

fn leading_number(s: &str) -> Option<usize> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    pub(crate) fn plan() -> LaunchPlan {
        LaunchPlan {
            exe: PathBuf::from("/k/rank"),
            delivery: super::super::Delivery::Path,
            local_ranks: 4,
            world_size: 4,
            base_rank: 0,
            run_dir: PathBuf::from("/k/run-1"),
            master_addr: "10.0.0.1".into(),
            master_port: 4242,
            env: vec![("RANCH_TOKEN".into(), "s3cret".into()), ("OMP_NUM_THREADS".into(), "1".into())],
            rank_env: vec![],
        }
    }

    #[test]
    fn command_line_maps_hosts_and_passes_variables_by_name() {
        let hosts = vec![HostSlots { name: "h1".into(), slots: 2 }, HostSlots { name: "h2".into(), slots: 2 }];
        let o = MpirunOptions { hosts, as_root: true, extra: vec!["--mca".into(), "btl".into(), "self,tcp".into()], ..Default::default() };
        let c = command(&plan(), &o);
        let line = c.args.join(" ");
        assert!(line.starts_with("-np 4 --host h1:2,h2:2 --map-by slot --bind-to none --tag-output --allow-run-as-root"), "{line}");
        assert!(line.contains("-x RANCH_TOKEN -x OMP_NUM_THREADS"), "{line}");
        assert!(line.ends_with("--mca btl self,tcp /k/rank"), "{line}");
        assert!(!line.contains("s3cret"), "the token is on no command line: {line}");
        let env: std::collections::HashMap<_, _> = c.env.iter().cloned().collect();
        assert_eq!(env["RANCH_TOKEN"], "s3cret");
        assert_eq!(env["WORLD_SIZE"], "4");
        assert_eq!(env["MASTER_ADDR"], "10.0.0.1");
        assert_eq!(env["RANCH_BASE_RANK"], "0");
        assert!(!env.contains_key("RANK") && !env.contains_key("RANCH_PARENT_PID"), "mpirun numbers the ranks; their parent is its daemon");
    }

    #[test]
    fn local_mpirun_oversubscribes_and_continue_keeps_ranks() {
        let c = command(&plan(), &MpirunOptions { keep_going: true, program: Some("/opt/mpi/bin/mpirun".into()), ..Default::default() });
        let line = c.args.join(" ");
        assert_eq!(c.program, "/opt/mpi/bin/mpirun");
        assert!(line.starts_with("-np 4 --oversubscribe --map-by slot"), "{line}");
        assert!(line.contains("--mca orte_abort_on_non_zero_status 0"), "{line}");
        assert!(!line.contains("--allow-run-as-root"), "{line}");
    }

    #[test]
    fn open_mpi_is_kept_on_the_network_that_reaches_the_hosts_unless_the_user_says() {
        let none = |_: &str| false;
        let local = [HostSlots { name: "localhost".into(), slots: 2 }];
        assert_eq!(network_args(&[], "127.0.0.1", &none).join(" "), "--mca oob_tcp_if_include 127.0.0.0/8 --mca btl ^tcp,ofi");
        assert_eq!(network_args(&local, "127.0.0.1", &none).join(" "), "--mca oob_tcp_if_include 127.0.0.0/8 --mca btl ^tcp,ofi");
        let theirs = |p: &str| p == "oob_tcp_if_exclude" || p == "btl";
        assert!(network_args(&[], "127.0.0.1", &theirs).is_empty(), "the user's settings win");
        // Hosts in the subnet of this host's address toward them (loopback stands in here).
        let hosts = [HostSlots { name: "127.0.0.2".into(), slots: 1 }, HostSlots { name: "10.9.9.9".into(), slots: 1 }];
        assert!(network_args(&hosts, "127.0.0.1", &none).is_empty(), "a host outside the subnet: Open MPI chooses");
        let net = subnet_of("127.0.0.1").expect("loopback is 127.0.0.1/8");
        assert_eq!(net.to_string(), "127.0.0.0/8");
        assert!(net.contains("127.1.2.3".parse().unwrap()) && !net.contains("10.0.0.1".parse().unwrap()));
        assert_eq!(Subnet("10.77.5.1".parse().unwrap(), 24).to_string(), "10.77.5.0/24");
        assert!(user_sets("btl", &["--mca".into(), "btl".into(), "self,tcp".into()]));
        assert!(!user_sets("btl", &["--mca".into(), "pml".into(), "btl".into()]));
    }

    #[test]
    fn the_setpgid_race_is_harmless_and_other_warnings_are_not() {
        assert!(harmless("[vm:30526] plm:rsh: Warning: setpgid(30534,30534) failed in parent with errno=Permission denied(13)"));
        assert!(!harmless("[vm:30526] plm:rsh: Warning: setpgid(30534,30534) failed in parent with errno=No such process(3)"));
        assert!(!harmless("ORTE was unable to reliably start one or more daemons."));
    }

    #[test]
    fn report_names_the_rank_that_ended_the_job() {
        let lines = |t: &str| t.lines().map(str::to_string).collect::<Vec<_>>();
        let signal = lines("------\nmpirun noticed that process rank 1 with PID 0 on node h2 exited on signal 9 (Killed).\n------");
        assert_eq!(report(&signal), [Culprit { rank: 1, host: Some("h2".into()), end: RankEnd::Signal(9) }]);
        let code = lines(
            "mpirun detected that one or more processes exited with non-zero status, thus causing\n\
             the job to be terminated. The first process to do so was:\n\n  Process name: [[17645,1],3]\n  Exit code:    101\n",
        );
        assert_eq!(report(&code), [Culprit { rank: 3, host: None, end: RankEnd::Code(101) }]);
        let abort = lines("MPI_ABORT was invoked on rank 2 in communicator MPI_COMM_WORLD\nwith errorcode 7.");
        assert_eq!(report(&abort), [Culprit { rank: 2, host: None, end: RankEnd::Code(1) }]);
        assert!(report(&lines("Primary job  terminated normally, but 1 process returned")).is_empty());
    }
}
