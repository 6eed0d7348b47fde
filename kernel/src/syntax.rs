//! What the kernel needs to know about a cell's Rust text, read with rust-analyzer's parser
//! (`ra_ap_syntax`, already in evcxr's dependency graph).

use crate::interpreter::Completeness;
use ra_ap_syntax::{AstNode, Edition, SourceFile, SyntaxKind};
use ranch_magics::cell_body::body;
pub use ranch_magics::cell_body::rust_start;

/// Limits on what the kernel parses. rust-analyzer's parser (used here, by evcxr and by the
/// magics) takes time quadratic in how deeply code nests (braces, prefix operators, chains
/// of binary operators, closures, generic arguments: 4000 levels of `Vec<` take 0.6 s,
/// 100 000 would take minutes), recurses once per level, and its trees are dropped on a
/// thread of its own whose default stack overflows (killing the kernel) beyond about 1500
/// levels. Real code stays far below [`MAX_NESTING`]; the token count bounds the rest.
pub const MAX_NESTING: usize = 500;
pub const MAX_PARSE_TOKENS: usize = 250_000;
/// Stack of the interpreter thread, where evcxr also analyses the cell (reserved address
/// space; pages are only used as needed).
pub const PARSE_STACK: usize = 256 << 20;

/// An upper bound of how deeply `code` nests, from rust-analyzer's lexer (which does not
/// recurse): bracket depth plus the operators and keywords of the innermost segment (a
/// segment ends at `;`, `,` or a bracket).
pub fn nesting(code: &str) -> usize {
    use SyntaxKind as K;
    let lexed = ra_ap_parser::LexedStr::new(Edition::Edition2024, code);
    let (mut depth, mut ops, mut worst) = (0usize, 0usize, 0usize);
    for i in 0..lexed.len() {
        let kind = lexed.kind(i);
        match kind {
            K::L_PAREN | K::L_BRACK | K::L_CURLY => {
                depth += 1;
                ops = 0;
            }
            K::R_PAREN | K::R_BRACK | K::R_CURLY => {
                depth = depth.saturating_sub(1);
                ops = 0;
            }
            K::SEMICOLON | K::COMMA => ops = 0,
            // Paths and field/method access build flat trees.
            K::DOT | K::COLON2 => {}
            k if k.is_punct() || k.is_keyword(Edition::Edition2024) => ops += 1,
            _ => {}
        }
        worst = worst.max(depth + ops);
    }
    worst
}

/// Why a cell must not be parsed, if it must not.
pub fn refuse_to_parse(code: &str) -> Option<String> {
    let tokens = ra_ap_parser::LexedStr::new(Edition::Edition2024, code).len();
    if tokens > MAX_PARSE_TOKENS {
        return Some(format!("the cell has {tokens} tokens; ranch accepts up to {MAX_PARSE_TOKENS} (load big data from a file instead)"));
    }
    let depth = nesting(code);
    (depth > MAX_NESTING).then(|| {
        format!("the cell nests {depth} levels deep (brackets, or a run of {MAX_NESTING}+ operators); ranch accepts up to {MAX_NESTING}")
    })
}

/// Flushes the cell's stdout. Rust's stdout is line-buffered inside the cell's copy of std,
/// so without it a trailing `print!` would only show up in some later cell.
// No leading `::`: evcxr would read a line starting with `:` as one of its commands.
pub const FLUSH: &str = "std::io::Write::flush(&mut std::io::stdout()).ok();";

/// Where [`with_stdout_flush`] put text that was not in the user's cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insertion {
    /// 1-based line of the cell.
    pub line: usize,
    /// 1-based column (in chars) before which the text was inserted.
    pub column: usize,
    /// Inserted chars on that line.
    pub len: usize,
}

/// A cell ready for evcxr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub code: String,
    /// Text the kernel inserted inside a line of the user's cell, if any.
    pub inserted: Option<Insertion>,
    /// Whether the cell's last rich output is its value (`execute_result`): true when it
    /// ends in a tail expression, or is only `:commands`.
    pub shows_value: bool,
}

/// Returns the cell with a stdout flush after its last statement (and before its tail
/// expression).
pub fn with_stdout_flush(code: &str) -> Prepared {
    let start = rust_start(code);
    let rust = &code[start..];
    let unchanged = |shows_value| Prepared { code: code.to_string(), inserted: None, shows_value };
    if rust.trim().is_empty() {
        return unchanged(true);
    }
    let Some(b) = body(rust) else { return unchanged(true) };
    match b.tail {
        Some((_, end, true)) => {
            // `print!(..)` as the tail is unit: end it and flush after it.
            let at = start + end;
            let code = format!("{}; {FLUSH}{}", &code[..at], &code[at..]);
            Prepared { code, inserted: None, shows_value: false }
        }
        Some((s, _, false)) => {
            let at = start + s;
            let text = format!("{FLUSH} ");
            let line = code[..at].matches('\n').count() + 1;
            let column = code[..at].rsplit('\n').next().unwrap_or("").chars().count() + 1;
            let inserted = Some(Insertion { line, column, len: text.chars().count() });
            Prepared { code: format!("{}{text}{}", &code[..at], &code[at..]), inserted, shows_value: true }
        }
        None if !b.code_statements.is_empty() => Prepared { code: format!("{code}\n{FLUSH}"), inserted: None, shows_value: false },
        None => unchanged(false),
    }
}

