//! Support for the code ranch generates: the export cell run in the notebook session, the
//! rank program's `main`, and the cell that binds `--out`. Not a stable API.
//!
//! Values cross processes as MessagePack (`rmp-serde`): compact, and self-describing, so
//! types that deserialize through `deserialize_any` (e.g. `serde_json::Value`) work too.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

pub use crate::channel::{CHANNEL_ENV, CHANNEL_HELLO, CHANNEL_TOKEN_ENV};
pub use crate::comm::collective_timeout;
pub use crate::comm::{BACKEND_ENV, NO_GROUP, NO_SERVICE, POOL_DDP_ENV, POOL_GROUP_ENV, PoolGroup, TCP_HELLO, TIMEOUT_ENV, TOKEN_ENV};
pub use crate::info::BASE_RANK_ENV;
pub use crate::net::{keepalive, listener};
pub use crate::stale::remove_stale;

/// The file of this kernel's shared array `name` (the name checked), for the kernel's
/// channel to send to hosts that need a copy.
pub fn shared_array_file(name: &str) -> Result<String, String> {
    crate::shared::path_of(name).map_err(|e| e.to_string())
}

/// The symbols a pool rank calls in each cell's library before the cell runs and when it
/// has returned.
pub const POOL_CELL_BEGIN: &str = "ranch_pool_cell_begin";
pub const POOL_CELL_END: &str = "ranch_pool_cell_end";

/// Forms the cell's group before its body in a `--ddp` pool (see `comm::pool`).
#[unsafe(no_mangle)]
pub extern "C" fn ranch_pool_cell_begin() {
    // Nothing may unwind into the caller.
    let _ = std::panic::catch_unwind(crate::comm::begin_pool_cell);
}

/// Ends the cell's group in a pool rank (see `comm::pool`). Exported from every cell
/// library that links this crate; a cell that does not has no group to end.
#[unsafe(no_mangle)]
pub extern "C" fn ranch_pool_cell_end() {
    // Nothing may unwind into the caller.
    let _ = std::panic::catch_unwind(crate::comm::end_pool_cell);
}

/// The lines of evcxr's child protocol (what evcxr's child process writes on its stdout for
/// evcxr to read), named once for everything of ranch that writes or reads them: the
/// runtime's display blocks, the kernel's evcxr child, the pool's fan-out and relays, and
/// the supervisor reading a rank's output.
pub mod evcxr_lines {
    /// Starts a display block; the MIME type follows on the same line.
    pub const BEGIN_CONTENT: &str = "EVCXR_BEGIN_CONTENT ";
    /// Ends a display block.
    pub const END_CONTENT: &str = "EVCXR_END_CONTENT";
    /// The cell's code has finished.
    pub const EXECUTION_COMPLETE: &str = "EVCXR_EXECUTION_COMPLETE";
    /// The cell panicked (written before the child exits).
    pub const PANIC_NOTIFICATION: &str = "EVCXR_PANIC_NOTIFICATION";
    /// The cell's tail expression was an `Err`.
    pub const ERROR_OCCURRED: &str = "EVCXR_ERROR_OCCURRED";
    /// A variable's type changed; its name follows.
    pub const VARIABLE_CHANGED_TYPE: &str = "EVCXR_VARIABLE_CHANGED_TYPE:";
    /// The cell asks for input.
    pub const INPUT_REQUEST: &str = "EVCXR_INPUT_REQUEST";
    /// What every line of the protocol starts with.
    pub const PREFIX: &str = "EVCXR_";
    /// Set in the environment of evcxr's child process.
    pub const CHILD_ENV: &str = "EVCXR_IS_RUNTIME";
}

/// The shared-memory segment of a launch's group (created and marked by the kernel).
pub mod group {
    pub use crate::comm::shm_segment::{Header, Layout, create};
    pub use crate::comm::{DONE, HELLO};
}

// Autoref specialisation: `(&Ship(&x)).ranch_encode()` serialises when `x: Serialize`
// and otherwise reports the type, so one compile tells which variables can be shipped.

pub struct Ship<'a, T: ?Sized>(pub &'a T);

