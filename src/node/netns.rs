//! A pod's network namespace from on-node truth, and a listener bound inside it.
//!
//! [`scan`] reads `<proc>/<pid>/cgroup` of every process and keeps those whose cgroup path names
//! a pod UID, in either kubelet cgroup driver's spelling: cgroupfs
//! (`/kubepods/besteffort/pod<uid>/<container>`) or systemd
//! (`/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_with_underscores>.slice/…`);
//! then it stats `<proc>/<pid>/ns/net`. A pod UID maps to a namespace only when that is
//! unambiguous: all its processes share one namespace, no process of another pod UID is in it,
//! and it is not the agent's own (the node's) namespace. Anything else is [`Found::Ambiguous`]
//! and the pod gets no listener. The pod IP plays no part.
//!
//! [`bind_in`] opens the namespace file, checks it is still the namespace the scan saw (a PID
//! can be reused between the two), and on a thread of its own (`setns` moves only the calling
//! thread, and that thread then ends) adds `169.254.169.254/32` to the namespace's `lo` with one
//! rtnetlink `RTM_NEWADDR` (create-or-replace, so a restarted agent adds it again harmlessly) and
//! binds the listener there, and opens a `NETLINK_SOCK_DIAG` socket there too (the audit line
//! asks it for the uid of each caller's socket, which only that namespace's socket can see). A socket stays in the namespace it was made in, so the listener
//! serves that pod alone, whatever thread accepts on it. The address stays when the listener
//! closes: the pod then gets "connection refused" from its own `lo`, never a route to the node's
//! real IMDS.
use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::telemetry::caller::NamespaceDiag;

/// A network namespace: the device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

impl std::fmt::Display for NetnsId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "net:[{}]", self.ino)
    }
}

/// What the scan found for one pod UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Every process of the pod is in this namespace, and no other pod's is; `pid` is one of them.
    One { netns: NetnsId, pid: u32 },
    /// No listener: why.
    Ambiguous(String),
}

/// Pod UID (lower case) to what was found.
pub type Scan = HashMap<String, Found>;

/// The pod UID a cgroup path names, if any.
pub fn pod_uid_in_path(path: &str) -> Option<String> {
    path.split('/').find_map(pod_uid_in_component)
}

fn pod_uid_in_component(c: &str) -> Option<String> {
    // cgroupfs: `pod<uid>`.
    if let Some(rest) = c.strip_prefix("pod")
        && is_uid(rest)
    {
        return Some(rest.to_ascii_lowercase());
    }
    // systemd: `kubepods[-<qos>]-pod<uid_with_underscores>.slice`.
    let stem = c.strip_suffix(".slice")?;
    stem.split('-').find_map(|part| {
        let uid = part.strip_prefix("pod")?.replace('_', "-");
        is_uid(&uid).then(|| uid.to_ascii_lowercase())
    })
}

/// A UUID in its usual 8-4-4-4-12 spelling.
fn is_uid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The pod UIDs named by a `/proc/<pid>/cgroup` file (one line per hierarchy).
fn uids_in_cgroup_file(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .filter_map(pod_uid_in_path)
        .collect()
}

