//! identity-sidecar: serves Azure managed-identity endpoints from a workload-identity federated
//! token, so software that only knows managed identity works unmodified in a Kubernetes pod.
//!
//! - [`core`]: the token core (federated-token file, Entra ID client, cache);
//! - [`protocol`]: thin adapters for the IMDS and App Service protocols;
//! - [`server`]: listeners, routing, health, metrics, shutdown;
//! - [`config`], [`logging`], [`metrics`], [`cli`]: the edges;
//! - [`init_network`]: the NAT rules that send 169.254.169.254 to the sidecar (init container);
//! - [`probe`]: exec probes and the legacy sidecar's start-up wait, over loopback;
//! - [`mock_aad`]: a stand-in Entra ID for local development and tests, never on the request path
//!   of `serve`.
pub mod access_log;
pub mod cli;
pub mod config;
pub mod core;
pub mod dev;
pub mod doctor;
pub mod init_network;
pub mod logging;
pub mod metrics;
pub mod mock_aad;
pub mod probe;
pub mod protocol;
pub mod serve;
pub mod server;
pub mod token_cmd;
pub mod webhook;
