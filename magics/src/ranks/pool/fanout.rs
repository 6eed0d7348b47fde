//! A pool's fan-out process: evcxr's child, as far as the pool's evcxr context can tell.
//!
//! It starts the pool's rank processes (this binary again, each serving evcxr's child
//! protocol with its own variable store, see `child`), sends every `LOAD_AND_RUN` line
//! evcxr writes to all of them, so that each rank loads the one library evcxr built, and
//! answers evcxr once every rank has finished the cell: the ranks' values as one list, a
//! panic or `?` error if any rank had one, and the variables whose type changed.
//!
//! Output does not pass through here: each rank's output forwarder sends it to the
//! kernel's pool listener, labelled with its rank. A rank whose process ends (in a cell, or
//! between cells, or stopped by `%ranch_restart --targets`) is reported to the kernel
//! ([`Event::RankExited`]) and started again alone ([`Event::RankRestarted`]): the other
//! ranks keep their variables. The new process has none, while evcxr loads every stored
//! variable in every cell, so it sits out the cells ([`FanOut::stateless`]) until the kernel
//! names it among a cell's ranks again (when the pool holds no variables). Ranks on other
//! hosts are not restarted alone: their death ends this process, evcxr restarts it, which
//! restarts every rank and forgets the pool's variables.

use super::hub::{Hub, RemoteSpec};
use crate::ranks::death::{OomWatch, how_it_ended};
use crate::ranks::event::RANK_ENV;
use crate::ranks::event::{Event, MAX_LINE, SOCKET_ENV, for_each_line};
use crate::role::{self, ConfigFd};
use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;

use ranch::__rt::evcxr_lines::{
    BEGIN_CONTENT as BEGIN, END_CONTENT as END, ERROR_OCCURRED as USER_ERROR, EXECUTION_COMPLETE as COMPLETE, INPUT_REQUEST,
    PANIC_NOTIFICATION as PANIC, VARIABLE_CHANGED_TYPE as CHANGED_TYPE,
};
/// The most of one rank's value that is kept (its text form); the rest is cut.
const VALUE_LIMIT: usize = 1 << 20;
const TOO_LARGE: &str = " … (cut: over 1 MiB)";

/// What the kernel gives the fan-out (on an inherited descriptor, see [`role::pass_config`]):
/// it holds the pool's token and every rank's environment, which no process below the
/// fan-out is to see whole.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Config {
    /// Every rank's environment.
    pub plan: Vec<Vec<(String, String)>>,
    /// How the ranks start elsewhere (`None`: the fan-out spawns them).
    pub remote: Option<RemoteSpec>,
    /// The kernel's pool listener, which the ranks (and the fan-out) tell what happens.
    pub events: Option<std::path::PathBuf>,
}

impl Config {
    /// Makes `command` (this binary) a fan-out with this configuration.
    pub fn pass(&self, command: &mut Command) -> std::io::Result<()> {
        role::pass_config(command, role::POOL_FANOUT, &serde_json::to_vec(self).expect("the plan serialises"))
    }
}

/// A pool's fan-out process, with its [`Config`] on `config`: serves evcxr and never
/// returns. Must run before any other thread exists.
pub fn run(config: ConfigFd) -> ! {
    // Tied to the kernel's life, and deaf to the kernel's process group's SIGINT, as
    // evcxr's child is (see child::prepare); the ranks are tied to this process.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
        std::process::exit(0);
    }
    // SAFETY: setting a signal to "ignore" has no handler to be unsafe in.
    unsafe {
        let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGINT, nix::sys::signal::SigHandler::SigIgn);
    }
    let config: Config = match config.read(role::POOL_FANOUT).map(|c| serde_json::from_slice(&c)) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => fail(&format!("bad pool configuration: {e}")),
        Err(e) => fail(&e.to_string()),
    };
    let plan = &config.plan;
    let events = config.events.as_ref().and_then(|p| UnixStream::connect(p).ok());
    let mut fanout = match FanOut::start(&config, events) {
        Ok(f) => f,
        Err(e) => fail(&format!("cannot start the pool's ranks: {e}")),
    };
    let started = match &fanout.ranks {
        Ranks::Local(local) => Event::PoolPids(local.children.iter().map(Child::id).collect()),
        Ranks::Remote(hub) => Event::PoolHosts(hub.hosts.clone()),
    };
    fanout.send(&started);
    // The kernel says which ranks run a `%%px` cell in the cell's group file; without one
    // (the session's items brought in) every rank runs it.
    let group_file = plan.first().and_then(|env| env.iter().find(|(k, _)| k == ranch::__rt::POOL_GROUP_ENV)).map(|(_, v)| v.clone());
    fanout.group_file = group_file.clone().map(std::path::PathBuf::from);
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.starts_with("LOAD_AND_RUN ") {
            let t = std::time::Instant::now();
            // The kernel's ranks for a `%%px` cell; without a group file, every rank that
            // has its state (what evcxr runs to bring the session's items in).
            let named = group_file
                .as_ref()
                .and_then(|f| ranch::__rt::PoolGroup::read(std::path::Path::new(f)).ok())
                .map(|g| g.targets.into_iter().filter(|&r| r < plan.len()).collect::<Vec<_>>())
                .filter(|t| !t.is_empty());
            fanout.send(&Event::Running);
            let targets = fanout.targets(named);
            if let Err((rank, how)) = fanout.run(&line, &targets) {
                fanout.send(&Event::RankExited { rank, how });
                // The other ranks die with this process (their parent-death signal; remote
                // ones when their links close).
                drop(fanout);
                std::process::exit(1);
            }
            let micros = t.elapsed().as_micros() as u64;
            fanout.send(&Event::Dispatched { ranks: targets.len(), micros });
        }
    }
    drop(fanout);
    std::process::exit(0)
}

