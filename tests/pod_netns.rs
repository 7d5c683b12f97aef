//! A pod built from network namespaces, for real: `init-network` installs its NAT rules with
//! the real iptables, the real `serve` runs under the excluded uid, a fake Entra ID listens on
//! the namespace's loopback, and the real Python `azure-identity` `ManagedIdentityCredential`,
//! run with no endpoint variables at all, gets its token from 169.254.169.254. A fake "real
//! IMDS" on a dummy interface holding 169.254.169.254 answers `/metadata/instance` through the
//! sidecar (`--imds-passthrough`), which proves the sidecar's own traffic is not redirected.
//!
//! Needs root, `ip`, `iptables-nft`/`iptables-legacy` and `setpriv` (scripts/install-system-deps).
//! The SDK step needs `.cache/sdk/py` (scripts/install-sdks). What is missing follows the one skip
//! rule of `tests/support/system.rs`: a failure under CI or as root, a visible SKIP elsewhere.
//! Namespaces and processes are removed by Drop
//! guards, so a failing assertion cleans up too.
mod support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;

use identity_sidecar::netfilter::{CHAIN, SIDECAR_UID};
use support::system::skip;

const BIN: &str = env!("CARGO_BIN_EXE_identity-sidecar");
const REPO: &str = env!("CARGO_MANIFEST_DIR");
const FAKE_ENTRA_PORT: u16 = 18080;
const SIDECAR_PORT: u16 = 8000;
const ACCESS_TOKEN: &str = "fake-entra-access-token-for-pod-test";

/// `setpriv` arguments that leave uid 0 with NET_ADMIN only, as the imds-intercept init container.
const NET_ADMIN_ONLY: &[&str] = &[
    "--bounding-set",
    "-all,+net_admin",
    "--inh-caps",
    "-all",
    "--",
];

/// iptables-legacy takes a machine-wide lock: run these tests one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why this machine cannot run the namespace tests, if it cannot.
fn netns_unavailable() -> Option<String> {
    let tools = [
        "ip",
        "iptables-nft",
        "iptables-legacy",
        "setpriv",
        "python3",
    ];
    if let Some(why) = support::system::missing(Some("pod netns tests"), &tools) {
        return Some(why);
    }
    let probe = format!("isc-probe-{}", std::process::id());
    let ok = run(Command::new("ip").args(["netns", "add", &probe]))
        .status
        .success();
    let _ = run(Command::new("ip").args(["netns", "del", &probe]));
    if !ok {
        return Some("`ip netns add` does not work here".into());
    }
    None
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "status {}; stdout: {}; stderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout).trim(),
        String::from_utf8_lossy(&o.stderr).trim()
    )
}

