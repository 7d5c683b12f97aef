//! `identity-sidecar serve`: validates the configuration, starts the server, prints what an app
//! needs, and stops cleanly on SIGTERM or SIGINT (in-flight requests finish, exit code 0).
use std::process::ExitCode;

use crate::config::{ServeArgs, ServeConfig};
use crate::server;

/// Exit code for configuration mistakes.
pub const EXIT_CONFIG: u8 = 2;

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
        let running = match server::start(cfg.clone()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        log_startup(&cfg, running.local_addrs());
        wait_for_signal().await;
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        running.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
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

fn log_startup(cfg: &ServeConfig, addrs: &[std::net::SocketAddr]) {
    let listen: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let base = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .map_or_else(String::new, |a| format!("http://{a}"));
    tracing::info!(
        listen = %listen.join(","),
        client_id = %cfg.client_id,
        tenant_id = %cfg.tenant_id,
        authority = %cfg.authority,
        token_file = %cfg.token_file.display(),
        allowed_client_ids = %cfg.allowed_client_ids.join(","),
        app_service = if cfg.identity_header.is_some() { "enabled" } else { "disabled (no IDENTITY_HEADER)" },
        "identity-sidecar serving"
    );
    tracing::info!(
        "app environment: IDENTITY_ENDPOINT={base}/msi/token IDENTITY_HEADER=<the value of this sidecar's IDENTITY_HEADER> \
         AZURE_POD_IDENTITY_AUTHORITY_HOST={base} (or MSI_ENDPOINT={base}/msi/token MSI_SECRET=<same secret>); \
         do not give the app AZURE_FEDERATED_TOKEN_FILE"
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
