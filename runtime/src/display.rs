//! Rich output from Rust, the same in a plain cell, a `%%px` cell and a `%%ranch` rank:
//! HTML, SVG, displays updated in place, clearing the cell's output, and progress.
//!
//! ```no_run
//! let chart = ranch::display::svg("<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>");
//! for step in 0..100 {
//!     chart.update_html(format!("<b>step {step}</b>"));
//!     ranch::progress(step + 1, 100);
//! }
//! ```
//!
//! Each call writes one block of the output protocol evcxr uses (`EVCXR_BEGIN_CONTENT <mime>`
//! ... `EVCXR_END_CONTENT`) to stdout, with ranch's own MIME type and a JSON body saying
//! what to do; the kernel turns it into Jupyter's `display_data`, `update_display_data` or
//! `clear_output`. Under a launch, output is labelled with the rank that made it.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The MIME type of ranch's display blocks (read by the kernel, never shown).
pub const CONTROL_MIME: &str = "application/vnd.ranch.control+json";

/// A display that can be replaced in place (Jupyter's `update_display_data`).
#[derive(Debug, Clone)]
pub struct Handle {
    id: String,
}

impl Handle {
    /// Replaces the display with HTML.
    pub fn update_html(&self, html: impl AsRef<str>) {
        emit("update", Some(&self.id), &[("text/html", html.as_ref())]);
    }

    /// Replaces the display with an SVG image.
    pub fn update_svg(&self, svg: impl AsRef<str>) {
        emit("update", Some(&self.id), &[("image/svg+xml", svg.as_ref())]);
    }

    /// Replaces the display with `content` of type `mime` (e.g. `text/markdown`).
    pub fn update(&self, mime: &str, content: impl AsRef<str>) {
        emit("update", Some(&self.id), &[(mime, content.as_ref())]);
    }

    /// The display's id (Jupyter's `display_id`, made unique by the kernel).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Shows HTML; the handle replaces it later.
pub fn html(html: impl AsRef<str>) -> Handle {
    show("text/html", html)
}

/// Shows an SVG image (e.g. from `plotters`' `SVGBackend`); the handle replaces it later.
pub fn svg(svg: impl AsRef<str>) -> Handle {
    show("image/svg+xml", svg)
}

/// Shows `content` of type `mime` (`text/markdown`, `text/plain`, ...).
pub fn show(mime: &str, content: impl AsRef<str>) -> Handle {
    let handle = Handle { id: new_id() };
    emit("display", Some(&handle.id), &[(mime, content.as_ref())]);
    handle
}

/// Clears the cell's output so far (IPython's `clear_output(wait=True)`: the old output
/// goes when the next arrives, so a redrawn plot does not flicker).
pub fn clear_output() {
    emit("clear", None, &[]);
}

/// Reports this rank's progress: `done` of `total` units, shown as a bar in the launch's
/// status table (in a plain cell, as a bar of its own, redrawn in place). Cheap enough for a
/// hot loop: a call that moves the bar by less than a thousandth, or comes within 100 ms of
/// the last report, costs a division and a compare.
pub fn progress(done: u64, total: u64) {
    static LAST_PERMILLE: AtomicU64 = AtomicU64::new(u64::MAX);
    static LAST_AT_MS: AtomicU64 = AtomicU64::new(0);
    let permille = if total == 0 { 1000 } else { (done.min(total) as u128 * 1000 / total as u128) as u64 };
    let finished = done >= total;
    if permille == LAST_PERMILLE.load(Ordering::Relaxed) && !finished {
        return;
    }
    let now = since_start_ms();
    let last = LAST_AT_MS.load(Ordering::Relaxed);
    if !finished && last != 0 && now.saturating_sub(last) < 100 {
        return;
    }
    LAST_PERMILLE.store(permille, Ordering::Relaxed);
    LAST_AT_MS.store(now.max(1), Ordering::Relaxed);
    let body = format!("{{\"op\":\"progress\",\"done\":{done},\"total\":{total}}}");
    write_block(&body);
}

fn since_start_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

fn new_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn emit(op: &str, id: Option<&str>, data: &[(&str, &str)]) {
    let mut body = format!("{{\"op\":{}", json_string(op));
    if let Some(id) = id {
        body.push_str(&format!(",\"id\":{}", json_string(id)));
    }
    body.push_str(",\"data\":{");
    for (i, (mime, content)) in data.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!("{}:{}", json_string(mime), json_string(content)));
    }
    body.push_str("}}");
    write_block(&body);
}

/// One block, written at once under stdout's lock (a thread's `println!` cannot land inside).
fn write_block(body: &str) {
    let mut out = std::io::stdout().lock();
    use crate::__rt::evcxr_lines::{BEGIN_CONTENT, END_CONTENT};
    let _ = write!(out, "{BEGIN_CONTENT}{CONTROL_MIME}\n{body}\n{END_CONTENT}\n");
    let _ = out.flush();
}

/// `s` as a JSON string (one line: newlines and control characters escaped).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_one_line_of_json() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\u0001""#);
        assert!(!json_string("<svg>\n<g/>\n</svg>").contains('\n'));
    }
}
