//! `serve` for legacy clients, over real loopback HTTP against the fake Entra ID: the 2017-09-01
//! `expires_on` format chosen by User-Agent (and its override), and the Cloud Shell form
//! (`POST /msi/token` with `Metadata: true` and `resource=...`).
mod support;

use identity_sidecar::cmd::serve::ServeArgs;
use identity_sidecar::protocol::app_service::app_service_date;
use identity_sidecar::protocol::user_agent::ExpiresOnMode;
use support::fake_entra::FakeEntra;
use support::request::{json_answer as body, urlencode};
use support::sidecar_on_fake_entra::{SidecarOnFakeEntra, other_client_allowed};
use support::*;

const RES: &str = "https://management.azure.com";
const PY_150: &str =
    "azsdk-python-identity/1.5.0 Python/3.11.7 (Linux-6.18.44-fc-v669-x86_64-with-glibc2.36)";
const PY_CURRENT: &str =
    "azsdk-python-identity/1.27.0 Python/3.11.7 (Linux-6.18.44-fc-v669-x86_64-with-glibc2.36)";
const JS_152: &str =
    "azsdk-js-identity/1.5.2 core-rest-pipeline/1.24.0 Node/20.20.2 (Linux 6.18.44-fc-v669; x64)";
const JS_CURRENT: &str =
    "azsdk-js-identity/4.13.1 core-rest-pipeline/1.24.0 Node/20.20.2 (Linux 6.18.44-fc-v669; x64)";

/// A sidecar that also serves [`OTHER_CLIENT_ID`], with `tweak` applied.
async fn start(
    tweak: impl FnOnce(ServeArgs) -> ServeArgs,
) -> (FakeEntra, tempfile::TempDir, Sidecar) {
    SidecarOnFakeEntra::start_with(|a| tweak(other_client_allowed(a)))
        .await
        .into_parts()
}

/// A 2017-09-01 request as the SDKs send it, with `user_agent` (or none).
async fn msi_2017(sc: &Sidecar, user_agent: Option<&str>) -> serde_json::Value {
    let mut r = sc
        .http
        .get(sc.url(&format!(
            "/msi/token?api-version=2017-09-01&resource={}",
            urlencode(RES)
        )))
        .header("secret", IDENTITY_HEADER);
    if let Some(ua) = user_agent {
        r = r.header("User-Agent", ua);
    }
    let (status, b) = body(r.send().await.expect("request")).await;
    assert_eq!(status, 200, "{b}");
    b
}

fn expires_on(b: &serde_json::Value) -> &str {
    b["expires_on"].as_str().expect("expires_on is a string")
}

