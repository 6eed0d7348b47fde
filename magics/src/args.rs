//! `%%ranch N [flags]`: the magic line, parsed with clap.

use crate::hosts::{LauncherKind, Placement, PlacementFlags};
use clap::{Parser, ValueEnum};

/// Most ranks one cell may ask for unless `RANCH_MAX_RANKS` says otherwise.
pub const DEFAULT_MAX_RANKS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnError {
    /// Stop every other rank as soon as one fails.
    Abort,
    /// Let the other ranks finish.
    Continue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum GroupOutputs {
    /// Stream lines as they come, each prefixed by its rank.
    #[default]
    Order,
    /// Show each rank's output together, in rank order, when the cell ends (ipyparallel's
    /// `engine`).
    #[value(alias = "engine")]
    Rank,
    /// Show every rank's stdout, then every rank's stderr, in rank order, when the cell ends
    /// (ipyparallel's `type`).
    Type,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GpuVisibility {
    /// Each rank sees only its GPU (CUDA_VISIBLE_DEVICES); `ranch::gpu()` is `Some(0)`.
    #[value(alias = "pinned")]
    Isolate,
    /// Every chosen GPU stays visible; `ranch::gpu()` is the rank's ordinal.
    All,
}

/// Which ranks' output to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum See {
    All,
    Ranks(Vec<usize>),
}

impl See {
    pub fn shows(&self, rank: usize) -> bool {
        match self {
            See::All => true,
            See::Ranks(r) => r.contains(&rank),
        }
    }
}

/// Which GPUs to pin ranks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gpus {
    Auto,
    None,
    Devices(Vec<usize>),
}

/// `--out NAME[: T]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub name: String,
    pub ty: Option<String>,
}

/// How a cell's ranks get their inputs, are stopped and are reported: the flags `%%ranch`
/// and `%%px` share, defined (and so documented) once.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct RunFlags {
    /// Session variables to copy into every rank first (%%ranch ships those the cell mentions anyway).
    #[arg(long, value_name = "A,B", value_delimiter = ',', value_parser = parse_ident)]
    pub share: Vec<String>,
    /// Bind the ranks' values as `NAME: Vec<T>` in the session, in rank order (`--out NAME: T` states T).
    #[arg(long, value_name = "NAME[: T]", value_parser = parse_out)]
    pub out: Option<Out>,
    /// When a rank fails: `abort` stops the others, `continue` lets them finish. Default: abort
    /// for %%ranch, continue for %%px (there abort stops the cell's ranks, and the pool's ranks
    /// lose their variables, as with an interrupt).
    #[arg(long, value_enum)]
    pub on_error: Option<OnError>,
    /// Stop the cell's ranks once they have run this many seconds (the build does not count; %%px: as an interrupt does).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<f64>,
    /// Ranks whose output to show: `all` or a list such as `0,2` (%%px: default, the pool's --see).
    #[arg(long, value_name = "all|R,R", value_parser = parse_see)]
    pub see: Option<See>,
    /// No live status table (rank, state, progress...) while the ranks run.
    #[arg(long)]
    pub quiet: bool,
    /// Show the build time and each rank's start and finish as a timeline chart and a summary.
    #[arg(long)]
    pub timing: bool,
    /// How to show the ranks' output.
    #[arg(long, value_enum, default_value = "order")]
    pub group_outputs: GroupOutputs,
    /// Run in the background (alias --noblock): the cell returns once its ranks start, with a job
    /// name; `%ranch_wait JOB` shows what they gave, `%ranch_cancel JOB` stops them.
    #[arg(long, visible_alias = "noblock")]
    pub bg: bool,
}

impl RunFlags {
    /// `--on-error`, or `default`.
    pub fn on_error_or(&self, default: OnError) -> OnError {
        self.on_error.unwrap_or(default)
    }

