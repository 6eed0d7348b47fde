//! The one module that talks to evcxr (pinned at `=0.22.0`, vendored with a patch): an
//! evcxr context with typed methods, and evcxr's results and failures as ranch's types.
//! Nothing else in ranch names `evcxr::`, reads the text of evcxr's `:` commands, or knows
//! the items evcxr generates into a cell's crate ([`source`]).

mod source;

use crate::interpreter::{Completions, MimeBundle, Stream};
use ranch_magics::diagnostic::{Diagnostic, Label};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One evcxr context: its child process (the session's child, or a pool's fan-out) and
/// the rust-analyzer that completes and documents code.
pub struct Context {
    ctx: evcxr::CommandContext,
}

/// What running code in a context gave.
pub struct Ran {
    /// Its value, or its last display: one entry per MIME type (JSON types carry JSON).
    pub data: Option<MimeBundle>,
    /// `:timing`'s figure, when the user turned it on.
    pub took: Option<Duration>,
    /// Whether the code got as far as running in the child (a cell of items only does not).
    pub executed: bool,
    /// The time spent before running: analysis, the build, loading.
    pub build: Duration,
}

/// Why evcxr did not run some code.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Its compile errors (warnings left out), in the code's own lines and columns.
    #[error("{}", .0.iter().map(|d| d.message.as_str()).collect::<Vec<_>>().join("\n"))]
    Compilation(Vec<Diagnostic>),
    /// The child process died while it ran (evcxr starts another; its variables are gone).
    #[error("{0}")]
    ProcessDied(String),
    /// Variables evcxr dropped because their type was redefined.
    #[error("A type redefinition resulted in the following variables being lost: {}", .0.join(", "))]
    VariablesLost(Vec<String>),
    #[error("{0}")]
    Other(String),
}

impl From<evcxr::Error> for EvalError {
    fn from(e: evcxr::Error) -> EvalError {
        match e {
            evcxr::Error::CompilationErrors(errors) => {
                EvalError::Compilation(errors.iter().filter(|e| e.level() == "error").map(diagnostic).collect())
            }
            evcxr::Error::TypeRedefinedVariablesLost(vars) => EvalError::VariablesLost(vars),
            evcxr::Error::SubprocessTerminated(why) => EvalError::ProcessDied(why),
            evcxr::Error::Message(m) => EvalError::Other(m),
        }
    }
}

impl Context {
    /// Starts a context whose child is `command` (this binary: the session's child, or a
    /// pool's fan-out, whose ranks inherit what it is given), building in `dir`. Lines that
    /// evcxr itself reads from the child go to `forward`. What the child needs is given to
    /// its command; nothing changes this process's environment. `deps` (`Cargo.toml` lines)
    /// are in the context from its start, built by evcxr's own start-up build: adding them
    /// with [`Context::add_dependency`] afterwards would build everything again.
    pub fn start(
        mut command: Command,
        dir: &Path,
        deps: &[String],
        forward: impl Fn(Stream, String) + Clone + Send + 'static,
    ) -> Result<Context, String> {
        // evcxr asks for backtraces, but cell code has no debug info, so they are noise
        // (`RANCH_BACKTRACE` keeps them). The patched evcxr keeps what the command says.
        if std::env::var_os("RANCH_BACKTRACE").is_none() {
            command.env("RUST_BACKTRACE", "0");
        }
        // Where evcxr builds, for the cell's code (and the tools it runs) to find.
        command.env("EVCXR_TMPDIR", dir);
        let deps: Vec<(String, String)> = deps
            .iter()
            .map(|line| line.split_once('=').map(|(name, config)| (name.trim().to_string(), config.trim().to_string())))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("not a dependency line: {deps:?}"))?;
        let (eval, outputs) =
            evcxr::EvalContext::with_subprocess_command_and_deps(command, Some(dir.to_path_buf()), &deps).map_err(|e| e.to_string())?;
        for (rx, stream) in [(outputs.stdout, Stream::Stdout), (outputs.stderr, Stream::Stderr)] {
            let forward = forward.clone();
            std::thread::spawn(move || {
                for line in rx {
                    forward(stream, line);
                }
            });
        }
        Ok(Context { ctx: evcxr::CommandContext::with_eval_context(eval) })
    }

    /// The child process, for interrupts and shutdown.
    pub fn process(&self) -> Arc<Mutex<Child>> {
        self.ctx.process_handle()
    }

    /// Runs a cell; `input` answers the code's reads of stdin (prompt, whether a password).
    pub fn run(&mut self, code: &str, input: &dyn Fn(&str, bool) -> String) -> Result<Ran, EvalError> {
        let mut callbacks = evcxr::EvalCallbacks { input_reader: &|req| input(&req.prompt, req.is_password) };
        let outputs = self.ctx.execute_with_callbacks(code, &mut callbacks)?;
        let executed = outputs.phases.iter().any(|p| p.name == "Execution");
        let build = outputs.phases.iter().filter(|p| p.name != "Execution").map(|p| p.duration).sum();
        Ok(Ran { took: outputs.timing, executed, build, data: bundle(outputs) })
    }

    /// Runs code for its effect (items, a `let`, an export): only whether it worked counts.
    pub fn execute(&mut self, code: &str) -> Result<(), EvalError> {
        self.ctx.execute(code).map(drop).map_err(EvalError::from)
    }

    /// Adds a dependency, given as a `Cargo.toml` line (`name = "1"`, `name = { path = ... }`).
    pub fn add_dependency(&mut self, dependency: &str) -> Result<(), EvalError> {
        self.execute(&format!(":dep {dependency}"))
    }

    /// Reads the user's `evcxr.toml` / `init.evcxr`, as evcxr_jupyter does at start.
    pub fn load_config(&mut self) -> Result<(), EvalError> {
        self.execute(":load_config --quiet")
    }

    /// The session's dependencies, one `Cargo.toml` line each, as `:dep` gave them.
    pub fn dependencies(&mut self) -> Vec<String> {
        self.command_text(":show_deps").lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
    }

    /// The linker evcxr links cells with (`lld`, `mold`, `system`).
    pub fn linker(&mut self) -> String {
        self.command_text(":linker")
    }

    /// evcxr's own `:` commands, one per line, for `:help`.
    pub fn commands_help(&mut self) -> String {
        self.command_text(":help")
    }

    /// The directory evcxr builds the session's crate in.
    pub fn build_dir(&mut self) -> Result<PathBuf, EvalError> {
        let out = self.ctx.execute(":last_compile_dir")?;
        Ok(PathBuf::from(out.get("text/plain").unwrap_or_default().trim()))
    }

    /// The text answer of one of evcxr's `:` commands (empty if it failed).
    fn command_text(&mut self, command: &str) -> String {
        self.ctx.execute(command).ok().and_then(|o| o.get("text/plain").map(str::to_string)).unwrap_or_default()
    }

    /// The session's variables and their types, as evcxr writes them.
    pub fn variables(&self) -> Vec<(String, String)> {
        self.ctx.variables_and_types().map(|(n, t)| (n.to_string(), t.to_string())).collect()
    }

    /// The user's crate as evcxr last built it: their attributes and items, without what
    /// evcxr generates into every cell's crate.
    pub fn user_crate(&self) -> Result<String, String> {
        let lib_rs = self.ctx.last_source().map_err(|e| e.to_string())?;
        Ok(source::user_crate(&lib_rs))
    }

    /// rust-analyzer's completions at `cursor` (a byte offset) in `code`.
    pub fn completions(&mut self, code: &str, cursor: usize) -> Result<Completions, String> {
        let c = self.ctx.completions(code, cursor).map_err(|e| e.to_string())?;
        Ok(Completions { matches: c.completions.into_iter().map(|c| c.code).collect(), start: c.start_offset, end: c.end_offset })
    }

    /// rust-analyzer's hover at `cursor` in `code`: plain text and HTML.
    pub fn hover(&mut self, code: &str, cursor: usize) -> Option<(String, String)> {
        self.ctx.hover_at(code, cursor).ok()
    }
}

