//! `%%ranch N`: the evcxr side. Ships the cell's variables out of the session, snapshots
//! the session's items and dependencies, and hands the rest to `ranch_magics`: build once,
//! launch N ranks, supervise, merge. Binds `--out` back into the session.

use super::EvcxrSession;
use crate::interpreter::{CellContext, CellError, CellOutcome, MimeBundle, Stream};
use ranch_magics::args::{self, Parsed, RanchArgs};
use ranch_magics::build::{self, BuildError, Toolchain};
use ranch_magics::group::GroupService;
use ranch_magics::launch::{LaunchPlan, Launcher, LocalSpawner};
use ranch_magics::program::{self, CellProgram, SessionSnapshot, Shipped};
use ranch_magics::supervise::{self, Cancel, Policy, RankSink};
use ranch_magics::{merge, source};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Per-kernel state of the magic.
#[derive(Default)]
pub(super) struct RanchState {
    /// `ranch` is a dependency of the session.
    runtime_added: bool,
    /// Held while this kernel uses its runtime version (see `disk`).
    runtime_in_use: Option<super::disk::RuntimeInUse>,
    /// The session's items and deps, with the session generation they were read at.
    snapshot: Option<(u64, SessionSnapshot)>,
    toolchain: Option<(Toolchain, String)>,
    launches: u64,
    /// The "more ranks than cores" warning was given (once per session).
    warned_cores: bool,
}

/// A run directory, removed when the launch ends.
/// Advice for a value whose type is not Serialize + Deserialize.
pub(super) const SERDE_HINT: &str =
    "Derive serde's Serialize and Deserialize for the type (`:dep serde = { version = \"1\", features = [\"derive\"] }`)";

/// A directory removed when the cell is done with it.
pub(super) struct RunDir(pub(super) PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn usage(msg: impl Into<String>) -> CellError {
    CellError::new("UsageError", msg)
}

/// The magic's own failures (not the cell's).
fn ranch_error(msg: impl Into<String>) -> CellError {
    CellError::new("RanchError", msg)
}

const CLEAN_HELP: &str = "Usage: %ranch_clean [--all]\n\n\
Frees disk space ranch uses: this session's built rank programs, and runtime crates of other\n\
ranch versions that no kernel uses. With --all, also the build directories no running kernel\n\
uses and this kernel's own (its dependencies are compiled again when next needed).\n";

/// Whether a cell is a `%%ranch` cell.
/// `%ranch_gpus`: the machine's GPUs, and what `--gpus` numbers mean in this kernel.
pub(super) fn ranch_gpus(args: &str) -> CellOutcome {
    if !args.trim().is_empty() {
        return Err(usage(format!("%ranch_gpus takes no arguments, got `{}`", args.trim())));
    }
    let found = ranch_magics::gpus::discover();
    let data = ranch_magics::gpus::listing(found, std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref());
    Ok(Some(data))
}

pub fn is_ranch_cell(code: &str) -> bool {
    let c = code.trim_start();
    c.starts_with("%%ranch") || c.starts_with("%in_ddp")
}

struct SinkAdapter<'a>(&'a CellContext);

impl RankSink for SinkAdapter<'_> {
    fn output(&self, stream: supervise::Stream, text: &str) {
        let s = match stream {
            supervise::Stream::Stdout => Stream::Stdout,
            supervise::Stream::Stderr => Stream::Stderr,
        };
        self.0.sink.stream(s, text);
    }
    fn display(&self, rank: usize, data: Map<String, Value>) {
        let mut meta = MimeBundle::new();
        meta.insert("ranch".into(), serde_json::json!({ "rank": rank }));
        self.0.sink.display(data, meta);
    }
}

