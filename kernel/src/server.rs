//! The Jupyter kernel core: binds the five sockets and serves every request.
//!
//! Shell requests are served strictly in order (frontends rely on it for execution counts
//! and busy/idle); control is served by its own task so interrupt and shutdown work while a
//! cell runs. Every request is bracketed by IOPub `busy`/`idle`, and everything a request
//! publishes is queued before its `idle`.

use crate::engine::Engine;
use crate::interpreter::{CellContext, CellError, Completeness, InputProvider, Interpreter, MimeBundle, OutputSink, Stream};
use crate::iopub::Publisher;
use crate::wire::{self, Incoming};
use crate::{history::History, text};
use jupyter_protocol::{ConnectionInfo, JupyterMessage, JupyterMessageContent, UnknownMessage};
use jupyter_zmq_client as jzc;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, Notify};

pub const PROTOCOL_VERSION: &str = "5.4";

type Router = jzc::RouterSendConnection;

struct Kernel {
    iopub: Publisher,
    engine: Engine,
    /// Where `input_request`s go; answers come through `input_replies`.
    stdin: Mutex<Router>,
    /// The values of signed `input_reply`s, read off the stdin socket by [`read_stdin`].
    input_replies: Mutex<tokio::sync::mpsc::Receiver<String>>,
    execution_count: AtomicUsize,
    history: std::sync::Mutex<History>,
    replays: wire::ReplayGuard,
    /// Wakes a pending `input_request` when the user interrupts.
    input_cancel: Arc<Notify>,
    runtime: tokio::runtime::Handle,
}

/// Largest message a client may send, unless `RANCH_MAX_MESSAGE_BYTES` says otherwise.
/// Checked while decoding (vendor/zeromq), before anything that size is reserved; a peer
/// that sends more is disconnected.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 30;

pub fn max_message_bytes() -> usize {
    std::env::var("RANCH_MAX_MESSAGE_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_MAX_MESSAGE_BYTES)
}

/// What a peer that has not sent a correctly signed message may make the kernel hold
/// (vendor/zeromq's `strangers`): anyone on the machine can reach the ports. A client's
/// first message (kernel_info, a cell) fits easily; after it, the client's messages go up
/// to [`max_message_bytes`].
const STRANGERS: zeromq::UntrustedLimits = zeromq::UntrustedLimits { message_size: 1 << 20, budget: 16 << 20, max_peers: 64 };

/// Heartbeats: pings are tiny (jupyter_client sends `ping`), and a peer that never reads its
/// echoes gets a few queued, then loses them.
const HEARTBEAT_MAX_PING: usize = 4096;
const HEARTBEAT_QUEUE: usize = 8;

/// Serves the kernel until a shutdown request; returns when it is time to exit.
pub async fn serve(info: ConnectionInfo, interp: Box<dyn Interpreter>) -> anyhow::Result<()> {
    zeromq::set_default_max_message_size(max_message_bytes());
    zeromq::set_untrusted_limits(STRANGERS);
    let session = uuid::Uuid::new_v4().to_string();
    let hb = heartbeat_socket(&info).await?;
    let (shell_tx, shell_rx) = jzc::create_kernel_shell_connection(&info, &session).await?.split();
    let (control_tx, control_rx) = jzc::create_kernel_control_connection(&info, &session).await?.split();
    let (stdin_tx, stdin_rx) = jzc::create_kernel_stdin_connection(&info, &session).await?.split();
    let (replies_tx, replies_rx) = tokio::sync::mpsc::channel(INPUT_REPLIES_QUEUED);
    let iopub = Publisher::spawn(jzc::create_kernel_iopub_xpub_connection(&info, &session).await?, session);
    iopub.status("starting", None);

    let kernel = Arc::new(Kernel {
        iopub,
        engine: Engine::start(interp),
        stdin: Mutex::new(stdin_tx),
        input_replies: Mutex::new(replies_rx),
        execution_count: AtomicUsize::new(0),
        history: Default::default(),
        replays: Default::default(),
        input_cancel: Arc::new(Notify::new()),
        runtime: tokio::runtime::Handle::current(),
    });

    tokio::spawn(echo_heartbeats(hb));
    tokio::spawn(read_stdin(stdin_rx, kernel.clone(), replies_tx));

    let k = kernel.clone();
    tokio::spawn(async move {
        // SIGINT (interrupt_mode "signal", or Ctrl-C in a terminal) means interrupt, not exit.
        let Ok(mut sig) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) else { return };
        while sig.recv().await.is_some() {
            k.interrupt();
        }
    });

    let k = kernel.clone();
    tokio::spawn(async move {
        // SIGTERM (how jupyter_client stops a kernel that did not answer a shutdown
        // request, and how a system stops its processes) is a clean shutdown.
        let Ok(mut sig) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else { return };
        if sig.recv().await.is_some() {
            crate::log!("SIGTERM: shutting down");
            k.interrupt();
            let _ = tokio::time::timeout(Duration::from_secs(5), k.engine.shutdown()).await;
            std::process::exit(0);
        }
    });

    let shell = tokio::spawn(serve_channel(kernel.clone(), shell_rx, shell_tx, "shell"));
    let control = tokio::spawn(serve_channel(kernel.clone(), control_rx, control_tx, "control"));
    tokio::select! { _ = shell => {}, _ = control => {} }
    Ok(())
}

