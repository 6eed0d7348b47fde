//! Runs the (blocking) interpreter on its own thread, fed by the async server.

use crate::interpreter::{
    CellContext, CellOutcome, Completeness, CompletenessCheck, Completions, Interpreter, Interrupter, MimeBundle,
};
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
            .spawn(move || {
                interp.warm_up();
                for job in rx {
                    match job {
                        Job::Execute(code, cx, tx) => { let _ = tx.send(interp.execute(&code, &cx)); }
                        Job::Complete(code, pos, tx) => { let _ = tx.send(interp.complete(&code, pos)); }
                        Job::Inspect(code, pos, tx) => { let _ = tx.send(interp.inspect(&code, pos)); }
                        Job::Shutdown(tx) => {
                            interp.shutdown();
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
