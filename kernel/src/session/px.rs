//! The pool's magics on the session: `%ranch_start`, `%ranch_stop`, `%ranch_restart`,
//! `%ranch_status`, `%autopx` (`%%px` and the others are the driver's). The pool itself is in [`super::pool`].

use super::EvcxrSession;
use super::driven::CellHost;
use super::pool::{Pool, no_pool};
use crate::interpreter::{CellContext, CellError, CellOutcome, Stream};
use ranch_magics::driver::Session as _;
use std::sync::atomic::Ordering;

fn usage(msg: impl Into<String>) -> CellError {
    CellError::new("UsageError", msg)
}

/// A pool being started by `%ranch_start`.
pub(super) struct Starting {
    pub(super) n: usize,
    since: std::time::Instant,
    started: std::sync::mpsc::Receiver<Result<Pool, CellError>>,
    /// What the start gave, once it ended.
    outcome: Option<Result<Pool, CellError>>,
}

impl Starting {
    /// Waits up to `timeout` for the start to end; returns whether it has.
    fn wait(&mut self, timeout: std::time::Duration) -> bool {
        if self.outcome.is_none() {
            self.outcome = match self.started.recv_timeout(timeout) {
                Ok(outcome) => Some(outcome),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    Some(Err(CellError::new("PoolError", "its start panicked (see the kernel's log)")))
                }
            };
        }
        self.outcome.is_some()
    }

    fn is_finished(&mut self) -> bool {
        self.wait(std::time::Duration::ZERO)
    }

    /// Waits for the start to end (the kernel is shutting down): the pool, if it started.
    pub(super) fn finish(mut self) -> Option<Pool> {
        while !self.wait(std::time::Duration::from_secs(1)) {}
        self.outcome?.ok()
    }
}

