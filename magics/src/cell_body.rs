//! A cell's statements as evcxr runs them: the Rust part after its `:command` lines, read
//! as the body of a fn with rust-analyzer's parser (`ra_ap_syntax`). The kernel uses it to
//! flush a cell's output; the driver to check and rewrite `%%px` cells.

use ra_ap_syntax::{AstNode, Edition, SourceFile, ast};

/// Byte offset where a cell's Rust code starts: evcxr accepts `:command` and `!shell` lines
/// (and blank or `//` lines) only before the first line of Rust.
pub fn rust_start(code: &str) -> usize {
    let mut offset = 0;
    for line in code.split_inclusive('\n') {
        let t = line.trim_start();
        let header = t.is_empty() || t.starts_with(':') || t.starts_with('!') || t.starts_with("//");
        if !header {
            break;
        }
        offset += line.len();
    }
    offset
}

const WRAP_PREFIX: &str = "fn __ranch_cell() {\n";

/// The cell's statements as rust-analyzer sees them when the Rust part is a fn body.
pub struct Body {
    /// (start, end) byte ranges in the Rust part, for statements that run code (not items).
    pub code_statements: Vec<(usize, usize)>,
    /// The tail expression's byte range and whether it is a `print!` call.
    pub tail: Option<(usize, usize, bool)>,
    /// Whether a statement is a `let` (which evcxr keeps as a variable).
    pub lets: bool,
}

/// The statements of `rust` (a cell's Rust part, see [`rust_start`]) as rust-analyzer sees
/// them in a fn body; `None` when it does not parse as one.
pub fn body(rust: &str) -> Option<Body> {
    let text = format!("{WRAP_PREFIX}{rust}\n}}");
    let file = SourceFile::parse(&text, Edition::Edition2024).tree();
    let func = file.syntax().descendants().find_map(ast::Fn::cast)?;
    let list = func.body()?.stmt_list()?;
    let shift = WRAP_PREFIX.len();
    let range = |n: &ra_ap_syntax::SyntaxNode| {
        let r = n.text_range();
        (usize::from(r.start()).saturating_sub(shift), usize::from(r.end()).saturating_sub(shift))
    };
    let lets = list.statements().any(|s| matches!(s, ast::Stmt::LetStmt(_)));
    let code_statements = list.statements().filter(|s| !matches!(s, ast::Stmt::Item(_))).map(|s| range(s.syntax())).collect();
    let tail = list.tail_expr().map(|e| {
        let (s, t) = range(e.syntax());
        let is_print = matches!(&e, ast::Expr::MacroExpr(m)
            if m.macro_call().and_then(|c| c.path()).is_some_and(|p| p.syntax().text() == "print"));
        (s, t, is_print)
    });
    Some(Body { code_statements, tail, lets })
}

/// Whether the cell defines variables (a top-level `let`), which evcxr then keeps.
pub fn defines_variables(code: &str) -> bool {
    let rust = &code[rust_start(code)..];
    body(rust).is_some_and(|b| b.lets)
}

/// The cell with its tail expression replaced by `wrap(tail)`; `None` when it has none.
pub fn wrap_tail(code: &str, wrap: impl Fn(&str) -> String) -> Option<String> {
    let start = rust_start(code);
    let (s, e, _) = body(&code[start..])?.tail?;
    let (s, e) = (start + s, start + e);
    Some(format!("{}{}{}", &code[..s], wrap(&code[s..e]), &code[e..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_come_first() {
        let code = ":dep serde\n// note\n\nlet x = 1;\n:vars";
        assert_eq!(&code[rust_start(code)..], "let x = 1;\n:vars");
    }

    #[test]
    fn top_level_lets_are_variables() {
        assert!(defines_variables(":dep x\nlet v = 1;\nv"));
        assert!(!defines_variables("{ let v = 1; v }"));
        assert!(!defines_variables("x.push(1); fn f() { let y = 2; }"));
    }

    #[test]
    fn tails_can_be_wrapped() {
        assert_eq!(wrap_tail("let a = 1;\na + 1\n", |t| format!("f({t})")).as_deref(), Some("let a = 1;\nf(a + 1)\n"));
        assert_eq!(wrap_tail("let a = 1;", |t| t.to_string()), None);
    }
}
