//! Benchmark of `identity-sidecar-webhook` (run by `bench/webhook.sh`): the release binary over
//! HTTPS against the fake Kubernetes API of the tests, CONNS keep-alive connections (the API
//! server keeps its connections to a webhook open) each sending pod CREATE AdmissionReviews
//! back to back for DURATION seconds, after a warm-up that fills the ServiceAccount cache.
//! Prints requests/s and latency percentiles as a Markdown table row.
//!
//! usage: webhook_bench [--duration SECONDS] [--conns N] [--rate TOTAL_PER_SECOND]
//! The webhook binary is `IDENTITY_SIDECAR_WEBHOOK_BIN`, else target/release/identity-sidecar-webhook.
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/support/fake_kube.rs"]
mod fake_kube;
#[path = "../tests/support/webhook_proc.rs"]
mod webhook_proc;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let duration: u64 = arg("--duration").and_then(|d| d.parse().ok()).unwrap_or(10);
    let conns: usize = arg("--conns").and_then(|d| d.parse().ok()).unwrap_or(50);
    // Total requests/s over all connections; 0: each connection sends back to back (saturation).
    let rate: u64 = arg("--rate").and_then(|d| d.parse().ok()).unwrap_or(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(duration, conns, rate));
}

async fn run(duration: u64, conns: usize, rate: u64) {
    let kube = fake_kube::FakeKube::start().await;
    kube.add_service_account(
        "shop",
        "app",
        &[(
            "azure.workload.identity/client-id",
            "11111111-1111-1111-1111-111111111111",
        )],
    );
    let wh = webhook_proc::Webhook::start_against(&kube, &["--log-format", "json"]);
    let pod = webhook_proc::corpus_pod("deployment-generate-name");
    let body = serde_json::to_vec(&webhook_proc::review(&pod, "shop", "CREATE")).expect("json");
    let url = wh.url("/mutate");

    // Warm-up: connections open, ServiceAccount cached.
    let clients: Vec<reqwest::Client> = (0..conns)
        .map(|_| webhook_proc::client_trusting(&[wh.ca_pem.as_str()]))
        .collect();
    for c in &clients {
        for _ in 0..5 {
            let r = c
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .expect("warm-up");
            assert_eq!(r.status(), 200);
            let _ = r.bytes().await;
        }
    }

    let cpu_before = cpu_seconds(wh.child.id());
    let end = Instant::now() + Duration::from_secs(duration);
    let body = Arc::new(body);
    let mut tasks = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let (url, body) = (url.clone(), Arc::clone(&body));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            let mut errors = 0usize;
            let mut tick = (rate > 0).then(|| {
                let period = Duration::from_secs_f64(conns as f64 / rate as f64);
                // Spread the connections' sends over the period.
                let start = tokio::time::Instant::now() + period.mul_f64(i as f64 / conns as f64);
                let mut t = tokio::time::interval_at(start, period);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            while Instant::now() < end {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let t = Instant::now();
                let r = c
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.as_ref().clone())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        let ok = r.bytes().await.is_ok();
                        if ok {
                            lat.push(t.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("task");
        all.extend(l);
        errors += e;
    }
    let cpu = cpu_seconds(wh.child.id()) - cpu_before;
    all.sort();
    let pct = |p: f64| {
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i].as_secs_f64() * 1000.0
    };
    let n = all.len();
    let mode = if rate > 0 {
        format!("{rate}/s paced")
    } else {
        "back to back".to_string()
    };
    println!(
        "| conns | load | requests | errors | req/s | p50 ms | p99 ms | p99.9 ms | max ms | webhook CPU µs/req |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {conns} | {mode} | {n} | {errors} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |",
        n as f64 / duration as f64,
        pct(0.50),
        pct(0.99),
        pct(0.999),
        pct(1.0),
        cpu * 1e6 / n.max(1) as f64
    );
    let sa_gets = kube.sa_requests.load(std::sync::atomic::Ordering::SeqCst);
    println!("ServiceAccount GETs during the run and warm-up: {sa_gets}");
}

/// User + system CPU seconds of process `pid` (Linux /proc).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}