pub trait ViaSerialize {
    fn ranch_encode(&self) -> Result<Vec<u8>, String>;
}
impl<T: Serialize + ?Sized> ViaSerialize for Ship<'_, T> {
    fn ranch_encode(&self) -> Result<Vec<u8>, String> {
        rmp_serde::to_vec(self.0).map_err(|e| format!("serialisation failed: {e}"))
    }
}

pub trait ViaNothing {
    fn ranch_encode(&self) -> Result<Vec<u8>, String>;
}
impl<T: ?Sized> ViaNothing for &Ship<'_, T> {
    fn ranch_encode(&self) -> Result<Vec<u8>, String> {
        Err("its type does not implement serde::Serialize".into())
    }
}

pub trait DebugVia {
    fn ranch_debug(&self) -> Option<String>;
}
impl<T: std::fmt::Debug + ?Sized> DebugVia for Ship<'_, T> {
    fn ranch_debug(&self) -> Option<String> {
        Some(format!("{:?}", self.0))
    }
}
pub trait DebugNothing {
    fn ranch_debug(&self) -> Option<String>;
}
impl<T: ?Sized> DebugNothing for &Ship<'_, T> {
    fn ranch_debug(&self) -> Option<String> {
        None
    }
}

/// Writes an exported variable (`<dir>/<name>.bin`), or why it cannot be shipped
/// (`<dir>/<name>.err`). Called from the export cell in the notebook session.
pub fn export(dir: &str, name: &str, encoded: Result<Vec<u8>, String>) {
    let dir = Path::new(dir);
    let result = match encoded {
        Ok(bytes) => std::fs::write(dir.join(format!("{name}.bin")), bytes),
        Err(why) => std::fs::write(dir.join(format!("{name}.err")), why),
    };
    if let Err(e) = result {
        eprintln!("ranch: cannot write exported variable {name} to {}: {e}", dir.display());
    }
}

/// Reads a shipped variable in a rank program.
pub fn load<T: DeserializeOwned>(name: &str, type_name: &str) -> T {
    let bytes = crate::channel::address()
        .ok_or_else(|| format!("{CHANNEL_ENV} is not set: this program was not started by ranch"))
        .and_then(|addr| crate::channel::fetch(&addr, name))
        .unwrap_or_else(|e| panic!("ranch: cannot fetch variable `{name}`: {e}"));
    rmp_serde::from_slice(&bytes).unwrap_or_else(|e| panic!("ranch: cannot decode variable `{name}: {type_name}`: {e}"))
}

/// What a rank reports about its tail value. (Encoded as a tuple: the runtime avoids
/// serde's derive macros, which would add seconds to a session's first `%%ranch`.)
#[derive(Debug, Clone, PartialEq)]
pub struct RankResult {
    pub type_name: String,
    /// `Debug` text, when the type is `Debug`.
    pub debug: Option<String>,
    /// MessagePack bytes, when the type is `Serialize`.
    pub value: Option<Vec<u8>>,
}

impl RankResult {
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(&(&self.type_name, &self.debug, &self.value)).expect("plain data serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<RankResult, String> {
        let (type_name, debug, value) = rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?;
        Ok(RankResult { type_name, debug, value })
    }
}

/// Result and panic files are named by the rank's place in its launch: a kernel's run
/// directory holds only the ranks it launched, wherever they run.
pub fn result_path(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("rank-{rank}.result"))
}

pub fn panic_path(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("rank-{rank}.panic"))
}

/// Written when the rank's process exits (`std::process::exit`) before its cell returned:
/// a launcher may say only that "a process" exited with a code.
pub fn exit_path(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("rank-{rank}.exit"))
}

/// Set once the cell has returned: an exit before that is reported (see [`exit_path`]).
static RETURNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_exit() {
    if !RETURNED.load(std::sync::atomic::Ordering::SeqCst)
        && let Some(addr) = crate::channel::address()
    {
        // Once: the process is ending, and a kernel that is gone must not hold it.
        let _ = crate::channel::put_once(&addr, "exit", crate::info::launch_index(), b"");
    }
}

