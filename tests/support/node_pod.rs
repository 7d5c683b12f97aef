//! Pods for the node agent's tests, without a cluster: a "pod" is a network namespace
//! (`ip netns add`) holding a `sleep` process placed in a real cgroup v2 directory named the way
//! the kubelet names it (systemd driver:
//! `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/cri-containerd-<id>.scope`;
//! cgroupfs driver: `kubepods/besteffort/pod<uid>/<id>`), under a test-unique parent directory.
//! Where no cgroup v2 hierarchy is writable, a fake proc tree (`--proc-dir`) stands in: per
//! process a `cgroup` file with that path and an `ns/net` link to the real process's namespace.
//!
//! Also: the pod objects the fake API serves, the kubelet's directory of projected tokens, and a
//! blocking HTTP client that runs inside a namespace (on a thread that `setns`es into it).
//! Everything is removed by `Drop`, so a failing test cleans up too; names carry the test
//! process's PID and a counter, so concurrent runs never collide.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use identity_sidecar::mock_aad::{AppRegistration, FederatedCredential};
use serde_json::{Value, json};

pub const IMDS: &str = "169.254.169.254:80";
pub const NODE: &str = "node-under-test";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this process and call: `<prefix><pid>x<n>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A fresh pod UID.
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn sh(cmd: &mut Command) -> std::process::Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "{cmd:?}: {}; {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The first writable cgroup v2 mount, if any (`/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one).
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 3 && f[2] == "cgroup2" && f[3].split(',').any(|o| o == "rw") {
            let dir = PathBuf::from(f[1]);
            let probe = dir.join(unique("ndprobe"));
            if std::fs::create_dir(&probe).is_ok() {
                let _ = std::fs::remove_dir(&probe);
                return Some(dir);
            }
        }
    }
    None
}

/// Which cgroup driver names a pod's cgroup.
#[derive(Clone, Copy, Debug)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

/// The test's node: the kubelet's directory, and where pod processes get their cgroups.
pub struct Node {
    pub tmp: tempfile::TempDir,
    pub kubelet_root: PathBuf,
    /// `Some` in fake-proc mode: pass it as `--proc-dir`.
    pub proc_dir: Option<PathBuf>,
    /// The test's own directory in the cgroup v2 hierarchy (real-cgroup mode).
    cgroup_root: Option<PathBuf>,
}

impl Node {
    pub fn new() -> Node {
        let tmp = tempfile::tempdir().expect("tmp");
        let kubelet_root = tmp.path().join("kubelet");
        std::fs::create_dir_all(kubelet_root.join("pods")).expect("kubelet root");
        let (proc_dir, cgroup_root) = match cgroup2_mount() {
            Some(m) => {
                let root = m.join(format!("{}.slice", unique("ndtest")));
                std::fs::create_dir(&root).expect("cgroup root");
                (None, Some(root))
            }
            None => {
                let p = tmp.path().join("proc");
                std::fs::create_dir_all(&p).expect("proc");
                (Some(p), None)
            }
        };
        Node {
            tmp,
            kubelet_root,
            proc_dir,
            cgroup_root,
        }
    }

    /// Whether pods use real cgroups (else the fake proc tree).
    pub fn real_cgroups(&self) -> bool {
        self.cgroup_root.is_some()
    }

    /// The directory the kubelet projects pod `uid`'s volume `volume` into.
    pub fn token_dir(&self, uid: &str, volume: &str) -> PathBuf {
        self.kubelet_root
            .join("pods")
            .join(uid)
            .join("volumes/kubernetes.io~projected")
            .join(volume)
    }

    /// Places `pid` in pod `uid`'s cgroup (container `cid`) the way `driver` names it.
    fn place(&self, pid: u32, uid: &str, driver: Driver, cid: &str) -> Placement {
        let rel = match driver {
            Driver::Systemd => format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{cid}.scope",
                uid.replace('-', "_")
            ),
            Driver::Cgroupfs => format!("kubepods/besteffort/pod{uid}/{cid}"),
        };
        match (&self.cgroup_root, &self.proc_dir) {
            (Some(root), _) => {
                let dir = root.join(&rel);
                std::fs::create_dir_all(&dir).expect("cgroup dir");
                std::fs::write(dir.join("cgroup.procs"), pid.to_string()).expect("join cgroup");
                Placement::Cgroup(dir)
            }
            (None, Some(proc_dir)) => {
                let entry = proc_dir.join(pid.to_string());
                std::fs::create_dir_all(entry.join("ns")).expect("proc entry");
                std::fs::write(entry.join("cgroup"), format!("0::/{rel}\n")).expect("cgroup");
                std::os::unix::fs::symlink(format!("/proc/{pid}/ns/net"), entry.join("ns/net"))
                    .expect("ns link");
                Placement::Fake(entry)
            }
            (None, None) => unreachable!("a node has cgroups or a fake proc tree"),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(root) = &self.cgroup_root {
            remove_cgroup_tree(root);
        }
    }
}

/// rmdir bottom-up (cgroup directories are removed empty of processes, files and all).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

