//! How a rank's process died, in words a user can act on: the signal by name and what it
//! usually means; the kernel's OOM killer named when it struck (its count in this process's
//! memory cgroup went up while the rank ran: cgroup v2's `memory.events` or v1's
//! `memory.oom_control`), with the rank's peak memory (from `wait4`); and an allocation that
//! failed under a memory limit (Rust's own message, then an abort) said as running out of
//! memory.

use nix::sys::signal::Signal;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};

/// How a process that `sig` killed died, as "rank 2 {this}" says it (the OOM killer's
/// SIGKILL is said by [`oom_killed`]).
pub fn killed_by(sig: i32) -> String {
    let name = Signal::try_from(sig).map_or_else(|_| "an unknown signal".to_string(), |s| s.as_str().to_string());
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

/// How a rank the OOM killer ended died; `peak`: its peak resident memory, in bytes.
pub fn oom_killed(peak: Option<u64>) -> String {
    let used = peak.map_or(String::new(), |p| format!("; it used {} at its peak", bytes(p)));
    format!(
        "was killed by the kernel's OOM killer (signal 9, SIGKILL){used}: the machine, or this kernel's memory limit, \
         ran out of memory. Use less memory per rank, or fewer ranks"
    )
}

/// How a rank whose allocation of `size` bytes failed ended.
pub fn allocation_failed(size: u64) -> String {
    format!(
        "ran out of memory: an allocation of {} failed, under its memory limit (`ulimit -v`, a job's limit) or the \
         machine's, and it aborted. Use less memory per rank, or fewer ranks",
        bytes(size)
    )
}

/// The size of the allocation that failed, from Rust's message before it aborts
/// (`memory allocation of 1073741824 bytes failed`) among a rank's last lines.
pub fn failed_allocation<'a>(last_lines: impl IntoIterator<Item = &'a String>) -> Option<u64> {
    last_lines.into_iter().find_map(|l| l.trim().strip_prefix("memory allocation of ")?.strip_suffix(" bytes failed")?.parse().ok())
}

/// Bytes as a person reads them (`11.2 GiB`, `512.0 MiB`).
pub fn bytes(n: u64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} bytes") } else { format!("{value:.1} {}", units[unit]) }
}

/// Waits for `child` to end and reaps it: its exit status, and its peak resident memory in
/// bytes (the kernel's `ru_maxrss`), which only the waiter that reaps it can learn.
pub fn reap(child: &mut Child) -> (std::io::Result<ExitStatus>, Option<u64>) {
    use std::os::unix::process::ExitStatusExt;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: wait4 writes only the status and the rusage it is given, both owned here.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: as above; `pid` is this process's child, not yet reaped.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            // Linux gives ru_maxrss in KiB.
            return (Ok(ExitStatus::from_raw(status)), Some(usage.ru_maxrss.max(0) as u64 * 1024));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            // Reaped elsewhere (or never ours): std's own wait says what it can.
            return (child.wait(), None);
        }
    }
}

/// How a rank process whose output closed ended: it is given up to 2 s to exit (else it is
/// stopped, and said to be), then reaped, with its peak memory when the OOM killer ended it.
pub fn how_it_ended(child: &mut Child, oom: &mut OomWatch) -> String {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // Looked at without reaping it (WNOWAIT): the reaper learns its peak memory.
    let exited =
        || !matches!(waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT), Ok(WaitStatus::StillAlive));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while !exited() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    if !exited() {
        let _ = child.kill();
        let _ = child.wait();
        return "closed its output pipe and was stopped".into();
    }
    match reap(child) {
        (Ok(status), peak) => describe_exit(status, peak, oom),
        (Err(e), _) => format!("ended ({e})"),
    }
}

/// How a rank's process ended, as its error says; `peak`: its peak memory in bytes, said
/// when the OOM killer (`oom`'s count) ended it.
pub fn describe_exit(status: ExitStatus, peak: Option<u64>, oom: &mut OomWatch) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) if sig == Signal::SIGKILL as i32 && oom.struck() => oom_killed(peak),
        (None, Some(sig)) => killed_by(sig),
        _ => "ended".into(),
    }
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
    fn reaping_a_rank_tells_its_status_and_peak_memory() {
        use std::os::unix::process::ExitStatusExt;
        // dd reads 64 MiB into one buffer: its peak resident memory is at least that.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; exit 3"])
            .spawn()
            .unwrap();
        let (status, peak) = reap(&mut child);
        assert_eq!(status.unwrap().code(), Some(3));
        assert!(peak.unwrap() >= 60 << 20, "peak {peak:?}");
        let mut child = std::process::Command::new("sh").args(["-c", "kill -SEGV $$"]).spawn().unwrap();
        assert_eq!(how_it_ended(&mut child, &mut OomWatch(None)), killed_by(11));
        let (status, _) = reap(&mut std::process::Command::new("true").spawn().unwrap());
        assert_eq!(status.unwrap().signal(), None);
    }

    #[test]
    fn signals_are_named_with_what_they_mean() {
        assert_eq!(
            killed_by(11),
            "was killed by signal 11 (SIGSEGV): a segmentation fault, an invalid memory access (in `unsafe` code or a C library)"
        );
        assert!(oom_killed(None).starts_with("was killed by the kernel's OOM killer (signal 9, SIGKILL): the machine"));
        let peak = oom_killed(Some(12_025_908_428));
        assert!(peak.starts_with("was killed by the kernel's OOM killer (signal 9, SIGKILL); it used 11.2 GiB at its peak:"), "{peak}");
        assert_eq!(killed_by(9), "was killed by signal 9 (SIGKILL)", "someone's kill -9: nothing more is known");
        assert_eq!(killed_by(15), "was killed by signal 15 (SIGTERM)");
        assert_eq!(killed_by(200), "was killed by signal 200 (an unknown signal)");
        let lines = ["allocating".to_string(), "memory allocation of 1073741824 bytes failed".into()];
        assert_eq!(failed_allocation(&lines), Some(1 << 30));
        assert_eq!(failed_allocation(&["memory allocation of many bytes failed".to_string()]), None);
        assert!(allocation_failed(1 << 30).starts_with("ran out of memory: an allocation of 1.0 GiB failed"));
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
