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
    args.extend(o.extra.iter().cloned());
    args.extend(plan.program_argv());
    LauncherCommand {
        name: "mpirun",
        program: o.program.clone().unwrap_or_else(|| "mpirun".into()),
        args,
        env,
        tags: TagFormat::OpenMpi,
        report,
    }
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
        if let Some(c) = culprit {
            if !found.iter().any(|f| f.rank == c.rank) {
                found.push(c);
            }
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
