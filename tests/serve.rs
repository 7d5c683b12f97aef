//! `serve` over real loopback HTTP against the fake Entra ID: response shapes of every flavor,
//! selectors, error mappings, single flight, refresh ahead, outages, and the token file's life.
mod support;

use std::time::Duration;

use identity_sidecar::cmd::serve::ServeArgs;

use support::fake_entra::{FakeEntra, Reply, entra_error};
use support::request::{json_answer as body, urlencode};
use support::sidecar_on_fake_entra::{SidecarOnFakeEntra, other_client_allowed};
use support::*;

const RES: &str = "https://management.azure.com";

fn q(resource: &str) -> String {
    format!("api-version=2018-02-01&resource={}", urlencode(resource))
}

async fn setup() -> (FakeEntra, tempfile::TempDir, Sidecar) {
    SidecarOnFakeEntra::start().await.into_parts()
}

#[tokio::test]
async fn imds_answers_with_the_real_imds_field_set_all_strings() {
    let (entra, _dir, sc) = setup().await;
    let r = sc.imds(&q(RES)).await;
    assert_eq!(
        r.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let (status, b) = body(r).await;
    assert_eq!(status, 200);
    let obj = b.as_object().expect("object");
    assert_eq!(sorted_keys(&b), IMDS_ANSWER_KEYS);
    assert!(
        obj.values().all(serde_json::Value::is_string),
        "every value is a string: {b}"
    );
    assert_eq!(b["access_token"], "fake-access-token-1");
    assert_eq!(b["refresh_token"], "");
    assert_eq!(b["resource"], RES);
    assert_eq!(b["token_type"], "Bearer");
    assert_eq!(b["client_id"], CLIENT_ID);
    let expires_in: u64 = b["expires_in"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("number in a string");
    let expires_on: u64 = b["expires_on"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("number in a string");
    assert!((3595..=3600).contains(&expires_in), "{expires_in}");
    assert!(expires_on.abs_diff(now() + 3600) <= 2);
    assert_eq!(entra.count(), 1);
}

#[tokio::test]
async fn expires_in_counts_down_from_now_not_from_issue() {
    let (_entra, _dir, sc) = setup().await;
    let (_, first) = body(sc.imds(&q(RES)).await).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_, second) = body(sc.imds(&q(RES)).await).await;
    let n = |v: &serde_json::Value| {
        v["expires_in"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .expect("n")
    };
    assert_eq!(first["expires_on"], second["expires_on"]);
    assert!(n(&first) - n(&second) >= 2, "{first} vs {second}");
}

#[tokio::test]
async fn entra_gets_exactly_the_sdk_form_with_the_trimmed_assertion() {
    let (entra, dir, sc) = setup().await;
    let r = sc.imds(&q("https://management.core.windows.net/")).await;
    assert_eq!(r.status(), 200);
    let rec = &entra.requests()[0];
    assert_eq!(rec.path, format!("/{TENANT_ID}/oauth2/v2.0/token"));
    let mut names: Vec<&str> = rec.form.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "client_assertion",
            "client_assertion_type",
            "client_id",
            "grant_type",
            "scope"
        ]
    );
    assert_eq!(rec.field("grant_type"), Some("client_credentials"));
    assert_eq!(
        rec.field("client_assertion_type"),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    assert_eq!(rec.field("client_id"), Some(CLIENT_ID));
    // No trimming of the resource: the widely used `...net//.default` scope.
    assert_eq!(
        rec.field("scope"),
        Some("https://management.core.windows.net//.default")
    );
    let on_disk = std::fs::read_to_string(dir.path().join("token")).expect("token");
    assert!(on_disk.ends_with('\n'));
    assert_eq!(rec.field("client_assertion"), Some(on_disk.trim()));
}

#[tokio::test]
async fn imds_paths_as_the_sdks_send_them() {
    let (entra, _dir, sc) = setup().await;
    for path in [
        "/metadata/identity/oauth2/token/",
        "//metadata/identity/oauth2/token",
        "/METADATA/identity/oauth2/token",
    ] {
        let r = sc
            .http
            .get(sc.url(&format!("{path}?{}", q(RES))))
            .header("Metadata", "true")
            .send()
            .await
            .expect("req");
        assert_eq!(r.status(), 200, "{path}");
    }
    // Python sends the resource unencoded.
    let r = sc
        .imds("api-version=2018-02-01&resource=https://vault.azure.net")
        .await;
    let (status, b) = body(r).await;
    assert_eq!(
        (status, b["resource"].as_str()),
        (200, Some("https://vault.azure.net"))
    );
    assert_eq!(entra.count(), 2, "one call per scope");
}

#[tokio::test]
async fn imds_refuses_like_imds() {
    let (entra, _dir, sc) = setup().await;
    // A probe without the Metadata header: fast 400 with IMDS's wording, never a token.
    let r = sc
        .http
        .get(sc.url(&format!("/metadata/identity/oauth2/token?{}", q(RES))))
        .send()
        .await
        .expect("req");
    let (status, b) = body(r).await;
    assert_eq!(status, 400);
    assert_eq!(
        b,
        serde_json::json!({"error":"invalid_request","error_description":"Required metadata header not specified"})
    );
    let r = sc
        .http
        .get(sc.url("/metadata/identity/oauth2/token"))
        .header("Metadata", "false")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 400);

    let r = sc
        .http
        .get(sc.url(&format!("/metadata/identity/oauth2/token?{}", q(RES))))
        .header("Metadata", "true")
        .header("X-Forwarded-For", "10.0.0.1")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 400);

    let (status, b) = body(sc.imds("api-version=2018-02-01").await).await;
    assert_eq!(status, 400);
    assert_eq!(
        b["error_description"],
        "Required query variable 'resource' is missing"
    );
    let (status, b) = body(sc.imds(&format!("resource={RES}")).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        b["error_description"],
        "Required query variable 'api-version' is missing"
    );
    let (status, _) = body(
        sc.imds(&format!("api-version=2017-09-01&resource={RES}"))
            .await,
    )
    .await;
    assert_eq!(status, 400);
    let (status, b) = body(sc.imds(&format!("{}&resource=x", q(RES))).await).await;
    assert_eq!(status, 400, "{b}");

    let r = sc
        .http
        .post(sc.url(&format!("/metadata/identity/oauth2/token?{}", q(RES))))
        .header("Metadata", "true")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET");
    assert_eq!(entra.count(), 0, "no refused request reaches Entra ID");
}

