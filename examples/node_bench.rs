//! Scale benchmark of node mode (bench/node.sh runs it): N served pods on one node agent against
//! N sidecars, on this machine, side by side in one run.
//!
//! Pods are network namespaces with a process in a kubelet-named cgroup (tests/support/node_pod.rs),
//! the Kubernetes API is the tests' fake, Entra ID the mock (plain HTTP on loopback). Measured:
//! - the agent's RSS with no pod and with N pods served (each pod's cache warm), and so the memory
//!   per additional pod; the sidecars' summed RSS (warm) and per sidecar;
//! - from the API event (the pod added to the fake API) to the pod's listener in its namespace,
//!   per pod, one pod at a time (p50, p99, max); for sidecars, process start to `/readyz` 200;
//! - CPU used over an idle stretch with everything served (the agent's periodic process scan;
//!   the sidecars' timers);
//! - token requests under load: `--load-pods` pods, `--conns` keep-alive connections each, for
//!   `--duration` seconds, from inside the pods' namespaces (agent) or to the sidecars' loopback
//!   ports (sidecars): requests/s and latency p50/p99/max.
//!
//! usage: node_bench --agent PATH --sidecar PATH [--pods N] [--duration S] [--load-pods N] [--conns N]
#[path = "../tests/support/fake_kube.rs"]
mod fake_kube;
#[path = "../tests/support/node_pod.rs"]
mod node_pod;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_kube::FakeKube;
use identity_sidecar::mock_aad::{self, MockAadConfig};
use node_pod::{Driver, Node, PodNs, PodSpec};

const TENANT: &str = mock_aad::DEFAULT_TENANT_ID;
const PATH: &str =
    "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net";

struct Args {
    agent: PathBuf,
    sidecar: PathBuf,
    pods: usize,
    duration: u64,
    load_pods: usize,
    conns: usize,
}

fn args() -> Args {
    let mut a = Args {
        agent: PathBuf::from("target/static-out/identity-sidecar-node"),
        sidecar: PathBuf::from("target/static-out/identity-sidecar"),
        pods: 100,
        duration: 10,
        load_pods: 4,
        conns: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--agent" => a.agent = v.into(),
            "--sidecar" => a.sidecar = v.into(),
            "--pods" => a.pods = v.parse().expect("--pods N"),
            "--duration" => a.duration = v.parse().expect("--duration S"),
            "--load-pods" => a.load_pods = v.parse().expect("--load-pods N"),
            "--conns" => a.conns = v.parse().expect("--conns N"),
            _ => panic!("unknown flag {k}"),
        }
    }
    a
}

fn client_id(i: usize) -> String {
    format!("{i:08x}-0000-4000-8000-0000000000b0")
}

fn subject(i: usize) -> String {
    format!("system:serviceaccount:apps:sa-{i}")
}

fn kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// One keep-alive connection sending `PATH` until `until`; latencies of 200 answers.
fn hammer(addr: SocketAddr, until: Instant) -> (Vec<Duration>, usize) {
    let mut lat = Vec::new();
    let mut errors = 0;
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (lat, 1);
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let req = format!("GET {PATH} HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\n\r\n");
    let mut buf = vec![0u8; 16 * 1024];
    while Instant::now() < until {
        let t = Instant::now();
        if s.write_all(req.as_bytes()).is_err() {
            errors += 1;
            break;
        }
        let mut have = 0;
        let ok = loop {
            match s.read(&mut buf[have..]) {
                Ok(0) | Err(_) => break false,
                Ok(n) => have += n,
            }
            let text = &buf[..have];
            if let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&text[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if have >= end + 4 + len {
                    break head.starts_with("http/1.1 200");
                }
            }
            if have == buf.len() {
                break false;
            }
        };
        if ok {
            lat.push(t.elapsed());
        } else {
            errors += 1;
            break;
        }
    }
    (lat, errors)
}

/// Load: `targets` (namespace or none, address), `conns` connections each, for `secs`.
fn load(
    targets: &[(Option<String>, SocketAddr)],
    conns: usize,
    secs: u64,
) -> (f64, Vec<Duration>, usize) {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut threads = Vec::new();
    for (ns, addr) in targets {
        for _ in 0..conns {
            let (ns, addr) = (ns.clone(), *addr);
            threads.push(std::thread::spawn(move || match ns {
                Some(ns) => node_pod::in_netns(&ns, move || hammer(addr, until)),
                None => hammer(addr, until),
            }));
        }
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (l, e) = t.join().expect("load thread");
        all.extend(l);
        errors += e;
    }
    all.sort();
    (all.len() as f64 / secs as f64, all, errors)
}

fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    node_pod::http_get(addr, path, &[]).ok().map(|a| a.status)
}

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn main() {
    let a = args();
    for bin in [&a.agent, &a.sidecar] {
        assert!(
            bin.exists(),
            "{} not built (bench/node.sh builds it)",
            bin.display()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let kube = rt.block_on(FakeKube::start());
    let apps = (0..a.pods)
        .map(|i| node_pod::mock_app(TENANT, &client_id(i), &subject(i)))
        .collect();
    let mock = rt
        .block_on(mock_aad::start(MockAadConfig {
            plain_http: true,
            apps,
            token_lifetime: Some(Duration::from_secs(3600)),
            ..MockAadConfig::default()
        }))
        .expect("mock Entra ID");
    let node = Node::new();
    eprintln!(
        "node_bench: {} pods ({} cgroups), agent {}, sidecar {}",
        a.pods,
        if node.real_cgroups() {
            "real"
        } else {
            "fake-proc"
        },
        a.agent.display(),
        a.sidecar.display()
    );
    let mut pods = Vec::new();
    let mut writers = Vec::new();
    let made = Instant::now();
    for i in 0..a.pods {
        let uid = node_pod::new_uid();
        let ip = format!("10.251.{}.{}", i / 250, i % 250 + 2);
        let ns = PodNs::new(
            &node,
            &uid,
            &ip,
            if i % 2 == 0 {
                Driver::Systemd
            } else {
                Driver::Cgroupfs
            },
        );
        let _e = rt.enter();
        writers.push(
            mock.federated_token_writer(
                node.token_dir(&uid, "azure-identity"),
                &subject(i),
                Duration::from_secs(3600),
            )
            .expect("token"),
        );
        kube.add_service_account(
            "apps",
            &format!("sa-{i}"),
            &[
                ("azure.workload.identity/client-id", &client_id(i)),
                ("azure.workload.identity/tenant-id", TENANT),
            ],
        );
        pods.push((
            ns,
            PodSpec::new(&format!("app-{i}"), &uid, &format!("sa-{i}"), &ip),
        ));
    }
    eprintln!(
        "node_bench: {} pod namespaces in {:.1} s",
        a.pods,
        made.elapsed().as_secs_f64()
    );

    // --- The agent.
    let kubeconfig = kube.kubeconfig(node.tmp.path());
    let health: SocketAddr = "127.0.0.1:18099".parse().expect("addr");
    let mut cmd = Command::new(&a.agent);
    cmd.env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .args(["--node-name", node_pod::NODE, "--kubelet-root-dir"])
        .arg(&node.kubelet_root)
        .args([
            "--authority-host",
            mock.authority_url(),
            "--health-listen",
            &health.to_string(),
        ]);
    if let Some(p) = &node.proc_dir {
        cmd.arg("--proc-dir").arg(p);
    }
    let agent = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("agent");
    let agent_pid = agent.id();
    let _agent = Killed(vec![agent]);
    let t = Instant::now();
    while http_status(health, "/readyz") != Some(200) {
        assert!(t.elapsed() < Duration::from_secs(30), "agent never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(2));
    let agent_idle0 = kib(agent_pid);
    let mut ready = Vec::new();
    for (ns, spec) in &pods {
        let t = Instant::now();
        kube.put_pod(spec.object());
        while !ns.has_imds_listener() {
            assert!(t.elapsed() < Duration::from_secs(30), "pod never served");
            std::thread::sleep(Duration::from_millis(1));
        }
        ready.push(t.elapsed());
    }
    ready.sort();
    for (ns, _) in &pods {
        let a = ns
            .imds_token("https://vault.azure.net", None)
            .expect("token");
        assert_eq!(a.status, 200, "{}", a.body);
    }
    std::thread::sleep(Duration::from_secs(2));
    let agent_full = kib(agent_pid);
    let cpu0 = cpu_seconds(agent_pid);
    std::thread::sleep(Duration::from_secs(10));
    let agent_idle_cpu = cpu_seconds(agent_pid) - cpu0;
    let targets: Vec<(Option<String>, SocketAddr)> = pods
        .iter()
        .take(a.load_pods)
        .map(|(ns, _)| {
            (
                Some(ns.ns().to_string()),
                node_pod::IMDS.parse().expect("addr"),
            )
        })
        .collect();
    let cpu0 = cpu_seconds(agent_pid);
    let (agent_rps, agent_lat, agent_err) = load(&targets, a.conns, a.duration);
    let agent_load_cpu = cpu_seconds(agent_pid) - cpu0;
    let agent_peak = kib(agent_pid);
    drop(_agent);

    // --- N sidecars, one per pod, on loopback ports of this namespace.
    let mut sidecars = Killed(Vec::new());
    let mut starts = Vec::new();
    let mut ports = Vec::new();
    for (i, (_, spec)) in pods.iter().enumerate() {
        let port = 19000 + i as u16;
        let token = node.token_dir(&spec.uid, "azure-identity").join("token");
        let t = Instant::now();
        let child = Command::new(&a.sidecar)
            .env_clear()
            .env("RUST_LOG", "warn")
            .args([
                "serve",
                "--client-id",
                &client_id(i),
                "--tenant-id",
                TENANT,
                "--token-file",
            ])
            .arg(&token)
            .args([
                "--authority-host",
                mock.authority_url(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("sidecar");
        sidecars.0.push(child);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        while http_status(addr, "/readyz") != Some(200) {
            assert!(t.elapsed() < Duration::from_secs(30), "sidecar never ready");
            std::thread::sleep(Duration::from_millis(1));
        }
        starts.push(t.elapsed());
        ports.push(addr);
    }
    starts.sort();
    for addr in &ports {
        let a =
            node_pod::http_get(*addr, PATH, &[("Metadata".into(), "true".into())]).expect("token");
        assert_eq!(a.status, 200, "{}", a.body);
    }
    std::thread::sleep(Duration::from_secs(2));
    let pids: Vec<u32> = sidecars.0.iter().map(Child::id).collect();
    let side_rss: u64 = pids.iter().map(|p| kib(*p)).sum();
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let cpu0 = cpu(&pids);
    std::thread::sleep(Duration::from_secs(10));
    let side_idle_cpu = cpu(&pids) - cpu0;
    let targets: Vec<(Option<String>, SocketAddr)> =
        ports.iter().take(a.load_pods).map(|p| (None, *p)).collect();
    let cpu0 = cpu(&pids);
    let (side_rps, side_lat, side_err) = load(&targets, a.conns, a.duration);
    let side_load_cpu = cpu(&pids) - cpu0;
    drop(sidecars);

    let n = a.pods as f64;
    println!(
        "\n## node mode: {} pods on one agent vs {} sidecars ({} cores, load: {} pods x {} connections, {} s)\n",
        a.pods,
        a.pods,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        a.load_pods,
        a.conns,
        a.duration
    );
    println!("| figure | node agent | {} sidecars |", a.pods);
    println!("|---|---|---|");
    println!(
        "| RSS, all pods served, caches warm | {:.1} MiB | {:.1} MiB |",
        agent_full as f64 / 1024.0,
        side_rss as f64 / 1024.0
    );
    println!(
        "| RSS with no pod / per additional pod | {:.1} MiB / {:.0} KiB | - / {:.0} KiB |",
        agent_idle0 as f64 / 1024.0,
        (agent_full.saturating_sub(agent_idle0)) as f64 / n,
        side_rss as f64 / n
    );
    println!(
        "| ready after the API event (agent) / process start (sidecar): p50, p99, max | {}, {}, {} | {}, {}, {} |",
        ms(pct(&ready, 0.5)),
        ms(pct(&ready, 0.99)),
        ms(pct(&ready, 1.0)),
        ms(pct(&starts, 0.5)),
        ms(pct(&starts, 0.99)),
        ms(pct(&starts, 1.0))
    );
    println!(
        "| CPU while idle, all served (10 s) | {:.2} s | {:.2} s |",
        agent_idle_cpu, side_idle_cpu
    );
    println!(
        "| token requests/s under load | {:.0} | {:.0} |",
        agent_rps, side_rps
    );
    println!(
        "| token latency under load: p50, p99, max | {}, {}, {} | {}, {}, {} |",
        ms(pct(&agent_lat, 0.5)),
        ms(pct(&agent_lat, 0.99)),
        ms(pct(&agent_lat, 1.0)),
        ms(pct(&side_lat, 0.5)),
        ms(pct(&side_lat, 0.99)),
        ms(pct(&side_lat, 1.0))
    );
    println!(
        "| CPU per 1000 requests under load | {:.3} s | {:.3} s |",
        agent_load_cpu / (agent_lat.len().max(1) as f64 / 1000.0),
        side_load_cpu / (side_lat.len().max(1) as f64 / 1000.0)
    );
    println!(
        "| RSS after the load | {:.1} MiB | - |",
        agent_peak as f64 / 1024.0
    );
    println!("| failed connections | {agent_err} | {side_err} |");
    drop(pods);
}
