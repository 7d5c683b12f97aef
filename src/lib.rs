//! identity-sidecar: serves Azure managed-identity endpoints from a workload-identity federated
//! token, so software that only knows managed identity works unmodified in a Kubernetes pod.
//!
//! Read it top down:
//! - [`build_info`]: version, commit and build date (`--version`, start-up log, metrics);
//! - `ca`: a throw-away certificate authority (the mock's HTTPS, the webhook's `certs`);
//! - [`cli`]: the command-line frame both binaries share;
//! - [`cmd`]: one file per subcommand (`serve`, `dev`, `doctor`, `token`, `probe`,
//!   `init-network`, `mock-aad`), each with its own flags;
//! - [`config`]: the validated settings `serve` runs on; [`cloud`]: the Azure clouds by name;
//! - [`server`]: listeners, limits, routing and graceful shutdown, around a ready-made
//!   [`service`]: the request path (token, health, readiness, metrics endpoints);
//! - [`duration`]: the one duration syntax of every flag;
//! - [`protocol`]: thin adapters for the IMDS and App Service protocols;
//! - [`core`]: the token core (federated-token file, Entra ID client, cache);
//! - [`telemetry`]: logs, the access log and metrics;
//! - `node`: the node agent (node mode), serving every opted-in pod of a node inside the pod's
//!   network namespace; only in builds with the `node` feature;
//! - `kube`: the Kubernetes API client of the webhook and the node agent (feature `kube`);
//! - [`netfilter`]: the NAT rules that send 169.254.169.254 to the sidecar (init container);
//! - `mock_aad`: a stand-in Entra ID for local development and tests, never on the request path
//!   of `serve`; only in builds with the `mock` feature (the default; not the image's build).
pub mod build_info;
#[cfg(any(feature = "mock", feature = "webhook"))]
pub mod ca;
pub mod cli;
pub mod cloud;
pub mod cmd;
pub mod config;
pub mod core;
pub mod duration;
#[cfg(feature = "kube")]
pub mod kube;
#[cfg(feature = "mock")]
pub mod mock_aad;
pub mod netfilter;
#[cfg(feature = "node")]
pub mod node;
pub mod protocol;
pub mod server;
pub mod service;
pub mod telemetry;
#[cfg(feature = "webhook")]
pub mod webhook;