/// Hands `kind` ("result", "panic", "exit") to the kernel through the launch's channel.
fn report(kind: &str, bytes: &[u8]) -> Result<(), String> {
    let addr = crate::channel::address().ok_or_else(|| format!("{CHANNEL_ENV} is not set: this program was not started by ranch"))?;
    crate::channel::put(&addr, kind, crate::info::launch_index(), bytes)
}

/// Records this rank's tail value for the kernel.
pub fn emit(type_name: &str, debug: Option<String>, value: Result<Vec<u8>, String>) {
    let result = RankResult { type_name: type_name.to_string(), debug, value: value.ok() };
    if let Err(e) = report("result", &result.encode()) {
        eprintln!("ranch: cannot hand the result to the kernel: {e}");
        std::process::exit(3);
    }
}

/// In a pool rank on another host: the kernel's private directory (`KERNEL_DIR_ENV`) and
/// its mirror on this host (`MIRROR_DIR_ENV`), which the rank's relay keeps in step with it.
pub const KERNEL_DIR_ENV: &str = "RANCH_POOL_KERNEL_DIR";
pub const MIRROR_DIR_ENV: &str = "RANCH_POOL_MIRROR_DIR";

/// Where a directory the kernel names is on this host: its mirror, for a pool rank on
/// another host; itself otherwise.
pub fn pool_dir(dir: &str) -> PathBuf {
    let (Some(kernel), Some(mirror)) = (std::env::var_os(KERNEL_DIR_ENV), std::env::var_os(MIRROR_DIR_ENV)) else {
        return PathBuf::from(dir);
    };
    match Path::new(dir).strip_prefix(&kernel) {
        Ok(rest) => Path::new(&mirror).join(rest),
        Err(_) => PathBuf::from(dir),
    }
}

/// A pool rank's value for the kernel (`%px_pull`, `%%px --out`): `<dir>/rank-<pool rank>.result`.
/// `encoded` is `(&Ship(value)).ranch_encode()`.
pub fn emit_to<T: ?Sized>(dir: &str, _value: &T, encoded: Result<Vec<u8>, String>) {
    let result = RankResult { type_name: std::any::type_name::<T>().to_string(), debug: None, value: encoded.ok() };
    let dir = pool_dir(dir);
    let _ = std::fs::create_dir_all(&dir);
    let path = result_path(&dir, crate::rank());
    if let Err(e) = std::fs::write(&path, result.encode()) {
        panic!("ranch: cannot write this rank's value to {}: {e}", path.display());
    }
}

