//! Who is calling: the uid that owns the peer's socket, and the caller's process name when
//! processes are visible (`shareProcessNamespace`). Looked up once per connection, and only for
//! the audit log; nothing is ever refused for lack of it (a caller that cannot be identified is
//! audited with no uid).
//!
//! - **uid**: asked of the kernel for exactly that socket with a `NETLINK_SOCK_DIAG` request
//!   (`inet_diag`, no privileges needed; the sidecar shares the pod's network namespace, so the
//!   app's sockets are in it): a hash lookup, a few microseconds whatever the number of sockets.
//!   Where netlink is unavailable, the pod's socket table (`/proc/net/tcp`, `/proc/net/tcp6`) is
//!   read instead, which costs in proportion to the sockets in the namespace.
//! - **process name**: the processes whose real uid is the socket's (`/proc/PID/status`, world
//!   readable) are looked at; the one holding the socket names it when its `/proc/PID/fd` is
//!   readable to us (the same uid, or root), else the name all of them share, when they share
//!   one. Remembered per uid for [`NAME_TTL`], so a client opening a connection per request
//!   does not make the sidecar walk `/proc` each time.
//!
//! In node mode the agent runs in the node's namespace while the caller's socket is in the pod's:
//! a netlink socket answers only for the namespace it was opened in, so the agent opens one
//! [`NamespaceDiag`] per pod, on the thread that entered the pod's namespace to bind the
//! listener, and each connection of that pod asks it ([`Connection::in_namespace`]). The process
//! name is not looked up there: the agent sees every process of the node (`hostPID`), so a name
//! chosen by uid could belong to another pod.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The caller of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub uid: Option<u32>,
    /// `/proc/PID/comm` of the caller's process, when visible.
    pub process: Option<String>,
}

/// One client connection as the request path sees it; its caller is looked up at most once, on
/// first use.
#[derive(Debug)]
pub struct Connection {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The accepting socket's namespace, when it is not ours (node mode).
    namespace: Option<Arc<NamespaceDiag>>,
    caller: std::sync::OnceLock<Caller>,
}

impl Connection {
    pub fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        Connection {
            peer,
            local,
            namespace: None,
            caller: std::sync::OnceLock::new(),
        }
    }

    /// A connection accepted by a socket of another network namespace, whose caller is asked of
    /// `diag` (opened in that namespace); `None`: the caller is not looked up (no uid).
    pub fn in_namespace(
        peer: SocketAddr,
        local: SocketAddr,
        diag: Option<Arc<NamespaceDiag>>,
    ) -> Self {
        Connection {
            peer,
            local,
            namespace: Some(diag.unwrap_or_else(|| Arc::new(NamespaceDiag::none()))),
            caller: std::sync::OnceLock::new(),
        }
    }

    /// The caller, looked up now if this is the first time it is asked for.
    pub fn caller(&self) -> &Caller {
        self.caller.get_or_init(|| match &self.namespace {
            None => lookup(self.peer, self.local),
            Some(ns) => Caller {
                uid: ns.socket_owner(canonical(self.peer), canonical(self.local)),
                process: None,
            },
        })
    }
}

/// A `NETLINK_SOCK_DIAG` socket opened in one network namespace (the thread's when opened), for
/// the uids of that namespace's sockets. Queries are serialized (a few microseconds each) and
/// matched to their answer by sequence number.
#[derive(Debug)]
pub struct NamespaceDiag {
    fd: Option<Mutex<std::os::fd::OwnedFd>>,
    seq: std::sync::atomic::AtomicU32,
}

impl NamespaceDiag {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> std::io::Result<NamespaceDiag> {
        Ok(NamespaceDiag {
            fd: Some(Mutex::new(diag::open()?)),
            seq: std::sync::atomic::AtomicU32::new(1),
        })
    }

    /// No socket: every lookup finds nothing.
    fn none() -> NamespaceDiag {
        NamespaceDiag {
            fd: None,
            seq: std::sync::atomic::AtomicU32::new(1),
        }
    }

    /// The uid of the TCP socket bound to `peer` and connected to `local` in this namespace.
    pub fn socket_owner(&self, peer: SocketAddr, local: SocketAddr) -> Option<u32> {
        let fd = self.fd.as_ref()?.lock().ok()?;
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        diag::query(&fd, seq, peer, local).map(|(uid, _)| uid)
    }
}

/// Most processes looked at for a name; a pod has a handful.
const MAX_PIDS: usize = 4096;
/// How long a uid's process name is reused before `/proc` is walked again.
pub const NAME_TTL: Duration = Duration::from_secs(10);

