use crate::codec::*;
use crate::endpoint::Endpoint;
use crate::error::ZmqResult;
use crate::fair_queue::{FairQueue, QueueInner};
use crate::message::*;
use crate::transport::AcceptStopHandle;
use crate::util::PeerIdentity;
use crate::write_queue::write_message_queue;
use crate::{async_rt, CaptureSocket, SocketOptions};
use crate::{
    MultiPeerBackend, Socket, SocketBackend, SocketEvent, SocketRecv, SocketSend, SocketType,
    ZmqError,
};

use async_trait::async_trait;
use futures::channel::mpsc;
use futures::StreamExt;
use parking_lot::Mutex;

use std::collections::HashMap;
use std::sync::Arc;

/// ranch: messages queued for one subscriber before new ones are dropped for it (libzmq's
/// default send high-water mark). A subscriber that stops reading loses messages; the
/// others, and the socket's user, never wait for it.
const XPUB_SEND_HWM: usize = 1000;

/// ranch: subscriptions kept per subscriber, and the longest topic kept; others are
/// ignored (neither stored nor shown to the application), so a peer cannot grow the
/// socket by subscribing.
const MAX_SUBSCRIPTIONS: usize = 64;
const MAX_TOPIC: usize = 1024;

pub(crate) struct XPubSubscriber {
    pub(crate) subscriptions: Vec<Vec<u8>>,
    // ranch: a bounded queue drained by the subscriber's own writer task.
    pub(crate) send_queue: mpsc::Sender<Message>,
}

pub(crate) struct XPubSocketBackend {
    subscribers: scc::HashMap<PeerIdentity, XPubSubscriber>,
    fair_queue_inner: Arc<Mutex<QueueInner<ZmqFramedRead, PeerIdentity>>>,
    socket_monitor: Mutex<Option<mpsc::Sender<SocketEvent>>>,
    socket_options: Arc<SocketOptions>,
}

impl XPubSocketBackend {
    /// Records a (un)subscription; ranch: false when it was ignored.
    fn message_received(&self, peer_id: &PeerIdentity, message: Message) -> bool {
        let data = match message {
            Message::Message(m) => {
                if m.len() != 1 {
                    return false;
                }
                m.into_vec().pop().unwrap_or_default()
            }
            _ => return false,
        };

        if data.is_empty() {
            return false;
        }

        match data.first() {
            Some(1) => {
                // Subscribe
                let topic = &data[1..];
                let Some(mut entry) = self.subscribers.get_sync(peer_id) else {
                    return false;
                };
                if topic.len() > MAX_TOPIC || entry.subscriptions.len() >= MAX_SUBSCRIPTIONS {
                    log::debug!("Ignored a subscription of {:?}: too long or too many", peer_id);
                    return false;
                }
                entry.subscriptions.push(Vec::from(topic));
            }
            Some(0) => {
                // Unsubscribe
                let sub = Vec::from(&data[1..]);
                if let Some(mut entry) = self.subscribers.get_sync(peer_id) {
                    if let Some(index) = entry.subscriptions.iter().position(|s| s == &sub) {
                        entry.subscriptions.remove(index);
                    }
                }
            }
            _ => return false,
        }
        true
    }
}

impl SocketBackend for XPubSocketBackend {
    fn socket_type(&self) -> SocketType {
        SocketType::XPUB
    }

    fn socket_options(&self) -> &Arc<SocketOptions> {
        &self.socket_options
    }

    fn shutdown(&self) {
        self.subscribers.clear_sync();
    }

    fn monitor(&self) -> &Mutex<Option<mpsc::Sender<SocketEvent>>> {
        &self.socket_monitor
    }
}

#[async_trait]
impl MultiPeerBackend for XPubSocketBackend {
    async fn peer_connected(self: Arc<Self>, peer_id: &PeerIdentity, io: FramedIo) {
        let (recv_queue, send_queue) = io.into_parts();
        let (queue_sender, queue_receiver) = mpsc::channel(XPUB_SEND_HWM);

        // ranch: an identity already connected is not handed over (see backend.rs).
        let subscriber = XPubSubscriber {
            subscriptions: vec![],
            send_queue: queue_sender,
        };
        if self.subscribers.insert_sync(peer_id.clone(), subscriber).is_err() {
            log::debug!("Refused a second connection claiming identity {:?}", peer_id);
            return;
        }
        let writer_backend = Arc::downgrade(&self);
        let writer_peer_id = peer_id.clone();
        async_rt::task::spawn(async move {
            if let Err(error) = write_message_queue(queue_receiver, send_queue).await {
                log::debug!("Error sending message to subscriber {:?}: {:?}", writer_peer_id, error);
                if let Some(backend) = writer_backend.upgrade() {
                    backend.peer_disconnected(&writer_peer_id);
                }
            }
        });

        self.fair_queue_inner
            .lock()
            .insert(peer_id.clone(), recv_queue);
    }