fn netns_of(path: &Path) -> io::Result<NetnsId> {
    let m = std::fs::metadata(path)?;
    Ok(NetnsId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// The agent's own network namespace: the node's (the agent runs with `hostNetwork`).
pub fn own_netns() -> io::Result<NetnsId> {
    netns_of(Path::new("/proc/thread-self/ns/net"))
        .or_else(|_| netns_of(Path::new("/proc/self/ns/net")))
}

/// Reads every process under `proc_dir` and maps pod UIDs to their namespace (see the module
/// docs for the rules). Processes that vanish during the scan are skipped.
pub fn scan(proc_dir: &Path, own: NetnsId) -> io::Result<Scan> {
    // uid -> (namespaces, a pid per namespace); namespace -> uids.
    let mut by_uid: HashMap<String, HashMap<NetnsId, u32>> = HashMap::new();
    let mut by_ns: HashMap<NetnsId, BTreeSet<String>> = HashMap::new();
    let mut conflicted: BTreeSet<String> = BTreeSet::new();
    for entry in std::fs::read_dir(proc_dir)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let Ok(text) = std::fs::read_to_string(dir.join("cgroup")) else {
            continue;
        };
        let uids = uids_in_cgroup_file(&text);
        if uids.is_empty() {
            continue;
        }
        if uids.len() > 1 {
            conflicted.extend(uids);
            continue;
        }
        let Ok(ns) = netns_of(&dir.join("ns/net")) else {
            continue;
        };
        for uid in uids {
            by_uid
                .entry(uid.clone())
                .or_default()
                .entry(ns)
                .or_insert(pid);
            by_ns.entry(ns).or_default().insert(uid);
        }
    }
    let mut out = Scan::new();
    for (uid, spaces) in by_uid {
        let found = if conflicted.contains(&uid) {
            Found::Ambiguous("a process's cgroups name two pods".into())
        } else if spaces.len() > 1 {
            Found::Ambiguous(format!(
                "its processes are in {} network namespaces",
                spaces.len()
            ))
        } else {
            let Some((&netns, &pid)) = spaces.iter().next() else {
                continue;
            };
            let sharing = by_ns.get(&netns).map_or(0, BTreeSet::len);
            if netns == own {
                Found::Ambiguous("its processes are in the node's own network namespace".into())
            } else if sharing > 1 {
                Found::Ambiguous(format!(
                    "its network namespace {netns} holds processes of {sharing} pods"
                ))
            } else {
                Found::One { netns, pid }
            }
        };
        out.insert(uid, found);
    }
    for uid in conflicted {
        out.entry(uid)
            .or_insert_with(|| Found::Ambiguous("a process's cgroups name two pods".into()));
    }
    Ok(out)
}

/// The namespace file of `pid` under `proc_dir`.
pub fn ns_file(proc_dir: &Path, pid: u32) -> PathBuf {
    proc_dir.join(pid.to_string()).join("ns/net")
}

/// What [`bind_in`] made inside a pod's namespace.
pub struct Bound {
    pub listeners: Vec<std::net::TcpListener>,
    /// A socket-diagnostics socket of the pod's namespace, for the audit line's caller uid.
    pub diag: io::Result<NamespaceDiag>,
}

/// Enters the namespace of `ns_path` on a thread of its own, makes sure it is `expect` and that
/// the IP of `addrs[0]` is on its `lo`, and binds a listener on each of `addrs` there
/// (non-blocking, for Tokio).
pub fn bind_in(ns_path: &Path, expect: NetnsId, addrs: Vec<SocketAddrV4>) -> io::Result<Bound> {
    let file = std::fs::File::open(ns_path)?;
    let m = file.metadata()?;
    let got = NetnsId {
        dev: m.dev(),
        ino: m.ino(),
    };
    if got != expect {
        return Err(io::Error::other(format!(
            "{} is now {got}, not {expect}: the process changed",
            ns_path.display()
        )));
    }
    let thread = std::thread::Builder::new()
        .name("netns-bind".into())
        .spawn(move || -> io::Result<Bound> {
            // SAFETY: setns on a valid namespace fd; it changes only this thread, which ends
            // right after binding and runs nothing else.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(first) = addrs.first() {
                add_loopback_address(*first.ip())?;
            }
            let listeners = addrs
                .iter()
                .map(|a| {
                    let l = std::net::TcpListener::bind(a)?;
                    l.set_nonblocking(true)?;
                    Ok(l)
                })
                .collect::<io::Result<Vec<_>>>()?;
            Ok(Bound {
                listeners,
                diag: NamespaceDiag::open(),
            })
        })?;
    thread
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

const NLMSG_HDR: usize = 16;
const IFADDRMSG: usize = 8;
const RTA_HDR: usize = 4;

/// Adds `ip/32` (scope host) to `lo` of the calling thread's namespace; already there is fine.
pub fn add_loopback_address(ip: Ipv4Addr) -> io::Result<()> {
    let name = c"lo";
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain socket creation; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let msg = new_addr_message(index, ip, 1);
    // SAFETY: an all-zero sockaddr_nl is valid; the kernel is pid 0.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: msg and kernel outlive the call; lengths are theirs.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&raw const kernel).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return ack_result(&buf[..n as usize]);
    }
}

/// `RTM_NEWADDR` for `ip/32` on interface `index`, scope host, create or replace, with an ack.
fn new_addr_message(index: u32, ip: Ipv4Addr, seq: u32) -> Vec<u8> {
    let len = NLMSG_HDR + IFADDRMSG + 2 * (RTA_HDR + 4);
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&libc::RTM_NEWADDR.to_ne_bytes());
    let flags =
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // ifaddrmsg: family, prefix length, flags, scope, index.
    m.extend_from_slice(&[libc::AF_INET as u8, 32, 0, libc::RT_SCOPE_HOST]);
    m.extend_from_slice(&index.to_ne_bytes());
    for kind in [libc::IFA_LOCAL, libc::IFA_ADDRESS] {
        m.extend_from_slice(&((RTA_HDR + 4) as u16).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&ip.octets());
    }
    m
}

