//! Every magic ranch has, in one table: its name, whether it is a line (`%x`) or a cell
//! (`%%x`) magic, what it takes, a one-line summary, and the parser of its arguments.
//! Dispatch, `:help`, completion of magic names and the unknown-magic error all read the
//! table, so a new magic cannot be left out of any of them.
//!
//! Parsing a cell gives a typed [`Call`]; the kernel owns the handlers (the pool's magics
//! need its evcxr session) and matches every `Call` exhaustively.

use crate::args::{self, RanchArgs};
use crate::driver::ranch_cell::{RanchLaunch, Shows};
use crate::driver::{Failure, jobs, usage};
use crate::pool::{self, PoolArgs, PullArgs, PushArgs, PxArgs};

/// A line magic takes the rest of the cell as its arguments; a cell magic takes the rest of
/// its first line, and the lines after it are its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Line,
    Cell,
}

impl Kind {
    pub fn sigil(self) -> &'static str {
        match self {
            Kind::Line => "%",
            Kind::Cell => "%%",
        }
    }
}

/// One row of the table.
pub struct Magic {
    /// Without its `%` or `%%`.
    pub name: &'static str,
    pub kind: Kind,
    /// What follows the name, as `:help` shows it.
    pub synopsis: &'static str,
    /// One line, as `:help` and `--help` show it.
    pub summary: &'static str,
    parse: fn(Invocation<'_>) -> Result<Call<'_>, Failure>,
}

impl Magic {
    /// The name as it is typed: `%%ranch`, `%ranch_start`.
    pub fn invocation(&self) -> String {
        format!("{}{}", self.kind.sigil(), self.name)
    }

