//! The IOPub channel: one task owns the XPUB socket, everyone else publishes through a
//! cheap cloneable [`Publisher`].
//!
//! zmq.rs' XPUB only registers a subscriber when the application reads from the socket, so
//! the owner task keeps polling subscriptions; each new subscriber gets an `iopub_welcome`
//! (JEP 65), which is how clients know they will not miss the first messages.

use bytes::Bytes;
use jupyter_protocol::{IoPubWelcome, JupyterMessage, UnknownMessage};
use jupyter_zmq_client::{KernelIoPubXPubConnection, SubscriptionEvent};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{mpsc, oneshot};

/// Messages queued for the socket past which cell output waits ([`Publisher::send_output`]):
/// output produced faster than it can be sent (a rank printing in a tight loop) slows its
/// producer instead of growing the kernel.
const OUTPUT_QUEUE: usize = 4096;

enum Outgoing {
    Message(Box<JupyterMessage>),
    /// Resolved once every message queued before it has been handed to the socket.
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Publisher {
    session: String,
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Messages sent to the task and not yet handed to the socket.
    queued: Arc<AtomicUsize>,
}

impl Publisher {
    /// Starts the task that owns `socket`.
    pub fn spawn(mut socket: KernelIoPubXPubConnection, session: String) -> Publisher {
        let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
        let queued = Arc::new(AtomicUsize::new(0));
        let sent = queued.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    out = rx.recv() => match out {
                        Some(Outgoing::Message(m)) => {
                            if let Err(e) = socket.send(*m).await {
                                crate::log!("iopub send failed: {e}");
                            }
                            sent.fetch_sub(1, Ordering::Relaxed);
                        }
                        Some(Outgoing::Flush(done)) => { let _ = done.send(()); }
                        None => break,
                    },
                    sub = socket.recv_subscription() => {
                        if let Ok(SubscriptionEvent::Subscribe(topic)) = sub {
                            let welcome = JupyterMessage::new(IoPubWelcome::new(topic.clone()), None)
                                .with_zmq_identities(vec![Bytes::from(topic)]);
                            if let Err(e) = socket.send(welcome).await {
                                crate::log!("iopub welcome failed: {e}");
                            }
                        }
                    }
                }
            }
        });
        Publisher { session, tx, queued }
    }

    /// Publishes `content` as `msg_type`, parented to `parent` when there is one.
    pub fn send(&self, msg_type: &str, content: Value, parent: Option<&JupyterMessage>) {
        let content = UnknownMessage { msg_type: msg_type.to_string(), content };
        let topic = Bytes::from(format!("kernel.{}.{}", self.session, msg_type));
        let msg = JupyterMessage::new(content, parent).with_zmq_identities(vec![topic]);
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Outgoing::Message(Box::new(msg))).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Like [`send`](Self::send), for a cell's output: on a thread outside the async
    /// runtime (where output is produced), waits first while the queue is long.
    pub fn send_output(&self, msg_type: &str, content: Value, parent: Option<&JupyterMessage>) {
        if tokio::runtime::Handle::try_current().is_err() {
            while self.queued.load(Ordering::Relaxed) > OUTPUT_QUEUE && !self.tx.is_closed() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        self.send(msg_type, content, parent);
    }

    pub fn status(&self, state: &str, parent: Option<&JupyterMessage>) {
        self.send("status", json!({ "execution_state": state }), parent);
    }

    /// Waits until everything published so far has reached the socket.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Outgoing::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}