    /// `--see`, or `default`.
    pub fn see_or<'a>(&'a self, default: &'a See) -> &'a See {
        self.see.as_ref().unwrap_or(default)
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "%%ranch",
    no_binary_name = true,
    disable_version_flag = true,
    allow_negative_numbers = true,
    about = "Compile the cell once and run it on N ranked processes; merge their output and values.",
    after_help = "The rest of the cell is Rust, like a plain cell. `ranch::rank()` and \
`ranch::world_size()` tell each process where it is; the tail expression's values are gathered \
in rank order.\n\nExample:\n  %%ranch 4 --out squares\n  let r = ranch::rank();\n  r * r"
)]
pub struct RanchArgs {
    /// Number of ranks (processes) to run.
    #[arg(value_name = "N", value_parser = parse_ranks)]
    pub n: usize,
    #[command(flatten)]
    pub run: RunFlags,
    /// Evaluated in every rank before the body and dropped after it (setup/teardown).
    #[arg(long, value_name = "EXPR")]
    pub ctx: Option<String>,
    /// GPUs to pin ranks to: `auto` (all visible, if any), `none`, or a list such as `0,2`.
    #[arg(long, value_name = "auto|none|D,D", default_value = "auto", value_parser = parse_gpus)]
    pub gpus: Gpus,
    /// Whether a rank sees only its own GPU (`isolate`, alias `pinned`) or every chosen one
    /// (`all`: NCCL finds NVLink and peer-to-peer paths only between GPUs a rank can see).
    #[arg(long, value_enum, default_value = "all")]
    pub gpu_visibility: GpuVisibility,
    /// Form the process group before the body and tear it down after it.
    #[arg(long)]
    pub ddp: bool,
    /// Ranks in the whole group, when several kernels launch parts of it (default: N).
    #[arg(long, value_name = "W", value_parser = parse_ranks)]
    pub world_size: Option<usize>,
    /// Global rank of this kernel's first rank.
    #[arg(long, value_name = "B", default_value = "0")]
    pub base_rank: usize,
    /// Address of the group's rendezvous service (MASTER_ADDR; default 127.0.0.1, or this
    /// host's address toward the first of --hosts).
    #[arg(long, value_name = "A")]
    pub addr: Option<String>,
    /// Port of the group's rendezvous service (MASTER_PORT; default: a free port).
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// How collectives move data (default: shm on this host, hierarchical across hosts).
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// Seconds a collective waits for the other ranks before failing.
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub collective_timeout: Option<f64>,
    /// `%in_ddp` only: return every rank's value, not only rank B's.
    #[arg(long)]
    pub gather: bool,
    #[command(flatten)]
    pub place: PlacementFlags,
    /// The launcher and hosts, from the three flags above (filled by `parse`).
    #[arg(skip)]
    pub placement: Placement,
    /// The backend, from --backend and the placement (filled by `parse`).
    #[arg(skip)]
    pub collectives: Backend,
}

impl RanchArgs {
    /// `--on-error`: abort unless the cell says otherwise.
    pub fn on_error(&self) -> OnError {
        self.run.on_error_or(OnError::Abort)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Backend {
    /// Shared memory on this host (the default when every rank runs here).
    #[default]
    Shm,
    /// Flat MPI: every collective is MPI calls among all ranks (ranks started by mpirun or srun).
    Mpi,
    /// Shared memory inside each host and MPI between one leader per host (the default
    /// across hosts).
    Hierarchical,
}

impl Backend {
    /// The runtime's name for an MPI backend (`RANCH_BACKEND`); `None` for shared memory.
    pub fn mpi_name(self) -> Option<&'static str> {
        match self {
            Backend::Shm => None,
            Backend::Mpi => Some("mpi"),
            Backend::Hierarchical => Some("hierarchical"),
        }
    }
}

impl RanchArgs {
    /// Ranks in the whole group.
    pub fn world(&self) -> usize {
        self.world_size.unwrap_or(self.n)
    }

    /// An address of this host that the ranks can reach (see [`Placement::reach_addr`]).
    pub fn reach_addr(&self) -> Result<String, String> {
        self.placement.reach_addr()
    }

