//! `%%ranch N` and `%in_ddp`: ship the variables the cell uses out of the session, snapshot
//! its items and dependencies, build the rank program once, launch N fresh ranks in a
//! group, supervise them, merge what they report, bind `--out` back into the session.

use super::{BuildTools, Driver, Failure, Host, HostSink, Outcome, RunDir, SERDE_HINT, Session, Stoppable, jobs, ranch_error, usage};
use crate::args::{self, Gpus, RanchArgs};
use crate::build::{self, BuildError, BuildHandle};
use crate::channel::{self, Channel};
use crate::group::{self, GroupService};
use crate::hosts::LauncherKind;
use crate::program::{self, CellProgram, RankProgram, Shipped};
use crate::ranks::launch::{Delivery, LaunchPlan, Launcher, LauncherCommand, LocalSpawner};
use crate::ranks::supervise::{self, Cancel, Policy};
use crate::status::StatusSetup;
use crate::transcript::Transcript;
use crate::{artifacts, merge, source};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A `%%ranch` cell or an `%in_ddp` line, parsed (by [`crate::magic_table`]).
#[derive(Debug)]
pub struct RanchLaunch<'a> {
    pub args: RanchArgs,
    /// What every rank runs: the cell's body, or `%in_ddp`'s expression.
    pub body: String,
    /// What the cell shows of the ranks' values.
    pub shows: Shows,
    /// The whole cell, magic line included: compile errors point into it.
    pub cell: &'a str,
}

/// What a launch shows of its ranks' values (`--out` binds them whatever it shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shows {
    /// Every rank's, in rank order (`%%ranch`, `%in_ddp --gather`).
    EveryRank,
    /// The base rank's alone (`%in_ddp`).
    FirstRank,
    /// None: `%in_ddp ... EXPR;` (a trailing `;`, as in IPython).
    Nothing,
}

fn interrupted_before_launch(host: &dyn Host) -> Result<(), Failure> {
    if host.interrupted() {
        return Err(Failure::interrupted("Interrupted before the ranks started; nothing was launched. The session is unchanged."));
    }
    Ok(())
}

impl Driver {
    /// Runs a `%%ranch` cell or an `%in_ddp` line.
    pub fn ranch(&mut self, session: &mut dyn Session, host: &dyn Host, launch: RanchLaunch<'_>) -> Outcome {
        let RanchLaunch { args, body, shows, cell: code } = launch;
        // Checked before anything runs: a cell that cannot go to the background changes nothing.
        let background = if args.run.bg { Some(self.background(host)?) } else { None };
        let (rank_deps, rust, rust_line) = source::split_rank_deps(&body).map_err(usage)?;
        let facts = source::body_facts(&rust);
        if args.ctx.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(usage("--ctx needs an expression, e.g. --ctx 'setup()'"));
        }
        // GPUs are checked before anything is built: asking for one that is not there is a
        // usage error.
        let foreign = args.placement.launcher != LauncherKind::Local;
        if foreign && matches!(args.gpus, Gpus::Devices(_)) {
            return Err(usage(format!(
                "--gpus D,D pins ranks to GPUs of this host; ranks started by {} see the GPUs of their own host \
                 (pick one with ranch::local_rank())",
                args.placement.launcher.name()
            )));
        }
        if args.collectives.mpi_name().is_some() {
            crate::ranks::launch::mpi_build::check().map_err(usage)?;
        }
        // A launcher that starts every rank gives them all one environment: no pinning.
        let gpu_flag = if foreign { Gpus::None } else { args.gpus.clone() };
        let per_host = args.placement.most_on_one_host(args.n);
        let gpus = self.plan_launch(per_host, host, |found, visible| {
            crate::gpus::plan(&found.devices, visible, &gpu_flag, args.gpu_visibility, args.n).map(|p| (p.warning.clone(), p))
        })?;
        session.add_runtime()?;

