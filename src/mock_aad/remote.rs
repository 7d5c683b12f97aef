//! Keys of other issuers: OIDC discovery and JWKS fetched on demand, cached for five minutes.
//!
//! Entra trusts any issuer a federated credential names, by fetching
//! `{iss}/.well-known/openid-configuration` and its `jwks_uri`. The mock does the same for issuers
//! other than its own (which it answers from memory). Failures become AADSTS50166, as in Entra.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;

const CACHE_FOR: Duration = Duration::from_secs(300);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub(crate) struct RemoteIssuers {
    client: OnceLock<reqwest::Client>,
    cache: Mutex<HashMap<String, (Instant, JwkSet)>>,
}

impl RemoteIssuers {
    /// The issuer's key set, from the cache unless `refresh` or stale.
    pub(crate) async fn keys(&self, issuer: &str, refresh: bool) -> Result<JwkSet, String> {
        if !refresh
            && let Ok(cache) = self.cache.lock()
            && let Some((at, keys)) = cache.get(issuer)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(keys.clone());
        }
        let keys = self.fetch(issuer).await?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(issuer.to_owned(), (Instant::now(), keys.clone()));
        }
        Ok(keys)
    }

    async fn fetch(&self, issuer: &str) -> Result<JwkSet, String> {
        let client = match self.client.get() {
            Some(c) => c,
            None => {
                let built = reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .build()
                    .map_err(|e| format!("HTTP client: {e}"))?;
                self.client.get_or_init(|| built)
            }
        };
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let discovery: serde_json::Value = get_json(client, &discovery_url).await?;
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("{discovery_url} has no jwks_uri"))?;
        let jwks: serde_json::Value = get_json(client, jwks_uri).await?;
        serde_json::from_value(jwks).map_err(|e| format!("{jwks_uri}: not a JWKS: {e}"))
    }
}

async fn get_json(client: &reqwest::Client, url: &str) -> Result<serde_json::Value, String> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    response.json().await.map_err(|e| format!("{url}: {e}"))
}