fn fail(message: &str) -> ! {
    eprintln!("[ranch pool] {message}");
    std::process::exit(97)
}

/// A rank's protocol line (`None`: its stdout closed), with the rank and which of its
/// processes wrote it (a restarted rank's old reader may still speak).
type RankLine = (usize, u64, Option<String>);

struct FanOut {
    ranks: Ranks,
    /// The OOM killer's count since the ranks started (a rank it killed is named so).
    oom: OomWatch,
    /// Every rank's protocol lines.
    lines: mpsc::Receiver<RankLine>,
    /// Where the kernel says each cell's group is.
    group_file: Option<std::path::PathBuf>,
    /// The kernel's pool listener.
    events: Option<UnixStream>,
    /// Ranks restarted alone: they have no variables, so they run no cell unless the kernel
    /// names them.
    stateless: BTreeSet<usize>,
}

/// The rank processes: children of this one, or relays on other hosts.
enum Ranks {
    Local(LocalRanks),
    Remote(Hub),
}

/// Ranks this process spawned, and how to spawn one again.
struct LocalRanks {
    exe: std::path::PathBuf,
    plan: Vec<Vec<(String, String)>>,
    events: Option<std::path::PathBuf>,
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    /// Each rank's process: bumped when it is restarted.
    generation: Vec<u64>,
    lines: mpsc::Sender<RankLine>,
}

impl LocalRanks {
    /// Spawns rank `rank`'s process, with a thread that reads its protocol lines.
    fn spawn(&self, rank: usize, generation: u64) -> Result<(Child, ChildStdin), String> {
        let mut command = Command::new(&self.exe);
        // Each rank is evcxr's child (inherited from this process), not a fan-out.
        command.env_remove(role::ROLE_ENV).env(RANK_ENV, rank.to_string());
        if let Some(events) = &self.events {
            command.env(SOCKET_ENV, events);
        }
        let mut child = command
            .envs(self.plan[rank].iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let tx = self.lines.clone();
        std::thread::spawn(move || {
            let mut open = true;
            let each = |line: Vec<u8>| {
                open = tx.send((rank, generation, Some(String::from_utf8_lossy(&line).into_owned()))).is_ok();
                open
            };
            for_each_line(stdout, each, || {
                eprintln!("ranch pool: a line of more than {} MiB from rank {rank} was dropped", MAX_LINE >> 20)
            });
            if open {
                let _ = tx.send((rank, generation, None));
            }
        });
        Ok((child, stdin))
    }
}

/// What one rank said about the running cell.
#[derive(Default)]
struct RankReply {
    complete: bool,
    panicked: bool,
    user_error: bool,
    /// Inside a content block: (mime, body so far).
    block: Option<(String, String)>,
    /// The cell's value, by MIME type.
    value: Vec<(String, String)>,
}

impl FanOut {
    fn start(config: &Config, events: Option<UnixStream>) -> Result<FanOut, String> {
        let (tx, lines) = mpsc::channel();
        let (oom, stateless) = (OomWatch::start(), BTreeSet::new());
        if let Some(spec) = &config.remote {
            // The hub's relays speak for their ranks (always their first process).
            let (relay_tx, relay_lines) = mpsc::channel::<(usize, Option<String>)>();
            std::thread::spawn(move || {
                for (rank, line) in relay_lines {
                    if tx.send((rank, 0, line)).is_err() {
                        break;
                    }
                }
            });
            let hub = Hub::start(&config.plan, spec, relay_tx, config.events.as_deref())?;
            return Ok(FanOut { ranks: Ranks::Remote(hub), oom, lines, group_file: None, events, stateless });
        }
        let mut local = LocalRanks {
            exe: std::env::current_exe().map_err(|e| e.to_string())?,
            plan: config.plan.clone(),
            events: config.events.clone(),
            children: Vec::new(),
            stdins: Vec::new(),
            generation: vec![0; config.plan.len()],
            lines: tx,
        };
        for rank in 0..config.plan.len() {
            let (child, stdin) = local.spawn(rank, 0)?;
            local.children.push(child);
            local.stdins.push(stdin);
        }
        Ok(FanOut { ranks: Ranks::Local(local), oom, lines, group_file: None, events, stateless })
    }

