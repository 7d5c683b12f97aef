//! What the sidecar tells its operators: logs ([`logging`]), one access-log line per token request
//! with `--access-log` ([`access_log`]), a periodic summary of token requests ([`summary`]) and
//! Prometheus metrics ([`metrics`]). Nothing here ever sees a secret's value.
pub mod access_log;
pub mod logging;
pub mod metrics;
pub mod summary;
