//! Federated service-account tokens, minted and written like a kubelet projected volume.
//!
//! [`FederatedTokenMinter`] signs tokens as the mock's Kubernetes-like issuer (`iss` = the issuer
//! URL, `sub` = `system:serviceaccount:NS:SA`, `aud` = `api://AzureADTokenExchange`, `iat`, `nbf`,
//! `exp`, a unique `jti` and the `kubernetes.io` claim). [`FederatedTokenWriter`] keeps such a token
//! in a directory with kubelet's atomic-writer layout and rotates it at 80% of its lifetime:
//!
//! ```text
//! DIR/..2026_11_26_17_30_00.1234567890/token   the real file, in a timestamped directory
//! DIR/..data -> ..2026_11_26_17_30_00.1234567890   swapped atomically (rename of a new symlink)
//! DIR/token -> ..data/token                    the path apps read (AZURE_FEDERATED_TOKEN_FILE)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::MockAadError;
use super::config::TOKEN_EXCHANGE_AUDIENCE;
use super::keys::SigningKey;

/// What to put in one federated token.
#[derive(Clone, Debug)]
pub struct FederatedTokenSpec {
    /// `sub`; `system:serviceaccount:NS:SA` also fills the `kubernetes.io` claim.
    pub subject: String,
    /// `aud`; default `api://AzureADTokenExchange`.
    pub audience: String,
    /// `iat` and `nbf`; default now. Put it in the past to mint an expired token.
    pub issued_at: SystemTime,
    /// `exp` - `iat`.
    pub lifetime: Duration,
}

impl FederatedTokenSpec {
    /// A token for `subject`, issued now, valid for `lifetime`.
    pub fn new(subject: impl Into<String>, lifetime: Duration) -> Self {
        FederatedTokenSpec {
            subject: subject.into(),
            audience: TOKEN_EXCHANGE_AUDIENCE.into(),
            issued_at: SystemTime::now(),
            lifetime,
        }
    }
}

#[derive(Serialize)]
struct ServiceAccountClaims<'a> {
    aud: [&'a str; 1],
    exp: u64,
    iat: u64,
    nbf: u64,
    iss: &'a str,
    jti: String,
    sub: &'a str,
    #[serde(rename = "kubernetes.io", skip_serializing_if = "Option::is_none")]
    kubernetes: Option<serde_json::Value>,
}

/// Signs federated tokens as the mock's issuer. Cheap to clone.
#[derive(Clone)]
pub struct FederatedTokenMinter {
    issuer_url: Arc<str>,
    key: Arc<SigningKey>,
}

impl FederatedTokenMinter {
    pub(crate) fn new(issuer_url: &str, key: Arc<SigningKey>) -> Self {
        FederatedTokenMinter {
            issuer_url: issuer_url.into(),
            key,
        }
    }

    /// The `iss` of minted tokens.
    pub fn issuer_url(&self) -> &str {
        &self.issuer_url
    }

    /// A token for `subject`, valid from now for `lifetime`.
    pub fn mint(&self, subject: &str, lifetime: Duration) -> Result<String, MockAadError> {
        self.mint_with(&FederatedTokenSpec::new(subject, lifetime))
    }

    /// A token exactly as `spec` says.
    pub fn mint_with(&self, spec: &FederatedTokenSpec) -> Result<String, MockAadError> {
        let iat = spec
            .issued_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let kubernetes = spec
            .subject
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| {
                let (namespace, name) = rest.split_once(':')?;
                Some(serde_json::json!({
                    "namespace": namespace,
                    "serviceaccount": { "name": name, "uid": uuid::Uuid::new_v4().to_string() },
                }))
            });
        let claims = ServiceAccountClaims {
            aud: [&spec.audience],
            exp: iat.saturating_add(spec.lifetime.as_secs()),
            iat,
            nbf: iat,
            iss: &self.issuer_url,
            jti: uuid::Uuid::new_v4().to_string(),
            sub: &spec.subject,
            kubernetes,
        };
        self.key.sign(&claims)
    }
}

/// Keeps a federated token file fresh in kubelet's atomic-writer layout. Stops rotating when dropped.
pub struct FederatedTokenWriter {
    dir: PathBuf,
    shared: Arc<WriterShared>,
    task: tokio::task::JoinHandle<()>,
}

struct WriterShared {
    minter: FederatedTokenMinter,
    dir: PathBuf,
    subject: String,
    lifetime: Duration,
    rotations: AtomicU64,
}

