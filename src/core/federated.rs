//! The federated-token source: the file named by `AZURE_FEDERATED_TOKEN_FILE`, kept in memory and
//! watched with `notify`.
//!
//! Kubelet writes projected tokens with its atomic writer: the file is a symlink through `..data`,
//! a symlink in the same directory that is swapped to a new timestamped directory on rotation. We
//! watch the parent directory (not the file), so the swap, a late-created file, and a delete and
//! re-create are all seen; a slow poll backs the watch up where inotify is unavailable or lossy.
//! Claims are decoded without verification, only for logs, readiness and expiry decisions.
//!
//! Once serving, the file is read off the runtime's worker threads ([`read_token_off_workers`]):
//! a slow volume must not stall the token requests that share those threads.
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notify::Watcher as _;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::jwt;
use super::secret::Secret;

/// How long before its `exp` a federated token counts as "close to expiry" and is re-read from
/// disk before it is presented to Entra ID.
const NEAR_EXPIRY: Duration = Duration::from_secs(60);
/// Polling interval that backs up the file watch.
const POLL: Duration = Duration::from_secs(10);
/// Events arrive in bursts (create dir, symlink, rename); read once after they settle.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// The claims we read from the federated token, unverified.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issue time (`iat`), seconds since the epoch, when present.
    pub iat: Option<u64>,
}

/// A federated token as read from the file.
#[derive(Debug, Clone)]
pub struct FederatedToken {
    pub token: Secret,
    pub claims: Claims,
}

impl FederatedToken {
    /// Seconds until `exp`; negative once expired.
    pub fn seconds_left(&self) -> i64 {
        self.claims.exp as i64 - now_epoch() as i64
    }
}

/// Why there is no usable federated token; the text is for people and contains no token.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    #[error("federated token file {0} does not exist yet")]
    Missing(String),
    #[error("federated token file {path} cannot be read: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("federated token file {0} is empty")]
    Empty(String),
    #[error("federated token file {path} does not hold a JWT: {reason}")]
    Malformed { path: String, reason: String },
    #[error(
        "federated token in {path} expired {ago}s ago (exp {exp}); waiting for kubelet to rotate it"
    )]
    Expired { path: String, exp: u64, ago: u64 },
}

/// Current state of the token file.
pub struct TokenSource {
    path: PathBuf,
    current: RwLock<Result<Arc<FederatedToken>, SourceError>>,
}

impl TokenSource {
    /// Reads the file once (at start, before anything is served); call [`TokenSource::watch`] to
    /// keep it current.
    pub fn new(path: impl Into<PathBuf>) -> Arc<Self> {
        let path = path.into();
        let first = read_token(&path);
        Arc::new(TokenSource {
            path,
            current: RwLock::new(first.map(Arc::new)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The token as last read, whether or not it has expired since.
    pub fn current(&self) -> Result<Arc<FederatedToken>, SourceError> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Readiness: the in-memory token is an unexpired JWT.
    pub fn ready(&self) -> Result<Arc<FederatedToken>, SourceError> {
        let t = self.current()?;
        let left = t.seconds_left();
        if left <= 0 {
            return Err(self.expired(&t));
        }
        Ok(t)
    }

    /// The assertion to present to Entra ID now. If the copy in memory has expired or is close to
    /// it, the file is read again first, so a rotated file is never missed.
    pub async fn assertion(&self) -> Result<Arc<FederatedToken>, SourceError> {
        if let Ok(t) = self.current()
            && t.seconds_left() > NEAR_EXPIRY.as_secs() as i64
        {
            return Ok(t);
        }
        self.reload().await;
        let t = self.current()?;
        if t.seconds_left() <= 0 {
            return Err(self.expired(&t));
        }
        Ok(t)
    }

    fn expired(&self, t: &FederatedToken) -> SourceError {
        SourceError::Expired {
            path: self.path.display().to_string(),
            exp: t.claims.exp,
            ago: (-t.seconds_left()).max(0) as u64,
        }
    }

    /// Reads the file again (off the workers) and logs what changed (never the token itself).
    pub async fn reload(&self) {
        let next = read_token_off_workers(&self.path).await.map(Arc::new);
        let mut guard = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let changed = match (&*guard, &next) {
            (Ok(a), Ok(b)) => a.token != b.token,
            (Err(a), Err(b)) => a != b,
            _ => true,
        };
        if changed {
            match &next {
                Ok(t) => tracing::info!(
                    path = %self.path.display(),
                    iss = %t.claims.iss,
                    sub = %t.claims.sub,
                    aud = ?t.claims.aud,
                    exp = t.claims.exp,
                    seconds_left = t.seconds_left(),
                    "federated token loaded"
                ),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), "no usable federated token: {e}")
                }
            }
        }
        *guard = next;
    }

    /// Watches the token file's directory and reloads on every change, until the returned task
    /// is dropped or aborted. Falls back to polling when the directory cannot be watched.
    pub fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move { me.watch_loop().await })
    }

    async fn watch_loop(self: Arc<Self>) {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let mut watcher: Option<notify::RecommendedWatcher> = None;
        let dir = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        loop {
            if watcher.is_none() && tokio::fs::metadata(&dir).await.is_ok_and(|m| m.is_dir()) {
                watcher = start_watch(&dir, tx.clone());
                if watcher.is_some() {
                    // The file may have appeared between the last read and the watch starting.
                    self.reload().await;
                }
            }
            tokio::select! {
                got = rx.recv() => {
                    if got.is_none() { return; }
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                    self.reload().await;
                }
                _ = tokio::time::sleep(POLL) => {
                    // Backs up the watch, and notices a watched directory that was removed.
                    let dir_exists = tokio::fs::metadata(&dir).await.is_ok_and(|m| m.is_dir());
                    if watcher.is_some() && !dir_exists {
                        watcher = None;
                    }
                    self.reload().await;
                }
            }
        }
    }
}

