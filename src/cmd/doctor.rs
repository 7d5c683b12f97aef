//! `identity-sidecar doctor`: checks a federation setup step by step with the same configuration
//! as `serve` (flags or the webhook's environment) and explains each failure with its fix.
//!
//! Steps: configuration; the federated token (issuer, subject, audience, expiry); the authority's
//! discovery document; one real token exchange. Exit 0 only when the exchange works.
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::serve::ServeArgs;
use crate::cloud::Cloud;
use crate::config::ServeConfig;
use crate::core::egress::{ProxyCheck, check_proxy};
use crate::core::entra::{EntraClient, EntraError, error_chain};
use crate::core::federated::{FederatedToken, SourceError, read_token};
use crate::core::token_proxy::{CaSource, TokenProxyConfig};
use crate::telemetry::metrics::Metrics;

const EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

#[derive(clap::Args, Debug, Clone)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub serve: ServeArgs,

    /// Resource to request in the test exchange.
    #[arg(long, default_value = "https://management.azure.com")]
    pub resource: String,
}

struct Report {
    failed: bool,
}

impl Report {
    fn ok(&self, what: &str) {
        println!("  ok    {what}");
    }
    fn warn(&self, what: &str) {
        println!("  warn  {what}");
    }
    fn fail(&mut self, what: &str, fix: &str) {
        self.failed = true;
        println!("  FAIL  {what}");
        for line in fix.lines() {
            println!("        {line}");
        }
    }
}

const CONFIG_FIX: &str = "Set the flag or the variable; in a pod the Azure Workload Identity \
                          webhook injects AZURE_CLIENT_ID, AZURE_TENANT_ID and \
                          AZURE_FEDERATED_TOKEN_FILE.";

/// Step 1 failed already while the flags were parsed: report it as the step's failure (exit 1).
pub fn malformed_setting(e: &clap::Error) -> ExitCode {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    let message = first.strip_prefix("error: ").unwrap_or(first);
    let mut r = Report { failed: false };
    println!("identity-sidecar doctor");
    println!("1. configuration");
    r.fail(message, CONFIG_FIX);
    ExitCode::FAILURE
}

pub fn run(args: DoctorArgs) -> ExitCode {
    let mut r = Report { failed: false };
    println!("identity-sidecar doctor");
    println!("1. configuration");
    let cfg = match args.serve.validate() {
        Ok(c) => {
            r.ok(&format!(
                "client id {}, tenant {}, authority {} ({})",
                c.client_id,
                c.tenant_id,
                c.authority,
                Cloud::of_authority(&c.authority)
                    .map_or_else(|| "not a known cloud's".to_string(), |k| k.to_string())
            ));
            println!(
                "        egress   Entra ID ({}): {}",
                c.authority.host_str().unwrap_or_default(),
                c.egress.route(&c.authority)
            );
            if let Some(tp) = &c.token_proxy {
                println!(
                    "        binding  token proxy {} (TLS name {}, CA {}); egress: {}",
                    tp.url,
                    tp.tls_name(),
                    match &tp.ca {
                        Some(CaSource::File(f)) => format!("file {}", f.display()),
                        Some(CaSource::Data(_)) => "from AZURE_KUBERNETES_CA_DATA".into(),
                        None => "system roots".into(),
                    },
                    c.egress.route(&tp.url)
                );
            }
            c
        }
        Err(e) => {
            r.fail(&e.to_string(), CONFIG_FIX);
            return ExitCode::FAILURE;
        }
    };

    println!("2. federated token ({})", cfg.token_file.display());
    let token = match read_token(&cfg.token_file) {
        Ok(t) => t,
        Err(e) => {
            r.fail(&e.to_string(), token_file_fix(&e));
            return ExitCode::FAILURE;
        }
    };
    let c = &token.claims;
    let left = token.seconds_left();
    println!("        issuer   {}", c.iss);
    println!("        subject  {}", c.sub);
    println!("        audience {}", c.aud.join(", "));
    println!(
        "        expires  {} ({})",
        c.exp,
        if left > 0 {
            format!("in {left}s")
        } else {
            format!("{}s ago", -left)
        }
    );
    if left <= 0 {
        r.fail(
            "the federated token has expired",
            "Kubelet rotates projected tokens at 80% of their life; an expired file means it is \
             no longer refreshed (a copied file? a stopped kubelet?).",
        );
        return ExitCode::FAILURE;
    }
    r.ok("the file holds an unexpired JWT");
    if let Some(advice) = crate::cloud::issuer_advice(&cfg.authority, &c.iss) {
        r.warn(&advice);
    }
    if !c.aud.iter().any(|a| a == EXCHANGE_AUDIENCE) {
        r.warn(&format!(
            "audience is not {EXCHANGE_AUDIENCE}: Entra ID will refuse it unless the federated \
             credential names this audience; set `audience: {EXCHANGE_AUDIENCE}` on the projected \
             volume"
        ));
    }

    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            r.fail(&format!("cannot start the runtime: {e}"), "");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        match &cfg.token_proxy {
            // Identity bindings: the token request goes to the token proxy, not the authority.
            Some(tp) => check_token_proxy(&mut r, &cfg, tp).await,
            None => check_authority(&mut r, &cfg).await,
        }
        if !r.failed {
            check_exchange(&mut r, &cfg, &token, &args.resource).await;
        }
    });
    if r.failed {
        println!("\nnot working: fix the FAIL above and run doctor again");
        ExitCode::FAILURE
    } else {
        println!("\nall good: identity-sidecar serve will work with this configuration");
        ExitCode::SUCCESS
    }
}