#[tokio::test]
async fn msi_2017_gives_the_date_only_to_the_releases_that_read_only_the_date() {
    let (entra, _dir, sc) = start(|a| a).await;
    let epoch: u64 = expires_on(&msi_2017(&sc, None).await)
        .parse()
        .expect("no User-Agent: epoch seconds, as before");
    assert!(epoch.abs_diff(now() + 3600) <= 5);
    let date = app_service_date(epoch);
    for (ua, want) in [
        (PY_150.to_string(), date.as_str()),
        (JS_152.to_string(), &date),
        (
            "core-http/1.2.6 Node/v14.15.0 OS/(x64-Linux-5.4.0)".into(),
            &date,
        ),
        // azure-core: application id first, AZURE_HTTP_USER_AGENT last.
        (format!("my-app/2.1 {PY_150} ops-team/7"), &date),
        (format!("my-app {JS_152} extra"), &date),
        (PY_CURRENT.into(), &epoch.to_string()),
        (JS_CURRENT.into(), &epoch.to_string()),
        (
            "azsdk-python-identity/1.6.0 Python/3.8".into(),
            &epoch.to_string(),
        ),
        (
            "azsdk-python-identity/1.4.1 Python/3.8".into(),
            &epoch.to_string(),
        ),
        (
            "azsdk-js-identity/3.0.0-beta.1 core-rest-pipeline/1.9.2 Node/16".into(),
            &epoch.to_string(),
        ),
        ("python-requests/2.34.2".into(), &epoch.to_string()),
        ("Go-http-client/1.1".into(), &epoch.to_string()),
    ] {
        let b = msi_2017(&sc, Some(&ua)).await;
        assert_eq!(expires_on(&b), want, "{ua}");
        assert_eq!(b["resource"], RES);
        assert_eq!(b["token_type"], "Bearer");
    }
    // The 2019-08-01 protocol is epoch for everyone, old user agents included.
    let (status, b) = body(
        sc.http
            .get(sc.url(&format!(
                "/msi/token?api-version=2019-08-01&resource={}",
                urlencode(RES)
            )))
            .header("X-IDENTITY-HEADER", IDENTITY_HEADER)
            .header("User-Agent", PY_150)
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!((status, expires_on(&b)), (200, epoch.to_string().as_str()));
    assert_eq!(entra.count(), 1, "one token, rendered two ways");
}

#[tokio::test]
async fn msi_2017_expires_on_can_be_forced_either_way() {
    let (_entra, _dir, sc) = start(|a| ServeArgs {
        msi_2017_expires_on: Some(ExpiresOnMode::Epoch),
        ..a
    })
    .await;
    let b = msi_2017(&sc, Some(PY_150)).await;
    assert!(expires_on(&b).parse::<u64>().is_ok(), "{b}");

    let (_entra, _dir, sc) = start(|a| ServeArgs {
        msi_2017_expires_on: Some(ExpiresOnMode::Date),
        ..a
    })
    .await;
    let b = msi_2017(&sc, None).await;
    let on = expires_on(&b);
    assert!(on.ends_with(" +00:00") && on.len() == 29, "{on}");
    let b = msi_2017(&sc, Some(PY_CURRENT)).await;
    assert!(expires_on(&b).ends_with("M +00:00"), "{b}");
}

/// A Cloud Shell form POSTed in `kib` chunks of 1 KiB, without Content-Length; returns the status.
async fn chunked_post(sc: &Sidecar, kib: usize) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut req = b"POST /msi/token HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata: true\r\n\
Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\
Connection: close\r\n\r\n"
        .to_vec();
    for _ in 0..kib {
        req.extend_from_slice(b"400\r\n");
        req.extend_from_slice(&[b'a'; 1024]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let mut s = tokio::net::TcpStream::connect(sc.addr)
        .await
        .expect("connect");
    // The answer may come before the whole body is sent; a failed write is fine then.
    let _ = s.write_all(&req).await;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

/// A Cloud Shell form request: `POST path` with `Metadata: true` and a form body.
async fn cloud_shell(sc: &Sidecar, path: &str, form: &str) -> (u16, serde_json::Value) {
    post_form(sc, &[("Metadata", "true")], path, form).await
}

/// `POST path` with a form body (`Content-Type: application/x-www-form-urlencoded`) and `headers`.
async fn post_form(
    sc: &Sidecar,
    headers: &[(&str, &str)],
    path: &str,
    form: &str,
) -> (u16, serde_json::Value) {
    let mut r = sc.http.post(sc.url(path));
    for (name, value) in headers {
        r = r.header(*name, *value);
    }
    let r = r
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form.to_string());
    body(r.send().await.expect("request")).await
}

#[tokio::test]
async fn cloud_shell_form_answers_with_the_imds_body_on_both_paths() {
    let (entra, _dir, sc) = start(|a| a).await;
    let form = format!("resource={}", urlencode(RES));
    for path in ["/msi/token", "/msi/token/"] {
        let (status, b) = cloud_shell(&sc, path, &form).await;
        assert_eq!(status, 200, "{path}: {b}");
        let obj = b.as_object().expect("object");
        assert_eq!(sorted_keys(&b), IMDS_ANSWER_KEYS, "{path}");
        assert!(obj.values().all(serde_json::Value::is_string), "{b}");
        assert_eq!(b["access_token"], "fake-access-token-1");
        assert_eq!(
            (b["resource"].as_str(), b["client_id"].as_str()),
            (Some(RES), Some(CLIENT_ID))
        );
        let on: u64 = expires_on(&b)
            .parse()
            .expect("epoch: Cloud Shell never sent dates");
        assert!(on.abs_diff(now() + 3600) <= 5);
    }
    // JS 1.x sends `;charset=utf-8`-less, msal-node `;charset=utf-8`; Python puts the resource unencoded.
    let (status, _) = body(
        sc.http
            .post(sc.url("/msi/token"))
            .header("Metadata", "true")
            .header(
                "Content-Type",
                "application/x-www-form-urlencoded;charset=utf-8",
            )
            .body(format!("resource={RES}"))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, 200);
    // The identity selectors of the GET forms, under the same allow-list.
    for sel in [
        "client_id",
        "clientid",
        "object_id",
        "msi_res_id",
        "mi_res_id",
    ] {
        let (status, b) = cloud_shell(
            &sc,
            "/msi/token",
            &format!("{form}&{sel}={OTHER_CLIENT_ID}"),
        )
        .await;
        assert_eq!(
            (status, b["client_id"].as_str()),
            (200, Some(OTHER_CLIENT_ID)),
            "{sel}: {b}"
        );
        let (status, b) = cloud_shell(
            &sc,
            "/msi/token",
            &format!("{form}&{sel}=33333333-3333-3333-3333-333333333333"),
        )
        .await;
        assert_eq!(
            (status, b["error_description"].as_str()),
            (400, Some("Identity not found")),
            "{sel}"
        );
    }
    assert_eq!(entra.count(), 2, "one Entra call per identity");
}

#[tokio::test]
async fn cloud_shell_form_works_without_an_identity_header() {
    let (_entra, _dir, sc) = start(|a| ServeArgs {
        identity_header: None,
        ..a
    })
    .await;
    let (status, b) = cloud_shell(&sc, "/msi/token", &format!("resource={}", urlencode(RES))).await;
    assert_eq!(status, 200, "{b}");
}

#[tokio::test]
async fn cloud_shell_form_refusals() {
    let (entra, _dir, sc) = start(|a| ServeArgs {
        allowed_resources: vec![Some("https://management.azure.com".parse().expect("rule"))],
        ..a
    })
    .await;
    let form = format!("resource={}", urlencode(RES));
    let post = || sc.http.post(sc.url("/msi/token"));

    // The SSRF guard, with IMDS's wording.
    let (status, b) = post_form(&sc, &[], "/msi/token", &form).await;
    assert_eq!(
        (status, b["error"].as_str(), b["error_description"].as_str()),
        (
            400,
            Some("invalid_request"),
            Some("Required metadata header not specified")
        )
    );
    assert_eq!(b["statusCode"], 400, "App Service's fields too: {b}");
    for metadata in ["false", ""] {
        let (status, _) = post_form(&sc, &[("Metadata", metadata)], "/msi/token", &form).await;
        assert_eq!(status, 400, "Metadata: {metadata:?}");
    }
    let forwarded = [("Metadata", "true"), ("X-Forwarded-For", "10.0.0.1")];
    let (status, _) = post_form(&sc, &forwarded, "/msi/token", &form).await;
    assert_eq!(status, 400);

    // Not a form.
    for ctype in [
        None,
        Some("application/json"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let mut r = post().header("Metadata", "true").body(form.clone());
        if let Some(c) = ctype {
            r = r.header("Content-Type", c);
        }
        let (status, b) = body(r.send().await.expect("r")).await;
        assert_eq!(status, 415, "{ctype:?}: {b}");
    }

    // The form's content.
    for (bad, why) in [
        ("", "Required query variable 'resource' is missing"),
        (
            "client_id=x",
            "Required query variable 'resource' is missing",
        ),
    ] {
        let (status, b) = cloud_shell(&sc, "/msi/token", bad).await;
        assert_eq!(
            (status, b["error_description"].as_str()),
            (400, Some(why)),
            "{bad:?}"
        );
    }
    let (status, _) = cloud_shell(&sc, "/msi/token", &format!("{form}&{form}")).await;
    assert_eq!(status, 400, "a repeated field");
    let (status, b) =
        cloud_shell(&sc, "/msi/token", "resource=https%3A%2F%2Fvault.azure.net").await;
    assert_eq!(
        (status, b["error"].as_str()),
        (400, Some("invalid_resource"))
    );
    let (status, _) = cloud_shell(
        &sc,
        "/msi/token",
        &format!("{form}&client_id={CLIENT_ID}&object_id={CLIENT_ID}"),
    )
    .await;
    assert_eq!(status, 400, "two selectors");

    // 16 KiB is the limit, declared or streamed.
    let padded = |len: usize| {
        let mut f = format!("{form}&pad=");
        f.push_str(&"a".repeat(len - f.len()));
        f
    };
    let (status, b) = cloud_shell(&sc, "/msi/token", &padded(16 * 1024)).await;
    assert_eq!(status, 200, "exactly 16 KiB: {b}");
    let (status, b) = cloud_shell(&sc, "/msi/token", &padded(16 * 1024 + 1)).await;
    assert_eq!(status, 413, "{b}");
    let status = chunked_post(&sc, 20).await;
    assert_eq!(status, 413, "a streamed body without Content-Length");

    // Everything else on the path stays as it was.
    let r = sc.http.put(sc.url("/msi/token")).send().await.expect("r");
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, POST");
    let (status, _) = body(
        sc.http
            .get(sc.url(&format!(
                "/msi/token?api-version=2019-08-01&resource={}",
                urlencode(RES)
            )))
            .header("Metadata", "true")
            .send()
            .await
            .expect("r"),
    )
    .await;
    assert_eq!(status, 401, "GET still needs the identity header");
    assert_eq!(entra.count(), 1, "only the 16 KiB request reached Entra ID");
}
