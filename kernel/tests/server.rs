//! The Jupyter protocol core served in-process, as evcxr's own integration tests drive its
//! context in-process: `server::serve` with a fake interpreter behind the `Interpreter`
//! seam, and jupyter-zmq-client's client connections in front. What is asserted is what a
//! frontend sees: each request's reply, and a cell's outputs on IOPub between its `busy`
//! and `idle`. (The end-to-end suite does the same through jupyter_client and the real
//! evcxr session; this runs in a second and says which layer broke.)

use jupyter_protocol::{
    CompleteRequest, ConnectionInfo, ExecuteRequest, IsCompleteRequest, JupyterMessage, KernelInfoRequest, ShutdownRequest, Transport,
};
use jupyter_zmq_client as jzc;
use ranch_kernel::interpreter::{
    CellContext, CellError, CellOutcome, Completeness, CompletenessCheck, Completions, Interpreter, Interrupter, MimeBundle, Stream,
};
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Runs cells by a tiny language: `print TEXT` writes TEXT, `fail` raises, `show` displays,
/// anything else returns itself upper-cased.
struct Fake {
    shut_down: Arc<AtomicBool>,
}

impl Interpreter for Fake {
    fn execute(&mut self, code: &str, cx: &CellContext) -> CellOutcome {
        if let Some(text) = code.strip_prefix("print ") {
            cx.sink.stream(Stream::Stdout, text);
            return Ok(None);
        }
        match code {
            "fail" => Err(CellError::new("Boom", "the cell failed")),
            "show" => {
                cx.sink.display(bundle("shown"), MimeBundle::new());
                Ok(None)
            }
            _ => Ok(Some(bundle(&code.to_uppercase()))),
        }
    }

    fn complete(&mut self, code: &str, cursor: usize) -> Completions {
        Completions { matches: vec![format!("{code}_done")], start: 0, end: cursor }
    }

    fn inspect(&mut self, _code: &str, _cursor: usize) -> Option<MimeBundle> {
        None
    }

    fn completeness(&self) -> CompletenessCheck {
        Arc::new(|code: &str| if code.ends_with('{') { Completeness::Incomplete { indent: "    ".into() } } else { Completeness::Complete })
    }

    fn interrupter(&self) -> Arc<dyn Interrupter> {
        struct Nothing;
        impl Interrupter for Nothing {
            fn interrupt(&self) {}
        }
        Arc::new(Nothing)
    }

    fn shutdown(&mut self) {
        self.shut_down.store(true, Ordering::SeqCst);
    }
}

fn bundle(text: &str) -> MimeBundle {
    let mut data = MimeBundle::new();
    data.insert("text/plain".into(), Value::String(text.into()));
    data
}

/// A frontend's connections to one in-process kernel.
struct Frontend {
    shell: jzc::ClientShellConnection,
    control: jzc::ClientControlConnection,
    iopub: jzc::ClientIoPubConnection,
}

/// A message as a frontend reads it: its type and its content as JSON.
fn read_as_json(msg: JupyterMessage) -> (String, Value) {
    (msg.header.msg_type.clone(), serde_json::to_value(&msg.content).expect("content serialises"))
}

impl Frontend {
    async fn request(&mut self, request: JupyterMessage) -> (String, Value) {
        self.shell.send(request).await.expect("the request is sent");
        read_as_json(within(self.shell.read()).await.expect("a reply"))
    }

    /// IOPub messages up to and including the next `idle`, without status messages.
    async fn outputs_until_idle(&mut self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        loop {
            let (kind, content) = read_as_json(within(self.iopub.read()).await.expect("an IOPub message"));
            match (kind.as_str(), content["execution_state"].as_str()) {
                ("status", Some("idle")) => return out,
                ("status", _) => {}
                _ => out.push((kind, content)),
            }
        }
    }
}

/// No step of these tests waits for long: a hang is a failure, not a stuck suite.
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f).await.expect("the kernel answered within 20 s")
}

