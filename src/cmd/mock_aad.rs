//! The `mock-aad` subcommand: flags, start-up summary, federated-token file, wait for a signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::duration;
use crate::mock_aad::config::{AppRegistration, ClientSecret, FederatedCredential, RegistryFile};
use crate::mock_aad::faults::{Fault, FaultAction};
use crate::mock_aad::{self, DEFAULT_SUBJECT, MockAadConfig};

const AFTER_HELP: &str = "\
NOT an identity provider: keys and CA are made fresh at every start, and it issues tokens to anyone
presenting a matching assertion or secret. It listens on loopback only unless --allow-non-loopback.

Endpoints: /{tenant}/v2.0/.well-known/openid-configuration, /{tenant}/discovery/v2.0/keys,
/common/discovery/instance, POST /{tenant}/oauth2/v2.0/token, /issuer/.well-known/openid-configuration,
/issuer/openid/v1/jwks.

Admin (loopback clients only): GET /_mock/health, GET /_mock/stats, GET /_mock/requests,
POST /_mock/faults {\"action\":\"503|429[:SECS]|aadsts:CODE|delay:DURATION\",\"times\":N,\"share\":0.5},
DELETE /_mock/faults, GET /_mock/federated-token?sub=SUBJECT&lifetime=1h[&aud=AUDIENCE].";

/// Flags of `identity-sidecar mock-aad`: a mock Entra ID and Kubernetes-like token issuer for
/// local development and tests.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct MockAadArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "MOCK_AAD_LISTEN", default_value = "127.0.0.1:18443")]
    pub listen: SocketAddr,

    /// Allow listening on a non-loopback address. The mock is not an identity provider.
    #[arg(long)]
    pub allow_non_loopback: bool,

    /// Serve plain HTTP instead of HTTPS (loopback only; Azure SDKs refuse http authorities).
    #[arg(long)]
    pub plain_http: bool,

    /// Base URL to advertise in discovery and tokens instead of https://LISTEN/.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,

    /// Extra DNS name or IP for the server certificate (repeatable).
    #[arg(long = "tls-name", value_name = "NAME")]
    pub tls_names: Vec<String>,

    /// Present the mock as this cloud's Entra ID (AzurePublicCloud, AzureUSGovernment,
    /// AzureChinaCloud): its authority host goes into the certificate and the advertised URL.
    /// Names only: the mock still listens on --listen.
    #[arg(long, value_name = "CLOUD", value_parser = super::flags::Checked(crate::cloud::Cloud::parse))]
    pub cloud: Option<crate::cloud::Cloud>,

    /// Where to write the generated CA certificate (PEM) for clients to trust
    /// (default: $TMPDIR/identity-sidecar-mock-aad/ca.pem).
    #[arg(long, env = "MOCK_AAD_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,

    /// App registry file (TOML, or JSON if it ends in .json); its apps replace the default app.
    #[arg(long, env = "MOCK_AAD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Tenant id of the default app.
    #[arg(long, env = "MOCK_AAD_TENANT_ID", default_value = mock_aad::DEFAULT_TENANT_ID)]
    pub tenant_id: String,

    /// Client id of the default app.
    #[arg(long, env = "MOCK_AAD_CLIENT_ID", default_value = mock_aad::DEFAULT_CLIENT_ID)]
    pub client_id: String,

    /// Federated-credential subject the default app trusts from the mock's issuer (repeatable)
    /// [default: system:serviceaccount:default:workload].
    #[arg(long = "subject", value_name = "SUBJECT")]
    pub subjects: Vec<String>,

    /// Also trust federated tokens from this external issuer URL for the same subjects (repeatable).
    #[arg(long = "trust-issuer", value_name = "URL")]
    pub trust_issuers: Vec<String>,

    /// Client secret the default app accepts (none by default).
    #[arg(long, env = "MOCK_AAD_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,

    /// Fixed lifetime of issued access tokens (e.g. 3600, 90m, 2h; a bare number is seconds)
    /// [default: random 60-90 min].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pub token_lifetime: Option<Duration>,

    /// Inject a fault into the token endpoint: 503, 429 (or 429:RETRY_AFTER_SECS), aadsts:CODE or delay:DURATION.
    #[arg(long, value_name = "SPEC")]
    pub fault: Option<FaultAction>,

    /// Apply --fault to the next N token requests only.
    #[arg(long, value_name = "N", requires = "fault")]
    pub fault_times: Option<u64>,

    /// Apply --fault to this share of token requests (0.0-1.0), chosen at random.
    #[arg(long, value_name = "SHARE", requires = "fault", value_parser = parse_share)]
    pub fault_share: Option<f64>,

    /// Keep a federated token in DIR/token with kubelet's layout (..data symlink), rotated at 80% of its lifetime.
    #[arg(long, value_name = "DIR")]
    pub federated_token_dir: Option<PathBuf>,

    /// Subject of the token written to --federated-token-dir.
    #[arg(long, default_value = DEFAULT_SUBJECT, value_name = "SUBJECT")]
    pub federated_token_subject: String,

    /// Lifetime of the token written to --federated-token-dir (e.g. 3600, 10m, 1h; a bare number
    /// is seconds).
    #[arg(
        long,
        default_value = "1h",
        value_name = "DURATION",
        value_parser = duration::parse
    )]
    pub federated_token_lifetime: Duration,
}

fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("'{text}' is not a share between 0.0 and 1.0")),
    }
}

impl MockAadArgs {
    /// The library configuration these flags describe.
    pub fn to_config(&self) -> Result<MockAadConfig, mock_aad::MockAadError> {
        let file = match &self.config {
            Some(path) => RegistryFile::load(path)?,
            None => RegistryFile::default(),
        };
        let apps = if file.apps.is_empty() {
            let subjects = if self.subjects.is_empty() {
                vec![DEFAULT_SUBJECT.to_owned()]
            } else {
                self.subjects.clone()
            };
            let mut credentials: Vec<FederatedCredential> = subjects
                .iter()
                .map(|s| FederatedCredential::self_issued(s.clone()))
                .collect();
            for issuer in &self.trust_issuers {
                credentials.extend(subjects.iter().map(|s| FederatedCredential {
                    issuer: issuer.clone(),
                    ..FederatedCredential::self_issued(s.clone())
                }));
            }
            let default = AppRegistration::default_app();
            let customized =
                self.tenant_id != default.tenant_id || self.client_id != default.client_id;
            vec![AppRegistration {
                tenant_id: self.tenant_id.clone(),
                client_id: self.client_id.clone(),
                // The fixed object id belongs to the fixed default app only.
                object_id: if customized { None } else { default.object_id },
                client_secret: self.client_secret.clone().map(ClientSecret),
                federated_credentials: credentials,
                roles: Vec::new(),
            }]
        } else {
            file.apps
        };
        let ca_file = self.ca_file.clone().or_else(|| {
            (!self.plain_http).then(|| {
                std::env::temp_dir()
                    .join("identity-sidecar-mock-aad")
                    .join("ca.pem")
            })
        });
        Ok(MockAadConfig {
            listen: self.listen,
            allow_non_loopback: self.allow_non_loopback,
            plain_http: self.plain_http,
            public_url: self.public_url.clone(),
            tls_names: self.tls_names.clone(),
            cloud: self.cloud,
            ca_file,
            apps,
            extra_tenants: file.tenants,
            token_lifetime: self
                .token_lifetime
                .or(file.token_lifetime_secs.map(Duration::from_secs)),
            fault: self.fault.clone().map(|action| Fault {
                action,
                times: self.fault_times,
                share: self.fault_share,
            }),
        })
    }
}

/// Runs the subcommand on its own Tokio runtime (what `cli::main` calls).
pub fn run_blocking(args: MockAadArgs) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(e) => {
            eprintln!("mock-aad: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the subcommand until SIGINT or SIGTERM, on the caller's runtime.
pub async fn run(args: MockAadArgs) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();

    let config = match args.to_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("mock-aad: {e}");
            return ExitCode::from(2);
        }
    };
    let mock = match mock_aad::start(config).await {
        Ok(mock) => mock,
        Err(e) => {
            eprintln!("mock-aad: {e}");
            return ExitCode::FAILURE;
        }
    };
    let writer = match &args.federated_token_dir {
        Some(dir) => match mock.federated_token_writer(
            dir,
            &args.federated_token_subject,
            args.federated_token_lifetime,
        ) {
            Ok(writer) => Some(writer),
            Err(e) => {
                eprintln!("mock-aad: {e}");
                mock.shutdown().await;
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };

    println!("mock-aad: a mock Entra ID for development and tests (NOT an identity provider)");
    println!("  authority      {}", mock.authority_url());
    println!("  tenant         {}", mock.tenant_id());
    println!("  client id      {}", mock.client_id());
    println!("  token endpoint {}", mock.token_endpoint());
    println!("  issuer         {}", mock.issuer_url());
    if let Some(ca) = mock.ca_pem_path() {
        println!("  CA file        {}", ca.display());
    }
    println!("# environment for apps and SDKs:");
    println!("export AZURE_AUTHORITY_HOST={}", mock.authority_url());
    println!("export AZURE_TENANT_ID={}", mock.tenant_id());
    println!("export AZURE_CLIENT_ID={}", mock.client_id());
    if let Some(writer) = &writer {
        println!(
            "export AZURE_FEDERATED_TOKEN_FILE={}",
            writer.token_path().display()
        );
    }
    if let Some(ca) = mock.ca_pem_path() {
        let ca = ca.display();
        println!("export REQUESTS_CA_BUNDLE={ca} NODE_EXTRA_CA_CERTS={ca} SSL_CERT_FILE={ca}");
    }

    wait_for_signal().await;
    tracing::info!("shutting down");
    drop(writer);
    mock.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
