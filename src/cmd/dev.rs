//! `identity-sidecar dev`: the whole chain on a laptop, in one process, with no cloud. Starts the
//! mock Entra ID ([`crate::mock_aad`]), a federated token file in kubelet's layout that rotates,
//! and `serve` pointed at both, then prints the environment an app needs. Ctrl-C stops it all and
//! removes the temporary files.
//!
//! The app is never handed `AZURE_FEDERATED_TOKEN_FILE` or an http `AZURE_AUTHORITY_HOST`: SDKs
//! would bypass the sidecar or refuse to start (docs/protocols.md#environment,
//! docs/protocols.md#entra-tls).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rand::Rng as _;

use super::flags::{self, Checked};
use super::serve::{ServeArgs, wait_for_signal};
use crate::core::secret::Secret;
use crate::duration;
use crate::mock_aad::{self, MockAad, MockAadConfig};
use crate::telemetry::logging::LogFormat;

#[derive(clap::Args, Debug, Clone)]
pub struct DevArgs {
    /// Where the sidecar serves. [default: 127.0.0.1:8000, and [::1]:8000 if IPv6 loopback exists]
    #[arg(
        long = "listen",
        value_delimiter = ',',
        value_name = "ADDR",
        value_parser = Checked(flags::listen_entry)
    )]
    pub listen: Vec<Option<SocketAddr>>,

    /// Admin listener (only /metrics, /healthz, /readyz), as `serve --admin-listen`.
    /// [default: none]
    #[arg(long, value_name = "ADDR", value_parser = Checked(flags::socket_addr))]
    pub admin_listen: Option<SocketAddr>,

    /// One JSON audit line per token request, as `serve --audit-log`.
    #[arg(long)]
    pub audit_log: bool,

    /// Secret for the App Service endpoints. [default: random]
    #[arg(long, value_name = "SECRET", value_parser = Checked(flags::identity_header))]
    pub identity_header: Option<Secret>,

    /// Lifetime of the federated token; it is rotated at 80% of it, like kubelet does.
    #[arg(
        long,
        default_value = "1h",
        value_name = "DURATION",
        value_parser = Checked(duration::parse_positive)
    )]
    pub federated_token_lifetime: Duration,

    /// Lifetime of the access tokens the mock issues. [default: random 60-90 minutes, like Entra]
    #[arg(long, value_name = "DURATION", value_parser = Checked(duration::parse_positive))]
    pub token_lifetime: Option<Duration>,

    /// Also write the app's environment to this file (KEY=VALUE lines, for `docker run --env-file`
    /// or direnv's `dotenv`).
    #[arg(long, value_name = "PATH")]
    pub env_file: Option<PathBuf>,

    /// Log format of the sidecar and the mock: `text` or `json`.
    #[arg(long, default_value = "text", value_name = "FORMAT", value_parser = Checked(LogFormat::parse))]
    pub log_format: LogFormat,
}

