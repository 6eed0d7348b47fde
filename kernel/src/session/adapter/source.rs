//! The session's crate as evcxr last built it, less what evcxr generates into every cell
//! crate: the user's own attributes and items, as ranch's rank programs and pool need them.
//! What evcxr generates is known here only (the magics see the user's crate).

use ra_ap_syntax::{AstNode, Edition, SourceFile, ast, ast::HasAttrs, ast::HasModuleItem, ast::HasName};

/// evcxr's lint allowances at the top of its crate; a rank program states its own.
const EVCXR_LINTS: &str = "allow(unused_imports, unused_mut, dead_code)";

/// Items evcxr generates into every cell crate; they are not the user's.
fn is_generated(item: &ast::Item) -> bool {
    let name = |n: Option<ast::Name>| n.map(|n| n.text().to_string()).unwrap_or_default();
    match item {
        ast::Item::Module(m) => name(m.name()) == "evcxr_internal_runtime",
        ast::Item::Fn(f) => {
            let n = name(f.name());
            n.starts_with("run_user_code_") || n == "evcxr_variable_store" || n == "evcxr_analysis_wrapper"
        }
        ast::Item::Struct(s) => name(s.name()) == "EvcxrUserCodeError",
        ast::Item::Impl(i) => i.self_ty().is_some_and(|t| t.syntax().text().to_string().contains("EvcxrUserCodeError")),
        _ => false,
    }
}

/// evcxr's `lib.rs` without evcxr's own attributes and items: the user's crate.
pub(super) fn user_crate(lib_rs: &str) -> String {
    let file = SourceFile::parse(lib_rs, Edition::Edition2024).tree();
    let attrs = file.attrs().map(|a| a.syntax().text().to_string()).filter(|a| !a.contains(EVCXR_LINTS));
    let items = file.items().filter(|i| !is_generated(i)).map(|i| i.syntax().text().to_string());
    attrs.chain(items).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIB_RS: &str = r#"#![allow(unused_imports, unused_mut, dead_code)]
#![feature(test)]
fn cube(x: usize) -> usize { x * x * x }
#[derive(Debug, Clone)] struct Cfg { steps: usize }
use std::collections::HashMap;
impl Cfg { fn twice(&self) -> usize { 2 * self.steps } }
struct EvcxrUserCodeError {}
impl<T: std::fmt::Display> From<T> for EvcxrUserCodeError { fn from(_: T) -> Self { Self {} } }
mod evcxr_internal_runtime { pub struct VariableStore; }
#[unsafe(no_mangle)]
pub extern "C" fn run_user_code_7(x: *mut u8) -> *mut u8 { x }
"#;

    #[test]
    fn keeps_user_items_and_drops_evcxrs() {
        let user = user_crate(LIB_RS);
        assert!(user.starts_with("#![feature(test)]\n"), "{user}");
        assert!(user.contains("fn cube") && user.contains("struct Cfg") && user.contains("impl Cfg"));
        assert!(user.contains("#[derive(Debug, Clone)] struct Cfg"), "attributes stay with their item");
        assert!(user.contains("use std::collections::HashMap;"));
        assert!(!user.contains("Evcxr") && !user.contains("run_user_code") && !user.contains("evcxr_internal"), "{user}");
        assert!(!user.contains(EVCXR_LINTS));
        let items = ranch_magics::source::session_items(&user);
        assert_eq!(items.inner_attrs, ["#![feature(test)]"]);
        assert!(items.names.contains("cube") && items.names.contains("Cfg"));
    }
}