impl EvcxrSession {
    /// Adds the embedded `ranch` crate to the session once (cells may call it too).
    pub(super) fn ensure_runtime(&mut self) -> Result<(), CellError> {
        if self.ranch.runtime_added {
            return Ok(());
        }
        // Locked before it is unpacked: a kernel of another ranch version, tidying, then
        // leaves it alone.
        let dir = super::runtime_crate::dir();
        if self.ranch.runtime_in_use.is_none() {
            let _ = std::fs::create_dir_all(dir.parent().expect("has parent"));
            self.ranch.runtime_in_use = super::disk::use_runtime(&dir).ok();
        }
        let dir = super::runtime_crate::unpack()
            .map_err(|e| ranch_error(format!("cannot unpack the ranch runtime crate: {e}")))?;
        let target = self.workdir.target_dir();
        let old = super::disk::remove_unused_runtimes(&super::cache_dir::root(), &dir, &[target]);
        if old > 0 {
            crate::log!("removed {old} runtime crates of other ranch versions that no kernel uses");
        }
        let dep = self.runtime_dep();
        let ctx = self.context()?;
        ctx.execute(&dep)
            .map_err(|e| ranch_error(format!("cannot add the ranch runtime crate to the session: {e}")))?;
        self.ranch.runtime_added = true;
        Ok(())
    }

