//! `%%px`, `%px`, `%px_push`, `%px_pull` on the session's pool: ranks that keep their
//! variables between cells. The pool runs each cell (compiled once, loaded by every rank);
//! the driver decides which ranks run it, brings the session's items in first, and moves
//! values between the session and the ranks as MessagePack files in a private directory,
//! removed after the cell.

use super::{Driver, Failure, Host, Outcome, RunDir, SERDE_HINT, Session, usage};
use crate::args::{GroupOutputs, OnError, Out, See};
use crate::merge::ranks_label;
use crate::pool::{PoolArgs, PullArgs, PushArgs, PxArgs, RankPlan, Targets, cell_ranks, session_type};
use crate::program::{SessionSnapshot, Shipped};
use crate::ranks::supervise::Stream;
use std::path::Path;

/// What the driver needs of a running pool.
pub trait PoolRanks {
    /// How many ranks it has.
    fn size(&self) -> usize;
    /// The ranks' variables and their types (every rank has the same).
    fn variables(&mut self) -> Vec<(String, String)>;
    /// Brings the session's dependencies and items into the pool (nothing when unchanged).
    fn bring_session_items(&mut self, snapshot: &SessionSnapshot) -> Result<(), Failure>;
    /// Runs `code` on the pool ranks `ranks` (sorted), in a group of just those ranks;
    /// their output reaches the cell as it comes, labelled, as `how` says.
    fn run(&mut self, code: &str, ranks: &[usize], how: &PxRun) -> Outcome;
    /// Ranks that sit the cells out: restarted alone, they lack the variables the pool
    /// holds (evcxr loads every stored variable in every cell).
    fn sitting_out(&mut self) -> Vec<usize> {
        Vec::new()
    }
    /// What the ranks of the last cell wrote (once: it is handed over).
    fn take_transcript(&mut self) -> Option<crate::transcript::Transcript> {
        None
    }
}

/// How the ranks run one pool cell: what is shown and when the cell is stopped (the
/// `%%ranch` flags a `%%px` cell takes, see [`crate::args::RunFlags`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PxRun {
    /// A live status table of the ranks.
    pub live_status: bool,
    /// Ranks whose output is shown (`None`: as `%ranch_start --see` said).
    pub see: Option<See>,
    /// Stop the ranks (as an interrupt does) after this long.
    pub timeout: Option<std::time::Duration>,
    /// `Abort`: stop the other ranks once one panics.
    pub on_error: OnError,
    /// Show where the cell's time went (bringing the session's items, building, each rank).
    pub timing: bool,
    /// `Rank`: each rank's output together, in rank order, when the cell ends.
    pub group_outputs: GroupOutputs,
    /// How long bringing the session's items took (filled by [`run_px`]).
    pub export: std::time::Duration,
    /// The cell runs as a background job: its status table is shown at once (it is what
    /// the cell shows while the job runs), not after a second.
    pub background: bool,
}

impl PxRun {
    /// A cell of ranch's own (moving variables): no table, nothing shown but failures.
    pub fn quiet() -> PxRun {
        PxRun {
            live_status: false,
            see: None,
            timeout: None,
            on_error: OnError::Continue,
            timing: false,
            group_outputs: GroupOutputs::Order,
            export: Default::default(),
            background: false,
        }
    }

    /// A user's cell, as its flags say.
    pub fn of(args: &PxArgs) -> PxRun {
        PxRun {
            live_status: !args.run.quiet,
            see: args.run.see.clone(),
            timeout: args.run.timeout.map(std::time::Duration::from_secs_f64),
            on_error: args.on_error(),
            timing: args.run.timing,
            group_outputs: args.run.group_outputs,
            export: Default::default(),
            background: false,
        }
    }
}

/// Brings the traits `ranch_encode` needs into scope, inside a block of generated code.
const ENCODE_TRAITS: &str = "use ranch::__rt::{ViaNothing as _, ViaSerialize as _};";

