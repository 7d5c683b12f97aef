//! `identity-sidecar probe`: asks the sidecar's own `/readyz` or `/healthz` over loopback.
//!
//! Kubelet's `httpGet` probes connect to the pod IP, but the sidecar listens on loopback only
//! (anything on the pod IP could hand tokens to other pods). So the manifests use `exec` probes
//! that run this subcommand inside the sidecar container, and the legacy (non-native) sidecar
//! uses it with `--wait` as a `postStart` hook, which holds back the app containers until the
//! sidecar serves. Plain blocking std I/O: no runtime, no TLS, one request.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::flags::Checked;
use crate::duration;

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
    let mut s =
        TcpStream::connect_timeout(addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    let mut parts = line.split(' ');
    match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => Ok(code),
        _ => Err(format!("not an HTTP answer: {line:?}")),
    }
}

/// Entry point of the `probe` subcommand: exit 0 on a 200, 1 otherwise.
pub fn run(args: ProbeArgs) -> ExitCode {
    let addr_s = args.addr.clone().unwrap_or_else(default_addr);
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
        let last = match get_status(&addr, &args.path, timeout) {
            Ok(200) => return ExitCode::SUCCESS,
            Ok(code) => format!("{} answered {code}", args.path),
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
    fn nothing_listening_is_an_error() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        assert!(get_status(&addr, "/healthz", Duration::from_secs(1)).is_err());
    }
}
