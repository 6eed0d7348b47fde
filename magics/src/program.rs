//! The rank program of a `%%ranch` cell: a bin crate holding the session's items and
//! dependencies, the shipped variables, and the cell body, with a `main` that reports the
//! tail value and panics to the kernel.

use crate::source::SessionItems;

/// What the notebook session contributes.
#[derive(Debug, Clone, Default)]
pub struct SessionSnapshot {
    pub items: SessionItems,
    /// `name = spec` lines of the session's dependencies (evcxr's `:show_deps`).
    pub deps: Vec<String>,
    /// evcxr's `[profile.dev]` section, verbatim.
    pub profile: String,
}

/// One variable shipped from the session: its name and its type as evcxr knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipped {
    pub name: String,
    pub ty: String,
}

#[derive(Debug, Clone, Default)]
pub struct CellProgram {
    /// The Rust of the cell, after the magic line and rank-only `:dep` lines.
    pub body: String,
    /// 1-based line of the cell where `body` starts.
    pub body_cell_line: usize,
    pub rank_deps: Vec<String>,
    pub shipped: Vec<Shipped>,
    pub ctx: Option<String>,
    pub uses_question_mark: bool,
    /// The body ends in a tail expression. Without one its value is `()`, stated in the
    /// program: a body that ends by diverging (`panic!(..);`, `std::process::exit(1);`)
    /// would otherwise have type `!` (edition 2024's fallback), which cannot be reported.
    pub has_tail: bool,
    /// Form the process group before the body and tear it down after it (`--ddp`).
    pub ddp: bool,
    /// Features of the `ranch` runtime the body needs (`cuda`, `nccl`).
    pub ranch_features: Vec<&'static str>,
    /// The body or the session's items may use the process group (see
    /// [`crate::source::names_group`]): where the group is MPI, it is started only then.
    pub uses_group: bool,
    /// Build the program with line tables, so that a backtrace's frames of the cell say their
    /// lines: only when backtraces are asked for ([`backtraces_asked`]), since they cost a
    /// bigger binary (std's debug info is then kept) and a slower link for every new cell.
    pub line_tables: bool,
}

/// The generated crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankProgram {
    pub cargo_toml: String,
    /// Features of the `ranch` runtime it is built with.
    pub ranch_features: Vec<&'static str>,
    /// Its code may use the process group ([`CellProgram::uses_group`]).
    pub uses_group: bool,
    pub main_rs: String,
    /// 1-based line of `main.rs` holding the body's first line.
    pub body_line: usize,
    /// Lines of the body.
    pub body_lines: usize,
    /// 1-based line of the cell where the body starts.
    pub body_cell_line: usize,
}

impl RankProgram {
    /// The cell line of a `main.rs` line, when it is one of the body's.
    pub fn cell_line(&self, main_line: usize) -> Option<usize> {
        (main_line >= self.body_line && main_line < self.body_line + self.body_lines)
            .then(|| main_line - self.body_line + self.body_cell_line)
    }
}

pub const PACKAGE: &str = "ranch_rank";

/// The session's `ranch = { path = ".." }` line with `features` added (other lines as
/// they are).
pub fn with_ranch_features(dep: &str, features: &[&str]) -> String {
    let is_ranch = dep.split('=').next().is_some_and(|name| name.trim() == "ranch");
    let Some(head) = dep.trim_end().strip_suffix('}').filter(|_| is_ranch && !features.is_empty()) else {
        return dep.to_string();
    };
    // The session's own `ranch` may name features already (`candle`, once the session has
    // candle): one list with both.
    // The `features` key itself: not `default-features`, nor "features" inside a path.
    let key = head.match_indices("features").map(|(at, _)| at).find(|&at| {
        let before = head[..at].trim_end().chars().last();
        let after = head[at + "features".len()..].trim_start();
        matches!(before, Some('{' | ',')) && after.starts_with('=') && !after.trim_start_matches('=').trim_start().starts_with('"')
    });
    let (head, mut list) = match key {
        Some(at) => {
            let (open, close) = (head[at..].find('[').map(|i| at + i), head[at..].find(']').map(|i| at + i));
            let (Some(open), Some(close)) = (open, close) else { return dep.to_string() };
            let had: Vec<String> = head[open + 1..close].split(',').map(|f| f.trim().to_string()).filter(|f| !f.is_empty()).collect();
            (format!("{}{}", &head[..at], &head[close + 1..]), had)
        }
        None => (head.to_string(), vec![]),
    };
    for f in features {
        let quoted = format!("\"{f}\"");
        if !list.contains(&quoted) {
            list.push(quoted);
        }
    }
    let head = head.trim_end().trim_end_matches(',').replace(", ,", ",");
    format!("{head}, features = [{}] }}", list.join(", "))
}

