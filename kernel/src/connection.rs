//! The connection file a frontend hands the kernel, checked before anything binds.

use anyhow::{Context, bail};
use jupyter_protocol::ConnectionInfo;
use std::path::Path;

/// Reads and validates a connection file.
///
/// Only `hmac-sha256` is implemented by the signing layer, so any other scheme stops the
/// kernel here: otherwise every message would fail verification and be dropped silently.
pub fn load(path: &Path) -> anyhow::Result<ConnectionInfo> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read connection file {}", path.display()))?;
    parse(&text).with_context(|| format!("bad connection file {}", path.display()))
}

pub fn parse(text: &str) -> anyhow::Result<ConnectionInfo> {
    let mut info: ConnectionInfo = serde_json::from_str(text)?;
    if !info.key.is_empty() && info.signature_scheme != "hmac-sha256" {
        bail!(
            "unsupported signature_scheme {:?}: ranch only implements \"hmac-sha256\"; \
             start the kernel with a connection file that uses it",
            info.signature_scheme
        );
    }
    // zmq.rs would read "*" as a host name; the wildcard address is what is meant.
    if info.ip == "*" {
        info.ip = "0.0.0.0".into();
    }
    if info.key.is_empty() {
        // Without a key any message is accepted: anyone who can reach the ports runs code.
        if !is_loopback(&info.ip) {
            bail!(
                "the connection file has an empty key and ip {:?}: anyone who can reach that address \
                 could run code as you. Use a key (Jupyter writes one by default) or ip 127.0.0.1",
                info.ip
            );
        }
        crate::log!("WARNING: the connection file has no key; messages are not authenticated (loopback only)");
    }
    Ok(info)
}

fn is_loopback(ip: &str) -> bool {
    ip == "localhost" || ip.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(scheme: &str, key: &str, ip: &str) -> String {
        format!(
            r#"{{"ip":"{ip}","transport":"tcp","shell_port":1,"iopub_port":2,"stdin_port":3,
               "control_port":4,"hb_port":5,"key":"{key}","signature_scheme":"{scheme}"}}"#
        )
    }

    #[test]
    fn accepts_hmac_sha256() {
        let info = parse(&file("hmac-sha256", "k", "127.0.0.1")).unwrap();
        assert_eq!(info.shell_url(), "tcp://127.0.0.1:1");
    }

    #[test]
    fn rejects_other_schemes() {
        let err = parse(&file("hmac-md5", "k", "127.0.0.1")).unwrap_err();
        assert!(err.to_string().contains("hmac-md5"), "{err}");
    }

    #[test]
    fn unsigned_mode_ignores_scheme() {
        assert!(parse(&file("", "", "127.0.0.1")).is_ok());
    }

    #[test]
    fn an_empty_key_is_refused_off_loopback() {
        for ip in ["0.0.0.0", "*", "10.1.2.3", "::", "example.org"] {
            let err = parse(&file("hmac-sha256", "", ip)).unwrap_err();
            assert!(err.to_string().contains("empty key"), "{ip}: {err}");
        }
        for ip in ["127.0.0.1", "127.0.0.2", "::1", "localhost"] {
            assert!(parse(&file("hmac-sha256", "", ip)).is_ok(), "{ip}");
        }
    }

    #[test]
    fn wildcard_ip_binds_all_interfaces() {
        assert_eq!(parse(&file("hmac-sha256", "k", "*")).unwrap().ip, "0.0.0.0");
    }
}
