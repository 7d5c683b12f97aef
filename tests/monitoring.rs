//! Monitoring against a real Prometheus (the distribution's `prometheus` binary): it scrapes a real
//! sidecar process's admin port (against the mock Entra ID) and a real webhook process's
//! `/metrics`, every second, and evaluates the shipped rule file (manifests/monitoring/rules.yaml,
//! with every duration divided by [`TIME_SCALE`] so a 15-minute `for` takes 30 s). Through
//! Prometheus's HTTP API the test checks that:
//!
//! - every series docs/operations.md documents exists, with exactly the documented labels;
//! - every query of the Grafana dashboard (manifests/monitoring/dashboard.json) runs and returns
//!   series while traffic flows;
//! - the refresh-failure alert goes pending, then firing, when the mock Entra ID fails every token
//!   request, and resolves once it answers again.
//!
//! Also here: the PrometheusRule holds exactly the plain rule file's groups.
mod support;

#[path = "support/fake_kube.rs"]
mod fake_kube;
#[path = "support/webhook_proc.rs"]
mod webhook_proc;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use identity_sidecar::mock_aad::{Fault, FaultAction, MockAadConfig};
use serde_json::{Value, json};
use support::mock_serve::MockServe;
use support::system;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// The shipped rules' durations are divided by this in the test's copy.
const TIME_SCALE: u64 = 30;
const REFRESH_ALERT: &str = "IdentitySidecarTokenRefreshFailing";
/// Labels every scraped series carries besides its own: the target's.
const TARGET_LABELS: [&str; 4] = ["job", "instance", "namespace", "pod"];

/// The PrometheusRule is the plain rule file's `groups:` indented under `spec:`.
#[test]
fn the_prometheus_rule_holds_the_plain_rule_files_groups() {
    let dir = Path::new(REPO).join("manifests/monitoring");
    let plain = std::fs::read_to_string(dir.join("rules.yaml")).expect("rules.yaml");
    let cr = std::fs::read_to_string(dir.join("prometheusrule.yaml")).expect("prometheusrule");
    let groups = &plain[plain.find("\ngroups:").expect("groups") + 1..];
    let spec = &cr[cr.find("\nspec:\n").expect("spec") + 7..];
    let dedented: String = spec
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        dedented, groups,
        "prometheusrule.yaml's spec must be rules.yaml's groups"
    );
}

/// Every alert says what broke (`summary`, `description`) and links a runbook section of
/// docs/operations.md that exists.
#[test]
fn every_alert_has_a_summary_a_description_and_a_runbook_that_exists() {
    let rules = std::fs::read_to_string(Path::new(REPO).join("manifests/monitoring/rules.yaml"))
        .expect("rules");
    let doc = std::fs::read_to_string(Path::new(REPO).join("docs/operations.md")).expect("doc");
    let blocks: Vec<&str> = rules.split("- alert: ").skip(1).collect();
    assert!(blocks.len() >= 10, "{} alerts", blocks.len());
    for block in blocks {
        let name = block.lines().next().expect("name").trim();
        for key in ["summary: ", "description: ", "runbook_url: "] {
            assert!(block.contains(key), "{name}: no {key}");
        }
        let url = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook_url: "))
            .expect("url");
        let want = format!(
            "https://github.com/identity-sidecar/identity-sidecar/blob/main/docs/operations.md#{}",
            name.to_lowercase()
        );
        assert_eq!(url, want, "{name}");
        assert!(
            doc.contains(&format!("\n### {name}\n")),
            "{name}: no runbook section in docs/operations.md"
        );
    }
}

