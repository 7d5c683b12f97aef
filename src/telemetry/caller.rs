//! Who is calling: the uid that owns the peer's socket, read from the pod's socket table
//! (`/proc/net/tcp` and `/proc/net/tcp6`, readable without privileges; the sidecar shares the
//! pod's network namespace, so the app's sockets are in it), and the caller's process name when
//! processes are visible (`shareProcessNamespace`): the process holding the socket when its
//! `/proc/PID/fd` is readable to us (the same uid, or root), else the name all processes of that
//! uid share (`/proc/PID/status` and `comm` are world-readable), when they share one.
//!
//! Looked up once per connection, and only for the audit log. Nothing is ever refused for lack of
//! it: a caller that cannot be identified is audited with no uid.
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The caller of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub uid: Option<u32>,
    /// `/proc/PID/comm` of a process holding the socket, when visible.
    pub process: Option<String>,
}

/// One client connection as the request path sees it; its caller is looked up at most once, on
/// first use.
#[derive(Debug)]
pub struct Connection {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    caller: std::sync::OnceLock<Caller>,
}

impl Connection {
    pub fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        Connection {
            peer,
            local,
            caller: std::sync::OnceLock::new(),
        }
    }

    /// The caller, looked up now if this is the first time it is asked for.
    pub fn caller(&self) -> &Caller {
        self.caller.get_or_init(|| lookup(self.peer, self.local))
    }
}

/// Most processes looked at for the socket's owner; a pod has a handful.
const MAX_PIDS: usize = 4096;

/// The caller whose socket is connected from `peer` to our `local` address.
pub fn lookup(peer: SocketAddr, local: SocketAddr) -> Caller {
    let (peer, local) = (canonical(peer), canonical(local));
    let tables: &[&str] = if peer.is_ipv4() {
        &["/proc/net/tcp", "/proc/net/tcp6"]
    } else {
        &["/proc/net/tcp6"]
    };
    for table in tables {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        if let Some((uid, inode)) = find_socket(&text, peer, local) {
            return Caller {
                uid: Some(uid),
                process: process_of(inode).or_else(|| sole_name_of_uid(uid)),
            };
        }
    }
    Caller::default()
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The uid and inode of the socket bound to `peer` and connected to `local`, in a
/// `/proc/net/tcp{,6}` table.
fn find_socket(table: &str, peer: SocketAddr, local: SocketAddr) -> Option<(u32, u64)> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        if f.len() < 10 {
            return None;
        }
        let (from, to) = (parse_addr(f[1])?, parse_addr(f[2])?);
        (from == peer && to == local).then_some(())?;
        Some((f[7].parse().ok()?, f[9].parse().ok()?))
    })
}

/// `0100007F:1F40` (IPv4) or 32 hex digits and a port (IPv6): the kernel prints each 32-bit word
/// of the address as a native-endian integer.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |h: &str| u32::from_str_radix(h, 16).ok().map(u32::to_ne_bytes);
    let ip = match ip.len() {
        8 => IpAddr::from(word(ip)?),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(ip.get(i * 8..i * 8 + 8)?)?);
            }
            IpAddr::from(Ipv6Addr::from(b)).to_canonical()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The name of a process holding socket `inode`, when some `/proc/PID/fd` shows it to us.
fn process_of(inode: u64) -> Option<String> {
    if inode == 0 {
        return None;
    }
    let want = format!("socket:[{inode}]");
    let me = std::process::id().to_string();
    let procs = std::fs::read_dir("/proc").ok()?;
    for p in procs.flatten().take(MAX_PIDS) {
        let name = p.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()));
        if holds {
            let comm = std::fs::read_to_string(p.path().join("comm")).ok()?;
            return Some(comm.trim_end().to_string());
        }
    }
    None
}

/// The name every visible process of `uid` has, when they all have the same one.
fn sole_name_of_uid(uid: u32) -> Option<String> {
    let procs = std::fs::read_dir("/proc").ok()?;
    let me = std::process::id().to_string();
    let names = procs.flatten().take(MAX_PIDS).filter_map(|p| {
        let pid = p.file_name().into_string().ok()?;
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let status = std::fs::read_to_string(p.path().join("status")).ok()?;
        let comm = std::fs::read_to_string(p.path().join("comm")).ok()?;
        Some((real_uid(&status)?, comm.trim_end().to_string()))
    });
    sole_name(names, uid)
}

/// The real uid of a `/proc/PID/status` text (`Uid:` real, effective, saved, fs).
fn real_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The one name among the processes of `uid`; `None` when there are none or several names.
fn sole_name(procs: impl Iterator<Item = (u32, String)>, uid: u32) -> Option<String> {
    let mut found: Option<String> = None;
    for (_, name) in procs.filter(|(u, _)| *u == uid) {
        match &found {
            Some(f) if *f != name => return None,
            Some(_) => {}
            None => found = Some(name),
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_tables_address_forms() {
        let v4 = u32::from_ne_bytes([127, 0, 0, 1]);
        assert_eq!(
            parse_addr(&format!("{v4:08X}:1F40")),
            Some("127.0.0.1:8000".parse().expect("addr"))
        );
        // ::ffff:10.0.0.7 in tcp6, as the kernel prints it.
        let words = [
            0u32,
            0,
            u32::from_ne_bytes([0, 0, 0xff, 0xff]),
            u32::from_ne_bytes([10, 0, 0, 7]),
        ];
        let text: String = words.iter().map(|w| format!("{w:08X}")).collect();
        assert_eq!(
            parse_addr(&format!("{text}:0050")),
            Some("10.0.0.7:80".parse().expect("addr"))
        );
        assert_eq!(parse_addr("zz:1"), None);
    }

    #[test]
    fn a_uid_names_a_process_only_when_its_processes_agree() {
        let procs = || {
            [
                (1000, "python3"),
                (1000, "python3"),
                (0, "pause"),
                (1001, "java"),
                (1001, "sh"),
            ]
            .map(|(u, n)| (u, n.to_string()))
            .into_iter()
        };
        assert_eq!(sole_name(procs(), 1000), Some("python3".into()));
        assert_eq!(sole_name(procs(), 1001), None);
        assert_eq!(sole_name(procs(), 42), None);
        assert_eq!(
            real_uid("Name:\tx\nUid:\t1501\t1501\t1501\t1501\n"),
            Some(1501)
        );
    }

    #[test]
    fn finds_this_process_own_connection() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(server.local_addr().expect("addr")).expect("connect");
        let (_conn, peer) = server.accept().expect("accept");
        assert_eq!(peer, client.local_addr().expect("addr"));
        let caller = lookup(peer, server.local_addr().expect("addr"));
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        assert_eq!(caller.uid, Some(uid));
        let nobody = lookup("127.0.0.1:1".parse().expect("addr"), peer);
        assert_eq!(nobody, Caller::default());
    }
}
