//! What the sidecar tells its operators: logs ([`logging`]), one access-log line per token request
//! with `--access-log` ([`access_log`]), a periodic summary of token requests ([`summary`]) and
//! Prometheus metrics ([`metrics`]), and with `--audit-log` one JSON audit line per token request
//! ([`audit`]) naming the caller ([`caller`]). Nothing here ever sees a secret's value.
pub mod access_log;
pub mod audit;
pub mod caller;
pub mod logging;
pub mod metrics;
pub mod summary;