    fn peer_disconnected(&self, peer_id: &PeerIdentity) {
        log::info!("Client disconnected {:?}", peer_id);
        self.subscribers.remove_sync(peer_id);
        self.fair_queue_inner.lock().remove(peer_id);
    }
}

pub struct XPubSocket {
    pub(crate) backend: Arc<XPubSocketBackend>,
    fair_queue: FairQueue<ZmqFramedRead, PeerIdentity>,
    binds: HashMap<Endpoint, AcceptStopHandle>,
}

impl Drop for XPubSocket {
    fn drop(&mut self) {
        self.backend.shutdown();
    }
}

#[async_trait]
impl SocketSend for XPubSocket {
    async fn send(&mut self, message: ZmqMessage) -> ZmqResult<()> {
        let first_frame = match message.get(0) {
            Some(frame) => frame,
            None => return Ok(()), // Empty message, nothing to publish
        };
        // ranch: a synchronous scan, so no bucket lock is held across an await (see
        // RANCH-PATCH.md, item 7).
        let mut targets = Vec::new();
        self.backend.subscribers.iter_sync(|peer_id, subscriber| {
            if subscriber.subscriptions.iter().any(|sub_filter| {
                sub_filter.len() <= first_frame.len()
                    && sub_filter.as_slice() == &first_frame[0..sub_filter.len()]
            }) {
                targets.push((peer_id.clone(), subscriber.send_queue.clone()));
            }
            true
        });

        // ranch: never wait for a subscriber; a full queue drops the message for it.
        let mut dead_peers = Vec::new();
        for (peer_id, mut send_queue) in targets {
            match send_queue.try_send(Message::Message(message.clone())) {
                Ok(()) => {}
                Err(error) if error.is_full() => {
                    log::debug!("Dropping a message for slow subscriber {:?}", peer_id);
                }
                Err(_) => dead_peers.push(peer_id),
            }
        }
        for peer in dead_peers {
            self.backend.peer_disconnected(&peer);
        }
        Ok(())
    }
}

#[async_trait]
impl SocketRecv for XPubSocket {
    async fn recv(&mut self) -> ZmqResult<ZmqMessage> {
        loop {
            match self.fair_queue.next().await {
                Some((peer_id, Ok(Message::Message(message)))) => {
                    // Process the subscription message internally to update tracking
                    // Also expose it to the application (ranch: unless it was ignored)
                    if self
                        .backend
                        .message_received(&peer_id, Message::Message(message.clone()))
                    {
                        return Ok(message);
                    }
                }
                Some((_peer_id, Ok(_msg))) => {
                    // Ignore non-message frames
                }
                Some((peer_id, Err(e))) => {
                    self.backend.peer_disconnected(&peer_id);
                    return Err(e.into());
                }
                None => {
                    return Err(ZmqError::NoMessage);
                }
            }
        }
    }
}

impl CaptureSocket for XPubSocket {}

#[async_trait]
impl Socket for XPubSocket {
    fn with_options(options: SocketOptions) -> Self {
        let mut fair_queue = FairQueue::new(true);
        let backend = Arc::new(XPubSocketBackend {
            subscribers: scc::HashMap::new(),
            fair_queue_inner: fair_queue.inner(),
            socket_monitor: Mutex::new(None),
            socket_options: Arc::new(options),
        });

        let backend_weak = Arc::downgrade(&backend);
        fair_queue.set_on_disconnect(move |peer_id: PeerIdentity| {
            if let Some(backend) = backend_weak.upgrade() {
                backend.peer_disconnected(&peer_id);
            }
        });

        Self {
            backend,
            fair_queue,
            binds: HashMap::new(),
        }
    }

    fn backend(&self) -> Arc<dyn MultiPeerBackend> {
        self.backend.clone()
    }

    fn binds(&mut self) -> &mut HashMap<Endpoint, AcceptStopHandle> {
        &mut self.binds
    }

    fn monitor(&mut self) -> mpsc::Receiver<SocketEvent> {
        let (sender, receiver) = mpsc::channel(1024);
        self.backend.socket_monitor.lock().replace(sender);
        receiver
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::async_rt;
    use crate::util::tests::{
        test_bind_to_any_port_helper, test_bind_to_unspecified_interface_helper,
    };
    use crate::ZmqResult;
    use std::net::IpAddr;

    #[async_rt::test]
    async fn test_bind_to_any_port() -> ZmqResult<()> {
        let s = XPubSocket::new();
        test_bind_to_any_port_helper(s).await
    }

    #[async_rt::test]
    async fn test_bind_to_any_ipv4_interface() -> ZmqResult<()> {
        let any_ipv4: IpAddr = "0.0.0.0".parse().unwrap();
        let s = XPubSocket::new();
        test_bind_to_unspecified_interface_helper(any_ipv4, s, 4020).await
    }

    #[async_rt::test]
    async fn test_bind_to_any_ipv6_interface() -> ZmqResult<()> {
        let any_ipv6: IpAddr = "::".parse().unwrap();
        let s = XPubSocket::new();
        test_bind_to_unspecified_interface_helper(any_ipv6, s, 4030).await
    }
}