/// `text` with each duration (`15m`, `1h`, `30s`) of a `for:` line or a `[range]` divided by
/// [`TIME_SCALE`], in seconds.
fn time_scaled(text: &str) -> String {
    let scale = |d: &str| -> Option<String> {
        let (n, unit) = d.split_at(d.len().checked_sub(1)?);
        let n: u64 = n.parse().ok()?;
        let secs = match unit {
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            _ => return None,
        };
        Some(format!("{}s", (secs / TIME_SCALE).max(1)))
    };
    text.lines()
        .map(|line| {
            if let Some(d) = line.trim().strip_prefix("for: ") {
                let indent = &line[..line.len() - line.trim_start().len()];
                return format!("{indent}for: {}\n", scale(d).expect("a duration"));
            }
            let mut out = String::new();
            let mut rest = line;
            while let Some(open) = rest.find('[') {
                let Some(close) = rest[open..].find(']') else {
                    break;
                };
                out.push_str(&rest[..=open]);
                let inner = &rest[open + 1..open + close];
                out.push_str(&scale(inner).unwrap_or_else(|| inner.to_string()));
                out.push(']');
                rest = &rest[open + close + 1..];
            }
            out.push_str(rest);
            out.push('\n');
            out
        })
        .collect()
}

#[test]
fn the_time_scaling_divides_for_and_ranges() {
    let scaled = time_scaled("  for: 15m\n  expr: increase(x[5m]) > 0 and y[1h]\n");
    assert_eq!(
        scaled,
        "  for: 30s\n  expr: increase(x[10s]) > 0 and y[120s]\n"
    );
}

/// A series and its label names, as documented in docs/operations.md's metric tables.
fn documented_series() -> BTreeMap<String, BTreeSet<String>> {
    let doc = std::fs::read_to_string(Path::new(REPO).join("docs/operations.md")).expect("docs");
    let metrics = &doc[doc.find("## Metrics").expect("a Metrics section")..];
    let metrics = &metrics[..metrics.find("\n## ").unwrap_or(metrics.len())];
    // The node agent's table is checked on a real agent by tests/node.rs.
    let metrics = &metrics[..metrics
        .find("\n### The node agent")
        .unwrap_or(metrics.len())];
    let mut out = BTreeMap::new();
    for row in metrics
        .lines()
        .filter(|l| l.starts_with("| `identity_sidecar"))
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_string();
        // Label names are the backquoted words outside parentheses (which list values).
        let mut labels = BTreeSet::new();
        let mut depth = 0;
        for (i, part) in cells[3].split('`').enumerate() {
            if i % 2 == 1 && depth == 0 {
                labels.insert(part.to_string());
            } else if i % 2 == 0 {
                depth += part.matches('(').count();
                depth -= part.matches(')').count().min(depth);
            }
        }
        out.insert(name, labels);
    }
    assert!(out.len() >= 20, "the doc's tables were not found: {out:?}");
    out
}

