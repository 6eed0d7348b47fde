//! The fan-out's end of a pool whose ranks run on other hosts (`%ranch_start N --hosts ...`,
//! `--hostfile`, `--launcher mpirun|srun`): it starts the launcher, which starts a relay
//! ([`super::relay`]) for each rank on its host, accepts each relay's connection (checked
//! with the pool's token), and then carries each rank's protocol lines, cell libraries,
//! groups, pushed and pulled variables, and events (see [`super::link`]).
//!
//! The relays fetch this binary over the launch's channel (as `%%ranch` ranks fetch their
//! program) unless `RANCH_SHARED_DIR` holds a copy; the cells' libraries and libstd come
//! over the link, so the hosts need no toolchain and no directory shared with this one.
//! The ranks get a channel of their own, which serves only the session's shared arrays
//! (each host's copy is made from it; the pool's token never reaches a rank).

use super::link::{self, Frame, HELLO};
use crate::channel::{CHANNEL_ENV, CHANNEL_TOKEN_ENV, Channel};
use ranch::__rt::keepalive;
use ranch::__rt::listener::{Listener, Rules};
use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How the fan-out starts ranks elsewhere (from the kernel, in the fan-out's configuration).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct RemoteSpec {
    /// The launcher's name ("mpirun", "srun"), program, arguments and environment (its
    /// secrets are in the environment; the hub's address, in the relays' role, and the
    /// channel's are filled in here).
    pub launcher: String,
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// An address of this host the ranks reach.
    pub reach: String,
    pub token: String,
    /// The program the relays fetch over the channel (`None`: they can run it where it is).
    pub ship: Option<PathBuf>,
    /// The toolchain's libstd, which every cell's library needs.
    pub libstd: Option<PathBuf>,
    /// The kernel's private directory: pushed variables come from it, pulled ones land in it.
    pub private: PathBuf,
    /// How long the ranks may take to connect.
    pub start_timeout_s: f64,
}

type Writer = Arc<Mutex<TcpStream>>;

pub(super) struct Hub {
    writers: Vec<Writer>,
    /// Each rank's host, as it said.
    pub(super) hosts: Vec<String>,
    /// How each rank's process ended, once its relay said (or its link closed).
    ended: Arc<Mutex<Vec<Option<String>>>>,
    /// Files each rank has (cell libraries, pushed variables), by name.
    sent: Vec<HashSet<String>>,
    private: PathBuf,
    launcher: Child,
    _channel: Option<Channel>,
    /// Serves the session's shared arrays to the ranks (their hosts' copies).
    _arrays: Channel,
}

/// The launcher's last lines, for messages.
type Tail = Arc<Mutex<VecDeque<String>>>;

