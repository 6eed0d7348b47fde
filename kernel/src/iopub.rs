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
use tokio::sync::{mpsc, oneshot};

enum Outgoing {
    Message(JupyterMessage),
    /// Resolved once every message queued before it has been handed to the socket.
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Publisher {
    session: String,
    tx: mpsc::UnboundedSender<Outgoing>,
}

impl Publisher {
    /// Starts the task that owns `socket`.
    pub fn spawn(mut socket: KernelIoPubXPubConnection, session: String) -> Publisher {
        let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    out = rx.recv() => match out {
                        Some(Outgoing::Message(m)) => {
                            if let Err(e) = socket.send(m).await {
                                crate::log!("iopub send failed: {e}");
                            }
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
        Publisher { session, tx }
    }

    /// Publishes `content` as `msg_type`, parented to `parent` when there is one.
    pub fn send(&self, msg_type: &str, content: Value, parent: Option<&JupyterMessage>) {
        let content = UnknownMessage { msg_type: msg_type.to_string(), content };
        let topic = Bytes::from(format!("kernel.{}.{}", self.session, msg_type));
        let msg = JupyterMessage::new(content, parent).with_zmq_identities(vec![topic]);
        let _ = self.tx.send(Outgoing::Message(msg));
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
