//! Compile errors as a user reads them: rustc's layout, pointing at the cell's own lines.

use crate::syntax::Insertion;
use evcxr::CompilationError;

const RED: &str = "\x1b[1;31m";
const BLUE: &str = "\x1b[1;34m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// One traceback entry per error. `cell` is the code the user wrote; `inserted` is text the
/// kernel added on one line, whose width is taken off columns after it.
pub fn compile_error(err: &CompilationError, cell: &str, inserted: Option<Insertion>) -> String {
    let lines: Vec<&str> = cell.lines().collect();
    let level = err.level();
    let head = match err.code() {
        Some(code) => format!("{level}[{code}]"),
        None => level.to_string(),
    };
    let mut out = format!("{RED}{head}{RESET}{BOLD}: {}{RESET}\n", err.message());
    let spanned: Vec<_> = err.spanned_messages().iter().filter(|m| m.span.is_some()).collect();
    if spanned.is_empty() || !err.is_from_user_code() {
        // Not anchored in the cell (e.g. in evcxr's generated code): rustc's own text.
        let rendered = err.rendered();
        if !rendered.trim().is_empty() && spanned.is_empty() {
            out = rendered;
        }
    }
    let gutter = lines.len().to_string().len();
    for msg in spanned {
        let span = msg.span.expect("filtered");
        let (line, mut start, mut end) = (span.start_line, span.start_column, span.end_column);
        if let Some(ins) = inserted.filter(|i| i.line == line) {
            if start >= ins.column + ins.len {
                start -= ins.len;
                end = end.saturating_sub(ins.len);
            }
        }
        let Some(text) = lines.get(line.wrapping_sub(1)) else { continue };
        if span.end_line != line {
            end = text.chars().count() + 1;
        }
        let pad = " ".repeat(gutter);
        let width = end.saturating_sub(start).max(1);
        let mark = if msg.is_primary { "^" } else { "-" };
        out.push_str(&format!("{pad}{BLUE}-->{RESET} cell:{line}:{start}\n"));
        out.push_str(&format!("{pad} {BLUE}|{RESET}\n"));
        out.push_str(&format!("{BLUE}{line:>gutter$} |{RESET} {text}\n"));
        out.push_str(&format!(
            "{pad} {BLUE}|{RESET} {}{RED}{}{RESET} {}\n",
            " ".repeat(start.saturating_sub(1)),
            mark.repeat(width),
            msg.label
        ));
    }
    for help in err.help() {
        out.push_str(&format!("  {BLUE}={RESET} {BOLD}help{RESET}: {help}\n"));
    }
    out
}

/// A one-line summary for the `evalue` of the error reply.
pub fn summary(err: &CompilationError) -> String {
    let mut s = err.message();
    if let Some(line) = err.primary_spanned_message().and_then(|m| m.span).map(|s| s.start_line) {
        s.push_str(&format!(" (cell line {line})"));
    }
    s
}