    /// Whether this kernel hosts the group's rendezvous (it launches global rank 0).
    pub fn hosts_group(&self) -> bool {
        self.base_rank == 0
    }

    fn check_group(&self) -> Result<(), String> {
        let world = self.world();
        if self.base_rank.checked_add(self.n).is_none_or(|end| end > world) {
            return Err(format!(
                "ranks {}..{} do not fit in a world of {world} (--base-rank {} + N {} > --world-size {world})",
                self.base_rank,
                self.base_rank.saturating_add(self.n - 1),
                self.base_rank,
                self.n
            ));
        }
        if world > self.n && self.port.is_none() {
            return Err(format!(
                "a group of {world} ranks launched by several kernels needs a known rendezvous port: add --port P to every kernel's magic"
            ));
        }
        Ok(())
    }
}

fn max_ranks() -> usize {
    std::env::var("RANCH_MAX_RANKS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_MAX_RANKS)
}

pub(crate) fn parse_ranks(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("N must be a whole number of ranks, got {s:?}"))?;
    let max = max_ranks();
    match n {
        0 => Err("N must be at least 1".into()),
        n if n > max => Err(format!("N = {n} is above the limit of {max} ranks (set RANCH_MAX_RANKS to raise it)")),
        n => Ok(n),
    }
}

pub(crate) fn parse_ident(s: &str) -> Result<String, String> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_alphanumeric() || c == '_');
    if ok { Ok(s.to_string()) } else { Err(format!("{s:?} is not a variable name")) }
}

pub(crate) fn parse_out(s: &str) -> Result<Out, String> {
    match s.split_once(':') {
        Some((name, ty)) => {
            let ty = ty.trim();
            if ty.is_empty() {
                return Err("expected a type after `:` (for example `--out res: f64`)".into());
            }
            Ok(Out { name: parse_ident(name)?, ty: Some(ty.to_string()) })
        }
        None => Ok(Out { name: parse_ident(s)?, ty: None }),
    }
}

/// Longest `--timeout`/`--collective-timeout`: a year. Longer ones overflow the clocks
/// they are added to.
pub const MAX_TIMEOUT_SECS: f64 = 365.0 * 24.0 * 3600.0;

pub(crate) fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t > 0.0 && t <= MAX_TIMEOUT_SECS => Ok(t),
        Ok(t) if t > MAX_TIMEOUT_SECS => Err(format!("SECS must be at most {MAX_TIMEOUT_SECS} (a year), got {s}")),
        _ => Err(format!("SECS must be a positive number of seconds, got {s:?}")),
    }
}

pub(crate) fn parse_list(s: &str, what: &str) -> Result<Vec<usize>, String> {
    let items: Result<Vec<usize>, _> = s.split(',').map(|p| p.trim().parse::<usize>()).collect();
    match items {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(format!("expected a comma-separated list of {what} numbers, got {s:?}")),
    }
}

pub(crate) fn parse_see(s: &str) -> Result<See, String> {
    if s == "all" { Ok(See::All) } else { parse_list(s, "rank").map(See::Ranks) }
}

pub(crate) fn parse_gpus(s: &str) -> Result<Gpus, String> {
    match s {
        "auto" => Ok(Gpus::Auto),
        "none" => Ok(Gpus::None),
        _ => parse_list(s, "GPU").map(Gpus::Devices),
    }
}

/// What the magic line asks for.
#[derive(Debug)]
pub enum Parsed {
    Run(RanchArgs),
    /// `%in_ddp`: the launch, and the expression every rank evaluates.
    InDdp(RanchArgs, String),
    /// `--help`: the usage text, shown as normal output.
    Help(String),
}