    /// What every launch checks before anything is built: the GPU plan `plan` makes from
    /// the machine's GPUs and the kernel's `CUDA_VISIBLE_DEVICES` (a GPU that is not there
    /// is a usage error), its warning, and the once-per-session note when `n` ranks
    /// outnumber the cores.
    pub(super) fn plan_launch<P>(
        &mut self,
        n: usize,
        cx: &CellContext,
        plan: impl FnOnce(&ranch_magics::gpus::Discovery, Option<&str>) -> Result<(Option<String>, P), String>,
    ) -> Result<P, CellError> {
        let found = ranch_magics::gpus::discover();
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        let (warning, planned) = plan(&found, visible.as_deref()).map_err(|e| {
            usage(match &found.note {
                Some(note) => format!("{e} ({note})"),
                None => e,
            })
        })?;
        if let Some(warning) = warning {
            cx.sink.stream(Stream::Stderr, &format!("ranch: {warning}\n"));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let Some(warning) = ranch_magics::threads::oversubscribed(cores, n).filter(|_| !self.ranch.warned_cores) {
            self.ranch.warned_cores = true;
            cx.sink.stream(Stream::Stderr, &format!("{warning}\n"));
        }
        Ok(planned)
    }

    /// The `:dep` line that adds the runtime crate to an evcxr context.
    pub(super) fn runtime_dep(&self) -> String {
        format!(":dep ranch = {{ path = {:?} }}", super::runtime_crate::dir().to_string_lossy())
    }

    /// `%ranch_clean [--all]`: frees the disk ranch uses, and says how much.
    pub(super) fn ranch_clean(&mut self, args: &str, cx: &CellContext) -> CellOutcome {
        use super::disk::{self, mib};
        let all = match args.split_whitespace().collect::<Vec<_>>()[..] {
            [] => false,
            ["--all"] => true,
            ["--help"] | ["-h"] => {
                cx.sink.stream(Stream::Stdout, CLEAN_HELP);
                return Ok(None);
            }
            _ => return Err(usage(format!("%ranch_clean takes only --all, got `{}`\n\n{CLEAN_HELP}", args.trim()))),
        };
        let mut said = Vec::new();
        let artifacts = self.session_dir()?.join("artifacts");
        let (programs, bytes) = disk::bound_artifacts(&artifacts, 0, 0);
        said.push(format!("{programs} built rank programs of this session ({})", mib(bytes)));
        let target = self.workdir.target_dir();
        let versions = disk::remove_unused_runtimes(&super::cache_dir::root(), &super::runtime_crate::dir(), &[target.clone()]);
        said.push(format!("{versions} runtime crates of other ranch versions"));
        if all {
            let (dirs, bytes) = super::workdir::remove_unused(&super::cache_dir::root().join("work"));
            said.push(format!("{dirs} build directories no running kernel uses ({})", mib(bytes)));
            let own = disk::disk_usage(&target);
            let _ = std::fs::remove_dir_all(&target);
            said.push(format!("this kernel's build directory ({}; dependencies are compiled again when next needed)", mib(own)));
            // Rank programs are built again too: their toolchain facts stay valid.
        }
        cx.sink.stream(Stream::Stdout, &format!("Removed {}.\n", said.join(", ")));
        Ok(None)
    }

    fn session_dir(&mut self) -> Result<PathBuf, CellError> {
        Ok(self.private.path().to_path_buf())
    }

    pub(super) fn run_ranch(&mut self, code: &str, cx: &CellContext) -> CellOutcome {
        let run = self.run.clone();
        run.interrupted.store(false, Ordering::SeqCst);
        run.ranch_cell.store(true, Ordering::SeqCst);
        run.running.store(true, Ordering::SeqCst);
        let outcome = self.run_ranch_cell(code, cx);
        run.running.store(false, Ordering::SeqCst);
        run.ranch_cell.store(false, Ordering::SeqCst);
        outcome
    }

    fn interrupted(&self) -> Result<(), CellError> {
        if self.run.interrupted.load(Ordering::SeqCst) {
            return Err(CellError::new(
                "Interrupted",
                "Interrupted before the ranks started; nothing was launched. The session is unchanged.",
            ));
        }
        Ok(())
    }

    fn run_ranch_cell(&mut self, code: &str, cx: &CellContext) -> CellOutcome {
        let code = code.trim_start();
        let parsed = match code.strip_prefix("%in_ddp") {
            // A line magic: the rest of the cell is the expression.
            Some(rest) => args::parse_in_ddp(&rest.replace('\n', " ")),
            None => {
                let magic_line = code.split_once('\n').map_or(code, |(l, _)| l);
                args::parse(magic_line.trim_start_matches("%%ranch"))
            }
        };
        let (args, body, first_rank_only) = match parsed.map_err(|e| usage(e.0))? {
            Parsed::Help(text) => {
                cx.sink.stream(Stream::Stdout, &text);
                return Ok(None);
            }
            Parsed::Run(a) => (a, code.split_once('\n').map_or("", |(_, b)| b).to_string(), false),
            Parsed::InDdp(a, expr) => {
                let single = !a.gather;
                (a, expr, single)
            }
        };
        let body = body.as_str();
        let (rank_deps, rust, rust_line) = source::split_rank_deps(body).map_err(usage)?;
        let facts = source::body_facts(&rust);
        if args.ctx.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(usage("--ctx needs an expression, e.g. --ctx 'setup()'"));
        }
        // GPUs are checked before anything is built: asking for one that is not there is a
        // usage error.
        let gpus = self.plan_launch(args.n, cx, |found, visible| {
            ranch_magics::gpus::plan(&found.devices, visible, &args.gpus, args.gpu_visibility, args.n).map(|p| (p.warning.clone(), p))
        })?;
        self.ensure_runtime()?;

        // Which session variables go to the ranks.
        let ctx = self.context()?;
        let session_vars: Vec<(String, String)> =
            ctx.variables_and_types().map(|(n, t)| (n.to_string(), t.to_string())).collect();
        for name in &args.share {
            if !session_vars.iter().any(|(n, _)| n == name) {
                return Err(usage(format!("--share {name}: the session has no variable `{name}`")));
            }
        }
        let mentioned = |n: &str| {
            (facts.idents.contains(n) && !facts.locals.contains(n))
                || args.share.iter().any(|s| s == n)
                || args.ctx.as_deref().is_some_and(|c| source::body_facts(c).idents.contains(n))
        };
        let shipped: Vec<Shipped> = session_vars
            .iter()
            .filter(|(n, _)| mentioned(n))
            .map(|(n, t)| Shipped { name: n.clone(), ty: t.clone() })
            .collect();

        self.ranch.launches += 1;
        let run_dir = self.session_dir()?.join(format!("run-{}", self.ranch.launches));
        let vars_dir = run_dir.join("vars");
        super::private_dir::make(&vars_dir).map_err(|e| ranch_error(format!("cannot create {}: {e}", vars_dir.display())))?;
        let _cleanup = RunDir(run_dir.clone());

        let t_export = std::time::Instant::now();
        let snapshot = self.export_and_snapshot(&shipped, &vars_dir);
        self.interrupted()?;
        let snapshot = snapshot?;
        let export_s = t_export.elapsed().as_secs_f64();
        let ranch_features = source::ranch_features(&format!("{rust}\n{}", args.ctx.as_deref().unwrap_or("")));
        let cell = CellProgram {
            body: rust,
            body_cell_line: rust_line + 1, // the magic line is line 1
            rank_deps,
            shipped,
            ctx: args.ctx.clone(),
            uses_question_mark: facts.uses_question_mark,
            has_tail: facts.has_tail,
            ddp: args.ddp,
            ranch_features,
        };
        let program = program::generate(&snapshot, &cell);
        let t_build = std::time::Instant::now();
        let exe = self.build_rank_program(&program, cx, code);
        self.interrupted()?;
        let exe = exe?;
        let build_s = t_build.elapsed().as_secs_f64();
        let t_launch = std::time::Instant::now();
        let (shown, types) = self.launch(&args, &exe, &run_dir, &program, gpus.ranks, cx, first_rank_only)?;
        // The Jupyter server's log gets each phase (bench/ranch.py reads them).
        crate::log!(
            "%%ranch {}: export {export_s:.4}s build {build_s:.4}s fanout {:.4}s",
            args.n,
            t_launch.elapsed().as_secs_f64()
        );
        if let Some(out) = &args.out {
            self.bind_out(out, &types, &run_dir, args.n)?;
        }
        Ok(shown)
    }