/// evcxr's result: one entry per MIME type; JSON types carry JSON, not text.
/// Whether `code` adds the crate `package` with a `:dep` line (by name, or renamed with
/// `package = "..."`).
pub fn adds_dependency(code: &str, package: &str) -> bool {
    code.lines().any(|line| {
        let Some(dep) = line.trim_start().strip_prefix(":dep ") else { return false };
        let name = dep.split(['=', ' ']).next().unwrap_or("").trim();
        name.replace('_', "-") == package || dep.contains(&format!("package = \"{package}\""))
    })
}

fn bundle(outputs: evcxr::EvalOutputs) -> Option<MimeBundle> {
    if outputs.is_empty() {
        return None;
    }
    let data = outputs
        .content_by_mime_type
        .into_iter()
        .map(|(mime, text)| {
            let value =
                if mime.contains("json") { serde_json::from_str(&text).unwrap_or(Value::String(text)) } else { Value::String(text) };
            (mime, value)
        })
        .collect();
    Some(data)
}

/// One of evcxr's compile errors, with its labels in the cell's lines and columns (a label
/// over several lines ends at the end of its first).
fn diagnostic(err: &evcxr::CompilationError) -> Diagnostic {
    let labels = err
        .spanned_messages()
        .iter()
        .filter_map(|m| {
            let span = m.span?;
            let end = if span.end_line == span.start_line { span.end_column } else { usize::MAX };
            Some(Label {
                line: span.start_line,
                start_column: span.start_column,
                end_column: end,
                text: m.label.clone(),
                primary: m.is_primary,
            })
        })
        .collect();
    Diagnostic {
        level: err.level().to_string(),
        code: err.code().map(str::to_string),
        message: err.message(),
        labels,
        notes: err.help().into_iter().map(|h| format!("help: {h}")).collect(),
        fallback: Some(err.rendered()),
    }
}

/// evcxr's rustc wrapper (used when the user turns off static linking): never returns.
pub fn serve_rustc_wrapper() -> ! {
    evcxr::runtime_hook();
    unreachable!("evcxr's rustc wrapper exits")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cell_adding_a_crate_is_recognised() {
        assert!(super::adds_dependency(":dep serde = \"1\"\n:dep candle-core = { version = \"0.11\" }\nlet x = 1;", "candle-core"));
        assert!(super::adds_dependency(":dep candle = { package = \"candle-core\", version = \"0.11\" }", "candle-core"));
        assert!(super::adds_dependency(":dep candle_core = \"0.11\"", "candle-core"));
        assert!(!super::adds_dependency(":dep candle-nn = \"0.11\"\n// :dep candle-core", "candle-core"));
    }
}