/// A bad magic line: the message says what is wrong and shows the usage.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Parses the arguments after `%%ranch` (the rest of the magic line).
pub fn parse(args: &str) -> Result<Parsed, UsageError> {
    let tokens = shlex::split(args).ok_or_else(|| UsageError(format!("unbalanced quotes in `%%ranch {args}`")))?;
    let tokens = join_out_type(tokens);
    match RanchArgs::try_parse_from(tokens) {
        Ok(mut a) => {
            a.check_group().map_err(UsageError)?;
            a.placement = placement(&a).map_err(UsageError)?;
            a.collectives = resolve_backend(&mut a).map_err(UsageError)?;
            if a.gather {
                return Err(UsageError("--gather is for %in_ddp; %%ranch always gathers every rank's value".into()));
            }
            // `--see` names global ranks: this kernel's are base..base + N.
            if let Some(See::Ranks(ranks)) = &a.run.see {
                let (first, last) = (a.base_rank, a.base_rank + a.n - 1);
                if let Some(bad) = ranks.iter().find(|&&r| r < first || r > last) {
                    return Err(UsageError(format!(
                        "--see {bad}: this launch runs ranks {first}..{last}, there is no rank {bad} among them"
                    )));
                }
            }
            Ok(Parsed::Run(a))
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => Ok(Parsed::Help(e.render().to_string())),
        Err(e) => Err(UsageError(e.render().to_string().trim_end().to_string())),
    }
}

/// The backend `--backend` asks for, or the default for where the ranks run; MPI needs
/// ranks that mpirun or srun start (`MPI_Init` talks to the launcher), so it implies mpirun
/// when no launcher is named.
fn resolve_backend(a: &mut RanchArgs) -> Result<Backend, String> {
    let p = &mut a.placement;
    let across_hosts = !p.hosts.is_empty() || p.launcher == LauncherKind::Srun;
    let backend = match a.backend {
        None if across_hosts => Backend::Hierarchical,
        None => Backend::Shm,
        Some(Backend::Shm) if !p.hosts.is_empty() => {
            return Err("--backend shm: shared memory does not reach other hosts; leave --backend out (hierarchical: \
                        shared memory inside each host, MPI between hosts) or use --backend mpi"
                .into());
        }
        Some(b) => b,
    };
    let Some(name) = backend.mpi_name() else { return Ok(backend) };
    if p.launcher == LauncherKind::Local {
        if a.place.launcher == Some(LauncherKind::Local) {
            return Err(format!("--backend {name} needs ranks started by mpirun or srun, not --launcher local"));
        }
        p.launcher = LauncherKind::Mpirun;
    }
    if a.world_size.is_some_and(|w| w != a.n) {
        return Err(format!(
            "--backend {name}: ranks launched by several kernels (--world-size) are not one MPI job; launch them all from one kernel"
        ));
    }
    Ok(backend)
}

/// The launcher and hosts the flags ask for (a hostfile is read here: a bad one is a
/// usage error before anything is built).
pub(crate) fn placement(a: &RanchArgs) -> Result<Placement, String> {
    a.place.resolve(a.n)
}

/// Flags that take a value (the others are switches), for finding where `%in_ddp`'s
/// expression starts.
const VALUE_FLAGS: &[&str] = &[
    "--share",
    "--out",
    "--ctx",
    "--on-error",
    "--timeout",
    "--group-outputs",
    "--see",
    "--gpus",
    "--gpu-visibility",
    "--world-size",
    "--base-rank",
    "--addr",
    "--port",
    "--backend",
    "--collective-timeout",
    "--launcher",
    "--hosts",
    "--hostfile",
];

/// `%in_ddp N [flags] EXPR`: the launch (always with a process group) and the expression.
pub fn parse_in_ddp(line: &str) -> Result<Parsed, UsageError> {
    let tokens = raw_tokens(line).ok_or_else(|| UsageError(format!("unbalanced quotes in `%in_ddp {line}`")))?;
    let mut i = 0;
    let mut expr_start = None;
    let mut seen_n = false;
    while i < tokens.len() {
        let (t, start) = (&tokens[i].0, tokens[i].1);
        if !seen_n && !t.starts_with("--") {
            // N: first, or after flags (`%in_ddp --gather 4 f()`, as the usage line has it).
            seen_n = true;
            i += 1;
            continue;
        }
        if t.starts_with("--") {
            let name = t.split('=').next().unwrap_or(t);
            i += if VALUE_FLAGS.contains(&name) && !t.contains('=') { 2 } else { 1 };
            if name == "--help" {
                expr_start = None;
                break;
            }
            continue;
        }
        expr_start = Some(start);
        break;
    }
    let (flags, expr) = match expr_start {
        Some(at) => (&line[..at], line[at..].trim()),
        None => (line, ""),
    };
    let gather = raw_tokens(flags).unwrap_or_default().iter().any(|(t, _)| t == "--gather");
    let flags_without_gather: Vec<String> =
        raw_tokens(flags).unwrap_or_default().into_iter().map(|(t, _)| t).filter(|t| t != "--gather").collect();
    let parsed = parse(&shlex::try_join(flags_without_gather.iter().map(String::as_str)).unwrap_or_default())
        .map_err(|e| UsageError(e.0.replace("%%ranch", "%in_ddp").replace("<N>", "<N> <EXPR>")))?;
    match parsed {
        Parsed::Help(h) => Ok(Parsed::Help(h.replace("%%ranch", "%in_ddp").replace("<N>", "<N> <EXPR>"))),
        Parsed::InDdp(..) => unreachable!("parse never returns InDdp"),
        Parsed::Run(mut a) => {
            if expr.is_empty() {
                return Err(UsageError("%in_ddp needs an expression to run, e.g. `%in_ddp 4 train(&cfg)`".into()));
            }
            a.gather = gather;
            a.ddp = true;
            Ok(Parsed::InDdp(a, expr.to_string()))
        }
    }
}

/// Shell-like tokens with their start offsets in `line` (quotes removed).
fn raw_tokens(line: &str) -> Option<Vec<(String, usize)>> {
    let mut out = Vec::new();
    let mut chars = line.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut token = String::new();
        let mut quote: Option<char> = None;
        while let Some(&(_, c)) = chars.peek() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => token.push(c),
                None if c == '"' || c == '\'' => quote = Some(c),
                None if c.is_whitespace() => break,
                None => token.push(c),
            }
            chars.next();
        }
        if quote.is_some() {
            return None;
        }
        out.push((token, start));
    }
    Some(out)
}