/// A variable the kernel exported (`%px_push`), in a pool rank.
pub fn load_from<T: DeserializeOwned>(dir: &str, name: &str, type_name: &str) -> T {
    let path = pool_dir(dir).join(format!("{name}.bin"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("ranch: cannot read variable `{name}` ({}): {e}", path.display()));
    rmp_serde::from_slice(&bytes).unwrap_or_else(|e| panic!("ranch: cannot decode variable `{name}: {type_name}`: {e}"))
}

/// Where and why a rank panicked, for the kernel's error report.
#[derive(Debug, Clone, PartialEq)]
pub struct PanicReport {
    pub message: String,
    pub file: String,
    pub line: u32,
    /// The frames of the rank's own code when `RUST_BACKTRACE` (or `RUST_LIB_BACKTRACE`)
    /// asks for backtraces; empty otherwise.
    pub backtrace: String,
}

impl PanicReport {
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(&(&self.message, &self.file, self.line, &self.backtrace)).expect("plain data serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<PanicReport, String> {
        let (message, file, line, backtrace) = rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?;
        Ok(PanicReport { message, file, line, backtrace })
    }
}

/// Most lines of a backtrace sent with a panic report.
const BACKTRACE_LINES: usize = 60;

/// This thread's backtrace, if the environment asks for one, cut to the frames between the
/// panic machinery and the program's start (the user's code), at most [`BACKTRACE_LINES`].
fn backtrace_text() -> String {
    let bt = std::backtrace::Backtrace::capture();
    if bt.status() != std::backtrace::BacktraceStatus::Captured {
        return String::new();
    }
    short_backtrace(&bt.to_string())
}

/// The frames of a backtrace's text (`  N: name` lines, each followed by its `at file:line`
/// lines) after the last frame of the panic machinery and before the program's start.
fn short_backtrace(full: &str) -> String {
    let mut frames: Vec<Vec<&str>> = Vec::new();
    for line in full.lines() {
        let t = line.trim_start();
        let starts_frame = t.split_once(": ").is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        match frames.last_mut() {
            Some(f) if !starts_frame => f.push(line),
            _ => frames.push(vec![line]),
        }
    }
    // The program's start calls main through these (and catches panics there, so the
    // machinery is looked for only before it).
    let start_up = ["__rust_begin_short_backtrace", "lang_start", "__libc_start", ": _start"];
    let end = frames.iter().position(|f| start_up.iter().any(|m| f[0].contains(m))).unwrap_or(frames.len());
    let machinery = ["backtrace_rs", "Backtrace::", "panicking", "begin_unwind", "install_panic_hook", "panic_fmt"];
    let start = frames[..end].iter().rposition(|f| machinery.iter().any(|m| f[0].contains(m))).map_or(0, |i| i + 1);
    let lines: Vec<&str> = frames[start..end].iter().flatten().copied().collect();
    let mut text = lines.iter().take(BACKTRACE_LINES).copied().collect::<Vec<_>>().join("\n");
    if lines.len() > BACKTRACE_LINES {
        text.push_str(&format!("\n      … ({} more lines)", lines.len() - BACKTRACE_LINES));
    }
    text
}

/// Environment variable with the kernel's pid: a rank whose parent is gone exits.
pub const PARENT_PID_ENV: &str = "RANCH_PARENT_PID";

/// First thing a rank program does: die with the kernel, report panics to it, and
/// announce itself to the launch's group (see `comm::rendezvous`).
///
/// The kernel spawns ranks with `posix_spawn` (a `fork` of a process as large as the
/// kernel costs tens of milliseconds per rank), so the rank sets its parent-death signal
/// itself; checking the parent afterwards closes the window in which the kernel could die
/// first.
pub fn init_rank() {
    #[cfg(target_os = "linux")]
    {
        // Declared here rather than pulling in the libc crate: every session depends on
        // this crate, and each dependency slows every cell's build a little.
        unsafe extern "C" {
            fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
            fn atexit(callback: extern "C" fn()) -> i32;
        }
        const PR_SET_PDEATHSIG: i32 = 1;
        const SIGKILL: u64 = 9;
        // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on this process.
        unsafe {
            prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        }
        // SAFETY: registers a function with no arguments that only reads an atomic and
        // makes one bounded request; exit runs it once.
        unsafe {
            atexit(on_exit);
        }
    }
    let expected = std::env::var(PARENT_PID_ENV).ok().and_then(|p| p.parse::<u32>().ok());
    if let Some(parent) = expected {
        if std::os::unix::process::parent_id() != parent {
            std::process::exit(137);
        }
    }
    install_panic_hook();
    if let Ok(token) = std::env::var(TOKEN_ENV) {
        if crate::world_size() > 1 {
            crate::comm::announce(&token, crate::rank());
        }
    }
    crate::comm::start_backend();
}

/// Last thing a rank program does when the cell returned: ranks still waiting for this
/// one in a collective learn that it finished without joining.
pub fn finish_rank() {
    RETURNED.store(true, std::sync::atomic::Ordering::SeqCst);
    crate::comm::finish();
    crate::comm::end_backend();
}

/// Reports a failure that ends the rank without a panic (the MPI watchdog's), as a panic
/// report so that the cell's error says it.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) fn report_failure(message: &str) {
    let report = PanicReport { message: message.to_string(), file: String::new(), line: 0, backtrace: String::new() };
    if self::report("panic", &report.encode()).is_err() {
        eprintln!("ranch: rank {}: {message}", crate::rank());
    }
}