/// Step 3: the authority's discovery document for the tenant answers.
async fn check_authority(r: &mut Report, cfg: &ServeConfig) {
    println!("3. authority");
    let discovery = cfg.authority.join(&format!(
        "{}/v2.0/.well-known/openid-configuration",
        cfg.tenant_id
    ));
    let http = crate::core::tls::client_config(&cfg.extra_ca_files).and_then(|tls| {
        cfg.egress
            .apply(reqwest::Client::builder())
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())
    });
    let (url, http) = match (discovery, http) {
        (Ok(url), Ok(http)) => (url, http),
        (Err(e), _) => {
            return r.fail(
                &format!("bad authority URL: {e}"),
                "Fix --authority-host / AZURE_AUTHORITY_HOST.",
            );
        }
        (_, Err(e)) => {
            return r.fail(
                &format!("TLS setup failed: {e}"),
                "Fix SSL_CERT_FILE or the system CA bundle.",
            );
        }
    };
    match http.get(url.clone()).send().await {
        Ok(resp) if resp.status().is_success() => r.ok(&format!("{url} answers")),
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            if body.contains("90002") {
                r.fail(
                    &format!(
                        "Entra ID does not know tenant {:?} (AADSTS90002)",
                        cfg.tenant_id
                    ),
                    "Check --tenant-id / AZURE_TENANT_ID: use the directory (tenant) id of the \
                     identity's tenant.",
                );
            } else {
                r.warn(&format!(
                    "{url} answered HTTP {status}; trying the exchange anyway"
                ));
            }
        }
        Err(e) => {
            if let Some(proxy) = cfg.egress.proxy_for(&url)
                && let ProxyCheck::Failed(answer) = check_proxy(
                    proxy,
                    url.host_str().unwrap_or_default(),
                    url.port_or_known_default().unwrap_or(443),
                    Duration::from_secs(5),
                )
                .await
            {
                return r.fail(
                    &format!(
                        "cannot reach {} through the proxy {proxy} ({}): {answer}",
                        cfg.authority, proxy.source
                    ),
                    &format!(
                        "The egress proxy refused or failed. Check {} (host, port, and \
                         user:password in the URL if the proxy asks for them: 407), or add the \
                         authority's host to NO_PROXY if it must be reached directly.",
                        proxy.source
                    ),
                );
            }
            r.fail(
                &format!("cannot reach {}: {}", cfg.authority, error_chain(&e)),
                "Check DNS, egress NetworkPolicies and proxies (HTTPS_PROXY, NO_PROXY) from this \
                 pod to the authority; for a private CA set SSL_CERT_FILE.",
            )
        }
    }
}