/// Code that writes `value` (an expression naming a place) to `dir` for this rank.
fn emit(dir: &Path, value: &str) -> String {
    format!("ranch::__rt::emit_to({:?}, &{value}, (&ranch::__rt::Ship(&{value})).ranch_encode());", dir.to_string_lossy())
}

/// A fresh private directory for one transfer.
fn transfer_dir(session: &dyn Session, what: &str) -> Result<RunDir, Failure> {
    static TRANSFERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let k = TRANSFERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    RunDir::make(&session.private_dir(), &format!("{what}-{k}"))
}

impl Driver {
    /// `%ranch_start`'s checks and each rank's environment (`group_file`: where each cell's
    /// group will be said).
    pub fn pool_plan(&mut self, host: &dyn Host, args: &PoolArgs, group_file: &Path) -> Result<RankPlan, Failure> {
        crate::pool::check_see(args).map_err(usage)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Cores are shared by the ranks of one host: the busiest one's count.
        self.plan_launch(args.placement.most_on_one_host(args.n), host, |found, visible| {
            crate::pool::rank_plan(args, &found.devices, visible, cores, group_file, |k| std::env::var(k).ok())
                .map(|p| (p.warning.clone(), p))
        })
    }

    /// A `%%px` cell or `%px` line: `body` on the pool's ranks.
    /// Every check comes first: a cell with bad flags copies nothing into the ranks.
    pub fn px(&mut self, session: &mut dyn Session, host: &dyn Host, args: &PxArgs, body: &str) -> Outcome {
        let ranks = cell_ranks_for(session, body, args.targets.as_ref(), args.run.see.as_ref())?;
        let background = if args.run.bg { Some(self.background(host)?) } else { None };
        // `--out NAME`: each rank also writes the cell's tail value, then bound in the session.
        let out = match &args.run.out {
            Some(out) => Some((out, transfer_dir(session, "px-out")?)),
            None => None,
        };
        let code = match &out {
            Some((_, dir)) => crate::cell_body::wrap_tail(body, |tail| {
                format!("{{ {ENCODE_TRAITS} let __ranch_out = {tail}; {} __ranch_out }}", emit(&dir.0, "__ranch_out"))
            })
            .ok_or_else(|| usage("--out needs the cell to end in an expression (each rank's value)"))?,
            None => body.to_string(),
        };
        if !args.run.share.is_empty() {
            push(session, &args.run.share)?;
        }
        if let Some((outlet, cell)) = background {
            let how = PxRun { background: true, ..PxRun::of(args) };
            let live_table = how.live_status;
            let how = bring_items(session, how)?;
            let name = self.jobs.next_name();
            let work = session.pool_job(&name, code, ranks.clone(), how)?;
            let n = ranks.len();
            let bind = out.map(|(out, dir)| {
                let out = out.clone();
                Box::new(move |session: &mut dyn Session, _: &[String]| {
                    bind_pulled(session, &out, &dir.0, &ranks, "the cell's value").map(drop)
                }) as super::jobs::Bind
            });
            // The pool's ranks run already: the job has no process to start.
            let name = self.jobs.start(outlet, cell, n, 0, live_table, bind, work, &|| host.interrupted())?;
            host.stream(Stream::Stdout, &super::jobs::started_line(&name, n));
            return Ok(None);
        }
        let shown = run_on(session, &code, &ranks, PxRun::of(args));
        self.keep_output(session.pool().ok().and_then(|mut p| p.take_transcript()));
        let shown = shown?;
        if let Some((out, dir)) = &out {
            bind_pulled(session, out, &dir.0, &ranks, "the cell's value")?;
        }
        Ok(shown)
    }

    /// `%px_push a, b`: `let mut a: T = <the session's a>;` on every rank.
    pub fn px_push(&mut self, session: &mut dyn Session, host: &dyn Host, args: &PushArgs) -> Outcome {
        let n = session.pool()?.size();
        let shipped = push(session, &args.names)?;
        let names: Vec<String> = shipped.iter().map(|v| format!("`{}`", v.name)).collect();
        host.stream(Stream::Stdout, &format!("Pushed {} to the pool's {n} ranks.\n", names.join(", ")));
        Ok(None)
    }

