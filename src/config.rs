//! `serve` configuration: flags and the environment the Azure Workload Identity webhook injects,
//! validated once at start. Every error names both the flag and its variable, and the binary
//! exits with code 2 on any of them, so a misconfigured pod fails loudly before it serves.
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;

use crate::core::secret::Secret;

/// Flags of `identity-sidecar serve`. Each flag also reads the variable named after `env`; a flag
/// given on the command line wins over the variable.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Client id (GUID) of the app registration or user-assigned identity that trusts the
    /// federated token. Also the identity used when a request names none.
    #[arg(long, env = "AZURE_CLIENT_ID", value_name = "GUID")]
    pub client_id: Option<String>,

    /// Entra ID tenant id (GUID or domain name).
    #[arg(long, env = "AZURE_TENANT_ID", value_name = "TENANT")]
    pub tenant_id: Option<String>,

    /// File holding the federated service-account token (kubelet's projected token).
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Entra ID authority. Must be https://, except http:// for loopback hosts (tests, local dev).
    /// [default: https://login.microsoftonline.com/]
    #[arg(long, env = "AZURE_AUTHORITY_HOST", value_name = "URL")]
    pub authority_host: Option<String>,

    /// Address to serve on; repeat the flag or give a comma list in the variable.
    /// [default: 127.0.0.1:8000 and [::1]:8000 where IPv6 loopback exists]
    #[arg(
        long = "listen",
        env = "IDENTITY_SIDECAR_LISTEN",
        value_delimiter = ',',
        value_name = "ADDR"
    )]
    pub listen: Vec<String>,

    /// Secret that App Service clients must send (`X-IDENTITY-HEADER`, or `secret` for
    /// 2017-09-01). Unset: the App Service endpoints refuse every request.
    #[arg(
        long,
        env = "IDENTITY_HEADER",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub identity_header: Option<String>,

    /// Client ids that requests may select (comma list). The --client-id is always allowed.
    /// [default: only the --client-id]
    #[arg(
        long,
        env = "IDENTITY_SIDECAR_ALLOWED_CLIENT_IDS",
        value_delimiter = ',',
        value_name = "GUID"
    )]
    pub allowed_client_ids: Vec<String>,

    /// Resources that tokens may be issued for (comma list). An entry ending in `*` is a prefix.
    /// Other resources get a 400 naming the rule, before any call to Entra ID. [default: any]
    #[arg(
        long,
        env = "IDENTITY_SIDECAR_ALLOWED_RESOURCES",
        value_delimiter = ',',
        value_name = "RESOURCE"
    )]
    pub allowed_resources: Vec<String>,

    /// Log format: `text` for people, `json` for clusters. [default: text]
    #[arg(long, env = "IDENTITY_SIDECAR_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// Forward other `/metadata/...` paths (instance metadata) to the real IMDS instead of
    /// answering 404. Needs the sidecar's uid to be exempt from the IMDS redirect.
    #[arg(long, env = "IDENTITY_SIDECAR_IMDS_PASSTHROUGH")]
    pub imds_passthrough: bool,

    /// Where the real IMDS lives, for --imds-passthrough. [default: 169.254.169.254:80]
    #[arg(
        long,
        env = "IDENTITY_SIDECAR_IMDS_ADDRESS",
        value_name = "ADDR",
        hide_short_help = true
    )]
    pub imds_address: Option<String>,

    /// Time limit of one call to Entra ID (connect included). [default: 10s]
    #[arg(long, env = "IDENTITY_SIDECAR_ENTRA_TIMEOUT", value_name = "DURATION")]
    pub entra_timeout: Option<String>,

    /// Total time a token request may spend on Entra ID, retries included; after it the caller
    /// gets 503 with Retry-After. [default: 20s]
    #[arg(long, env = "IDENTITY_SIDECAR_ENTRA_BUDGET", value_name = "DURATION")]
    pub entra_budget: Option<String>,

    /// Most (client id, scope) pairs kept in the token cache. [default: 1024]
    #[arg(long, env = "IDENTITY_SIDECAR_MAX_CACHED_TOKENS", value_name = "N")]
    pub max_cached_tokens: Option<String>,

    /// Worker threads serving requests. One is plenty for a sidecar (about 100k requests/s on a
    /// modern core); raise it only for unusual loads. [default: 1]
    #[arg(long, env = "IDENTITY_SIDECAR_WORKER_THREADS", value_name = "N")]
    pub worker_threads: Option<String>,

    /// How long in-flight requests may run after SIGTERM before the process exits. [default: 10s]
    #[arg(long, env = "IDENTITY_SIDECAR_SHUTDOWN_GRACE", value_name = "DURATION")]
    pub shutdown_grace: Option<String>,
}

