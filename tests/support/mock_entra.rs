//! The mock Entra ID (`identity_sidecar::mock_aad`, feature `mock`) as the other end of a test:
//! a federated token it minted itself for its default subject, written where a sidecar reads it.
use std::path::{Path, PathBuf};
use std::time::Duration;

use identity_sidecar::mock_aad::{DEFAULT_SUBJECT, MockAad};

/// Writes an hour-long federated token for `mock`'s default subject, from its own issuer, to
/// `dir/token` (no trailing newline) and returns that path.
pub fn minted_token_file(mock: &MockAad, dir: &Path) -> PathBuf {
    let path = dir.join("token");
    let token = mock
        .mint_federated_token(DEFAULT_SUBJECT, Duration::from_secs(3600))
        .expect("mint");
    std::fs::write(&path, token).expect("write token");
    path
}
