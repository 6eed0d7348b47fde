//! Reading requests off a ROUTER socket without losing any of them.
//!
//! `jupyter-zmq-client`'s `read()` fails for a request whose content does not match the
//! typed struct, and then the client gets neither a reply nor busy/idle and hangs. Here the
//! signature is verified the same way (a bad one is dropped and logged), but content is
//! parsed leniently: missing optional-in-practice fields get ipykernel's defaults, and a
//! request that still does not parse becomes [`Incoming::Malformed`] so the server can
//! answer it with an error reply.

use bytes::Bytes;
use jupyter_protocol::{Header, JupyterMessage, JupyterMessageContent};
use jupyter_zmq_client::{Connection, RawMessage};
use serde_json::Value;
use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use zeromq::SocketRecv;

/// Signatures of the messages accepted lately, on every channel: a message seen again is a
/// replay (someone who captured traffic sending it once more), and is dropped, as ipykernel
/// does.
#[derive(Default)]
pub struct ReplayGuard(Mutex<(HashSet<Bytes>, VecDeque<Bytes>)>);

/// Signatures remembered (ipykernel's `digest_history_size`).
const REMEMBERED: usize = 1 << 16;

impl ReplayGuard {
    /// Whether `signature` is new (and remembers it).
    fn first_time(&self, signature: &Bytes) -> bool {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (seen, order) = &mut *guard;
        if !seen.insert(signature.clone()) {
            return false;
        }
        order.push_back(signature.clone());
        if order.len() > REMEMBERED
            && let Some(old) = order.pop_front()
        {
            seen.remove(&old);
        }
        true
    }
}

