//! Unit tests of [`super`]: counter slots, resource labels, and node mode's per-pod views.
use super::*;

#[test]
fn each_endpoint_has_its_own_counter_slot() {
    for (i, e) in Endpoint::ALL.iter().enumerate() {
        assert_eq!(*e as usize, i, "{e:?}");
    }
    let m = Metrics::new();
    m.request(Endpoint::Readyz, 503);
    m.request(Endpoint::NotFound, 418);
    let text = m.render(None, []);
    assert!(
        text.contains(r#"identity_sidecar_requests_total{endpoint="readyz",status="503"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"endpoint="not_found",status="418"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            r#"identity_sidecar_build_info{{version="{}",commit="{BUILD_COMMIT}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
}

fn token<'a>(client_id: &'a str, scope: &'a str, expires_on: u64) -> TokenState<'a> {
    TokenState {
        client_id,
        scope,
        expires_on,
        received_at: expires_on - 3600,
    }
}

#[test]
fn without_an_allow_list_resources_are_aggregated_to_the_first_expiry() {
    let m = Metrics::new();
    let text = m.render(
        None,
        [
            token("c1", "https://vault.azure.net/.default", 5000),
            token("c1", "https://storage.azure.com/.default", 4000),
            token("c2", "https://vault.azure.net/.default", 7000),
        ],
    );
    for want in [
        r#"identity_sidecar_token_expiry_timestamp_seconds{client_id="c1",resource="*"} 4000"#,
        r#"identity_sidecar_token_last_refresh_timestamp_seconds{client_id="c1",resource="*"} 400"#,
        r#"identity_sidecar_token_expiry_timestamp_seconds{client_id="c2",resource="*"} 7000"#,
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
    // A key that left the cache leaves the gauges too.
    let text = m.render(None, [token("c2", "x/.default", 9000)]);
    assert!(!text.contains(r#"client_id="c1""#), "{text}");
}

#[test]
fn with_an_allow_list_the_resource_label_is_the_rule_that_matched() {
    let rules: Vec<crate::config::ResourceRule> = [
        "https://vault.azure.net",
        "https://storage.*",
        "api://x/.default",
    ]
    .iter()
    .map(|r| r.parse().expect("rule"))
    .collect();
    let m = Metrics::with_resource_label(Some(Box::new(move |r: &str| {
        rules.iter().find(|x| x.matches(r)).map(ToString::to_string)
    })));
    assert_eq!(
        m.resource_label("https://vault.azure.net/.default"),
        "https://vault.azure.net"
    );
    assert_eq!(
        m.resource_label("https://storage.azure.com/.default"),
        "https://storage.*"
    );
    assert_eq!(m.resource_label("api://x/.default"), "api://x/.default");
    m.token_fetch("c1", "https://storage.example/.default", false);
    let text = m.render(None, []);
    assert!(
        text.contains(r#"identity_sidecar_token_refreshes_total{client_id="c1",resource="https://storage.*",result="failure"} 1"#),
        "{text}"
    );
}

#[test]
fn a_pods_view_labels_its_identities_and_leaves_with_the_pod() {
    let agent = Metrics::new();
    let rules: Vec<crate::config::ResourceRule> =
        vec!["https://vault.azure.net".parse().expect("rule")];
    let a = agent.for_pod(
        PodLabels::new("apps", "a"),
        Some(Box::new(move |r: &str| {
            rules.iter().find(|x| x.matches(r)).map(ToString::to_string)
        })),
    );
    let b = agent.for_pod(PodLabels::new("apps", "b"), None);
    a.token_fetch("c1", "https://vault.azure.net/.default", true);
    b.token_fetch("c1", "https://vault.azure.net/.default", false);
    a.cache(true);
    b.cache(true);
    a.set_cached_tokens(1);
    b.set_cached_tokens(3);
    let scrape_a = || {
        a.scrape_of(
            None,
            [token("c1", "https://vault.azure.net/.default", 5000)],
        )
    };
    let scrape_b = || {
        b.scrape_of(
            None,
            [token("c1", "https://vault.azure.net/.default", 6000)],
        )
    };
    let text = agent.render_scrapes([scrape_a(), scrape_b()], None);
    for want in [
        r#"identity_sidecar_token_expiry_timestamp_seconds{client_id="c1",resource="https://vault.azure.net",pod_namespace="apps",pod_name="a"} 5000"#,
        r#"identity_sidecar_token_expiry_timestamp_seconds{client_id="c1",resource="*",pod_namespace="apps",pod_name="b"} 6000"#,
        r#"identity_sidecar_token_refreshes_total{client_id="c1",resource="https://vault.azure.net",result="success",pod_namespace="apps",pod_name="a"} 1"#,
        r#"identity_sidecar_token_refreshes_total{client_id="c1",resource="*",result="failure",pod_namespace="apps",pod_name="b"} 1"#,
        r#"identity_sidecar_federated_token_expiry_timestamp_seconds{pod_namespace="apps",pod_name="b"} 0"#,
        "identity_sidecar_cache_hits_total 2",
        r#"identity_sidecar_cached_tokens{pod_namespace="apps",pod_name="b"} 3"#,
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    // Pod B no longer served: its gauges go, its counters stay.
    let text = agent.render_scrapes([scrape_a()], None);
    assert!(!text.contains(r#"pod_name="b"} 6000"#), "{text}");
    assert!(
        !text.contains(r#"cached_tokens{pod_namespace="apps",pod_name="b"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"cached_tokens{pod_namespace="apps",pod_name="a"} 1"#),
        "{text}"
    );
    assert!(
        !text.contains("\nidentity_sidecar_cached_tokens "),
        "{text}"
    );
    assert!(
        !text.contains(
            r#"federated_token_expiry_timestamp_seconds{pod_namespace="apps",pod_name="b"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"result="failure",pod_namespace="apps",pod_name="b"} 1"#),
        "{text}"
    );
    // A sidecar's federated series has no labels at all.
    let sidecar = Metrics::new().render(None, []);
    assert!(
        sidecar.contains("\nidentity_sidecar_federated_token_expiry_timestamp_seconds 0\n"),
        "{sidecar}"
    );
}