        // Which session variables go to the ranks: those the cell (or --ctx) mentions and
        // does not define itself, and --share's.
        let session_vars = session.variables()?;
        for name in &args.run.share {
            if !session_vars.iter().any(|(n, _)| n == name) {
                return Err(usage(format!("--share {name}: the session has no variable `{name}`")));
            }
        }
        let mentioned = |n: &str| {
            (facts.idents.contains(n) && !facts.locals.contains(n))
                || args.run.share.iter().any(|s| s == n)
                || args.ctx.as_deref().is_some_and(|c| source::body_facts(c).idents.contains(n))
        };
        let shipped: Vec<Shipped> =
            session_vars.iter().filter(|(n, _)| mentioned(n)).map(|(n, t)| Shipped { name: n.clone(), ty: t.clone() }).collect();

        self.launches += 1;
        let run_dir = RunDir::make(&session.private_dir(), &format!("run-{}", self.launches))?;
        let vars_dir = run_dir.0.join("vars");
        super::make_private(&vars_dir)?;

        let t_export = Instant::now();
        let snapshot = export_and_snapshot(session, &shipped, &vars_dir);
        interrupted_before_launch(host)?;
        let snapshot = snapshot?;
        let export_s = t_export.elapsed().as_secs_f64();
        let mut ranch_features = source::ranch_features(&format!("{rust}\n{}", args.ctx.as_deref().unwrap_or("")));
        let uses_group =
            args.ddp || source::names_group(&format!("{rust}\n{}\n{}", args.ctx.as_deref().unwrap_or(""), snapshot.items.items.join("\n")));
        if args.collectives.mpi_name().is_some() {
            ranch_features.push("mpi");
        }
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
            uses_group,
            line_tables: program::backtraces_asked(),
        };
        let program = program::generate(&snapshot, &cell);
        let tools = session.toolchain()?;
        let t_build = Instant::now();
        let exe = build_rank_program(session, host, &tools, &program, code);
        interrupted_before_launch(host)?;
        let exe = exe?;
        let build_s = t_build.elapsed().as_secs_f64();
        let phases = (Duration::from_secs_f64(export_s), Duration::from_secs_f64(build_s));
        let launch = Launch { args, exe, run_dir: Arc::new(run_dir), program, tools, phases };
        if let Some((outlet, cell)) = background {
            return self.start_job(host, outlet, cell, launch, gpus.ranks, shows);
        }
        let (given, transcript) = launch.run(host, gpus.ranks, shows);
        self.last_output = Some(transcript);
        let (shown, types) = given?;
        if let Some(out) = &launch.args.run.out {
            bind_out(session, out, &types, launch.dir(), launch.args.n)?;
        }
        Ok(shown)
    }
}

impl Driver {
    /// Runs a built launch as a background job: returns once its ranks started.
    fn start_job(
        &mut self,
        host: &dyn Host,
        outlet: Arc<dyn jobs::Outlet>,
        cell: usize,
        launch: Launch,
        rank_env: Vec<Vec<(String, String)>>,
        shows: Shows,
    ) -> Outcome {
        let n = launch.args.n;
        let bind = launch.args.run.out.clone().map(|out| {
            let run_dir = launch.run_dir.clone();
            Box::new(move |session: &mut dyn Session, types: &[String]| bind_out(session, &out, types, &run_dir.0, n)) as jobs::Bind
        });
        let live_table = !launch.args.run.quiet;
        // A launcher (mpirun, srun) is the one process this kernel starts for the ranks.
        let processes = if launch.args.placement.launcher == LauncherKind::Local { n } else { 1 };
        let work: jobs::Work = Box::new(move |job: Arc<jobs::JobHost>| {
            let (given, transcript) = launch.run(&*job, rank_env, shows);
            job.keep_transcript(transcript);
            given
        });
        let name = self.jobs.start(outlet, cell, n, processes, live_table, bind, work, &|| host.interrupted())?;
        host.stream(supervise::Stream::Stdout, &jobs::started_line(&name, n));
        Ok(None)
    }
}

