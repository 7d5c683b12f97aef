//! `identity-sidecar-node`: the node agent (DaemonSet) of node mode. One process per node serves
//! every opted-in pod of its node inside the pod's own network namespace, so the socket that
//! accepted a connection is the pod's identity: no source-IP lookup, no IP-reuse race, no
//! dependence on the CNI (docs/node-mode.md).
//!
//! - [`pod`]: which pods are served and with which identity (pure);
//! - [`netns`]: a pod's namespace from the process table's cgroups, and a listener bound in it;
//! - [`agent`]: the pod and ServiceAccount reflectors and the reconciler of listeners;
//! - [`metrics`]: the agent's own series (pods served, listener binds, unserved pods);
//! - this file: the command line and the agent's own health and metrics endpoint.
//!
//! A binary of its own (like the webhook), not a subcommand of `identity-sidecar`: the per-pod
//! sidecar then links none of the Kubernetes client, kubeconfig parser or namespace code (as a
//! subcommand they made the sidecar's static binary 8.5 % larger, docs/node-mode.md). Each
//! pod is served by the same request path `serve` uses ([`crate::service`], [`crate::server`],
//! [`crate::core`]), with a policy, federated token and cache of its own; nothing is ever
//! forwarded to the real IMDS.
pub mod agent;
pub mod metrics;
pub mod netns;
pub mod pod;

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use reqwest::Url;

use crate::cmd::flags::{self, Checked};
use crate::config::DEFAULT_AUTHORITY;
use crate::core::egress::EgressProxy;
use crate::telemetry::logging::LogFormat;
use agent::{Agent, AgentConfig, Shared};

/// Exit code for configuration mistakes (as `identity-sidecar serve`).
pub const EXIT_CONFIG: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "identity-sidecar-node",
    version = crate::build_info::version_line(),
    about = "Node agent: serves Azure IMDS inside the network namespace of every opted-in pod of its node"
)]
pub struct NodeArgs {
    /// This node's name (the downward API's spec.nodeName): only pods scheduled here are served.
    #[arg(long, env = "NODE_NAME", value_name = "NAME", value_parser = Checked(flags::non_blank))]
    pub node_name: String,

    /// The kubelet's root directory, where it keeps each pod's projected token.
    #[arg(long, env = "IDENTITY_SIDECAR_KUBELET_ROOT_DIR", value_name = "PATH", default_value = "/var/lib/kubelet", value_parser = Checked(flags::path))]
    pub kubelet_root_dir: PathBuf,

    /// The process table to find pods' network namespaces in (the host's, with hostPID).
    #[arg(long, env = "IDENTITY_SIDECAR_PROC_DIR", value_name = "PATH", default_value = "/proc", value_parser = Checked(flags::path))]
    pub proc_dir: PathBuf,

    /// Tenant of pods whose ServiceAccount and annotations name none.
    #[arg(long, env = "AZURE_TENANT_ID", value_name = "TENANT", value_parser = Checked(flags::tenant))]
    pub tenant_id: Option<String>,

    /// Entra ID authority. Must be https://, except http:// for loopback hosts (tests).
    /// [default: https://login.microsoftonline.com/]
    #[arg(long, env = "AZURE_AUTHORITY_HOST", value_name = "URL", value_parser = Checked(flags::authority))]
    pub authority_host: Option<Url>,

    /// Address of the agent's own health endpoints (/healthz; /readyz: both lists synced;
    /// /metrics), on the node's network. [default: none]
    #[arg(long, env = "IDENTITY_SIDECAR_HEALTH_LISTEN", value_name = "ADDR", value_parser = Checked(flags::socket_addr))]
    pub health_listen: Option<SocketAddr>,

    /// Port of the IMDS listener inside each pod (on 169.254.169.254).
    #[arg(
        long,
        env = "IDENTITY_SIDECAR_IMDS_PORT",
        value_name = "PORT",
        default_value = "80",
        hide_short_help = true
    )]
    pub imds_port: u16,

    #[command(flatten)]
    pub entra: flags::EntraLimits,

    /// Most (client id, scope) pairs cached per pod. [default: 64]
    #[arg(long, env = "IDENTITY_SIDECAR_MAX_CACHED_TOKENS", value_name = "N", value_parser = Checked(flags::positive_count))]
    pub max_cached_tokens: Option<usize>,

    /// Log every token request at info.
    #[arg(long, env = "IDENTITY_SIDECAR_ACCESS_LOG")]
    pub access_log: bool,

    /// Write one JSON audit line per token request (the sidecar's line, plus the pod it was
    /// served for: pod_namespace, pod_name, pod_uid), always JSON, marked "log":"audit".
    #[arg(long, env = "IDENTITY_SIDECAR_AUDIT_LOG")]
    pub audit_log: bool,

    /// Log format: `text` or `json`. [default: text]
    #[arg(long, env = "IDENTITY_SIDECAR_LOG_FORMAT", value_name = "FORMAT", value_parser = Checked(LogFormat::parse))]
    pub log_format: Option<LogFormat>,

    /// Worker threads. [default: 2]
    #[arg(long, env = "IDENTITY_SIDECAR_WORKER_THREADS", value_name = "N", value_parser = Checked(flags::worker_threads))]
    pub worker_threads: Option<usize>,
}