    fn is(&self, word: &str) -> bool {
        word.strip_prefix(self.kind.sigil()) == Some(self.name)
    }
}

/// The table. `:help` lists the magics in this order.
pub const MAGICS: &[Magic] = &[
    Magic {
        name: "ranch",
        kind: Kind::Cell,
        synopsis: "N [flags]",
        summary: "run the cell in N ranked processes; merge output and values",
        parse: parse_ranch,
    },
    Magic {
        name: "in_ddp",
        kind: Kind::Line,
        synopsis: "N [flags] EXPR",
        summary: "run a call inside a process group (data-parallel)",
        parse: parse_in_ddp,
    },
    Magic {
        name: "ranch_start",
        kind: Kind::Line,
        synopsis: "N [flags]",
        summary: "start a pool of N persistent ranks",
        parse: |i| helped(pool::parse(i.args.trim()), |a| Call::RanchStart(Box::new(a))),
    },
    Magic {
        name: "px",
        kind: Kind::Cell,
        synopsis: "[flags]",
        summary: "run the cell on the pool's ranks (they keep their variables)",
        parse: |i| helped(pool::parse_px(i.args), |args| Call::Px { args, body: i.body }),
    },
    Magic { name: "px", kind: Kind::Line, synopsis: "[flags] EXPR", summary: "run a line on the pool's ranks", parse: parse_px_line },
    Magic {
        name: "autopx",
        kind: Kind::Line,
        synopsis: "",
        summary: "run every following cell on the pool (again to stop)",
        parse: |i| no_args(i, Call::Autopx),
    },
    Magic {
        name: "px_push",
        kind: Kind::Line,
        synopsis: "a, b",
        summary: "copy session variables into every rank",
        parse: |i| helped(pool::parse_push(i.args), Call::PxPush),
    },
    Magic {
        name: "px_pull",
        kind: Kind::Line,
        synopsis: "NAME [flags]",
        summary: "gather a rank variable into the session as a Vec",
        parse: |i| helped(pool::parse_pull(i.args), Call::PxPull),
    },
    Magic {
        name: "ranch_status",
        kind: Kind::Line,
        synopsis: "",
        summary: "the pool's ranks, or that it is still starting",
        parse: |i| no_args(i, Call::RanchStatus),
    },
    Magic {
        name: "ranch_stop",
        kind: Kind::Line,
        synopsis: "",
        summary: "stop the pool (its ranks' variables are lost)",
        parse: |i| no_args(i, Call::RanchStop),
    },
    Magic {
        name: "ranch_restart",
        kind: Kind::Line,
        synopsis: "[--targets R,R]",
        summary: "restart the pool's ranks: all, as %ranch_start started them (variables lost), or some alone",
        parse: |i| helped(pool::parse_restart(i.args), Call::RanchRestart),
    },
    Magic {
        name: "ranch_jobs",
        kind: Kind::Line,
        synopsis: "",
        summary: "the background jobs (`--bg`): cell, ranks, state, elapsed",
        parse: |i| no_args(i, Call::RanchJobs),
    },
    Magic {
        name: "ranch_wait",
        kind: Kind::Line,
        synopsis: "[JOB] [--timeout S]",
        summary: "wait for a background job; show what its cell would have and bind its --out",
        parse: |i| helped(jobs::parse_wait(i.args), Call::RanchWait),
    },
    Magic {
        name: "ranch_output",
        kind: Kind::Line,
        synopsis: "[JOB] [--group-outputs order|rank|type] [--see R,R]",
        summary: "show again what the last cell's (or a job's) ranks wrote, grouped another way",
        parse: |i| helped(jobs::parse_output(i.args), Call::RanchOutput),
    },
    Magic {
        name: "ranch_cancel",
        kind: Kind::Line,
        synopsis: "JOB",
        summary: "stop a background job's ranks",
        parse: |i| helped(jobs::parse_cancel(i.args), Call::RanchCancel),
    },
    Magic {
        name: "ranch_share",
        kind: Kind::Line,
        synopsis: "NAME",
        summary: "make the session's NAME: Vec<T> of numbers a shared array that ranks map without copying",
        parse: parse_share,
    },
    Magic { name: "ranch_gpus", kind: Kind::Line, synopsis: "", summary: "the machine's GPUs", parse: |i| no_args(i, Call::RanchGpus) },
    Magic { name: "ranch_clean", kind: Kind::Line, synopsis: "[--all]", summary: "free the disk ranch uses", parse: parse_clean },
];

/// A magic's cell, split as its kind says.
#[derive(Clone, Copy)]
pub struct Invocation<'a> {
    pub magic: &'static Magic,
    /// The whole cell, from the magic's name on.
    pub cell: &'a str,
    /// A line magic: the rest of the cell; a cell magic: the rest of its first line.
    pub args: &'a str,
    /// A cell magic's lines after the first (a line magic has none).
    pub body: &'a str,
}

impl<'a> Invocation<'a> {
    /// The magic's arguments, parsed: what the kernel runs, or a usage error.
    pub fn parse(self) -> Result<Call<'a>, Failure> {
        (self.magic.parse)(self)
    }
}

/// A magic's cell, parsed: what its handler gets.
#[derive(Debug)]
pub enum Call<'a> {
    /// `--help`: shown as the cell's output; nothing runs.
    Help(String),
    /// `%%ranch` and `%in_ddp`.
    Ranch(Box<RanchLaunch<'a>>),
    RanchStart(Box<PoolArgs>),
    /// `%%px` and `%px`.
    Px {
        args: PxArgs,
        body: &'a str,
    },
    PxPush(PushArgs),
    PxPull(PullArgs),
    Autopx,
    RanchStatus,
    RanchStop,
    RanchRestart(pool::RestartArgs),
    RanchJobs,
    RanchWait(jobs::WaitArgs),
    RanchCancel(jobs::CancelArgs),
    RanchOutput(jobs::OutputArgs),
    RanchShare(String),
    RanchGpus,
    RanchClean {
        all: bool,
    },
}

/// What a cell is, as far as magics go.
pub enum Lookup<'a> {
    /// Not a magic: Rust code or an evcxr command.
    NotMagic,
    Found(Invocation<'a>),
    /// A `%` word that names no magic: the usage error says the closest one.
    Unknown(Failure),
}