enum Placement {
    Cgroup(PathBuf),
    Fake(PathBuf),
}

/// One pod's network namespace and its process.
pub struct PodNs {
    /// The namespace's name under /run/netns; `None` for a host-network pod.
    pub ns: Option<String>,
    pub uid: String,
    pub ip: String,
    child: Child,
    placement: Placement,
    /// Whether dropping this deletes the namespace (not for a process joined to another's).
    owns_ns: bool,
}

impl PodNs {
    /// A pod namespace with `lo` up and `ip` on `eth0` (the pod IP), and a process of
    /// pod `uid` in it, in a cgroup named by `driver`.
    pub fn new(node: &Node, uid: &str, ip: &str, driver: Driver) -> PodNs {
        Self::new_as(node, uid, ip, driver, None)
    }

    /// [`PodNs::new`] with the process running as `user` (uid and gid) when given.
    pub fn new_as(node: &Node, uid: &str, ip: &str, driver: Driver, user: Option<u32>) -> PodNs {
        let ns = unique("ndpod");
        ok(Command::new("ip").args(["netns", "add", &ns]));
        let guard = NsGuard(ns.clone());
        ok(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]));
        // The pod IP on `eth0`, a veth whose peer stays in the namespace too (no dummy module
        // on every kernel; nothing is added to the node's namespace).
        ok(Command::new("ip").args([
            "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ]));
        ok(Command::new("ip").args(["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]));
        ok(Command::new("ip").args(["-n", &ns, "link", "set", "eth0", "up"]));
        ok(Command::new("ip").args(["-n", &ns, "link", "set", "eth0p", "up"]));
        let child = sleep_in(&ns, user);
        let placement = node.place(child.id(), uid, driver, &unique("c"));
        std::mem::forget(guard);
        PodNs {
            ns: Some(ns),
            uid: uid.to_string(),
            ip: ip.to_string(),
            child,
            placement,
            owns_ns: true,
        }
    }

    /// A host-network pod: its process stays in the node's own namespace.
    pub fn host_network(node: &Node, uid: &str, driver: Driver) -> PodNs {
        let child = Command::new("sleep")
            .arg("900")
            .stdin(Stdio::null())
            .spawn()
            .expect("sleep");
        let placement = node.place(child.id(), uid, driver, &unique("c"));
        PodNs {
            ns: None,
            uid: uid.to_string(),
            ip: String::new(),
            child,
            placement,
            owns_ns: true,
        }
    }

    /// Another process, of pod `uid`, in `other`'s namespace (for the ambiguity rules: a
    /// namespace shared by two pods, or one pod's processes in two namespaces).
    pub fn join(node: &Node, uid: &str, driver: Driver, other: &PodNs) -> PodNs {
        let ns = other.ns().to_string();
        let child = sleep_in(&ns, None);
        let placement = node.place(child.id(), uid, driver, &unique("c"));
        PodNs {
            ns: Some(ns),
            uid: uid.to_string(),
            ip: other.ip.clone(),
            child,
            placement,
            owns_ns: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ns(&self) -> &str {
        self.ns.as_deref().expect("a pod namespace")
    }

    /// Whether anything listens on 169.254.169.254:80 in this pod's namespace (its
    /// `/proc/<pid>/net/tcp`).
    pub fn has_imds_listener(&self) -> bool {
        imds_listener_in(&format!("/proc/{}/net/tcp", self.pid()))
    }

    /// A GET of `path_query` to 169.254.169.254:80 from inside the pod.
    pub fn get(&self, path_query: &str, headers: &[(&str, &str)]) -> std::io::Result<Answer> {
        let (ns, pq) = (self.ns().to_string(), path_query.to_string());
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        in_netns(&ns, move || {
            http_get(IMDS.parse().expect("addr"), &pq, &headers)
        })
    }

    /// A GET of `path_query` to `addr` (such as 127.0.0.1:8000) from inside the pod.
    pub fn get_at(
        &self,
        addr: &str,
        path_query: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Answer> {
        let (ns, pq) = (self.ns().to_string(), path_query.to_string());
        let addr: SocketAddr = addr.parse().expect("addr");
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        in_netns(&ns, move || http_get(addr, &pq, &headers))
    }

    /// An IMDS token request from inside the pod (`Metadata: true`).
    pub fn imds_token(
        &self,
        resource: &str,
        selector: Option<(&str, &str)>,
    ) -> std::io::Result<Answer> {
        let mut q =
            format!("/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}");
        if let Some((k, v)) = selector {
            q.push_str(&format!("&{k}={v}"));
        }
        self.get(&q, &[("Metadata", "true")])
    }
}

impl Drop for PodNs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        match &self.placement {
            Placement::Cgroup(dir) => {
                // The container's directory and the pod's above it.
                let _ = std::fs::remove_dir(dir);
                if let Some(parent) = dir.parent() {
                    let _ = std::fs::remove_dir(parent);
                }
            }
            Placement::Fake(entry) => {
                let _ = std::fs::remove_dir_all(entry);
            }
        }
        if let Some(ns) = self.ns.as_ref().filter(|_| self.owns_ns) {
            let _ = sh(Command::new("ip").args(["netns", "del", ns]));
        }
    }
}

/// A `sleep` in namespace `ns` (as `user`, uid and gid, when given), returned once it is in it:
/// `ip netns exec` execs it in the same process after entering the namespace.
fn sleep_in(ns: &str, user: Option<u32>) -> Child {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]);
    if let Some(u) = user {
        let id = u.to_string();
        cmd.args(["setpriv", "--reuid", &id, "--regid", &id, "--clear-groups"]);
    }
    let child = cmd
        .args(["sleep", "900"])
        .stdin(Stdio::null())
        .spawn()
        .expect("sleep in the namespace");
    let target = netns_id(Path::new(&format!("/run/netns/{ns}")));
    let pid = child.id();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while netns_id(Path::new(&format!("/proc/{pid}/ns/net"))) != target {
        assert!(
            std::time::Instant::now() < until,
            "sleep never entered {ns}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// Deletes a namespace when a `PodNs` fails half-built.
struct NsGuard(String);

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = sh(Command::new("ip").args(["netns", "del", &self.0]));
    }
}

fn netns_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether `/proc/.../net/tcp` shows a listener on 169.254.169.254:80.
pub fn imds_listener_in(tcp_table: &str) -> bool {
    let table = std::fs::read_to_string(tcp_table).unwrap_or_default();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1] == "FEA9FEA9:0050" && f[3] == "0A"
    })
}

/// Whether the node's own namespace listens on 169.254.169.254:80 or holds that address.
pub fn node_serves_imds() -> bool {
    let addr = sh(Command::new("ip").args(["-o", "addr", "show"]));
    imds_listener_in("/proc/1/net/tcp")
        || String::from_utf8_lossy(&addr.stdout).contains("169.254.169.254/32")
}

/// Runs `f` on a thread inside namespace `ns` (`/run/netns/<ns>`).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
    std::thread::spawn(move || {
        // SAFETY: a namespace fd; only this short-lived thread moves.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread")
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// A blocking GET with `Connection: close`.
pub fn http_get(
    addr: SocketAddr,
    path_query: &str,
    headers: &[(String, String)],
) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req =
        format!("GET {path_query} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: body.to_string(),
    })
}

/// How a pod object differs from a served one.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub service_account: String,
    pub ip: String,
    pub labelled: bool,
    pub host_network: bool,
    pub phase: &'static str,
    pub terminating: bool,
    pub annotations: Vec<(String, String)>,
    /// Literal `env` of the app container.
    pub env: Vec<(String, String)>,
}

