//! The webhook's node mode (`identity-sidecar.io/mode: node`), through the real
//! `identity-sidecar-webhook` process over HTTPS against the fake Kubernetes API: the pod gets the
//! federated token as a volume mounted into no container and, before every other init container,
//! an unprivileged wait container that accepts only the node agent's answer for this pod; no
//! sidecar and no app variables; a second call changes nothing; the identity is checked at
//! admission with the sidecar's rules; Azure Workload Identity's token is kept out of the apps.
//! Each patched pod is also applied with Python's jsonpatch and validated with
//! kubernetes-validate --strict.
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
use webhook_proc::{Webhook, patch_of};

const NS: &str = "shop";
const CLIENT: &str = "11111111-1111-1111-1111-111111111111";
const WAIT: &str = "identity-sidecar-wait";
const TOKEN_VOLUME: &str = "identity-sidecar-token";

async fn setup() -> (FakeKube, Webhook) {
    let kube = FakeKube::start().await;
    kube.add_service_account(NS, "app", &[("azure.workload.identity/client-id", CLIENT)]);
    kube.add_service_account(NS, "no-id", &[]);
    let wh = Webhook::start_against(&kube, &[]);
    (kube, wh)
}

/// A Deployment's pod asking for node mode by label, with an init container of its own.
fn node_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "legacy-6d5f-",
            "labels": {"identity-sidecar.io/inject": "true", "identity-sidecar.io/mode": "node"},
        },
        "spec": {
            "serviceAccountName": "app",
            "initContainers": [{"name": "migrate", "image": "app:1", "command": ["migrate"]}],
            "containers": [{"name": "app", "image": "app:1",
                "env": [{"name": "LOG_LEVEL", "value": "info"}]}],
        },
    })
}

