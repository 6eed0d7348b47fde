//! ranch: what a peer that has not authenticated may make this process hold.
//!
//! ZMTP's NULL mechanism authenticates nobody: the application learns who a peer is only
//! from a message it has read whole (Jupyter's HMAC signature). Until the application says
//! so ([`crate::RouterRecvHalf::trust_peer`]), a connection is a stranger's, and then:
//! - its messages are limited to [`untrusted message size`](set_untrusted_limits);
//! - the bytes of its messages in progress beyond a small free allowance count against one
//!   process-wide budget, so that many strangers together cannot hold more than it; a
//!   message that would exceed the budget disconnects its peer;
//! - a socket keeps at most [`max peers`](set_untrusted_limits) connections at once (see
//!   `ConnectionCount` for who gives way to a newcomer), and a connection must finish the
//!   ZMTP handshake within [`HANDSHAKE_TIMEOUT`].
//!
//! Without a call to [`set_untrusted_limits`] nothing is limited (upstream behaviour).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Time an accepted connection has to complete the greeting and READY exchange.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first bytes of each message that do not count against the budget: a legitimate
/// client's first (small) message gets through even while strangers hold the budget.
pub const FREE_ALLOWANCE: usize = 16 * 1024;

/// Limits for connections that have not authenticated (process-wide).
#[derive(Debug, Clone, Copy)]
pub struct UntrustedLimits {
    /// Largest message a stranger may send.
    pub message_size: usize,
    /// Bytes of strangers' messages in progress (beyond [`FREE_ALLOWANCE`] each), all together.
    pub budget: usize,
    /// Connections one socket accepts at once.
    pub max_peers: usize,
}

pub(crate) const UNLIMITED: UntrustedLimits = UntrustedLimits { message_size: usize::MAX, budget: usize::MAX, max_peers: usize::MAX };

static MESSAGE_SIZE: AtomicUsize = AtomicUsize::new(UNLIMITED.message_size);
static BUDGET: AtomicUsize = AtomicUsize::new(UNLIMITED.budget);
static MAX_PEERS: AtomicUsize = AtomicUsize::new(UNLIMITED.max_peers);
/// Bytes charged against [`BUDGET`] now.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// Sets the limits for every socket of this process.
pub fn set_untrusted_limits(limits: UntrustedLimits) {
    MESSAGE_SIZE.store(limits.message_size, Ordering::Relaxed);
    BUDGET.store(limits.budget, Ordering::Relaxed);
    MAX_PEERS.store(limits.max_peers, Ordering::Relaxed);
}

pub(crate) fn max_peers() -> usize {
    MAX_PEERS.load(Ordering::Relaxed)
}

/// Bytes of strangers' messages held now (for tests and diagnostics).
pub fn untrusted_bytes_held() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// One connection's standing, shared by its reader (the decoder) and its socket's peer table.
#[derive(Debug)]
pub struct PeerTrust {
    trusted: AtomicBool,
    /// When it last completed a message (milliseconds since [`EPOCH`]).
    last_active: AtomicU64,
}

impl Default for PeerTrust {
    fn default() -> Self {
        Self { trusted: AtomicBool::new(false), last_active: AtomicU64::new(now_ms()) }
    }
}

static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn now_ms() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl PeerTrust {
    pub(crate) fn trust(&self) {
        self.trusted.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_trusted(&self) -> bool {
        self.trusted.load(Ordering::Relaxed)
    }

    /// The peer completed a message.
    pub(crate) fn touch(&self) {
        self.last_active.store(now_ms(), Ordering::Relaxed);
    }
}

/// The decoder's account of the message it is reading.
#[derive(Debug, Default)]
pub(crate) struct Charge {
    pub(crate) trust: Arc<PeerTrust>,
    charged: usize,
}

impl Charge {
    /// The message in progress has grown to `message_size` bytes: charge what a stranger's
    /// message holds beyond the free allowance. `Err` says why it may not grow.
    pub(crate) fn grow(&mut self, message_size: usize) -> Result<(), &'static str> {
        if self.trust.is_trusted() {
            self.release();
            return Ok(());
        }
        if message_size > MESSAGE_SIZE.load(Ordering::Relaxed) {
            return Err("Message from an unauthenticated peer exceeds its size limit");
        }
        let want = message_size.saturating_sub(FREE_ALLOWANCE);
        if want > self.charged {
            let more = want - self.charged;
            let budget = BUDGET.load(Ordering::Relaxed);
            let took = HELD.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(more).filter(|&h| h <= budget)
            });
            if took.is_err() {
                return Err("Unauthenticated peers hold the whole message budget");
            }
            self.charged = want;
        }
        Ok(())
    }

    /// The message is complete (or abandoned): its bytes are no longer held here.
    pub(crate) fn release(&mut self) {
        if self.charged > 0 {
            HELD.fetch_sub(self.charged, Ordering::AcqRel);
            self.charged = 0;
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.release();
    }
}

/// A socket's open connections. When it has [`max_peers`] already, a newcomer is refused,
/// or, on a socket that evicts (ROUTER: its clients authenticate with their first message),
/// takes the place of the unauthenticated connection idle the longest: strangers holding
/// every slot cannot keep a client from connecting. (XPUB subscribers never authenticate, so
/// there a full socket refuses newcomers rather than cut a subscriber off.)
#[derive(Debug, Default)]
pub(crate) struct ConnectionCount {
    open: Arc<Mutex<Vec<Open>>>,
    evicts: AtomicBool,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Open {
    id: u64,
    trust: Arc<PeerTrust>,
    /// Shut down to evict it. Valid while the entry is here: the slot that removes the
    /// entry is dropped before the connection's stream (see `ZmqFramedRead`).
    fd: RawFd,
}

impl ConnectionCount {
    pub(crate) fn evict_idle_strangers(&self) {
        self.evicts.store(true, Ordering::Relaxed);
    }

    /// A slot for the connection on `fd` whose standing is `trust`, unless the socket is full
    /// and evicts no one.
    pub(crate) fn admit(&self, trust: Arc<PeerTrust>, fd: RawFd) -> Option<ConnectionSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.len() >= max_peers() {
            if !self.evicts.load(Ordering::Relaxed) {
                return None;
            }
            let idlest = open
                .iter()
                .enumerate()
                .filter(|(_, o)| !o.trust.is_trusted())
                .min_by_key(|(_, o)| o.trust.last_active.load(Ordering::Relaxed))
                .map(|(i, _)| i)?;
            let evicted = open.swap_remove(idlest);
            // SAFETY: the entry was still registered, so its stream is open (see `Open::fd`).
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(evicted.fd) };
            let _ = socket2::SockRef::from(&borrowed).shutdown(std::net::Shutdown::Both);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        open.push(Open { id, trust, fd });
        Some(ConnectionSlot { open: self.open.clone(), id })
    }
}

/// A connection's place among its socket's open connections, given back when dropped.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    open: Arc<Mutex<Vec<Open>>>,
    id: u64,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|o| o.id != self.id);
    }
}