    /// Writes the shipped variables with one evcxr compile, which also refreshes the item
    /// snapshot (`last_source`). Skipped when nothing is shipped and the session has not
    /// changed since the last snapshot.
    pub(super) fn export_and_snapshot(&mut self, shipped: &[Shipped], vars_dir: &Path) -> Result<SessionSnapshot, CellError> {
        let generation = self.generation;
        if shipped.is_empty() {
            if let Some((g, snap)) = &self.ranch.snapshot {
                if *g == generation {
                    return Ok(snap.clone());
                }
            }
        }
        let unshippable = self.export_vars(shipped, vars_dir)?;
        if !unshippable.is_empty() {
            return Err(CellError::new(
                "UnshippableVariable",
                format!(
                    "these session variables are used by the cell but cannot be sent to the ranks: {}. {SERDE_HINT}, \
                     or build the value inside the cell. Nothing was launched.",
                    unshippable.join(", ")
                ),
            ));
        }
        let ctx = self.context()?;
        let lib_rs = ctx.last_source().map_err(|e| ranch_error(format!("cannot read the session's source: {e}")))?;
        let deps_text = ctx
            .execute(":show_deps")
            .ok()
            .and_then(|o| o.get("text/plain").map(str::to_string))
            .unwrap_or_default();
        let tmpdir = self.evcxr_dir()?;
        let profile = std::fs::read_to_string(tmpdir.join("Cargo.toml")).map(|t| source::profile_section(&t)).unwrap_or_default();
        let snap = SessionSnapshot {
            items: source::session_items(&lib_rs),
            deps: deps_text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect(),
            profile,
        };
        self.ranch.snapshot = Some((generation, snap.clone()));
        Ok(snap)
    }

    /// Writes session variables to `<dir>/<name>.bin` with one evcxr compile. Returns the
    /// ones that cannot be serialised, as `` `name: T` (why) ``.
    pub(super) fn export_vars(&mut self, shipped: &[Shipped], dir: &Path) -> Result<Vec<String>, CellError> {
        let mut export = String::from("{ use ranch::__rt::{ViaNothing as _, ViaSerialize as _};\n");
        for v in shipped {
            export.push_str(&format!(
                "ranch::__rt::export({:?}, {:?}, (&ranch::__rt::Ship(&{})).ranch_encode());\n",
                dir.to_string_lossy(),
                v.name,
                v.name
            ));
        }
        export.push_str("};");
        self.context()?.execute(&export).map_err(|e| {
            ranch_error(format!("could not export the variables from the session: {}", e.to_string().trim()))
        })?;
        Ok(shipped
            .iter()
            .filter_map(|v| {
                let why = std::fs::read_to_string(dir.join(format!("{}.err", v.name))).ok()?;
                Some(format!("`{}: {}` ({why})", v.name, v.ty))
            })
            .collect())
    }