/// Looks the cell's first word up in the table (Rust code never starts with `%`).
pub fn lookup(code: &str) -> Lookup<'_> {
    let cell = code.trim_start();
    if !cell.starts_with('%') {
        return Lookup::NotMagic;
    }
    let word_end = cell.find(char::is_whitespace).unwrap_or(cell.len());
    let (word, rest) = cell.split_at(word_end);
    let Some(magic) = MAGICS.iter().find(|m| m.is(word)) else { return Lookup::Unknown(unknown_magic(word)) };
    let (args, body) = match magic.kind {
        Kind::Line => (rest, ""),
        Kind::Cell => rest.split_once('\n').unwrap_or((rest, "")),
    };
    Lookup::Found(Invocation { magic, cell, args, body })
}

/// The magic `word` most likely meant: a name it begins (a name cut short, the commonest
/// slip), else the name nearest by edit distance (a swapped pair of letters counts once), if
/// it is near enough to be what was meant.
pub fn closest(word: &str) -> Option<String> {
    if word.trim_start_matches('%').is_empty() {
        return None;
    }
    let nearest = |names: &mut dyn Iterator<Item = String>| names.map(|n| (strsim::osa_distance(word, &n), n)).min();
    let mut begun = MAGICS.iter().map(Magic::invocation).filter(|n| n.starts_with(word));
    if let Some((_, name)) = nearest(&mut begun) {
        return Some(name);
    }
    let (distance, name) = nearest(&mut MAGICS.iter().map(Magic::invocation))?;
    (distance <= (word.chars().count() / 3).max(2)).then_some(name)
}

fn unknown_magic(word: &str) -> Failure {
    let guess = closest(word).map(|name| format!(" did you mean `{name}`?")).unwrap_or_default();
    let names: Vec<String> = MAGICS.iter().map(|m| format!("`{}`", m.invocation())).collect();
    usage(format!("unknown magic `{word}`:{guess} ranch's magics are {} (`:help` says what each does)", names.join(", ")))
}

/// The magics as `:help` lists them, one a line, then `more` (usage, summary) aligned with them.
pub fn listing(more: &[(&str, &str)]) -> String {
    let magics = MAGICS.iter().map(|m| (format!("{} {}", m.invocation(), m.synopsis).trim_end().to_string(), m.summary));
    let rows: Vec<(String, &str)> = magics.chain(more.iter().map(|&(u, s)| (u.to_string(), s))).collect();
    let width = rows.iter().map(|(usage, _)| usage.len()).max().unwrap_or(0) + 2;
    let mut text = String::from("ranch's magics (each takes --help):\n");
    for (usage, summary) in &rows {
        text.push_str(&format!("  {usage:width$}{summary}\n"));
    }
    // The guide has no published address yet: it is read where ranch was installed from.
    text.push_str(
        "The guide (every magic, the runtime API, clusters, GPUs, troubleshooting): docs/ in ranch's \
         repository; `mdbook serve docs` there shows it as a site.\n",
    );
    text
}

/// The guide's magics reference (`docs/src/magics.md`): every magic's synopsis, summary and
/// `--help` text, as the kernel shows them. A test keeps the file equal to this.
pub fn reference_markdown() -> String {
    let mut md = String::from(
        "# Magics reference\n\n\
         Generated from the kernel's magic table (`magics/src/magic_table.rs`): what `:help` and\n\
         each magic's `--help` print. Regenerate with\n\
         `RANCH_BLESS=1 cargo test -p ranch-magics magics_reference`.\n",
    );
    for m in MAGICS {
        let help = match (Invocation { magic: m, cell: "", args: " --help", body: "" }).parse() {
            Ok(Call::Help(text)) => text,
            _ => String::new(),
        };
        md.push_str(&format!("\n## `{} {}`\n\n{}.\n", m.invocation(), m.synopsis, m.summary).replace(" `\n", "`\n"));
        if !help.trim().is_empty() {
            md.push_str(&format!("\n```text\n{}\n```\n", help.trim_end()));
        }
    }
    md
}

