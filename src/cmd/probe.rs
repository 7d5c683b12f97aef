//! `identity-sidecar probe`: asks the sidecar's own `/readyz` or `/healthz` over loopback.
//!
//! Kubelet's `httpGet` probes connect to the pod IP, but the sidecar listens on loopback only
//! (anything on the pod IP could hand tokens to other pods). So the manifests use `exec` probes
//! that run this subcommand inside the sidecar container, and the legacy (non-native) sidecar
//! uses it with `--wait` as a `postStart` hook, which holds back the app containers until the
//! sidecar serves. Plain blocking std I/O: no runtime, no TLS, one request.
//!
//! With `--node-agent` it is the init container of a node-mode pod: it GETs
//! `http://169.254.169.254/readyz` from inside the pod and succeeds only on a 200 that carries
//! `x-identity-sidecar-agent: node` (and, with `--pod-uid`, `x-identity-sidecar-pod-uid` equal to
//! the pod's own UID). The real IMDS sends neither header, so until the node agent's listener is
//! up in the pod, the app containers do not start and never reach the node's own identity.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::flags::Checked;
use crate::duration;
use crate::server::{AGENT_HEADER, AGENT_NODE, POD_UID_HEADER};

/// Arguments of `identity-sidecar probe`.
#[derive(Clone, Debug, clap::Args)]
pub struct ProbeArgs {
    /// Path to GET; success is a 200 answer.
    #[arg(default_value = "/readyz")]
    pub path: String,
    /// Address of the sidecar. [default: the first of IDENTITY_SIDECAR_LISTEN, else 127.0.0.1:8000]
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<String>,
    /// How long one attempt may take (a bare number is seconds; at least 1s is used for 0).
    #[arg(long, default_value = "2", value_name = "DURATION", value_parser = Checked(duration::parse))]
    pub timeout: Duration,
    /// Keep trying for up to this long (a bare number is seconds; 0: one attempt).
    #[arg(long, default_value = "0", value_name = "DURATION", value_parser = Checked(duration::parse))]
    pub wait: Duration,
    /// Wait for the node agent's listener in this pod: the answer must carry the header
    /// `x-identity-sidecar-agent: node`, which the real IMDS never sends. [default address:
    /// 169.254.169.254:80]
    #[arg(long)]
    pub node_agent: bool,
    /// With --node-agent: the answer must also name this pod UID in `x-identity-sidecar-pod-uid`
    /// (give the pod's `metadata.uid` through the downward API). Ignored without --node-agent.
    #[arg(long, env = "POD_UID", value_name = "UID")]
    pub pod_uid: Option<String>,
}

/// What an answer must carry besides a 200.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expect {
    /// Header name (lower case) and value.
    pub headers: Vec<(&'static str, String)>,
}

impl ProbeArgs {
    fn expect(&self) -> Expect {
        let mut headers = Vec::new();
        if self.node_agent {
            headers.push((AGENT_HEADER, AGENT_NODE.to_string()));
            if let Some(uid) = self
                .pod_uid
                .as_deref()
                .map(str::trim)
                .filter(|u| !u.is_empty())
            {
                headers.push((POD_UID_HEADER, uid.to_ascii_lowercase()));
            }
        }
        Expect { headers }
    }
}

