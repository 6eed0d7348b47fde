//! `%%ranch N [flags]`: the magic line, parsed with clap.

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GroupOutputs {
    /// Stream lines as they come, each prefixed by its rank.
    Order,
    /// Show each rank's output together, in rank order, when the cell ends.
    Rank,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GpuVisibility {
    /// Each rank sees only its GPU (CUDA_VISIBLE_DEVICES); `ranch::gpu()` is `Some(0)`.
    Pinned,
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
    /// Session variables to ship to every rank (those the cell mentions are shipped anyway).
    #[arg(long, value_name = "A,B", value_delimiter = ',', value_parser = parse_ident)]
    pub share: Vec<String>,
    /// Bind the gathered values as `NAME: Vec<T>` in the session (`--out NAME: T` states T).
    #[arg(long, value_name = "NAME[: T]", value_parser = parse_out)]
    pub out: Option<Out>,
    /// Evaluated in every rank before the body and dropped after it (setup/teardown).
    #[arg(long, value_name = "EXPR")]
    pub ctx: Option<String>,
    /// What to do with the other ranks when one fails.
    #[arg(long, value_enum, default_value = "abort")]
    pub on_error: OnError,
    /// Stop every rank after this many seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<f64>,
    /// How to show the ranks' output.
    #[arg(long, value_enum, default_value = "order")]
    pub group_outputs: GroupOutputs,
    /// Ranks whose output to show: `all` or a list such as `0,2`.
    #[arg(long, value_name = "all|R,R", default_value = "all", value_parser = parse_see)]
    pub see: See,
    /// GPUs to pin ranks to: `auto` (all visible, if any), `none`, or a list such as `0,2`.
    #[arg(long, value_name = "auto|none|D,D", default_value = "auto", value_parser = parse_gpus)]
    pub gpus: Gpus,
    /// Whether a rank sees only its own GPU.
    #[arg(long, value_enum, default_value = "pinned")]
    pub gpu_visibility: GpuVisibility,
}

fn max_ranks() -> usize {
    std::env::var("RANCH_MAX_RANKS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_MAX_RANKS)
}

fn parse_ranks(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("N must be a whole number of ranks, got {s:?}"))?;
    let max = max_ranks();
    match n {
        0 => Err("N must be at least 1".into()),
        n if n > max => Err(format!("N = {n} is above the limit of {max} ranks (set RANCH_MAX_RANKS to raise it)")),
        n => Ok(n),
    }
}

fn parse_ident(s: &str) -> Result<String, String> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_alphanumeric() || c == '_');
    if ok { Ok(s.to_string()) } else { Err(format!("{s:?} is not a variable name")) }
}

fn parse_out(s: &str) -> Result<Out, String> {
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

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t > 0.0 && t.is_finite() => Ok(t),
        _ => Err(format!("SECS must be a positive number of seconds, got {s:?}")),
    }
}

fn parse_list(s: &str, what: &str) -> Result<Vec<usize>, String> {
    let items: Result<Vec<usize>, _> = s.split(',').map(|p| p.trim().parse::<usize>()).collect();
    match items {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(format!("expected a comma-separated list of {what} numbers, got {s:?}")),
    }
}

fn parse_see(s: &str) -> Result<See, String> {
    if s == "all" { Ok(See::All) } else { parse_list(s, "rank").map(See::Ranks) }
}

fn parse_gpus(s: &str) -> Result<Gpus, String> {
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
        Ok(a) => {
            if let (See::Ranks(ranks), n) = (&a.see, a.n) {
                if let Some(bad) = ranks.iter().find(|&&r| r >= n) {
                    return Err(UsageError(format!("--see {bad}: there is no rank {bad} among {n} ranks (0..{})", n - 1)));
                }
            }
            Ok(Parsed::Run(a))
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => Ok(Parsed::Help(e.render().to_string())),
        Err(e) => Err(UsageError(e.render().to_string().trim_end().to_string())),
    }
}

/// `--out res: (u8, String)` arrives as several tokens; `--out` takes them as one value:
/// the token after `NAME:`, and more until the type's brackets balance.
fn join_out_type(tokens: Vec<String>) -> Vec<String> {
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
            if t.ends_with(':') {
                if let Some(ty) = iter.next_if(|n| !n.starts_with("--")) {
                    t = format!("{t} {ty}");
                }
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
            Parsed::Help(h) => panic!("unexpected help: {h}"),
        }
    }

    fn err(s: &str) -> String {
        parse(s).unwrap_err().0
    }

    #[test]
    fn defaults() {
        let a = run("4");
        assert_eq!(a.n, 4);
        assert_eq!(a.on_error, OnError::Abort);
        assert_eq!(a.group_outputs, GroupOutputs::Order);
        assert_eq!(a.see, See::All);
        assert_eq!(a.gpus, Gpus::Auto);
        assert!(a.out.is_none() && a.share.is_empty() && a.timeout.is_none());
    }

    #[test]
    fn every_flag() {
        let a = run("8 --share a,b --out res: Vec<f64> --ctx 'setup(3)' --on-error continue --timeout 2.5 \
                     --group-outputs rank --see 0,2 --gpus none --gpu-visibility all");
        assert_eq!(a.share, ["a", "b"]);
        assert_eq!(a.out, Some(Out { name: "res".into(), ty: Some("Vec<f64>".into()) }));
        assert_eq!(a.ctx.as_deref(), Some("setup(3)"));
        assert_eq!(a.on_error, OnError::Continue);
        assert_eq!(a.timeout, Some(2.5));
        assert_eq!(a.group_outputs, GroupOutputs::Rank);
        assert_eq!(a.see, See::Ranks(vec![0, 2]));
        assert_eq!(a.gpus, Gpus::None);
        assert_eq!(a.gpu_visibility, GpuVisibility::All);
    }

    #[test]
    fn out_type_forms() {
        assert_eq!(run("2 --out r:u8").out.unwrap().ty.as_deref(), Some("u8"));
        assert_eq!(run("2 --out 'r: (u8, String)'").out.unwrap().ty.as_deref(), Some("(u8, String)"));
        assert_eq!(run("2 --out r").out.unwrap().ty, None);
        assert_eq!(run("2 --out r: (u8, String) --see 0").out.unwrap().ty.as_deref(), Some("(u8, String)"));
        assert_eq!(run("2 --out r:HashMap<String, Vec<u8>>").out.unwrap().ty.as_deref(), Some("HashMap<String, Vec<u8>>"));
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
        assert!(err("2 --share 1x").contains("not a variable name"));
        assert!(err("2 --out 'r:'").contains("expected a type"));
        assert!(err("2 --ctx 'unclosed").contains("quotes"));
    }

    #[test]
    fn help_is_not_an_error() {
        match parse("--help").unwrap() {
            Parsed::Help(h) => assert!(h.contains("--on-error") && h.contains("Usage")),
            Parsed::Run(_) => panic!("expected help"),
        }
    }
}