/// Writes the shipped variables and reads the session's items. Nothing is launched when a
/// variable cannot be sent.
fn export_and_snapshot(session: &mut dyn Session, shipped: &[Shipped], vars_dir: &Path) -> Result<program::SessionSnapshot, Failure> {
    if !shipped.is_empty() {
        let unshippable = session.export(shipped, vars_dir)?;
        if !unshippable.is_empty() {
            return Err(Failure::Unshippable(format!(
                "these session variables are used by the cell but cannot be sent to the ranks: {}. {SERDE_HINT}, \
                     or build the value inside the cell. Nothing was launched.",
                unshippable.join(", ")
            )));
        }
    }
    session.snapshot()
}

/// Builds the rank program once; an identical program reuses its artifact.
fn build_rank_program(
    session: &dyn Session,
    host: &dyn Host,
    tools: &BuildTools,
    program: &RankProgram,
    cell: &str,
) -> Result<PathBuf, Failure> {
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&(&program.cargo_toml, &program.main_rs), &mut hasher);
    let kept = session.private_dir().join("artifacts");
    let artifact = kept.join(artifacts::file_name(&format!("{:016x}", std::hash::Hasher::finish(&hasher))));
    if artifact.exists() {
        artifacts::touch(&artifact);
        return Ok(artifact);
    }
    let handle = BuildHandle::default();
    host.stoppable(Stoppable::Build(handle.clone()));
    let progress = |line: &str| host.stream(supervise::Stream::Stderr, &format!("{line}\n"));
    let watch = |pgid: i32, running: bool| host.watch(pgid, running);
    let built = build::build(program, &session.rank_crate_dir(), &tools.toolchain, &handle, &progress, &watch);
    host.stoppable(Stoppable::Nothing);
    let exe = match built {
        Ok(exe) => exe,
        Err(BuildError::Compile(diags)) => {
            return Err(Failure::Compilation { evalue: diags[0].summary(), traceback: diags.iter().map(|d| d.render(cell)).collect() });
        }
        Err(BuildError::Stopped) => {
            return Err(Failure::interrupted(
                "Interrupted while building the rank program; nothing was launched. The session is unchanged.",
            ));
        }
        Err(BuildError::Failed(msg)) => return Err(ranch_error(msg)),
    };
    std::fs::create_dir_all(&kept)
        .and_then(|_| std::fs::copy(&exe, &artifact))
        .map_err(|e| ranch_error(format!("cannot keep the built rank program: {e}")))?;
    artifacts::bound_artifacts(&kept, artifacts::ARTIFACTS_MAX, artifacts::ARTIFACTS_MAX_BYTES);
    Ok(artifact)
}

/// A built rank program, ready to run in N ranks (here, or on a job's thread).
struct Launch {
    args: RanchArgs,
    exe: PathBuf,
    /// Kept until the values it holds are bound (by the cell, or by `%ranch_wait`).
    run_dir: Arc<RunDir>,
    program: RankProgram,
    tools: BuildTools,
    /// How long exporting and building took (for `--timing`).
    phases: (Duration, Duration),
}

/// A launch's plan, and what must live while its ranks run (the group's rendezvous service
/// when this kernel hosts it, and the channel that moves variables, values and the program).
struct Planned {
    plan: LaunchPlan,
    launcher: Option<LauncherCommand>,
    _service: Option<GroupService>,
    _channel: Channel,
}

impl Launch {
    fn dir(&self) -> &Path {
        &self.run_dir.0
    }

