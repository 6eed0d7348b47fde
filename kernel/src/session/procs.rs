//! The kernel's descendant processes, read from /proc: evcxr gives no handle on the cargo
//! builds it runs, and an interrupt must be able to stop them; and the processes the
//! kernel adopts.
//!
//! The kernel is a child subreaper ([`adopt_orphans`]): what a rank leaves running, even
//! in a session of its own (`setsid`), becomes the kernel's child when the rank ends
//! instead of init's, so [`end_new_orphans`] can find and stop it; and adopted processes
//! that end are reaped ([`reap_adopted`]), never left as zombies.

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use std::collections::{HashMap, HashSet};

struct Proc {
    ppid: i32,
    /// Its process group (a rank's orphans keep the rank's).
    pgrp: i32,
    comm: String,
    zombie: bool,
}

fn table() -> HashMap<i32, Proc> {
    let mut procs = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return procs };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // "pid (comm) state ppid ..."; comm may contain spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let comm = stat[open + 1..close].to_string();
        let mut fields = stat[close + 1..].split_whitespace();
        let zombie = fields.next() == Some("Z");
        let mut number = || fields.next().and_then(|s| s.parse().ok());
        if let (Some(ppid), Some(pgrp)) = (number(), number()) {
            procs.insert(pid, Proc { ppid, pgrp, comm, zombie });
        }
    }
    procs
}

fn descendants_of(root: i32, procs: &HashMap<i32, Proc>) -> Vec<i32> {
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (&pid, proc_) in procs {
            if proc_.ppid == p {
                out.push(pid);
                frontier.push(pid);
            }
        }
    }
    out
}

/// Makes orphaned descendants of the kernel its children (Linux's child subreaper).
pub fn adopt_orphans() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        crate::log!("processes left by ranks cannot be tracked (no child subreaper): {e}");
    }
}

/// The kernel's children now.
pub fn children() -> HashSet<i32> {
    let me = std::process::id() as i32;
    table().into_iter().filter(|(_, p)| p.ppid == me).map(|(pid, _)| pid).collect()
}

/// The kernel's children, with their process groups.
fn children_and_groups() -> Vec<(i32, i32)> {
    let me = std::process::id() as i32;
    table().into_iter().filter(|(_, p)| p.ppid == me).map(|(pid, p)| (pid, p.pgrp)).collect()
}

/// Stops and reaps the kernel's children that were not among `before` and are not in
/// `keep`, nor in a process group a launch still owns ([`super::janitor::watched`]: a
/// background job's ranks), nor in the kernel's own group (what evcxr starts: its builds,
/// a pool's fan-out, which a background job may be using): processes a launch's ranks left
/// behind (and, level by level, what those started). Returns how many there were.
pub fn end_new_orphans(before: &HashSet<i32>, keep: &[i32]) -> usize {
    let own = nix::unistd::getpgrp().as_raw();
    end_children_where(|pid, pgrp| {
        !before.contains(&pid) && !keep.contains(&pid) && pgrp != own && !super::janitor::watched().contains(&pgrp)
    })
}

/// Stops and reaps the kernel's children not among `before` whose process group is one of
/// `groups`: what one background job's ranks left running, and nothing of anyone else's.
pub fn end_orphans_in(before: &HashSet<i32>, groups: &[i32]) -> usize {
    end_children_where(|pid, pgrp| !before.contains(&pid) && groups.contains(&pgrp))
}

fn end_children_where(orphan: impl Fn(i32, i32) -> bool) -> usize {
    let mut ended = 0;
    // Killing an orphan orphans its own children, which the kernel then adopts: a few
    // rounds reach down a process tree.
    for _ in 0..8 {
        let new: Vec<i32> = children_and_groups().into_iter().filter(|&(pid, pgrp)| orphan(pid, pgrp)).map(|(pid, _)| pid).collect();
        if new.is_empty() {
            break;
        }
        for &pid in &new {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid), None);
        }
        ended += new.len();
    }
    ended
}

/// Reaps adopted children that ended (not `keep`, which their owners wait for, nor the
/// ranks of launches still running, which their supervisors wait for).
pub fn reap_adopted(keep: &[i32]) {
    let me = std::process::id() as i32;
    let owned = super::janitor::watched();
    // What evcxr started (in the kernel's group) is waited for by evcxr.
    let own = nix::unistd::getpgrp().as_raw();
    for (pid, p) in table() {
        if p.ppid == me && p.zombie && !keep.contains(&pid) && !owned.contains(&p.pgrp) && p.pgrp != own {
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// Builds a background job runs (the pool's, while a job has it): an interrupt of the cell
/// in front does not touch them.
static SPARED: std::sync::Mutex<Option<std::path::PathBuf>> = std::sync::Mutex::new(None);

/// Spares (or, `None`, no longer spares) the builds that run in `dir` from
/// [`kill_cargo_builds`].
pub fn spare_builds_in(dir: Option<&std::path::Path>) {
    *SPARED.lock().unwrap_or_else(|e| e.into_inner()) = dir.map(resolved);
}

/// `dir` as a process's working directory reads (`/proc/<pid>/cwd` has no symbolic links).
fn resolved(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Kills every `cargo` the kernel started (and the compilers under it), but those a
/// background job runs. Returns whether there was one.
pub fn kill_cargo_builds() -> bool {
    let spared = SPARED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    kill_cargo_builds_where(|cwd| spared.as_ref().is_none_or(|dir| !cwd.is_some_and(|cwd| cwd.starts_with(dir))))
}

/// Kills the `cargo` builds that run in `dir` (a pool's cells), and the compilers under them.
/// Returns whether there was one.
pub fn kill_cargo_builds_in(dir: &std::path::Path) -> bool {
    let dir = resolved(dir);
    kill_cargo_builds_where(|cwd| cwd.is_some_and(|cwd| cwd.starts_with(&dir)))
}

/// Kills the kernel's `cargo` children whose working directory `chosen` picks (cargo runs
/// in the directory of the crate it builds: evcxr's, the pool's, a rank program's).
fn kill_cargo_builds_where(chosen: impl Fn(Option<&std::path::Path>) -> bool) -> bool {
    let procs = table();
    let me = std::process::id() as i32;
    let cwd = |pid: i32| std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let cargos: Vec<i32> =
        procs.iter().filter(|(pid, p)| p.ppid == me && p.comm == "cargo" && chosen(cwd(**pid).as_deref())).map(|(&pid, _)| pid).collect();
    for &cargo in &cargos {
        for pid in descendants_of(cargo, &procs).into_iter().chain([cargo]) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    !cargos.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_own_children() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let procs = table();
        let kids = descendants_of(std::process::id() as i32, &procs);
        assert!(kids.contains(&(child.id() as i32)));
        assert_eq!(procs[&(child.id() as i32)].comm, "sleep");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