#[tokio::test]
async fn unknown_paths_and_other_imds_paths_get_json_404() {
    let (_entra, _dir, sc) = setup().await;
    for path in [
        "/nope",
        "/metadata/instance?api-version=2021-02-01",
        "/metadata/instance/compute",
    ] {
        let r = sc
            .http
            .get(sc.url(path))
            .header("Metadata", "true")
            .send()
            .await
            .expect("req");
        let (status, b) = body(r).await;
        assert_eq!(status, 404, "{path}");
        assert!(b["error"].is_string() && b["error_description"].is_string());
    }
}

#[tokio::test]
async fn imds_identity_selectors() {
    let (entra, _dir, sc) = SidecarOnFakeEntra::start_with(other_client_allowed)
        .await
        .into_parts();
    for sel in [
        "client_id",
        "object_id",
        "msi_res_id",
        "mi_res_id",
        "principal_id",
        "resource_id",
    ] {
        let (status, b) = body(
            sc.imds(&format!(
                "{}&{sel}={}",
                q(RES),
                OTHER_CLIENT_ID.to_uppercase()
            ))
            .await,
        )
        .await;
        assert_eq!(
            (status, b["client_id"].as_str()),
            (200, Some(OTHER_CLIENT_ID)),
            "{sel}"
        );
        let (status, b) = body(
            sc.imds(&format!(
                "{}&{sel}=33333333-3333-3333-3333-333333333333",
                q(RES)
            ))
            .await,
        )
        .await;
        assert_eq!(status, 400, "{sel}");
        assert_eq!(b["error_description"], "Identity not found");
    }
    let (status, _) = body(
        sc.imds(&format!(
            "{}&msi_res_id=/subscriptions/s/resourcegroups/rg/providers/x",
            q(RES)
        ))
        .await,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = body(
        sc.imds(&format!(
            "{}&client_id={CLIENT_ID}&object_id={CLIENT_ID}",
            q(RES)
        ))
        .await,
    )
    .await;
    assert_eq!(status, 400, "two selectors");
    let ids: Vec<String> = entra
        .requests()
        .iter()
        .filter_map(|r| r.field("client_id").map(String::from))
        .collect();
    assert_eq!(
        ids,
        [OTHER_CLIENT_ID],
        "one exchange, for the selected identity"
    );
}

#[tokio::test]
async fn app_service_2019_shape_header_and_selectors() {
    let (entra, _dir, sc) = setup().await;
    let qs = format!("api-version=2019-08-01&resource={}", urlencode(RES));
    let (status, b) = body(
        sc.app_service(&qs, ("X-IDENTITY-HEADER", IDENTITY_HEADER))
            .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        sorted_keys(&b),
        [
            "access_token",
            "client_id",
            "expires_on",
            "resource",
            "token_type"
        ]
    );
    assert!(
        b.as_object()
            .expect("obj")
            .values()
            .all(serde_json::Value::is_string)
    );
    assert_eq!(
        (b["resource"].as_str(), b["client_id"].as_str()),
        (Some(RES), Some(CLIENT_ID))
    );
    for sel in ["client_id", "object_id", "mi_res_id", "principal_id"] {
        let (status, _) = body(
            sc.app_service(
                &format!("{qs}&{sel}={CLIENT_ID}"),
                ("X-IDENTITY-HEADER", IDENTITY_HEADER),
            )
            .await,
        )
        .await;
        assert_eq!(status, 200, "{sel}");
        let (status, b) = body(
            sc.app_service(
                &format!("{qs}&{sel}={OTHER_CLIENT_ID}"),
                ("X-IDENTITY-HEADER", IDENTITY_HEADER),
            )
            .await,
        )
        .await;
        assert_eq!(
            (status, b["error_description"].as_str()),
            (400, Some("Identity not found")),
            "{sel}"
        );
    }
    let (status, b) = body(sc.app_service(&qs, ("X-IDENTITY-HEADER", "wrong")).await).await;
    assert_eq!(status, 401);
    assert_eq!(b["statusCode"], 401);
    assert!(b["message"].is_string() && b["error"].is_string());
    let r = sc
        .http
        .get(sc.url(&format!("/msi/token?{qs}")))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 401);
    // The 2017 header does not unlock the 2019 protocol.
    let (status, _) = body(sc.app_service(&qs, ("secret", IDENTITY_HEADER)).await).await;
    assert_eq!(status, 401);
    assert_eq!(entra.count(), 1);
}