impl Hub {
    /// Starts the launcher and waits for every rank's relay; `lines` gets each rank's
    /// protocol lines (`None` when its link closed), `events` is the kernel's pool listener.
    pub(super) fn start(
        plan: &[Vec<(String, String)>],
        spec: &RemoteSpec,
        lines: mpsc::Sender<(usize, Option<String>)>,
        events: Option<&Path>,
    ) -> Result<Hub, String> {
        let n = plan.len();
        let rules = Rules { framing: link::hello_progress, max_hello: link::MAX_HELLO, ..Rules::line(HELLO, &spec.token) };
        let listener = Listener::bind((spec.reach.as_str(), 0), rules)
            .map_err(|e| format!("cannot listen on {} for the pool's ranks: {e}", spec.reach))?;
        let hub_addr = match listener.local_addr() {
            std::net::SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
            a => a.to_string(),
        };
        let channel = match &spec.ship {
            Some(exe) => Some(Channel::start(&spec.reach, &spec.token, &spec.private, n, Some(exe))?),
            None => None,
        };
        // The ranks' own channel, under a token of its own: the pool's stays with the relays.
        let arrays_token = crate::group::new_token()?;
        let arrays = Channel::arrays_only(&spec.reach, &arrays_token)?;
        let arrays_env = [(CHANNEL_ENV.to_string(), arrays.addr().to_string()), (CHANNEL_TOKEN_ENV.to_string(), arrays_token)];
        let mut env = spec.env.clone();
        for (k, v) in env.iter_mut() {
            if k == crate::role::ROLE_ENV {
                *v = crate::role::relay_value(&hub_addr);
            } else if k == CHANNEL_ENV {
                *v = channel.as_ref().map_or(String::new(), |c| c.addr().to_string());
            }
        }
        let mut command = Command::new(&spec.program);
        // `env` names the relays' role, in place of the fan-out's this process has.
        command
            .args(&spec.args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe. The launcher stops every rank when this process
        // ends however it ends (an interrupt kills it).
        unsafe {
            command.pre_exec(|| nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from));
        }
        let mut launcher = command.spawn().map_err(|e| format!("cannot start {} ({}): {e}", spec.launcher, spec.program))?;
        let tail: Tail = Arc::default();
        for out in
            [launcher.stdout.take().map(|o| Box::new(o) as Box<dyn std::io::Read + Send>), launcher.stderr.take().map(|e| Box::new(e) as _)]
                .into_iter()
                .flatten()
        {
            let (tail, name) = (tail.clone(), spec.launcher.clone());
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("[{name}] {line}");
                    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                    if t.len() == 40 {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
        }
        let accepted = accept_ranks(&listener, plan, spec, &arrays_env, &mut launcher, &tail);
        let streams = match accepted {
            Ok(s) => s,
            Err(e) => {
                stop(&mut launcher);
                return Err(e);
            }
        };
        let ended = Arc::new(Mutex::new(vec![None; n]));
        let mut writers = Vec::new();
        let mut hosts = Vec::new();
        for (rank, (stream, host)) in streams.into_iter().enumerate() {
            writers.push(Arc::new(Mutex::new(stream.try_clone().map_err(|e| e.to_string())?)));
            let to_kernel = events.and_then(|p| UnixStream::connect(p).ok());
            let (lines, ended, private) = (lines.clone(), ended.clone(), spec.private.clone());
            std::thread::spawn(move || serve_rank(rank, stream, to_kernel, lines, ended, &private));
            hosts.push(host);
        }
        Ok(Hub {
            writers,
            hosts,
            ended,
            sent: vec![HashSet::new(); n],
            private: spec.private.clone(),
            launcher,
            _channel: channel,
            _arrays: arrays,
        })
    }

    /// Sends rank `rank` a protocol line; before a cell's `LOAD_AND_RUN`, the cell's library,
    /// its group (from `group_file`) and variables pushed since the last cell.
    pub(super) fn send_line(&mut self, rank: usize, line: &str, group_file: Option<&Path>) -> std::io::Result<()> {
        let writer = self.writers[rank].clone();
        let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((library, _)) = line.strip_prefix("LOAD_AND_RUN ").and_then(|r| r.split_once(' ')) {
            let name = Path::new(library).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            self.send_file(&mut w, rank, &format!("cells/{name}"), Path::new(library))?;
            let group = group_file.and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default();
            link::write_frame(&mut *w, &Frame::Group(group))?;
            for (name, path) in pushed(&self.private) {
                self.send_file(&mut w, rank, &name, &path)?;
            }
        }
        link::write_frame(&mut *w, &Frame::Line(line.to_string()))?;
        w.flush()
    }

    fn send_file(&mut self, w: &mut TcpStream, rank: usize, name: &str, path: &Path) -> std::io::Result<()> {
        if self.sent[rank].contains(name) {
            return Ok(());
        }
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        link::write_file(w, name, len, &mut file)?;
        self.sent[rank].insert(name.to_string());
        Ok(())
    }

    /// How rank `rank`'s process ended, with its host (waits a little for its relay to say).
    pub(super) fn how_it_ended(&self, rank: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(2);
        let how = loop {
            if let Some(how) = self.ended.lock().unwrap_or_else(|e| e.into_inner())[rank].clone() {
                break how;
            }
            if Instant::now() >= deadline {
                break "lost its link to the kernel".to_string();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        format!("{how} (host {})", self.hosts[rank])
    }
}

/// How a rank whose host vanished without a word ended (its link timed out).
const SILENT: &str = "went silent";

impl Drop for Hub {
    fn drop(&mut self) {
        // Closing the links ends the relays, and with them the ranks; then the launcher.
        for w in &self.writers {
            let _ = w.lock().unwrap_or_else(|e| e.into_inner()).shutdown(std::net::Shutdown::Both);
        }
        let vanished = self.ended.lock().unwrap_or_else(|e| e.into_inner()).iter().flatten().any(|how| how.starts_with(SILENT));
        if vanished {
            // The launcher cannot reach that host to stop its job, and would wait for it; the
            // relays on the other hosts end with their links.
            let _ = self.launcher.kill();
            let _ = self.launcher.wait();
        } else {
            stop(&mut self.launcher);
        }
    }
}

/// Lets the launcher's job end by itself for a moment (relays whose links closed clean up
/// and exit), then asks the launcher to stop it, then makes it.
fn stop(launcher: &mut Child) {
    let ended = |launcher: &mut Child, within: Duration| {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = launcher.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    };
    if ended(launcher, Duration::from_secs(2)) {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(launcher.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    if !ended(launcher, Duration::from_secs(5)) {
        let _ = launcher.kill();
        let _ = launcher.wait();
    }
}

/// Accepts one relay per rank: the pool's token, a rank not yet taken. Sends each its
/// environment and libstd. Strangers are closed on; the wait ends when every rank came,
/// the launcher ended, or the spec's timeout passed.
fn accept_ranks(
    listener: &Listener,
    plan: &[Vec<(String, String)>],
    spec: &RemoteSpec,
    arrays_env: &[(String, String)],
    launcher: &mut Child,
    tail: &Tail,
) -> Result<Vec<(TcpStream, String)>, String> {
    let n = plan.len();
    let mut got: Vec<Option<(TcpStream, String)>> = (0..n).map(|_| None).collect();
    let deadline = Instant::now() + Duration::from_secs_f64(spec.start_timeout_s);
    let said = |tail: &Tail| {
        let t = tail.lock().unwrap_or_else(|e| e.into_inner());
        if t.is_empty() {
            String::new()
        } else {
            format!("; {} said:\n{}", spec.launcher, t.iter().cloned().collect::<Vec<_>>().join("\n"))
        }
    };
    while got.iter().any(Option::is_none) {
        let missing = || got.iter().enumerate().filter(|(_, g)| g.is_none()).map(|(r, _)| r.to_string()).collect::<Vec<_>>().join(", ");
        if let Ok(Some(status)) = launcher.try_wait() {
            std::thread::sleep(Duration::from_millis(200)); // its last words
            return Err(format!("{} ended ({status}) before ranks {} started{}", spec.launcher, missing(), said(tail)));
        }
        if Instant::now() >= deadline {
            return Err(format!("ranks {} did not start within {:.0} s{}", missing(), spec.start_timeout_s, said(tail)));
        }
        // Waits in short steps: the launcher may end meanwhile.
        let Some(admitted) = listener.next_before((Instant::now() + Duration::from_millis(200)).min(deadline)) else { continue };
        let Some((rank, host)) = rank_and_host(&admitted.words, n) else { continue };
        if got[rank].is_some() {
            continue;
        }
        let stream = admitted.stream;
        // The rank's host may vanish without a word (no reset): the link then fails within the
        // collective timeout, and the cell says which rank and host went silent.
        let _ = keepalive::watch(&stream, ranch::__rt::collective_timeout());
        let mut w = &stream;
        let mut env = plan[rank].clone();
        env.push((ranch::__rt::KERNEL_DIR_ENV.to_string(), spec.private.to_string_lossy().into_owned()));
        env.extend_from_slice(arrays_env);
        // As the kernel set it for its children (see `child::evcxr_context`); a launcher
        // forwards only what it is told to.
        if let Ok(backtrace) = std::env::var("RUST_BACKTRACE") {
            env.push(("RUST_BACKTRACE".to_string(), backtrace));
        }
        let env = serde_json::to_vec(&env).expect("the plan serialises");
        let setup = link::write_frame(&mut w, &Frame::Env(env)).and_then(|_| match &spec.libstd {
            Some(lib) => {
                let mut f = std::fs::File::open(lib)?;
                let len = f.metadata()?.len();
                let name = format!("lib/{}", lib.file_name().unwrap_or_default().to_string_lossy());
                link::write_file(&mut w, &name, len, &mut f)
            }
            None => Ok(()),
        });
        if setup.and_then(|_| link::write_frame(&mut w, &Frame::Start)).is_err() {
            continue;
        }
        got[rank] = Some((stream, host));
    }
    Ok(got.into_iter().map(|g| g.expect("every rank came")).collect())
}

/// A relay's hello after the greeting and the pool's token: `<rank> <host> <pid>`.
fn rank_and_host(words: &[String], n: usize) -> Option<(usize, String)> {
    let rank: usize = words.first()?.parse().ok().filter(|&r| r < n)?;
    let host = words.get(1)?.chars().take(255).collect();
    Some((rank, host))
}

/// Reads rank `rank`'s link until it closes.
fn serve_rank(
    rank: usize,
    stream: TcpStream,
    mut to_kernel: Option<UnixStream>,
    lines: mpsc::Sender<(usize, Option<String>)>,
    ended: Arc<Mutex<Vec<Option<String>>>>,
    private: &Path,
) {
    let mut r = BufReader::new(stream);
    loop {
        match link::read_frame(&mut r) {
            Ok(Frame::Line(line)) => {
                if lines.send((rank, Some(line))).is_err() {
                    return;
                }
            }
            Ok(Frame::Events(bytes)) => {
                if let Some(k) = &mut to_kernel
                    && k.write_all(&bytes).is_err()
                {
                    to_kernel = None;
                }
            }
            Ok(Frame::File(name)) => {
                if receive_pulled(&mut r, private, &name).is_err() {
                    break;
                }
            }
            Ok(Frame::Exit(how)) => {
                ended.lock().unwrap_or_else(|e| e.into_inner())[rank] = Some(how);
                break;
            }
            Ok(_) => {}
            Err(e) => {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    let secs = ranch::__rt::collective_timeout().as_secs_f64() / 2.0;
                    let how = format!("{SILENT}: its host acknowledged nothing for {secs:.0} s (it lost power or its network link)");
                    ended.lock().unwrap_or_else(|e| e.into_inner())[rank].get_or_insert(how);
                }
                break;
            }
        }
    }
    let _ = lines.send((rank, None));
}

/// A value a rank wrote for `%px_pull`: `px-pull-<k>/rank-<r>.result`, into that directory
/// of the kernel's, which must exist (the kernel made it for this pull). Anything else is
/// read and dropped.
fn receive_pulled(r: &mut impl std::io::Read, private: &Path, name: &str) -> std::io::Result<()> {
    let target = link::safe_relative(name).filter(|p| p.components().count() == 2).and_then(|p| {
        let dir = p.parent()?.to_str()?;
        let file = p.file_name()?.to_str()?;
        let ok = dir.starts_with("px-pull-") && file.starts_with("rank-") && file.ends_with(".result");
        (ok && private.join(dir).is_dir()).then(|| private.join(p))
    });
    match target {
        Some(path) => {
            let mut file = std::fs::File::create(path)?;
            link::read_file_body(r, &mut file).map(|_| ())
        }
        None => link::skip_file_body(r).map(|_| ()),
    }
}

/// Files of variables being pushed (`%px_push`): `mirror/px-push-<k>/<name>.bin`.
fn pushed(private: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let Ok(dirs) = std::fs::read_dir(private) else { return found };
    for dir in dirs.flatten() {
        let name = dir.file_name().to_string_lossy().into_owned();
        if !name.starts_with("px-push-") {
            continue;
        }
        for file in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
            found.push((format!("mirror/{name}/{}", file.file_name().to_string_lossy()), file.path()));
        }
    }
    found
}