/// Watches `dir`, which the caller found to be a directory.
fn start_watch(dir: &Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let handler = move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !matches!(ev.kind, notify::EventKind::Access(_))
        {
            let _ = tx.try_send(());
        }
    };
    match notify::recommended_watcher(handler) {
        Ok(mut w) => match w.watch(dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot watch the token directory, polling every {}s: {e}", POLL.as_secs());
                None
            }
        },
        Err(e) => {
            tracing::warn!(
                "file watching unavailable, polling every {}s: {e}",
                POLL.as_secs()
            );
            None
        }
    }
}

/// [`read_token`] on Tokio's blocking pool, so the runtime's workers never wait on the disk.
pub async fn read_token_off_workers(path: &Path) -> Result<FederatedToken, SourceError> {
    let owned = path.to_path_buf();
    match tokio::task::spawn_blocking(move || read_token(&owned)).await {
        Ok(read) => read,
        Err(e) => Err(SourceError::Unreadable {
            path: path.display().to_string(),
            reason: format!("the read was cancelled: {e}"),
        }),
    }
}

/// Reads and decodes the token file; surrounding whitespace (a trailing newline) is trimmed.
pub fn read_token(path: &Path) -> Result<FederatedToken, SourceError> {
    let shown = || path.display().to_string();
    let raw = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SourceError::Missing(shown()));
        }
        Err(e) => {
            return Err(SourceError::Unreadable {
                path: shown(),
                reason: e.to_string(),
            });
        }
    };
    let text = std::str::from_utf8(&raw)
        .map_err(|_| SourceError::Malformed {
            path: shown(),
            reason: "not UTF-8 text".into(),
        })?
        .trim();
    if text.is_empty() {
        return Err(SourceError::Empty(shown()));
    }
    let claims = decode_claims(text).map_err(|reason| SourceError::Malformed {
        path: shown(),
        reason,
    })?;
    Ok(FederatedToken {
        token: Secret::new(text),
        claims,
    })
}

#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    exp: Option<serde_json::Number>,
    #[serde(default)]
    iat: Option<serde_json::Number>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Decodes the payload of a compact JWS without checking its signature. Requires `exp`.
pub fn decode_claims(token: &str) -> Result<Claims, String> {
    let parts = jwt::split(token)?;
    if token.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err("contains whitespace inside the token".into());
    }
    let raw: RawClaims = jwt::decode_part(parts.payload, "payload")?;
    let seconds = |n: serde_json::Number| {
        n.as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
    };
    let exp = raw.exp.and_then(seconds).ok_or("no numeric `exp` claim")?;
    Ok(Claims {
        iss: raw.iss.unwrap_or_default(),
        sub: raw.sub.unwrap_or_default(),
        aud: match raw.aud {
            None => Vec::new(),
            Some(Audience::One(a)) => vec![a],
            Some(Audience::Many(v)) => v,
        },
        exp,
        iat: raw.iat.and_then(seconds),
    })
}

pub fn now_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn jwt(claims: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(r#"{"alg":"RS256"}"#),
            e.encode(claims)
        )
    }

    #[test]
    fn decodes_kubelet_claims() {
        let c = decode_claims(&jwt(r#"{"iss":"https://oidc","sub":"system:serviceaccount:ns:sa","aud":["api://AzureADTokenExchange"],"exp":1900000000}"#))
            .expect("claims");
        assert_eq!(c.sub, "system:serviceaccount:ns:sa");
        assert_eq!(c.aud, vec!["api://AzureADTokenExchange"]);
        assert_eq!(c.exp, 1_900_000_000);
        assert!(decode_claims(&jwt(r#"{"aud":"x","exp":5}"#)).is_ok());
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "abc",
            "a.b",
            "a.!!!.c",
            &jwt(r#"{"sub":"x"}"#),
            &jwt("[1]"),
            "a.b.c.d",
        ] {
            assert!(decode_claims(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn trims_the_file_and_reports_problems() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("token");
        assert!(matches!(read_token(&p), Err(SourceError::Missing(_))));
        std::fs::write(&p, "\n").expect("write");
        assert!(matches!(read_token(&p), Err(SourceError::Empty(_))));
        std::fs::write(&p, "garbage\n").expect("write");
        assert!(matches!(read_token(&p), Err(SourceError::Malformed { .. })));
        let t = jwt(r#"{"exp":4000000000}"#);
        std::fs::write(&p, format!("{t}\n")).expect("write");
        assert_eq!(read_token(&p).expect("token").token.expose(), t);
    }
}