/// The validated configuration `serve` runs on.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub client_id: String,
    pub tenant_id: String,
    pub token_file: PathBuf,
    pub authority: Url,
    pub listen: Vec<SocketAddr>,
    /// True when `listen` came from the default, so a missing IPv6 loopback is not an error.
    pub listen_is_default: bool,
    pub identity_header: Option<Secret>,
    /// Lower-cased client ids a request may select; the first is the default `client_id`.
    pub allowed_client_ids: Vec<String>,
    pub allowed_resources: Vec<ResourceRule>,
    pub log_format: LogFormat,
    pub imds_passthrough: bool,
    pub imds_address: SocketAddr,
    pub entra_timeout: Duration,
    pub entra_budget: Duration,
    pub max_cached_tokens: usize,
    pub shutdown_grace: Duration,
    pub worker_threads: usize,
    /// PEM bundles trusted for Entra ID besides the system roots and `SSL_CERT_FILE` (used by
    /// `dev` for the mock's CA; not a flag).
    pub extra_ca_files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// One `--allowed-resources` entry: an exact resource, or a prefix when written with a final `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceRule {
    Exact(String),
    Prefix(String),
}

impl ResourceRule {
    pub fn matches(&self, resource: &str) -> bool {
        match self {
            ResourceRule::Exact(r) => r == resource,
            ResourceRule::Prefix(p) => resource.starts_with(p.as_str()),
        }
    }
}

impl std::fmt::Display for ResourceRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResourceRule::Exact(r) => f.write_str(r),
            ResourceRule::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// A configuration mistake, reported as `--flag / VARIABLE: message`.
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

pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com/";
pub const DEFAULT_PORT: u16 = 8000;
pub const DEFAULT_WORKER_THREADS: usize = 1;

