//! Runs the (blocking) interpreter on its own thread, fed by the async server.

use crate::interpreter::{
    CellContext, CellError, CellOutcome, Completeness, CompletenessCheck, Completions, Interpreter, Interrupter, MimeBundle,
};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc;
use tokio::sync::oneshot;

enum Job {
    Execute(String, CellContext, oneshot::Sender<CellOutcome>),
    Complete(String, usize, oneshot::Sender<Completions>),
    Inspect(String, usize, oneshot::Sender<Option<MimeBundle>>),
    Shutdown(oneshot::Sender<()>),
}

/// Handle to the interpreter thread. Requests are served one at a time, in order.
pub struct Engine {
    jobs: mpsc::Sender<Job>,
    interrupter: Arc<dyn Interrupter>,
    completeness: CompletenessCheck,
}

impl Engine {
    pub fn start(mut interp: Box<dyn Interpreter>) -> Engine {
        let interrupter = interp.interrupter();
        let completeness = interp.completeness();
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("interpreter".into())
            // Cells are parsed and analysed here, by evcxr and the magics (see `syntax`).
            .stack_size(crate::syntax::PARSE_STACK)
            .spawn(move || {
                if let Err(e) = catch_unwind(AssertUnwindSafe(|| interp.warm_up())) {
                    crate::log!("warm-up failed: {}", panic_message(&e));
                }
                // A bug that panics while serving one request must not end the session: the
                // request gets an error (or an empty answer) and the next one is served.
                for job in rx {
                    match job {
                        Job::Execute(code, cx, tx) => {
                            let outcome =
                                catch_unwind(AssertUnwindSafe(|| interp.execute(&code, &cx))).unwrap_or_else(|e| Err(internal_error(&e)));
                            let _ = tx.send(outcome);
                        }
                        Job::Complete(code, pos, tx) => {
                            let _ = tx.send(catch_unwind(AssertUnwindSafe(|| interp.complete(&code, pos))).unwrap_or_default());
                        }
                        Job::Inspect(code, pos, tx) => {
                            let _ = tx.send(catch_unwind(AssertUnwindSafe(|| interp.inspect(&code, pos))).unwrap_or(None));
                        }
                        Job::Shutdown(tx) => {
                            let _ = catch_unwind(AssertUnwindSafe(|| interp.shutdown()));
                            let _ = tx.send(());
                            return;
                        }
                    }
                }
            })
            .expect("spawn interpreter thread");
        Engine { jobs, interrupter, completeness }
    }

    pub fn interrupter(&self) -> Arc<dyn Interrupter> {
        self.interrupter.clone()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Job) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send(make(tx)).ok()?;
        rx.await.ok()
    }

    pub async fn execute(&self, code: String, cx: CellContext) -> Option<CellOutcome> {
        self.ask(|tx| Job::Execute(code, cx, tx)).await
    }
    pub async fn complete(&self, code: String, pos: usize) -> Completions {
        self.ask(|tx| Job::Complete(code, pos, tx)).await.unwrap_or_default()
    }
    pub async fn inspect(&self, code: String, pos: usize) -> Option<MimeBundle> {
        self.ask(|tx| Job::Inspect(code, pos, tx)).await.flatten()
    }
    /// Answered at once, without queueing behind a running cell.
    pub fn is_complete(&self, code: &str) -> Completeness {
        (self.completeness)(code)
    }
    pub async fn shutdown(&self) {
        self.ask(Job::Shutdown).await;
    }
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn internal_error(payload: &Box<dyn std::any::Any + Send>) -> CellError {
    let message = panic_message(payload);
    crate::log!("internal error while running a cell: {message}");
    CellError::new(
        "KernelError",
        format!(
            "ranch hit an internal error running this cell ({message}). The session continues; \
             please report it at the ranch issue tracker with the cell that caused it."
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interpreter::{OutputSink, Stream};

    /// Panics on the cell "boom", answers the others.
    struct Fragile;
    struct NoSink;
    impl OutputSink for NoSink {
        fn stream(&self, _: Stream, _: &str) {}
        fn display(&self, _: MimeBundle, _: MimeBundle) {}
    }
    struct NoInterrupt;
    impl Interrupter for NoInterrupt {
        fn interrupt(&self) {}
    }

    impl Interpreter for Fragile {
        fn execute(&mut self, code: &str, _: &CellContext) -> CellOutcome {
            if code == "boom" {
                panic!("bug in the interpreter");
            }
            Ok(None)
        }
        fn complete(&mut self, _: &str, _: usize) -> Completions {
            panic!("bug in completion")
        }
        fn inspect(&mut self, _: &str, _: usize) -> Option<MimeBundle> {
            None
        }
        fn completeness(&self) -> CompletenessCheck {
            Arc::new(|_| Completeness::Complete)
        }
        fn interrupter(&self) -> Arc<dyn Interrupter> {
            Arc::new(NoInterrupt)
        }
        fn shutdown(&mut self) {}
    }

    #[test]
    fn a_panic_in_one_request_does_not_end_the_session() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let engine = Engine::start(Box::new(Fragile));
        let cx = CellContext { sink: Arc::new(NoSink), input: None, execution_count: 1 };
        rt.block_on(async {
            let failed = engine.execute("boom".into(), cx.clone()).await.unwrap().unwrap_err();
            assert_eq!(failed.ename, "KernelError");
            assert!(failed.evalue.contains("bug in the interpreter"), "{}", failed.evalue);
            assert_eq!(engine.complete("x".into(), 0).await, Completions::default());
            assert_eq!(engine.execute("fine".into(), cx).await.unwrap(), Ok(None));
        });
    }
}