    /// Tells the kernel's pool listener.
    fn send(&mut self, event: &Event) {
        if let Some(s) = &mut self.events {
            let mut line = serde_json::to_vec(event).expect("events serialise");
            line.push(b'\n');
            let _ = s.write_all(&line);
        }
    }

    /// The ranks that run a cell: those the kernel named (a rank restarted alone among
    /// them runs again), else every rank with its state. Local ranks that ended since the
    /// last cell are restarted first (and sit this cell out unless named).
    fn targets(&mut self, named: Option<Vec<usize>>) -> Vec<usize> {
        let known = self.stateless.clone();
        if let Ranks::Local(local) = &mut self.ranks {
            // Looked at without reaping (WNOWAIT): the reaper learns its peak memory.
            let ended: Vec<usize> = (0..local.children.len()).filter(|&r| has_ended(&local.children[r])).collect();
            for rank in ended {
                let how = self.how_it_ended(rank);
                if self.restart(rank, how).is_err() {
                    break;
                }
            }
        }
        match named {
            // The kernel names a stateless rank it knows of only when the pool holds no
            // variables; one restarted just now it could not know of.
            Some(named) => {
                let runs: Vec<usize> = named.into_iter().filter(|rank| known.contains(rank) || !self.stateless.contains(rank)).collect();
                for rank in &runs {
                    self.stateless.remove(rank);
                }
                runs
            }
            None => (0..self.size()).filter(|r| !self.stateless.contains(r)).collect(),
        }
    }

    /// Rank `rank`'s process ended (`how`): it is said to the kernel and started again alone,
    /// without state. `Err` when it cannot be (a rank on another host, or its spawn failed).
    fn restart(&mut self, rank: usize, how: String) -> Result<(), (usize, String)> {
        let Ranks::Local(local) = &mut self.ranks else { return Err((rank, how)) };
        let generation = local.generation[rank] + 1;
        let (child, stdin) = match local.spawn(rank, generation) {
            Ok(spawned) => spawned,
            Err(e) => return Err((rank, format!("{how}, and could not be started again ({e})"))),
        };
        let pid = child.id();
        local.children[rank] = child;
        local.stdins[rank] = stdin;
        local.generation[rank] = generation;
        self.stateless.insert(rank);
        self.send(&Event::RankExited { rank, how });
        self.send(&Event::RankRestarted { rank, pid });
        Ok(())
    }

    /// Sends rank `rank` one protocol line (to a remote rank, what the cell needs first).
    fn send_line(&mut self, rank: usize, line: &str) -> std::io::Result<()> {
        match &mut self.ranks {
            Ranks::Local(local) => writeln!(local.stdins[rank], "{line}").and_then(|_| local.stdins[rank].flush()),
            Ranks::Remote(hub) => hub.send_line(rank, line, self.group_file.as_deref()),
        }
    }

    fn size(&self) -> usize {
        match &self.ranks {
            Ranks::Local(local) => local.children.len(),
            Ranks::Remote(hub) => hub.hosts.len(),
        }
    }

