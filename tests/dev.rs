//! `identity-sidecar dev`: the whole chain on loopback. Starts the real binary, reads the env it
//! prints, and runs the real SDKs' ManagedIdentityCredential (Python and Node, IMDS and App
//! Service) against it while the federated token rotates; every token verifies with the mock's
//! JWKS. Ctrl-C cleans up.
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::sdk::{self, Release, matrix_client, node_mi, python_mi};
use support::*;

struct Dev {
    proc: Process,
    env: HashMap<String, String>,
    authority: String,
    tenant: String,
    token_file: String,
    ca: String,
}

fn start_dev(extra: &[&str]) -> Dev {
    let mut args = vec![
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--federated-token-lifetime",
        "6s",
    ];
    args.extend_from_slice(extra);
    let proc = Process::spawn(&args, &[]);
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let out = proc.logs();
        if out.contains("# try: curl") {
            let mut env = HashMap::new();
            for line in out.lines() {
                let l = line.trim_start_matches("#   ");
                if let Some((k, v)) = l.strip_prefix("export ").and_then(|kv| kv.split_once('=')) {
                    env.insert(k.to_string(), v.to_string());
                }
            }
            let mock_line = out
                .lines()
                .find(|l| l.starts_with("# mock Entra ID "))
                .expect("mock line");
            let authority = mock_line
                .split_whitespace()
                .nth(4)
                .expect("authority")
                .to_string();
            let tenant = mock_line
                .split("(tenant ")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .expect("tenant")
                .to_string();
            let token_file = mock_line
                .split("federated token ")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .expect("file")
                .to_string();
            let ca = env
                .get("REQUESTS_CA_BUNDLE")
                .cloned()
                .expect("CA path printed");
            return Dev {
                proc,
                env,
                authority,
                tenant,
                token_file,
                ca,
            };
        }
        assert!(Instant::now() < end, "dev did not become ready:\n{out}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn https_client(ca: &str) -> reqwest::blocking::Client {
    let pem = std::fs::read(ca).expect("ca");
    let cert = reqwest::Certificate::from_pem(&pem).expect("pem");
    reqwest::blocking::Client::builder()
        .tls_certs_merge([cert])
        .build()
        .expect("client")
}

/// Verifies an access token with the mock's JWKS and returns its claims.
fn verify(dev: &Dev, token: &str, resource: &str) -> serde_json::Value {
    let jwks: jsonwebtoken::jwk::JwkSet = https_client(&dev.ca)
        .get(format!(
            "{}{}/discovery/v2.0/keys",
            dev.authority, dev.tenant
        ))
        .send()
        .expect("jwks")
        .json()
        .expect("jwks json");
    let header = jsonwebtoken::decode_header(token).expect("a JWT");
    let kid = header.kid.expect("kid");
    let jwk = jwks.find(&kid).expect("key in JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("key");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[resource]);
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
        .expect("token verifies with the mock's JWKS")
        .claims
}

#[test]
fn dev_serves_verifiable_tokens_and_cleans_up_on_ctrl_c() {
    let envfile = tempfile::NamedTempFile::new().expect("tmp");
    let envpath = envfile.path().to_str().expect("utf8").to_string();
    let dev = start_dev(&["--env-file", &envpath]);
    for k in [
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        "MSI_ENDPOINT",
        "MSI_SECRET",
    ] {
        assert!(dev.env.contains_key(k), "{k} printed");
    }
    let out = dev.proc.logs();
    assert!(
        !out.contains("AZURE_FEDERATED_TOKEN_FILE") && !out.contains("AZURE_AUTHORITY_HOST"),
        "never handed to the app:\n{out}"
    );
    let ms: u64 = out
        .split("ready in ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("ready ms");
    assert!(ms < 1000, "ready in {ms} ms");
    let file = std::fs::read_to_string(&envpath).expect("env file");
    assert!(
        file.contains("IDENTITY_ENDPOINT=http://127.0.0.1:")
            && file
                .lines()
                .all(|l| l.contains('=') && !l.starts_with("export"))
    );

    // The README's curl, as a blocking HTTP call.
    let base = dev.env["AZURE_POD_IDENTITY_AUTHORITY_HOST"].clone();
    let r = reqwest::blocking::Client::new()
        .get(format!("{base}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com"))
        .header("Metadata", "true")
        .send()
        .expect("imds");
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().expect("json");
    let claims = verify(
        &dev,
        body["access_token"].as_str().expect("token"),
        "https://management.azure.com",
    );
    assert_eq!(claims["tid"], dev.tenant);

    let token_dir = std::path::Path::new(&dev.token_file)
        .parent()
        .expect("dir")
        .to_path_buf();
    assert!(token_dir.join("..data").exists(), "kubelet layout");
    dev.proc.signal(libc::SIGINT);
    let (code, out) = dev.proc.wait(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{out}");
    assert!(!token_dir.exists(), "temporary token folder removed");
    assert!(!std::path::Path::new(&envpath).exists(), "env file removed");
    assert!(!std::path::Path::new(&dev.ca).exists(), "mock CA removed");
}

#[test]
fn real_sdks_through_the_dev_chain_while_the_token_rotates() {
    if !sdk::available("real_sdks_through_the_dev_chain_while_the_token_rotates") {
        return;
    }
    let dev = start_dev(&[]);
    let imds: Vec<(&str, String)> = vec![(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        dev.env["AZURE_POD_IDENTITY_AUTHORITY_HOST"].clone(),
    )];
    let app: Vec<(&str, String)> = vec![
        ("IDENTITY_ENDPOINT", dev.env["IDENTITY_ENDPOINT"].clone()),
        ("IDENTITY_HEADER", dev.env["IDENTITY_HEADER"].clone()),
    ];
    let first_token = std::fs::read_to_string(&dev.token_file).expect("token");
    let started = Instant::now();
    let mut round = 0;
    // Keep exchanging (a new resource each round, so each one reaches the mock) until the
    // federated token has rotated at least once (6 s lifetime: rotation at 4.8 s).
    loop {
        round += 1;
        let res = format!("https://round{round}.example.com");
        for (what, out) in [
            (
                "python imds",
                python_mi("azure-identity", &res, None, &imds),
            ),
            (
                "python app service",
                python_mi("azure-identity", &format!("{res}/as"), None, &app),
            ),
            ("node imds", node_mi(&format!("{res}/node"), None, &imds)),
            (
                "node app service",
                node_mi(&format!("{res}/node-as"), None, &app),
            ),
        ] {
            assert_eq!(out["ok"], true, "{what}, round {round}: {out}");
            let token = out["token"].as_str().expect("token");
            let aud = match what {
                "python imds" => res.clone(),
                "python app service" => format!("{res}/as"),
                "node imds" => format!("{res}/node"),
                _ => format!("{res}/node-as"),
            };
            verify(&dev, token, &aud);
        }
        let rotated = std::fs::read_to_string(&dev.token_file)
            .map(|t| t != first_token)
            .unwrap_or(false);
        if rotated && started.elapsed() > Duration::from_secs(7) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "federated token never rotated"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(round >= 2);
}

/// Every release of the client matrix with exactly the environment `dev` prints: the old ones
/// pick MSI_ENDPOINT + MSI_SECRET (and get the date they read), the current ones IDENTITY_*.
#[test]
fn every_matrix_release_works_with_the_env_dev_prints() {
    if !sdk::matrix_available("every_matrix_release_works_with_the_env_dev_prints") {
        return;
    }
    let dev = start_dev(&[]);
    let env: Vec<(&str, String)> = [
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        "MSI_ENDPOINT",
        "MSI_SECRET",
    ]
    .into_iter()
    .map(|k| (k, dev.env[k].clone()))
    .collect();
    let out = dev.proc.logs();
    let printed = out.lines().filter(|l| l.starts_with("export ")).count();
    assert_eq!(
        printed,
        env.len(),
        "dev prints exactly these for the app:\n{out}"
    );
    for (i, release) in [
        Release::Py150,
        Release::Node152,
        Release::Node140,
        Release::PyCurrent,
        Release::NodeCurrent,
    ]
    .into_iter()
    .enumerate()
    {
        let res = format!("https://release{i}.example.com");
        let out = matrix_client(release, &res, None, &env);
        assert_eq!(out["ok"], true, "{release:?}: {out}");
        verify(&dev, out["token"].as_str().expect("token"), &res);
        let expiry = out["expires_on"][0]
            .as_u64()
            .or_else(|| out["expires_on_ms"].as_f64().map(|ms| (ms / 1000.0) as u64));
        assert!(
            expiry.is_some_and(|e| e > now() + 60 * 50 && e < now() + 60 * 95),
            "{release:?}: an expiry within the mock's 60-90 min lifetime: {out}"
        );
    }
}

/// The README's quick start, exactly as written: `dev` on its defaults, then the README's curl.
#[test]
fn readme_quick_start_works_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    assert!(
        readme.contains("cargo run --release -- dev"),
        "the quick start runs dev"
    );
    let curl = readme
        .lines()
        .find(|l| l.starts_with("curl "))
        .expect("a curl line in the README")
        .to_string();
    if std::net::TcpListener::bind("127.0.0.1:8000").is_err() {
        panic!("port 8000 is taken: the README's quick start needs it");
    }
    let dev = Process::spawn(&["dev"], &[]);
    let end = Instant::now() + Duration::from_secs(20);
    while !dev.logs().contains("# try: curl") {
        assert!(Instant::now() < end, "dev did not start:\n{}", dev.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{curl} --silent --show-error --fail"))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{curl}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON token");
    assert!(
        body["access_token"]
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3),
        "{body}"
    );
    dev.signal(libc::SIGINT);
    let (code, logs) = dev.wait(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{logs}");
}
