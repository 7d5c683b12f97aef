//! The set-up most `serve` tests start from: a [`FakeEntra`] issuing hour-long tokens, a fresh
//! federated token of `system:serviceaccount:default:app` in a temp dir, and an in-process
//! [`Sidecar`] for [`CLIENT_ID`](super::CLIENT_ID) exchanging it there.
use identity_sidecar::cmd::serve::ServeArgs;

use super::fake_entra::FakeEntra;
use super::{OTHER_CLIENT_ID, Sidecar, args, guid, token_dir};

/// The subject of the federated token the sidecar reads.
pub const SUBJECT: &str = "system:serviceaccount:default:app";

/// A fake Entra ID and a sidecar using it; dropped, both stop and the token's directory goes.
pub struct SidecarOnFakeEntra {
    pub entra: FakeEntra,
    pub dir: tempfile::TempDir,
    pub sc: Sidecar,
}

impl SidecarOnFakeEntra {
    /// With the test defaults of [`args`](super::args).
    pub async fn start() -> SidecarOnFakeEntra {
        SidecarOnFakeEntra::start_with(|a| a).await
    }

    /// With the test defaults changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(ServeArgs) -> ServeArgs) -> SidecarOnFakeEntra {
        let entra = FakeEntra::start().await;
        let (dir, path) = token_dir(SUBJECT);
        let sc = Sidecar::start(tweak(args(&entra.authority(), &path))).await;
        SidecarOnFakeEntra { entra, dir, sc }
    }

    /// The fake, the token's directory (keep it while the sidecar runs) and the sidecar.
    pub fn into_parts(self) -> (FakeEntra, tempfile::TempDir, Sidecar) {
        (self.entra, self.dir, self.sc)
    }
}

/// `args` that also let apps ask for [`OTHER_CLIENT_ID`] (`--allowed-client-ids`).
pub fn other_client_allowed(args: ServeArgs) -> ServeArgs {
    ServeArgs {
        allowed_client_ids: vec![Some(guid(OTHER_CLIENT_ID))],
        ..args
    }
}