/// Connects once the kernel has bound the socket, trying again for up to 20 s.
async fn until_bound<T, E: std::fmt::Debug, F: Future<Output = Result<T, E>>>(socket: &str, connect: impl Fn() -> F) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match connect().await {
            Ok(connection) => return connection,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("{socket}: the kernel never accepted a connection: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn start() -> (Frontend, tokio::task::JoinHandle<anyhow::Result<()>>, Arc<AtomicBool>) {
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (ports, listeners) = jzc::peek_ports_with_listeners(ip, 5).await.expect("free ports");
    let info = ConnectionInfo {
        transport: Transport::TCP,
        ip: ip.to_string(),
        shell_port: ports[0],
        iopub_port: ports[1],
        stdin_port: ports[2],
        control_port: ports[3],
        hb_port: ports[4],
        signature_scheme: "hmac-sha256".into(),
        key: uuid::Uuid::new_v4().to_string(),
        kernel_name: Some("ranch".into()),
    };
    let shut_down = Arc::new(AtomicBool::new(false));
    let fake = Fake { shut_down: shut_down.clone() };
    // The ports are let go before the kernel starts: a connection that reached one of these
    // listeners would be reset when it is dropped.
    drop(listeners);
    let served = info.clone();
    let server = tokio::spawn(async move { ranch_kernel::server::serve(served, Box::new(fake)).await });
    let session = uuid::Uuid::new_v4().to_string();
    let identity = jzc::peer_identity_for_session(&session).expect("an identity");
    // The kernel binds as it starts, and this crate's zeromq does not retry a refused connect.
    let shell = until_bound("shell", || jzc::create_client_shell_connection_with_identity(&info, &session, identity.clone())).await;
    let control = until_bound("control", || jzc::create_client_control_connection(&info, &session)).await;
    let mut iopub = until_bound("iopub", || jzc::create_client_iopub_connection(&info, "", &session)).await;
    jzc::wait_for_iopub_welcome(&mut iopub, Duration::from_secs(20)).await.expect("the kernel welcomes its subscriber");
    (Frontend { shell, control, iopub }, server, shut_down)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frontend_gets_replies_and_each_cells_outputs_between_busy_and_idle() {
    let (mut fe, server, shut_down) = start().await;

    let (kind, info) = fe.request(KernelInfoRequest {}.into()).await;
    assert_eq!(kind, "kernel_info_reply");
    assert_eq!(info["language_info"]["name"], "rust", "{info}");
    assert_eq!(info["protocol_version"], ranch_kernel::server::PROTOCOL_VERSION);
    fe.outputs_until_idle().await;

    let (kind, reply) = fe.request(ExecuteRequest::new("print hello\n".into()).into()).await;
    assert_eq!((kind.as_str(), &reply["status"], &reply["execution_count"]), ("execute_reply", &json!("ok"), &json!(1)), "{reply}");
    let outputs = fe.outputs_until_idle().await;
    let kinds: Vec<&str> = outputs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["execute_input", "stream"], "{outputs:?}");
    assert_eq!(outputs[1].1["name"], "stdout");
    assert_eq!(outputs[1].1["text"], "hello\n");

    let (_, reply) = fe.request(ExecuteRequest::new("value".into()).into()).await;
    assert_eq!(reply["execution_count"], 2);
    let outputs = fe.outputs_until_idle().await;
    let result = outputs.iter().find(|(k, _)| k == "execute_result").expect("a value is an execute_result");
    assert_eq!(result.1["data"]["text/plain"], "VALUE");
    assert_eq!(result.1["execution_count"], 2);

    let (_, reply) = fe.request(ExecuteRequest::new("show".into()).into()).await;
    assert_eq!(reply["status"], "ok");
    let outputs = fe.outputs_until_idle().await;
    assert!(outputs.iter().any(|(k, c)| k == "display_data" && c["data"]["text/plain"] == "shown"), "{outputs:?}");

    let (_, reply) = fe.request(ExecuteRequest::new("fail".into()).into()).await;
    assert_eq!((&reply["status"], &reply["ename"], &reply["evalue"]), (&json!("error"), &json!("Boom"), &json!("the cell failed")));
    let outputs = fe.outputs_until_idle().await;
    let error = outputs.iter().find(|(k, _)| k == "error").expect("the error is published");
    assert_eq!(error.1["ename"], "Boom");

    let (kind, reply) = fe.request(CompleteRequest { code: "ab".into(), cursor_pos: 2 }.into()).await;
    assert_eq!(kind, "complete_reply");
    assert_eq!((&reply["matches"], &reply["cursor_start"], &reply["cursor_end"]), (&json!(["ab_done"]), &json!(0), &json!(2)));
    fe.outputs_until_idle().await;

    let (_, reply) = fe.request(IsCompleteRequest { code: "fn f() {".into() }.into()).await;
    assert_eq!((&reply["status"], &reply["indent"]), (&json!("incomplete"), &json!("    ")), "{reply}");
    fe.outputs_until_idle().await;

    fe.control.send(ShutdownRequest { restart: false }.into()).await.expect("sent");
    let (kind, reply) = read_as_json(within(fe.control.read()).await.expect("a shutdown reply"));
    assert_eq!((kind.as_str(), &reply["restart"]), ("shutdown_reply", &json!(false)));
    within(server).await.expect("the server task ends").expect("serve returns without an error");
    assert!(shut_down.load(Ordering::SeqCst), "the interpreter was told to shut down (it stops its children)");
}