/// Whether the environment the ranks inherit asks for backtraces (std's `RUST_LIB_BACKTRACE`,
/// else `RUST_BACKTRACE`, set to anything but `0`).
pub fn backtraces_asked() -> bool {
    let asked = |name| std::env::var(name).ok().map(|v| v != "0");
    asked("RUST_LIB_BACKTRACE").or_else(|| asked("RUST_BACKTRACE")).unwrap_or(false)
}

pub fn generate(session: &SessionSnapshot, cell: &CellProgram) -> RankProgram {
    let mut toml = format!(
        "[package]\nname = \"{PACKAGE}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
         [[bin]]\nname = \"{PACKAGE}\"\npath = \"src/main.rs\"\n\n[dependencies]\n"
    );
    for dep in &session.deps {
        toml.push_str(&with_ranch_features(dep, &cell.ranch_features));
        toml.push('\n');
    }
    for dep in &cell.rank_deps {
        toml.push_str(dep);
        toml.push('\n');
    }
    toml.push('\n');
    toml.push_str(&session.profile);
    // Line tables for the rank program's own crate only (its dependencies keep evcxr's
    // flags, so they are shared with the session's builds): a backtrace's frames of the
    // cell then say which cell line they are at.
    if cell.line_tables {
        toml.push_str(&format!("\n[profile.dev.package.{PACKAGE}]\ndebug = \"line-tables-only\"\n"));
    }
    toml.push_str("\n[workspace]\n");

    let mut main = String::new();
    for attr in &session.items.inner_attrs {
        main.push_str(attr);
        main.push('\n');
    }
    // `main` is ours under another name, so a session `fn main` does not clash.
    main.push_str("#![no_main]\n#![allow(unused_imports, unused_mut, unused_variables, dead_code, unreachable_code)]\n");
    for item in &session.items.items {
        main.push_str(item);
        main.push('\n');
    }
    main.push_str(
        "\n#[unsafe(export_name = \"main\")]\nextern \"C\" fn __ranch_main(_argc: i32, _argv: *const *const u8) -> i32 {\n\
         \x20   ranch::__rt::init_rank();\n\
         \x20   match std::panic::catch_unwind(__ranch_cell) {\n\
         \x20       Ok(()) => {\n\
         \x20           ranch::__rt::finish_rank();\n\
         \x20           0\n\
         \x20       }\n",
    );
    main.push_str(&format!("        Err(_) => {},\n    }}\n}}\n\n", crate::ranks::supervise::PANIC_EXIT_CODE));
    main.push_str(
        "fn __ranch_cell() {\n\
         \x20   use ranch::__rt::{DebugNothing as _, DebugVia as _, ViaNothing as _, ViaSerialize as _};\n",
    );
    for v in &cell.shipped {
        let ty_literal = format!("{:?}", v.ty);
        match v.ty.strip_prefix('&') {
            // A borrowed value travels as its owned form and is borrowed again.
            Some(inner) => {
                let inner = inner.trim_start_matches("mut ").trim();
                main.push_str(&format!(
                    "    let __ranch_owned_{name}: <{inner} as ::std::borrow::ToOwned>::Owned = ranch::__rt::load(\"{name}\", {ty_literal});\n\
                     \x20   let mut {name}: {ty} = ::std::borrow::Borrow::borrow(&__ranch_owned_{name});\n",
                    name = v.name,
                    ty = v.ty,
                ));
            }
            None => main.push_str(&format!(
                "    let mut {name}: {ty} = ranch::__rt::load(\"{name}\", {ty_literal});\n",
                name = v.name,
                ty = v.ty
            )),
        }
    }
    if cell.ddp {
        main.push_str("    if let Err(e) = ranch::comm().barrier() { panic!(\"the process group did not form: {e}\"); }\n");
    }
    match &cell.ctx {
        Some(ctx) => main.push_str(&format!("    let __ranch_ctx = {ctx};\n")),
        None => main.push_str("    let __ranch_ctx = ();\n"),
    }
    let value_type = if cell.has_tail { "_" } else { "()" };
    if cell.uses_question_mark {
        main.push_str(&format!(
            "    let __ranch_value = match (|| -> ::std::result::Result<{value_type}, ::std::boxed::Box<dyn ::std::error::Error + Send + Sync>> {{ Ok({{\n",
        ));
    } else {
        main.push_str(&format!("    let __ranch_value: {value_type} = {{\n"));
    }
    let body_line = main.lines().count() + 1;
    main.push_str(&cell.body);
    if !cell.body.ends_with('\n') {
        main.push('\n');
    }
    if cell.uses_question_mark {
        main.push_str("    }) })() {\n        Ok(v) => v,\n        Err(e) => panic!(\"the cell returned an error: {e}\"),\n    };\n");
    } else {
        main.push_str("    };\n");
    }
    main.push_str("    drop(__ranch_ctx);\n");
    if cell.ddp {
        main.push_str("    if let Err(e) = ranch::comm().barrier() { panic!(\"the process group did not tear down cleanly: {e}\"); }\n");
    }
    main.push_str(
        "\
         \x20   let __ranch_ship = ranch::__rt::Ship(&__ranch_value);\n\
         \x20   ranch::__rt::emit(\n\
         \x20       ::std::any::type_name_of_val(&__ranch_value),\n\
         \x20       (&__ranch_ship).ranch_debug(),\n\
         \x20       (&__ranch_ship).ranch_encode(),\n\
         \x20   );\n}\n",
    );
    RankProgram {
        cargo_toml: toml,
        ranch_features: cell.ranch_features.clone(),
        uses_group: cell.uses_group,
        main_rs: main,
        body_line,
        body_lines: cell.body.lines().count().max(1),
        body_cell_line: cell.body_cell_line,
    }
}

