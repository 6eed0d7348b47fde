//! The kernel's descendant processes, read from /proc: evcxr gives no handle on the cargo
//! builds it runs, and an interrupt must be able to stop them.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::HashMap;

struct Proc {
    ppid: i32,
    comm: String,
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
        let ppid = stat[close + 1..].split_whitespace().nth(1).and_then(|s| s.parse().ok());
        if let Some(ppid) = ppid {
            procs.insert(pid, Proc { ppid, comm });
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

/// Kills every `cargo` the kernel started (and the compilers under it). Returns whether
/// there was one.
pub fn kill_cargo_builds() -> bool {
    let procs = table();
    let me = std::process::id() as i32;
    let cargos: Vec<i32> = procs
        .iter()
        .filter(|(_, p)| p.ppid == me && p.comm == "cargo")
        .map(|(&pid, _)| pid)
        .collect();
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