impl EvcxrSession {
    pub(super) fn ranch_start(&mut self, args: ranch_magics::pool::PoolArgs, cx: &CellContext) -> CellOutcome {
        self.reclaim_pool()?;
        let host = CellHost::new(cx, &self.run);
        // Before any check that says something (a GPU warning): a refused start changes nothing.
        if let Some(n) = self.pool.as_ref().map(Pool::size).or(self.pool_starting.as_ref().map(|s| s.n)) {
            return Err(usage(format!("a pool of {n} ranks is running: stop it first with `%ranch_stop` (its ranks' variables are lost)")));
        }
        let plan = self.driver.pool_plan(&host, &args, &Pool::group_file(self.private.path()))?;
        let remote = super::pool::remote_spec(&args.placement, self.private.path(), args.n)?;
        self.add_runtime()?;
        // The ranks start at once, but the pool's evcxr context takes seconds (rust-analyzer):
        // it starts in the background, and the first pool cell waits for it.
        let (cell, private, dep, see) = (self.cell.clone(), self.private.path().to_path_buf(), self.runtime_dep()?, args.see.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("pool-start".into())
            // evcxr analyses code on the thread that makes the context, as on the interpreter's.
            .stack_size(crate::syntax::PARSE_STACK)
            .spawn(move || match Pool::start(plan.env, remote, see, cell, &private, &dep) {
                Ok(mut pool) => {
                    // The fan-out's parent-death signal fires when the thread that spawned it
                    // ends, not the kernel: this thread lives as long as the pool.
                    let (alive, pool_dropped) = std::sync::mpsc::channel::<()>();
                    pool.keep_spawner(alive);
                    if tx.send(Ok(pool)).is_ok() {
                        let _ = pool_dropped.recv();
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(|e| CellError::new("PoolError", format!("cannot start the pool: {e}")))?;
        self.pool_starting = Some(Starting { n: args.n, since: std::time::Instant::now(), started: rx, outcome: None });
        self.pool_args = Some(args.clone());
        cx.sink.stream(
            Stream::Stdout,
            &format!("Starting a pool of {} ranks in the background; %%px cells (and %px, %autopx) wait until it is up.\n", args.n),
        );
        Ok(None)
    }

    /// Waits for a pool `%ranch_start` is starting (an interrupt ends the wait only), and
    /// takes the pool back from a background job that is done with it. A pool busy with a
    /// job's cell is a usage error: it runs one cell at a time.
    pub(super) fn await_pool(&mut self) -> Result<(), CellError> {
        self.reclaim_pool()?;
        let Some(starting) = &mut self.pool_starting else { return Ok(()) };
        if !starting.is_finished() {
            let run = self.run.clone();
            run.interrupted.store(false, Ordering::SeqCst);
            run.waiting_for_pool.store(true, Ordering::SeqCst);
            let was_running = run.running.swap(true, Ordering::SeqCst);
            while !starting.wait(std::time::Duration::from_millis(20)) && !run.interrupted.load(Ordering::SeqCst) {}
            run.running.store(was_running, Ordering::SeqCst);
            run.waiting_for_pool.store(false, Ordering::SeqCst);
            if !starting.is_finished() {
                return Err(CellError::new(
                    "Interrupted",
                    "Interrupted while waiting for the pool to start; it is still starting, and the next pool cell waits for it.",
                ));
            }
        }
        let starting = self.pool_starting.take().expect("checked above");
        let took = starting.since.elapsed().as_secs_f64();
        match starting.outcome.expect("finished") {
            Ok(pool) => {
                crate::log!("pool of {} ranks up after {took:.2} s", starting.n);
                self.pool = Some(pool);
                Ok(())
            }
            Err(e) => Err(CellError { evalue: format!("the pool did not start: {}", e.evalue), ..e }),
        }
    }

    /// Takes the pool back from a background job that is done with it; a pool still busy
    /// with a job's cell is a usage error (it runs one cell at a time).
    pub(super) fn reclaim_pool(&mut self) -> Result<(), CellError> {
        if let Some(away) = &self.pool_away {
            match away.returned.try_recv() {
                Ok(pool) => self.pool = Some(pool),
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    let job = &away.job;
                    return Err(usage(format!(
                        "the pool is running {job} in the background, and runs one cell at a time: \
                         `%ranch_wait {job}` waits for it, `%ranch_cancel {job}` stops it. Nothing ran."
                    )));
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    crate::log!("the pool was lost with background job {}", away.job);
                }
            }
            self.pool_away = None;
            super::procs::spare_builds_in(None);
        }
        Ok(())
    }

    /// `%ranch_status`: the pool's ranks, or that it is still starting.
    pub(super) fn pool_status(&mut self) -> CellOutcome {
        let still_starting = self.pool_starting.as_mut().is_some_and(|s| !s.is_finished());
        if let Some(s) = self.pool_starting.as_ref().filter(|_| still_starting) {
            let text = format!("pool of {} ranks starting ({:.1} s so far)\n", s.n, s.since.elapsed().as_secs_f64());
            let mut data = crate::interpreter::MimeBundle::new();
            data.insert("text/plain".into(), serde_json::Value::String(text));
            return Ok(Some(data));
        }
        self.await_pool()?;
        self.pool.as_ref().map(|p| Some(p.status())).ok_or_else(no_pool)
    }

    pub(super) fn ranch_stop(&mut self, cx: &CellContext) -> CellOutcome {
        self.await_pool()?;
        let pool = self.pool.take().ok_or_else(no_pool)?;
        let n = pool.size();
        drop(pool);
        self.autopx = false;
        self.pool_args = None;
        cx.sink.stream(Stream::Stdout, &format!("Stopped the pool's {n} ranks.\n"));
        Ok(None)
    }

    /// `%ranch_restart`: the pool stopped and started again with the arguments it was started
    /// with (every rank's variables, and what `%%px` cells defined, are lost); `%autopx`
    /// stays as it was.
    pub(super) fn ranch_restart(&mut self, restart: ranch_magics::pool::RestartArgs, cx: &CellContext) -> CellOutcome {
        self.await_pool()?;
        if let Some(targets) = restart.targets {
            let pool = self.pool.as_mut().ok_or_else(no_pool)?;
            let ranks = ranch_magics::pool::cell_ranks(Some(&targets), pool.size()).map_err(usage)?;
            pool.restart_ranks(&ranks)?;
            let names: Vec<String> = ranks.iter().map(usize::to_string).collect();
            cx.sink.stream(
                Stream::Stdout,
                &format!(
                    "Restarted rank{} {} alone, without variables; the other ranks keep what they have.\n",
                    if names.len() > 1 { "s" } else { "" },
                    names.join(", ")
                ),
            );
            return Ok(None);
        }
        let args = match (&self.pool, &self.pool_args) {
            (Some(_), Some(args)) => args.clone(),
            _ => return Err(no_pool()),
        };
        let autopx = self.autopx;
        self.ranch_stop(cx)?;
        let started = self.ranch_start(args, cx);
        self.autopx = autopx && started.is_ok();
        started
    }

    pub(super) fn toggle_autopx(&mut self, cx: &CellContext) -> CellOutcome {
        // Turning it off needs no pool (one busy with a background job included).
        if !self.autopx {
            self.await_pool()?;
        }
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
}
