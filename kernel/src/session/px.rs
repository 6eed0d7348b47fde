//! The pool's magics on the session: `%ranch_start`, `%ranch_stop`, `%ranch_status`,
//! `%%px` / `%px`, `%autopx`. The pool itself is in [`super::pool`].

use super::EvcxrSession;
use super::pool::Pool;
use crate::interpreter::{CellContext, CellError, CellOutcome, Stream};
use ranch_magics::pool::{Parsed, PxArgs, cell_ranks, parse, parse_px, rank_plan, split_px_line};
use std::sync::atomic::Ordering;

fn usage(msg: impl Into<String>) -> CellError {
    CellError::new("UsageError", msg)
}

/// A magic's arguments; its help is shown instead (`None`), a bad line is a usage error.
pub(super) fn args_or_help<T>(parsed: Result<Parsed<T>, String>, cx: &CellContext) -> Result<Option<T>, CellError> {
    match parsed.map_err(usage)? {
        Parsed::Help(text) => {
            cx.sink.stream(Stream::Stdout, &text);
            Ok(None)
        }
        Parsed::Run(a) => Ok(Some(a)),
    }
}

pub(super) fn no_pool() -> CellError {
    usage("no pool is running: start one with `%ranch_start N` (N ranks)")
}

impl EvcxrSession {
    /// The pool's magics; `None` when `code` is none of them (and `%autopx` is off).
    pub(super) fn pool_magic(&mut self, code: &str, cx: &CellContext) -> Option<CellOutcome> {
        let c = code.trim_start();
        let word = c.split_whitespace().next().unwrap_or("");
        let rest = c[word.len()..].trim();
        let outcome = match word {
            "%ranch_start" => self.ranch_start(rest, cx),
            "%ranch_stop" if rest.is_empty() => self.ranch_stop(cx),
            "%ranch_status" if rest.is_empty() => self.pool.as_ref().map(|p| Some(p.status())).ok_or_else(no_pool),
            "%ranch_stop" | "%ranch_status" => Err(usage(format!("{word} takes no arguments"))),
            "%px_push" => self.px_push(rest, cx),
            "%px_pull" => self.px_pull(rest, cx),
            "%autopx" if rest.is_empty() => self.toggle_autopx(cx),
            "%autopx" => Err(usage("%autopx takes no arguments: it turns running every cell on the pool on or off")),
            _ => match px_cell(code) {
                Err(e) => Err(e),
                Ok(Some((Parsed::Help(text), _))) => {
                    cx.sink.stream(Stream::Stdout, &text);
                    Ok(None)
                }
                Ok(Some((Parsed::Run(args), body))) => match &args.out {
                    Some(out) => self.run_px_out(body, &args, out),
                    None => self.run_px(body, &args),
                },
                // With %autopx on, Rust cells (not magics, not evcxr's `:` commands) go to the pool.
                Ok(None) if self.autopx && !c.starts_with('%') && !c.starts_with(':') => self.run_px(code, &PxArgs::default()),
                Ok(None) => return None,
            },
        };
        Some(outcome)
    }