/// Name of the token file inside the directory (what kubelet's `path: token` gives).
pub const TOKEN_FILE_NAME: &str = "token";

impl FederatedTokenWriter {
    /// Writes a first token into `dir` now and rotates it at 80% of `lifetime` from then on.
    /// Must be called inside a Tokio runtime (the rotation is a task on it).
    pub fn start(
        minter: FederatedTokenMinter,
        dir: impl Into<PathBuf>,
        subject: impl Into<String>,
        lifetime: Duration,
    ) -> Result<Self, MockAadError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            MockAadError::Config(format!(
                "the federated token writer needs a Tokio runtime: {e}"
            ))
        })?;
        let dir = dir.into();
        let shared = Arc::new(WriterShared {
            minter,
            dir: dir.clone(),
            subject: subject.into(),
            lifetime: lifetime.max(Duration::from_secs(1)),
            rotations: AtomicU64::new(0),
        });
        shared.write_once()?;
        let period = shared.lifetime.mul_f64(0.8);
        let task_shared = shared.clone();
        let task = runtime.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let shared = task_shared.clone();
                let written = tokio::task::spawn_blocking(move || shared.write_once()).await;
                match written {
                    Ok(Ok(())) => {
                        tracing::debug!(dir = %task_shared.dir.display(), "rotated the federated token")
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "could not rotate the federated token")
                    }
                    Err(e) => tracing::warn!(error = %e, "federated token rotation task failed"),
                }
            }
        });
        Ok(FederatedTokenWriter { dir, shared, task })
    }

    /// `DIR/token`, the path to give apps as `AZURE_FEDERATED_TOKEN_FILE`.
    pub fn token_path(&self) -> PathBuf {
        self.dir.join(TOKEN_FILE_NAME)
    }

    /// The directory holding the layout.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a fresh token now (the timer keeps its own schedule).
    pub fn rotate_now(&self) -> Result<(), MockAadError> {
        self.shared.write_once()
    }

    /// How many tokens have been written, the first one included.
    pub fn writes(&self) -> u64 {
        self.shared.rotations.load(Ordering::Relaxed)
    }
}

impl Drop for FederatedTokenWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WriterShared {
    fn write_once(&self) -> Result<(), MockAadError> {
        let token = self.minter.mint(&self.subject, self.lifetime)?;
        write_atomic(&self.dir, TOKEN_FILE_NAME, token.as_bytes()).map_err(|e| {
            MockAadError::Io {
                path: self.dir.clone(),
                source: e,
            }
        })?;
        self.rotations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

const DATA_DIR_NAME: &str = "..data";
const DATA_DIR_TMP_NAME: &str = "..data_tmp";

/// One kubelet atomic-writer update: new timestamped directory, `..data` swapped by renaming a new
/// symlink over it, user-visible `name -> ..data/name` created once, old directory removed.
fn write_atomic(dir: &Path, name: &str, content: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;

    std::fs::create_dir_all(dir)?;
    let old_target = std::fs::read_link(dir.join(DATA_DIR_NAME)).ok();

    let now = time::OffsetDateTime::now_utc();
    let ts_name = format!(
        "..{:04}_{:02}_{:02}_{:02}_{:02}_{:02}.{}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        rand::random::<u32>()
    );
    let ts_dir = dir.join(&ts_name);
    std::fs::create_dir(&ts_dir)?;
    std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755))?;
    let file = ts_dir.join(name);
    std::fs::write(&file, content)?;
    // kubelet's default projected-volume mode.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;

    let tmp_link = dir.join(DATA_DIR_TMP_NAME);
    match std::fs::remove_file(&tmp_link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(&ts_name, &tmp_link)?;
    std::fs::rename(&tmp_link, dir.join(DATA_DIR_NAME))?;

    let visible = dir.join(name);
    if std::fs::symlink_metadata(&visible).is_err() {
        std::os::unix::fs::symlink(Path::new(DATA_DIR_NAME).join(name), &visible)?;
    }
    if let Some(old) = old_target
        && old != Path::new(&ts_name)
        && old.to_str().is_some_and(is_timestamped_dir_name)
    {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

/// Only `..<digits>...` names without a slash are ours to delete (never `..` or a path elsewhere).
fn is_timestamped_dir_name(name: &str) -> bool {
    name.len() > 2
        && name.starts_with("..")
        && name.as_bytes()[2].is_ascii_digit()
        && !name.contains('/')
}
