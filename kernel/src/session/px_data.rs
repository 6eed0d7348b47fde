//! Moving data between the session and the pool's ranks: `%px_push` (session variables
//! into every rank), `%px_pull` (a rank-local variable into the session as a `Vec`, in
//! rank order) and `%%px --out` (the ranks' values of a cell, likewise). Values cross as
//! MessagePack files in a private directory of the kernel, removed after the cell.

use super::EvcxrSession;
use super::ranch::{RunDir, SERDE_HINT};
use crate::interpreter::{CellContext, CellError, CellOutcome, Stream};
use ranch_magics::args::Out;
use ranch_magics::merge::ranks_label;
use super::px::args_or_help;
use ranch_magics::pool::{PxArgs, cell_ranks, parse_pull, parse_push, session_type};
use ranch_magics::program::Shipped;
use std::path::{Path, PathBuf};

fn usage(msg: impl Into<String>) -> CellError {
    CellError::new("UsageError", msg)
}

/// Brings the traits `ranch_encode` needs into scope, inside a block of generated code.
const ENCODE_TRAITS: &str = "use ranch::__rt::{ViaNothing as _, ViaSerialize as _};";

/// Code that writes `value` (an expression naming a place) to `dir` for this rank.
fn emit(dir: &Path, value: &str) -> String {
    format!("ranch::__rt::emit_to({:?}, &{value}, (&ranch::__rt::Ship(&{value})).ranch_encode());", dir.to_string_lossy())
}

impl EvcxrSession {
    /// A fresh private directory for one transfer.
    fn transfer_dir(&mut self, what: &str) -> Result<RunDir, CellError> {
        static TRANSFERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let k = TRANSFERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.private.path().join(format!("{what}-{k}"));
        super::private_dir::make(&dir).map_err(|e| CellError::new("PoolError", format!("cannot create {}: {e}", dir.display())))?;
        Ok(RunDir(dir))
    }

    /// `%px_push a, b`: `let a: T = <the session's a>;` on every rank.
    pub(super) fn px_push(&mut self, args: &str, cx: &CellContext) -> CellOutcome {
        let Some(args) = args_or_help(parse_push(args), cx)? else { return Ok(None) };
        let n = self.pool_size()?;
        let session: Vec<(String, String)> =
            self.context()?.variables_and_types().map(|(n, t)| (n.to_string(), t.to_string())).collect();
        let mut shipped = Vec::new();
        for name in &args.names {
            let Some((_, ty)) = session.iter().find(|(n, _)| n == name) else {
                return Err(usage(format!("%px_push {name}: the session has no variable `{name}`")));
            };
            shipped.push(Shipped { name: name.clone(), ty: ty.clone() });
        }
        let dir = self.transfer_dir("px-push")?;
        let unshippable = self.export_vars(&shipped, &dir.0)?;
        if !unshippable.is_empty() {
            return Err(CellError::new(
                "UnshippableVariable",
                format!("cannot send {} to the ranks. {SERDE_HINT}, or build the value in a %%px cell.", unshippable.join(", ")),
            ));
        }
        let code: String = shipped
            .iter()
            .map(|v| {
                format!(
                    // `mut`: the ranks own their copies, to change as they like.
                    "let mut {name}: {ty} = ranch::__rt::load_from::<{ty}>({dir:?}, {name:?}, {ty:?});\n",
                    name = v.name,
                    ty = v.ty,
                    dir = dir.0.to_string_lossy()
                )
            })
            .collect();
        self.run_px(&code, &PxArgs::default())?;
        let names: Vec<String> = shipped.iter().map(|v| format!("`{}`", v.name)).collect();
        cx.sink.stream(Stream::Stdout, &format!("Pushed {} to the pool's {n} ranks.\n", names.join(", ")));
        Ok(None)
    }