    fn ranch_start(&mut self, args: &str, cx: &CellContext) -> CellOutcome {
        let Some(args) = args_or_help(parse(args), cx)? else { return Ok(None) };
        if let Some(p) = &self.pool {
            return Err(usage(format!(
                "a pool of {} ranks is running: stop it first with `%ranch_stop` (its ranks' variables are lost)",
                p.size()
            )));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let group_file = Pool::group_file(self.private.path());
        let plan = self.plan_launch(args.n, cx, |found, visible| {
            rank_plan(&args, &found.devices, visible, cores, &group_file, |k| std::env::var(k).ok()).map(|p| (p.warning.clone(), p))
        })?;
        self.ensure_runtime()?;
        let t = std::time::Instant::now();
        let started = Pool::start(plan.env, self.cell.clone(), self.private.path(), &self.runtime_dep())?;
        cx.sink.stream(
            Stream::Stdout,
            &format!("Started a pool of {} ranks in {:.2} s. Run cells on it with %%px (or %px EXPR, %autopx).\n", args.n, t.elapsed().as_secs_f64()),
        );
        self.pool = Some(started);
        self.pool_generation = None;
        Ok(None)
    }

    fn ranch_stop(&mut self, cx: &CellContext) -> CellOutcome {
        let pool = self.pool.take().ok_or_else(no_pool)?;
        let n = pool.size();
        drop(pool);
        self.autopx = false;
        cx.sink.stream(Stream::Stdout, &format!("Stopped the pool's {n} ranks.\n"));
        Ok(None)
    }

    fn toggle_autopx(&mut self, cx: &CellContext) -> CellOutcome {
        if self.pool.is_none() && !self.autopx {
            return Err(no_pool());
        }
        self.autopx = !self.autopx;
        let said = if self.autopx {
            "%autopx on: every cell now runs on the pool's ranks (run %autopx again to stop)"
        } else {
            "%autopx off: cells run in the session again"
        };
        cx.sink.stream(Stream::Stdout, &format!("{said}\n"));
        Ok(None)
    }

    /// The session's items and dependencies, brought into the pool when the session
    /// changed since the last pool cell.
    fn bring_session_items(&mut self) -> Result<(), CellError> {
        if self.pool_generation == Some(self.generation) {
            return Ok(());
        }
        let private = self.private.path().to_path_buf();
        let snapshot = self.export_and_snapshot(&[], &private)?;
        self.pool.as_mut().ok_or_else(no_pool)?.bring_session_items(&snapshot)?;
        self.pool_generation = Some(self.generation);
        Ok(())
    }

    pub(super) fn run_px(&mut self, body: &str, args: &PxArgs) -> CellOutcome {
        let n = self.pool.as_ref().ok_or_else(no_pool)?.size();
        let ranks = cell_ranks(args.targets.as_ref(), n).map_err(usage)?;
        if ranks.len() < n && crate::syntax::defines_variables(body) {
            return Err(usage(
                "a --targets cell cannot define variables with `let`: every rank must have the same variables. \
                 Define them on every rank (a %%px cell without --targets), or wrap the cell in a block `{ ... }`",
            ));
        }
        self.bring_session_items()?;
        let run = self.run.clone();
        let pool = self.pool.as_mut().ok_or_else(no_pool)?;
        run.interrupted.store(false, Ordering::SeqCst);
        run.stopped_build.store(false, Ordering::SeqCst);
        *run.pool_child.lock().unwrap() = Some(pool.process());
        run.running.store(true, Ordering::SeqCst);
        let interrupted = || run.interrupted.load(Ordering::SeqCst);
        let stopped_build = || run.stopped_build.load(Ordering::SeqCst);
        let outcome = pool.run(body, &ranks, &interrupted, &stopped_build);
        run.running.store(false, Ordering::SeqCst);
        *run.pool_child.lock().unwrap() = None;
        outcome
    }
}

/// A `%%px` cell or `%px` line: its flags and body; `None` when `code` is neither.
fn px_cell(code: &str) -> Result<Option<(Parsed<PxArgs>, &str)>, CellError> {
    let c = code.trim_start();
    if let Some(rest) = c.strip_prefix("%%px") {
        if rest.starts_with(char::is_whitespace) || rest.is_empty() {
            let (line, body) = rest.split_once('\n').unwrap_or((rest, ""));
            return Ok(Some((parse_px(line).map_err(usage)?, body)));
        }
    }
    if let Some(rest) = c.strip_prefix("%px") {
        if rest.starts_with(char::is_whitespace) {
            let (flags, expr) = split_px_line(rest);
            return Ok(Some((parse_px(flags).map_err(usage)?, expr)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn px_cells_and_lines() {
        let body = |code| match px_cell(code).unwrap() {
            Some((Parsed::Run(a), body)) => Some((a.targets.map(|t| t.0), body)),
            Some((Parsed::Help(_), _)) => panic!("help"),
            None => None,
        };
        assert_eq!(body("%%px\nlet x = 1;"), Some((None, "let x = 1;")));
        assert_eq!(body("%%px --targets 1,0\nx"), Some((Some(vec![0, 1]), "x")));
        assert_eq!(body("%px ranch::rank()"), Some((None, "ranch::rank()")));
        assert_eq!(body("%px --targets 2 x.len()"), Some((Some(vec![2]), "x.len()")));
        assert_eq!(body("let x = 1;"), None);
        assert_eq!(body("%pxfoo"), None);
        assert!(px_cell("%%px --bogus\n1").is_err());
    }
}