    /// `%px_pull NAME [--out NAME] [--targets R,R]`: the ranks' NAME as `Vec<T>` in the session.
    pub fn px_pull(&mut self, session: &mut dyn Session, host: &dyn Host, args: &PullArgs) -> Outcome {
        let mut pool = session.pool()?;
        let mut ranks = cell_ranks(args.targets.as_ref(), pool.size()).map_err(usage)?;
        // Ranks restarted alone have none of the variables: pulled from the others.
        let out = pool.sitting_out();
        if args.targets.is_none() {
            ranks.retain(|r| !out.contains(r));
        }
        let vars = pool.variables();
        drop(pool);
        let Some((_, ty)) = vars.iter().find(|(v, _)| *v == args.name) else {
            let mut names: Vec<&str> = vars.iter().map(|(v, _)| v.as_str()).collect();
            names.sort_unstable();
            let have = if names.is_empty() { "none yet".to_string() } else { names.join(", ") };
            return Err(usage(format!("the pool's ranks have no variable `{}` (they have: {have})", args.name)));
        };
        let dir = transfer_dir(session, "px-pull")?;
        let code = format!("{{ {ENCODE_TRAITS} {} }}", emit(&dir.0, &args.name));
        run_px(session, &code, args.targets.as_ref(), PxRun::quiet())?;
        let out = Out { name: args.out.clone().unwrap_or_else(|| args.name.clone()), ty: Some(ty.clone()) };
        let ty = bind_pulled(session, &out, &dir.0, &ranks, &format!("`{}`", args.name))?;
        host.stream(Stream::Stdout, &format!("Pulled `{}` from {} into `{}: Vec<{ty}>`.\n", args.name, ranks_label(&ranks), out.name));
        Ok(None)
    }
}

/// `let mut a: T = <the session's a>;` on every rank, for each of `names`.
fn push(session: &mut dyn Session, names: &[String]) -> Result<Vec<Shipped>, Failure> {
    let vars = session.variables()?;
    let mut shipped = Vec::new();
    for name in names {
        let Some((_, ty)) = vars.iter().find(|(n, _)| n == name) else {
            return Err(usage(format!("the session has no variable `{name}` to copy to the ranks")));
        };
        shipped.push(Shipped { name: name.clone(), ty: ty.clone() });
    }
    let dir = transfer_dir(session, "px-push")?;
    let unshippable = session.export(&shipped, &dir.0)?;
    if !unshippable.is_empty() {
        return Err(Failure::Unshippable(format!(
            "cannot send {} to the ranks. {SERDE_HINT}, or build the value in a %%px cell.",
            unshippable.join(", ")
        )));
    }
    let code: String = shipped
        .iter()
        .map(|v| {
            format!(
                // `mut`: the ranks own their copies, to change as they like.
                "let mut {name}: {ty} = ranch::__rt::load_from::<{ty}>({dir:?}, {name:?}, {ty:?});\n",
                name = v.name,
                ty = v.ty,
                dir = dir.0.to_string_lossy()
            )
        })
        .collect();
    run_px(session, &code, None, PxRun::quiet())?;
    Ok(shipped)
}

impl Driver {
    /// An `%autopx` cell: a plain cell, as a `%%px` cell without flags.
    pub fn autopx_cell(&mut self, session: &mut dyn Session, code: &str) -> Outcome {
        let shown = run_px(session, code, None, PxRun::of(&Default::default()));
        self.keep_output(session.pool().ok().and_then(|mut p| p.take_transcript()));
        shown
    }
}

/// Runs `body` on the pool's ranks (`targets`, or all), after bringing in the session's
/// items, as `how` says.
pub fn run_px(session: &mut dyn Session, body: &str, targets: Option<&Targets>, how: PxRun) -> Outcome {
    let ranks = cell_ranks_for(session, body, targets, how.see.as_ref())?;
    run_on(session, body, &ranks, how)
}

