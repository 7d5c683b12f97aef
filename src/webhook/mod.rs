//! `identity-sidecar-webhook`: a mutating admission webhook that injects identity-sidecar into
//! pods labelled `identity-sidecar.io/inject: "true"`.
//!
//! - [`review`]: AdmissionReview in and out;
//! - [`patch`]: the mutation, as JSON Patch operations against the pod as received (pure);
//! - [`kube`] (now `crate::kube`, shared with the node agent): the Kubernetes client
//!   configuration and the ServiceAccount lookup and cache;
//! - [`tls`]: the serving certificate, reloaded when its files change, and the CA generator;
//! - [`server`]: the HTTPS listener, routes, readiness and metrics;
//! - this file: the command line (`serve` and `certs`).
//!
//! It is a second binary of the package (`src/bin/identity-sidecar-webhook.rs`), not a
//! subcommand of `identity-sidecar`, so the per-pod sidecar binary links none of it (see
//! docs/kubernetes.md, "The injector").
pub mod expiry;
pub use crate::kube;
pub mod names;
pub mod patch;
pub mod review;
pub mod server;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use patch::{Resources, Settings, SidecarMode};

/// Exit code for configuration mistakes (as `identity-sidecar serve`).
pub const EXIT_CONFIG: u8 = 2;

/// What `identity-sidecar-webhook --help` says it is.
const ABOUT: &str = "Mutating admission webhook that injects identity-sidecar into labelled pods";

#[derive(Subcommand, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at start; boxing ServeArgs buys nothing"
)]
pub enum Command {
    /// Serve AdmissionReviews on POST /mutate over HTTPS.
    Serve(ServeArgs),
    /// Write a CA, a serving certificate and the caBundle, for clusters without cert-manager.
    Certs(CertsArgs),
}

/// Flags of `identity-sidecar-webhook serve`; each also reads the variable named in `env`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to serve HTTPS on.
    #[arg(
        long,
        env = "IDENTITY_SIDECAR_WEBHOOK_LISTEN",
        default_value = "0.0.0.0:9443"
    )]
    pub listen: String,

    /// Serving certificate chain (PEM). Re-read when it changes (cert-manager rotation).
    #[arg(
        long,
        env = "IDENTITY_SIDECAR_WEBHOOK_TLS_CERT_FILE",
        value_name = "PATH"
    )]
    pub tls_cert_file: PathBuf,

    /// Private key of the serving certificate (PEM).
    #[arg(
        long,
        env = "IDENTITY_SIDECAR_WEBHOOK_TLS_KEY_FILE",
        value_name = "PATH"
    )]
    pub tls_key_file: PathBuf,

    /// The identity-sidecar image to inject.
    #[arg(long, env = "IDENTITY_SIDECAR_WEBHOOK_IMAGE", value_name = "IMAGE")]
    pub image: String,

    /// The init-network image (for pods with identity-sidecar.io/mode: imds-intercept).
    /// Unset: such pods are refused.
    #[arg(
        long,
        env = "IDENTITY_SIDECAR_WEBHOOK_INIT_IMAGE",
        value_name = "IMAGE"
    )]
    pub init_image: Option<String>,

    /// Tenant for ServiceAccounts without azure.workload.identity/tenant-id.
    #[arg(long, env = "AZURE_TENANT_ID", value_name = "TENANT")]
    pub tenant_id: Option<String>,

    /// Entra ID authority given to every sidecar.
    #[arg(
        long,
        env = "AZURE_AUTHORITY_HOST",
        default_value = "https://login.microsoftonline.com/",
        value_name = "URL"
    )]
    pub authority_host: String,

    /// `native` (an init container with restartPolicy: Always, Kubernetes >= 1.29) or `classic`
    /// (a first regular container, for older clusters).
    #[arg(
        long,
        env = "IDENTITY_SIDECAR_WEBHOOK_SIDECAR_MODE",
        default_value = "native",
        value_name = "MODE"
    )]
    pub sidecar_mode: String,

    /// The sidecar's CPU request.
    #[arg(
        long,
        env = "IDENTITY_SIDECAR_WEBHOOK_CPU_REQUEST",
        default_value = "10m"
    )]
    pub cpu_request: String,
    /// The sidecar's memory request.
    #[arg(
        long,
        env = "IDENTITY_SIDECAR_WEBHOOK_MEMORY_REQUEST",
        default_value = "16Mi"
    )]
    pub memory_request: String,
    /// The sidecar's CPU limit.
    #[arg(
        long,
        env = "IDENTITY_SIDECAR_WEBHOOK_CPU_LIMIT",
        default_value = "200m"
    )]
    pub cpu_limit: String,
    /// The sidecar's memory limit.
    #[arg(
        long,
        env = "IDENTITY_SIDECAR_WEBHOOK_MEMORY_LIMIT",
        default_value = "64Mi"
    )]
    pub memory_limit: String,

    /// How long a ServiceAccount read from the API is reused, in seconds (0: never).
    #[arg(
        long,
        env = "IDENTITY_SIDECAR_WEBHOOK_CACHE_SECONDS",
        default_value_t = 60,
        value_name = "SECONDS"
    )]
    pub cache_seconds: u64,

    /// Log format: `json` or `text`.
    #[arg(long, env = "IDENTITY_SIDECAR_LOG_FORMAT", default_value = "json")]
    pub log_format: String,

    /// Worker threads.
    #[arg(
        long,
        env = "IDENTITY_SIDECAR_WEBHOOK_WORKER_THREADS",
        default_value_t = 2
    )]
    pub worker_threads: usize,
}