    /// Runs one cell on the ranks `targets` and answers evcxr. A local rank whose process
    /// ends meanwhile is restarted alone and drops out of the cell; `Err` names a rank whose
    /// process ended and could not be (a rank on another host), and how.
    fn run(&mut self, line: &str, targets: &[usize]) -> Result<(), (usize, String)> {
        let mut running: Vec<usize> = Vec::with_capacity(targets.len());
        for &rank in targets {
            if self.send_line(rank, line).is_err() {
                let how = self.how_it_ended(rank);
                self.restart(rank, how)?;
            } else {
                running.push(rank);
            }
        }
        let n = self.size();
        let mut replies: Vec<RankReply> = (0..n).map(|_| RankReply::default()).collect();
        let mut changed = BTreeSet::new();
        while running.iter().any(|&r| !replies[r].complete) {
            let Ok((rank, generation, line)) = self.lines.recv() else { return Err((0, "its output pipe failed".into())) };
            if let Ranks::Local(local) = &self.ranks
                && local.generation[rank] != generation
            {
                continue; // the old process of a restarted rank
            }
            let Some(line) = line else {
                let how = self.how_it_ended(rank);
                self.restart(rank, how)?;
                running.retain(|&r| r != rank);
                replies[rank] = RankReply::default();
                continue;
            };
            let reply = &mut replies[rank];
            if let Some((mime, mut body)) = reply.block.take() {
                if line == END {
                    reply.value.push((mime, body));
                } else if line == PANIC {
                    reply.panicked = true;
                } else {
                    // A value too large to show is said to be so, not held (one per rank).
                    if body.len() + line.len() < VALUE_LIMIT {
                        if !body.is_empty() {
                            body.push('\n');
                        }
                        body.push_str(&line);
                    } else if !body.ends_with(TOO_LARGE) {
                        body.push_str(TOO_LARGE);
                    }
                    reply.block = Some((mime, body));
                }
            } else if line == COMPLETE {
                reply.complete = true;
            } else if line == PANIC {
                reply.panicked = true;
            } else if line == USER_ERROR {
                reply.user_error = true;
            } else if let Some(name) = line.strip_prefix(CHANGED_TYPE) {
                changed.insert(name.to_string());
            } else if let Some(mime) = line.strip_prefix(BEGIN) {
                reply.block = Some((mime.trim().to_string(), String::new()));
            } else if line.starts_with(INPUT_REQUEST) {
                // Ranks have no one to ask: they read an empty line.
                let _ = self.send_line(rank, "");
            }
        }
        let mut out = std::io::stdout().lock();
        for name in &changed {
            let _ = writeln!(out, "{CHANGED_TYPE}{name}");
        }
        let replies: Vec<RankReply> = replies.into_iter().enumerate().filter(|(r, _)| running.contains(r)).map(|(_, r)| r).collect();
        if let Some(list) = merged_value(&replies) {
            let _ = writeln!(out, "{BEGIN}text/plain\n{list}\n{END}");
        }
        if replies.iter().any(|r| r.panicked) {
            let _ = writeln!(out, "{PANIC}");
        } else if replies.iter().any(|r| r.user_error) {
            let _ = writeln!(out, "{USER_ERROR}");
        }
        let _ = writeln!(out, "{COMPLETE}");
        let _ = out.flush();
        Ok(())
    }

    /// Its output closed: it has ended, or is ending (else it is made to).
    fn how_it_ended(&mut self, rank: usize) -> String {
        match &mut self.ranks {
            Ranks::Local(local) => how_it_ended(&mut local.children[rank], &mut self.oom),
            Ranks::Remote(hub) => hub.how_it_ended(rank),
        }
    }
}

/// Whether `child` has ended, looked at without reaping it.
fn has_ended(child: &Child) -> bool {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    !matches!(waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT), Ok(WaitStatus::StillAlive))
}

/// The ranks' values as one list, `[v0, v1, ...]` (their plain-text forms), when every
/// rank has one.
fn merged_value(replies: &[RankReply]) -> Option<String> {
    let plain: Option<Vec<&str>> =
        replies.iter().map(|r| r.value.iter().find(|(m, _)| m == "text/plain").map(|(_, v)| v.as_str())).collect();
    Some(format!("[{}]", plain?.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_value(v: Option<&str>) -> RankReply {
        RankReply { value: v.map(|v| vec![("text/plain".into(), v.into())]).unwrap_or_default(), ..Default::default() }
    }

    #[test]
    fn values_merge_only_when_every_rank_has_one() {
        assert_eq!(merged_value(&[with_value(Some("1")), with_value(Some("\"b\""))]).as_deref(), Some("[1, \"b\"]"));
        assert_eq!(merged_value(&[with_value(Some("1")), with_value(None)]), None);
    }
}