/// A type name from the rank program (`std::any::type_name`) as the notebook session
/// would write it: the session's own items are at the crate root, and `alloc`/`core`
/// paths are reachable through `std`.
pub fn session_type_name(rank_type: &str) -> String {
    rank_type
        .replace(&format!("{PACKAGE}::"), "")
        .replace("alloc::vec::Vec", "Vec")
        .replace("alloc::string::String", "String")
        .replace("alloc::boxed::Box", "Box")
        .replace("core::option::Option", "Option")
        .replace("alloc::", "std::")
        .replace("core::", "std::")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(body: &str, shipped: Vec<Shipped>) -> RankProgram {
        let session = SessionSnapshot {
            items: SessionItems {
                inner_attrs: vec![],
                items: vec!["fn cube(x: u64) -> u64 { x * x * x }".into()],
                names: Default::default(),
            },
            deps: vec!["ranch = { path = \"/r\" }".into()],
            profile: "[profile.dev]\nopt-level = 2\n".into(),
        };
        let cell = CellProgram { body: body.into(), body_cell_line: 2, shipped, has_tail: true, ..Default::default() };
        generate(&session, &cell)
    }

    #[test]
    fn the_runtime_gets_the_features_the_body_needs() {
        let session = SessionSnapshot { deps: vec!["ranch = { path = \"/r\" }".into(), "rand = \"0.8\"".into()], ..Default::default() };
        let cell = CellProgram { body: "1".into(), ranch_features: vec!["nccl"], ..Default::default() };
        let toml = generate(&session, &cell).cargo_toml;
        assert!(toml.contains("ranch = { path = \"/r\", features = [\"nccl\"] }\nrand = \"0.8\"\n"), "{toml}");
        assert_eq!(with_ranch_features("ranchy = { path = \"/x\" }", &["cuda"]), "ranchy = { path = \"/x\" }");
        // A session whose runtime has candle already: one features list.
        let dep = "ranch = { path = \"/r\", features = [\"candle\"] }";
        assert_eq!(with_ranch_features(dep, &["cuda", "candle"]), "ranch = { path = \"/r\", features = [\"candle\", \"cuda\"] }");
        assert_eq!(with_ranch_features(dep, &[]), dep);
        // `default-features`, and "features" in a path, are not the features list.
        let dep = "ranch = { path = \"/x/features\", default-features = false }";
        assert_eq!(
            with_ranch_features(dep, &["candle"]),
            "ranch = { path = \"/x/features\", default-features = false, features = [\"candle\"] }"
        );
    }

    #[test]
    fn body_lines_map_back_to_the_cell() {
        let p = program("let r = ranch::rank();\ncube(r as u64)", vec![]);
        let lines: Vec<&str> = p.main_rs.lines().collect();
        assert_eq!(lines[p.body_line - 1], "let r = ranch::rank();");
        assert_eq!(p.cell_line(p.body_line + 1), Some(3));
        assert_eq!(p.cell_line(p.body_line + 2), None);
        assert!(p.cargo_toml.contains("ranch = { path = \"/r\" }\n"));
        assert!(p.cargo_toml.contains("[profile.dev]\nopt-level = 2\n"));
        assert!(!p.cargo_toml.contains("debug = "), "no line tables unless backtraces are asked for: {}", p.cargo_toml);
        let lines = generate(&SessionSnapshot::default(), &CellProgram { body: "1".into(), line_tables: true, ..Default::default() });
        assert!(lines.cargo_toml.contains("[profile.dev.package.ranch_rank]\ndebug = \"line-tables-only\"\n"), "{}", lines.cargo_toml);
    }

    #[test]
    fn a_body_without_tail_has_a_unit_value() {
        let mut p = program("panic!(\"always\");", vec![]);
        assert!(p.main_rs.contains("let __ranch_value: _ = {"));
        let session = SessionSnapshot::default();
        let cell = CellProgram { body: "panic!(\"always\");".into(), has_tail: false, ..Default::default() };
        p = generate(&session, &cell);
        assert!(p.main_rs.contains("let __ranch_value: () = {"), "{}", p.main_rs);
    }

    #[test]
    fn rank_type_names_become_session_type_names() {
        assert_eq!(session_type_name("alloc::vec::Vec<f64>"), "Vec<f64>");
        assert_eq!(session_type_name("(usize, alloc::string::String)"), "(usize, String)");
        assert_eq!(session_type_name("ranch_rank::Point"), "Point");
        assert_eq!(session_type_name("core::option::Option<ranch_rank::geo::P>"), "Option<geo::P>");
    }

    #[test]
    fn shipped_variables_are_loaded_with_their_types() {
        let p = program(
            "s.len() + v.len()",
            vec![Shipped { name: "v".into(), ty: "Vec<f64>".into() }, Shipped { name: "s".into(), ty: "&str".into() }],
        );
        assert!(p.main_rs.contains("let mut v: Vec<f64> = ranch::__rt::load(\"v\", \"Vec<f64>\");"));
        assert!(p.main_rs.contains("<str as ::std::borrow::ToOwned>::Owned"));
        assert!(p.main_rs.contains("let mut s: &str = ::std::borrow::Borrow::borrow(&__ranch_owned_s);"));
    }
}