impl PodSpec {
    pub fn new(name: &str, uid: &str, service_account: &str, ip: &str) -> PodSpec {
        PodSpec {
            name: name.into(),
            namespace: "apps".into(),
            uid: uid.into(),
            service_account: service_account.into(),
            ip: ip.into(),
            labelled: true,
            host_network: false,
            phase: "Running",
            terminating: false,
            annotations: Vec::new(),
            env: Vec::new(),
        }
    }

    /// The pod object the fake API serves: scheduled on [`NODE`], with the projected token
    /// volume `azure-identity` holding `token`.
    pub fn object(&self) -> Value {
        let mut annotations = serde_json::Map::new();
        if self.labelled {
            annotations.insert("identity-sidecar.io/mode".into(), json!("node"));
        }
        for (k, v) in &self.annotations {
            annotations.insert(k.clone(), json!(v));
        }
        let labels = if self.labelled {
            json!({"identity-sidecar.io/inject": "true", "app": self.name})
        } else {
            json!({"app": self.name})
        };
        let env: Vec<Value> = self
            .env
            .iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect();
        let mut v = json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid,
                         "labels": labels, "annotations": annotations},
            "spec": {"nodeName": NODE, "serviceAccountName": self.service_account,
                     "hostNetwork": self.host_network,
                     "containers": [{"name": "app", "image": "app", "env": env}],
                     "volumes": [{"name": "azure-identity", "projected": {"sources": [
                         {"serviceAccountToken": {"audience": "api://AzureADTokenExchange",
                                                  "expirationSeconds": 3600, "path": "token"}}]}}]},
            "status": {"phase": self.phase, "podIP": self.ip},
        });
        if self.terminating {
            v["metadata"]["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
        }
        v
    }
}

/// An app registration of the mock Entra ID in `tenant` that trusts the mock's own issuer for
/// `subject` (a ServiceAccount's `system:serviceaccount:NS:NAME`).
pub fn mock_app(tenant: &str, client_id: &str, subject: &str) -> AppRegistration {
    AppRegistration {
        tenant_id: tenant.into(),
        client_id: client_id.into(),
        object_id: None,
        client_secret: None,
        federated_credentials: vec![FederatedCredential::self_issued(subject)],
        roles: Vec::new(),
    }
}

/// The claims of an access token (unverified), for telling whose it is.
pub fn token_claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap_or("");
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}
