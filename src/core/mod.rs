//! The token core: everything between "a client wants a token for (client id, resource)" and
//! Entra ID. The protocol adapters in [`crate::protocol`] only translate requests and responses.
//!
//! - [`federated`]: the federated-token file, watched and kept in memory;
//! - [`entra`]: the Entra ID client (client credentials with a jwt-bearer assertion);
//! - [`cache`]: per-key cache with single flight and refresh ahead;
//! - [`backoff`]: the retry backoff both of them use;
//! - [`jwt`]: reading a JWT's parts without verifying it;
//! - [`secret`]: values that never reach a log;
//! - [`tls`]: the CA trust of every outbound TLS connection;
//! - [`egress`], [`token_proxy`]: the egress proxy and the identity-binding token proxy legs.
pub mod backoff;
pub mod cache;
pub mod egress;
pub mod entra;
pub mod federated;
pub mod jwt;
pub mod secret;
pub mod tls;
pub mod token_proxy;

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;

use crate::telemetry::metrics::Metrics;
use cache::{CachedToken, Fetch, Fetched, TokenCache};
use entra::EntraCall;
use entra::{EntraClient, EntraError};
use federated::{SourceError, TokenSource};

/// Why a token could not be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Entra(#[from] EntraError),
    #[error(transparent)]
    Federated(#[from] SourceError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl TokenError {
    /// How long the caller should wait before asking again, when known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TokenError::Entra(EntraError::Throttled { retry_after, .. }) => Some(*retry_after),
            TokenError::Entra(EntraError::Unavailable { retry_after, .. }) => *retry_after,
            _ => None,
        }
    }

    /// The same error with the remaining wait, for answers given while a key is throttled.
    pub fn with_retry_after(&self, wait: Duration) -> TokenError {
        match self {
            TokenError::Entra(EntraError::Throttled { description, .. }) => {
                TokenError::Entra(EntraError::Throttled {
                    retry_after: wait,
                    description: description.clone(),
                })
            }
            other => other.clone(),
        }
    }
}

/// Whether a lookup was answered from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    /// No token for the key yet: the request waited for Entra ID.
    Miss,
    /// The key's token was no longer usable: the request waited for its renewal.
    Refresh,
}

impl Lookup {
    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Refresh => "refresh",
        }
    }
}

/// The answer to one lookup: the token or why not, how the cache answered, and the Entra ID
/// exchange the request waited for, when it waited for one.
pub struct Served {
    pub result: Result<Arc<CachedToken>, TokenError>,
    pub lookup: Lookup,
    pub call: Option<Arc<EntraCall>>,
}

/// Fetches tokens from Entra ID with the current federated token.
struct Exchanger {
    source: Arc<TokenSource>,
    entra: Arc<EntraClient>,
}

impl Fetch for Exchanger {
    fn fetch(&self, client_id: Arc<str>, scope: Arc<str>) -> BoxFuture<'static, Fetched> {
        let source = Arc::clone(&self.source);
        let entra = Arc::clone(&self.entra);
        async move {
            let assertion = match source.assertion().await {
                Ok(a) => a,
                Err(e) => return (Err(e.into()), None),
            };
            let (result, call) = entra
                .exchange_traced(&client_id, &scope, &assertion.token)
                .await;
            (result.map_err(TokenError::from), Some(Arc::new(call)))
        }
        .boxed()
    }
}

thread_local! {
    static SCOPE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The token core as the server sees it.
pub struct TokenService {
    source: Arc<TokenSource>,
    cache: TokenCache,
}

impl TokenService {
    pub fn new(
        source: Arc<TokenSource>,
        entra: EntraClient,
        max_entries: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::with_shared_client(source, Arc::new(entra), max_entries, metrics)
    }

    /// A token core of its own (federated token, cache) over an Entra ID client shared with
    /// others: the node agent's one per served pod.
    pub fn with_shared_client(
        source: Arc<TokenSource>,
        entra: Arc<EntraClient>,
        max_entries: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let exchanger = Arc::new(Exchanger {
            source: Arc::clone(&source),
            entra,
        });
        TokenService {
            source,
            cache: TokenCache::new(exchanger, max_entries, metrics),
        }
    }

    /// A token for `resource` (a v1 resource; the scope is derived from it), with how the cache
    /// answered and the Entra ID exchange the request waited for.
    pub async fn token(&self, client_id: &str, resource: &str) -> Served {
        // The hit path builds the scope in a reused buffer; only a miss allocates it.
        let hit = SCOPE.with_borrow_mut(|scope| {
            scope.clear();
            entra::push_scope(scope, resource);
            self.cache.try_hit(client_id, scope)
        });
        if let Some(t) = hit {
            return Served {
                result: Ok(t),
                lookup: Lookup::Hit,
                call: None,
            };
        }
        self.cache
            .get_traced(client_id, &entra::scope_for(resource))
            .await
    }

    /// Every cached token with its key (client id, scope).
    pub fn cached_tokens(&self) -> Vec<(Arc<str>, Arc<str>, Arc<CachedToken>)> {
        self.cache.tokens()
    }

    pub fn source(&self) -> &Arc<TokenSource> {
        &self.source
    }
}
