//! `identity-sidecar serve`: its flags (the environment the Azure Workload Identity webhook
//! injects), the rules between them, and the run: build the service, start the server, print what
//! an app needs, and stop cleanly on SIGTERM or SIGINT (in-flight requests finish, exit code 0).
//!
//! Each value is parsed and checked by its flag's value parser ([`super::flags`]); what is left
//! here are the rules that need more than one flag (a setting that is required, the Entra budget
//! that must fit one call). Every error names the flag and its variable, and the process exits
//! with code 2 on any of them, so a misconfigured pod fails loudly before it serves.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use reqwest::Url;
use uuid::Uuid;

use super::flags::{self, Checked};
use crate::cloud::Cloud;
use crate::config::{
    DEFAULT_AUTHORITY, DEFAULT_PORT, DEFAULT_WORKER_THREADS, Listen, Policy, ResourceRule,
    ServeConfig,
};
use crate::core::egress::EgressProxy;
use crate::core::secret::Secret;
use crate::core::token_proxy::{CaSource, TokenProxyConfig};
use crate::duration;
use crate::protocol::user_agent::ExpiresOnMode;
use crate::server;
use crate::service::Service;
use crate::telemetry::logging::LogFormat;

/// Exit code for configuration mistakes (clap uses the same for the flags it refuses).
pub const EXIT_CONFIG: u8 = 2;

