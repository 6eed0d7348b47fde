//! Reading Rust source with rust-analyzer's parser: the session's items out of the user's
//! crate, and what a cell body refers to.

use ra_ap_syntax::{AstNode, Edition, SourceFile, SyntaxKind, ast, ast::HasAttrs, ast::HasModuleItem, ast::HasName};
use std::collections::BTreeSet;

/// The session's crate attributes and items, as the session last compiled them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionItems {
    /// Inner attributes (`#![...]`), which must stay at the top of a crate.
    pub inner_attrs: Vec<String>,
    /// Items (fns, types, impls, `use`s, macros), verbatim.
    pub items: Vec<String>,
    /// Names of the items (a user `fn main` would clash with the rank program's).
    pub names: BTreeSet<String>,
}

/// Splits the user's crate (evcxr's `lib.rs` less what evcxr generates, which the kernel
/// removes) into its attributes and items.
pub fn session_items(crate_src: &str) -> SessionItems {
    let file = SourceFile::parse(crate_src, Edition::Edition2024).tree();
    let mut out = SessionItems { inner_attrs: file.attrs().map(|a| a.syntax().text().to_string()).collect(), ..Default::default() };
    for item in file.items() {
        if let Some(name) = item_name(&item) {
            out.names.insert(name);
        }
        out.items.push(item.syntax().text().to_string());
    }
    out
}

fn item_name(item: &ast::Item) -> Option<String> {
    let n = match item {
        ast::Item::Fn(x) => x.name(),
        ast::Item::Struct(x) => x.name(),
        ast::Item::Enum(x) => x.name(),
        ast::Item::Union(x) => x.name(),
        ast::Item::Trait(x) => x.name(),
        ast::Item::TypeAlias(x) => x.name(),
        ast::Item::Const(x) => x.name(),
        ast::Item::Static(x) => x.name(),
        ast::Item::Module(x) => x.name(),
        ast::Item::MacroRules(x) => x.name(),
        _ => None,
    };
    n.map(|n| n.text().to_string())
}

/// What the rank program needs to know about a cell body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodyFacts {
    /// Every identifier the body mentions (a superset of the variables it uses).
    pub idents: BTreeSet<String>,
    /// Names the body declares with `let` before using them.
    pub locals: BTreeSet<String>,
    /// The body uses `?`, so it must run inside a function returning `Result`.
    pub uses_question_mark: bool,
    /// The body ends in a tail expression (its value is the rank's result).
    pub has_tail: bool,
}

/// Features of the `ranch` runtime a body needs: `cuda` when it names `ranch::cuda` (`nccl`
/// when it also names `nccl`), and `candle` when it names `ranch` and `candle` (a path or a
/// `use ranch::{candle, ..}`).
pub fn ranch_features(body: &str) -> Vec<&'static str> {
    let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let idents = body_facts(body).idents;
    let mut features = vec![];
    if compact.contains("ranch::cuda") {
        features.push(if idents.contains("nccl") { "nccl" } else { "cuda" });
    }
    if idents.contains("ranch") && idents.contains("candle") {
        features.push("candle");
    }
    features
}

/// Names of the runtime's parts that use the launch's process group. `map` is one too, but
/// only as `ranch::map` (iterators have a `map` of their own).
const GROUP_NAMES: [&str; 3] = ["comm", "candle", "nccl"];

/// Whether `code` (a cell's body and the session's items it runs with) may use the process
/// group: a launch whose code names no part of the runtime that does starts no group. A name
/// is enough (a fn of the user's called `comm` starts a group it does not need: only time is
/// lost); a use that names none of these cannot be written, and fails with a clear error.
pub fn names_group(code: &str) -> bool {
    let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let idents = body_facts(code).idents;
    GROUP_NAMES.iter().any(|n| idents.contains(*n))
        || compact.contains("ranch::map")
        || compact.contains("useranch::*")
        || (compact.contains("useranch::{") && idents.contains("map"))
}