impl ServeArgs {
    /// Checks every setting and returns the first mistake found.
    pub fn validate(&self) -> Result<ServeConfig, ConfigError> {
        let client_id = required(&self.client_id, "--client-id", "AZURE_CLIENT_ID")?;
        let client_id = parse_guid(client_id).ok_or_else(|| {
            err(
                "--client-id",
                "AZURE_CLIENT_ID",
                format!("{client_id:?} is not a GUID"),
            )
        })?;
        let tenant_id = required(&self.tenant_id, "--tenant-id", "AZURE_TENANT_ID")?.to_string();
        if !is_tenant(&tenant_id) {
            return Err(err(
                "--tenant-id",
                "AZURE_TENANT_ID",
                format!("{tenant_id:?} is neither a GUID nor a domain name"),
            ));
        }
        let token_file = match &self.token_file {
            Some(p) if !p.as_os_str().is_empty() => p.clone(),
            _ => return Err(missing("--token-file", "AZURE_FEDERATED_TOKEN_FILE")),
        };
        let authority =
            parse_authority(self.authority_host.as_deref().unwrap_or(DEFAULT_AUTHORITY))?;

        let listen_is_default = self.listen.iter().all(|s| s.trim().is_empty());
        let listen = if listen_is_default {
            vec![
                SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, DEFAULT_PORT)),
            ]
        } else {
            let mut out = Vec::new();
            for s in self
                .listen
                .iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
            {
                let addr = s.parse::<SocketAddr>().map_err(|_| {
                    err(
                        "--listen",
                        "IDENTITY_SIDECAR_LISTEN",
                        format!(
                            "{s:?} is not an address with a port, like 127.0.0.1:8000 or [::1]:8000"
                        ),
                    )
                })?;
                if !out.contains(&addr) {
                    out.push(addr);
                }
            }
            out
        };

        let identity_header = match self.identity_header.as_deref() {
            None => None,
            Some("") => {
                return Err(err(
                    "--identity-header",
                    "IDENTITY_HEADER",
                    "is set but empty",
                ));
            }
            Some(s) if s.bytes().any(|b| !(0x21..=0x7e).contains(&b)) => {
                return Err(err(
                    "--identity-header",
                    "IDENTITY_HEADER",
                    "must be printable ASCII without spaces (it travels in an HTTP header)",
                ));
            }
            Some(s) => Some(Secret::new(s)),
        };

        let mut allowed_client_ids = vec![client_id.clone()];
        for s in self
            .allowed_client_ids
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
        {
            let id = parse_guid(s).ok_or_else(|| {
                err(
                    "--allowed-client-ids",
                    "IDENTITY_SIDECAR_ALLOWED_CLIENT_IDS",
                    format!("{s:?} is not a GUID"),
                )
            })?;
            if !allowed_client_ids.contains(&id) {
                allowed_client_ids.push(id);
            }
        }

        let mut allowed_resources = Vec::new();
        for s in self
            .allowed_resources
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
        {
            allowed_resources.push(match s.strip_suffix('*') {
                Some("") => {
                    return Err(err(
                        "--allowed-resources",
                        "IDENTITY_SIDECAR_ALLOWED_RESOURCES",
                        "a bare `*` allows everything; leave the setting out instead",
                    ));
                }
                Some(p) => ResourceRule::Prefix(p.to_string()),
                None => ResourceRule::Exact(s.to_string()),
            });
        }

        let log_format = match self.log_format.as_deref().map(str::trim) {
            None | Some("") | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(err(
                    "--log-format",
                    "IDENTITY_SIDECAR_LOG_FORMAT",
                    format!("{other:?} is not one of: text, json"),
                ));
            }
        };

        let imds_address = match self.imds_address.as_deref() {
            None => SocketAddr::from(([169, 254, 169, 254], 80)),
            Some(s) => s.parse().map_err(|_| {
                err(
                    "--imds-address",
                    "IDENTITY_SIDECAR_IMDS_ADDRESS",
                    format!("{s:?} is not an address with a port"),
                )
            })?,
        };

        let entra_timeout = duration_or(
            &self.entra_timeout,
            Duration::from_secs(10),
            "--entra-timeout",
            "IDENTITY_SIDECAR_ENTRA_TIMEOUT",
        )?;
        let entra_budget = duration_or(
            &self.entra_budget,
            Duration::from_secs(20),
            "--entra-budget",
            "IDENTITY_SIDECAR_ENTRA_BUDGET",
        )?;
        if entra_budget < entra_timeout {
            return Err(err(
                "--entra-budget",
                "IDENTITY_SIDECAR_ENTRA_BUDGET",
                "must be at least --entra-timeout (one whole call must fit)",
            ));
        }
        let max_cached_tokens = match self.max_cached_tokens.as_deref().map(str::trim) {
            None => 1024,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(err(
                        "--max-cached-tokens",
                        "IDENTITY_SIDECAR_MAX_CACHED_TOKENS",
                        format!("{s:?} is not a positive whole number"),
                    ));
                }
            },
        };
        let shutdown_grace = duration_or(
            &self.shutdown_grace,
            Duration::from_secs(10),
            "--shutdown-grace",
            "IDENTITY_SIDECAR_SHUTDOWN_GRACE",
        )?;

        let worker_threads = match self.worker_threads.as_deref().map(str::trim) {
            None => DEFAULT_WORKER_THREADS,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=64).contains(&n) => n,
                _ => {
                    return Err(err(
                        "--worker-threads",
                        "IDENTITY_SIDECAR_WORKER_THREADS",
                        format!("{s:?} is not a whole number from 1 to 64"),
                    ));
                }
            },
        };

        Ok(ServeConfig {
            client_id,
            tenant_id,
            token_file,
            authority,
            listen,
            listen_is_default,
            identity_header,
            allowed_client_ids,
            allowed_resources,
            log_format,
            imds_passthrough: self.imds_passthrough,
            imds_address,
            entra_timeout,
            entra_budget,
            max_cached_tokens,
            shutdown_grace,
            worker_threads,
            extra_ca_files: Vec::new(),
        })
    }
}

fn missing(flag: &'static str, env: &'static str) -> ConfigError {
    err(flag, env, "is required: pass the flag or set the variable")
}