    /// `%px_pull NAME [--out NAME] [--targets R,R]`: the ranks' NAME as `Vec<T>` in the session.
    pub(super) fn px_pull(&mut self, args: &str, cx: &CellContext) -> CellOutcome {
        let Some(args) = args_or_help(parse_pull(args), cx)? else { return Ok(None) };
        let n = self.pool_size()?;
        let ranks = cell_ranks(args.targets.as_ref(), n).map_err(usage)?;
        let vars = self.pool.as_mut().map(|p| p.variables()).unwrap_or_default();
        let Some((_, ty)) = vars.iter().find(|(v, _)| *v == args.name) else {
            let mut names: Vec<&str> = vars.iter().map(|(v, _)| v.as_str()).collect();
            names.sort_unstable();
            let have = if names.is_empty() { "none yet".to_string() } else { names.join(", ") };
            return Err(usage(format!("the pool's ranks have no variable `{}` (they have: {have})", args.name)));
        };
        let ty = ty.clone();
        let dir = self.transfer_dir("px-pull")?;
        let code = format!("{{ {ENCODE_TRAITS} {} }}", emit(&dir.0, &args.name));
        self.run_px(&code, &PxArgs { targets: args.targets.clone(), out: None })?;
        let out = Out { name: args.out.clone().unwrap_or_else(|| args.name.clone()), ty: Some(ty) };
        let ty = self.bind_pulled(&out, &dir.0, &ranks, &format!("`{}`", args.name))?;
        cx.sink.stream(
            Stream::Stdout,
            &format!("Pulled `{}` from {} into `{}: Vec<{ty}>`.\n", args.name, ranks_label(&ranks), out.name),
        );
        Ok(None)
    }

    /// `%%px --out NAME`: the cell, whose tail value each rank also writes, then bound.
    pub(super) fn run_px_out(&mut self, body: &str, args: &PxArgs, out: &Out) -> CellOutcome {
        let n = self.pool_size()?;
        let ranks = cell_ranks(args.targets.as_ref(), n).map_err(usage)?;
        let dir = self.transfer_dir("px-out")?;
        let wrapped = crate::syntax::wrap_tail(body, |tail| {
            format!("{{ {ENCODE_TRAITS} let __ranch_out = {tail}; {} __ranch_out }}", emit(&dir.0, "__ranch_out"))
        })
        .ok_or_else(|| usage("--out needs the cell to end in an expression (each rank's value)"))?;
        let shown = self.run_px(&wrapped, args)?;
        self.bind_pulled(out, &dir.0, &ranks, "the cell's value")?;
        Ok(shown)
    }

    fn pool_size(&mut self) -> Result<usize, CellError> {
        self.await_pool()?;
        self.pool.as_ref().map(|p| p.size()).ok_or_else(super::px::no_pool)
    }

    /// Binds `out` in the session to the values the ranks wrote to `dir`. Returns the
    /// element type.
    fn bind_pulled(&mut self, out: &Out, dir: &Path, ranks: &[usize], what: &str) -> Result<String, CellError> {
        let error = |msg: String| CellError::new("PullError", msg);
        let mut ty = None;
        for &r in ranks {
            let path: PathBuf = ranch::__rt::result_path(dir, r);
            let bytes = std::fs::read(&path).map_err(|e| error(format!("rank {r} wrote no value for {what} ({e})")))?;
            let result = ranch::__rt::RankResult::decode(&bytes).map_err(|e| error(format!("rank {r}'s value is corrupt: {e}")))?;
            if result.value.is_none() {
                let t = session_type(&result.type_name);
                return Err(error(format!("{what} cannot be sent to the session: `{t}` is not Serialize + Deserialize. {SERDE_HINT}.")));
            }
            ty.get_or_insert(result.type_name);
        }
        let ty = match (&out.ty, ty) {
            (Some(t), _) => t.clone(),
            (None, Some(t)) => session_type(&t),
            (None, None) => return Err(error(format!("no rank wrote {what}"))),
        };
        self.bind_collected(&out.name, &ty, dir, ranks).map_err(|e| {
            error(format!(
                "the ranks' values could not be bound as `{}: Vec<{ty}>` in the session: {}. \
                 A type the pool defined must be defined in a session cell too (the pool sees the session's items).",
                out.name, e.evalue
            ))
        })?;
        Ok(ty)
    }
}