    fn evcxr_dir(&mut self) -> Result<PathBuf, CellError> {
        let ctx = self.context()?;
        let out = ctx.execute(":last_compile_dir").map_err(|e| ranch_error(e.to_string()))?;
        Ok(PathBuf::from(out.get("text/plain").unwrap_or_default().trim()))
    }

    fn toolchain(&mut self) -> Result<(Toolchain, String), CellError> {
        if let Some(t) = &self.ranch.toolchain {
            return Ok(t.clone());
        }
        let tmpdir = self.evcxr_dir()?;
        let host = super::host_rust::host_rust().map_err(ranch_error)?;
        let ctx = self.context()?;
        let linker = ctx.execute(":linker").ok().and_then(|o| o.get("text/plain").map(str::to_string)).unwrap_or_default();
        let mut rustflags = String::from("-Cprefer-dynamic");
        if linker.contains("lld") {
            rustflags.push_str(" -Clink-arg=-fuse-ld=lld");
        }
        let tools = Toolchain {
            cargo: PathBuf::from("cargo"),
            target_dir: tmpdir.join("target"),
            target_triple: host.triple.clone(),
            rustflags,
            lockfile: Some(tmpdir.join("Cargo.lock")),
            wrapper: std::env::current_exe().ok(),
        };
        // Dependencies of rank programs link the toolchain's libstd dynamically, as evcxr's
        // cells do.
        self.ranch.toolchain = Some((tools, host.libdir.clone()));
        Ok(self.ranch.toolchain.clone().expect("set above"))
    }