#[tokio::test]
async fn app_service_2017_uses_secret_clientid_and_epoch_string() {
    let (_entra, _dir, sc) = setup().await;
    let qs = format!(
        "api-version=2017-09-01&resource={}&clientid={CLIENT_ID}",
        urlencode(RES)
    );
    let (status, b) = body(sc.app_service(&qs, ("secret", IDENTITY_HEADER)).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        sorted_keys(&b),
        ["access_token", "expires_on", "resource", "token_type"]
    );
    let on: u64 = b["expires_on"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("epoch string");
    assert!(on > now());
    let (status, _) = body(
        sc.app_service(&qs, ("X-IDENTITY-HEADER", IDENTITY_HEADER))
            .await,
    )
    .await;
    assert_eq!(status, 401, "2017 wants the `secret` header");
    let (status, b) = body(
        sc.app_service(
            &format!("api-version=2017-09-01&resource={RES}&clientid={OTHER_CLIENT_ID}"),
            ("secret", IDENTITY_HEADER),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, b["error_description"].as_str()),
        (400, Some("Identity not found"))
    );
}

#[tokio::test]
async fn app_service_refuses_everything_without_an_identity_header() {
    let (entra, _dir, sc) = SidecarOnFakeEntra::start_with(|a| ServeArgs {
        identity_header: None,
        ..a
    })
    .await
    .into_parts();
    let (status, b) = body(
        sc.app_service(
            &format!("api-version=2019-08-01&resource={RES}"),
            ("X-IDENTITY-HEADER", ""),
        )
        .await,
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        b["message"]
            .as_str()
            .is_some_and(|m| m.contains("IDENTITY_HEADER")),
        "{b}"
    );
    assert_eq!(entra.count(), 0);
}

#[tokio::test]
async fn entra_refusal_reaches_the_app_with_its_aadsts_code_and_is_not_cached() {
    let (entra, _dir, sc) = setup().await;
    entra.push(Reply::no_matching_federated_credential());
    let (status, b) = body(sc.imds(&q(RES)).await).await;
    assert_eq!(status, 400);
    assert_eq!(b["error"], "invalid_request");
    assert!(
        b["error_description"]
            .as_str()
            .is_some_and(|d| d.starts_with("AADSTS70021")),
        "{b}"
    );
    assert_eq!(entra.count(), 1, "no retry on a 4xx");
    // Fixed in Entra: the next request goes through at once.
    let (status, _) = body(sc.imds(&q(RES)).await).await;
    assert_eq!(status, 200);
    assert_eq!(entra.count(), 2);

    entra.push(Reply::entra_error(
        401,
        "invalid_client",
        700024,
        "Client assertion is not within its valid time range.",
    ));
    let (status, b) = body(sc.imds(&q("https://vault.azure.net")).await).await;
    assert_eq!((status, b["error"].as_str()), (400, Some("invalid_client")));
}

#[tokio::test]
async fn entra_outage_on_a_cold_key_is_503_with_retry_after() {
    let (entra, _dir, sc) = setup().await;
    entra.set_default(Reply::Status {
        status: 503,
        body: "{}".into(),
        retry_after: None,
    });
    let started = std::time::Instant::now();
    let r = sc.imds(&q(RES)).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let (_, b) = body(r).await;
    assert_eq!(b["error"], "temporarily_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "bounded by the Entra budget (4s here)"
    );
    assert!(
        (2..=4).contains(&entra.count()),
        "retried, boundedly: {}",
        entra.count()
    );
}

#[tokio::test]
async fn entra_throttling_becomes_429_with_retry_after_and_is_honoured() {
    let (entra, _dir, sc) = setup().await;
    entra.set_default(Reply::Status {
        status: 429,
        body: entra_error("temporarily_unavailable", 50196, "throttled"),
        retry_after: Some(30),
    });
    let r = sc.imds(&q(RES)).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("retry-after");
    assert!((25..=30).contains(&wait), "{wait}");
    let (_, b) = body(r).await;
    assert!(b["error"].is_string() && b["error_description"].is_string());
    assert_eq!(
        entra.count(),
        1,
        "Retry-After 30s exceeds the budget: no retry"
    );
    // Within Retry-After the sidecar waits as told: no new call to Entra.
    let r = sc.imds(&q(RES)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(entra.count(), 1);
}

#[tokio::test]
async fn retries_a_transient_failure_within_one_request() {
    let (entra, _dir, sc) = setup().await;
    entra.push(Reply::Status {
        status: 500,
        body: "oops".into(),
        retry_after: None,
    });
    entra.push(Reply::Status {
        status: 429,
        body: "{}".into(),
        retry_after: Some(1),
    });
    let (status, _) = body(sc.imds(&q(RES)).await).await;
    assert_eq!(status, 200);
    assert_eq!(entra.count(), 3);
    let gaps: Vec<Duration> = entra
        .requests()
        .windows(2)
        .map(|w| w[1].at - w[0].at)
        .collect();
    assert!(
        gaps[1] >= Duration::from_millis(950),
        "honours Retry-After: {gaps:?}"
    );
}

#[tokio::test]
async fn two_hundred_concurrent_first_requests_make_one_entra_call() {
    let (entra, _dir, sc) = setup().await;
    entra.push(Reply::Delay(Duration::from_millis(300)));
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let http = sc.http.clone();
        let url = sc.url(&format!("/metadata/identity/oauth2/token?{}", q(RES)));
        tasks.push(tokio::spawn(async move {
            http.get(url)
                .header("Metadata", "true")
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join").expect("response"), 200);
    }
    assert_eq!(entra.count(), 1);
    let m = sc.metrics().await;
    assert!(
        m.contains("identity_sidecar_entra_requests_total{outcome=\"success\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn refreshes_in_the_background_so_no_caller_waits() {
    let (entra, _dir, sc) = setup().await;
    entra.set_default(Reply::Token { lifetime: 4 });
    let (_, first) = body(sc.imds(&q(RES)).await).await;
    // From now on every Entra call is slow; callers must never see that.
    entra.set_default(Reply::Delay(Duration::from_millis(1200)));
    let mut seen = std::collections::BTreeSet::new();
    let end = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < end {
        let started = std::time::Instant::now();
        let (status, b) = body(sc.imds(&q(RES)).await).await;
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "a caller waited on Entra: {:?}",
            started.elapsed()
        );
        seen.insert(b["access_token"].as_str().unwrap_or_default().to_string());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.len() >= 2,
        "token was refreshed ahead: {seen:?} (first {})",
        first["access_token"]
    );
    let m = sc.metrics().await;
    assert!(
        m.contains("identity_sidecar_cache_misses_total 1\n"),
        "only the first request missed: {m}"
    );
}

#[tokio::test]
async fn entra_outage_with_a_warm_cache_keeps_serving_and_backs_off() {
    let (entra, _dir, sc) = setup().await;
    entra.set_default(Reply::Token { lifetime: 8 });
    assert_eq!(sc.imds(&q(RES)).await.status(), 200);
    entra.set_default(Reply::Status {
        status: 503,
        body: "{}".into(),
        retry_after: None,
    });
    let end = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < end {
        let (status, b) = body(sc.imds(&q(RES)).await).await;
        assert_eq!(status, 200, "served from cache during the outage: {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let attempts = entra.count() - 1;
    // Refresh from 4 s on; each renewal tries up to 4 times within its budget, then backs off.
    assert!(
        (1..=12).contains(&attempts),
        "no hammering: {attempts} attempts in 2 s of outage"
    );
    entra.set_default(Reply::Token { lifetime: 8 });
    assert!(
        eventually(Duration::from_secs(5), || async {
            sc.metrics()
                .await
                .contains("background_refreshes_total{outcome=\"success\"}")
        })
        .await
    );
}

#[tokio::test]
async fn follows_kubelet_symlink_swaps() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let a = federated_jwt("system:serviceaccount:ns:a", 3600);
    kubelet_write(dir.path(), &a);
    let sc = Sidecar::start(args(&entra.authority(), &dir.path().join("token"))).await;
    assert_eq!(sc.imds(&q(RES)).await.status(), 200);
    let b = federated_jwt("system:serviceaccount:ns:b", 3600);
    kubelet_write(dir.path(), &b);
    let swapped = sc
        .readyz_becomes(Duration::from_secs(3), |_, body| {
            body.contains("system:serviceaccount:ns:b")
        })
        .await;
    assert!(swapped, "the ..data swap was seen");
    assert_eq!(sc.imds(&q("https://vault.azure.net")).await.status(), 200);
    let assertions: Vec<String> = entra
        .requests()
        .iter()
        .filter_map(|r| r.field("client_assertion").map(String::from))
        .collect();
    assert_eq!(assertions, [a, b]);
}

#[tokio::test]
async fn a_late_file_and_a_recreated_file_are_picked_up() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("token");
    let sc = Sidecar::start(args(&entra.authority(), &path)).await;
    let r = sc.get("/readyz").await;
    assert_eq!(r.status(), 503);
    assert!(
        r.text()
            .await
            .unwrap_or_default()
            .contains("does not exist yet")
    );
    let r = sc.imds(&q(RES)).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(entra.count(), 0);

    std::fs::write(&path, federated_jwt("system:serviceaccount:ns:late", 3600)).expect("write");
    assert!(
        sc.readyz_becomes(Duration::from_secs(3), |status, _| status == 200)
            .await
    );
    assert_eq!(sc.imds(&q(RES)).await.status(), 200);

    std::fs::remove_file(&path).expect("rm");
    assert!(
        sc.readyz_becomes(Duration::from_secs(3), |status, _| status == 503)
            .await
    );
    std::fs::write(&path, federated_jwt("system:serviceaccount:ns:again", 3600)).expect("write");
    assert!(
        sc.readyz_becomes(Duration::from_secs(3), |_, body| body.contains("ns:again"))
            .await
    );
}

#[tokio::test]
async fn expired_garbage_and_truncated_files_make_it_unready_with_a_reason() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("token");
    std::fs::write(&path, federated_jwt("system:serviceaccount:ns:x", -30)).expect("write");
    let sc = Sidecar::start(args(&entra.authority(), &path)).await;
    let readyz = || async { body(sc.get("/readyz").await).await };
    let (status, b) = readyz().await;
    assert_eq!(status, 503);
    assert!(
        b["reason"].as_str().is_some_and(|r| r.contains("expired")),
        "{b}"
    );
    let (status, b) = body(sc.imds(&q(RES)).await).await;
    assert_eq!(status, 503, "never presents an expired assertion: {b}");
    assert_eq!(entra.count(), 0);

    for (content, why) in [
        ("not a jwt at all", "does not hold a JWT"),
        ("", "is empty"),
        ("eyJhbGciOiJSUzI1NiJ9.eyJpc3Mi", "does not hold a JWT"),
    ] {
        std::fs::write(&path, content).expect("write");
        assert!(
            eventually(Duration::from_secs(3), || async {
                readyz().await.1["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains(why))
            })
            .await,
            "{why}"
        );
    }
    std::fs::write(&path, federated_jwt("system:serviceaccount:ns:x", 3600)).expect("write");
    assert!(eventually(Duration::from_secs(3), || async { readyz().await.0 == 200 }).await);
    assert_eq!(sc.imds(&q(RES)).await.status(), 200);
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let (_entra, _dir, sc) = setup().await;
    let (status, b) = body(sc.get("/healthz").await).await;
    assert_eq!((status, b["status"].as_str()), (200, Some("ok")));
    let (status, b) = body(sc.get("/readyz").await).await;
    assert_eq!(status, 200);
    assert_eq!(
        b["federated_token"]["sub"],
        "system:serviceaccount:default:app"
    );
    assert_eq!(b["federated_token"]["aud"][0], "api://AzureADTokenExchange");
    sc.imds(&q(RES)).await;
    sc.imds(&q(RES)).await;
    sc.http
        .get(sc.url("/metadata/identity/oauth2/token"))
        .send()
        .await
        .expect("probe");
    let r = sc
        .http
        .get(sc.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/plain")
    );
    let m = r.text().await.expect("text");
    for needle in [
        "identity_sidecar_requests_total{endpoint=\"imds\",status=\"200\"} 2",
        "identity_sidecar_requests_total{endpoint=\"imds\",status=\"400\"} 1",
        "identity_sidecar_cache_hits_total 1",
        "identity_sidecar_cache_misses_total 1",
        "identity_sidecar_entra_requests_total{outcome=\"success\"} 1",
        "identity_sidecar_entra_request_duration_seconds_count 1",
        "identity_sidecar_federated_token_expiry_seconds 3",
    ] {
        assert!(m.contains(needle), "missing {needle:?} in\n{m}");
    }
}

#[tokio::test]
async fn allowed_resources_refuse_before_calling_entra() {
    let (entra, _dir, sc) = SidecarOnFakeEntra::start_with(|a| ServeArgs {
        allowed_resources: vec![
            "https://vault.azure.net".parse().ok(),
            "https://storage.azure.com/*".parse().ok(),
        ],
        ..a
    })
    .await
    .into_parts();
    let (status, b) = body(sc.imds(&q(RES)).await).await;
    assert_eq!(
        (status, b["error"].as_str()),
        (400, Some("invalid_resource"))
    );
    assert!(
        b["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("--allowed-resources"))
    );
    assert_eq!(sc.imds(&q("https://vault.azure.net")).await.status(), 200);
    assert_eq!(
        sc.imds(&q("https://storage.azure.com/account"))
            .await
            .status(),
        200
    );
    assert_eq!(entra.count(), 2);
}