/// Step 3 with identity bindings: the token proxy answers TLS for its SNI name with a certificate
/// the configured CA signed. Each failure gets its own explanation.
async fn check_token_proxy(r: &mut Report, cfg: &ServeConfig, tp: &TokenProxyConfig) {
    use rustls::{CertificateError, Error as TlsError};
    println!("3. token proxy {} (identity bindings)", tp.url);
    let name = tp.tls_name();
    let host = tp.url.host_str().unwrap_or_default().to_string();
    let port = tp.port();
    let pem = match &tp.ca {
        None => Vec::new(),
        Some(CaSource::Data(d)) => d.as_bytes().to_vec(),
        Some(CaSource::File(f)) => match std::fs::read(f) {
            Ok(p) if !p.iter().all(u8::is_ascii_whitespace) => p,
            Ok(_) => {
                return r.fail(
                    &format!("AZURE_KUBERNETES_CA_FILE {} is empty", f.display()),
                    "The file must hold the token proxy's CA (PEM); in a pod the webhook projects \
                     it. An empty file is only expected for an instant during a rotation.",
                );
            }
            Err(e) => {
                return r.fail(
                    &format!("cannot read AZURE_KUBERNETES_CA_FILE {}: {e}", f.display()),
                    "Mount the token proxy's CA into this container and point \
                     AZURE_KUBERNETES_CA_FILE at it.",
                );
            }
        },
    };
    let tls = if pem.is_empty() {
        crate::core::tls::client_config(&cfg.extra_ca_files)
    } else {
        crate::core::token_proxy::tls_for_ca(&pem)
    };
    let tls = match tls {
        Ok(t) => t,
        Err(e) => {
            return r.fail(
                &format!("the token proxy's CA is not usable: {e}"),
                "AZURE_KUBERNETES_CA_FILE / AZURE_KUBERNETES_CA_DATA must hold PEM CA certificates.",
            );
        }
    };
    let Ok(server_name) = rustls_pki_types::ServerName::try_from(name.clone()) else {
        return r.fail(
            &format!("the TLS name {name:?} is not a DNS name or IP address"),
            "Fix AZURE_KUBERNETES_SNI_NAME.",
        );
    };
    let limit = Duration::from_secs(5);
    let tcp = match tokio::time::timeout(
        limit,
        tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)),
    )
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            return r.fail(
                &format!("cannot connect to the token proxy {host}:{port}: {e}"),
                "The token proxy must be reachable from this pod: check AZURE_KUBERNETES_TOKEN_PROXY \
                 (the webhook injects it) and NetworkPolicies.",
            );
        }
        Err(_) => {
            return r.fail(
                &format!("no TCP connection to the token proxy {host}:{port} within 5s"),
                "Check AZURE_KUBERNETES_TOKEN_PROXY and NetworkPolicies.",
            );
        }
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let handshake = tokio::time::timeout(limit, connector.connect(server_name, tcp)).await;
    let e = match handshake {
        Ok(Ok(_)) => {
            return r.ok(&format!(
                "TLS to {host}:{port} with SNI {name}: the certificate is valid for {name} and \
                 signed by the trusted CA"
            ));
        }
        Ok(Err(e)) => e,
        Err(_) => {
            return r.fail(
                &format!(
                    "the token proxy {host}:{port} did not finish the TLS handshake within 5s"
                ),
                "Check that AZURE_KUBERNETES_TOKEN_PROXY names the token proxy's TLS port.",
            );
        }
    };
    let tls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>());
    let (what, fix) = match tls_error {
        Some(TlsError::InvalidCertificate(CertificateError::UnknownIssuer)) => (
            "the token proxy's certificate is not signed by the trusted CA".to_string(),
            "The CA in AZURE_KUBERNETES_CA_FILE / AZURE_KUBERNETES_CA_DATA did not sign the \
             proxy's certificate: a stale CA after a rotation, or the wrong ConfigMap / \
             ClusterTrustBundle."
                .to_string(),
        ),
        Some(TlsError::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => (
            format!("the token proxy's certificate is not valid for the TLS name {name}"),
            "Set AZURE_KUBERNETES_SNI_NAME to the name the token proxy's certificate carries (the \
             webhook injects it)."
                .to_string(),
        ),
        Some(TlsError::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => (
            "the token proxy's certificate has expired".to_string(),
            "The token proxy serves an expired certificate, or this node's clock is wrong."
                .to_string(),
        ),
        Some(TlsError::AlertReceived(alert)) => (
            format!("the token proxy refused the TLS handshake for SNI {name} (alert {alert:?})"),
            format!(
                "The token proxy serves only its own name and {name} is not it: set \
                 AZURE_KUBERNETES_SNI_NAME to the name the webhook injects{}.",
                if tp.sni.is_none() {
                    " (it is unset, so the proxy's host was sent)"
                } else {
                    ""
                }
            ),
        ),
        _ => (
            format!("TLS to the token proxy {host}:{port} failed: {e}"),
            "Check AZURE_KUBERNETES_TOKEN_PROXY, AZURE_KUBERNETES_SNI_NAME and the CA.".to_string(),
        ),
    };
    r.fail(&what, &fix);
}

/// Step 4: one real exchange of the federated token.
async fn check_exchange(r: &mut Report, cfg: &ServeConfig, token: &FederatedToken, resource: &str) {
    match &cfg.token_proxy {
        Some(tp) => println!(
            "4. token exchange (resource {resource}) through the token proxy {}",
            tp.url
        ),
        None => println!("4. token exchange (resource {resource})"),
    }
    let entra = match EntraClient::new(
        &cfg.authority,
        &cfg.tenant_id,
        cfg.entra_timeout,
        cfg.entra_timeout,
        cfg.outbound(),
        Arc::new(Metrics::new()),
    ) {
        Ok(e) => e,
        Err(e) => return r.fail(&e, ""),
    };
    let scope = crate::core::entra::scope_for(resource);
    let c = &token.claims;
    match entra.exchange(&cfg.client_id, &scope, &token.token).await {
        Ok(t) => r.ok(&format!(
            "Entra ID issued a token for {scope} (valid {}s)",
            t.expires_in
        )),
        Err(e) => explain(r, &e, &cfg.client_id, &cfg.tenant_id, &c.iss, &c.sub),
    }
}

fn explain(r: &mut Report, e: &EntraError, client_id: &str, tenant: &str, iss: &str, sub: &str) {
    let EntraError::Rejected {
        codes,
        error,
        description,
        ..
    } = e
    else {
        r.fail(
            &e.to_string(),
            "Entra ID did not answer usefully; check connectivity and retry later.",
        );
        return;
    };
    let code = codes
        .first()
        .copied()
        .unwrap_or_else(|| aadsts(description));
    let first_line = description.lines().next().unwrap_or(description);
    let fix = match code {
        70021 | 700211 | 700212 | 700213 | 7002138 => format!(
            "No federated credential matches this token (AADSTS{code}).\n{}",
            trust_commands(client_id, iss, sub)
        ),
        700024 => "The federated token is outside its valid time range: the file is stale or the \
                   clocks disagree. Check that kubelet refreshes the projected volume and that the \
                   node's clock is right."
            .into(),
        700016 => format!(
            "Entra ID has no application {client_id} in tenant {tenant}: check --client-id / \
             AZURE_CLIENT_ID (the identity's client id, not its object id) and --tenant-id."
        ),
        90002 => {
            format!("Entra ID does not know tenant {tenant}: check --tenant-id / AZURE_TENANT_ID.")
        }
        50027 => {
            "Entra ID says the token is not a valid JWT: the token file holds something other \
                  than the projected service-account token."
                .into()
        }
        50166 => format!(
            "Entra ID could not fetch the issuer's discovery document or keys from {iss}: the \
             cluster's OIDC issuer must be publicly reachable (AKS: --enable-oidc-issuer)."
        ),
        500011 | 70011 => {
            "The resource or scope is not valid in this tenant: check the --resource value.".into()
        }
        _ => "See the AADSTS code in Entra ID's error reference.".into(),
    };
    r.fail(
        &format!("Entra ID refused the exchange: {error}: {first_line}"),
        &fix,
    );
}

/// What Entra ID must trust, and the `az` commands that make it so.
fn trust_commands(client_id: &str, iss: &str, sub: &str) -> String {
    let aud = EXCHANGE_AUDIENCE;
    format!(
        "Entra ID must trust this issuer and subject for client id {client_id}:\n  \
         issuer:   {iss}\n  subject:  {sub}\n  audience: {aud}\n\
         For a user-assigned managed identity:\n  \
         az identity federated-credential create --name identity-sidecar \\\n    \
         --identity-name <IDENTITY-NAME> --resource-group <RESOURCE-GROUP> \\\n    \
         --issuer '{iss}' --subject '{sub}' --audiences {aud}\n\
         For an app registration:\n  \
         az ad app federated-credential create --id {client_id} \\\n    \
         --parameters '{{\"name\":\"identity-sidecar\",\"issuer\":\"{iss}\",\
         \"subject\":\"{sub}\",\"audiences\":[\"{aud}\"]}}'"
    )
}

/// The fix for an unusable federated-token file.
fn token_file_fix(e: &SourceError) -> &'static str {
    match e {
        SourceError::Missing(_) => {
            "The file is not there. Mount a projected serviceAccountToken volume (audience \
             api://AzureADTokenExchange) into this container at that path, or point --token-file / \
             AZURE_FEDERATED_TOKEN_FILE at it."
        }
        SourceError::Unreadable { .. } => {
            "The file exists but cannot be read: check the container's runAsUser / fsGroup and the \
             volume's defaultMode."
        }
        SourceError::Empty(_) | SourceError::Malformed { .. } => {
            "The file must hold the service-account JWT that kubelet projects; it holds something \
             else."
        }
        SourceError::Expired { .. } => {
            "Kubelet rotates projected tokens at 80% of their life; an expired file means the \
             volume is no longer refreshed (pod evicted? a copied file?)."
        }
    }
}

fn aadsts(description: &str) -> i64 {
    description
        .strip_prefix("AADSTS")
        .map(|s| {
            s.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}
