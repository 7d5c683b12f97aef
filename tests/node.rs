//! The node agent (`identity-sidecar-node`) end to end, without a cluster: the real binary runs
//! in this machine's namespace (the "node"), against a fake Kubernetes API (list and watch of the
//! node's pods by field selector, ServiceAccounts), a fake kubelet directory of projected tokens
//! in the kubelet's `..data` layout, and the mock Entra ID. Each "pod" is a network namespace
//! with a process in a cgroup named the way the kubelet names it (tests/support/node_pod.rs).
//! Requests come from inside the pods' namespaces, one test through the real Python
//! `azure-identity` `ManagedIdentityCredential()` with no environment at all.
//!
//! Needs root and `ip` (scripts/install-system-deps), and for the SDK test `.cache/sdk`
//! (scripts/install-sdks); what is missing follows the skip rule of tests/support/system.rs.
//! The tests run one at a time (they share the machine's two cores with the agent's scans).
#[path = "support/fake_kube.rs"]
mod fake_kube;
#[path = "support/node_pod.rs"]
mod node_pod;
mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fake_kube::FakeKube;
use identity_sidecar::mock_aad::{self, FederatedTokenWriter, MockAad, MockAadConfig};
use node_pod::{Driver, Node, PodNs, PodSpec, node_serves_imds, token_claims};

const AGENT: &str = env!("CARGO_BIN_EXE_identity-sidecar-node");
const SIDECAR: &str = env!("CARGO_BIN_EXE_identity-sidecar");
const TENANT: &str = mock_aad::DEFAULT_TENANT_ID;
const CLIENT_A: &str = "aaaaaaaa-0000-4000-8000-00000000000a";
const CLIENT_B: &str = "bbbbbbbb-0000-4000-8000-00000000000b";
const CLIENT_C: &str = "cccccccc-0000-4000-8000-00000000000c";
const VAULT: &str = "https://vault.azure.net";
const APP_SERVICE_SECRET: &str = "node-mode-app-service-secret";

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why the tests cannot run here, if they cannot.
fn unavailable() -> Option<String> {
    support::system::missing(Some("node-mode tests create network namespaces"), &["ip"])
}

fn subject(sa: &str) -> String {
    format!("system:serviceaccount:apps:{sa}")
}

/// Polls `f` every 50 ms until it is true or `limit` passes; returns the time it took.
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// The agent as a real process; killed when dropped.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node: fake API, mock Entra ID, kubelet directory, and the agent.
struct Harness {
    rt: tokio::runtime::Runtime,
    kube: FakeKube,
    mock: MockAad,
    node: Node,
    kubeconfig: PathBuf,
    writers: Vec<FederatedTokenWriter>,
    starts: usize,
}

impl Harness {
    fn new() -> Harness {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let kube = rt.block_on(FakeKube::start());
        let app = |client: &str, sa: &str| node_pod::mock_app(TENANT, client, &subject(sa));
        let mock = rt
            .block_on(mock_aad::start(MockAadConfig {
                plain_http: true,
                apps: vec![
                    app(CLIENT_A, "sa-a"),
                    app(CLIENT_B, "sa-b"),
                    app(CLIENT_C, "sa-c"),
                ],
                ..MockAadConfig::default()
            }))
            .expect("mock Entra ID");
        for (sa, client) in [("sa-a", CLIENT_A), ("sa-b", CLIENT_B), ("sa-c", CLIENT_C)] {
            kube.add_service_account(
                "apps",
                sa,
                &[
                    ("azure.workload.identity/client-id", client),
                    ("azure.workload.identity/tenant-id", TENANT),
                ],
            );
        }
        let node = Node::new();
        let kubeconfig = kube.kubeconfig(node.tmp.path());
        Harness {
            rt,
            kube,
            mock,
            node,
            kubeconfig,
            writers: Vec::new(),
            starts: 0,
        }
    }

    fn start_agent(&mut self) -> Agent {
        self.start_agent_with_caps(None)
    }

    /// The agent, limited to `caps` (setpriv's names, as root) when given.
    fn start_agent_with_caps(&mut self, caps: Option<&[&str]>) -> Agent {
        self.start_agent_with(caps, &[])
    }