    /// Builds the rank program once; an identical program reuses its artifact.
    fn build_rank_program(&mut self, program: &program::RankProgram, cx: &CellContext, cell: &str) -> Result<PathBuf, CellError> {
        let (tools, _) = self.toolchain()?;
        let session_dir = self.session_dir()?;
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&(&program.cargo_toml, &program.main_rs), &mut hasher);
        let artifact = session_dir.join("artifacts").join(format!("{:016x}", std::hash::Hasher::finish(&hasher)));
        if artifact.exists() {
            super::disk::touch(&artifact);
            return Ok(artifact);
        }
        let handle = build::BuildHandle::default();
        *self.run.ranch_build.lock().unwrap() = Some(handle.clone());
        let sink = cx.sink.clone();
        let progress = move |line: &str| sink.stream(Stream::Stderr, &format!("{line}\n"));
        let crate_dir = self.workdir.rank_crate_dir().to_path_buf();
        let janitor = |pgid: i32, running: bool| if running { super::janitor::watch(pgid) } else { super::janitor::forget(pgid) };
        let built = build::build(program, &crate_dir, &tools, &handle, &progress, &janitor);
        *self.run.ranch_build.lock().unwrap() = None;
        let exe = match built {
            Ok(exe) => exe,
            Err(BuildError::Compile(diags)) => {
                return Err(CellError {
                    ename: "CompilationError".into(),
                    evalue: diags[0].summary(),
                    traceback: diags.iter().map(|d| d.render(cell)).collect(),
                });
            }
            Err(BuildError::Stopped) => {
                return Err(CellError::new("Interrupted", "Interrupted while building the rank program; nothing was launched. The session is unchanged."));
            }
            Err(BuildError::Failed(msg)) => return Err(ranch_error(msg)),
        };
        std::fs::create_dir_all(artifact.parent().expect("has parent"))
            .and_then(|_| std::fs::copy(&exe, &artifact))
            .map_err(|e| ranch_error(format!("cannot keep the built rank program: {e}")))?;
        use super::disk::{ARTIFACTS_MAX, ARTIFACTS_MAX_BYTES, bound_artifacts};
        bound_artifacts(artifact.parent().expect("has parent"), ARTIFACTS_MAX, ARTIFACTS_MAX_BYTES);
        Ok(artifact)
    }

    fn launch(
        &mut self,
        args: &RanchArgs,
        exe: &Path,
        run_dir: &Path,
        program: &program::RankProgram,
        rank_env: Vec<Vec<(String, String)>>,
        cx: &CellContext,
        first_rank_only: bool,
    ) -> Result<(Option<MimeBundle>, Vec<String>), CellError> {
        let (_, libdir) = self.toolchain()?;
        let run = self.run.clone();
        let interrupted = move || run.interrupted.load(Ordering::SeqCst);
        let note = |text: &str| cx.sink.stream(Stream::Stderr, text);
        let (_service, master_port, token) = start_or_join_group(args, &interrupted, &note)?;
        // NCCL under the name cudarc looks for (see ranch_magics::gpus::nccl_lib).
        let nccl_dir = program.ranch_features.contains(&"nccl").then(|| ranch_magics::gpus::nccl_lib::link_for_ranks(&run_dir.join("lib"))).flatten();
        let libdir = match nccl_dir {
            Some(dir) => format!("{}:{libdir}", dir.display()),
            None => libdir,
        };
        let mut env = vec![
            ("LD_LIBRARY_PATH".into(), super::host_rust::library_path_with(&libdir)),
            (ranch_magics::group::TOKEN_ENV.to_string(), token),
        ];
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        env.extend(ranch_magics::threads::thread_env(cores, args.n, |k| std::env::var(k).ok()));
        if let Some(t) = args.collective_timeout {
            env.push((ranch_magics::group::TIMEOUT_ENV.to_string(), t.to_string()));
        }
        let plan = LaunchPlan {
            exe: exe.to_path_buf(),
            local_ranks: args.n,
            world_size: args.world(),
            base_rank: args.base_rank,
            run_dir: run_dir.to_path_buf(),
            master_addr: args.addr.clone(),
            master_port,
            env,
            rank_env,
        };
        let policy = Policy {
            on_error: args.on_error,
            timeout: args.timeout.map(Duration::from_secs_f64),
            group_outputs: args.group_outputs,
            see: args.see.clone(),
            first_rank: args.base_rank,
        };
        let cancel = Cancel::default();
        *self.run.ranch_cancel.lock().unwrap() = Some(cancel.clone());
        let panic_line = |line: u32| program.cell_line(line as usize);
        // Each rank leads a process group; the janitor kills it if the kernel dies first.
        let spawn = |rank: usize| {
            let child = LocalSpawner.spawn_rank(&plan, rank)?;
            super::janitor::watch(child.id() as i32);
            Ok(child)
        };
        if self.run.interrupted.load(Ordering::SeqCst) {
            cancel.cancel(); // an interrupt that came just before the cancel handle existed
        }
        let children_before = super::procs::children();
        let report = supervise::supervise(args.n, &spawn, run_dir, &policy, &SinkAdapter(cx), &cancel, &panic_line);
        for pid in report.pids.iter().flatten() {
            super::janitor::forget(*pid as i32);
        }
        *self.run.ranch_cancel.lock().unwrap() = None;
        let left = super::procs::end_new_orphans(&children_before, &self.own_children());
        if left > 0 {
            crate::log!("stopped {left} processes the ranks left running");
        }
        if let Some((evalue, traceback)) = merge::failure(&report) {
            // Notebooks get the table as HTML before the error (its text form is in the traceback).
            if let Some(html) = merge::failure_html(&report) {
                let mut data = MimeBundle::new();
                data.insert("text/html".into(), Value::String(html));
                cx.sink.display(data, MimeBundle::new());
            }
            let ename = if report.stopped == Some(supervise::StopReason::Interrupted) { "Interrupted" } else { "RankFailed" };
            return Err(CellError { ename: ename.into(), evalue, traceback });
        }
        let results = merge::read_results(run_dir, args.n, args.base_rank)
            .map_err(|e| CellError::new("RankFailed", format!("{e}. The session is unchanged.")))?;
        if args.out.is_some() {
            if let Some(r) = results.iter().position(|r| r.value.is_none() && r.type_name != "()") {
                return Err(ranch_error(format!(
                    "--out needs values that are Serialize + Deserialize, but rank {r} returned a `{}`",
                    results[r].type_name
                )));
            }
        }
        let types = results.iter().map(|r| r.type_name.clone()).collect();
        let shown = if first_rank_only { merge::single_bundle(&results[0]) } else { merge::result_bundle(&results, args.base_rank) };
        Ok((shown, types))
    }

    /// `let NAME: Vec<T> = ...` in the session, T given or read from the ranks' values.
    fn bind_out(&mut self, out: &args::Out, types: &[String], run_dir: &Path, n: usize) -> Result<(), CellError> {
        let inferred = types.first().map(|t| program::session_type_name(t));
        let ty = match (&out.ty, inferred) {
            (Some(t), _) => t.clone(),
            (None, Some(t)) => t,
            (None, None) => return Err(ranch_error("--out: the ranks returned no value")),
        };
        let ranks: Vec<usize> = (0..n).collect();
        self.bind_collected(&out.name, &ty, run_dir, &ranks).map_err(|e| {
            ranch_error(format!(
                "the ranks ran, but `{}` could not be bound as Vec<{ty}>: {}. State the type: --out {}: T",
                out.name, e.evalue, out.name
            ))
        })
    }

    /// `let NAME: Vec<T>` in the session, from the values ranks `ranks` wrote to `dir`;
    /// `Err` is evcxr's reason.
    pub(super) fn bind_collected(&mut self, name: &str, ty: &str, dir: &Path, ranks: &[usize]) -> Result<(), CellError> {
        let list: Vec<String> = ranks.iter().map(usize::to_string).collect();
        let code = format!(
            "let {name}: Vec<{ty}> = ranch::__rt::collect_ranks::<{ty}>({dir:?}, &[{list}]);",
            dir = dir.to_string_lossy(),
            list = list.join(", ")
        );
        self.context()?.execute(&code).map_err(|e| ranch_error(e.to_string().trim().to_string()))?;
        self.generation += 1;
        Ok(())
    }
}