/// Flags of `identity-sidecar serve`. Each flag also reads the variable named after `env`; a flag
/// given on the command line wins over the variable. Durations follow [`crate::duration`]; blank
/// entries of comma lists are skipped.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Client id (GUID) of the app registration or user-assigned identity that trusts the
    /// federated token. Also the identity used when a request names none.
    #[arg(long, env = "AZURE_CLIENT_ID", value_name = "GUID", value_parser = Checked(flags::guid))]
    pub client_id: Option<Uuid>,

    /// Entra ID tenant id (GUID or domain name).
    #[arg(long, env = "AZURE_TENANT_ID", value_name = "TENANT", value_parser = Checked(flags::tenant))]
    pub tenant_id: Option<String>,

    /// File holding the federated service-account token (kubelet's projected token).
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE", value_name = "PATH", value_parser = Checked(flags::path))]
    pub token_file: Option<PathBuf>,

    /// Entra ID authority. Must be https://, except http:// for loopback hosts (tests, local dev).
    /// Wins over --cloud and AZURE_ENVIRONMENT. [default: the cloud's, else
    /// https://login.microsoftonline.com/]
    #[arg(long, env = "AZURE_AUTHORITY_HOST", value_name = "URL", value_parser = Checked(flags::authority))]
    pub authority_host: Option<Url>,

    /// Azure cloud whose authority to use when --authority-host / AZURE_AUTHORITY_HOST is not
    /// set: AzurePublicCloud (login.microsoftonline.com), AzureUSGovernment
    /// (login.microsoftonline.us) or AzureChinaCloud (login.chinacloudapi.cn), any case.
    /// [default: AzurePublicCloud]
    #[arg(long, env = "AZURE_ENVIRONMENT", value_name = "CLOUD", value_parser = Checked(Cloud::parse))]
    pub cloud: Option<Cloud>,

    /// AKS identity bindings: send the Entra ID token request to this token proxy instead of the
    /// authority (https, no user, query or fragment), as azure-identity's
    /// `enable_azure_proxy` does: its scheme, host and port replace the authority's and its path
    /// goes before the request's.
    #[arg(long, env = "AZURE_KUBERNETES_TOKEN_PROXY", value_name = "URL", value_parser = Checked(flags::token_proxy))]
    pub token_proxy: Option<Url>,

    /// TLS name (SNI, and the name the certificate must carry) of the token proxy.
    /// [default: the --token-proxy host]
    #[arg(long, env = "AZURE_KUBERNETES_SNI_NAME", value_name = "NAME", value_parser = Checked(flags::non_blank))]
    pub token_proxy_sni_name: Option<String>,

    /// PEM file of the only CA trusted for the token proxy; re-read when it changes (an empty
    /// file mid-rotation keeps the previous CA).
    #[arg(long, env = "AZURE_KUBERNETES_CA_FILE", value_name = "PATH", value_parser = Checked(flags::path))]
    pub token_proxy_ca_file: Option<PathBuf>,

    /// PEM of the only CA trusted for the token proxy (instead of a file).
    #[arg(long, env = "AZURE_KUBERNETES_CA_DATA", value_name = "PEM", hide_env_values = true, value_parser = Checked(flags::non_blank))]
    pub token_proxy_ca_data: Option<String>,

    /// Address to serve on; repeat the flag or give a comma list in the variable.
    /// [default: 127.0.0.1:8000 and [::1]:8000 where IPv6 loopback exists]
    #[arg(
        long = "listen",
        env = "IDENTITY_SIDECAR_LISTEN",
        value_delimiter = ',',
        value_name = "ADDR",
        value_parser = Checked(flags::listen_entry)
    )]
    pub listen: Vec<Option<SocketAddr>>,

    /// Admin listener: serves only /metrics, /healthz and /readyz, never a token, so it can bind
    /// the pod IP for Prometheus and the kubelet's httpGet probes (the manifests use
    /// 0.0.0.0:8491). [default: none]
    #[arg(long, env = "IDENTITY_SIDECAR_ADMIN_LISTEN", value_name = "ADDR", value_parser = Checked(flags::socket_addr))]
    pub admin_listen: Option<SocketAddr>,

    /// Write one JSON audit line per token request (time, flavor, identity, resource, outcome,
    /// cache, Entra call ids, token fingerprint, caller uid), with `"log":"audit"` and target
    /// `identity_sidecar::audit` so a log pipeline can route it (docs/operations.md#audit-log).
    #[arg(long, env = "IDENTITY_SIDECAR_AUDIT_LOG")]
    pub audit_log: bool,

    /// Secret that App Service clients must send (`X-IDENTITY-HEADER`, or `secret` for
    /// 2017-09-01). Unset: the App Service endpoints refuse every request.
    #[arg(
        long,
        env = "IDENTITY_HEADER",
        hide_env_values = true,
        value_name = "SECRET",
        value_parser = Checked(flags::identity_header)
    )]
    pub identity_header: Option<Secret>,

    /// Client ids that requests may select (comma list). The --client-id is always allowed.
    /// [default: only the --client-id]
    #[arg(
        long,
        env = "IDENTITY_SIDECAR_ALLOWED_CLIENT_IDS",
        value_delimiter = ',',
        value_name = "GUID",
        value_parser = Checked(flags::guid_entry)
    )]
    pub allowed_client_ids: Vec<Option<Uuid>>,

    /// Resources that tokens may be issued for (comma list). An entry ending in `*` is a prefix.
    /// Other resources get a 400 naming the rule, before any call to Entra ID. [default: any]
    #[arg(
        long,
        env = "IDENTITY_SIDECAR_ALLOWED_RESOURCES",
        value_delimiter = ',',
        value_name = "RESOURCE",
        value_parser = Checked(flags::resource_entry)
    )]
    pub allowed_resources: Vec<Option<ResourceRule>>,

    /// Log format: `text` for people, `json` for clusters. [default: text]
    #[arg(long, env = "IDENTITY_SIDECAR_LOG_FORMAT", value_name = "FORMAT", value_parser = Checked(LogFormat::parse))]
    pub log_format: Option<LogFormat>,

    /// Log every token request (flavor, identity, resource, status, latency, cache) at info.
    /// Without it those lines are debug-level; info has a line per Entra ID exchange, background
    /// refresh, error answer and new (identity, resource), and the periodic summary.
    #[arg(long, env = "IDENTITY_SIDECAR_ACCESS_LOG")]
    pub access_log: bool,

    /// How often to log a summary of token requests (requests, hits, misses, errors by
    /// protocol); `0` turns it off. [default: 5m]
    #[arg(long, env = "IDENTITY_SIDECAR_LOG_SUMMARY_INTERVAL", value_name = "DURATION", value_parser = Checked(duration::parse))]
    pub log_summary_interval: Option<Duration>,

    /// Forward other `/metadata/...` paths (instance metadata) to the real IMDS instead of
    /// answering 404. Needs the sidecar's uid to be exempt from the IMDS redirect.
    #[arg(long, env = "IDENTITY_SIDECAR_IMDS_PASSTHROUGH")]
    pub imds_passthrough: bool,

    /// Where the real IMDS lives, for --imds-passthrough. [default: 169.254.169.254:80]
    #[arg(
        long,
        env = "IDENTITY_SIDECAR_IMDS_ADDRESS",
        value_name = "ADDR",
        hide_short_help = true,
        value_parser = Checked(flags::socket_addr)
    )]
    pub imds_address: Option<SocketAddr>,

    #[command(flatten)]
    pub entra: flags::EntraLimits,

    /// Most (client id, scope) pairs kept in the token cache. [default: 1024]
    #[arg(long, env = "IDENTITY_SIDECAR_MAX_CACHED_TOKENS", value_name = "N", value_parser = Checked(flags::positive_count))]
    pub max_cached_tokens: Option<usize>,

    /// Worker threads serving requests. One is plenty for a sidecar (about 100k requests/s on a
    /// modern core); raise it only for unusual loads. [default: 1]
    #[arg(long, env = "IDENTITY_SIDECAR_WORKER_THREADS", value_name = "N", value_parser = Checked(flags::worker_threads))]
    pub worker_threads: Option<usize>,

    /// How long in-flight requests may run after SIGTERM before the process exits. [default: 10s]
    #[arg(long, env = "IDENTITY_SIDECAR_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = Checked(duration::parse_positive))]
    pub shutdown_grace: Option<Duration>,

    /// `expires_on` format of 2017-09-01 (MSI_ENDPOINT + MSI_SECRET) answers: `auto` gives App
    /// Service's date (`MM/DD/YYYY hh:mm:ss AM +00:00`) to the client releases that read only
    /// that (azure-identity Python 1.5, @azure/identity JS 1.x-2.x, told by their User-Agent) and
    /// epoch seconds to every other client; `epoch` or `date` forces one. [default: auto]
    #[arg(
        long = "msi-2017-expires-on",
        env = "IDENTITY_SIDECAR_MSI_2017_EXPIRES_ON",
        value_name = "auto|epoch|date",
        value_parser = Checked(ExpiresOnMode::parse)
    )]
    pub msi_2017_expires_on: Option<ExpiresOnMode>,
}

