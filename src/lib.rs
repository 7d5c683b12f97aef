//! identity-sidecar: serves Azure managed-identity endpoints from a workload-identity federated token.
//!
//! One token core ([`core`]) and thin protocol adapters around it ([`protocol`]); [`server`] wires them
//! to sockets. The mock Entra ID lives in [`mock_aad`] and is never on the request path of `serve`.
pub mod cli;
pub mod init_network;