/// Magic names completing the `%` word the cell starts with, when the cursor is in it.
#[derive(Debug, PartialEq, Eq)]
pub struct NameCompletion {
    pub matches: Vec<String>,
    /// Byte offsets of the word in the cell.
    pub start: usize,
    pub end: usize,
}

/// Completes a magic's name at the start of a cell (`%ra`, `%%`); `None` anywhere else.
pub fn complete_name(code: &str, cursor: usize) -> Option<NameCompletion> {
    let before = code.get(..cursor)?;
    let start = before.len() - before.trim_start().len();
    let typed = &before[start..];
    if !typed.starts_with('%') || typed.contains(char::is_whitespace) {
        return None;
    }
    let after = &code[cursor..];
    let end = cursor + after.find(char::is_whitespace).unwrap_or(after.len());
    let mut matches: Vec<String> = MAGICS.iter().map(Magic::invocation).filter(|name| name.starts_with(typed)).collect();
    matches.sort();
    matches.dedup();
    Some(NameCompletion { matches, start, end })
}

/// A clap-parsed magic's call, or its help.
fn helped<'a, T>(parsed: Result<pool::Parsed<T>, String>, call: impl FnOnce(T) -> Call<'a>) -> Result<Call<'a>, Failure> {
    match parsed.map_err(usage)? {
        pool::Parsed::Run(args) => Ok(call(args)),
        pool::Parsed::Help(text) => Ok(Call::Help(text)),
    }
}

