//! `identity-sidecar-webhook` as a real process over HTTPS, with a real HTTPS client, against a
//! fake Kubernetes API server (HTTPS, ServiceAccount GETs, 404s): the pod rules of issue 13 on a
//! corpus of real-world pod shapes (each patch applied with two RFC 6902 implementations we did
//! not write and validated with kubernetes-validate --strict), idempotence, refusals,
//! coexistence with the Azure Workload Identity webhook under the API server's reinvocation
//! rules, bad input, and certificate rotation under continuous requests.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

#[path = "support/checkers.rs"]
mod checkers;
#[path = "support/fake_kube.rs"]
mod fake_kube;
#[path = "support/system.rs"]
mod system;
#[path = "support/webhook_proc.rs"]
mod webhook_proc;

use checkers::{assert_patches_valid, write_patch_case};
use fake_kube::FakeKube;
use webhook_proc::{Webhook, apply, corpus_pod, patch_of, review};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const NS: &str = "shop";
const APP_CLIENT: &str = "11111111-1111-1111-1111-111111111111";
const DEFAULT_CLIENT: &str = "22222222-2222-2222-2222-222222222222";
const SIDECAR: &str = "identity-sidecar";
const INIT: &str = "identity-sidecar-init";
const TOKEN_VOLUME: &str = "identity-sidecar-token";
const ADMIN_PORT_NAME: &str = "identity-admin";
const APP_ENV: [&str; 5] = [
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
];

/// A fake API with the corpus's ServiceAccounts and a webhook pointed at it.
async fn setup(extra: &[&str]) -> (FakeKube, Webhook) {
    let kube = FakeKube::start().await;
    kube.add_service_account(
        NS,
        "app",
        &[
            ("azure.workload.identity/client-id", APP_CLIENT),
            (
                "azure.workload.identity/tenant-id",
                "55555555-5555-5555-5555-555555555555",
            ),
        ],
    );
    kube.add_service_account(
        NS,
        "default",
        &[("azure.workload.identity/client-id", DEFAULT_CLIENT)],
    );
    kube.add_service_account(NS, "no-id", &[]);
    kube.add_service_account(
        NS,
        "long-token",
        &[
            ("azure.workload.identity/client-id", APP_CLIENT),
            (
                "azure.workload.identity/service-account-token-expiration",
                "86400",
            ),
        ],
    );
    kube.add_service_account(
        NS,
        "short-token",
        &[
            ("azure.workload.identity/client-id", APP_CLIENT),
            (
                "azure.workload.identity/service-account-token-expiration",
                "600",
            ),
        ],
    );
    let wh = Webhook::start_against(&kube, extra);
    (kube, wh)
}

fn corpus() -> Vec<(String, Value)> {
    let dir = PathBuf::from(REPO).join("tests/webhook/corpus");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = p.file_stem().expect("stem").to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).expect("read corpus file");
            (name, serde_json::from_str(&text).expect("corpus JSON"))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.push(("very-large".into(), large_pod()));
    out
}

/// A pod near the API's size limit: 20 containers with 400 variables each, plus a 512 KiB
/// annotation (about 1.5 MB of JSON).
fn large_pod() -> Value {
    let base = corpus_pod("deployment-generate-name");
    let mut pod = base.clone();
    let template = base["spec"]["containers"][0].clone();
    let mut containers = Vec::new();
    for i in 0..20 {
        let mut c = template.clone();
        c["name"] = json!(format!("c{i}"));
        c["env"] = Value::Array(
            (0..400)
                .map(|j| json!({"name": format!("VAR_{j}"), "value": format!("value-{i}-{j}-{}", "x".repeat(64))}))
                .collect(),
        );
        containers.push(c);
    }
    pod["spec"]["containers"] = Value::Array(containers);
    pod["metadata"]["annotations"] = json!({"example.com/blob": "y".repeat(512 * 1024)});
    pod
}

fn containers(pod: &Value, list: &str) -> Vec<Value> {
    pod["spec"][list].as_array().cloned().unwrap_or_default()
}

fn all_containers(pod: &Value) -> Vec<Value> {
    let mut v = containers(pod, "initContainers");
    v.extend(containers(pod, "containers"));
    v
}

fn env_names(c: &Value) -> Vec<String> {
    c["env"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|v| v["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn env_value<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)
}

fn annotation<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    pod["metadata"]["annotations"][key].as_str()
}

fn without(v: &Value, keys: &[&str]) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        for k in keys {
            m.remove(*k);
        }
    }
    v
}

/// Volumes holding a token for the Entra ID audience other than ours.
fn foreign_token_volumes(pod: &Value) -> BTreeSet<String> {
    containers(pod, "volumes")
        .iter()
        .filter(|v| {
            v["projected"]["sources"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|x| x["serviceAccountToken"]["audience"] == "api://AzureADTokenExchange")
            })
        })
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .filter(|n| n != TOKEN_VOLUME)
        .collect()
}