/// A Prometheus process with its API client.
struct Prometheus {
    child: std::process::Child,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(config: &str, rules: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("rules.yaml"), rules).expect("rules");
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("config");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = dir.path().join("prometheus.log");
        let out = std::fs::File::create(&log).expect("log");
        let child = std::process::Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .current_dir(dir.path())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: support::client(),
            _dir: dir,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v1/PATH` with `query`; the `data` of a successful answer.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let r = self
            .http
            .get(format!("{}/api/v1/{path}", self.base))
            .query(query)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        if v["status"] == "success" {
            Ok(v["data"].clone())
        } else {
            Err(format!("{} {}", v["errorType"], v["error"]))
        }
    }

    async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let data = self.api("query", &[("query", promql)]).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The state of `alert` now: `inactive`, `pending` or `firing`.
    async fn alert_state(&self, alert: &str) -> String {
        let Ok(data) = self.api("alerts", &[]).await else {
            return "unknown".into();
        };
        let states: Vec<&str> = data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["labels"]["alertname"] == alert)
            .filter_map(|a| a["state"].as_str())
            .collect();
        if states.contains(&"firing") {
            "firing".into()
        } else if states.contains(&"pending") {
            "pending".into()
        } else {
            "inactive".into()
        }
    }
}

/// Polls `alert` until its state is `want`, recording every change into `seen`.
async fn wait_alert(
    p: &Prometheus,
    alert: &str,
    want: &str,
    limit: Duration,
    seen: &mut Vec<(String, f64)>,
    t0: Instant,
) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        let s = p.alert_state(alert).await;
        if seen.last().map(|(l, _)| l) != Some(&s) {
            seen.push((s.clone(), t0.elapsed().as_secs_f64()));
        }
        if s == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// An opted-in pod with its client id, for the webhook's traffic.
fn pod(name: &str, client_id: Option<&str>) -> Value {
    let mut annotations = serde_json::Map::new();
    if let Some(c) = client_id {
        annotations.insert("identity-sidecar.io/client-id".into(), json!(c));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "labels": {"identity-sidecar.io/inject": "true"},
            "annotations": annotations,
        },
        "spec": {
            "serviceAccountName": "app",
            "containers": [{"name": "app", "image": "registry.example/app:1"}],
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_alerts_and_graphs_the_sidecar_and_the_webhook() {
    if let Some(why) = system::missing(None, &["prometheus"]) {
        return system::skip(&why);
    }
    // The sidecar: 20-second tokens, so renewals (at half-life) happen within the test.
    let mock_cfg = MockAadConfig {
        token_lifetime: Some(Duration::from_secs(20)),
        ..MockAadConfig::default()
    };
    let sidecar = MockServe::start(
        mock_cfg,
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--allowed-resources",
            "https://vault.azure.net,https://storage.*",
        ],
    )
    .await;
    let admin = sidecar.admin.expect("the sidecar logs its admin address");

    // The webhook, against a fake API server.
    let kube = fake_kube::FakeKube::start().await;
    kube.add_service_account("shop", "app", &[]);
    let kube_dir = tempfile::tempdir().expect("tmp");
    let kubeconfig = kube.kubeconfig(kube_dir.path());
    let webhook =
        tokio::task::spawn_blocking(move || webhook_proc::Webhook::start(&kubeconfig, &[]))
            .await
            .expect("webhook");
    let webhook_ca = webhook.dir.path().join("ca.crt");
    std::fs::write(&webhook_ca, &webhook.ca_pem).expect("ca");

    let config = format!(
        r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [rules.yaml]
scrape_configs:
  - job_name: identity-sidecar
    static_configs:
      - targets: ["{admin}"]
        labels: {{namespace: app, pod: app-0}}
  - job_name: identity-sidecar-webhook
    scheme: https
    tls_config: {{ca_file: "{ca}", server_name: localhost}}
    static_configs:
      - targets: ["{webhook}"]
        labels: {{namespace: identity-sidecar-system, pod: webhook-0}}
"#,
        ca = webhook_ca.display(),
        webhook = webhook.addr,
    );
    let rules = std::fs::read_to_string(Path::new(REPO).join("manifests/monitoring/rules.yaml"))
        .expect("rules");
    let prom = Prometheus::start(&config, &time_scaled(&rules));

    // Traffic, all along: two resources by IMDS, App Service, and a refused resource.
    let traffic = {
        let http = support::client();
        let base = sidecar.url("");
        tokio::spawn(async move {
            loop {
                for resource in ["https://vault.azure.net", "https://storage.azure.com/"] {
                    let _ = http
                        .get(format!("{base}/metadata/identity/oauth2/token"))
                        .query(&[("api-version", "2018-02-01"), ("resource", resource)])
                        .header("Metadata", "true")
                        .send()
                        .await;
                }
                let _ = http
                    .get(format!("{base}/msi/token"))
                    .query(&[
                        ("api-version", "2019-08-01"),
                        ("resource", "https://vault.azure.net"),
                    ])
                    .header("X-IDENTITY-HEADER", support::IDENTITY_HEADER)
                    .send()
                    .await;
                let _ = http
                    .get(format!("{base}/metadata/identity/oauth2/token"))
                    .query(&[
                        ("api-version", "2018-02-01"),
                        ("resource", "https://not.allowed"),
                    ])
                    .header("Metadata", "true")
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    for (name, client_id) in [("patched", Some(support::CLIENT_ID)), ("refused", None)] {
        let review = webhook.review(&pod(name, client_id), "shop").await;
        assert!(review["allowed"].is_boolean(), "{review}");
    }

    // Both targets up, and a background refresh done (20 s tokens renew at 10 s).
    let documented = documented_series();
    let mut last_missing: Vec<String> = Vec::new();
    let mut ready = false;
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        if let Ok(names) = prom.api("label/__name__/values", &[]).await {
            let names: BTreeSet<String> = names
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            last_missing = documented
                .keys()
                .filter(|d| {
                    !names
                        .iter()
                        .any(|n| n == *d || n.strip_suffix("_bucket") == Some(d.as_str()))
                })
                .cloned()
                .collect();
            if last_missing.is_empty() {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        ready,
        "documented series missing from Prometheus: {last_missing:?}\nprometheus log:\n{}\nsidecar log:\n{}",
        prom.log(),
        sidecar.process.logs()
    );

    // Every documented series, with exactly the documented labels (and the target's).
    println!("series as Prometheus returned them:");
    for (name, labels) in &documented {
        let selector = format!("{{__name__=~\"{name}|{name}_bucket\"}}");
        let series = prom
            .api("series", &[("match[]", selector.as_str())])
            .await
            .expect("series");
        let series = series.as_array().cloned().unwrap_or_default();
        assert!(!series.is_empty(), "{name}: no series");
        for s in &series {
            let mut got: BTreeSet<String> = s
                .as_object()
                .expect("labels")
                .keys()
                .filter(|k| *k != "__name__" && *k != "le")
                .cloned()
                .collect();
            for t in TARGET_LABELS {
                assert!(got.remove(t), "{name} lacks the target label {t}: {s}");
            }
            assert_eq!(&got, labels, "{name}: labels of {s}");
            if s.get("le").is_none_or(|le| le == "+Inf") {
                println!("  {s}");
            }
        }
    }
    // Bounded labels: the resource label is the allow-list rule, never the request's value.
    let resources = prom
        .query("count by (resource) (identity_sidecar_token_expiry_timestamp_seconds)")
        .await
        .expect("query");
    let resources: BTreeSet<&str> = resources
        .iter()
        .filter_map(|r| r["metric"]["resource"].as_str())
        .collect();
    assert_eq!(
        resources,
        BTreeSet::from(["https://storage.*", "https://vault.azure.net"])
    );

    // Every panel's queries run and return series while traffic flows.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(REPO).join("manifests/monitoring/dashboard.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 7);
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let promql = expr.replace("$__rate_interval", "15s");
            let result = prom.query(&promql).await;
            let title = panel["title"].as_str().unwrap_or("?");
            match result {
                Ok(r) => assert!(
                    !r.is_empty(),
                    "panel {title:?}: {promql} returned no series"
                ),
                Err(e) => panic!("panel {title:?}: {promql} failed: {e}"),
            }
        }
    }

    // The refresh-failure alert: quiet, then pending and firing while Entra ID fails every
    // token request, then resolved once it answers again.
    let t0 = Instant::now();
    let mut states = Vec::new();
    assert!(
        wait_alert(
            &prom,
            REFRESH_ALERT,
            "inactive",
            Duration::from_secs(5),
            &mut states,
            t0
        )
        .await,
        "{states:?}"
    );
    sidecar
        .mock
        .inject_fault(Fault::always(FaultAction::Unavailable));
    let fired = wait_alert(
        &prom,
        REFRESH_ALERT,
        "firing",
        Duration::from_secs(180),
        &mut states,
        t0,
    )
    .await;
    assert!(fired, "the alert did not fire: {states:?}\n{}", prom.log());
    sidecar.mock.clear_faults();
    let resolved = wait_alert(
        &prom,
        REFRESH_ALERT,
        "inactive",
        Duration::from_secs(180),
        &mut states,
        t0,
    )
    .await;
    println!("alert {REFRESH_ALERT} states (state, seconds after the fault): {states:?}");
    assert!(resolved, "the alert did not resolve: {states:?}");
    let order: Vec<&str> = states.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        order,
        ["inactive", "pending", "firing", "inactive"],
        "{states:?}"
    );
    traffic.abort();
}