/// A configuration mistake that involves more than one value, reported as
/// `--flag (env VARIABLE): message`.
#[derive(Debug, thiserror::Error)]
#[error("{flag} (env {env}): {message}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub env: &'static str,
    pub message: String,
}

fn err(flag: &'static str, env: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        env,
        message: message.into(),
    }
}

fn missing(flag: &'static str, env: &'static str) -> ConfigError {
    err(flag, env, "is required: pass the flag or set the variable")
}

impl ServeArgs {
    /// Applies the defaults and checks the rules between flags; returns the first mistake found.
    pub fn validate(&self) -> Result<ServeConfig, ConfigError> {
        let client_id = self
            .client_id
            .ok_or_else(|| missing("--client-id", "AZURE_CLIENT_ID"))?
            .to_string();
        let tenant_id = self
            .tenant_id
            .clone()
            .ok_or_else(|| missing("--tenant-id", "AZURE_TENANT_ID"))?;
        let token_file = self
            .token_file
            .clone()
            .ok_or_else(|| missing("--token-file", "AZURE_FEDERATED_TOKEN_FILE"))?;
        // --authority-host, then AZURE_AUTHORITY_HOST (clap: the flag wins over its variable),
        // then --cloud, then AZURE_ENVIRONMENT, then the public cloud.
        let authority = match (&self.authority_host, self.cloud) {
            (Some(url), _) => url.clone(),
            (None, Some(cloud)) => flags::authority(&cloud.authority())
                .map_err(|e| err("--cloud", "AZURE_ENVIRONMENT", e))?,
            (None, None) => flags::authority(DEFAULT_AUTHORITY)
                .map_err(|e| err("--authority-host", "AZURE_AUTHORITY_HOST", e))?,
        };

        let token_proxy = self.token_proxy_config()?;

        let mut addrs: Vec<SocketAddr> = Vec::new();
        for addr in self.listen.iter().flatten() {
            if !addrs.contains(addr) {
                addrs.push(*addr);
            }
        }
        let listen = if addrs.is_empty() {
            Listen {
                addrs: vec![
                    SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
                    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, DEFAULT_PORT)),
                ],
                is_default: true,
            }
        } else {
            Listen {
                addrs,
                is_default: false,
            }
        };

        let mut allowed_client_ids = vec![client_id.clone()];
        for id in self.allowed_client_ids.iter().flatten() {
            let id = id.to_string();
            if !allowed_client_ids.contains(&id) {
                allowed_client_ids.push(id);
            }
        }

        let (entra_timeout, entra_budget) = self
            .entra
            .resolve()
            .map_err(|m| err("--entra-budget", "IDENTITY_SIDECAR_ENTRA_BUDGET", m))?;

        Ok(ServeConfig {
            client_id,
            tenant_id,
            token_file,
            authority,
            listen,
            admin_listen: self.admin_listen,
            audit_log: self.audit_log,
            policy: Policy {
                allowed_client_ids,
                allowed_resources: self.allowed_resources.iter().flatten().cloned().collect(),
                identity_header: self.identity_header.clone(),
                msi_2017_expires_on: self.msi_2017_expires_on.unwrap_or_default(),
            },
            log_format: self.log_format.unwrap_or_default(),
            access_log: self.access_log,
            log_summary_interval: Some(
                self.log_summary_interval
                    .unwrap_or(Duration::from_secs(300)),
            )
            .filter(|d| !d.is_zero()),
            imds_passthrough: self.imds_passthrough,
            imds_address: self
                .imds_address
                .unwrap_or(SocketAddr::from(([169, 254, 169, 254], 80))),
            entra_timeout,
            entra_budget,
            max_cached_tokens: self.max_cached_tokens.unwrap_or(1024),
            shutdown_grace: self.shutdown_grace.unwrap_or(Duration::from_secs(10)),
            worker_threads: self.worker_threads.unwrap_or(DEFAULT_WORKER_THREADS),
            extra_ca_files: Vec::new(),
            egress: EgressProxy::from_env()
                .map_err(|e| err("proxy", "HTTPS_PROXY / HTTP_PROXY", e))?,
            token_proxy,
        })
    }

    /// The identity-binding settings and their rules (the SDKs' `CA_DATA_FILE_ERROR` and
    /// `CUSTOM_PROXY_ENV_ERROR`): one CA source at most, and none of them without the proxy.
    fn token_proxy_config(&self) -> Result<Option<TokenProxyConfig>, ConfigError> {
        if self.token_proxy_ca_file.is_some() && self.token_proxy_ca_data.is_some() {
            return Err(err(
                "--token-proxy-ca-file and --token-proxy-ca-data",
                "AZURE_KUBERNETES_CA_FILE and AZURE_KUBERNETES_CA_DATA",
                "are both set; set only one",
            ));
        }
        let Some(url) = &self.token_proxy else {
            let set: Vec<&str> = [
                (
                    self.token_proxy_sni_name.is_some(),
                    "AZURE_KUBERNETES_SNI_NAME",
                ),
                (
                    self.token_proxy_ca_file.is_some(),
                    "AZURE_KUBERNETES_CA_FILE",
                ),
                (
                    self.token_proxy_ca_data.is_some(),
                    "AZURE_KUBERNETES_CA_DATA",
                ),
            ]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
            if set.is_empty() {
                return Ok(None);
            }
            return Err(err(
                "--token-proxy",
                "AZURE_KUBERNETES_TOKEN_PROXY",
                format!(
                    "is not set, but {} {} (identity-binding settings without the token proxy)",
                    set.join(", "),
                    if set.len() == 1 { "is" } else { "are" }
                ),
            ));
        };
        let ca = match (&self.token_proxy_ca_file, &self.token_proxy_ca_data) {
            (Some(f), _) => Some(CaSource::File(f.clone())),
            (None, Some(d)) => Some(CaSource::Data(d.clone())),
            (None, None) => None,
        };
        Ok(Some(TokenProxyConfig {
            url: url.clone(),
            sni: self.token_proxy_sni_name.clone(),
            ca,
        }))
    }
}