/// The pool ranks a cell runs on, once its flags and body are known to fit the pool.
fn cell_ranks_for(session: &mut dyn Session, body: &str, targets: Option<&Targets>, see: Option<&See>) -> Result<Vec<usize>, Failure> {
    let mut pool = session.pool()?;
    let (n, out) = (pool.size(), pool.sitting_out());
    drop(pool);
    let ranks = cell_ranks(targets, n).map_err(usage)?;
    if targets.is_some()
        && let Some(r) = ranks.iter().find(|r| out.contains(r))
    {
        return Err(usage(format!(
            "--targets {r}: rank {r} was restarted alone and has none of the pool's variables, so it runs no cell \
             while the pool holds variables; `%ranch_restart` starts every rank afresh"
        )));
    }
    // A rank restarted alone sits the cells out: the others are all the pool has.
    let ranks: Vec<usize> = ranks.into_iter().filter(|r| !out.contains(r)).collect();
    if ranks.is_empty() {
        return Err(usage(
            "every rank of the cell was restarted alone and has none of the pool's variables: \
             `%ranch_restart` starts every rank afresh",
        ));
    }
    let live = n - out.len();
    if let Some(See::Ranks(seen)) = see
        && let Some(bad) = seen.iter().find(|&&r| r >= n)
    {
        return Err(usage(format!("--see {bad}: the pool has ranks 0..{}, there is no rank {bad}", n - 1)));
    }
    if ranks.len() < live && crate::cell_body::defines_variables(body) {
        return Err(usage(
            "a --targets cell cannot define variables with `let`: every rank must have the same variables. \
             Define them on every rank (a %%px cell without --targets), or wrap the cell in a block `{ ... }`",
        ));
    }
    Ok(ranks)
}

/// Runs `code` on the pool ranks `ranks`, after bringing in the session's items.
fn run_on(session: &mut dyn Session, code: &str, ranks: &[usize], how: PxRun) -> Outcome {
    let how = bring_items(session, how)?;
    session.pool()?.run(code, ranks, &how)
}

/// Brings the session's items into the pool before a cell; `how` with the time it took.
fn bring_items(session: &mut dyn Session, mut how: PxRun) -> Result<PxRun, Failure> {
    let started = std::time::Instant::now();
    let snapshot = session.snapshot()?;
    session.pool()?.bring_session_items(&snapshot)?;
    how.export = started.elapsed();
    Ok(how)
}

/// Binds `out` in the session to the values ranks `ranks` wrote to `dir`. Returns the
/// element type.
fn bind_pulled(session: &mut dyn Session, out: &Out, dir: &Path, ranks: &[usize], what: &str) -> Result<String, Failure> {
    let error = Failure::Pull;
    let mut ty = None;
    for &r in ranks {
        let path = ranch::__rt::result_path(dir, r);
        let bytes = std::fs::read(&path).map_err(|e| error(format!("rank {r} wrote no value for {what} ({e})")))?;
        let result = ranch::__rt::RankResult::decode(&bytes).map_err(|e| error(format!("rank {r}'s value is corrupt: {e}")))?;
        if result.value.is_none() {
            let t = session_type(&result.type_name);
            return Err(error(format!("{what} cannot be sent to the session: `{t}` is not Serialize + Deserialize. {SERDE_HINT}.")));
        }
        ty.get_or_insert(result.type_name);
    }
    let ty = match (&out.ty, ty) {
        (Some(t), _) => t.clone(),
        (None, Some(t)) => session_type(&t),
        (None, None) => return Err(error(format!("no rank wrote {what}"))),
    };
    session.bind(&out.name, &ty, dir, ranks).map_err(|e| {
        error(format!(
            "the ranks' values could not be bound as `{}: Vec<{ty}>` in the session: {}. \
             A type the pool defined must be defined in a session cell too (the pool sees the session's items).",
            out.name, e
        ))
    })?;
    Ok(ty)
}