/// The group the ranks join: hosted here (this kernel launches rank 0), or another
/// kernel's, found through the token it published for its port.
fn start_or_join_group(
    args: &RanchArgs,
    interrupted: &dyn Fn() -> bool,
    note: &dyn Fn(&str),
) -> Result<(Option<GroupService>, u16, String), CellError> {
    use ranch_magics::group;
    if args.hosts_group() {
        let token = group::new_token().map_err(ranch_error)?;
        let publish = args.world() > args.n;
        let service = GroupService::start(&args.addr, args.port, args.world(), &token, publish).map_err(|e| {
            if let Some(port) = args.port { usage(format!("--port {port}: {e}")) } else { ranch_error(e) }
        })?;
        let port = service.port();
        return Ok((Some(service), port, token));
    }
    let port = args.port.expect("checked by the parser: joining needs --port");
    // The hosting kernel may be a moment behind.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut waiting = false;
    loop {
        if let Some(token) = group::published_token(port).map_err(ranch_error)? {
            return Ok((None, port, token));
        }
        if !waiting {
            waiting = true;
            note(&format!(
                "waiting for the group on port {port}: run the part with --base-rank 0 in another kernel (interrupt to give up)\n"
            ));
        }
        if interrupted() {
            return Err(CellError::new(
                "Interrupted",
                format!("Interrupted while waiting for the group on port {port}; nothing was launched. The session is unchanged."),
            ));
        }
        if std::time::Instant::now() >= deadline {
            return Err(usage(format!(
                "no running kernel hosts a group on port {port}: run the part with --base-rank 0 first, in another kernel"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