/// The outcome an `NLMSG_ERROR` ack carries (0: done; `EEXIST`: already there).
fn ack_result(reply: &[u8]) -> io::Result<()> {
    if reply.len() < NLMSG_HDR + 4 {
        return Err(io::Error::other("short rtnetlink answer"));
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if kind != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::other(format!(
            "unexpected rtnetlink answer type {kind}"
        )));
    }
    let code = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
    match -code {
        0 => Ok(()),
        libc::EEXIST => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f3a1c2e-1111-4222-8333-944455556666";

    #[test]
    fn both_cgroup_drivers_name_the_pod() {
        let systemd = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-abc.scope",
            UID.replace('-', "_")
        );
        let cgroupfs = format!("4:memory:/kubepods/burstable/pod{UID}/0123abcd");
        let guaranteed = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/x",
            UID.replace('-', "_")
        );
        for text in [systemd, cgroupfs, guaranteed] {
            assert_eq!(
                uids_in_cgroup_file(&text).into_iter().collect::<Vec<_>>(),
                vec![UID.to_string()],
                "{text}"
            );
        }
        for other in [
            "0::/system.slice/containerd.service",
            "0::/kubepods.slice/kubepods-besteffort.slice",
            "0::/user.slice/pod1234.slice",
            "0::/kubepods/podnot-a-uid/x",
        ] {
            assert!(uids_in_cgroup_file(other).is_empty(), "{other}");
        }
    }

    #[test]
    fn the_address_message_is_well_formed_and_acks_are_read() {
        let m = new_addr_message(1, Ipv4Addr::new(169, 254, 169, 254), 7);
        assert_eq!(m.len(), 40);
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]), 40);
        assert_eq!(&m[36..40], &[169, 254, 169, 254]);
        let ack = |code: i32| {
            let mut r = vec![0u8; 36];
            r[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
            r[16..20].copy_from_slice(&code.to_ne_bytes());
            r
        };
        assert!(ack_result(&ack(0)).is_ok());
        assert!(ack_result(&ack(-libc::EEXIST)).is_ok());
        assert!(ack_result(&ack(-libc::EPERM)).is_err());
        assert!(ack_result(&[0u8; 3]).is_err());
    }

    #[test]
    fn the_scan_refuses_shared_and_split_namespaces() {
        // A fake proc tree whose ns/net links point at two real files standing in for two
        // namespaces (the scan only compares device and inode).
        let dir = tempfile::tempdir().expect("tmp");
        let (na, nb) = (dir.path().join("nsA"), dir.path().join("nsB"));
        std::fs::write(&na, "").expect("a");
        std::fs::write(&nb, "").expect("b");
        let proc_dir = dir.path().join("proc");
        let uid = |n: u8| format!("{n:08x}-0000-4000-8000-000000000000");
        let add = |pid: u32, uid: &str, ns: &Path| {
            let p = proc_dir.join(pid.to_string());
            std::fs::create_dir_all(p.join("ns")).expect("mkdir");
            std::fs::write(
                p.join("cgroup"),
                format!("0::/kubepods/besteffort/pod{uid}/c\n"),
            )
            .expect("cgroup");
            std::os::unix::fs::symlink(ns, p.join("ns/net")).expect("link");
        };
        add(10, &uid(1), &na);
        add(11, &uid(1), &na);
        add(20, &uid(2), &nb);
        add(21, &uid(3), &nb);
        let own = netns_of(&dir.path().join("nsA")).expect("own");
        let s = scan(&proc_dir, NetnsId { dev: 0, ino: 0 }).expect("scan");
        assert!(matches!(s.get(&uid(1)), Some(Found::One { .. })));
        assert!(matches!(s.get(&uid(2)), Some(Found::Ambiguous(_))));
        assert!(matches!(s.get(&uid(3)), Some(Found::Ambiguous(_))));
        let s = scan(&proc_dir, own).expect("scan");
        assert!(
            matches!(s.get(&uid(1)), Some(Found::Ambiguous(_))),
            "node's namespace"
        );
        add(12, &uid(1), &nb);
        let s = scan(&proc_dir, NetnsId { dev: 0, ino: 0 }).expect("scan");
        assert!(matches!(s.get(&uid(1)), Some(Found::Ambiguous(_))), "split");
    }
}