fn parse_ranch(i: Invocation<'_>) -> Result<Call<'_>, Failure> {
    let args = match args::parse(i.args).map_err(|e| usage(e.0))? {
        args::Parsed::Run(args) => args,
        args::Parsed::Help(text) => return Ok(Call::Help(text)),
        args::Parsed::InDdp(..) => unreachable!("args::parse never returns InDdp"),
    };
    Ok(launch(args, i.body.to_string(), Shows::EveryRank, i))
}

fn parse_in_ddp(i: Invocation<'_>) -> Result<Call<'_>, Failure> {
    // A line magic: the rest of the cell is the expression.
    match args::parse_in_ddp(&i.args.replace('\n', " ")).map_err(|e| usage(e.0))? {
        args::Parsed::InDdp(args, expr) => {
            // `EXPR;` runs the call and shows nothing (as in IPython); `--out` still binds.
            let (expr, shows) = match expr.trim_end().strip_suffix(';') {
                Some(call) => (call.to_string(), Shows::Nothing),
                None if args.gather => (expr, Shows::EveryRank),
                None => (expr, Shows::FirstRank),
            };
            Ok(launch(args, expr, shows, i))
        }
        args::Parsed::Help(text) => Ok(Call::Help(text)),
        args::Parsed::Run(_) => unreachable!("args::parse_in_ddp returns InDdp"),
    }
}

fn launch(args: RanchArgs, body: String, shows: Shows, i: Invocation<'_>) -> Call<'_> {
    Call::Ranch(Box::new(RanchLaunch { args, body, shows, cell: i.cell }))
}

/// `%px [flags] EXPR`: the flags, then the expression (the rest of the cell).
fn parse_px_line(i: Invocation<'_>) -> Result<Call<'_>, Failure> {
    let (flags, body) = pool::split_px_line(i.args);
    match helped(pool::parse_px(flags), |args| Call::Px { args, body })? {
        Call::Px { .. } if body.is_empty() => Err(usage("%px needs an expression to run on the pool's ranks, e.g. `%px ranch::rank()`")),
        call => Ok(call),
    }
}

/// A magic without arguments: `--help` shows its summary, anything else is a usage error.
fn no_args(i: Invocation<'_>, call: Call<'static>) -> Result<Call<'static>, Failure> {
    let name = i.magic.invocation();
    match i.args.trim() {
        "" => Ok(call),
        "--help" | "-h" => Ok(Call::Help(format!("Usage: {name}\n\n{}.\n", capitalised(i.magic.summary)))),
        given => Err(usage(format!("{name} takes no arguments, got `{given}`; nothing was done ({name}: {})", i.magic.summary))),
    }
}

fn capitalised(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

const CLEAN_HELP: &str = "Usage: %ranch_clean [--all]\n\n\
Frees disk space ranch uses: this session's built rank programs, and runtime crates of other\n\
ranch versions that no kernel uses. With --all, also the build directories no running kernel\n\
uses and this kernel's own (its dependencies are compiled again when next needed).\n";

const SHARE_HELP: &str = "Usage: %ranch_share NAME\n\nMake the session's `NAME: Vec<T>` (T: a number type, or an array of them) a \
`ranch::shared::Array<T>` named NAME in shared memory: ranks on this host map it without copying (a cell naming NAME \
sends its name; in a rank, `ranch::shared::Array::<T>::attach(\"NAME\")`), and what they write is seen in the \
session. Ranks that write must write disjoint parts, or take turns separated by a barrier.\n\nExample:\n  \
let grid: Vec<f64> = vec![0.0; 1 << 20];\n  %ranch_share grid\n";

fn parse_share(i: Invocation<'_>) -> Result<Call<'_>, Failure> {
    match i.args.split_whitespace().collect::<Vec<_>>()[..] {
        ["--help"] | ["-h"] => Ok(Call::Help(SHARE_HELP.into())),
        [name] => Ok(Call::RanchShare(args::parse_ident(name).map_err(usage)?)),
        _ => Err(usage(format!("%ranch_share takes one variable's name, got `{}`\n\n{SHARE_HELP}", i.args.trim()))),
    }
}

fn parse_clean(i: Invocation<'_>) -> Result<Call<'_>, Failure> {
    match i.args.split_whitespace().collect::<Vec<_>>()[..] {
        [] => Ok(Call::RanchClean { all: false }),
        ["--all"] => Ok(Call::RanchClean { all: true }),
        ["--help"] | ["-h"] => Ok(Call::Help(CLEAN_HELP.into())),
        _ => Err(usage(format!("%ranch_clean takes only --all, got `{}`\n\n{CLEAN_HELP}", i.args.trim()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(code: &str) -> Invocation<'_> {
        match lookup(code) {
            Lookup::Found(i) => i,
            Lookup::NotMagic => panic!("not a magic: {code}"),
            Lookup::Unknown(e) => panic!("unknown: {}", e),
        }
    }

    fn parsed(code: &str) -> Call<'_> {
        found(code).parse().unwrap_or_else(|e| panic!("{code}: {}", e))
    }

    fn unknown(code: &str) -> String {
        match lookup(code) {
            Lookup::Unknown(e) => {
                assert_eq!(e.ename(), "UsageError");
                e.to_string()
            }
            _ => panic!("not an unknown magic: {code}"),
        }
    }

    #[test]
    fn every_name_is_typed_once_and_has_no_sigil_of_its_own() {
        let mut names: Vec<String> = MAGICS.iter().map(Magic::invocation).collect();
        assert!(MAGICS.iter().all(|m| !m.name.starts_with('%') && !m.name.contains(char::is_whitespace)));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), MAGICS.len(), "{names:?}");
    }

    #[test]
    fn the_first_word_picks_the_magic_and_its_kind_splits_the_cell() {
        let i = found("  %%ranch 2 --timeout 5\nlet x = 1;\nx");
        assert_eq!((i.magic.invocation().as_str(), i.args, i.body), ("%%ranch", " 2 --timeout 5", "let x = 1;\nx"));
        assert!(i.cell.starts_with("%%ranch 2"));
        let i = found("%in_ddp 2 f(\n1)");
        assert_eq!((i.magic.invocation().as_str(), i.args, i.body), ("%in_ddp", " 2 f(\n1)", ""));
        assert_eq!(found("%%px\nx").magic.kind, Kind::Cell);
        assert_eq!(found("%px x").magic.kind, Kind::Line);
        assert_eq!(found("%ranch_stop").args, "");
        assert!(matches!(lookup("let x = 1;"), Lookup::NotMagic));
        assert!(matches!(lookup(":help"), Lookup::NotMagic));
        // Names match whole words, not prefixes.
        unknown("%%ranch4\n1");
        unknown("%ranch_cleanup");
        unknown("%pxfoo 1");
    }

    #[test]
    fn a_misspelt_magic_suggests_the_closest_name_and_lists_them_all() {
        let said = unknown("%ranch_stat");
        assert!(said.starts_with("unknown magic `%ranch_stat`: did you mean `%ranch_status`?"), "{said}");
        assert!(MAGICS.iter().all(|m| said.contains(&format!("`{}`", m.invocation()))), "{said}");
        assert!(unknown("%%rnach 4\n1").contains("did you mean `%%ranch`?"));
        assert!(unknown("%%ranch_start 4").contains("did you mean `%ranch_start`?"));
        assert!(unknown("%%pxx\n1").contains("did you mean `%%px`?"));
        assert_eq!(closest("%autopix").as_deref(), Some("%autopx"));
        assert_eq!(closest("%ranch_sto").as_deref(), Some("%ranch_stop"));
        assert_eq!(closest("%timeit"), None);
        assert_eq!(closest("%%"), None);
        assert!(!unknown("%timeit 1").contains("did you mean"));
    }

    #[test]
    fn the_listing_has_every_magic_with_its_synopsis_and_summary() {
        let text = listing(&[("NAME?", "its documentation")]);
        for m in MAGICS {
            let line = text.lines().find(|l| l.trim_start().starts_with(&format!("{} ", m.invocation()))).unwrap_or_else(|| {
                panic!("{} missing from\n{text}", m.invocation());
            });
            assert!(line.contains(m.synopsis) && line.ends_with(m.summary), "{line}");
        }
        assert!(text.contains("%%ranch N [flags]") && text.contains("%ranch_start N [flags]"), "{text}");
        // Every summary starts in one column, the extra rows' too.
        let columns: Vec<usize> = MAGICS.iter().map(|m| m.summary).chain(["its documentation"]).map(|s| text.find(s).unwrap()).collect();
        let starts: Vec<usize> = columns.iter().map(|&at| at - text[..at].rfind('\n').unwrap() - 1).collect();
        assert!(starts.iter().all(|&c| c == starts[0]), "{text}");
    }

    #[test]
    fn names_complete_at_the_start_of_a_cell_only() {
        let c = complete_name("%ranch_st", 9).unwrap();
        assert_eq!(
            c,
            NameCompletion { matches: vec!["%ranch_start".into(), "%ranch_status".into(), "%ranch_stop".into()], start: 0, end: 9 }
        );
        assert_eq!(complete_name("%%", 2).unwrap().matches, ["%%px", "%%ranch"]);
        assert_eq!(complete_name("%", 1).unwrap().matches.len(), MAGICS.len());
        // The cursor inside the word: the whole word is replaced.
        let c = complete_name("\n  %ra_x 4", 6).unwrap();
        assert_eq!((c.start, c.end), (3, 8));
        assert!(c.matches.iter().all(|m| m.starts_with("%ra")) && !c.matches.is_empty());
        assert_eq!(complete_name("%zz", 3).unwrap().matches, Vec::<String>::new());
        assert_eq!(complete_name("let x = 1; x.le", 15), None);
        assert_eq!(complete_name("%ranch_start 4 --g", 18), None);
        assert_eq!(complete_name("%%px\nx.le", 9), None);
        assert_eq!(complete_name("%é", 2), None, "not a character boundary");
    }

    #[test]
    fn px_cells_and_lines() {
        let body = |code| match parsed(code) {
            Call::Px { args, body } => (args.targets.map(|t| t.0), body),
            other => panic!("not a run: {other:?}"),
        };
        assert_eq!(body("%%px\nlet x = 1;"), (None, "let x = 1;"));
        assert_eq!(body("%%px --targets 1,0\nx"), (Some(vec![0, 1]), "x"));
        assert_eq!(body("%px ranch::rank()"), (None, "ranch::rank()"));
        assert_eq!(body("%px --targets 2 x.len()"), (Some(vec![2]), "x.len()"));
        assert!(found("%%px --bogus\n1").parse().is_err());
        assert!(found("%px").parse().unwrap_err().to_string().contains("needs an expression"));
        assert!(matches!(parsed("%px --help"), Call::Help(h) if h.contains("--targets")));
    }

    #[test]
    fn ranch_cells_and_in_ddp_lines_parse_to_one_launch() {
        let Call::Ranch(l) = parsed("%%ranch 2 --timeout 5\nlet a = 1;\na") else { panic!() };
        assert_eq!((l.args.n, l.body.as_str(), l.shows), (2, "let a = 1;\na", Shows::EveryRank));
        let Call::Ranch(l) = parsed("%in_ddp 3 train(\n&cfg)") else { panic!() };
        assert_eq!((l.args.n, l.body.as_str(), l.shows, l.cell), (3, "train( &cfg)", Shows::FirstRank, "%in_ddp 3 train(\n&cfg)"));
        let Call::Ranch(l) = parsed("%in_ddp 3 --gather f()") else { panic!() };
        assert_eq!(l.shows, Shows::EveryRank);
        let Call::Ranch(l) = parsed("%in_ddp 3 --out p train(&cfg);") else { panic!() };
        assert_eq!((l.body.as_str(), l.shows), ("train(&cfg)", Shows::Nothing));
        assert!(matches!(parsed("%%ranch --help\n1"), Call::Help(h) if h.contains("Usage")));
        assert!(matches!(parsed("%in_ddp --help"), Call::Help(h) if h.contains("%in_ddp")));
        assert_eq!(found("%%ranch 0\n1").parse().unwrap_err().ename(), "UsageError");
    }

    #[test]
    fn magics_without_arguments_refuse_them_and_explain_themselves() {
        assert!(matches!(parsed("%ranch_stop"), Call::RanchStop));
        assert!(matches!(parsed("%ranch_restart"), Call::RanchRestart(a) if a.targets.is_none()));
        assert!(matches!(parsed("%ranch_restart --targets 2,0"), Call::RanchRestart(a) if a.targets == Some(pool::Targets(vec![0, 2]))));
        assert!(matches!(parsed("%ranch_jobs"), Call::RanchJobs));
        assert!(
            matches!(parsed("%ranch_wait job-2 --timeout 5"), Call::RanchWait(a) if a.job.as_deref() == Some("job-2") && a.timeout == Some(5.0))
        );
        assert!(found("%ranch_cancel").parse().is_err(), "a job to cancel is required");
        assert!(matches!(parsed("%autopx\n"), Call::Autopx));
        let e = found("%ranch_status now").parse().unwrap_err();
        assert!(e.to_string().starts_with("%ranch_status takes no arguments, got `now`"), "{}", e.to_string());
        assert!(matches!(parsed("%ranch_gpus --help"), Call::Help(h) if h == "Usage: %ranch_gpus\n\nThe machine's GPUs.\n"));
        assert!(matches!(parsed("%ranch_clean --all"), Call::RanchClean { all: true }));
        assert!(matches!(parsed("%ranch_clean"), Call::RanchClean { all: false }));
        assert!(found("%ranch_clean --everything").parse().unwrap_err().to_string().contains("takes only --all"));
        assert!(matches!(parsed("%px_push a, b"), Call::PxPush(a) if a.names == ["a", "b"]));
        assert!(matches!(parsed("%px_pull w --out ws"), Call::PxPull(a) if a.out.as_deref() == Some("ws")));
        assert!(matches!(parsed("%ranch_start 2"), Call::RanchStart(a) if a.n == 2));
    }

    #[test]
    fn magics_reference_in_the_guide_is_the_tables() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/src/magics.md");
        let generated = reference_markdown();
        if std::env::var_os("RANCH_BLESS").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let saved = std::fs::read_to_string(path).unwrap_or_default();
        assert!(saved == generated, "docs/src/magics.md is not the table's: run RANCH_BLESS=1 cargo test -p ranch-magics magics_reference");
        for m in MAGICS {
            assert!(saved.contains(&format!("## `{}", m.invocation())), "{}", m.invocation());
        }
    }
}