/// The heartbeat socket: a ROUTER, not the REP of jupyter_client's helper, so that each
/// peer is answered on its own (a REP serves one request at a time, and one malformed
/// message or a peer that never reads would stop heartbeats for everyone).
async fn heartbeat_socket(info: &ConnectionInfo) -> anyhow::Result<zeromq::RouterSocket> {
    use zeromq::Socket;
    let mut options = zeromq::SocketOptions::default();
    options.max_message_size(HEARTBEAT_MAX_PING).send_high_water_mark(HEARTBEAT_QUEUE);
    let mut socket = zeromq::RouterSocket::with_options(options);
    socket.bind(&info.hb_url()).await?;
    Ok(socket)
}

/// Echoes every ping to the peer that sent it, as the spec asks, forever: a REQ client's
/// `[delimiter, ping]` comes back as it went; whatever else a stranger sends goes back to it.
async fn echo_heartbeats(mut socket: zeromq::RouterSocket) {
    use zeromq::{SocketRecv, SocketSend};
    loop {
        match socket.recv().await {
            // Never waits: a full queue drops the echo for that peer only.
            Ok(ping) => {
                let _ = socket.send(ping).await;
            }
            Err(e) => {
                crate::log!("heartbeat: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Answers kept for a prompt; more are dropped (a client sends one per request).
const INPUT_REPLIES_QUEUED: usize = 16;

/// Reads the stdin socket all the time, not only while a prompt waits, so that strangers'
/// junk is read and dropped (and their connections noticed when they close) rather than
/// waiting there for the next prompt. Only a correctly signed `input_reply` gets through.
async fn read_stdin(mut rx: jzc::RouterRecvConnection, k: Arc<Kernel>, replies: tokio::sync::mpsc::Sender<String>) {
    loop {
        match wire::read(&mut rx, &k.replays).await {
            Ok(Incoming::Request(m)) => match m.content {
                JupyterMessageContent::InputReply(r) => {
                    if replies.try_send(r.value).is_err() {
                        crate::log!("stdin: dropped an input_reply (no prompt is waiting for so many)");
                    }
                }
                _ => crate::log!("stdin: ignored a {}", m.header.msg_type),
            },
            Ok(Incoming::Malformed { reason, .. }) => crate::log!("stdin: ignored a malformed message: {reason}"),
            Err(e) => {
                crate::log!("stdin: {e}");
                if matches!(e, wire::WireError::Socket(_)) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl Kernel {
    fn interrupt(&self) {
        // Stop the code first, then end a prompt's wait: the other way round, the cell gets an
        // empty answer and may finish before the stop lands, which then hits the next cell.
        self.engine.interrupter().interrupt();
        self.input_cancel.notify_waiters();
    }
}

/// What the channel loop does after a request.
#[derive(PartialEq)]
enum Next {
    Continue,
    Exit,
    /// A cell failed with `stop_on_error`: execute requests already queued behind it are
    /// answered `aborted` without running ("Run All" stops at the first error). Holds the
    /// time the error reply was sent.
    AbortQueued(chrono::DateTime<chrono::Utc>),
}

/// After a failed cell, requests that are readable within this long and were sent (by
/// their header date) before the error reply count as "already queued". The date check
/// keeps a client that sends its next cell as soon as it reads the error (nbclient does)
/// from having it aborted.
const ABORT_WINDOW: Duration = Duration::from_millis(20);

struct Aborting {
    until: tokio::time::Instant,
    failed_at: chrono::DateTime<chrono::Utc>,
}

async fn serve_channel(k: Arc<Kernel>, mut rx: jzc::RouterRecvConnection, mut tx: Router, channel: &'static str) {
    let mut aborting: Option<Aborting> = None;
    loop {
        let read = match &aborting {
            Some(a) => match tokio::time::timeout_at(a.until, wire::read(&mut rx, &k.replays)).await {
                Ok(read) => read,
                Err(_) => {
                    aborting = None;
                    continue;
                }
            },
            None => wire::read(&mut rx, &k.replays).await,
        };
        let incoming = match read {
            Ok(m) => m,
            Err(wire::WireError::Rejected(why)) => {
                crate::log!("{channel}: {why}");
                continue;
            }
            Err(e) => {
                crate::log!("{channel}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (msg, malformed) = match incoming {
            Incoming::Request(m) => (m, None),
            Incoming::Malformed { envelope, reason } => (envelope, Some(reason)),
        };
        k.iopub.status("busy", Some(&msg));
        let next = match malformed {
            Some(reason) => {
                crate::log!("{channel}: malformed {}: {reason}", msg.header.msg_type);
                reply_malformed(&k, &mut tx, &msg, &reason).await;
                Next::Continue
            }
            None if msg.header.msg_type == "execute_request" && aborting.as_ref().is_some_and(|a| msg.header.date <= a.failed_at) => {
                let n = k.execution_count.load(Ordering::SeqCst);
                let reply = json!({"status": "aborted", "execution_count": n, "user_expressions": {}, "payload": []});
                send_reply(&mut tx, &msg, "execute_reply", reply).await;
                Next::Continue
            }
            None => handle(&k, &mut tx, &msg).await,
        };
        k.iopub.status("idle", Some(&msg));
        match next {
            Next::Continue => {}
            Next::AbortQueued(failed_at) => aborting = Some(Aborting { until: tokio::time::Instant::now() + ABORT_WINDOW, failed_at }),
            Next::Exit => {
                k.iopub.flush().await;
                // Sends are queued, not flushed; give the sockets a moment before exiting.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
        }
    }
}

async fn send_reply(tx: &mut Router, parent: &JupyterMessage, msg_type: &str, content: Value) {
    let msg = UnknownMessage { msg_type: msg_type.into(), content }.as_child_of(parent);
    if let Err(e) = tx.send(msg).await {
        crate::log!("reply {msg_type} not delivered: {e}");
    }
}

fn reply_type(msg_type: &str) -> String {
    match msg_type.strip_suffix("_request") {
        Some(base) => format!("{base}_reply"),
        None => format!("{msg_type}_reply"),
    }
}

async fn reply_malformed(k: &Kernel, tx: &mut Router, msg: &JupyterMessage, reason: &str) {
    let mut content = json!({
        "status": "error",
        "ename": "BadRequest",
        "evalue": format!("malformed {}: {reason}", msg.header.msg_type),
        "traceback": [],
    });
    if msg.header.msg_type == "execute_request" {
        content["execution_count"] = json!(k.execution_count.load(Ordering::SeqCst));
        content["user_expressions"] = json!({});
        content["payload"] = json!([]);
    }
    send_reply(tx, msg, &reply_type(&msg.header.msg_type), content).await;
}

async fn handle(k: &Arc<Kernel>, tx: &mut Router, msg: &JupyterMessage) -> Next {
    use JupyterMessageContent as C;
    match &msg.content {
        C::KernelInfoRequest(_) => send_reply(tx, msg, "kernel_info_reply", kernel_info()).await,
        C::ExecuteRequest(req) => {
            let reply = execute(k, msg, req).await;
            let failed = reply["status"] == "error";
            let failed_at = chrono::Utc::now();
            send_reply(tx, msg, "execute_reply", reply).await;
            if failed && req.stop_on_error {
                return Next::AbortQueued(failed_at);
            }
        }
        C::CompleteRequest(req) => {
            let pos = text::byte_offset(&req.code, req.cursor_pos);
            let c = k.engine.complete(req.code.clone(), pos).await;
            let reply = json!({
                "status": "ok",
                "matches": c.matches,
                "cursor_start": text::char_offset(&req.code, c.start),
                "cursor_end": text::char_offset(&req.code, c.end),
                "metadata": {},
            });
            send_reply(tx, msg, "complete_reply", reply).await;
        }
        C::InspectRequest(req) => {
            let pos = text::byte_offset(&req.code, req.cursor_pos);
            let found = k.engine.inspect(req.code.clone(), pos).await;
            let reply = json!({
                "status": "ok",
                "found": found.is_some(),
                "data": found.unwrap_or_default(),
                "metadata": {},
            });
            send_reply(tx, msg, "inspect_reply", reply).await;
        }
        C::IsCompleteRequest(req) => {
            let reply = match k.engine.is_complete(&req.code) {
                Completeness::Complete => json!({"status": "complete"}),
                Completeness::Incomplete { indent } => json!({"status": "incomplete", "indent": indent}),
                Completeness::Invalid => json!({"status": "invalid"}),
                Completeness::Unknown => json!({"status": "unknown"}),
            };
            send_reply(tx, msg, "is_complete_reply", reply).await;
        }
        C::HistoryRequest(req) => {
            let answer = k.history.lock().unwrap().answer(req);
            let reply = match answer {
                Ok(history) => json!({"status": "ok", "history": history}),
                Err(why) => json!({"status": "error", "ename": "BadRequest", "evalue": why, "traceback": [], "history": []}),
            };
            send_reply(tx, msg, "history_reply", reply).await;
        }
        C::CommInfoRequest(_) => {
            send_reply(tx, msg, "comm_info_reply", json!({"status": "ok", "comms": {}})).await;
        }
        C::CommOpen(open) => {
            // No comm targets are registered: close it, as ipykernel does, so the
            // frontend does not wait for one.
            k.iopub.send("comm_close", json!({"comm_id": open.comm_id, "data": {}}), Some(msg));
        }
        C::CommMsg(_) | C::CommClose(_) => {}
        C::InterruptRequest(_) => {
            k.interrupt();
            send_reply(tx, msg, "interrupt_reply", json!({"status": "ok"})).await;
        }
        C::ShutdownRequest(req) => {
            k.interrupt();
            let _ = tokio::time::timeout(Duration::from_secs(5), k.engine.shutdown()).await;
            let content = json!({"status": "ok", "restart": req.restart});
            send_reply(tx, msg, "shutdown_reply", content.clone()).await;
            k.iopub.send("shutdown_reply", content, Some(msg));
            return Next::Exit;
        }
        _ => {
            crate::log!("no handler for {} (ignored)", msg.header.msg_type);
        }
    }
    Next::Continue
}

pub fn kernel_info() -> Value {
    json!({
        "status": "ok",
        "protocol_version": PROTOCOL_VERSION,
        "implementation": "ranch",
        "implementation_version": env!("CARGO_PKG_VERSION"),
        "language_info": {
            "name": "rust",
            "version": "",
            "mimetype": "text/rust",
            "file_extension": ".rs",
            "pygments_lexer": "rust",
            "codemirror_mode": "rust",
        },
        "banner": "ranch: Rust in Jupyter (evcxr), with %%ranch and %in_ddp for parallel cells",
        "help_links": [
            {"text": "Rust standard library", "url": "https://doc.rust-lang.org/std/"},
            {"text": "evcxr commands (:help)", "url": "https://github.com/evcxr/evcxr/blob/main/COMMON.md"},
        ],
        "supported_features": [],
        "debugger": false,
    })
}

struct IopubSink {
    iopub: Publisher,
    parent: JupyterMessage,
    /// The cell's help page, for its reply.
    page: std::sync::Mutex<Option<MimeBundle>>,
}

impl OutputSink for IopubSink {
    fn stream(&self, stream: Stream, text: &str) {
        if !text.is_empty() {
            self.iopub.send_output("stream", json!({"name": stream.name(), "text": text}), Some(&self.parent));
        }
    }
    fn display(&self, data: MimeBundle, metadata: MimeBundle) {
        let content = json!({"data": data, "metadata": metadata, "transient": {}});
        self.iopub.send_output("display_data", content, Some(&self.parent));
    }
    fn page(&self, data: MimeBundle) {
        *self.page.lock().unwrap() = Some(data);
    }
    fn display_in_place(&self, data: MimeBundle, metadata: MimeBundle, id: &str, update: bool) {
        let content = json!({"data": data, "metadata": metadata, "transient": {"display_id": id}});
        let kind = if update { "update_display_data" } else { "display_data" };
        self.iopub.send_output(kind, content, Some(&self.parent));
    }
    fn clear_output(&self) {
        self.iopub.send_output("clear_output", json!({"wait": true}), Some(&self.parent));
    }
}

struct StdinInput {
    kernel: Arc<Kernel>,
    parent: JupyterMessage,
}

impl InputProvider for StdinInput {
    /// Asks the client for a line and waits for its answer (see [`read_stdin`]: only a
    /// correctly signed `input_reply` answers); an interrupt ends the wait with no answer.
    fn read_line(&self, prompt: &str, password: bool) -> Option<String> {
        let k = &self.kernel;
        k.runtime.block_on(async {
            let cancelled = k.input_cancel.notified();
            tokio::pin!(cancelled);
            cancelled.as_mut().enable();
            let mut replies = k.input_replies.lock().await;
            // Answers to earlier prompts that came too late are not this prompt's answer.
            while replies.try_recv().is_ok() {}
            let request = UnknownMessage { msg_type: "input_request".into(), content: json!({"prompt": prompt, "password": password}) }
                .as_child_of(&self.parent);
            k.stdin.lock().await.send(request).await.ok()?;
            tokio::select! {
                value = replies.recv() => value,
                _ = &mut cancelled => None,
            }
        })
    }
}

async fn execute(k: &Arc<Kernel>, msg: &JupyterMessage, req: &jupyter_protocol::ExecuteRequest) -> Value {
    let counts = !req.silent && req.store_history;
    let n = if counts { k.execution_count.fetch_add(1, Ordering::SeqCst) + 1 } else { k.execution_count.load(Ordering::SeqCst) };
    if !req.silent {
        k.iopub.send("execute_input", json!({"code": req.code, "execution_count": n}), Some(msg));
    }
    if counts {
        k.history.lock().unwrap().record(n, &req.code);
    }
    let sink = Arc::new(IopubSink { iopub: k.iopub.clone(), parent: msg.clone(), page: Default::default() });
    let cx = CellContext {
        sink: sink.clone(),
        input: req.allow_stdin.then(|| Arc::new(StdinInput { kernel: k.clone(), parent: msg.clone() }) as Arc<dyn InputProvider>),
        execution_count: n,
    };
    let outcome = k
        .engine
        .execute(req.code.clone(), cx)
        .await
        .unwrap_or_else(|| Err(CellError::new("KernelError", "the interpreter thread stopped")));
    match outcome {
        Ok(result) => {
            if let Some(data) = result.filter(|_| !req.silent) {
                let content = json!({"execution_count": n, "data": data, "metadata": {}, "transient": {}});
                k.iopub.send("execute_result", content, Some(msg));
            }
            let page = sink.page.lock().unwrap().take();
            let payload: Vec<Value> = page.map(|data| json!({"source": "page", "data": data, "start": 0})).into_iter().collect();
            json!({"status": "ok", "execution_count": n, "user_expressions": {}, "payload": payload})
        }
        Err(e) => {
            let err = json!({"ename": e.ename, "evalue": e.evalue, "traceback": e.traceback});
            k.iopub.send("error", err.clone(), Some(msg));
            let mut reply = json!({"status": "error", "execution_count": n, "user_expressions": {}, "payload": []});
            reply.as_object_mut().unwrap().extend(err.as_object().unwrap().clone());
            reply
        }
    }
}
