//! Help as a page, as ipykernel's `obj?` gives it: `NAME?` (or `?NAME`) shows
//! rust-analyzer's documentation of the item NAME names, and `:help` ranch's magics and
//! evcxr's commands, in Jupyter's pager (Lab's help panel) rather than as cell output.

use super::EvcxrSession;
use crate::interpreter::{CellContext, CellOutcome, MimeBundle, Stream};
use serde_json::Value;

/// `NAME?` or `?NAME`: the path asked about. A session variable followed by `?` is Rust's
/// `?` operator, not a question.
fn asked(code: &str) -> Option<&str> {
    let c = code.trim();
    let name = c.strip_suffix('?').or_else(|| c.strip_prefix('?'))?.trim();
    let is_path = !name.is_empty()
        && name.chars().next().is_some_and(|ch| ch.is_alphabetic() || ch == '_')
        && name.chars().all(|ch| ch.is_alphanumeric() || ch == '_' || ch == ':')
        && !name.ends_with(':');
    is_path.then_some(name)
}

/// Whether rust-analyzer's hover text (through evcxr) documents something.
pub(super) fn documented(hover: &str) -> bool {
    // evcxr says this when rust-analyzer found nothing.
    !hover.trim().is_empty() && hover.trim() != "No documentation found"
}

fn page(text: String, html: Option<String>) -> MimeBundle {
    let mut data = MimeBundle::new();
    data.insert("text/plain".into(), Value::String(text));
    if let Some(html) = html.filter(|h| !h.trim().is_empty()) {
        data.insert("text/html".into(), Value::String(html));
    }
    data
}

impl EvcxrSession {
    /// `:help` or `NAME?`, answered as a page; `None` when `code` is neither.
    pub(super) fn help(&mut self, code: &str, cx: &CellContext) -> Option<CellOutcome> {
        if code.trim() == ":help" {
            let evcxr = self.context().ok()?.commands_help();
            let magics = ranch_magics::magic_table::listing(&[("NAME?", "the documentation of NAME (a path such as std::vec::Vec::new)")]);
            cx.sink.page(page(format!("{magics}\nevcxr's commands:\n{evcxr}"), None));
            return Some(Ok(None));
        }
        let name = asked(code)?;
        let ctx = match self.context() {
            Ok(ctx) => ctx,
            Err(e) => return Some(Err(e)),
        };
        if ctx.variables().iter().any(|(v, _)| v == name) {
            return None; // `x?`: the operator
        }
        // rust-analyzer's hover, with the cursor on the path's last segment.
        let found = ctx.hover(name, name.len()).filter(|(plain, _)| documented(plain));
        Some(match found {
            Some((plain, html)) => {
                cx.sink.page(page(plain, Some(html)));
                Ok(None)
            }
            None => {
                cx.sink.stream(Stream::Stdout, &format!("No documentation found for `{name}`.\n"));
                Ok(None)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_are_paths_followed_or_preceded_by_a_question_mark() {
        assert_eq!(asked("std::vec::Vec::new?"), Some("std::vec::Vec::new"));
        assert_eq!(asked(" ?HashMap "), Some("HashMap"));
        assert_eq!(asked("f()?"), None);
        assert_eq!(asked("x.y?"), None);
        assert_eq!(asked("?"), None);
        assert_eq!(asked("let a = b?;"), None);
    }
}
