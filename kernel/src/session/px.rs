//! The pool's magics on the session: `%ranch_start`, `%ranch_stop`, `%ranch_status`,
//! `%%px` / `%px`, `%autopx`. The pool itself is in [`super::pool`].

use super::EvcxrSession;
use super::pool::{self, Pool};
use crate::interpreter::{CellContext, CellError, CellOutcome, Stream};
use ranch_magics::pool::{ParsedPool, parse, rank_plan};
use std::sync::atomic::Ordering;

fn usage(msg: impl Into<String>) -> CellError {
    CellError::new("UsageError", msg)
}

fn no_pool() -> CellError {
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
            "%autopx" if rest.is_empty() => self.toggle_autopx(cx),
            "%autopx" => Err(usage("%autopx takes no arguments: it turns running every cell on the pool on or off")),
            _ => match pool::px_body(code) {
                Err(e) => Err(e),
                Ok(Some(body)) => self.run_px(body),
                // With %autopx on, Rust cells (not magics, not evcxr's `:` commands) go to the pool.
                Ok(None) if self.autopx && !c.starts_with('%') && !c.starts_with(':') => self.run_px(code),
                Ok(None) => return None,
            },
        };
        Some(outcome)
    }

    fn ranch_start(&mut self, args: &str, cx: &CellContext) -> CellOutcome {
        let args = match parse(args).map_err(usage)? {
            ParsedPool::Help(text) => {
                cx.sink.stream(Stream::Stdout, &text);
                return Ok(None);
            }
            ParsedPool::Start(a) => a,
        };
        if let Some(p) = &self.pool {
            return Err(usage(format!(
                "a pool of {} ranks is running: stop it first with `%ranch_stop` (its ranks' variables are lost)",
                p.size()
            )));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let plan = self.plan_launch(args.n, cx, |found, visible| {
            rank_plan(&args, &found.devices, visible, cores, |k| std::env::var(k).ok()).map(|p| (p.warning.clone(), p))
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

    fn run_px(&mut self, body: &str) -> CellOutcome {
        if self.pool.is_none() {
            return Err(no_pool());
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
        let outcome = pool.run(body, &interrupted, &stopped_build);
        run.running.store(false, Ordering::SeqCst);
        *run.pool_child.lock().unwrap() = None;
        outcome
    }
}