fn default_addr() -> String {
    std::env::var("IDENTITY_SIDECAR_LISTEN")
        .ok()
        .and_then(|v| {
            v.split(',')
                .map(str::trim)
                .find(|s| !s.is_empty())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "127.0.0.1:8000".to_owned())
}

/// One GET; `Ok(status)` or a description of what failed.
pub fn get_status(addr: &SocketAddr, path: &str, timeout: Duration) -> Result<u16, String> {
    get_head(addr, path, timeout).map(|(status, _)| status)
}

/// Largest answer head read.
const MAX_HEAD: usize = 16 * 1024;

/// One GET; the status and the headers (names lower-cased) of the answer.
pub fn get_head(
    addr: &SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, Vec<(String, String)>), String> {
    let mut s =
        TcpStream::connect_timeout(addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => head.extend_from_slice(&buf[..k]),
            // A head cut short still has its status line.
            Err(_) if !head.is_empty() => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let code = match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code,
        _ => {
            let shown: String = line.chars().take(64).collect();
            return Err(format!("not an HTTP answer: {shown:?}"));
        }
    };
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((code, headers))
}

/// Whether an answer is the one waited for: a 200 carrying every expected header.
pub fn check(status: u16, headers: &[(String, String)], expect: &Expect) -> Result<(), String> {
    if status != 200 {
        return Err(format!("answered {status}"));
    }
    for (name, want) in &expect.headers {
        match headers.iter().find(|(k, _)| k == name) {
            Some((_, v)) if v.eq_ignore_ascii_case(want) => {}
            Some((_, v)) => {
                return Err(format!("answered 200 with {name}: {v:?}, not {want:?}"));
            }
            None => {
                return Err(format!(
                    "answered 200 without {name}: not the node agent's listener (the real IMDS?)"
                ));
            }
        }
    }
    Ok(())
}

/// Entry point of the `probe` subcommand: exit 0 on a 200, 1 otherwise.
pub fn run(args: ProbeArgs) -> ExitCode {
    let addr_s = args.addr.clone().unwrap_or_else(|| {
        if args.node_agent {
            "169.254.169.254:80".to_owned()
        } else {
            default_addr()
        }
    });
    let expect = args.expect();
    let addr = match addr_s.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => a,
        _ => {
            eprintln!("identity-sidecar probe: error: bad address {addr_s:?}");
            return ExitCode::FAILURE;
        }
    };
    let timeout = if args.timeout.is_zero() {
        Duration::from_secs(1)
    } else {
        args.timeout
    };
    let deadline = Instant::now() + args.wait;
    loop {
        let last = match get_head(&addr, &args.path, timeout) {
            Ok((status, headers)) => match check(status, &headers, &expect) {
                Ok(()) => return ExitCode::SUCCESS,
                Err(e) => format!("{} {e}", args.path),
            },
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            eprintln!("identity-sidecar probe: {last}");
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn answer_once(reply: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = l.accept() {
                let mut buf = [0u8; 512];
                let _ = c.read(&mut buf);
                let _ = c.write_all(reply.as_bytes());
            }
        });
        addr
    }

    #[test]
    fn a_200_is_read_as_200() {
        let addr = answer_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        assert_eq!(
            get_status(&addr, "/readyz", Duration::from_secs(2)),
            Ok(200)
        );
    }

    #[test]
    fn a_503_is_read_as_503() {
        let addr = answer_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        assert_eq!(
            get_status(&addr, "/readyz", Duration::from_secs(2)),
            Ok(503)
        );
    }

    #[test]
    fn garbage_is_an_error() {
        let addr = answer_once("hello");
        assert!(get_status(&addr, "/readyz", Duration::from_secs(2)).is_err());
    }

    #[test]
    fn the_node_agent_is_told_from_the_real_imds_by_its_header() {
        let args = ProbeArgs {
            path: "/readyz".into(),
            addr: None,
            timeout: Duration::from_secs(1),
            wait: Duration::ZERO,
            node_agent: true,
            pod_uid: Some("AAAA-1".into()),
        };
        let expect = args.expect();
        let imds = answer_once("HTTP/1.1 200 OK\r\nServer: Microsoft-IIS/10.0\r\n\r\n");
        let (status, headers) = get_head(&imds, "/readyz", Duration::from_secs(2)).expect("head");
        assert!(check(status, &headers, &expect).is_err(), "real IMDS");
        let other = answer_once(
            "HTTP/1.1 200 OK\r\nX-Identity-Sidecar-Agent: node\r\nx-identity-sidecar-pod-uid: bbbb-2\r\n\r\n",
        );
        let (status, headers) = get_head(&other, "/readyz", Duration::from_secs(2)).expect("head");
        assert!(
            check(status, &headers, &expect).is_err(),
            "another pod's listener"
        );
        let agent = answer_once(
            "HTTP/1.1 200 OK\r\nx-identity-sidecar-agent: node\r\nx-identity-sidecar-pod-uid: aaaa-1\r\ncontent-length: 0\r\n\r\n",
        );
        let (status, headers) = get_head(&agent, "/readyz", Duration::from_secs(2)).expect("head");
        assert_eq!(check(status, &headers, &expect), Ok(()));
        assert!(check(503, &headers, &expect).is_err());
    }

    #[test]
    fn nothing_listening_is_an_error() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        assert!(get_status(&addr, "/healthz", Duration::from_secs(1)).is_err());
    }
}