fn required<'a>(
    v: &'a Option<String>,
    flag: &'static str,
    env: &'static str,
) -> Result<&'a str, ConfigError> {
    match v.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(missing(flag, env)),
    }
}

/// Accepts the 8-4-4-4-12 hex form (optionally in braces) and returns it lower-cased.
pub fn parse_guid(s: &str) -> Option<String> {
    let s = s.trim();
    let s = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(s);
    let groups: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    if groups.len() != 5
        || groups
            .iter()
            .zip(lens)
            .any(|(g, n)| g.len() != n || !g.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(s.to_ascii_lowercase())
}

fn is_tenant(s: &str) -> bool {
    parse_guid(s).is_some()
        || (!s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            && !s.starts_with(['.', '-']))
}

/// Parses the authority; `http://` only for loopback hosts, and always with a trailing slash so
/// that joining `{tenant}/oauth2/v2.0/token` keeps any path it has.
pub fn parse_authority(s: &str) -> Result<Url, ConfigError> {
    const F: &str = "--authority-host";
    const E: &str = "AZURE_AUTHORITY_HOST";
    let mut url =
        Url::parse(s.trim()).map_err(|e| err(F, E, format!("{s:?} is not a URL: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(&url) => {}
        "http" => {
            return Err(err(
                F,
                E,
                format!(
                    "{s:?} uses http://, which is only accepted for loopback hosts; use https://"
                ),
            ));
        }
        other => {
            return Err(err(
                F,
                E,
                format!("{s:?} has scheme {other:?}; use https://"),
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(err(F, E, format!("{s:?} has no host")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(err(
            F,
            E,
            format!("{s:?} must not have a query or fragment"),
        ));
    }
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

fn duration_or(
    v: &Option<String>,
    default: Duration,
    flag: &'static str,
    env: &'static str,
) -> Result<Duration, ConfigError> {
    match v.as_deref() {
        None => Ok(default),
        Some(s) => parse_duration(s).ok_or_else(|| {
            err(
                flag,
                env,
                format!("{s:?} is not a positive duration like 500ms, 10s, 2m or 1h"),
            )
        }),
    }
}

/// Parses `500ms`, `10s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs > 0.0 && secs < 1e9).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            client_id: Some("11111111-2222-3333-4444-555555555555".into()),
            tenant_id: Some("contoso.onmicrosoft.com".into()),
            token_file: Some("/var/run/token".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_loopback_port_8000_and_public_cloud() {
        let c = args().validate().expect("valid");
        assert_eq!(c.authority.as_str(), DEFAULT_AUTHORITY);
        assert_eq!(c.listen.len(), 2);
        assert!(
            c.listen
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 8000)
        );
        assert_eq!(
            c.allowed_client_ids,
            vec!["11111111-2222-3333-4444-555555555555"]
        );
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
    fn http_authority_only_for_loopback() {
        for ok in [
            "http://127.0.0.1:9/",
            "http://localhost:8080",
            "http://[::1]:1/x",
            "https://login.example/",
        ] {
            assert!(parse_authority(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://login.microsoftonline.com/",
            "ftp://x/",
            "not a url",
            "https://x/?a=b",
        ] {
            assert!(parse_authority(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_authority("http://localhost:1/base")
                .expect("ok")
                .path(),
            "/base/"
        );
    }

    #[test]
    fn guids_and_durations() {
        assert_eq!(
            parse_guid("{AAAAAAAA-bbbb-cccc-dddd-eeeeeeeeeeee}").as_deref(),
            Some("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
        );
        assert!(parse_guid("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeee").is_none());
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert!(
            parse_duration("-1s").is_none()
                && parse_duration("0").is_none()
                && parse_duration("1d").is_none()
        );
    }

    #[test]
    fn resource_rules() {
        let c = ServeArgs {
            allowed_resources: vec!["https://vault.azure.net".into(), "https://storage.*".into()],
            ..args()
        }
        .validate()
        .expect("valid");
        assert!(c.allowed_resources[0].matches("https://vault.azure.net"));
        assert!(!c.allowed_resources[0].matches("https://vault.azure.net/"));
        assert!(c.allowed_resources[1].matches("https://storage.azure.com/"));
    }
}