/// Flags of `identity-sidecar-webhook certs`.
#[derive(clap::Args, Debug, Clone)]
pub struct CertsArgs {
    /// Directory to write ca.crt, tls.crt, tls.key and ca-bundle-patch.yaml into.
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// The webhook's Service name.
    #[arg(long, default_value = "identity-sidecar-webhook")]
    pub service: String,
    /// The webhook's namespace.
    #[arg(long, default_value = "identity-sidecar-system")]
    pub namespace: String,
    /// The MutatingWebhookConfiguration to put the caBundle into.
    #[arg(long, default_value = "identity-sidecar-webhook")]
    pub webhook_configuration: String,
    /// Validity of the CA and the certificate, in days.
    #[arg(long, default_value_t = 365)]
    pub days: i64,
}

/// A flag mistake, naming the flag and its variable.
fn config_error(flag: &str, env: &str, msg: impl std::fmt::Display) -> String {
    format!("{flag} (env {env}): {msg}")
}

impl ServeArgs {
    /// Validates the flags; the Kubernetes client configuration is loaded here too, so a
    /// misconfigured webhook stops at start with exit code 2.
    pub fn validate(&self) -> Result<server::Config, String> {
        let listen: SocketAddr = self.listen.parse().map_err(|e| {
            config_error(
                "--listen",
                "IDENTITY_SIDECAR_WEBHOOK_LISTEN",
                format!("{e}"),
            )
        })?;
        if self.image.trim().is_empty() {
            return Err(config_error(
                "--image",
                "IDENTITY_SIDECAR_WEBHOOK_IMAGE",
                "must name the identity-sidecar image",
            ));
        }
        let sidecar_mode = SidecarMode::parse(&self.sidecar_mode).ok_or_else(|| {
            config_error(
                "--sidecar-mode",
                "IDENTITY_SIDECAR_WEBHOOK_SIDECAR_MODE",
                format!("{:?}: expected native or classic", self.sidecar_mode),
            )
        })?;
        for (flag, env, v) in [
            (
                "--cpu-request",
                "IDENTITY_SIDECAR_WEBHOOK_CPU_REQUEST",
                &self.cpu_request,
            ),
            (
                "--memory-request",
                "IDENTITY_SIDECAR_WEBHOOK_MEMORY_REQUEST",
                &self.memory_request,
            ),
            (
                "--cpu-limit",
                "IDENTITY_SIDECAR_WEBHOOK_CPU_LIMIT",
                &self.cpu_limit,
            ),
            (
                "--memory-limit",
                "IDENTITY_SIDECAR_WEBHOOK_MEMORY_LIMIT",
                &self.memory_limit,
            ),
        ] {
            if !patch::is_quantity(v) {
                return Err(config_error(
                    flag,
                    env,
                    format!("{v:?} is not a Kubernetes quantity"),
                ));
            }
        }
        let authority = self.authority_host.trim();
        if !authority.starts_with("https://") {
            return Err(config_error(
                "--authority-host",
                "AZURE_AUTHORITY_HOST",
                "must be an https:// URL",
            ));
        }
        let tenant = self
            .tenant_id
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty());
        if self.log_format != "json" && self.log_format != "text" {
            return Err(config_error(
                "--log-format",
                "IDENTITY_SIDECAR_LOG_FORMAT",
                "expected json or text",
            ));
        }
        let kube = kube::load_config().map_err(|e| format!("Kubernetes API: {e}"))?;
        Ok(server::Config {
            listen,
            tls_cert_file: self.tls_cert_file.clone(),
            tls_key_file: self.tls_key_file.clone(),
            settings: Settings {
                image: self.image.trim().to_string(),
                init_image: self
                    .init_image
                    .as_deref()
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
                default_tenant_id: tenant.map(str::to_string),
                authority_host: authority.to_string(),
                sidecar_mode,
                resources: Resources {
                    cpu_request: self.cpu_request.clone(),
                    memory_request: self.memory_request.clone(),
                    cpu_limit: self.cpu_limit.clone(),
                    memory_limit: self.memory_limit.clone(),
                },
            },
            kube,
            cache_ttl: Duration::from_secs(self.cache_seconds),
        })
    }
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    // One crypto provider for every TLS user in the process (the Kubernetes API client, the
    // listener), as the sidecar does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let command = crate::cli::try_parse::<Command>("identity-sidecar-webhook", ABOUT)
        .unwrap_or_else(|e| e.exit());
    match command {
        Command::Serve(args) => serve(args),
        Command::Certs(args) => certs(&args),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let cfg = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("identity-sidecar-webhook serve: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(&args.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.worker_threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("identity-sidecar-webhook: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listen = cfg.listen;
        let source = cfg.kube.source.clone();
        let server = cfg.kube.server.clone();
        let running = match server::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot start: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        tracing::info!(
            version = crate::build_info::VERSION,
            commit = crate::build_info::COMMIT,
            built = crate::build_info::BUILD_DATE,
            listen = %listen,
            addr = %running.local_addr(),
            kubernetes = %server,
            kubernetes_config = %source,
            "identity-sidecar-webhook serving"
        );
        wait_for_signal().await;
        tracing::info!("shutting down");
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if format == "json" {
        b.json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        b.try_init()
    };
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn certs(args: &CertsArgs) -> ExitCode {
    match write_certs(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("identity-sidecar-webhook certs: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `ca.crt`, `tls.crt`, `tls.key` (mode 0600) and `ca-bundle-patch.yaml` (a kustomize
/// patch setting the caBundle of the webhook configuration) into `--out-dir`.
pub fn write_certs(args: &CertsArgs) -> Result<(), String> {
    use base64::Engine as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let svc = &args.service;
    let ns = &args.namespace;
    // The names the API server may use for the Service.
    let names = vec![
        format!("{svc}.{ns}.svc"),
        format!("{svc}.{ns}.svc.cluster.local"),
        format!("{svc}.{ns}"),
        svc.clone(),
    ];
    let g = tls::generate(&names, args.days)?;
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.out_dir.display()))?;
    let write = |name: &str, data: &str, mode: u32| -> Result<(), String> {
        let path = args.out_dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        std::io::Write::write_all(&mut f, data.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write("ca.crt", &g.ca_cert, 0o644)?;
    write("tls.crt", &g.cert, 0o644)?;
    write("tls.key", &g.key, 0o600)?;
    let bundle = base64::engine::general_purpose::STANDARD.encode(g.ca_cert.as_bytes());
    let patch = format!(
        "# Written by `identity-sidecar-webhook certs`: the CA that signed tls.crt.\n\
         apiVersion: admissionregistration.k8s.io/v1\n\
         kind: MutatingWebhookConfiguration\n\
         metadata:\n  name: {}\n\
         webhooks:\n  - name: inject.identity-sidecar.io\n    clientConfig:\n      caBundle: {bundle}\n",
        args.webhook_configuration
    );
    write("ca-bundle-patch.yaml", &patch, 0o644)?;
    println!(
        "wrote {dir}/ca.crt, tls.crt, tls.key and ca-bundle-patch.yaml for {first} (valid {days} days)",
        dir = args.out_dir.display(),
        first = names[0],
        days = args.days
    );
    Ok(())
}