impl NodeArgs {
    fn config(&self) -> Result<AgentConfig, String> {
        let authority = match &self.authority_host {
            Some(u) => u.clone(),
            None => flags::authority(DEFAULT_AUTHORITY)?,
        };
        let (entra_timeout, entra_budget) = self
            .entra
            .resolve()
            .map_err(|m| format!("--entra-budget (env IDENTITY_SIDECAR_ENTRA_BUDGET): {m}"))?;
        Ok(AgentConfig {
            node_name: self.node_name.clone(),
            kubelet_root: self.kubelet_root_dir.clone(),
            proc_dir: self.proc_dir.clone(),
            default_tenant: self.tenant_id.clone(),
            authority,
            entra_timeout,
            entra_budget,
            max_cached_tokens: self.max_cached_tokens.unwrap_or(64),
            access_log: self.access_log,
            audit_log: self.audit_log,
            imds_addr: SocketAddrV4::new(Ipv4Addr::new(169, 254, 169, 254), self.imds_port),
            egress: EgressProxy::from_env()
                .map_err(|e| format!("proxy (env HTTPS_PROXY / HTTP_PROXY): {e}"))?,
        })
    }
}

/// Entry point of `identity-sidecar-node`.
pub fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = NodeArgs::parse();
    let cfg = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("identity-sidecar-node: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let _log_guard = crate::telemetry::logging::init(args.log_format.unwrap_or_default());
    let kube_cfg = match crate::kube::load_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("identity-sidecar-node: Kubernetes API: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let source = kube_cfg.source.clone();
    let client = match crate::kube::Client::new(kube_cfg) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("identity-sidecar-node: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match crate::cmd::serve::runtime(args.worker_threads.unwrap_or(2)) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("identity-sidecar-node: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let shared = Shared::new();
        let agent = match Agent::new(cfg.clone(), Arc::clone(&shared)) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("cannot read the node's own network namespace: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(addr) = args.health_listen {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    tokio::spawn(health(l, Arc::clone(&shared)));
                }
                Err(e) => {
                    tracing::error!("cannot listen on {addr}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        tracing::info!(
            version = crate::build_info::VERSION,
            commit = crate::build_info::COMMIT,
            built = crate::build_info::BUILD_DATE,
            node = %cfg.node_name,
            kubernetes = %source,
            api = %client.server(),
            kubelet_root = %cfg.kubelet_root.display(),
            proc_dir = %cfg.proc_dir.display(),
            authority = %cfg.authority,
            "identity-sidecar node agent starting"
        );
        tokio::select! {
            _ = agent.run(client) => {}
            _ = crate::cmd::serve::wait_for_signal() => {
                tracing::info!("shutting down: every in-pod listener closes");
            }
        }
        ExitCode::SUCCESS
    })
}

/// `/healthz` (the process answers), `/readyz` (both lists have synced) and `/metrics` (served
/// pods), plain HTTP/1.1.
async fn health(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = Arc::clone(&shared);
        let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let shared = Arc::clone(&shared);
            async move {
                let (status, body) = match req.uri().path() {
                    "/healthz" => (200, r#"{"status":"ok"}"#.to_string()),
                    "/readyz" if shared.synced() => (
                        200,
                        format!(r#"{{"status":"ready","served_pods":{}}}"#, shared.served()),
                    ),
                    "/readyz" => (
                        503,
                        r#"{"status":"not_ready","reason":"pods and ServiceAccounts not listed yet"}"#
                            .to_string(),
                    ),
                    "/metrics" => (200, shared.render_metrics()),
                    _ => (404, r#"{"error":"not_found"}"#.to_string()),
                };
                let mut r = http::Response::new(Full::new(Bytes::from(body)));
                *r.status_mut() = http::StatusCode::from_u16(status)
                    .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
                if req.uri().path() == "/metrics" {
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                }
                Ok::<_, Infallible>(r)
            }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