/// Builds the request path from `cfg` and serves it on `cfg.listen`: what `serve` and `dev` run,
/// and what in-process tests start. Needs a Tokio runtime.
pub async fn start(cfg: &ServeConfig) -> Result<server::Running, String> {
    let service = Service::build(cfg)?;
    server::start(&cfg.listen, cfg.admin_listen, cfg.shutdown_grace, service)
        .await
        .map_err(|e| e.to_string())
}

pub fn run(args: ServeArgs) -> ExitCode {
    let cfg = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("identity-sidecar serve: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let _log_guard = crate::telemetry::logging::init(cfg.log_format);
    let rt = match runtime(cfg.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("identity-sidecar serve: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let running = match start(&cfg).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        log_startup(&cfg, running.local_addrs(), running.admin_addr());
        release_startup_memory();
        wait_for_signal().await;
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        running.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Hands the memory that start-up used and freed (the CA bundle's parse, the command line) back
/// to the OS. mimalloc keeps freed pages until a later allocation on the same heap purges them,
/// which an idle sidecar never makes: about 0.6 MiB of idle RSS (bench/run.py). musl's own
/// allocator returns them at once, so there is nothing to do without mimalloc.
fn release_startup_memory() {
    #[cfg(all(target_env = "musl", feature = "mimalloc"))]
    // SAFETY: mi_collect has no preconditions; it frees nothing that is in use.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

/// The runtime with `workers` worker threads (default [`crate::config::DEFAULT_WORKER_THREADS`]:
/// one, like linkerd's proxy; a sidecar should not take a node's cores, and one worker avoids
/// cross-core wake-ups that cost more than they give at sidecar loads).
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
}

fn log_startup(
    cfg: &ServeConfig,
    addrs: &[std::net::SocketAddr],
    admin: Option<std::net::SocketAddr>,
) {
    let listen: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let base = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .map_or_else(String::new, |a| format!("http://{a}"));
    tracing::info!(
        version = crate::build_info::VERSION,
        commit = crate::build_info::COMMIT,
        built = crate::build_info::BUILD_DATE,
        listen = %listen.join(","),
        admin_listen = %admin.map_or_else(|| "none".to_string(), |a| a.to_string()),
        audit_log = cfg.audit_log,
        client_id = %cfg.client_id,
        tenant_id = %cfg.tenant_id,
        authority = %cfg.authority,
        entra_egress = %cfg.egress.route(&cfg.authority),
        token_proxy = %cfg
            .token_proxy
            .as_ref()
            .map_or_else(|| "none".to_string(), |t| t.url.to_string()),
        token_file = %cfg.token_file.display(),
        allowed_client_ids = %cfg.policy.allowed_client_ids.join(","),
        app_service = if cfg.policy.identity_header.is_some() {
            "enabled"
        } else {
            "disabled (no IDENTITY_HEADER)"
        },
        msi_2017_expires_on = cfg.policy.msi_2017_expires_on.as_str(),
        "identity-sidecar serving"
    );
    tracing::info!(
        "app environment: IDENTITY_ENDPOINT={base}/msi/token IDENTITY_HEADER=<the value of this sidecar's IDENTITY_HEADER> \
         MSI_ENDPOINT={base}/msi/token MSI_SECRET=<same secret> (for SDK releases before App Service 2019-08-01) \
         AZURE_POD_IDENTITY_AUTHORITY_HOST={base}; do not give the app AZURE_FEDERATED_TOKEN_FILE"
    );
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            client_id: flags::guid("11111111-2222-3333-4444-555555555555").ok(),
            tenant_id: Some("contoso.onmicrosoft.com".into()),
            token_file: Some("/var/run/token".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_loopback_port_8000_and_public_cloud() {
        let c = args().validate().expect("valid");
        assert_eq!(c.authority.as_str(), DEFAULT_AUTHORITY);
        assert!(c.listen.is_default);
        assert_eq!(c.listen.addrs.len(), 2);
        assert!(
            c.listen
                .addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 8000)
        );
        assert_eq!(
            c.policy.allowed_client_ids,
            vec!["11111111-2222-3333-4444-555555555555"]
        );
    }

    #[test]
    fn each_cloud_sets_its_authority_unless_an_authority_is_given() {
        for (cloud, host) in [
            (Cloud::Public, "https://login.microsoftonline.com/"),
            (Cloud::UsGovernment, "https://login.microsoftonline.us/"),
            (Cloud::China, "https://login.chinacloudapi.cn/"),
        ] {
            let c = ServeArgs {
                cloud: Some(cloud),
                ..args()
            }
            .validate()
            .expect("valid");
            assert_eq!(c.authority.as_str(), host);
        }
        let c = ServeArgs {
            cloud: Some(Cloud::China),
            authority_host: flags::authority("https://login.example/").ok(),
            ..args()
        }
        .validate()
        .expect("valid");
        assert_eq!(c.authority.as_str(), "https://login.example/");
    }

    #[test]
    fn missing_settings_name_flag_and_variable() {
        let e = ServeArgs::default().validate().expect_err("missing");
        assert_eq!((e.flag, e.env), ("--client-id", "AZURE_CLIENT_ID"));
        let e = ServeArgs {
            tenant_id: None,
            ..args()
        }
        .validate()
        .expect_err("missing");
        assert!(e.to_string().contains("--tenant-id") && e.to_string().contains("AZURE_TENANT_ID"));
    }

    #[test]
    fn the_budget_must_fit_one_call() {
        let e = ServeArgs {
            entra: flags::EntraLimits {
                entra_timeout: Some(Duration::from_secs(5)),
                entra_budget: Some(Duration::from_secs(1)),
            },
            ..args()
        }
        .validate()
        .expect_err("budget < timeout");
        assert_eq!(e.flag, "--entra-budget");
    }

    #[test]
    fn blank_list_entries_are_skipped_and_repeats_merged() {
        let id = flags::guid("22222222-2222-2222-2222-222222222222").ok();
        let c = ServeArgs {
            allowed_client_ids: vec![id, None, id],
            listen: vec![None],
            ..args()
        }
        .validate()
        .expect("valid");
        assert_eq!(c.policy.allowed_client_ids.len(), 2);
        assert!(c.listen.is_default);
    }

    #[test]
    fn bad_values_are_refused_by_the_parser_naming_flag_and_variable() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let e = Cli::try_parse_from(["x", "--entra-timeout", "soon"])
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.contains("--entra-timeout (env IDENTITY_SIDECAR_ENTRA_TIMEOUT)"),
            "{e}"
        );
    }

    #[test]
    fn msi_2017_expires_on_modes() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        assert_eq!(
            args().validate().expect("valid").policy.msi_2017_expires_on,
            ExpiresOnMode::Auto
        );
        let parsed = Cli::try_parse_from(["x", "--msi-2017-expires-on", "DATE"]).expect("parsed");
        assert_eq!(parsed.serve.msi_2017_expires_on, Some(ExpiresOnMode::Date));
        let c = ServeArgs {
            msi_2017_expires_on: parsed.serve.msi_2017_expires_on,
            ..args()
        };
        assert_eq!(
            c.validate().expect("valid").policy.msi_2017_expires_on,
            ExpiresOnMode::Date
        );
        let e = Cli::try_parse_from(["x", "--msi-2017-expires-on", "unix"])
            .err()
            .expect("refused");
        assert_eq!(e.exit_code(), i32::from(EXIT_CONFIG));
        let e = e.to_string();
        assert!(
            e.contains("--msi-2017-expires-on (env IDENTITY_SIDECAR_MSI_2017_EXPIRES_ON)")
                && e.contains("auto, epoch, date"),
            "{e}"
        );
    }
}
