//! A pool's fan-out process: evcxr's child, as far as the pool's evcxr context can tell.
//!
//! It starts the pool's rank processes (this binary again, each serving evcxr's child
//! protocol with its own variable store, see `child`), sends every `LOAD_AND_RUN` line
//! evcxr writes to all of them, so that each rank loads the one library evcxr built, and
//! answers evcxr once every rank has finished the cell: the ranks' values as one list, a
//! panic or `?` error if any rank had one, and the variables whose type changed.
//!
//! Output does not pass through here: each rank's output forwarder sends it to the
//! kernel's pool listener, labelled with its rank. A rank whose process ends mid-cell is
//! reported to the kernel ([`Event::RankExited`]) and this process exits: evcxr then
//! restarts it, which restarts every rank, and forgets the pool's variables, so that
//! evcxr's idea of what exists and the ranks' stores never disagree.

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
    let mut events = config.events.as_ref().and_then(|p| UnixStream::connect(p).ok());
    let mut fanout = match FanOut::start(&config) {
        Ok(f) => f,
        Err(e) => fail(&format!("cannot start the pool's ranks: {e}")),
    };
    match &fanout.ranks {
        Ranks::Local { children, .. } => send(&mut events, &Event::PoolPids(children.iter().map(Child::id).collect())),
        Ranks::Remote(hub) => send(&mut events, &Event::PoolHosts(hub.hosts.clone())),
    }
    // The kernel says which ranks run a `%%px` cell in the cell's group file; without one
    // (the session's items brought in) every rank runs it.
    let group_file = plan.first().and_then(|env| env.iter().find(|(k, _)| k == ranch::__rt::POOL_GROUP_ENV)).map(|(_, v)| v.clone());
    fanout.group_file = group_file.clone().map(std::path::PathBuf::from);
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.starts_with("LOAD_AND_RUN ") {
            let t = std::time::Instant::now();
            let all: Vec<usize> = (0..plan.len()).collect();
            let targets = group_file
                .as_ref()
                .and_then(|f| ranch::__rt::PoolGroup::read(std::path::Path::new(f)).ok())
                .map(|g| g.targets.into_iter().filter(|&r| r < plan.len()).collect::<Vec<_>>())
                .filter(|t| !t.is_empty())
                .unwrap_or(all);
            send(&mut events, &Event::Running);
            if let Err((rank, how)) = fanout.run(&line, &targets) {
                send(&mut events, &Event::RankExited { rank, how });
                // The other ranks die with this process (their parent-death signal; remote
                // ones when their links close).
                drop(fanout);
                std::process::exit(1);
            }
            let micros = t.elapsed().as_micros() as u64;
            send(&mut events, &Event::Dispatched { ranks: targets.len(), micros });
        }
    }
    drop(fanout);
    std::process::exit(0)
}

fn fail(message: &str) -> ! {
    eprintln!("[ranch pool] {message}");
    std::process::exit(97)
}

fn send(events: &mut Option<UnixStream>, event: &Event) {
    if let Some(s) = events {
        let mut line = serde_json::to_vec(event).expect("events serialise");
        line.push(b'\n');
        let _ = s.write_all(&line);
    }
}

struct FanOut {
    ranks: Ranks,
    /// The OOM killer's count since the ranks started (a rank it killed is named so).
    oom: OomWatch,
    /// Every rank's protocol lines, `None` when its stdout closed.
    lines: mpsc::Receiver<(usize, Option<String>)>,
    /// Where the kernel says each cell's group is.
    group_file: Option<std::path::PathBuf>,
}

/// The rank processes: children of this one, or relays on other hosts.
enum Ranks {
    Local { children: Vec<Child>, stdins: Vec<ChildStdin> },
    Remote(Hub),
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
    fn start(config: &Config) -> Result<FanOut, String> {
        let (tx, lines) = mpsc::channel();
        if let Some(spec) = &config.remote {
            let hub = Hub::start(&config.plan, spec, tx, config.events.as_deref())?;
            return Ok(FanOut { ranks: Ranks::Remote(hub), oom: OomWatch::start(), lines, group_file: None });
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for (rank, env) in config.plan.iter().enumerate() {
            let mut command = Command::new(&exe);
            // Each rank is evcxr's child (inherited from this process), not a fan-out.
            command.env_remove(role::ROLE_ENV).env(RANK_ENV, rank.to_string());
            if let Some(events) = &config.events {
                command.env(SOCKET_ENV, events);
            }
            let mut child = command
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())?;
            stdins.push(child.stdin.take().expect("piped"));
            let stdout = child.stdout.take().expect("piped");
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut open = true;
                let each = |line: Vec<u8>| {
                    open = tx.send((rank, Some(String::from_utf8_lossy(&line).into_owned()))).is_ok();
                    open
                };
                for_each_line(stdout, each, || {
                    eprintln!("ranch pool: a line of more than {} MiB from rank {rank} was dropped", MAX_LINE >> 20)
                });
                if open {
                    let _ = tx.send((rank, None));
                }
            });
            children.push(child);
        }
        Ok(FanOut { ranks: Ranks::Local { children, stdins }, oom: OomWatch::start(), lines, group_file: None })
    }

    /// Sends rank `rank` one protocol line (to a remote rank, what the cell needs first).
    fn send_line(&mut self, rank: usize, line: &str) -> std::io::Result<()> {
        match &mut self.ranks {
            Ranks::Local { stdins, .. } => writeln!(stdins[rank], "{line}").and_then(|_| stdins[rank].flush()),
            Ranks::Remote(hub) => hub.send_line(rank, line, self.group_file.as_deref()),
        }
    }

    fn size(&self) -> usize {
        match &self.ranks {
            Ranks::Local { children, .. } => children.len(),
            Ranks::Remote(hub) => hub.hosts.len(),
        }
    }

    /// Runs one cell on the ranks `targets` and answers evcxr; `Err` names a rank whose
    /// process ended, and how.
    fn run(&mut self, line: &str, targets: &[usize]) -> Result<(), (usize, String)> {
        for &rank in targets {
            if self.send_line(rank, line).is_err() {
                return Err((rank, self.how_it_ended(rank)));
            }
        }
        let n = self.size();
        let mut replies: Vec<RankReply> = (0..n).map(|_| RankReply::default()).collect();
        let mut changed = BTreeSet::new();
        while targets.iter().any(|&r| !replies[r].complete) {
            let Ok((rank, line)) = self.lines.recv() else { return Err((0, "its output pipe failed".into())) };
            let Some(line) = line else { return Err((rank, self.how_it_ended(rank))) };
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
        let replies: Vec<RankReply> = replies.into_iter().enumerate().filter(|(r, _)| targets.contains(r)).map(|(_, r)| r).collect();
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
            Ranks::Local { children, .. } => how_it_ended(&mut children[rank], &mut self.oom),
            Ranks::Remote(hub) => hub.how_it_ended(rank),
        }
    }
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