    /// Launches and supervises the ranks; returns what the cell shows and each rank's value's
    /// type (or why it failed), and what the ranks wrote.
    fn run(&self, host: &dyn Host, rank_env: Vec<Vec<(String, String)>>, shows: Shows) -> (jobs::Given, Transcript) {
        let started = Instant::now();
        let planned = match self.plan(host, rank_env) {
            Ok(planned) => planned,
            Err(e) => return (Err(e), Transcript::default()),
        };
        let mut report = self.supervise(host, &planned);
        let transcript = std::mem::take(&mut report.transcript);
        // The channel lives until the values it brought back are read.
        let merged = self.merge(host, &report, shows);
        drop(planned);
        // The Jupyter server's log gets each phase (bench/ranch.py reads them).
        let (export, build) = self.phases;
        host.log(&format!(
            "%%ranch {}: export {:.4}s build {:.4}s fanout {:.4}s",
            self.args.n,
            export.as_secs_f64(),
            build.as_secs_f64(),
            started.elapsed().as_secs_f64()
        ));
        (merged, transcript)
    }

    /// Where the ranks meet, how they get the program, and the environment of each.
    fn plan(&self, host: &dyn Host, rank_env: Vec<Vec<(String, String)>>) -> Result<Planned, Failure> {
        let args = &self.args;
        let note = |text: &str| host.stream(supervise::Stream::Stderr, text);
        // An address of this host the ranks can reach: the channel's, and MASTER_ADDR unless --addr.
        let reach = args.reach_addr().map_err(usage)?;
        let master_addr = args.addr.clone().unwrap_or_else(|| reach.clone());
        let (service, master_port, token) = start_or_join_group(args, &master_addr, &|| host.interrupted(), &note)?;
        // NCCL under the name cudarc looks for (see crate::gpus::nccl_lib).
        let nccl_dir =
            self.program.ranch_features.contains(&"nccl").then(|| crate::gpus::nccl_lib::link_for_ranks(&self.dir().join("lib"))).flatten();
        let library_path = match nccl_dir {
            Some(dir) => format!("{}:{}", dir.display(), self.tools.library_path),
            None => self.tools.library_path.clone(),
        };
        // Ranks on other hosts (named, or wherever srun puts them) run the program from a
        // directory shared with this host when the user names one, else fetch it.
        let elsewhere = args.placement.elsewhere();
        let shared_dir = std::env::var_os("RANCH_SHARED_DIR").filter(|d| !d.is_empty()).map(PathBuf::from);
        let (exe, delivery) = match (&shared_dir, elsewhere) {
            (Some(dir), true) => {
                let shared = crate::ranks::launch::shared::publish(&self.exe, dir).map_err(ranch_error)?;
                (shared.path, Delivery::SharedDir { sha256: shared.sha256 })
            }
            (None, true) => (self.exe.to_path_buf(), Delivery::Channel),
            (_, false) => (self.exe.to_path_buf(), Delivery::Path),
        };
        // Variables go out and results (and the program) come back over TCP: no launch needs
        // a shared directory.
        let shipped = (delivery == Delivery::Channel).then_some(self.exe.as_path());
        let channel = Channel::start(&reach, &token, self.dir(), args.n, shipped).map_err(ranch_error)?;
        let mut env = vec![
            ("LD_LIBRARY_PATH".into(), library_path),
            // Shared arrays are named after this kernel.
            (ranch::shared::KERNEL_ENV.to_string(), std::process::id().to_string()),
            (group::TOKEN_ENV.to_string(), token),
            (channel::CHANNEL_ENV.to_string(), channel.addr().to_string()),
        ];
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        env.extend(crate::threads::thread_env(cores, args.placement.most_on_one_host(args.n), |k| std::env::var(k).ok()));
        if let Some(t) = args.collective_timeout {
            env.push((group::TIMEOUT_ENV.to_string(), t.to_string()));
        }
        if let Some(name) = args.collectives.mpi_name() {
            // MPI is started only by a launch whose code may use the group: its start is
            // most of what a launch across hosts costs.
            let backend = if self.program.uses_group { name } else { group::NO_GROUP };
            env.push((group::BACKEND_ENV.to_string(), backend.to_string()));
        }
        let plan = LaunchPlan {
            exe,
            delivery,
            local_ranks: args.n,
            world_size: args.world(),
            base_rank: args.base_rank,
            run_dir: self.dir().to_path_buf(),
            master_addr,
            master_port,
            env,
            rank_env,
        };
        let launcher = launcher_command(args, &plan)?;
        Ok(Planned { plan, launcher, _service: service, _channel: channel })
    }