/// `--out res: (u8, String)` arrives as several tokens; `--out` takes them as one value:
/// the token after `NAME:`, and more until the type's brackets balance.
pub(crate) fn join_out_type(tokens: Vec<String>) -> Vec<String> {
    let depth = |s: &str| {
        s.chars().fold(0i32, |d, c| match c {
            '(' | '<' | '[' => d + 1,
            ')' | '>' | ']' => d - 1,
            _ => d,
        })
    };
    let mut out: Vec<String> = Vec::with_capacity(tokens.len());
    let mut iter = tokens.into_iter().peekable();
    while let Some(mut t) = iter.next() {
        if out.last().is_some_and(|p| p == "--out") {
            if t.ends_with(':')
                && let Some(ty) = iter.next_if(|n| !n.starts_with("--"))
            {
                t = format!("{t} {ty}");
            }
            while depth(&t) > 0 {
                match iter.next_if(|n| !n.starts_with("--")) {
                    Some(more) => t = format!("{t} {more}"),
                    None => break,
                }
            }
        }
        out.push(t);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &str) -> RanchArgs {
        match parse(s).unwrap() {
            Parsed::Run(a) => a,
            other => panic!("unexpected: {other:?}"),
        }
    }

    fn err(s: &str) -> String {
        parse(s).unwrap_err().0
    }

    #[test]
    fn defaults() {
        let a = run("4");
        assert_eq!(a.n, 4);
        assert_eq!(a.run.on_error, None);
        assert_eq!(a.run.group_outputs, GroupOutputs::Order);
        assert_eq!(a.run.see, None);
        assert_eq!(a.gpus, Gpus::Auto);
        assert_eq!(a.gpu_visibility, GpuVisibility::All);
        assert!(a.run.out.is_none() && a.run.share.is_empty() && a.run.timeout.is_none());
    }

    #[test]
    fn pinned_is_isolate() {
        assert_eq!(run("2 --gpu-visibility pinned").gpu_visibility, GpuVisibility::Isolate);
        assert_eq!(run("2 --gpu-visibility isolate").gpu_visibility, GpuVisibility::Isolate);
    }

    #[test]
    fn every_flag() {
        let a = run("8 --share a,b --out res: Vec<f64> --ctx 'setup(3)' --on-error continue --timeout 2.5 \
                     --group-outputs rank --see 0,2 --gpus none --gpu-visibility isolate");
        assert_eq!(a.run.share, ["a", "b"]);
        assert_eq!(a.run.out, Some(Out { name: "res".into(), ty: Some("Vec<f64>".into()) }));
        assert_eq!(a.ctx.as_deref(), Some("setup(3)"));
        assert_eq!(a.run.on_error, Some(OnError::Continue));
        assert_eq!(a.run.timeout, Some(2.5));
        assert_eq!(a.run.group_outputs, GroupOutputs::Rank);
        let engine = RanchArgs::try_parse_from(["4", "--group-outputs", "engine"]).unwrap();
        assert_eq!(engine.run.group_outputs, GroupOutputs::Rank, "ipyparallel's name");
        let by_type = RanchArgs::try_parse_from(["4", "--group-outputs", "type"]).unwrap();
        assert_eq!(by_type.run.group_outputs, GroupOutputs::Type);
        assert_eq!(a.run.see, Some(See::Ranks(vec![0, 2])));
        assert_eq!(a.gpus, Gpus::None);
        assert_eq!(a.gpu_visibility, GpuVisibility::Isolate);
    }

    #[test]
    fn out_type_forms() {
        assert_eq!(run("2 --out r:u8").run.out.unwrap().ty.as_deref(), Some("u8"));
        assert_eq!(run("2 --out 'r: (u8, String)'").run.out.unwrap().ty.as_deref(), Some("(u8, String)"));
        assert_eq!(run("2 --out r").run.out.unwrap().ty, None);
        assert_eq!(run("2 --out r: (u8, String) --see 0").run.out.unwrap().ty.as_deref(), Some("(u8, String)"));
        assert_eq!(run("2 --out r:HashMap<String, Vec<u8>>").run.out.unwrap().ty.as_deref(), Some("HashMap<String, Vec<u8>>"));
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        assert!(err("").contains("<N>"));
        assert!(err("four").contains("whole number"));
        assert!(err("-2").contains("whole number"));
        assert!(err("0").contains("at least 1"));
        assert!(err("257").contains("limit of 256"));
        assert!(err("2 --frobnicate").contains("--frobnicate"));
        assert!(err("2 --timeout -1").contains("positive"));
        assert!(err("2 --on-error maybe").contains("maybe"));
        assert!(err("2 --see 5").contains("no rank 5"));
        // Values that would overflow clocks or rank arithmetic.
        assert!(err("2 --timeout 1e300").contains("at most"));
        assert!(err("2 --timeout 1e19").contains("at most"));
        assert!(err("2 --collective-timeout inf").contains("SECS"));
        assert!(err("2 --timeout NaN").contains("SECS"));
        assert!(err("2 --base-rank 18446744073709551615 --world-size 4 --port 9").contains("do not fit"));
        // Global ranks: a kernel launching ranks 2..3 of 4 shows rank 2, not rank 0.
        assert!(err("2 --world-size 4 --base-rank 2 --port 9 --see 0").contains("ranks 2..3"));
        assert_eq!(run("2 --world-size 4 --base-rank 2 --port 9 --see 3").run.see, Some(See::Ranks(vec![3])));
        assert!(err("2 --share 1x").contains("not a variable name"));
        assert!(err("2 --out 'r:'").contains("expected a type"));
        assert!(err("2 --ctx 'unclosed").contains("quotes"));
    }

    #[test]
    fn group_flags() {
        let a = run("2 --ddp --world-size 4 --base-rank 2 --addr 127.0.0.1 --port 29500 --collective-timeout 5");
        assert!(a.ddp && a.world() == 4 && a.base_rank == 2 && a.port == Some(29500) && !a.hosts_group());
        assert!(err("2 --world-size 4 --base-rank 3 --port 1").contains("do not fit"));
        assert!(err("2 --world-size 4").contains("--port"));
        assert!(err("2 --gather").contains("%in_ddp"));
        let e = match parse_in_ddp("--gather") {
            Err(UsageError(e)) => e,
            other => panic!("{other:?}"),
        };
        assert!(e.contains("%in_ddp") && !e.contains("%%ranch"), "{e}");
        match parse_in_ddp("--gather 4 --timeout 5 f(2)") {
            Ok(Parsed::InDdp(a, expr)) => assert!(a.gather && a.n == 4 && expr == "f(2)", "{a:?} {expr}"),
            other => panic!("{other:?}"),
        }
        assert!(err("2 --backend nccl").contains("nccl"));
    }

    #[test]
    fn backend_follows_where_ranks_run() {
        assert_eq!(run("2").collectives, Backend::Shm);
        assert_eq!(run("2 --launcher mpirun").collectives, Backend::Shm, "one host: the kernel's shared memory");
        let across = run("4 --hosts a:2,b:2");
        assert_eq!((across.collectives, across.placement.launcher), (Backend::Hierarchical, LauncherKind::Mpirun));
        assert_eq!(run("4 --launcher srun").collectives, Backend::Hierarchical);
        assert_eq!(run("4 --hosts a:2,b:2 --backend mpi").collectives, Backend::Mpi);
        let forced = run("2 --backend mpi");
        assert_eq!((forced.collectives, forced.placement.launcher), (Backend::Mpi, LauncherKind::Mpirun), "MPI implies mpirun");
        assert_eq!(run("2 --backend hierarchical --launcher srun").placement.launcher, LauncherKind::Srun);
        assert!(err("4 --hosts a:2,b:2 --backend shm").contains("does not reach other hosts"));
        assert!(err("2 --backend mpi --launcher local").contains("not --launcher local"));
        assert!(err("2 --backend mpi --world-size 4 --port 9").contains("not one MPI job"));
    }

    #[test]
    fn in_ddp_splits_flags_from_the_expression() {
        match parse_in_ddp("4 --gather --timeout 30 train(&cfg, \"a b\")").unwrap() {
            Parsed::InDdp(a, expr) => {
                assert_eq!((a.n, a.gather, a.ddp, a.run.timeout), (4, true, true, Some(30.0)));
                assert_eq!(expr, "train(&cfg, \"a b\")");
            }
            other => panic!("{other:?}"),
        }
        match parse_in_ddp("2 ranch::rank() * 10").unwrap() {
            Parsed::InDdp(a, expr) => assert_eq!((a.n, a.gather, expr.as_str()), (2, false, "ranch::rank() * 10")),
            other => panic!("{other:?}"),
        }
        assert!(parse_in_ddp("4 --timeout 3").unwrap_err().0.contains("needs an expression"));
        assert!(parse_in_ddp("zero f()").unwrap_err().0.contains("whole number"));
        assert!(matches!(parse_in_ddp("--help").unwrap(), Parsed::Help(h) if h.contains("%in_ddp")));
    }

    #[test]
    fn help_is_not_an_error() {
        match parse("--help").unwrap() {
            Parsed::Help(h) => assert!(h.contains("--on-error") && h.contains("Usage")),
            other => panic!("expected help, got {other:?}"),
        }
    }
}
