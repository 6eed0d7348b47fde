//! Slurm's `srun` as the launcher, inside an allocation: its command line, and the tasks
//! its error lines blame.

use super::{Culprit, LaunchPlan, LauncherCommand, RankEnd, tagged::TagFormat};
use crate::hosts::Placement;

/// Options of one `srun` launch besides the plan.
#[derive(Debug, Clone, Default)]
pub struct SrunOptions {
    /// `--on-error continue`: a failing task does not end the others.
    pub keep_going: bool,
    /// The `srun` to run (`RANCH_SRUN`, else `srun` on the PATH).
    pub program: Option<String>,
    /// More arguments, before the program (`RANCH_SRUN_ARGS`: partition, account, `--mpi=pmix`).
    pub extra: Vec<String>,
}

/// `srun -n N --label ... exe`, with every variable of the plan in srun's environment
/// (`--export=ALL` passes it on). Named hosts go through Slurm's arbitrary distribution:
/// `SLURM_HOSTFILE` lists the host of each task, in rank order.
pub fn command(plan: &LaunchPlan, placement: &Placement, o: &SrunOptions) -> LauncherCommand {
    let mut args: Vec<String> = vec!["-n".into(), plan.local_ranks.to_string(), "--label".into(), "--export=ALL".into()];
    if !o.keep_going {
        args.push("--kill-on-bad-exit=1".into());
    }
    let mut env = plan.shared_env();
    if !placement.hosts.is_empty() {
        args.push("--distribution=arbitrary".into());
        env.push(("SLURM_HOSTFILE".into(), hostfile_path(plan).to_string_lossy().into_owned()));
    }
    args.extend(o.extra.iter().cloned());
    args.extend(plan.program_argv());
    LauncherCommand {
        name: "srun",
        program: o.program.clone().unwrap_or_else(|| "srun".into()),
        args,
        env,
        tags: TagFormat::Slurm,
        report,
        harmless: |_| false,
    }
}

/// Where the launch's `SLURM_HOSTFILE` is written (in its run directory).
pub fn hostfile_path(plan: &LaunchPlan) -> std::path::PathBuf {
    plan.run_dir.join("slurm-hosts")
}

/// The `SLURM_HOSTFILE` text: one line per task, its host.
pub fn hostfile(placement: &Placement) -> String {
    placement.rank_hosts().iter().map(|h| format!("{h}\n")).collect()
}

/// `srun: error: node2: task 1: Exited with exit code 3`, `srun: error: node2: tasks 0-1:
/// Killed` (a signal, by its description).
pub fn report(lines: &[String]) -> Vec<Culprit> {
    let mut found: Vec<Culprit> = Vec::new();
    for line in lines {
        let Some(rest) = line.trim().strip_prefix("srun: error: ") else { continue };
        let mut parts = rest.splitn(3, ": ");
        let (Some(host), Some(tasks), Some(what)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let Some(list) = tasks.strip_prefix("tasks ").or_else(|| tasks.strip_prefix("task ")) else { continue };
        let end = match what.strip_prefix("Exited with exit code ") {
            Some(code) => match code.trim().parse() {
                Ok(c) => RankEnd::Code(c),
                Err(_) => continue,
            },
            None => match signal_named(what) {
                Some(sig) => RankEnd::Signal(sig),
                None => continue,
            },
        };
        for rank in task_list(list) {
            if !found.iter().any(|f| f.rank == rank) {
                found.push(Culprit { rank, host: Some(host.to_string()), end });
            }
        }
    }
    found
}

/// `0-2,5` (bounded: a list is a launcher's, not a way to make the kernel count forever).
fn task_list(list: &str) -> Vec<usize> {
    let mut ranks = Vec::new();
    for part in list.split(',') {
        let part = part.trim();
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>())
            && a <= b
            && b - a < 1 << 16
        {
            ranks.extend(a..=b);
        }
    }
    ranks
}

/// Signals by the text `strsignal` gives (what srun prints).
fn signal_named(what: &str) -> Option<i32> {
    let names = [
        ("Killed", 9),
        ("Terminated", 15),
        ("Segmentation fault", 11),
        ("Aborted", 6),
        ("Bus error", 7),
        ("Interrupt", 2),
        ("Floating point exception", 8),
        ("Illegal instruction", 4),
    ];
    names.iter().find(|(n, _)| what.starts_with(n)).map(|&(_, s)| s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosts::{HostSlots, LauncherKind};

    #[test]
    fn command_line_and_environment() {
        let plan = super::super::mpirun::tests::plan();
        let local = Placement { launcher: LauncherKind::Srun, hosts: vec![] };
        let c = command(&plan, &local, &SrunOptions { extra: vec!["-p".into(), "gpu".into()], ..Default::default() });
        assert_eq!(c.args.join(" "), "-n 4 --label --export=ALL --kill-on-bad-exit=1 -p gpu /k/rank");
        assert!(c.env.contains(&("RANCH_TOKEN".into(), "s3cret".into())));
        let hosts = Placement {
            launcher: LauncherKind::Srun,
            hosts: vec![HostSlots { name: "n1".into(), slots: 3 }, HostSlots { name: "n2".into(), slots: 1 }],
        };
        let c = command(&plan, &hosts, &SrunOptions { keep_going: true, ..Default::default() });
        assert_eq!(c.args.join(" "), "-n 4 --label --export=ALL --distribution=arbitrary /k/rank");
        assert!(c.env.contains(&("SLURM_HOSTFILE".into(), "/k/run-1/slurm-hosts".into())));
        assert_eq!(hostfile(&hosts), "n1\nn1\nn1\nn2\n");
    }

    #[test]
    fn report_names_tasks() {
        let lines: Vec<String> = [
            "srun: error: node2: task 1: Exited with exit code 3",
            "srun: error: node1: tasks 0,2-3: Killed",
            "srun: Job step aborted: Waiting up to 32 seconds for job step to finish.",
            "srun: error: node9: tasks 0-99999999999: Killed",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let got = report(&lines);
        assert_eq!(got[0], Culprit { rank: 1, host: Some("node2".into()), end: RankEnd::Code(3) });
        assert_eq!(got.iter().map(|c| c.rank).collect::<Vec<_>>(), [1, 0, 2, 3]);
        assert_eq!(got[1].end, RankEnd::Signal(9));
    }
}