    /// Runs the ranks to their end (or until stopped), locally or through the launcher,
    /// leaving no process of theirs behind.
    fn supervise(&self, host: &dyn Host, planned: &Planned) -> crate::report::RunReport {
        let (args, plan, launcher) = (&self.args, &planned.plan, &planned.launcher);
        let policy = Policy {
            on_error: args.on_error(),
            timeout: args.run.timeout.map(Duration::from_secs_f64),
            group_outputs: args.run.group_outputs,
            see: args.run.see_or(&args::See::All).clone(),
            first_rank: args.base_rank,
            status: (!args.run.quiet).then(|| StatusSetup { hosts: args.placement.rank_hosts(), gpus: rank_gpus(&plan.rank_env) }),
        };
        let cancel = Cancel::default();
        host.stoppable(Stoppable::Ranks(cancel.clone()));
        if host.interrupted() {
            cancel.cancel(); // an interrupt that came just before the cancel handle existed
        }
        let panic_line = |line: u32| self.program.cell_line(line as usize);
        let children_before = host.children();
        let report = match launcher {
            None => {
                // Each rank leads a process group, killed with the kernel if it dies first.
                let spawn = |rank: usize| {
                    let child = LocalSpawner.spawn_rank(plan, rank)?;
                    host.watch(child.id() as i32, true);
                    Ok(child)
                };
                supervise::supervise(args.n, &spawn, self.dir(), &policy, &HostSink::new(host), &cancel, &panic_line)
            }
            Some(command) => {
                host.log(&format!("%%ranch {}: {}", args.n, command.shown()));
                let launcher_pid = std::sync::Mutex::new(None);
                let watch_pid = |pid: u32| {
                    *launcher_pid.lock().unwrap() = Some(pid);
                    host.watch(pid as i32, true);
                };
                let rank_hosts = args.placement.rank_hosts();
                let report = supervise::supervise_launcher(
                    args.n,
                    command,
                    &rank_hosts,
                    self.dir(),
                    &policy,
                    &HostSink::new(host),
                    &cancel,
                    &panic_line,
                    &watch_pid,
                );
                if let Some(pid) = *launcher_pid.lock().unwrap() {
                    host.watch(pid as i32, false);
                }
                report
            }
        };
        for pid in report.pids.iter().flatten() {
            host.watch(*pid as i32, false);
        }
        host.stoppable(Stoppable::Nothing);
        let left = host.end_new_orphans(&children_before);
        if left > 0 {
            host.log(&format!("stopped {left} processes the ranks left running"));
        }
        report
    }

    /// What the cell shows of a run: its timing, its failures, or its values.
    fn merge(
        &self,
        host: &dyn Host,
        report: &crate::report::RunReport,
        shows: Shows,
    ) -> Result<(Option<super::Bundle>, Vec<String>), Failure> {
        let args = &self.args;
        if args.run.timing {
            host.display(crate::timing::bundle(self.phases.0, self.phases.1, report), None);
        }
        if let Some((evalue, traceback)) = merge::failure(report) {
            // The table, with what the failing ranks wrote last, goes before the short error.
            if let Some(table) = merge::failure_bundle(report) {
                host.display(table, None);
            }
            return Err(if report.stopped == Some(crate::report::StopReason::Interrupted) {
                Failure::Interrupted { evalue, traceback }
            } else {
                Failure::RankFailed { evalue, traceback }
            });
        }
        let results = merge::read_results(self.dir(), args.n, args.base_rank)
            .map_err(|e| Failure::RankFailed { evalue: format!("{e}. The session is unchanged."), traceback: Vec::new() })?;
        if args.run.out.is_some()
            && let Some(r) = results.iter().position(|r| r.value.is_none() && r.type_name != "()")
        {
            return Err(ranch_error(format!(
                "--out needs values that are Serialize + Deserialize, but rank {r} returned a `{}`",
                results[r].type_name
            )));
        }
        let types = results.iter().map(|r| r.type_name.clone()).collect();
        let shown = match shows {
            Shows::EveryRank => merge::result_bundle(&results, args.base_rank),
            Shows::FirstRank => merge::single_bundle(&results[0]),
            Shows::Nothing => None,
        };
        Ok((shown, types))
    }
}