fn must(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(o.status.success(), "{cmd:?} failed: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The absolute interpreter behind `python3` (pyenv shims need an environment we clear).
fn system_python() -> String {
    must(Command::new("python3").args(["-c", "import sys; print(sys.executable)"]))
        .trim()
        .to_owned()
}

/// A network namespace standing in for a pod; deleted on drop.
struct Pod {
    name: String,
}

impl Pod {
    fn new(tag: &str) -> Pod {
        let name = format!("isc-{tag}-{}", std::process::id());
        let _ = run(Command::new("ip").args(["netns", "del", &name]));
        must(Command::new("ip").args(["netns", "add", &name]));
        let pod = Pod { name };
        must(Command::new("ip").args(["-n", &pod.name, "link", "set", "lo", "up"]));
        // The "real IMDS": 169.254.169.254 on an interface of its own, so the address is routable in
        // the pod and something genuine answers there when traffic is not redirected.
        // A dummy interface where the kernel has the module, else a veth pair (both ends here).
        let dummy = run(
            Command::new("ip").args(["-n", &pod.name, "link", "add", "imds0", "type", "dummy"])
        );
        if !dummy.status.success() {
            must(Command::new("ip").args([
                "-n", &pod.name, "link", "add", "imds0", "type", "veth", "peer", "name", "imds1",
            ]));
            must(Command::new("ip").args(["-n", &pod.name, "link", "set", "imds1", "up"]));
        }
        must(Command::new("ip").args([
            "-n",
            &pod.name,
            "addr",
            "add",
            "169.254.169.254/32",
            "dev",
            "imds0",
        ]));
        must(Command::new("ip").args(["-n", &pod.name, "link", "set", "imds0", "up"]));
        pod
    }

    /// `ip netns exec POD env -i PATH=... program args...`: nothing leaks from the test's env.
    fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, "env", "-i"])
            .arg("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .arg(program);
        c
    }

    fn nat_rules(&self, iptables: &str) -> Vec<String> {
        must(self.exec(iptables).args(["-t", "nat", "-S"]))
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A child process killed on drop; its output file is printed when the test is failing.
struct Proc {
    child: Child,
    what: &'static str,
    log: PathBuf,
}

impl Proc {
    fn spawn(what: &'static str, mut cmd: Command, log: PathBuf) -> Proc {
        let err = fs::File::create(&log).unwrap_or_else(|e| panic!("log {log:?}: {e}"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc { child, what, log }
    }

    /// Waits for the fake's "ready" line (it prints it once bound; EOF means it died).
    fn wait_ready_line(&mut self) {
        let out = self.child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        assert_eq!(
            line.trim(),
            "ready",
            "{} did not start: {}",
            self.what,
            fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} output ---\n{}",
                self.what,
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Runs `client.py get URL` in the pod as an app would (root, empty environment).
fn app_get(pod: &Pod, py: &str, url: &str) -> String {
    must(
        pod.exec(py)
            .arg(format!("{REPO}/tests/pod/client.py"))
            .args(["get", url, "--metadata"]),
    )
    .trim()
    .to_owned()
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The rules `init-network` owns, as `-S` prints them.
fn our_rules(rules: &[String]) -> Vec<String> {
    rules
        .iter()
        .filter(|r| r.contains(CHAIN))
        .cloned()
        .collect()
}

fn assert_one_rule_set(rules: &[String]) {
    let ours = our_rules(rules);
    assert_eq!(
        ours,
        [
            format!("-N {CHAIN}"),
            format!("-A OUTPUT -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j {CHAIN}"),
            format!("-A {CHAIN} -m owner --uid-owner {SIDECAR_UID} -j RETURN"),
            format!("-A {CHAIN} -p tcp -j DNAT --to-destination 127.0.0.1:{SIDECAR_PORT}"),
        ],
        "all nat rules: {rules:#?}"
    );
}

/// A scratch directory every uid can read (the sidecar runs as SIDECAR_UID).
fn world_readable_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("isc-pod-")
        .tempdir()
        .expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

#[test]
fn pod_with_intercepted_imds_serves_the_real_python_sdk() {
    let _serial = serial();
    if let Some(why) = netns_unavailable() {
        return skip(&why);
    }
    let py = system_python();
    let dir = world_readable_tempdir();
    let d = dir.path();
    let pod = Pod::new("pod");

    // The fakes: Entra ID on the pod's loopback, the "real IMDS" on 169.254.169.254:80.
    let token_file = d.join("azure-identity-token");
    fs::write(
        &token_file,
        support::federated_jwt("system:serviceaccount:default:app", 3600),
    )
    .expect("token file");
    fs::set_permissions(&token_file, fs::Permissions::from_mode(0o644)).expect("chmod");
    let fakes = format!("{REPO}/tests/pod/fakes.py");
    let entra_log = d.join("entra.jsonl");
    let imds_log = d.join("imds.jsonl");
    let mut cmd = pod.exec(&py);
    cmd.args([&fakes, "entra", "--host", "127.0.0.1"])
        .args(["--port", &FAKE_ENTRA_PORT.to_string()])
        .arg("--log")
        .arg(&entra_log)
        .arg("--token-file")
        .arg(&token_file);
    let mut entra = Proc::spawn("fake Entra ID", cmd, d.join("entra.out"));
    entra.wait_ready_line();
    let mut cmd = pod.exec(&py);
    cmd.args([
        &fakes,
        "imds",
        "--host",
        "169.254.169.254",
        "--port",
        "80",
        "--log",
    ])
    .arg(&imds_log);
    let mut imds = Proc::spawn("fake real IMDS", cmd, d.join("imds.out"));
    imds.wait_ready_line();

    // Before: the app reaches the "real IMDS" directly.
    let before = pod.nat_rules("iptables-nft");
    let url = "http://169.254.169.254/metadata/instance?api-version=2021-02-01";
    assert!(
        app_get(&pod, &py, url).starts_with("200 "),
        "fake IMDS not reachable"
    );
    let direct = lines(&imds_log).len();

    // init-network, for real, twice, with only the capability the manifest grants: one rule set.
    for _ in 0..2 {
        let o = run(pod
            .exec("setpriv")
            .args(NET_ADMIN_ONLY)
            .args([BIN, "init-network"]));
        assert!(o.status.success(), "init-network: {}", text(&o));
    }
    assert_one_rule_set(&pod.nat_rules("iptables-nft"));

    // Intercepted and nothing on the sidecar port yet: refused, and the real IMDS saw nothing.
    let got = app_get(&pod, &py, url);
    assert!(
        got.starts_with("ERR"),
        "expected a refused connection, got {got}"
    );
    assert_eq!(
        lines(&imds_log).len(),
        direct,
        "request was not intercepted"
    );

    // The sidecar, as the excluded uid, with passthrough to the real IMDS.
    let bin = d.join("identity-sidecar");
    fs::copy(BIN, &bin).expect("copy binary");
    let uid = SIDECAR_UID.to_string();
    let mut cmd = pod.exec("setpriv");
    cmd.args(["--reuid", &uid, "--regid", &uid, "--clear-groups", "--"])
        .arg(&bin)
        .args(["serve", "--client-id", support::CLIENT_ID])
        .args(["--tenant-id", support::TENANT_ID])
        .arg("--token-file")
        .arg(&token_file)
        .args([
            "--authority-host",
            &format!("http://127.0.0.1:{FAKE_ENTRA_PORT}"),
        ])
        .args(["--listen", &format!("127.0.0.1:{SIDECAR_PORT}")])
        .args(["--imds-passthrough", "--log-format", "json"]);
    let _sidecar = Proc::spawn("sidecar", cmd, d.join("sidecar.out"));
    must(
        pod.exec(&py)
            .arg(format!("{REPO}/tests/pod/client.py"))
            .args([
                "wait",
                &format!("http://127.0.0.1:{SIDECAR_PORT}/readyz"),
                "20",
            ]),
    );

    // The real SDK with no endpoint variables: only 169.254.169.254 is left to it.
    let sdk_python = format!("{REPO}/.cache/sdk/py/bin/python");
    if Path::new(&sdk_python).exists() {
        let o = run(pod
            .exec(&sdk_python)
            .arg(format!("{REPO}/tests/pod/mi_client.py")));
        assert!(o.status.success(), "azure-identity: {}", text(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), ACCESS_TOKEN);
        let calls = lines(&entra_log);
        let call = calls
            .iter()
            .find(|c| c["method"] == "POST")
            .unwrap_or_else(|| panic!("sidecar never called Entra ID: {calls:?}"));
        assert_eq!(
            call["path"],
            format!("/{}/oauth2/v2.0/token", support::TENANT_ID)
        );
        assert_eq!(call["form"]["client_id"], support::CLIENT_ID);
        assert_eq!(
            call["form"]["scope"],
            "https://management.azure.com/.default"
        );
    } else {
        skip(&format!(
            "{sdk_python} missing (scripts/install-sdks): azure-identity step not run"
        ));
    }

    // Passthrough: instance metadata comes from the real IMDS, via the sidecar, whose own
    // connection to 169.254.169.254 is exempt from the redirect.
    let got = app_get(&pod, &py, url);
    assert!(
        got.starts_with("200 ") && got.contains("fake-real-imds-vm"),
        "passthrough: {got}"
    );
    let seen = lines(&imds_log);
    assert_eq!(seen.len(), direct + 1, "real IMDS log: {seen:?}");

    // --remove restores the namespace: same nat table as before, IMDS reached directly again.
    drop(_sidecar);
    let o = run(pod.exec(BIN).args(["init-network", "--remove"]));
    assert!(o.status.success(), "init-network --remove: {}", text(&o));
    assert_eq!(pod.nat_rules("iptables-nft"), before);
    assert!(app_get(&pod, &py, url).contains("fake-real-imds-vm"));
}

#[test]
fn legacy_backend_installs_once_and_removes_cleanly() {
    let _serial = serial();
    if let Some(why) = netns_unavailable() {
        return skip(&why);
    }
    let pod = Pod::new("legacy");
    let before = pod.nat_rules("iptables-legacy");
    // Legacy needs NET_RAW besides NET_ADMIN; without it, it says so.
    let o = run(pod.exec("setpriv").args(NET_ADMIN_ONLY).args([
        BIN,
        "init-network",
        "--backend",
        "legacy",
    ]));
    assert!(!o.status.success(), "legacy without NET_RAW: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("NET_RAW"),
        "{}",
        text(&o)
    );
    for _ in 0..2 {
        let o = run(pod
            .exec("setpriv")
            .args([
                "--bounding-set",
                "-all,+net_admin,+net_raw",
                "--inh-caps",
                "-all",
                "--",
            ])
            .args([BIN, "init-network", "--backend", "legacy"]));
        assert!(o.status.success(), "init-network: {}", text(&o));
    }
    assert_one_rule_set(&pod.nat_rules("iptables-legacy"));
    // Auto mode finds the set where it is, so --remove needs no --backend.
    let o = run(pod.exec(BIN).args(["init-network", "--remove"]));
    assert!(o.status.success(), "init-network --remove: {}", text(&o));
    assert_eq!(pod.nat_rules("iptables-legacy"), before);
    // Removing again is a no-op, not an error.
    let o = run(pod.exec(BIN).args(["init-network", "--remove"]));
    assert!(o.status.success(), "second --remove: {}", text(&o));
}

#[test]
fn init_network_without_net_admin_says_what_is_missing() {
    let _serial = serial();
    if let Some(why) = netns_unavailable() {
        return skip(&why);
    }
    let pod = Pod::new("nocap");
    let o = run(pod
        .exec("setpriv")
        .args(["--reuid", "1000", "--regid", "1000", "--clear-groups", "--"])
        .args([BIN, "init-network"]));
    assert!(!o.status.success(), "must fail: {}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("NET_ADMIN"), "{err}");
    assert!(our_rules(&pod.nat_rules("iptables-nft")).is_empty());
}

#[test]
fn init_network_without_iptables_says_so() {
    // Needs no privileges: with PATH empty and an explicit missing program it must fail clearly.
    let o = run(Command::new(BIN)
        .args(["init-network", "--iptables", "/nonexistent/iptables"])
        .env("PATH", ""));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("/nonexistent/iptables") || err.contains("NET_ADMIN"),
        "{err}"
    );
}