pub fn run(args: DevArgs) -> ExitCode {
    let started = Instant::now();
    let _log_guard = crate::telemetry::logging::init(args.log_format);
    let rt = match super::serve::runtime(crate::config::DEFAULT_WORKER_THREADS) {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    rt.block_on(chain(args, started))
}

/// Starts the mock, the token file and the sidecar, prints the app's environment, and runs until
/// a signal.
async fn chain(args: DevArgs, started: Instant) -> ExitCode {
    let mock_cfg = MockAadConfig {
        token_lifetime: args.token_lifetime,
        ..MockAadConfig::default()
    };
    let mock = match mock_aad::start(mock_cfg).await {
        Ok(m) => m,
        Err(e) => return fail(&format!("cannot start the mock Entra ID: {e}")),
    };
    let dir = match tempfile::Builder::new()
        .prefix("identity-sidecar-dev-")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => return fail(&format!("cannot create a temporary folder: {e}")),
    };
    let subject = mock_aad::config::DEFAULT_SUBJECT;
    let writer =
        match mock.federated_token_writer(dir.path(), subject, args.federated_token_lifetime) {
            Ok(w) => w,
            Err(e) => return fail(&format!("cannot write the federated token: {e}")),
        };
    let header = args
        .identity_header
        .clone()
        .unwrap_or_else(|| Secret::new(random_secret()));
    let serve_args = ServeArgs {
        client_id: flags::guid(mock.client_id()).ok(),
        tenant_id: Some(mock.tenant_id().to_string()),
        token_file: Some(writer.token_path()),
        authority_host: flags::authority(mock.authority_url()).ok(),
        listen: args.listen.clone(),
        admin_listen: args.admin_listen,
        audit_log: args.audit_log,
        identity_header: Some(header.clone()),
        ..ServeArgs::default()
    };
    let mut cfg = match serve_args.validate() {
        Ok(c) => c,
        Err(e) => return usage(&e.to_string()),
    };
    cfg.extra_ca_files = mock
        .ca_pem_path()
        .map(|p| vec![p.to_path_buf()])
        .unwrap_or_default();
    let running = match super::serve::start(&cfg).await {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the sidecar: {e}")),
    };
    let ca = mock.ca_pem_path().map(|p| p.display().to_string());
    let env = app_env(running.local_addrs(), header.expose(), ca);
    print_banner(&mock, &writer.token_path(), &args, &env, started);
    if let Some(admin) = running.admin_addr() {
        println!("# admin (metrics, health): http://{admin}/metrics");
    }
    if let Some(path) = &args.env_file {
        let text: String = env.app.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        if let Err(e) = write_private(path, &text) {
            return fail(&format!("cannot write {}: {e}", path.display()));
        }
        println!("# wrote {}", path.display());
    }
    wait_for_signal().await;
    tracing::info!("stopping the dev chain");
    running.shutdown().await;
    drop(writer);
    mock.shutdown().await;
    drop(dir);
    if let Some(path) = &args.env_file {
        let _ = std::fs::remove_file(path);
    }
    ExitCode::SUCCESS
}

fn print_banner(
    mock: &MockAad,
    token_path: &std::path::Path,
    args: &DevArgs,
    env: &AppEnv,
    started: Instant,
) {
    let ms = started.elapsed().as_millis();
    println!("# identity-sidecar dev: ready in {ms} ms");
    println!(
        "# mock Entra ID {} (tenant {}, client {}); federated token {} (rotates at 80% of {})",
        mock.authority_url(),
        mock.tenant_id(),
        mock.client_id(),
        token_path.display(),
        duration::display(args.federated_token_lifetime)
    );
    println!("# paste into the app's shell (Ctrl-C here stops everything):");
    println!(
        "#   IDENTITY_*: current SDKs; MSI_*: releases before App Service 2019 (azure-identity < 1.9, @azure/identity < 2.1, adal); the IMDS host: IMDS-only clients"
    );
    for (k, v) in &env.app {
        println!("export {k}={v}");
    }
    println!(
        "# only if the app itself talks to the mock Entra ID \
         (these replace or extend its CA trust):"
    );
    for (k, v) in &env.ca {
        println!("#   export {k}={v}");
    }
    println!(
        "# try: curl -H Metadata:true 'http://{}/metadata/identity/oauth2/token\
         ?api-version=2018-02-01&resource=https://management.azure.com'",
        env.base
    );
}

struct AppEnv {
    base: String,
    app: Vec<(&'static str, String)>,
    ca: Vec<(&'static str, String)>,
}

fn app_env(addrs: &[SocketAddr], header: &str, ca: Option<String>) -> AppEnv {
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .map_or_else(String::new, ToString::to_string);
    let base = format!("http://{addr}");
    let app = vec![
        ("IDENTITY_ENDPOINT", format!("{base}/msi/token")),
        ("IDENTITY_HEADER", header.to_string()),
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", base.clone()),
        ("MSI_ENDPOINT", format!("{base}/msi/token")),
        ("MSI_SECRET", header.to_string()),
    ];
    let ca = ca
        .map(|p| {
            vec![
                ("REQUESTS_CA_BUNDLE", p.clone()),
                ("NODE_EXTRA_CA_CERTS", p.clone()),
                ("SSL_CERT_FILE", p),
            ]
        })
        .unwrap_or_default();
    AppEnv {
        base: addr,
        app,
        ca,
    }
}

fn random_secret() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..32)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("identity-sidecar dev: {msg}");
    ExitCode::from(2)
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("identity-sidecar dev: {msg}");
    ExitCode::FAILURE
}