    /// The agent, limited to `caps` when given, with `extra` arguments.
    fn start_agent_with(&mut self, caps: Option<&[&str]>, extra: &[&str]) -> Agent {
        self.starts += 1;
        let log = self
            .node
            .tmp
            .path()
            .join(format!("agent-{}.log", self.starts));
        let out = std::fs::File::create(&log).expect("log");
        let mut cmd = match caps {
            None => Command::new(AGENT),
            Some(caps) => {
                let set = format!(
                    "-all,{}",
                    caps.iter()
                        .map(|c| format!("+{c}"))
                        .collect::<Vec<_>>()
                        .join(",")
                );
                let mut c = Command::new("setpriv");
                c.args(["--bounding-set", &set, "--inh-caps", "-all", "--", AGENT]);
                c
            }
        };
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info")
            .args(["--node-name", node_pod::NODE, "--kubelet-root-dir"])
            .arg(&self.node.kubelet_root)
            .args(["--authority-host", self.mock.authority_url()])
            .args(extra);
        if let Some(p) = &self.node.proc_dir {
            cmd.arg("--proc-dir").arg(p);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start the agent");
        Agent { child, log }
    }

    /// Keeps pod `uid`'s projected token fresh for ServiceAccount `sa`.
    fn write_token(&mut self, uid: &str, sa: &str) {
        let _enter = self.rt.enter();
        let w = self
            .mock
            .federated_token_writer(
                self.node.token_dir(uid, "azure-identity"),
                &subject(sa),
                Duration::from_secs(3600),
            )
            .expect("token writer");
        self.writers.push(w);
    }

    /// A served-looking pod: namespace, process, token file, API object.
    fn pod(&mut self, name: &str, sa: &str, ip: &str, driver: Driver) -> (PodNs, PodSpec) {
        self.pod_with(name, sa, ip, driver, |_| {})
    }

    /// [`Harness::pod`], with `edit` applied to the object first.
    fn pod_with(
        &mut self,
        name: &str,
        sa: &str,
        ip: &str,
        driver: Driver,
        edit: impl FnOnce(&mut PodSpec),
    ) -> (PodNs, PodSpec) {
        let uid = node_pod::new_uid();
        let ns = PodNs::new(&self.node, &uid, ip, driver);
        self.write_token(&uid, sa);
        let mut spec = PodSpec::new(name, &uid, sa, ip);
        edit(&mut spec);
        self.kube.put_pod(spec.object());
        (ns, spec)
    }
}

/// True once the pod's own listener answers `/readyz` with 200 and its UID.
fn served(pod: &PodNs) -> bool {
    matches!(pod.get("/readyz", &[]), Ok(a) if a.status == 200
        && a.header("x-identity-sidecar-pod-uid") == Some(pod.uid.as_str()))
}

/// The client id in the access token an IMDS answer carries, or the answer's status and body.
fn token_owner(pod: &PodNs, selector: Option<(&str, &str)>) -> Result<String, String> {
    match pod.imds_token(VAULT, selector) {
        Ok(a) if a.status == 200 => {
            let v = a.json();
            let token = v["access_token"].as_str().unwrap_or("");
            let appid = token_claims(token)["appid"]
                .as_str()
                .unwrap_or("")
                .to_string();
            assert_eq!(
                v["client_id"].as_str(),
                Some(appid.as_str()),
                "client_id field"
            );
            Ok(appid)
        }
        Ok(a) => Err(format!("{} {}", a.status, a.body)),
        Err(e) => Err(format!("no connection: {e}")),
    }
}

#[test]
fn two_pods_get_only_their_own_identity_through_the_python_sdk() {
    let _s = serial();
    if let Some(why) = unavailable() {
        return support::system::skip(&why);
    }
    if !support::sdk::available("two_pods_get_only_their_own_identity_through_the_python_sdk") {
        return;
    }
    let mut h = Harness::new();
    // Pod A's app was also given an App Service endpoint (as the webhook injects it).
    let (a, _) = h.pod_with("app-a", "sa-a", "10.250.0.2", Driver::Systemd, |p| {
        p.env = vec![
            (
                "IDENTITY_ENDPOINT".into(),
                "http://127.0.0.1:8000/msi/token".into(),
            ),
            ("IDENTITY_HEADER".into(), APP_SERVICE_SECRET.into()),
        ];
    });
    let (b, _) = h.pod("app-b", "sa-b", "10.250.0.3", Driver::Cgroupfs);
    let agent = h.start_agent();
    wait_for("both pods served", Duration::from_secs(30), || {
        served(&a) && served(&b)
    });
    let mut tokens = Vec::new();
    for (pod, want) in [(&a, CLIENT_A), (&b, CLIENT_B)] {
        // ManagedIdentityCredential() with no environment at all: the SDK goes to IMDS.
        let v = support::sdk::python_mi_in_netns(pod.ns(), "azure-identity", VAULT);
        assert_eq!(v["ok"], true, "{v} / agent: {}", agent.logs());
        let token = v["token"].as_str().expect("token");
        assert_eq!(
            token_claims(token)["appid"],
            want,
            "pod {} got another identity",
            pod.ns()
        );
        tokens.push(token.to_string());
        assert_eq!(token_owner(pod, None).as_deref(), Ok(want));
    }
    // An identity not the pod's is refused as IMDS refuses an unknown identity.
    for selector in [
        ("client_id", CLIENT_B),
        ("object_id", CLIENT_B),
        (
            "msi_res_id",
            "/subscriptions/x/resourcegroups/y/providers/Microsoft.ManagedIdentity/userAssignedIdentities/b",
        ),
    ] {
        let a_answer = a.imds_token(VAULT, Some(selector)).expect("answer");
        assert_eq!(a_answer.status, 400, "{selector:?}: {}", a_answer.body);
        assert_eq!(
            a_answer.json()["error"],
            "invalid_request",
            "{}",
            a_answer.body
        );
        assert_eq!(a_answer.json()["error_description"], "Identity not found");
    }
    assert_eq!(
        token_owner(&a, Some(("client_id", CLIENT_A))).as_deref(),
        Ok(CLIENT_A)
    );
    // Nothing goes to the real IMDS: instance metadata is not served, and /metrics (every pod's
    // counts) is the agent's own, not a pod's.
    let instance = a
        .get(
            "/metadata/instance?api-version=2021-02-01",
            &[("Metadata", "true")],
        )
        .expect("answer");
    assert_eq!(instance.status, 404, "{}", instance.body);
    assert_eq!(a.get("/metrics", &[]).expect("answer").status, 404);
    // App Service 2019-08-01 in pod A on loopback with its header; not in pod B, not without it.
    let msi = "/msi/token?api-version=2019-08-01&resource=https://vault.azure.net";
    let ok = a
        .get_at(
            "127.0.0.1:8000",
            msi,
            &[("X-IDENTITY-HEADER", APP_SERVICE_SECRET)],
        )
        .expect("app service");
    assert_eq!(ok.status, 200, "{}", ok.body);
    let token = ok.json()["access_token"].as_str().unwrap_or("").to_string();
    assert_eq!(token_claims(&token)["appid"], CLIENT_A);
    let wrong = a
        .get_at("127.0.0.1:8000", msi, &[("X-IDENTITY-HEADER", "guess")])
        .expect("app service");
    assert_ne!(wrong.status, 200, "{}", wrong.body);
    assert!(
        b.get_at("127.0.0.1:8000", msi, &[]).is_err(),
        "pod B has no App Service endpoint"
    );
    // The init container's probe tells the agent's listener for this pod from anything else.
    // Exactly the webhook's wait container: `probe --node-agent --wait N`, POD_UID from the
    // downward API.
    let probe = |pod: &PodNs, uid: &str| {
        Command::new("ip")
            .args(["netns", "exec", pod.ns(), SIDECAR])
            .args(["probe", "--node-agent", "--wait", "1"])
            .env_clear()
            .env("POD_UID", uid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("probe")
            .success()
    };
    assert!(probe(&a, &a.uid), "probe in pod A for pod A");
    assert!(!probe(&a, &b.uid), "probe in pod A for pod B must fail");
    assert!(!node_serves_imds(), "the node's own namespace serves IMDS");
    let logs = agent.logs();
    for t in tokens {
        assert!(!logs.contains(&t), "an access token reached the logs");
    }
    let federated =
        std::fs::read_to_string(h.node.token_dir(&a.uid, "azure-identity").join("token"))
            .expect("federated token");
    assert!(
        !logs.contains(federated.trim()),
        "a federated token reached the logs"
    );
}

#[test]
fn a_new_pod_with_a_reused_ip_never_gets_the_old_pods_identity() {
    let _s = serial();
    if let Some(why) = unavailable() {
        return support::system::skip(&why);
    }
    let mut h = Harness::new();
    let ip = "10.250.1.7";
    let mut events: Vec<String> = Vec::new();
    let mut log = |e: String| {
        println!("{e}");
        events.push(e);
    };
    let (a, a_spec) = h.pod("app-a", "sa-a", ip, Driver::Systemd);
    let _agent = h.start_agent();
    wait_for("pod A served", Duration::from_secs(30), || served(&a));
    log(format!(
        "1. pod A ({ip}, ServiceAccount sa-a) served; A asks: {:?}",
        token_owner(&a, None)
    ));
    assert_eq!(token_owner(&a, None).as_deref(), Ok(CLIENT_A));

    // A's sandbox goes away on the node; the API still lists A (the watch lags).
    drop(a);
    log(
        "2. pod A's process and network namespace deleted; the API still lists A as Running".into(),
    );

    // C takes A's IP in a new namespace before the API has told the agent anything.
    let c_uid = node_pod::new_uid();
    let c = PodNs::new(&h.node, &c_uid, ip, Driver::Cgroupfs);
    h.write_token(&c_uid, "sa-c");
    std::thread::sleep(Duration::from_millis(2500));
    let before = token_owner(&c, None);
    log(format!(
        "3. pod C created with the same IP {ip} in a new namespace, not yet in the API; C asks: {before:?}"
    ));
    assert!(before.is_err(), "C must get nothing yet, got {before:?}");
    assert!(!c.has_imds_listener());

    // The API catches up: A deleted, C added with its own identity.
    assert!(h.kube.delete_pod(&a_spec.namespace, &a_spec.name));
    let c_spec = PodSpec::new("app-c", &c_uid, "sa-c", ip);
    h.kube.put_pod(c_spec.object());
    wait_for("pod C served", Duration::from_secs(15), || served(&c));
    let after = token_owner(&c, None);
    log(format!(
        "4. API: DELETED A, ADDED C (sa-c); C asks: {after:?}"
    ));
    assert_eq!(after.as_deref(), Ok(CLIENT_C));
    let forged = c
        .imds_token(VAULT, Some(("client_id", CLIENT_A)))
        .expect("answer");
    log(format!(
        "5. C asks for A's client id: {} {}",
        forged.status, forged.body
    ));
    assert_eq!(forged.status, 400);

    // And again, with a pod that gets no identity at all: C deleted, D (unlabelled) on the IP.
    drop(c);
    assert!(h.kube.delete_pod(&c_spec.namespace, &c_spec.name));
    let d_uid = node_pod::new_uid();
    let d = PodNs::new(&h.node, &d_uid, ip, Driver::Systemd);
    h.write_token(&d_uid, "sa-a");
    let mut d_spec = PodSpec::new("app-d", &d_uid, "sa-a", ip);
    d_spec.labelled = false;
    h.kube.put_pod(d_spec.object());
    std::thread::sleep(Duration::from_millis(2500));
    let d_answer = token_owner(&d, None);
    log(format!(
        "6. API: DELETED C, ADDED D (same IP, not labelled for node mode); D asks: {d_answer:?}"
    ));
    assert!(d_answer.is_err());
    assert!(!d.has_imds_listener());
    assert!(!node_serves_imds());
    assert_eq!(events.len(), 6);
}

#[test]
fn terminating_unlabelled_and_host_network_pods_get_nothing() {
    let _s = serial();
    if let Some(why) = unavailable() {
        return support::system::skip(&why);
    }
    let mut h = Harness::new();
    let (served_pod, mut served_spec) = h.pod("app-s", "sa-a", "10.250.2.2", Driver::Systemd);
    let (second, mut second_spec) = h.pod("app-l", "sa-b", "10.250.2.3", Driver::Cgroupfs);
    // Terminating from the start.
    let t_uid = node_pod::new_uid();
    let t = PodNs::new(&h.node, &t_uid, "10.250.2.4", Driver::Systemd);
    h.write_token(&t_uid, "sa-a");
    let mut t_spec = PodSpec::new("app-t", &t_uid, "sa-a", "10.250.2.4");
    t_spec.terminating = true;
    h.kube.put_pod(t_spec.object());
    // Not labelled.
    let u_uid = node_pod::new_uid();
    let u = PodNs::new(&h.node, &u_uid, "10.250.2.5", Driver::Cgroupfs);
    h.write_token(&u_uid, "sa-a");
    let mut u_spec = PodSpec::new("app-u", &u_uid, "sa-a", "10.250.2.5");
    u_spec.labelled = false;
    h.kube.put_pod(u_spec.object());
    // hostNetwork, and a pod that does not say so but whose process is in the node's namespace.
    let mut host_pods = Vec::new();
    for (name, says_host) in [("app-h", true), ("app-liar", false)] {
        let uid = node_pod::new_uid();
        let hp = PodNs::host_network(&h.node, &uid, Driver::Systemd);
        h.write_token(&uid, "sa-a");
        let mut spec = PodSpec::new(name, &uid, "sa-a", "");
        spec.host_network = says_host;
        h.kube.put_pod(spec.object());
        host_pods.push(hp);
    }
    let agent = h.start_agent();
    wait_for("the labelled pods served", Duration::from_secs(30), || {
        served(&served_pod) && served(&second)
    });
    std::thread::sleep(agent_resync());
    for (p, what) in [(&t, "terminating"), (&u, "unlabelled")] {
        assert!(!p.has_imds_listener(), "{what} pod has a listener");
        assert!(p.get("/readyz", &[]).is_err(), "{what} pod got an answer");
    }
    assert!(!node_serves_imds(), "the node's own namespace serves IMDS");
    let logs = agent.logs();
    assert!(logs.contains("hostNetwork"), "{logs}");
    assert!(logs.contains("node's own network namespace"), "{logs}");

    // A served pod that starts terminating, and one whose label is removed: closed within 1 s.
    served_spec.terminating = true;
    h.kube.put_pod(served_spec.object());
    let took = wait_for(
        "listener closed after terminating",
        Duration::from_secs(5),
        || !served_pod.has_imds_listener(),
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let refused = served_pod.get("/readyz", &[]).expect_err("no answer");
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    // The second pod's token is cached (a second ask does not reach Entra ID)...
    let entra_calls = |h: &Harness| {
        h.mock
            .token_requests()
            .iter()
            .filter(|r| r.client_id.as_deref() == Some(CLIENT_B))
            .count()
    };
    assert_eq!(token_owner(&second, None).as_deref(), Ok(CLIENT_B));
    assert_eq!(token_owner(&second, None).as_deref(), Ok(CLIENT_B));
    assert_eq!(entra_calls(&h), 1, "the second ask was a cache hit");
    second_spec.labelled = false;
    h.kube.put_pod(second_spec.object());
    let took = wait_for(
        "listener closed after unlabelling",
        Duration::from_secs(5),
        || !second.has_imds_listener(),
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // ...and went with the listener: labelled again, the pod's next ask goes to Entra ID.
    second_spec.labelled = true;
    h.kube.put_pod(second_spec.object());
    wait_for("pod served again", Duration::from_secs(10), || {
        served(&second)
    });
    assert_eq!(token_owner(&second, None).as_deref(), Ok(CLIENT_B));
    assert_eq!(
        entra_calls(&h),
        2,
        "the cached token was dropped with the listener"
    );
    drop(host_pods);
}

#[test]
fn a_namespace_shared_by_two_pods_or_a_pod_split_over_two_serves_nobody() {
    let _s = serial();
    if let Some(why) = unavailable() {
        return support::system::skip(&why);
    }
    let mut h = Harness::new();
    // X and Y: a process of each in one namespace. Z: processes in two namespaces. W: served.
    let (x, _) = h.pod("app-x", "sa-a", "10.250.5.2", Driver::Systemd);
    let y_uid = node_pod::new_uid();
    let y = PodNs::join(&h.node, &y_uid, Driver::Cgroupfs, &x);
    h.write_token(&y_uid, "sa-b");
    h.kube
        .put_pod(PodSpec::new("app-y", &y_uid, "sa-b", "10.250.5.2").object());
    let (z, _) = h.pod("app-z", "sa-c", "10.250.5.3", Driver::Cgroupfs);
    let (other, _) = h.pod("app-o", "sa-b", "10.250.5.4", Driver::Systemd);
    let z_elsewhere = PodNs::join(&h.node, &z.uid, Driver::Cgroupfs, &other);
    let (w, _) = h.pod("app-w", "sa-a", "10.250.5.5", Driver::Systemd);
    let agent = h.start_agent();
    wait_for("pod W served", Duration::from_secs(30), || served(&w));
    std::thread::sleep(agent_resync());
    assert!(
        !x.has_imds_listener(),
        "a namespace shared by X and Y was served"
    );
    assert!(x.get("/readyz", &[]).is_err());
    assert!(
        !z.has_imds_listener(),
        "pod Z, split over two namespaces, was served"
    );
    // The namespace Z's second process sits in belongs to pod O as well: not served either.
    assert!(!other.has_imds_listener());
    let logs = agent.logs();
    assert!(logs.contains("holds processes of 2 pods"), "{logs}");
    assert!(logs.contains("in 2 network namespaces"), "{logs}");
    drop((y, z_elsewhere));
}

/// The agent's periodic pass, and a margin.
fn agent_resync() -> Duration {
    identity_sidecar::node::agent::RESYNC + Duration::from_millis(700)
}

#[test]
fn restart_outage_and_a_late_token_file() {
    let _s = serial();
    if let Some(why) = unavailable() {
        return support::system::skip(&why);
    }
    let mut h = Harness::new();
    let (a, _) = h.pod("app-a", "sa-a", "10.250.3.2", Driver::Systemd);
    // Before the first list: nothing, not even a default.
    h.kube.set_down(true);
    let agent = h.start_agent();
    std::thread::sleep(Duration::from_secs(2));
    assert!(!a.has_imds_listener(), "served before the pod list synced");
    h.kube.set_down(false);
    wait_for(
        "pod A served once the API answers",
        Duration::from_secs(20),
        || served(&a),
    );
    assert_eq!(token_owner(&a, None).as_deref(), Ok(CLIENT_A));

    // Restart: the listener goes with the process, and comes back with the next one.
    drop(agent);
    assert!(a.get("/readyz", &[]).is_err());
    let _agent = h.start_agent();
    wait_for(
        "pod A served after a restart",
        Duration::from_secs(20),
        || served(&a),
    );
    assert_eq!(token_owner(&a, None).as_deref(), Ok(CLIENT_A));

    // Outage: known pods keep their listener; a new pod waits for the API. Its history is
    // compacted meanwhile, so the agent must list again (410 Gone) to see it.
    h.kube.set_down(true);
    let b_uid = node_pod::new_uid();
    let b = PodNs::new(&h.node, &b_uid, "10.250.3.3", Driver::Cgroupfs);
    h.write_token(&b_uid, "sa-b");
    h.kube
        .put_pod(PodSpec::new("app-b", &b_uid, "sa-b", "10.250.3.3").object());
    h.kube.compact();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !b.has_imds_listener(),
        "a pod the agent cannot know of was served"
    );
    assert_eq!(
        token_owner(&a, None).as_deref(),
        Ok(CLIENT_A),
        "known pod during the outage"
    );
    h.kube.set_down(false);
    wait_for(
        "pod B served after the outage",
        Duration::from_secs(30),
        || served(&b),
    );
    assert_eq!(token_owner(&b, None).as_deref(), Ok(CLIENT_B));

    // A late token file: the pod is served, asks get 503 until the kubelet writes it.
    let l_uid = node_pod::new_uid();
    let l = PodNs::new(&h.node, &l_uid, "10.250.3.4", Driver::Systemd);
    h.kube
        .put_pod(PodSpec::new("app-l", &l_uid, "sa-c", "10.250.3.4").object());
    wait_for("pod L's listener", Duration::from_secs(15), || {
        l.has_imds_listener()
    });
    let early = l.imds_token(VAULT, None).expect("answer");
    assert_eq!(early.status, 503, "{}", early.body);
    assert!(early.header("retry-after").is_some());
    assert_eq!(l.get("/readyz", &[]).expect("readyz").status, 503);
    h.write_token(&l_uid, "sa-c");
    wait_for(
        "pod L's token after the file appears",
        Duration::from_secs(15),
        || token_owner(&l, None).as_deref() == Ok(CLIENT_C),
    );
    let lists = h
        .kube
        .requests()
        .iter()
        .filter(|r| r.starts_with("/api/v1/pods?") && !r.contains("watch=1"))
        .count();
    assert!(lists >= 3, "lists: {:?}", h.kube.requests());
    assert!(
        h.kube
            .requests()
            .iter()
            .filter(|r| r.starts_with("/api/v1/pods?"))
            .all(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-under-test")),
        "{:?}",
        h.kube.requests()
    );
}

/// The capabilities manifests/node/daemonset.yaml adds (everything else dropped), in setpriv's
/// spelling; the test below checks the manifest says the same.
const DAEMONSET_CAPS: [&str; 5] = [
    "sys_admin",
    "net_admin",
    "sys_ptrace",
    "net_bind_service",
    "dac_read_search",
];

#[test]
fn the_agent_needs_only_the_daemonsets_capabilities() {
    let _s = serial();
    if let Some(why) = support::system::missing(
        Some("node-mode tests create network namespaces"),
        &["ip", "setpriv"],
    ) {
        return support::system::skip(&why);
    }
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/manifests/node/daemonset.yaml"
    ))
    .expect("manifests/node/daemonset.yaml");
    for cap in DAEMONSET_CAPS {
        assert!(
            manifest.contains(&format!("- {}", cap.to_uppercase())),
            "the DaemonSet does not add {cap}"
        );
    }
    let mut h = Harness::new();
    // The app runs as uid 1000 and the kubelet made its token 0600 for that uid: the agent,
    // root without CAP_DAC_OVERRIDE, reads it with CAP_DAC_READ_SEARCH and opens the process's
    // namespace with CAP_SYS_PTRACE.
    let uid = node_pod::new_uid();
    let pod = PodNs::new_as(&h.node, &uid, "10.250.4.2", Driver::Systemd, Some(1000));
    h.write_token(&uid, "sa-a");
    let dir = h.node.token_dir(&uid, "azure-identity");
    let token = std::fs::canonicalize(dir.join("token")).expect("token");
    std::os::unix::fs::chown(&token, Some(1000), Some(1000)).expect("chown");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    h.kube
        .put_pod(PodSpec::new("app-a", &uid, "sa-a", "10.250.4.2").object());
    let agent = h.start_agent_with_caps(Some(&DAEMONSET_CAPS));
    wait_for(
        "the pod served by the capability-limited agent",
        Duration::from_secs(20),
        || served(&pod),
    );
    assert_eq!(
        token_owner(&pod, None).as_deref(),
        Ok(CLIENT_A),
        "{}",
        agent.logs()
    );
}

/// The value of the series `series` (name and labels exactly as written) on a metrics page.
fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The agent's `/metrics` page on the node.
fn metrics_page(port: u16) -> String {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let page = node_pod::http_get(addr, "/metrics", &[]).expect("/metrics");
    assert_eq!(page.status, 200, "{}", page.body);
    page.body
}

/// An IMDS token request from inside `pod` by `curl` running as `uid`, with the SDK's request id
/// header: the access token.
fn curl_token_as(pod: &PodNs, uid: u32, request_id: &str) -> String {
    let id = uid.to_string();
    let out = Command::new("ip")
        .args(["netns", "exec", pod.ns(), "setpriv", "--reuid", &id, "--regid", &id])
        .args(["--clear-groups", "curl", "-sS", "--max-time", "20"])
        .args(["-H", "Metadata: true", "-H"])
        .arg(format!("x-ms-client-request-id: {request_id}"))
        .arg(format!(
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource={VAULT}"
        ))
        .stdin(Stdio::null())
        .output()
        .expect("curl");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["access_token"]
        .as_str()
        .unwrap_or_else(|| {
            panic!(
                "no token: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_string()
}

/// The audit lines of the agent's output.
fn audit_lines(logs: &str) -> Vec<serde_json::Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["log"] == "audit")
        .collect()
}

/// The audit lines of the agent's output, as written.
fn raw_audit_lines(logs: &str) -> Vec<&str> {
    logs.lines()
        .filter(|l| l.contains(r#""log":"audit""#))
        .collect()
}

#[test]
fn audit_lines_and_metrics_name_each_pod_served() {
    let _s = serial();
    if let Some(why) = support::system::missing(
        Some("node-mode tests create network namespaces"),
        &["ip", "setpriv", "curl"],
    ) {
        return support::system::skip(&why);
    }
    let mut h = Harness::new();
    // Pod A: an App Service endpoint too, and a resource allow-list (its metrics' resource label).
    let (a, _) = h.pod_with("app-a", "sa-a", "10.250.6.2", Driver::Systemd, |p| {
        p.env = vec![
            (
                "IDENTITY_ENDPOINT".into(),
                "http://127.0.0.1:8000/msi/token".into(),
            ),
            ("IDENTITY_HEADER".into(), APP_SERVICE_SECRET.into()),
        ];
        p.annotations = vec![("identity-sidecar.io/allowed-resources".into(), VAULT.into())];
    });
    let (b, mut b_spec) = h.pod("app-b", "sa-b", "10.250.6.3", Driver::Cgroupfs);
    // An eligible pod whose ServiceAccount does not exist: never served, counted as such.
    let x_uid = node_pod::new_uid();
    h.kube
        .put_pod(PodSpec::new("app-x", &x_uid, "sa-missing", "10.250.6.4").object());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let health = format!("127.0.0.1:{port}");
    let agent = h.start_agent_with(None, &["--audit-log", "--health-listen", &health]);
    wait_for("both pods served", Duration::from_secs(30), || {
        served(&a) && served(&b)
    });

    // Each pod's app, as a uid of its own, asks twice (an exchange, then a hit).
    let (uid_a, uid_b) = (4301u32, 4302u32);
    let token_a = curl_token_as(&a, uid_a, "req-a-1");
    assert_eq!(curl_token_as(&a, uid_a, "req-a-2"), token_a);
    let token_b = curl_token_as(&b, uid_b, "req-b-1");
    assert_eq!(curl_token_as(&b, uid_b, "req-b-2"), token_b);
    assert_eq!(token_claims(&token_a)["appid"], CLIENT_A);
    assert_eq!(token_claims(&token_b)["appid"], CLIENT_B);
    // Pod A asks for B's identity (refused), and through its App Service endpoint.
    let refused = a
        .imds_token(VAULT, Some(("client_id", CLIENT_B)))
        .expect("answer");
    assert_eq!(refused.status, 400, "{}", refused.body);
    let msi = a
        .get_at(
            "127.0.0.1:8000",
            "/msi/token?api-version=2019-08-01&resource=https://vault.azure.net",
            &[("X-IDENTITY-HEADER", APP_SERVICE_SECRET)],
        )
        .expect("app service");
    assert_eq!(msi.status, 200, "{}", msi.body);

    let mut lines = Vec::new();
    wait_for("every audit line written", Duration::from_secs(10), || {
        lines = audit_lines(&agent.logs());
        lines.len() >= 6
    });
    println!("audit lines:");
    for l in raw_audit_lines(&agent.logs()) {
        println!("{l}");
    }
    assert_eq!(lines.len(), 6, "{lines:#?}");
    let of = |pod: &PodNs| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["pod_uid"] == pod.uid.as_str())
            .collect()
    };
    for (pod, name, client, uid, token, ids) in [
        (
            &a,
            "app-a",
            CLIENT_A,
            uid_a,
            &token_a,
            ["req-a-1", "req-a-2"],
        ),
        (
            &b,
            "app-b",
            CLIENT_B,
            uid_b,
            &token_b,
            ["req-b-1", "req-b-2"],
        ),
    ] {
        let imds: Vec<&serde_json::Value> = of(pod)
            .into_iter()
            .filter(|l| l["flavor"] == "imds" && l["status"] == 200)
            .collect();
        assert_eq!(imds.len(), 2, "{name}: {lines:#?}");
        let fingerprint = identity_sidecar::telemetry::audit::fingerprint(token);
        for (l, (id, cache)) in imds.iter().zip(ids.iter().zip(["miss", "hit"])) {
            assert_eq!(l["pod_namespace"], "apps", "{l}");
            assert_eq!(l["pod_name"], name, "{l}");
            assert_eq!(l["client_id"], client, "{l}");
            assert_eq!(l["resource"], VAULT, "{l}");
            assert_eq!(
                l["caller_uid"], uid,
                "the caller's uid in its pod's namespace: {l}"
            );
            assert_eq!(l["caller_process"], serde_json::Value::Null, "{l}");
            assert_eq!(l["app_request_id"], *id, "{l}");
            assert_eq!(l["cache"], cache, "{l}");
            assert_eq!(l["token_sha256"], fingerprint.as_str(), "{l}");
        }
        assert!(
            imds[0]["entra_client_request_id"].is_string(),
            "{}",
            imds[0]
        );
    }
    // The refused request and the App Service one are pod A's too.
    let a_lines = of(&a);
    assert_eq!(a_lines.len(), 4, "{lines:#?}");
    assert!(
        a_lines
            .iter()
            .any(|l| l["status"] == 400 && l["error"] == "invalid_request"),
        "{lines:#?}"
    );
    assert!(
        a_lines
            .iter()
            .any(|l| l["flavor"] == "app-service-2019-08-01" && l["status"] == 200),
        "{lines:#?}"
    );
    // No secret anywhere in the output: access tokens, federated tokens, the identity header.
    let logs = agent.logs();
    let federated = |pod: &PodNs| {
        std::fs::read_to_string(h.node.token_dir(&pod.uid, "azure-identity").join("token"))
            .expect("federated token")
            .trim()
            .to_string()
    };
    let msi_token = msi.json()["access_token"]
        .as_str()
        .unwrap_or("")
        .to_string();
    for (secret, what) in [
        (token_a.clone(), "pod A's access token"),
        (token_b.clone(), "pod B's access token"),
        (msi_token, "the App Service access token"),
        (federated(&a), "pod A's federated token"),
        (federated(&b), "pod B's federated token"),
        (APP_SERVICE_SECRET.to_string(), "the identity header"),
    ] {
        assert!(secret.len() > 10, "{what}");
        assert!(!logs.contains(&secret), "{what} reached the logs");
    }

    // The metrics page: each pod's identity, with its own resource label.
    let page = metrics_page(port);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    for (client, resource, name) in [(CLIENT_A, VAULT, "app-a"), (CLIENT_B, "*", "app-b")] {
        let labels = format!(
            r#"{{client_id="{client}",resource="{resource}",pod_namespace="apps",pod_name="{name}"}}"#
        );
        let expiry = metric(
            &page,
            &format!("identity_sidecar_token_expiry_timestamp_seconds{labels}"),
        );
        let refreshed = metric(
            &page,
            &format!("identity_sidecar_token_last_refresh_timestamp_seconds{labels}"),
        );
        assert!(expiry.is_some_and(|e| e > now), "{labels}: {page}");
        assert!(
            refreshed.is_some_and(|r| r <= now + 5.0 && r > now - 600.0),
            "{labels}: {page}"
        );
        let refreshes = format!(
            r#"identity_sidecar_token_refreshes_total{{client_id="{client}",resource="{resource}",result="success",pod_namespace="apps",pod_name="{name}"}}"#
        );
        assert_eq!(metric(&page, &refreshes), Some(1.0), "{refreshes}: {page}");
        let fed = format!(
            r#"identity_sidecar_federated_token_expiry_timestamp_seconds{{pod_namespace="apps",pod_name="{name}"}}"#
        );
        assert!(
            metric(&page, &fed).is_some_and(|e| e > now),
            "{fed}: {page}"
        );
    }
    assert_eq!(
        metric(&page, "identity_sidecar_node_served_pods"),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            r#"identity_sidecar_node_listener_binds_total{reason="new"}"#
        ),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            r#"identity_sidecar_node_unserved_pods{reason="identity"}"#
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            r#"identity_sidecar_node_listener_failures_total{reason="identity"}"#
        ),
        Some(1.0),
        "{page}"
    );

    // Every series docs/operations.md lists for the node agent is there, with exactly its labels.
    for (name, labels) in documented_node_series() {
        let found: Vec<std::collections::BTreeSet<String>> = page
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(name.as_str())?;
                if let Some(inner) = rest.strip_prefix('{') {
                    let inner = &inner[..inner.rfind('}')?];
                    Some(
                        inner
                            .split("\",")
                            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_string()))
                            .collect(),
                    )
                } else {
                    rest.starts_with(' ').then(Default::default)
                }
            })
            .collect();
        assert!(!found.is_empty(), "{name} is not on the page:\n{page}");
        for f in found {
            assert_eq!(f, labels, "{name}'s labels");
        }
    }

    // Pod B stops being served: its gauges leave the page, its counter stays.
    b_spec.labelled = false;
    h.kube.put_pod(b_spec.object());
    wait_for("pod B's listener closed", Duration::from_secs(5), || {
        !b.has_imds_listener()
    });
    wait_for("pod B gone from the page", Duration::from_secs(5), || {
        metric(&metrics_page(port), "identity_sidecar_node_served_pods") == Some(1.0)
    });
    let page = metrics_page(port);
    assert_eq!(
        metric(&page, "identity_sidecar_node_served_pods"),
        Some(1.0),
        "{page}"
    );
    for line in page.lines().filter(|l| l.contains(r#"pod_name="app-b""#)) {
        assert!(
            line.starts_with("identity_sidecar_token_refreshes_total{"),
            "a gauge of pod B is still there: {line}"
        );
    }
    assert!(page.contains(r#"pod_name="app-a"}"#), "{page}");
}

/// The series and label names of docs/operations.md's node-agent table.
fn documented_node_series() -> Vec<(String, std::collections::BTreeSet<String>)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .expect("docs/operations.md");
    let start = doc
        .find("\n### The node agent")
        .expect("a node agent section");
    let section = &doc[start + 1..];
    let section = &section[..section[1..].find("\n#").map_or(section.len(), |i| i + 1)];
    let rows: Vec<(String, std::collections::BTreeSet<String>)> = section
        .lines()
        .filter(|l| l.starts_with("| `identity_sidecar"))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            // Label names: the backquoted words outside parentheses (which list values).
            let mut labels = std::collections::BTreeSet::new();
            let mut depth = 0usize;
            for (i, part) in cells[3].split('`').enumerate() {
                if i % 2 == 1 && depth == 0 {
                    labels.insert(part.to_string());
                } else if i % 2 == 0 {
                    depth += part.matches('(').count();
                    depth -= part.matches(')').count().min(depth);
                }
            }
            (cells[1].trim_matches('`').to_string(), labels)
        })
        .collect();
    assert!(rows.len() >= 10, "the node agent's table: {rows:?}");
    rows
}
