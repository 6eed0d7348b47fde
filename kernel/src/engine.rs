//! Runs the (blocking) interpreter on its own thread, fed by the async server.

use crate::interpreter::{CellContext, CellOutcome, Completeness, Completions, Interpreter, Interrupter, MimeBundle};
use std::sync::Arc;
use std::sync::mpsc;
use tokio::sync::oneshot;

enum Job {
    Execute(String, CellContext, oneshot::Sender<CellOutcome>),
    Complete(String, usize, oneshot::Sender<Completions>),
    Inspect(String, usize, oneshot::Sender<Option<MimeBundle>>),
    IsComplete(String, oneshot::Sender<Completeness>),
    Shutdown(oneshot::Sender<()>),
}

/// Handle to the interpreter thread. Requests are served one at a time, in order.
pub struct Engine {
    jobs: mpsc::Sender<Job>,
    interrupter: Arc<dyn Interrupter>,
}

impl Engine {
    pub fn start(mut interp: Box<dyn Interpreter>) -> Engine {
        let interrupter = interp.interrupter();
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
                        Job::IsComplete(code, tx) => { let _ = tx.send(interp.is_complete(&code)); }
                        Job::Shutdown(tx) => {
                            interp.shutdown();
                            let _ = tx.send(());
                            return;
                        }
                    }
                }
            })
            .expect("spawn interpreter thread");
        Engine { jobs, interrupter }
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
    pub async fn is_complete(&self, code: String) -> Completeness {
        self.ask(|tx| Job::IsComplete(code, tx)).await.unwrap_or(Completeness::Complete)
    }
    pub async fn shutdown(&self) {
        self.ask(Job::Shutdown).await;
    }
}