fn names(pod: &Value, list: &str) -> Vec<String> {
    pod["spec"][list]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|c| c["name"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_mode_adds_an_unmounted_token_and_a_wait_container_first_and_nothing_else() {
    let (_kube, wh) = setup().await;
    let pod = node_pod();
    let (m, ops) = wh.mutate(&pod, NS).await;
    assert!(!ops.is_empty(), "no patch");

    // No sidecar, the wait container before the pod's own init container.
    assert_eq!(names(&m, "initContainers"), [WAIT, "migrate"]);
    assert_eq!(names(&m, "containers"), ["app"]);

    // The token: projected for Entra ID, in no container.
    let vol = m["spec"]["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == TOKEN_VOLUME))
        .expect("token volume");
    let sat = &vol["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(sat["audience"], "api://AzureADTokenExchange");
    assert_eq!(sat["expirationSeconds"], 3600);
    for list in ["initContainers", "containers"] {
        for c in m["spec"][list].as_array().expect("list") {
            assert!(
                c.get("volumeMounts").is_none(),
                "{} mounts something: {c}",
                c["name"]
            );
        }
    }

    // The app gets no variables: IMDS is where it always is. Its own env is untouched.
    assert_eq!(
        m["spec"]["containers"][0]["env"],
        json!([{"name": "LOG_LEVEL", "value": "info"}])
    );

    // The wait container: the agent's answer for this pod only, and no privileges.
    let wait = &m["spec"]["initContainers"][0];
    assert_eq!(
        wait["args"],
        json!(["probe", "--node-agent", "--wait", "120"])
    );
    assert_eq!(
        wait["env"],
        json!([{"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}])
    );
    assert!(wait.get("restartPolicy").is_none(), "not a sidecar");
    let sc = &wait["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
    // The sidecar's image (the webhook's --image), whose entrypoint is identity-sidecar.
    assert_eq!(wait["image"], webhook_proc::IMAGE);

    // A second call (reinvocation) changes nothing.
    let again = wh.review(&m, NS).await;
    assert_eq!(again["allowed"], true);
    assert!(patch_of(&again).is_empty(), "second call patched: {again}");

    // The annotation selects node mode too.
    let mut by_annotation = node_pod();
    by_annotation["metadata"]["labels"]
        .as_object_mut()
        .expect("labels")
        .remove("identity-sidecar.io/mode");
    by_annotation["metadata"]["annotations"] = json!({"identity-sidecar.io/mode": "node"});
    let (m2, _) = wh.mutate(&by_annotation, NS).await;
    assert_eq!(names(&m2, "initContainers"), [WAIT, "migrate"]);
    assert_eq!(names(&m2, "containers"), ["app"]);

    validate(&[("node-mode", &pod, &ops, &m)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_mode_refuses_what_the_agent_could_not_serve_with_the_fix() {
    let (_kube, wh) = setup().await;

    // No client id anywhere: the sidecar's words, naming the ServiceAccount and the annotations.
    let mut pod = node_pod();
    pod["spec"]["serviceAccountName"] = json!("no-id");
    let r = wh.review(&pod, NS).await;
    assert_eq!(r["allowed"], false, "{r}");
    let msg = r["status"]["message"].as_str().expect("message");
    assert!(
        msg.contains("no client id")
            && msg.contains("azure.workload.identity/client-id")
            && msg.contains("shop/no-id")
            && msg.contains("identity-sidecar.io/client-id"),
        "{msg}"
    );

    // hostNetwork: the agent never serves it, so the webhook says so at once.
    let mut pod = node_pod();
    pod["spec"]["hostNetwork"] = json!(true);
    let r = wh.review(&pod, NS).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert!(
        r["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("hostNetwork")),
        "{r}"
    );

    // A malformed client id override.
    let mut pod = node_pod();
    pod["metadata"]["annotations"] = json!({"identity-sidecar.io/client-id": "not-a-guid"});
    let r = wh.review(&pod, NS).await;
    assert_eq!(r["allowed"], false, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_mode_keeps_azure_workload_identitys_token_out_of_the_apps() {
    let (_kube, wh) = setup().await;
    // What the azwi webhook leaves when it ran first: its label, its token volume, its variable
    // and mount in the app container.
    let mut pod = node_pod();
    pod["metadata"]["labels"]["azure.workload.identity/use"] = json!("true");
    pod["spec"]["volumes"] = json!([{"name": "azure-identity-token", "projected": {"sources": [
        {"serviceAccountToken": {"audience": "api://AzureADTokenExchange",
            "expirationSeconds": 3600, "path": "azure-identity-token"}}]}}]);
    pod["spec"]["containers"][0]["env"] = json!([
        {"name": "LOG_LEVEL", "value": "info"},
        {"name": "AZURE_FEDERATED_TOKEN_FILE",
            "value": "/var/run/secrets/azure/tokens/azure-identity-token"},
    ]);
    pod["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "azure-identity-token",
        "mountPath": "/var/run/secrets/azure/tokens", "readOnly": true}]);

    let (m, ops) = wh.mutate(&pod, NS).await;
    let app = &m["spec"]["containers"][0];
    assert_eq!(app["env"], json!([{"name": "LOG_LEVEL", "value": "info"}]));
    assert_eq!(app["volumeMounts"], json!([]));
    // azwi, reinvoked after us, skips every container.
    let skip = m["metadata"]["annotations"]["azure.workload.identity/skip-containers"]
        .as_str()
        .expect("skip annotation");
    let mut skipped: Vec<&str> = skip.split(';').collect();
    skipped.sort_unstable();
    assert_eq!(skipped, ["app", "identity-sidecar-wait", "migrate"]);

    let again = wh.review(&m, NS).await;
    assert!(patch_of(&again).is_empty(), "second call patched: {again}");
    validate(&[("node-mode-azwi", &pod, &ops, &m)]);
}

/// Python's jsonpatch applies each patch to the same result, and kubernetes-validate --strict
/// accepts it (1.29 and the newest schema).
fn validate(cases: &[(&str, &Value, &Vec<Value>, &Value)]) {
    let dir = tempfile::tempdir().expect("tmp");
    for (name, pod, patch, expected) in cases {
        write_patch_case(dir.path(), name, pod, patch, expected);
    }
    assert_patches_valid(dir.path(), cases.len());
}