/// The caller whose socket is connected from `peer` to our `local` address.
pub fn lookup(peer: SocketAddr, local: SocketAddr) -> Caller {
    let (peer, local) = (canonical(peer), canonical(local));
    let found = diag::socket_owner(peer, local).or_else(|| proc_tables(peer, local));
    match found {
        Some((uid, inode)) => Caller {
            uid: Some(uid),
            process: process_name(uid, inode),
        },
        None => Caller::default(),
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The uid and inode from `/proc/net/tcp{,6}`, where netlink is unavailable.
fn proc_tables(peer: SocketAddr, local: SocketAddr) -> Option<(u32, u64)> {
    let tables: &[&str] = if peer.is_ipv4() {
        &["/proc/net/tcp", "/proc/net/tcp6"]
    } else {
        &["/proc/net/tcp6"]
    };
    tables.iter().find_map(|table| {
        let text = std::fs::read_to_string(table).ok()?;
        find_socket(&text, peer, local)
    })
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

type NameCache = HashMap<u32, (Instant, Option<String>)>;
static NAMES: Mutex<Option<NameCache>> = Mutex::new(None);

/// The process name for a socket of `uid` (inode `inode`), from the cache or from `/proc`.
fn process_name(uid: u32, inode: u64) -> Option<String> {
    let now = Instant::now();
    if let Ok(cache) = NAMES.lock()
        && let Some((at, name)) = cache.as_ref().and_then(|c| c.get(&uid))
        && now.duration_since(*at) < NAME_TTL
    {
        return name.clone();
    }
    let name = scan_processes(uid, inode);
    if let Ok(mut cache) = NAMES.lock() {
        let cache = cache.get_or_insert_with(HashMap::new);
        cache.retain(|_, (at, _)| now.duration_since(*at) < NAME_TTL);
        cache.insert(uid, (now, name.clone()));
    }
    name
}

/// The processes of `uid`: the one holding socket `inode` when its fds are readable, else the
/// name they all share.
fn scan_processes(uid: u32, inode: u64) -> Option<String> {
    let me = std::process::id().to_string();
    let want = format!("socket:[{inode}]");
    let mut names = Vec::new();
    for p in std::fs::read_dir("/proc").ok()?.flatten().take(MAX_PIDS) {
        let Ok(pid) = p.file_name().into_string() else {
            continue;
        };
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let status = std::fs::read_to_string(p.path().join("status")).ok();
        if status.as_deref().and_then(real_uid) != Some(uid) {
            continue;
        }
        let Ok(comm) = std::fs::read_to_string(p.path().join("comm")) else {
            continue;
        };
        let comm = comm.trim_end().to_string();
        let holds = inode != 0
            && std::fs::read_dir(p.path().join("fd")).is_ok_and(|fds| {
                fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str())
                })
            });
        if holds {
            return Some(comm);
        }
        names.push(comm);
    }
    sole_name(names)
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

/// The one name among `names`; `None` when there are none or several different ones.
fn sole_name(names: Vec<String>) -> Option<String> {
    let first = names.first()?;
    names.iter().all(|n| n == first).then(|| first.clone())
}

/// The kernel's socket diagnostics over netlink: one exact `inet_diag` request.
mod diag {
    use std::net::{IpAddr, SocketAddr};
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

    const NETLINK_SOCK_DIAG: i32 = 4;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const NLMSG_ERROR: u16 = 2;

    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct NlMsgHdr {
        len: u32,
        ty: u16,
        flags: u16,
        seq: u32,
        pid: u32,
    }

    /// `struct inet_diag_sockid`: ports and addresses in network byte order.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct SockId {
        sport: [u8; 2],
        dport: [u8; 2],
        src: [u8; 16],
        dst: [u8; 16],
        interface: u32,
        cookie: [u32; 2],
    }

    /// `struct inet_diag_req_v2`.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Request {
        hdr: NlMsgHdr,
        family: u8,
        protocol: u8,
        ext: u8,
        pad: u8,
        states: u32,
        id: SockId,
    }

    /// `struct inet_diag_msg`.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Reply {
        family: u8,
        state: u8,
        timer: u8,
        retrans: u8,
        id: SockId,
        expires: u32,
        rqueue: u32,
        wqueue: u32,
        uid: u32,
        inode: u32,
    }

    fn addr_bytes(ip: IpAddr) -> [u8; 16] {
        let mut b = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => b = v6.octets(),
        }
        b
    }

    /// A `NETLINK_SOCK_DIAG` socket in the calling thread's network namespace, with a 1 s
    /// receive timeout.
    pub(super) fn open() -> std::io::Result<OwnedFd> {
        // SAFETY: plain socket creation; the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: a valid fd and a timeval that outlives the call.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        Ok(fd)
    }

    /// The uid and inode of the TCP socket bound to `peer` and connected to `local`, asked on a
    /// socket of our own namespace opened for this one question.
    pub(super) fn socket_owner(peer: SocketAddr, local: SocketAddr) -> Option<(u32, u64)> {
        query(&open().ok()?, 1, peer, local)
    }

    /// The uid and inode of the TCP socket bound to `peer` and connected to `local`, in the
    /// namespace `fd` was opened in; the answer must carry sequence number `seq` (an answer
    /// left over from an earlier query that timed out is skipped).
    pub(super) fn query(
        fd: &OwnedFd,
        seq: u32,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Option<(u32, u64)> {
        let family = if peer.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let req = Request {
            hdr: NlMsgHdr {
                len: std::mem::size_of::<Request>() as u32,
                ty: SOCK_DIAG_BY_FAMILY,
                flags: NLM_F_REQUEST,
                seq,
                pid: 0,
            },
            family: family as u8,
            protocol: libc::IPPROTO_TCP as u8,
            states: u32::MAX,
            id: SockId {
                sport: peer.port().to_be_bytes(),
                dport: local.port().to_be_bytes(),
                src: addr_bytes(peer.ip()),
                dst: addr_bytes(local.ip()),
                // INET_DIAG_NOCOOKIE: match by address, not by cookie.
                cookie: [u32::MAX, u32::MAX],
                ..SockId::default()
            },
            ..Request::default()
        };
        // SAFETY: plain syscalls on a socket we own; the buffers outlive the calls and their
        // lengths are passed as they are.
        unsafe {
            let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
            kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            let sent = libc::sendto(
                fd.as_raw_fd(),
                (&raw const req).cast(),
                std::mem::size_of::<Request>(),
                0,
                (&raw const kernel).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            );
            if sent <= 0 {
                return None;
            }
            let mut buf = [0u8; 1024];
            // A few stale answers at most (earlier queries that timed out).
            for _ in 0..4 {
                let got = libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0);
                let answer = buf.get(..usize::try_from(got).ok()?)?;
                match parse(answer) {
                    Parsed::Answer { seq: s, found } if s == seq => return found,
                    _ => continue,
                }
            }
            None
        }
    }

    /// What one message of a reply says.
    enum Parsed {
        /// The answer to query `seq`: the socket's uid and inode, or `None` for an error
        /// (`ENOENT`: no such socket).
        Answer { seq: u32, found: Option<(u32, u64)> },
        /// A short read or another message.
        Other,
    }

    /// The first message of a reply.
    fn parse(buf: &[u8]) -> Parsed {
        let hdr_len = std::mem::size_of::<NlMsgHdr>();
        let Some(hdr) = buf.get(..hdr_len) else {
            return Parsed::Other;
        };
        let ty = u16::from_ne_bytes([hdr[4], hdr[5]]);
        let seq = u32::from_ne_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
        if ty == NLMSG_ERROR {
            return Parsed::Answer { seq, found: None };
        }
        if ty != SOCK_DIAG_BY_FAMILY {
            return Parsed::Other;
        }
        let Some(body) = buf.get(hdr_len..hdr_len + std::mem::size_of::<Reply>()) else {
            return Parsed::Other;
        };
        // SAFETY: `body` holds size_of::<Reply>() bytes, and every bit pattern is a valid Reply
        // (integers only); read_unaligned needs no alignment.
        let reply: Reply = unsafe { std::ptr::read_unaligned(body.as_ptr().cast()) };
        Parsed::Answer {
            seq,
            found: Some((reply.uid, u64::from(reply.inode))),
        }
    }
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
        let names = |n: &[&str]| n.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            sole_name(names(&["python3", "python3"])),
            Some("python3".into())
        );
        assert_eq!(sole_name(names(&["java", "sh"])), None);
        assert_eq!(sole_name(names(&[])), None);
        assert_eq!(
            real_uid("Name:\tx\nUid:\t1501\t1501\t1501\t1501\n"),
            Some(1501)
        );
    }

    /// Netlink and the socket table agree on this process's own connection, over IPv4 and
    /// IPv6 loopback.
    #[test]
    fn finds_this_process_own_connection_both_ways() {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(server) = std::net::TcpListener::bind(bind) else {
                continue; // no IPv6 loopback here
            };
            let local = server.local_addr().expect("addr");
            let _client = std::net::TcpStream::connect(local).expect("connect");
            let (_conn, peer) = server.accept().expect("accept");
            let by_netlink = diag::socket_owner(canonical(peer), canonical(local));
            let by_table = proc_tables(canonical(peer), canonical(local));
            assert_eq!(by_netlink.map(|f| f.0), Some(uid), "{bind}");
            assert_eq!(by_netlink, by_table, "{bind}");
            assert_eq!(lookup(peer, local).uid, Some(uid));
            // The same answer on a kept socket, question after question.
            let ns = NamespaceDiag::open().expect("sock_diag socket");
            for _ in 0..3 {
                assert_eq!(
                    ns.socket_owner(canonical(peer), canonical(local)),
                    Some(uid)
                );
            }
            let conn = Connection::in_namespace(peer, local, Some(Arc::new(ns)));
            assert_eq!(conn.caller().uid, Some(uid));
            assert_eq!(conn.caller().process, None);
        }
        let nobody: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        assert_eq!(diag::socket_owner(nobody, nobody), None);
        assert_eq!(lookup(nobody, nobody), Caller::default());
    }
}