/// Jupyter's `is_complete`: `incomplete` while brackets, strings or block comments are open,
/// `invalid` when a bracket closes what was never opened.
pub fn completeness(code: &str) -> Completeness {
    let rust = &code[rust_start(code)..];
    if rust.trim().is_empty() {
        return Completeness::Complete;
    }
    if refuse_to_parse(rust).is_some() {
        return Completeness::Unknown;
    }
    parse_completeness(rust)
}

fn parse_completeness(rust: &str) -> Completeness {
    let parse = SourceFile::parse(rust, Edition::Edition2024);
    let unterminated = parse.errors().iter().any(|e| e.to_string().contains("Missing trailing"));
    let mut open = Vec::new();
    for token in parse.tree().syntax().descendants_with_tokens().filter_map(|e| e.into_token()) {
        let kind = token.kind();
        match kind {
            SyntaxKind::L_PAREN | SyntaxKind::L_BRACK | SyntaxKind::L_CURLY => open.push(kind),
            SyntaxKind::R_PAREN | SyntaxKind::R_BRACK | SyntaxKind::R_CURLY => {
                let want = match kind {
                    SyntaxKind::R_PAREN => SyntaxKind::L_PAREN,
                    SyntaxKind::R_BRACK => SyntaxKind::L_BRACK,
                    _ => SyntaxKind::L_CURLY,
                };
                if open.pop() != Some(want) {
                    return Completeness::Invalid;
                }
            }
            _ => {}
        }
    }
    if unterminated || !open.is_empty() {
        Completeness::Incomplete { indent: "    ".repeat(open.len().min(8)) }
    } else {
        Completeness::Complete
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_counts_brackets_and_operator_runs() {
        assert_eq!(nesting("let x = 1;"), 2);
        assert_eq!(nesting("f(a, b)[0]"), 1);
        assert_eq!(nesting(&"{".repeat(600)), 600);
        assert!(nesting(&format!("let x = {}1;", "-".repeat(600))) > MAX_NESTING);
        assert!(nesting(&format!("let x: {}u8{} = 1;", "Vec<".repeat(300), ">".repeat(300))) > MAX_NESTING);
        assert!(nesting(&format!("let x = 1{};", "+1".repeat(600))) > MAX_NESTING);
        assert!(nesting(&format!("let x = {}1;", "|| ".repeat(600))) > MAX_NESTING);
        // Long but flat code is fine: many statements, long literals, method chains, strings.
        assert!(nesting(&"let x = a.b().c::<u8>();\n".repeat(10_000)) < 10);
        assert!(nesting(&format!("let v = [{}];", "-1, ".repeat(100_000))) < 10);
        assert!(nesting(&format!("let s = \"{}\";", "{((".repeat(10_000))) < 10);
    }

    #[test]
    fn deep_code_is_not_parsed() {
        assert_eq!(completeness(&"{".repeat(100_000)), Completeness::Unknown);
        assert_eq!(completeness(&"{".repeat(400)), Completeness::Incomplete { indent: "    ".repeat(8) });
        assert!(refuse_to_parse(&"{".repeat(501)).unwrap().contains("501 levels"));
        assert!(refuse_to_parse(&"x;".repeat(MAX_PARSE_TOKENS)).unwrap().contains("tokens"));
    }

    #[test]
    fn completeness_of_brackets_strings_and_comments() {
        assert_eq!(completeness("let x = 1;"), Completeness::Complete);
        assert_eq!(completeness(":dep serde"), Completeness::Complete);
        assert!(matches!(completeness("fn f() {"), Completeness::Incomplete { .. }));
        assert!(matches!(completeness("let v = vec![1,"), Completeness::Incomplete { .. }));
        assert!(matches!(completeness("let s = \"abc"), Completeness::Incomplete { .. }));
        assert!(matches!(completeness("/* open"), Completeness::Incomplete { .. }));
        assert_eq!(completeness("let x = 1; }"), Completeness::Invalid);
        assert_eq!(completeness("foo(]"), Completeness::Invalid);
        assert_eq!(completeness("let s = \"{\";"), Completeness::Complete);
    }

    #[test]
    fn flush_goes_before_the_tail() {
        let p = with_stdout_flush("let x = 2;\nx * 3");
        assert_eq!(p.code, format!("let x = 2;\n{FLUSH} x * 3"));
        assert_eq!(p.inserted, Some(Insertion { line: 2, column: 1, len: FLUSH.len() + 1 }));
        assert!(p.shows_value);
    }

    #[test]
    fn flush_goes_after_statements() {
        let p = with_stdout_flush(":dep x\nprint!(\"a\");");
        assert_eq!(p.code, format!(":dep x\nprint!(\"a\");\n{FLUSH}"));
        assert_eq!(p.inserted, None);
        assert!(!p.shows_value);
    }

    #[test]
    fn trailing_print_is_flushed() {
        let p = with_stdout_flush("print!(\"a\")");
        assert_eq!(p.code, format!("print!(\"a\"); {FLUSH}"));
        assert!(!p.shows_value);
    }

    #[test]
    fn items_and_commands_are_left_alone() {
        for cell in ["fn f() {}\nstruct S;", ":vars", ""] {
            assert_eq!(with_stdout_flush(cell).code, cell);
        }
        assert!(with_stdout_flush(":vars").shows_value);
        assert!(!with_stdout_flush("fn f() {}").shows_value);
    }
}