/// Sends panics to the kernel, instead of printing Rust's report with
/// locations in generated code.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = if let Some(s) = info.payload().downcast_ref::<&str>() {
            s.to_string()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "Box<dyn Any>".to_string()
        };
        let (file, line) = info.location().map(|l| (l.file().to_string(), l.line())).unwrap_or_default();
        let report = PanicReport { message, file, line, backtrace: backtrace_text() };
        if self::report("panic", &report.encode()).is_err() {
            eprintln!("panicked: {}", report.message);
        }
    }));
}

/// The values ranks `ranks` wrote to `dir`, in that order: binds `--out NAME` (and
/// `%px_pull`) in the session.
pub fn collect_ranks<T: DeserializeOwned>(dir: &str, ranks: &[usize]) -> Vec<T> {
    ranks
        .iter()
        .map(|&r| {
            let path = result_path(Path::new(dir), r);
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("ranch: no result of rank {r}: {e}"));
            let result = RankResult::decode(&bytes).expect("ranch: corrupt result file");
            let value = result.value.unwrap_or_else(|| panic!("ranch: rank {r}'s value ({}) is not Serialize", result.type_name));
            rmp_serde::from_slice(&value).unwrap_or_else(|e| panic!("ranch: rank {r}'s value does not decode as the requested type: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backtraces_keep_the_frames_of_the_users_code() {
        let full = "   0: std::backtrace_rs::backtrace::trace\n             at /rustc/x/backtrace.rs:1:1\n\
                    \x20  1: std::panicking::begin_panic_handler\n\
                    \x20  2: core::panicking::panic_fmt\n\
                    \x20  3: rank::cell::inner_helper\n             at ./src/main.rs:7:5\n\
                    \x20  4: rank::main\n\
                    \x20  5: std::sys::backtrace::__rust_begin_short_backtrace\n\
                    \x20  6: std::panicking::catch_unwind\n\
                    \x20  7: std::rt::lang_start\n\
                    \x20  8: __libc_start_main_impl\n             at ./csu/libc-start.c:360:3\n\
                    \x20  9: _start";
        assert_eq!(short_backtrace(full), "   3: rank::cell::inner_helper\n             at ./src/main.rs:7:5\n   4: rank::main");
        let no_std_main = "  0: core::panicking::panic_fmt\n  1: cell::f\n  2: main\n  3: __libc_start_call_main\n  4: _start";
        assert_eq!(short_backtrace(no_std_main), "  1: cell::f\n  2: main");
        let long: String = (0..100).map(|i| format!("  {i}: f{i}\n")).collect();
        let short = short_backtrace(&long);
        assert_eq!(short.lines().count(), BACKTRACE_LINES + 1);
        assert!(short.ends_with("(40 more lines)"), "{short}");
        let r = PanicReport { message: "m".into(), file: "f".into(), line: 3, backtrace: "  3: x".into() };
        let back = PanicReport::decode(&r.encode()).unwrap();
        assert_eq!((back.message, back.line, back.backtrace), ("m".to_string(), 3, "  3: x".to_string()));
    }

    #[test]
    fn specialisation_picks_serialize_when_available() {
        struct Opaque;
        assert!(Ship(&vec![1u8, 2]).ranch_encode().is_ok());
        assert!((&Ship(&Opaque)).ranch_encode().is_err());
        assert_eq!(Ship(&3u8).ranch_debug().as_deref(), Some("3"));
        assert_eq!((&Ship(&Opaque)).ranch_debug(), None);
    }

    #[test]
    fn values_round_trip_through_export_and_collect() {
        let dir = std::env::temp_dir().join(format!("ranch-rt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (r, v) in [(0usize, vec![1.5f64]), (1, vec![2.5, 3.5])] {
            let res = RankResult { type_name: "Vec<f64>".into(), debug: None, value: Some(rmp_serde::to_vec(&v).unwrap()) };
            std::fs::write(result_path(&dir, r), res.encode()).unwrap();
        }
        let got: Vec<Vec<f64>> = collect_ranks(dir.to_str().unwrap(), &[0, 1]);
        assert_eq!(got, vec![vec![1.5], vec![2.5, 3.5]]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