pub enum Incoming {
    Request(JupyterMessage),
    /// Signed correctly, but the content is not a valid request of its type.
    Malformed {
        envelope: JupyterMessage,
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("socket closed or failed: {0}")]
    Socket(#[from] zeromq::ZmqError),
    #[error("dropped message: {0}")]
    Rejected(String),
}

/// A ROUTER socket that can be told a peer has authenticated (vendor/zeromq's `strangers`:
/// until then its messages are limited as a stranger's).
pub trait Authenticating: SocketRecv {
    fn trust_peer(&self, identity: &[u8]);
}

impl Authenticating for zeromq::RouterRecvHalf {
    fn trust_peer(&self, identity: &[u8]) {
        zeromq::RouterRecvHalf::trust_peer(self, identity)
    }
}

/// The next message on a ROUTER socket. A peer whose message is signed correctly is
/// trusted from then on. Messages of the kernel's own session are refused: anyone can
/// subscribe to IOPub and send what the kernel signed back to it.
pub async fn read<S: Authenticating>(conn: &mut Connection<S>, replays: &ReplayGuard) -> Result<Incoming, WireError> {
    let multipart = conn.socket.recv().await?;
    let peer = multipart.get(0).cloned();
    let incoming = parse(multipart, &conn.mac, replays)?;
    let header = match &incoming {
        Incoming::Request(m) => &m.header,
        Incoming::Malformed { envelope, .. } => &envelope.header,
    };
    if header.session == conn.session_id {
        return Err(WireError::Rejected(format!("a {} of the kernel's own session, sent back to it", header.msg_type)));
    }
    if let Some(peer) = peer {
        conn.socket.trust_peer(&peer);
    }
    Ok(incoming)
}

/// A received multipart message, checked (signature, replay) and decoded. Any bytes give an
/// answer: a request, a malformed request, or a rejection.
pub fn parse(multipart: zeromq::ZmqMessage, mac: &Option<ring::hmac::Key>, replays: &ReplayGuard) -> Result<Incoming, WireError> {
    let signature = multipart.iter().skip_while(|p| &p[..] != b"<IDS|MSG>").nth(1).cloned();
    let raw = RawMessage::from_multipart(multipart, mac).map_err(|e| WireError::Rejected(format!("{e} (bad signature or framing)")))?;
    if mac.is_some()
        && let Some(signature) = signature
        && !replays.first_time(&signature)
    {
        return Err(WireError::Rejected("a message with the signature of an earlier one (a replay)".into()));
    }
    decode(raw.zmq_identities, &raw.jparts).map_err(WireError::Rejected)
}

fn decode(identities: Vec<Bytes>, parts: &[Bytes]) -> Result<Incoming, String> {
    let header: Header = serde_json::from_slice(&parts[0]).map_err(|e| format!("unreadable header: {e}"))?;
    let parent_header = serde_json::from_slice(&parts[1]).ok();
    let metadata = serde_json::from_slice(&parts[2]).unwrap_or(Value::Object(Default::default()));
    let content: Value = serde_json::from_slice(&parts[3]).unwrap_or(Value::Null);
    let envelope = |content| JupyterMessage {
        zmq_identities: identities.clone(),
        header: header.clone(),
        parent_header: parent_header.clone(),
        metadata: metadata.clone(),
        content,
        buffers: parts[4..].to_vec(),
        channel: None,
    };
    let lenient = with_defaults(&header.msg_type, content);
    match JupyterMessageContent::from_type_and_content(&header.msg_type, lenient) {
        Ok(content) => Ok(Incoming::Request(envelope(content))),
        Err(e) => Ok(Incoming::Malformed {
            envelope: envelope(JupyterMessageContent::UnknownMessage(jupyter_protocol::UnknownMessage {
                msg_type: header.msg_type.clone(),
                content: Value::Null,
            })),
            reason: e.to_string(),
        }),
    }
}

/// ipykernel reads these fields with `.get(key, default)`; do the same so that minimal
/// clients work.
fn with_defaults(msg_type: &str, mut content: Value) -> Value {
    let Value::Object(map) = &mut content else { return content };
    let mut default = |k: &str, v: Value| {
        map.entry(k.to_string()).or_insert(v);
    };
    match msg_type {
        "execute_request" => {
            let silent = map.get("silent").and_then(Value::as_bool).unwrap_or(false);
            let mut default = |k: &str, v: Value| {
                map.entry(k.to_string()).or_insert(v);
            };
            default("silent", Value::Bool(false));
            default("store_history", Value::Bool(!silent));
        }
        "history_request" => {
            default("output", Value::Bool(false));
            default("raw", Value::Bool(true));
            default("hist_access_type", Value::String("tail".into()));
            let search = map.get("hist_access_type").and_then(Value::as_str) == Some("search");
            let mut default = |k: &str, v: Value| {
                map.entry(k.to_string()).or_insert(v);
            };
            // n = 0 means "all matches" for a search.
            default("n", Value::from(if search { 0 } else { 10 }));
            default("unique", Value::Bool(false));
            default("pattern", Value::String("*".into()));
            default("start", Value::from(0));
            default("stop", Value::from(0));
        }
        "shutdown_request" => default("restart", Value::Bool(false)),
        _ => {}
    }
    content
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(msg_type: &str, content: &str) -> Vec<Bytes> {
        let header = format!(
            r#"{{"msg_id":"1","username":"u","session":"s","date":"2026-01-01T00:00:00Z","msg_type":"{msg_type}","version":"5.3"}}"#
        );
        vec![header.into(), "{}".into(), "{}".into(), content.to_string().into()]
    }

    #[test]
    fn execute_request_without_silent_gets_defaults() {
        match decode(vec![], &parts("execute_request", r#"{"code":"1"}"#)).unwrap() {
            Incoming::Request(m) => match m.content {
                JupyterMessageContent::ExecuteRequest(r) => {
                    assert!(!r.silent);
                    assert!(r.store_history);
                }
                other => panic!("{other:?}"),
            },
            Incoming::Malformed { reason, .. } => panic!("{reason}"),
        }
    }

    #[test]
    fn execute_request_without_code_is_malformed() {
        let got = decode(vec![], &parts("execute_request", r#"{"silent":false}"#)).unwrap();
        assert!(matches!(got, Incoming::Malformed { .. }));
    }

    #[test]
    fn unknown_types_pass_through() {
        let got = decode(vec![], &parts("frobnicate_request", r#"{}"#)).unwrap();
        assert!(matches!(got, Incoming::Request(_)));
    }

    #[test]
    fn history_search_without_n_or_unique_is_served() {
        let got = decode(vec![], &parts("history_request", r#"{"hist_access_type":"search","pattern":"a*"}"#));
        assert!(matches!(got.unwrap(), Incoming::Request(_)));
    }

    #[test]
    fn a_signature_is_accepted_once() {
        let guard = ReplayGuard::default();
        let sig = Bytes::from_static(b"abc");
        assert!(guard.first_time(&sig));
        assert!(!guard.first_time(&sig));
        for i in 0..REMEMBERED {
            assert!(guard.first_time(&Bytes::from(i.to_string())));
        }
        assert!(guard.first_time(&sig), "forgotten after {REMEMBERED} others: memory stays bounded");
    }

    #[test]
    fn header_must_parse() {
        let mut p = parts("execute_request", "{}");
        p[0] = "not json".into();
        assert!(decode(vec![], &p).is_err());
    }
}
