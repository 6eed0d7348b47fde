//! How a rank's process died, in words a user can act on: the signal by name and what it
//! usually means, and the kernel's OOM killer named when it struck (its count in this
//! process's memory cgroup went up while the rank ran: cgroup v2's `memory.events` or v1's
//! `memory.oom_control`).

use nix::sys::signal::Signal;
use std::path::PathBuf;

/// How a process that `sig` killed died, as "rank 2 {this}" says it; `oom`: the OOM killer
/// struck meanwhile (it kills with SIGKILL).
pub fn killed_by(sig: i32, oom: bool) -> String {
    let name = Signal::try_from(sig).map_or_else(|_| "an unknown signal".to_string(), |s| s.as_str().to_string());
    if oom && sig == Signal::SIGKILL as i32 {
        return format!(
            "was killed by the kernel's OOM killer (signal {sig}, {name}): the machine, or this kernel's memory limit, \
             ran out of memory. Use less memory per rank, or fewer ranks"
        );
    }
    let meaning = match Signal::try_from(sig) {
        Ok(Signal::SIGSEGV) => ": a segmentation fault, an invalid memory access (in `unsafe` code or a C library)",
        Ok(Signal::SIGBUS) => ": a bus error (the memory behind a mapping is gone; is /dev/shm full?)",
        Ok(Signal::SIGABRT) => ": it aborted (`std::process::abort`, a C assertion, or a panic with panic = \"abort\")",
        Ok(Signal::SIGILL) => ": an illegal instruction (code built for another CPU?)",
        Ok(Signal::SIGFPE) => ": an arithmetic fault",
        _ => "",
    };
    format!("was killed by signal {sig} ({name}){meaning}")
}

/// Watches the OOM killer's count over a run: taken before the ranks start, compared when
/// one of them is killed.
#[derive(Debug, Clone, Copy)]
pub struct OomWatch(Option<u64>);

impl OomWatch {
    pub fn start() -> OomWatch {
        OomWatch(oom_kills())
    }

    /// Whether the OOM killer struck in this cgroup since the watch started (or last struck);
    /// each kill is told once.
    pub fn struck(&mut self) -> bool {
        let now = oom_kills();
        let struck = matches!((self.0, now), (Some(before), Some(after)) if after > before);
        if now.is_some() {
            self.0 = now;
        }
        struck
    }
}

/// How many processes the OOM killer ended in this process's memory cgroup, where readable.
pub fn oom_kills() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    counter_files(&cgroups).into_iter().find_map(|path| oom_kill_count(&std::fs::read_to_string(path).ok()?))
}

/// Where the OOM killer's count may be, most specific first: this cgroup's file, then the
/// root of the mounted hierarchy (a container sees its own cgroup there).
fn counter_files(proc_self_cgroup: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            files.push(PathBuf::from("/sys/fs/cgroup").join(path).join("memory.events"));
            files.push(PathBuf::from("/sys/fs/cgroup/memory.events"));
        } else if controllers.split(',').any(|c| c == "memory") {
            files.push(PathBuf::from("/sys/fs/cgroup/memory").join(path).join("memory.oom_control"));
            files.push(PathBuf::from("/sys/fs/cgroup/memory/memory.oom_control"));
        }
    }
    files
}

/// The `oom_kill N` line of `memory.events` or `memory.oom_control`.
fn oom_kill_count(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_named_with_what_they_mean() {
        assert_eq!(
            killed_by(11, false),
            "was killed by signal 11 (SIGSEGV): a segmentation fault, an invalid memory access (in `unsafe` code or a C library)"
        );
        assert!(killed_by(9, true).starts_with("was killed by the kernel's OOM killer (signal 9, SIGKILL)"));
        assert_eq!(killed_by(9, false), "was killed by signal 9 (SIGKILL)", "someone's kill -9: nothing more is known");
        assert!(killed_by(11, true).contains("SIGSEGV"), "only SIGKILL is the OOM killer's");
        assert_eq!(killed_by(15, false), "was killed by signal 15 (SIGTERM)");
        assert_eq!(killed_by(200, false), "was killed by signal 200 (an unknown signal)");
    }

    #[test]
    fn the_oom_count_is_found_in_either_cgroup_version() {
        let v1 = "9:name=systemd:/\n4:memory:/process_api/abc\n0::/\n";
        let files = counter_files(v1);
        assert_eq!(files[0], PathBuf::from("/sys/fs/cgroup/memory/process_api/abc/memory.oom_control"));
        assert!(files.contains(&PathBuf::from("/sys/fs/cgroup/memory.events")), "{files:?}");
        assert_eq!(counter_files("0::/user.slice/x.scope\n")[0], PathBuf::from("/sys/fs/cgroup/user.slice/x.scope/memory.events"));
        assert_eq!(oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"), Some(3));
        assert_eq!(oom_kill_count("low 0\nhigh 0\nmax 2\noom 2\noom_kill 2\noom_group_kill 0\n"), Some(2));
        assert_eq!(oom_kill_count("oom_kill_disable 0\n"), None);
    }
}