pub fn body_facts(body: &str) -> BodyFacts {
    let text = format!("fn __ranch_body() {{\n{body}\n}}");
    let file = SourceFile::parse(&text, Edition::Edition2024).tree();
    let mut facts = BodyFacts::default();
    for token in file.syntax().descendants_with_tokens().filter_map(|e| e.into_token()) {
        match token.kind() {
            SyntaxKind::IDENT => {
                facts.idents.insert(token.text().to_string());
            }
            SyntaxKind::QUESTION => facts.uses_question_mark = true,
            _ => {}
        }
    }
    // A name the body binds with `let` before any use of it is the body's own, not the
    // session's (e.g. `let v = ...; v.len()` when the session also has a `v`).
    let mut first_use: std::collections::HashMap<String, ra_ap_syntax::TextSize> = Default::default();
    for token in file.syntax().descendants_with_tokens().filter_map(|e| e.into_token()) {
        if token.kind() == SyntaxKind::IDENT {
            first_use.entry(token.text().to_string()).or_insert(token.text_range().start());
        }
    }
    for pat in file.syntax().descendants().filter_map(ast::IdentPat::cast) {
        let Some(name) = pat.name() else { continue };
        let in_let = pat.syntax().ancestors().any(|a| a.kind() == SyntaxKind::LET_STMT);
        if in_let && first_use.get(name.text()) == Some(&name.syntax().text_range().start()) {
            facts.locals.insert(name.text().to_string());
        }
    }
    // Macro bodies are token trees: `println!("{x}")` mentions `x` only inside a string.
    for token in file.syntax().descendants_with_tokens().filter_map(|e| e.into_token()) {
        if token.kind() == SyntaxKind::STRING {
            for name in format_args_names(token.text()) {
                facts.idents.insert(name);
            }
        }
    }
    facts.has_tail = file
        .syntax()
        .descendants()
        .find_map(ast::Fn::cast)
        .and_then(|f| f.body())
        .and_then(|b| b.stmt_list())
        .and_then(|l| l.tail_expr())
        .is_some();
    facts
}

/// Names used as inline format arguments: `{x}`, `{x:?}`, `{x:>8}`.
fn format_args_names(literal: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = literal;
    while let Some(open) = rest.find('{') {
        rest = &rest[open + 1..];
        if rest.starts_with('{') {
            rest = &rest[1..];
            continue;
        }
        let end = rest.find(['}', ':']).unwrap_or(rest.len());
        let name = rest[..end].trim();
        if !name.is_empty()
            && name.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_alphanumeric() || c == '_')
        {
            names.push(name.to_string());
        }
    }
    names
}

/// A `%%ranch` cell body split into its leading `:dep` lines (rank-only dependencies, as
/// `name = spec` lines for Cargo.toml) and the Rust that follows. Also returns the 1-based
/// line of the cell body where the Rust starts.
pub fn split_rank_deps(body: &str) -> Result<(Vec<String>, String, usize), String> {
    let mut deps = Vec::new();
    let mut skipped_lines = 0;
    let mut offset = 0;
    for line in body.split_inclusive('\n') {
        let t = line.trim();
        if let Some(spec) = t.strip_prefix(":dep ") {
            deps.push(dep_line(spec.trim())?);
        } else if !(t.is_empty() || t.starts_with("//")) {
            break;
        }
        skipped_lines += 1;
        offset += line.len();
    }
    Ok((deps, body[offset..].to_string(), skipped_lines + 1))
}

/// `:dep serde = { version = "1" }` → `serde = { version = "1" }`; `:dep regex` → `regex = "*"`.
fn dep_line(spec: &str) -> Result<String, String> {
    let (name, value) = match spec.split_once('=') {
        Some((n, v)) => (n.trim(), v.trim().to_string()),
        None => (spec, "\"*\"".to_string()),
    };
    let valid = !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-');
    if !valid || value.is_empty() {
        return Err(format!("cannot read `:dep {spec}`: write `:dep name = \"version\"` or `:dep name = {{ ... }}`"));
    }
    Ok(format!("{name} = {value}"))
}

