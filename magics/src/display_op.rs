//! What a `ranch::display` block asks of the notebook (see the runtime's `display` module):
//! read from a block of [`CONTROL_MIME`], whoever wrote it (a rank, a pool rank, a plain
//! cell). Anything malformed is dropped: a block is a request, never shown as such.

use serde_json::{Map, Value};

pub use ranch::display::CONTROL_MIME;

/// Longest display id accepted from a rank.
const MAX_ID: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub enum DisplayOp {
    /// A new display; `id` lets later updates replace it.
    Show {
        data: Map<String, Value>,
        id: String,
    },
    Update {
        data: Map<String, Value>,
        id: String,
    },
    /// Clear the cell's output when the next output comes.
    Clear,
    Progress {
        done: u64,
        total: u64,
    },
}

/// The request in a control block's body, `None` when it is not one.
pub fn parse(body: &str) -> Option<DisplayOp> {
    let v: Value = serde_json::from_str(body).ok()?;
    let id = || {
        v.get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty() && id.len() <= MAX_ID && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .map(str::to_string)
    };
    let data = || v.get("data").and_then(Value::as_object).filter(|d| !d.is_empty() && d.values().all(Value::is_string)).cloned();
    match v.get("op")?.as_str()? {
        "display" => Some(DisplayOp::Show { data: data()?, id: id()? }),
        "update" => Some(DisplayOp::Update { data: data()?, id: id()? }),
        "clear" => Some(DisplayOp::Clear),
        "progress" => Some(DisplayOp::Progress { done: v.get("done")?.as_u64()?, total: v.get("total")?.as_u64()? }),
        _ => None,
    }
}

/// The Jupyter `display_id` of a rank's (or a cell's) display: its own id, kept apart from
/// the kernel's.
pub fn jupyter_id(id: &str) -> String {
    format!("ranch-user-{id}")
}

/// A display id of ranch's own (a status table, a progress bar): `ranch-<kind>-<pid>-<n>`,
/// unique in this kernel and apart from every [`jupyter_id`].
pub fn own_id(kind: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("ranch-{kind}-{}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_ids_are_unique_and_never_a_users() {
        let (a, b) = (own_id("status"), own_id("status"));
        assert!(a.starts_with(&format!("ranch-status-{}-", std::process::id())) && a != b, "{a} {b}");
        for kind in ["status", "px-status", "progress"] {
            assert!(!own_id(kind).starts_with(&jupyter_id("")), "the kinds in use never look like a user's id");
        }
    }

    #[test]
    fn requests_are_read_and_junk_is_dropped() {
        let show = parse(r#"{"op":"display","id":"12-0","data":{"text/html":"<b>x</b>"}}"#).unwrap();
        assert!(matches!(&show, DisplayOp::Show { id, data } if id == "12-0" && data["text/html"] == "<b>x</b>"));
        assert!(matches!(parse(r#"{"op":"update","id":"12-0","data":{"image/svg+xml":"<svg/>"}}"#), Some(DisplayOp::Update { .. })));
        assert_eq!(parse(r#"{"op":"clear","data":{}}"#), Some(DisplayOp::Clear));
        assert_eq!(parse(r#"{"op":"progress","done":3,"total":10}"#), Some(DisplayOp::Progress { done: 3, total: 10 }));
        for junk in [
            "not json",
            r#"{"op":"display","id":"../x","data":{"text/html":"x"}}"#,
            r#"{"op":"display","id":"a","data":{"text/html":3}}"#,
            r#"{"op":"display","data":{"text/html":"x"}}"#,
            r#"{"op":"progress","done":-1,"total":10}"#,
            r#"{"op":"format-disk"}"#,
        ] {
            assert_eq!(parse(junk), None, "{junk}");
        }
    }
}