/// The rules of issue 13 on a mutated pod, and that nothing else of `orig` changed.
fn check_rules(name: &str, orig: &Value, pod: &Value) {
    let ann = |k: &str| annotation(orig, k).unwrap_or("");
    let classic = ann("identity-sidecar.io/sidecar-mode") == "classic";
    let intercept = ann("identity-sidecar.io/mode") == "imds-intercept";
    let inits = containers(pod, "initContainers");
    let conts = containers(pod, "containers");

    // The sidecar: first (after init-network), native or classic.
    let sidecar = if classic {
        assert_eq!(conts[0]["name"], SIDECAR, "{name}: classic sidecar first");
        assert!(conts[0].get("restartPolicy").is_none(), "{name}");
        &conts[0]
    } else {
        let at = usize::from(intercept);
        assert_eq!(
            inits[at]["name"], SIDECAR,
            "{name}: native sidecar position"
        );
        assert_eq!(inits[at]["restartPolicy"], "Always", "{name}");
        &inits[at]
    };
    if intercept {
        assert_eq!(
            inits[0]["name"], INIT,
            "{name}: init-network before user inits"
        );
        let sc = &inits[0]["securityContext"];
        assert_eq!(sc["capabilities"]["add"], json!(["NET_ADMIN"]), "{name}");
        assert_eq!(sc["privileged"], false, "{name}");
    } else {
        assert!(
            all_containers(pod).iter().all(|c| c["name"] != INIT),
            "{name}"
        );
    }
    // httpGet probes on the named admin port, which the sidecar declares and listens on.
    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        assert_eq!(
            sidecar[probe]["httpGet"],
            json!({"path": path, "port": ADMIN_PORT_NAME}),
            "{name}: {probe}"
        );
    }
    let admin = sidecar["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == ADMIN_PORT_NAME))
        .and_then(|p| p["containerPort"].as_u64())
        .expect("the admin port is declared");
    assert_eq!(
        env_value(sidecar, "IDENTITY_SIDECAR_ADMIN_LISTEN").expect("admin listen")["value"],
        format!("0.0.0.0:{admin}"),
        "{name}"
    );
    assert_eq!(
        env_value(sidecar, "IDENTITY_SIDECAR_AUDIT_LOG").expect("audit log")["value"],
        "true",
        "{name}"
    );
    for k in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(sidecar["resources"][k][r].is_string(), "{name}: {k}.{r}");
        }
    }
    let sc = &sidecar["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "{name}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}");
    let listen = env_value(sidecar, "IDENTITY_SIDECAR_LISTEN").expect("listen")["value"]
        .as_str()
        .expect("str");
    assert!(listen.starts_with("127.0.0.1:"), "{name}: loopback only");
    let header = env_value(sidecar, "IDENTITY_HEADER").expect("header")["value"]
        .as_str()
        .expect("literal header");
    assert!(header.len() >= 32, "{name}: header too short");

    // The token: a projected volume for Entra ID, mounted only into the sidecar.
    let vol = containers(pod, "volumes")
        .into_iter()
        .find(|v| v["name"] == TOKEN_VOLUME)
        .expect("token volume");
    let src = &vol["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(src["audience"], "api://AzureADTokenExchange", "{name}");
    assert!(
        src["expirationSeconds"]
            .as_u64()
            .is_some_and(|s| (3600..=86400).contains(&s))
    );
    for c in all_containers(pod) {
        if c["name"] == SIDECAR {
            continue;
        }
        let mounts: Vec<String> = c["volumeMounts"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|x| x["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            !mounts.iter().any(|m| m == TOKEN_VOLUME),
            "{name}: {} mounts the token",
            c["name"]
        );
        if orig["metadata"]["labels"]["azure.workload.identity/use"] == "true" {
            let foreign = foreign_token_volumes(pod);
            assert!(
                !mounts.iter().any(|m| foreign.contains(m)),
                "{name}: {} mounts the azwi token",
                c["name"]
            );
            assert!(
                env_value(&c, "AZURE_FEDERATED_TOKEN_FILE").is_none(),
                "{name}: {} keeps AZURE_FEDERATED_TOKEN_FILE",
                c["name"]
            );
        }
    }

    // The app environment, where it was not set, except in skipped containers.
    let skip: BTreeSet<&str> = ann("identity-sidecar.io/skip-containers")
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    for c in all_containers(pod) {
        let n = c["name"].as_str().unwrap_or("");
        if n == SIDECAR || n == INIT {
            continue;
        }
        let names = env_names(&c);
        for var in APP_ENV {
            let has = names.iter().any(|x| x == var);
            if skip.contains(n) {
                let had = all_containers(orig)
                    .iter()
                    .any(|o| o["name"] == n && env_names(o).iter().any(|x| x == var));
                assert_eq!(has, had, "{name}: skipped {n} got {var}");
            } else {
                assert!(has, "{name}: {n} lacks {var}");
            }
        }
    }

    // Nothing else changed: metadata but annotations, spec but the lists, every original
    // container in order with its fields (env and mounts only extended or, for a token another
    // webhook added, reduced).
    assert_eq!(
        without(&pod["metadata"], &["annotations"]),
        without(&orig["metadata"], &["annotations"]),
        "{name}: metadata changed"
    );
    if let Some(a) = orig["metadata"]["annotations"].as_object() {
        for (k, v) in a {
            if k != "azure.workload.identity/skip-containers" {
                assert_eq!(
                    &pod["metadata"]["annotations"][k], v,
                    "{name}: annotation {k}"
                );
            }
        }
    }
    let lists = ["initContainers", "containers", "volumes"];
    assert_eq!(
        without(&pod["spec"], &lists),
        without(&orig["spec"], &lists),
        "{name}: spec changed"
    );
    let ov = containers(orig, "volumes");
    assert_eq!(
        &containers(pod, "volumes")[..ov.len()],
        &ov[..],
        "{name}: volumes changed"
    );
    for list in ["initContainers", "containers"] {
        let kept: Vec<Value> = containers(pod, list)
            .into_iter()
            .filter(|c| c["name"] != SIDECAR && c["name"] != INIT)
            .collect();
        let before = containers(orig, list);
        assert_eq!(kept.len(), before.len(), "{name}: {list} count");
        for (o, m) in before.iter().zip(&kept) {
            let fields = ["env", "volumeMounts"];
            assert_eq!(
                without(m, &fields),
                without(o, &fields),
                "{name}: container changed"
            );
            let oe: Vec<&Value> = o["env"]
                .as_array()
                .map(|e| {
                    e.iter()
                        .filter(|x| x["name"] != "AZURE_FEDERATED_TOKEN_FILE" || !azwi(orig))
                        .collect()
                })
                .unwrap_or_default();
            let me = m["env"].as_array().cloned().unwrap_or_default();
            assert_eq!(
                me.iter().take(oe.len()).collect::<Vec<_>>(),
                oe,
                "{name}: env reordered"
            );
        }
    }
}

fn azwi(pod: &Value) -> bool {
    pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_follows_the_pod_rules_validates_and_a_second_call_changes_nothing() {
    let (_kube, wh) = setup(&[]).await;
    let cases = tempfile::tempdir().expect("tmp");
    for (name, pod) in corpus() {
        let (mutated, ops) = wh.mutate(&pod, NS).await;
        assert!(!ops.is_empty(), "{name}: no patch");
        // Every operation names one place; nothing replaces a whole container or list.
        for op in &ops {
            let path = op["path"].as_str().expect("path");
            assert!(
                matches!(op["op"].as_str(), Some("add" | "remove" | "replace")),
                "{name}: {op}"
            );
            assert!(
                !matches!(path, "/spec" | "/metadata" | "/spec/containers" if pod.pointer(path).is_some()),
                "{name}: whole-list operation {op}"
            );
        }
        check_rules(&name, &pod, &mutated);
        // Reinvocation with the mutated pod: no patch at all.
        let again = wh.review(&mutated, NS).await;
        assert_eq!(again["allowed"], true, "{name}");
        assert!(
            patch_of(&again).is_empty(),
            "{name}: second call patched: {again}"
        );
        if name != "very-large" {
            write_patch_case(cases.path(), &name, &pod, &ops, &mutated);
        }
    }
    if let Ok(dir) = std::env::var("IDENTITY_SIDECAR_WEBHOOK_KEEP_CASES") {
        for e in std::fs::read_dir(cases.path()).expect("dir").flatten() {
            let _ = std::fs::copy(e.path(), Path::new(&dir).join(e.file_name()));
        }
    }

    // The second opinion: Python jsonpatch and kubernetes-validate --strict (1.29 and newest).
    assert_patches_valid(cases.path(), corpus().len() - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_comes_from_the_service_account_and_the_pod_annotation_overrides() {
    let (kube, wh) = setup(&[]).await;
    let (pods, _) = (corpus(), ());
    let get = |n: &str| pods.iter().find(|p| p.0 == n).expect("case").1.clone();
    let sidecar_env = |pod: &Value, var: &str| -> String {
        all_containers(pod)
            .into_iter()
            .find(|c| c["name"] == SIDECAR)
            .and_then(|c| env_value(&c, var).cloned())
            .and_then(|v| v["value"].as_str().map(str::to_string))
            .expect("sidecar env")
    };
    let (m, _) = wh.mutate(&get("deployment-generate-name"), NS).await;
    assert_eq!(sidecar_env(&m, "AZURE_CLIENT_ID"), APP_CLIENT);
    assert_eq!(
        sidecar_env(&m, "AZURE_TENANT_ID"),
        "55555555-5555-5555-5555-555555555555"
    );
    let (m, _) = wh.mutate(&get("no-service-account"), NS).await;
    assert_eq!(sidecar_env(&m, "AZURE_CLIENT_ID"), DEFAULT_CLIENT);
    // No tenant annotation on `default`: the webhook's --tenant-id.
    assert_eq!(sidecar_env(&m, "AZURE_TENANT_ID"), webhook_proc::TENANT);
    let (m, _) = wh.mutate(&get("skip-containers-and-overrides"), NS).await;
    assert_eq!(
        sidecar_env(&m, "AZURE_CLIENT_ID"),
        "33333333-3333-3333-3333-333333333333"
    );
    assert_eq!(sidecar_env(&m, "IDENTITY_SIDECAR_LISTEN"), "127.0.0.1:8123");

    // Token lifetime from the ServiceAccount.
    let mut p = get("deployment-generate-name");
    p["spec"]["serviceAccountName"] = json!("long-token");
    let (m, _) = wh.mutate(&p, NS).await;
    let vol = containers(&m, "volumes")
        .into_iter()
        .find(|v| v["name"] == TOKEN_VOLUME)
        .expect("vol");
    assert_eq!(
        vol["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
        86400
    );

    // Cached: many pods of one ServiceAccount, one GET.
    let before = kube.sa_requests.load(Ordering::SeqCst);
    for _ in 0..5 {
        wh.mutate(&get("deployment-generate-name"), NS).await;
    }
    assert_eq!(
        kube.sa_requests.load(Ordering::SeqCst),
        before,
        "ServiceAccount not cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_what_to_change() {
    let (_kube, wh) = setup(&[]).await;
    let base = corpus_pod("deployment-generate-name");
    let refused = |resp: &Value| -> String {
        assert_eq!(resp["allowed"], false, "not refused: {resp}");
        assert!(resp.get("patch").is_none());
        resp["status"]["message"]
            .as_str()
            .expect("message")
            .to_string()
    };

    let mut p = base.clone();
    p["spec"]["hostNetwork"] = json!(true);
    let msg = refused(&wh.review(&p, NS).await);
    assert!(msg.contains("hostNetwork"), "{msg}");

    let mut p = base.clone();
    p["spec"]["serviceAccountName"] = json!("no-id");
    let msg = refused(&wh.review(&p, NS).await);
    assert!(
        msg.contains("shop/no-id") && msg.contains("azure.workload.identity/client-id"),
        "{msg}"
    );
    assert!(msg.contains("identity-sidecar.io/client-id"), "{msg}");

    // A ServiceAccount the API does not have (404).
    let mut p = base.clone();
    p["spec"]["serviceAccountName"] = json!("ghost");
    let msg = refused(&wh.review(&p, NS).await);
    assert!(
        msg.contains("shop/ghost") && msg.contains("does not exist"),
        "{msg}"
    );
    // ... unless the pod names its client id itself.
    p["metadata"]["annotations"] = json!({"identity-sidecar.io/client-id": APP_CLIENT});
    assert_eq!(wh.review(&p, NS).await["allowed"], true);

    let mut p = base.clone();
    p["spec"]["serviceAccountName"] = json!("short-token");
    let msg = refused(&wh.review(&p, NS).await);
    assert!(
        msg.contains("3600")
            && msg.contains("86400")
            && msg.contains("ServiceAccount shop/short-token"),
        "{msg}"
    );
    let mut p = base.clone();
    p["metadata"]["annotations"] =
        json!({"azure.workload.identity/service-account-token-expiration": "100000"});
    let msg = refused(&wh.review(&p, NS).await);
    assert!(msg.contains("100000"), "{msg}");

    let mut p = base.clone();
    p["metadata"]["labels"]["azure.workload.identity/use"] = json!("true");
    p["metadata"]["annotations"] = json!({"azure.workload.identity/inject-proxy-sidecar": "true"});
    let msg = refused(&wh.review(&p, NS).await);
    assert!(
        msg.contains("azure.workload.identity/inject-proxy-sidecar"),
        "{msg}"
    );

    for (k, v) in [
        ("identity-sidecar.io/mode", "sideways"),
        ("identity-sidecar.io/client-id", "not-a-guid"),
        ("identity-sidecar.io/cpu-limit", "lots"),
        ("identity-sidecar.io/port", "0"),
        ("identity-sidecar.io/admin-port", "99999"),
    ] {
        let mut p = base.clone();
        p["metadata"]["annotations"] = json!({ k: v });
        let msg = refused(&wh.review(&p, NS).await);
        assert!(msg.contains(k), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_is_named_probed_movable_and_never_taken_from_the_app() {
    let (_kube, wh) = setup(&[]).await;
    let base: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{REPO}/tests/webhook/corpus/deployment-generate-name.json"
        ))
        .expect("read"),
    )
    .expect("json");
    let sidecar_of = |pod: &Value| {
        all_containers(pod)
            .into_iter()
            .find(|c| c["name"] == SIDECAR)
            .expect("sidecar")
    };
    let admin_of = |pod: &Value| {
        let s = sidecar_of(pod);
        (
            s["ports"].clone(),
            env_value(&s, "IDENTITY_SIDECAR_ADMIN_LISTEN").expect("listen")["value"].clone(),
        )
    };

    // The default: 8491, named identity-admin.
    let (m, _) = wh.mutate(&base, NS).await;
    assert_eq!(
        admin_of(&m),
        (
            json!([{"name": ADMIN_PORT_NAME, "containerPort": 8491, "protocol": "TCP"}]),
            json!("0.0.0.0:8491")
        )
    );
    assert_eq!(
        sidecar_of(&m)["livenessProbe"]["httpGet"]["port"],
        ADMIN_PORT_NAME
    );

    // An app that already uses 8491 is refused, naming its container and the way out.
    let mut p = base.clone();
    p["spec"]["containers"][0]["ports"] = json!([{"name": "web", "containerPort": 8491}]);
    let app = p["spec"]["containers"][0]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let resp = wh.review(&p, NS).await;
    assert_eq!(resp["allowed"], false, "{resp}");
    let msg = resp["status"]["message"].as_str().expect("message");
    assert!(
        msg.contains(&format!("container {app:?}"))
            && msg.contains("8491")
            && msg.contains(ADMIN_PORT_NAME)
            && msg.contains("identity-sidecar.io/admin-port"),
        "{msg}"
    );

    // ... and admitted with the port the annotation chooses, probes following the name.
    p["metadata"]["annotations"] = json!({"identity-sidecar.io/admin-port": "9555"});
    let (m, _) = wh.mutate(&p, NS).await;
    assert_eq!(
        admin_of(&m),
        (
            json!([{"name": ADMIN_PORT_NAME, "containerPort": 9555, "protocol": "TCP"}]),
            json!("0.0.0.0:9555")
        )
    );
    assert_eq!(
        sidecar_of(&m)["readinessProbe"]["httpGet"]["port"],
        ADMIN_PORT_NAME
    );

    // The admin port cannot be the token port.
    let mut p = base.clone();
    p["metadata"]["annotations"] = json!({
        "identity-sidecar.io/admin-port": "8123",
        "identity-sidecar.io/port": "8123",
    });
    let resp = wh.review(&p, NS).await;
    assert_eq!(resp["allowed"], false, "{resp}");
    let msg = resp["status"]["message"].as_str().expect("message");
    assert!(msg.contains("8123") && msg.contains("must differ"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_without_the_label_and_other_requests_are_allowed_unchanged() {
    let (_kube, wh) = setup(&[]).await;
    let mut pod = corpus_pod("deployment-generate-name");
    for op in ["UPDATE", "DELETE", "CONNECT"] {
        let r = wh
            .post(
                serde_json::to_vec(&review(&pod, NS, op)).expect("json"),
                "application/json",
            )
            .await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["response"]["allowed"], true, "{op}");
        assert!(v["response"].get("patch").is_none(), "{op}");
    }
    let mut deployment = review(&pod, NS, "CREATE");
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    deployment["request"]["resource"] =
        json!({"group": "apps", "version": "v1", "resource": "deployments"});
    let v: Value = wh
        .post(
            serde_json::to_vec(&deployment).expect("json"),
            "application/json",
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["response"]["allowed"], true);
    assert!(v["response"].get("patch").is_none());

    pod["metadata"]["labels"]["identity-sidecar.io/inject"] = json!("false");
    let resp = wh.review(&pod, NS).await;
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_never_kills_the_webhook() {
    let (_kube, wh) = setup(&[]).await;
    let cases: Vec<(Vec<u8>, &str, u16, &str)> = vec![
        (b"{not json".to_vec(), "application/json", 400, "not JSON"),
        (b"".to_vec(), "application/json", 400, "not JSON"),
        (
            b"[1,2]".to_vec(),
            "application/json",
            400,
            "AdmissionReview",
        ),
        (
            br#"{"apiVersion":"v1","kind":"Pod"}"#.to_vec(),
            "application/json",
            400,
            "AdmissionReview",
        ),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#
                .to_vec(),
            "application/json",
            400,
            "uid",
        ),
        (b"{}".to_vec(), "text/plain", 415, "application/json"),
        (b"{}".to_vec(), "application/yaml", 415, "application/json"),
        (
            vec![b' '; 3 * 1024 * 1024 + 1],
            "application/json",
            413,
            "larger than",
        ),
    ];
    for (body, ct, status, words) in cases {
        let r = wh.post(body, ct).await;
        assert_eq!(r.status().as_u16(), status, "{ct} {words}");
        let text = r.text().await.expect("text");
        assert!(text.contains(words), "{text}");
    }
    // A body over the limit sent without Content-Length (chunked) is cut off too.
    let chunks: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>> = (0..64)
        .map(|_| {
            Ok(hyper::body::Frame::data(bytes::Bytes::from(vec![
                b' ';
                64 * 1024
            ])))
        })
        .collect();
    let r = wh
        .http
        .post(wh.url("/mutate"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap(http_body_util::StreamBody::new(
            futures_util::stream::iter(chunks),
        )))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status().as_u16(), 413);
    }
    // Review-shaped but odd: a pod CREATE whose object is not a pod, a pod with wrong types.
    let mut weird = review(&json!("a string"), NS, "CREATE");
    let v = wh.post_json(&weird).await;
    assert_eq!(v["response"]["allowed"], true, "not opted in: allowed");
    weird["request"]["object"] = json!({"metadata": {"labels": {"identity-sidecar.io/inject": "true"}},
        "spec": {"containers": "nope", "initContainers": 7, "volumes": {"a": 1}}});
    let v = wh.post_json(&weird).await;
    assert!(v["response"]["allowed"].is_boolean(), "{v}");
    let r = wh.http.get(wh.url("/mutate")).send().await.expect("get");
    assert_eq!(r.status().as_u16(), 405);
    let r = wh
        .http
        .get(wh.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status().as_u16(), 200, "webhook died: {}", wh.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_share_the_listener() {
    let (kube, wh) = setup(&[]).await;
    let ready = |wh: &Webhook| {
        let http = wh.http.clone();
        let url = wh.url("/readyz");
        async move {
            http.get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    let mut ok = false;
    for _ in 0..100 {
        if ready(&wh).await == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "never ready: {}", wh.logs());
    let pod = corpus_pod("deployment-generate-name");
    wh.mutate(&pod, NS).await;
    let m = wh.metrics().await;
    assert!(
        m.contains("identity_sidecar_webhook_admissions_total{outcome=\"patched\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("identity_sidecar_webhook_admission_duration_seconds"),
        "{m}"
    );

    // The API goes away: pods are refused with a clear message, and the webhook is not ready.
    kube.stop();
    let mut p = pod.clone();
    p["spec"]["serviceAccountName"] = json!("another");
    let resp = wh.review(&p, NS).await;
    assert_eq!(resp["allowed"], false);
    let msg = resp["status"]["message"].as_str().expect("msg");
    assert!(
        msg.contains("cannot read ServiceAccount shop/another") && msg.contains("unreachable"),
        "{msg}"
    );
    assert_eq!(ready(&wh).await, 503);
    // The secret never reaches the log.
    let logs = wh.logs();
    assert!(!logs.contains(fake_kube::TOKEN), "bearer token logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pod_gets_its_own_identity_header() {
    let (_kube, wh) = setup(&[]).await;
    let pod = corpus_pod("deployment-generate-name");
    let header = |m: &Value| {
        env_value(&containers(m, "containers")[0], "IDENTITY_HEADER").expect("h")["value"].clone()
    };
    let (a, _) = wh.mutate(&pod, NS).await;
    let (b, _) = wh.mutate(&pod, NS).await;
    assert_ne!(header(&a), header(&b), "two replicas share a secret");
    // The app's secret is the sidecar's.
    let side = containers(&a, "initContainers")[0].clone();
    assert_eq!(
        env_value(&side, "IDENTITY_HEADER").expect("h")["value"],
        header(&a)
    );
    assert!(
        !wh.logs().contains(header(&a).as_str().expect("s")),
        "identity header logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_unknown_to_any_schema_survive() {
    let (_kube, wh) = setup(&[]).await;
    let mut pod = corpus_pod("istio-native-sidecar");
    pod["spec"]["futurePodField"] = json!({"x": [1, 2, {"y": null}]});
    pod["spec"]["initContainers"][1]["futureContainerField"] = json!("keep me");
    pod["spec"]["containers"][0]["env"] =
        json!([{"name": "A", "value": "1", "futureEnvField": true}]);
    pod["metadata"]["futureMetaField"] = json!(42);
    let (m, _) = wh.mutate(&pod, NS).await;
    assert_eq!(m["spec"]["futurePodField"], pod["spec"]["futurePodField"]);
    let istio = containers(&m, "initContainers")
        .into_iter()
        .find(|c| c["name"] == "istio-proxy")
        .expect("istio-proxy");
    let before = &pod["spec"]["initContainers"][1];
    assert_eq!(
        without(&istio, &["env"]),
        without(before, &["env"]),
        "istio-proxy changed"
    );
    assert_eq!(istio["env"][0], before["env"][0]);
    assert_eq!(istio["restartPolicy"], "Always");
    assert_eq!(
        m["spec"]["containers"][0]["env"][0],
        pod["spec"]["containers"][0]["env"][0]
    );
    assert_eq!(m["metadata"]["futureMetaField"], 42);
}

// ---- Coexistence with the Azure Workload Identity webhook, under the API server's rules ----

/// What the Azure Workload Identity webhook (v1.x) does to a pod labelled
/// `azure.workload.identity/use: "true"`: to every container not in
/// `azure.workload.identity/skip-containers`, add its four variables where absent and mount its
/// token volume (replacing a mount of the same name); add the volume if absent.
fn azwi_webhook(pod: &Value) -> Value {
    let mut pod = pod.clone();
    if !azwi(&pod) {
        return pod;
    }
    let skip: BTreeSet<String> = annotation(&pod, "azure.workload.identity/skip-containers")
        .unwrap_or("")
        .split(';')
        .map(|s| s.trim().to_string())
        .collect();
    let env = [
        ("AZURE_CLIENT_ID", APP_CLIENT),
        ("AZURE_TENANT_ID", "55555555-5555-5555-5555-555555555555"),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            "/var/run/secrets/azure/tokens/azure-identity-token",
        ),
        ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com/"),
    ];
    for list in ["initContainers", "containers"] {
        let Some(cs) = pod["spec"][list].as_array_mut() else {
            continue;
        };
        for c in cs {
            if skip.contains(c["name"].as_str().unwrap_or("")) {
                continue;
            }
            if !c["env"].is_array() {
                c["env"] = json!([]);
            }
            for (k, v) in env {
                if env_value(c, k).is_none() {
                    c["env"]
                        .as_array_mut()
                        .expect("env")
                        .push(json!({"name": k, "value": v}));
                }
            }
            let mount = json!({"name": "azure-identity-token", "mountPath": "/var/run/secrets/azure/tokens", "readOnly": true});
            if !c["volumeMounts"].is_array() {
                c["volumeMounts"] = json!([]);
            }
            let mounts = c["volumeMounts"].as_array_mut().expect("mounts");
            match mounts
                .iter_mut()
                .find(|m| m["name"] == "azure-identity-token")
            {
                Some(m) => *m = mount,
                None => mounts.push(mount),
            }
        }
    }
    if !pod["spec"]["volumes"].is_array() {
        pod["spec"]["volumes"] = json!([]);
    }
    let vols = pod["spec"]["volumes"].as_array_mut().expect("volumes");
    if !vols.iter().any(|v| v["name"] == "azure-identity-token") {
        vols.push(json!({"name": "azure-identity-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "api://AzureADTokenExchange", "expirationSeconds": 3600, "path": "azure-identity-token"}}]}}));
    }
    pod
}

/// A webhook that adds a container (a mesh or Dapr-like injector), once.
fn late_container_webhook(pod: &Value) -> Value {
    let mut pod = pod.clone();
    if let Some(cs) = pod["spec"]["containers"].as_array_mut()
        && !cs.iter().any(|c| c["name"] == "daprd")
    {
        cs.push(json!({"name": "daprd", "image": "daprio/daprd:1.14", "env": [{"name": "DAPR_HTTP_PORT", "value": "3500"}]}));
    }
    pod
}

enum Hook<'a> {
    Ours(&'a Webhook),
    Local(fn(&Value) -> Value),
}

/// The API server's mutating-webhook dispatch with `reinvocationPolicy: IfNeeded` for every
/// webhook (k8s.io/apiserver, mutating/dispatcher.go and admission/reinvocation.go): webhooks run
/// in order; when one changes the object, every IfNeeded webhook invoked before it is marked for
/// reinvocation; if anything changed, the chain runs once more, calling only marked webhooks, and
/// a change in that pass marks the webhooks invoked since the last change (which runs a later one
/// again). There is never a third pass. Returns the final pod and how often each hook ran.
async fn api_server(pod: &Value, hooks: &[Hook<'_>]) -> Result<(Value, Vec<usize>), String> {
    let mut pod = pod.clone();
    let mut calls = vec![0; hooks.len()];
    let mut previously_invoked: BTreeSet<usize> = BTreeSet::new();
    let mut reinvoke: BTreeSet<usize> = BTreeSet::new();
    let mut should_reinvoke = false;
    for pass in 0..2 {
        if pass == 1 && !should_reinvoke {
            break;
        }
        for (i, hook) in hooks.iter().enumerate() {
            if pass == 1 && !reinvoke.remove(&i) {
                continue;
            }
            calls[i] += 1;
            let out = match hook {
                Hook::Local(f) => f(&pod),
                Hook::Ours(wh) => {
                    let resp = wh.review(&pod, NS).await;
                    if resp["allowed"] != true {
                        return Err(resp["status"]["message"].as_str().unwrap_or("").to_string());
                    }
                    apply(&pod, &patch_of(&resp))
                }
            };
            if out != pod {
                reinvoke.extend(previously_invoked.iter().copied());
                previously_invoked.clear();
                should_reinvoke = true;
            }
            previously_invoked.insert(i);
            pod = out;
        }
    }
    Ok((pod, calls))
}

fn token_only_in_sidecar(pod: &Value, order: &str) {
    for c in all_containers(pod) {
        let n = c["name"].as_str().unwrap_or("");
        let has_file = env_value(&c, "AZURE_FEDERATED_TOKEN_FILE").is_some();
        let mounts_token = c["volumeMounts"].as_array().is_some_and(|m| {
            m.iter()
                .any(|x| x["name"] == "azure-identity-token" || x["name"] == TOKEN_VOLUME)
        });
        if n == SIDECAR {
            assert!(
                has_file && mounts_token,
                "{order}: the sidecar lost its token"
            );
        } else {
            assert!(!has_file, "{order}: {n} has AZURE_FEDERATED_TOKEN_FILE");
            assert!(!mounts_token, "{order}: {n} mounts a federated token");
            for var in APP_ENV {
                assert!(env_value(&c, var).is_some(), "{order}: {n} lacks {var}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coexists_with_the_azure_workload_identity_webhook_in_either_order() {
    let (_kube, wh) = setup(&[]).await;
    let mut pod = corpus_pod("existing-init-containers");
    pod["metadata"]["labels"]["azure.workload.identity/use"] = json!("true");

    // azwi first (its configuration sorts first by name), then us.
    let (a, calls) = api_server(&pod, &[Hook::Local(azwi_webhook), Hook::Ours(&wh)])
        .await
        .expect("admitted");
    token_only_in_sidecar(&a, "azwi first");
    assert_eq!(calls, [2, 2], "azwi first: reinvocation");
    // Us first, then azwi.
    let (b, calls) = api_server(&pod, &[Hook::Ours(&wh), Hook::Local(azwi_webhook)])
        .await
        .expect("admitted");
    token_only_in_sidecar(&b, "us first");
    assert_eq!(calls, [2, 1], "us first: reinvocation");
    // A third injector adds a container after both: the reinvocation round covers it.
    for hooks in [
        [
            Hook::Local(azwi_webhook),
            Hook::Ours(&wh),
            Hook::Local(late_container_webhook),
        ],
        [
            Hook::Ours(&wh),
            Hook::Local(azwi_webhook),
            Hook::Local(late_container_webhook),
        ],
    ] {
        let (c, _) = api_server(&pod, &hooks).await.expect("admitted");
        assert!(all_containers(&c).iter().any(|x| x["name"] == "daprd"));
        token_only_in_sidecar(&c, "with a late container");
    }
    // Both results still pass a second look by every webhook.
    for p in [&a, &b] {
        assert!(patch_of(&wh.review(p, NS).await).is_empty());
        assert_eq!(&azwi_webhook(p), p);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_added_by_a_later_webhook_get_the_environment_on_reinvocation() {
    let (_kube, wh) = setup(&[]).await;
    let pod = corpus_pod("deployment-generate-name");
    let (p, calls) = api_server(
        &pod,
        &[Hook::Ours(&wh), Hook::Local(late_container_webhook)],
    )
    .await
    .expect("admitted");
    // The later webhook changed the pod, so ours ran again; our change then made the later one
    // run again too (it changed nothing).
    assert_eq!(calls, [2, 2]);
    let daprd = containers(&p, "containers")
        .into_iter()
        .find(|c| c["name"] == "daprd")
        .expect("daprd");
    let app = containers(&p, "containers")[0].clone();
    for var in APP_ENV {
        assert_eq!(env_value(&daprd, var), env_value(&app, var), "{var}");
    }
}

// ---- Certificate rotation ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_continuous_requests_fails_no_request() {
    let (_kube, wh) = setup(&[]).await;
    let pod = corpus_pod("deployment-generate-name");
    let body = serde_json::to_vec(&review(&pod, NS, "CREATE")).expect("json");
    // New CAs for the rotations; the clients trust the old and the new ones, as the API server
    // does while cert-manager's caBundle injection catches up.
    let (cert, key) = wh.cert_files();
    let next: Vec<identity_sidecar::webhook::tls::Generated> = (0..3)
        .map(|_| identity_sidecar::webhook::tls::generate(&["localhost".into()], 2).expect("gen"))
        .collect();
    let mut trusted: Vec<&str> = vec![wh.ca_pem.as_str()];
    trusted.extend(next.iter().map(|g| g.ca_cert.as_str()));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut tasks = Vec::new();
    for i in 0..6 {
        // Half the clients reuse connections, half open one per request (a handshake each).
        let http = if i % 2 == 1 {
            fresh_connection_client(&trusted)
        } else {
            webhook_proc::client_trusting(&trusted)
        };
        let (stop, ok, failed, url, body) = (
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failed),
            wh.url("/mutate"),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for g in &next {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Not atomic, like a naive rotation: certificate first, key a moment later. The
        // webhook must keep serving the old pair in between.
        std::fs::write(&cert, &g.cert).expect("cert");
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::write(&key, &g.key).expect("key");
        tokio::time::sleep(Duration::from_millis(1300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 50, "too few requests: {ok}");
    assert_eq!(
        failed, 0,
        "{failed} requests failed during rotation ({ok} ok)"
    );
    // The last certificate is served: a client trusting only its CA gets through.
    let only_last = fresh_connection_client(&[next[2].ca_cert.as_str()]);
    let r = only_last
        .get(wh.url("/healthz"))
        .send()
        .await
        .expect("new certificate served");
    assert_eq!(r.status(), 200);
    let metrics = only_last
        .get(wh.url("/metrics"))
        .send()
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    assert!(
        metrics
            .contains("identity_sidecar_webhook_certificate_reloads_total{outcome=\"swapped\"} 3"),
        "{metrics}"
    );
}

/// A client that opens a new connection (and TLS handshake) for every request.
fn fresh_connection_client(cas: &[&str]) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(webhook_proc::tls_trusting(cas))
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Arguments, environment, and the words the error must contain.
type ConfigCase<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, Vec<&'a str>);

#[test]
fn configuration_mistakes_exit_2_naming_flag_and_variable() {
    let dir = tempfile::tempdir().expect("tmp");
    webhook_proc::write_certs(dir.path());
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    let base = |extra: &[&str]| {
        let mut v: Vec<String> = vec![
            "serve".into(),
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let cases: Vec<ConfigCase> = vec![
        (base(&[]), vec![], vec!["--image"]),
        (
            base(&["--image", "i", "--sidecar-mode", "sidecarish"]),
            vec![],
            vec!["--sidecar-mode", "IDENTITY_SIDECAR_WEBHOOK_SIDECAR_MODE"],
        ),
        (
            base(&["--image", "i", "--memory-limit", "lots"]),
            vec![],
            vec!["--memory-limit", "IDENTITY_SIDECAR_WEBHOOK_MEMORY_LIMIT"],
        ),
        (
            base(&["--image", "i"]),
            vec![("AZURE_AUTHORITY_HOST", "http://login.example")],
            vec!["--authority-host", "AZURE_AUTHORITY_HOST", "https"],
        ),
        // No KUBECONFIG and not in a pod.
        (
            base(&["--image", "i"]),
            vec![],
            vec!["KUBECONFIG", "KUBERNETES_SERVICE_HOST"],
        ),
    ];
    for (args, envs, words) in cases {
        let out = Command::new(webhook_proc::binary())
            .args(&args)
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("AZURE_AUTHORITY_HOST")
            .env_remove("AZURE_TENANT_ID")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        for w in words {
            assert!(err.contains(w), "{args:?}: missing {w:?} in {err}");
        }
    }
}