/// The `[profile.dev]` section of the session's Cargo.toml, verbatim: the rank program must be
/// built with the same profile for cargo to reuse the session's compiled dependencies.
pub fn profile_section(cargo_toml: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in cargo_toml.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            inside = t == "[profile.dev]";
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_items_are_the_crates_attributes_and_named_items() {
        let s = session_items("#![feature(test)]\nfn cube(x: usize) -> usize { x * x * x }\n#[derive(Debug)] struct Cfg;\nuse std::fmt;");
        assert_eq!(s.inner_attrs, ["#![feature(test)]"]);
        assert_eq!(s.items.len(), 3);
        assert!(s.items[1].starts_with("#[derive(Debug)]"), "attributes stay with their item");
        assert!(s.names.contains("cube") && s.names.contains("Cfg") && !s.names.contains("fmt"));
    }

    #[test]
    fn cuda_bodies_turn_the_runtime_features_on() {
        assert!(ranch_features("ranch::rank()").is_empty());
        assert!(!names_group("let r = ranch::rank(); let v: Vec<u32> = (0..4).map(|x| x + r as u32).collect();"));
        assert!(names_group("let m = ranch::map(&v, |x| x + 1)?;"));
        assert!(names_group("use ranch::{map, rank};\nlet m = map(&v, |x| x + 1)?;"));
        assert!(names_group("use ranch::*;\nlet m = something(&v);"));
        assert!(names_group("use ranch::comm as c;\nc().barrier()?;"));
        assert!(names_group("fn step() { let c = ranch::comm(); }"));
        assert!(names_group("macro_rules! sync { () => { ranch::comm().barrier().unwrap() } }"));
        assert_eq!(ranch_features("let g = ranch::cuda::context()?;"), ["cuda"]);
        assert_eq!(ranch_features("let n = ranch :: cuda :: nccl()?;"), ["nccl"]);
        assert_eq!(ranch_features("use ranch::cuda;\nlet n = cuda::nccl()?;"), ["nccl"]);
        assert_eq!(ranch_features("let y = ranch::candle::all_reduce_sum(&x)?;"), ["candle"]);
        assert_eq!(ranch_features("use ranch::{candle, rank};"), ["candle"]);
        assert!(ranch_features("let t = candle_core::Tensor::zeros(3, F32, &dev)?; ranch::rank()").is_empty());
        assert_eq!(ranch_features("ranch::cuda::context()?; ranch :: candle::replicate(&w)?"), ["cuda", "candle"]);
    }

    #[test]
    fn body_facts_find_identifiers_question_marks_and_tails() {
        let f = body_facts("let r = ranch::rank();\nprintln!(\"{data:?} {}\", cfg.steps);\nr * scale");
        for name in ["r", "ranch", "cfg", "scale", "data"] {
            assert!(f.idents.contains(name), "{name} in {:?}", f.idents);
        }
        assert!(f.has_tail && !f.uses_question_mark);
        assert!(f.locals.contains("r") && !f.locals.contains("scale"));
        let h = body_facts("let y = x + 1;\nlet x = 2;\nx + y");
        assert!(!h.locals.contains("x"), "x is used before the body binds it");
        let g = body_facts("let x: u8 = \"5\".parse()?;");
        assert!(g.uses_question_mark && !g.has_tail);
    }

    #[test]
    fn rank_deps_come_first() {
        let (deps, rust, line) = split_rank_deps(":dep rand = \"0.8\"\n:dep itoa\n\nlet x = 1;\n:dep late").unwrap();
        assert_eq!(deps, ["rand = \"0.8\"", "itoa = \"*\""]);
        assert_eq!(rust, "let x = 1;\n:dep late");
        assert_eq!(line, 4);
        assert!(split_rank_deps(":dep = 1").is_err());
    }

    #[test]
    fn profile_is_copied_verbatim() {
        let toml = "[package]\nname=\"ctx\"\n[profile.dev]\nopt-level = 2\ndebug = false\n[dependencies]\nx = \"1\"\n";
        assert_eq!(profile_section(toml), "[profile.dev]\nopt-level = 2\ndebug = false\n");
    }
}
