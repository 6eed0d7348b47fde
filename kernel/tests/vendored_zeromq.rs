//! The patched zeromq's ROUTER and XPUB (the kernel's Jupyter sockets) never mix scc's
//! blocking map calls with async ones (vendor/zeromq/RANCH-PATCH.md, item 7).
//!
//! A bucket lock handed to a task queued on the worker thread that then parks in `get_sync`
//! deadlocks both: the stranger soak (`bench/soak.py --strangers`, run in short form by the
//! suite) froze the kernel's heartbeat that way about one run in six, too rarely for a timed
//! test to catch. This keeps the rule from coming back unnoticed.

use std::path::Path;

/// The non-test part of a vendored source file.
fn source(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vendor/zeromq/src").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

#[test]
fn router_and_xpub_maps_are_only_locked_synchronously() {
    for file in ["backend.rs", "xpub.rs", "router.rs"] {
        let text = source(file);
        let offending: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .filter(|l| ["_async(", "next_async", "begin_async"].iter().any(|m| l.contains(m)))
            .collect();
        assert!(offending.is_empty(), "{file} awaits an scc map lock: {offending:#?}");
    }
    assert!(source("backend.rs").contains("peers.get_sync("), "the scan no longer sees the peer map's code");
}