/// `let NAME: Vec<T> = ...` in the session, T given or read from the ranks' values.
pub(super) fn bind_out(session: &mut dyn Session, out: &args::Out, types: &[String], run_dir: &Path, n: usize) -> Result<(), Failure> {
    let inferred = types.first().map(|t| program::session_type_name(t));
    let ty = match (&out.ty, inferred) {
        (Some(t), _) => t.clone(),
        (None, Some(t)) => t,
        (None, None) => return Err(ranch_error("--out: the ranks returned no value")),
    };
    let ranks: Vec<usize> = (0..n).collect();
    session.bind(&out.name, &ty, run_dir, &ranks).map_err(|e| {
        ranch_error(format!(
            "the ranks ran, but `{}` could not be bound as Vec<{ty}>: {}. State the type: --out {}: T",
            out.name, e, out.name
        ))
    })
}

/// Each rank's GPU as the machine numbers it (its entry in the `CUDA_VISIBLE_DEVICES` it was
/// given), for the status table.
fn rank_gpus(rank_env: &[Vec<(String, String)>]) -> Vec<Option<String>> {
    let var = |env: &[(String, String)], name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    rank_env
        .iter()
        .map(|env| {
            let visible = var(env, "CUDA_VISIBLE_DEVICES")?;
            let ordinal: usize = var(env, "RANCH_GPU")?.parse().ok()?;
            visible.split(',').nth(ordinal).map(str::to_string)
        })
        .collect()
}

/// The command of the launcher that starts every rank (`None`: ranks are spawned here).
fn launcher_command(args: &RanchArgs, plan: &LaunchPlan) -> Result<Option<LauncherCommand>, Failure> {
    crate::ranks::launch::command_for(&args.placement, args.on_error() == args::OnError::Continue, plan).map_err(|e| match e {
        crate::ranks::launch::CommandError::Usage(m) => usage(m),
        crate::ranks::launch::CommandError::Io(m) => ranch_error(m),
    })
}

/// The group the ranks join: hosted here (this kernel launches rank 0), or another
/// kernel's, found through the token it published for its port.
fn start_or_join_group(
    args: &RanchArgs,
    addr: &str,
    interrupted: &dyn Fn() -> bool,
    note: &dyn Fn(&str),
) -> Result<(Option<GroupService>, u16, String), Failure> {
    if args.hosts_group() {
        let token = group::new_token().map_err(ranch_error)?;
        let publish = args.world() > args.n;
        let service = GroupService::start(addr, args.port, args.world(), &token, publish)
            .map_err(|e| if let Some(port) = args.port { usage(format!("--port {port}: {e}")) } else { ranch_error(e) })?;
        let port = service.port();
        return Ok((Some(service), port, token));
    }
    let port = args.port.expect("checked by the parser: joining needs --port");
    // The hosting kernel may be a moment behind.
    let deadline = Instant::now() + Duration::from_secs(30);
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
            return Err(Failure::interrupted(format!(
                "Interrupted while waiting for the group on port {port}; nothing was launched. The session is unchanged."
            )));
        }
        if Instant::now() >= deadline {
            return Err(usage(format!(
                "no running kernel hosts a group on port {port}: run the part with --base-rank 0 first, in another kernel"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
