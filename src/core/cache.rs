//! The token cache, keyed by (client id, scope).
//!
//! - **Single flight**: concurrent requests for a key without a usable token share one upstream
//!   call. The call runs in its own task, so a caller that gives up does not cancel it.
//! - **Refresh ahead**: a background task renews tokens at half their lifetime (or at Entra's
//!   `refresh_in`) for keys requested within the last token lifetime, so after the first request
//!   no caller waits on Entra ID.
//! - **Outages**: a cached token is served until shortly before it really expires while renewals
//!   back off; errors are never cached, except that a throttled key waits out `Retry-After`.
//! - **Bounded**: at most `max_entries` keys; idle keys stop being refreshed and are dropped.
//!
//! Time is Tokio's clock ([`tokio::time::Instant`]): the real monotonic clock in production, and
//! one a test can pause and advance (`tokio::time::pause`), so the refresh and idle rules are
//! tested without waiting.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use tokio::time::Instant;

use super::backoff::Backoff;
use super::entra::{EntraCall, IssuedToken};
use super::federated::now_epoch;
use super::secret::Secret;
use super::{Lookup, Served, TokenError};
use crate::telemetry::metrics::{Metrics, RefreshOutcome};

/// Longest wait between two scans of the cache by the refresher.
const MAX_TICK: Duration = Duration::from_secs(1);
/// A key whose fetches keep failing and that nobody asks for is dropped after this long.
const IDLE_WITHOUT_TOKEN: Duration = Duration::from_secs(60);
/// Backoff of background renewals while Entra ID fails.
const RENEW_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(30),
};

/// A token as the cache holds it; the protocol adapters render it.
#[derive(Debug)]
pub struct CachedToken {
    /// The token as a JSON string literal (quoted, escaped), made once so that answers do not
    /// escape a kilobyte per request.
    pub access_token_json: Secret,
    /// The first 16 hex digits of the token's SHA-256, for the audit log; not a secret.
    pub fingerprint: Box<str>,
    /// Expiry, seconds since the epoch.
    pub expires_on: u64,
    pub ext_expires_on: u64,
    /// When we received it, seconds since the epoch.
    pub not_before: u64,
    lifetime: Duration,
    refresh_at: Instant,
    usable_until: Instant,
}

impl CachedToken {
    /// Builds the cached form of a fresh token, received now.
    pub fn new(t: IssuedToken) -> Self {
        let now = Instant::now();
        let epoch = now_epoch();
        let lifetime = Duration::from_secs(t.expires_in);
        let half = lifetime / 2;
        let refresh_after = t
            .refresh_in
            .map(Duration::from_secs)
            .map_or(half, |r| r.min(half));
        // Stop serving a little before the real expiry: the caller still has to use it.
        let margin = (lifetime / 10).min(Duration::from_secs(60));
        let access_token_json =
            Secret::new(serde_json::to_string(t.access_token.expose()).unwrap_or_default());
        CachedToken {
            fingerprint: crate::telemetry::audit::fingerprint(t.access_token.expose()).into(),
            access_token_json,
            expires_on: epoch + t.expires_in,
            ext_expires_on: epoch + t.ext_expires_in.unwrap_or(t.expires_in).max(t.expires_in),
            not_before: epoch,
            lifetime,
            refresh_at: now + refresh_after,
            usable_until: now + lifetime - margin,
        }
    }

    /// Seconds left until `expires_on`, as of now.
    pub fn expires_in(&self) -> u64 {
        self.expires_on.saturating_sub(now_epoch())
    }

    pub fn ext_expires_in(&self) -> u64 {
        self.ext_expires_on.saturating_sub(now_epoch())
    }
}

/// A fetch's result, with the Entra ID exchange it made when it got that far (for the audit log).
pub type Fetched = (Result<IssuedToken, TokenError>, Option<Arc<EntraCall>>);

/// Where tokens come from: the Entra ID exchange in production, a stub in tests.
pub trait Fetch: Send + Sync + 'static {
    fn fetch(&self, client_id: Arc<str>, scope: Arc<str>) -> BoxFuture<'static, Fetched>;
}

type FlightResult = (Result<Arc<CachedToken>, TokenError>, Option<Arc<EntraCall>>);
type Flight = Shared<BoxFuture<'static, FlightResult>>;

struct Entry {
    client_id: Arc<str>,
    scope: Arc<str>,
    /// The current token, read without a lock on the hit path.
    token: ArcSwapOption<CachedToken>,
    /// Last request for this key, in nanoseconds since [`Inner::base`].
    last_used: AtomicU64,
    /// Everything about fetching; never locked on a cache hit.
    state: Mutex<State>,
}

struct State {
    flight: Option<Flight>,
    failures: u32,
    /// Earliest time for the next background renewal after a failure.
    retry_at: Option<Instant>,
    /// Entra throttled this key: answer with the same error until then.
    blocked: Option<(Instant, TokenError)>,
}

/// client id -> scope -> entry; nested so lookups borrow `&str` without allocating. Hashed with
/// foldhash (seeded per process): the keys are short and few (at most `max_entries`), and SipHash
/// was the largest cost of a cache hit.
type Map = HashMap<Arc<str>, HashMap<Arc<str>, Arc<Entry>, Hasher>, Hasher>;
type Hasher = foldhash::fast::RandomState;

struct Inner {
    map: RwLock<Map>,
    len: AtomicUsize,
    max_entries: usize,
    fetcher: Arc<dyn Fetch>,
    metrics: Arc<Metrics>,
    wake: tokio::sync::Notify,
    /// Origin of the `last_used` clocks.
    base: Instant,
}

/// The cache; dropping it stops its refresher.
pub struct TokenCache {
    inner: Arc<Inner>,
    refresher: tokio::task::JoinHandle<()>,
}

impl Drop for TokenCache {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TokenCache {
    /// Creates the cache and starts its refresher on the current Tokio runtime.
    pub fn new(fetcher: Arc<dyn Fetch>, max_entries: usize, metrics: Arc<Metrics>) -> Self {
        let inner = Arc::new(Inner {
            map: RwLock::new(HashMap::default()),
            len: AtomicUsize::new(0),
            max_entries: max_entries.max(1),
            fetcher,
            metrics,
            wake: tokio::sync::Notify::new(),
            base: Instant::now(),
        });
        let refresher = tokio::spawn(refresher(Arc::clone(&inner)));
        TokenCache { inner, refresher }
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached token for an existing key when it is usable, without waiting or allocating.
    pub fn try_hit(&self, client_id: &str, scope: &str) -> Option<Arc<CachedToken>> {
        let entry = self
            .inner
            .read_map()
            .get(client_id)
            .and_then(|m| m.get(scope))
            .map(Arc::clone)?;
        let now = Instant::now();
        let t = entry.token.load_full().filter(|t| now < t.usable_until)?;
        entry
            .last_used
            .store(self.inner.nanos(now), Ordering::Relaxed);
        self.inner.metrics.cache(true);
        Some(t)
    }

    /// A usable token for the key: from the cache, or from one shared upstream call.
    pub async fn get(
        &self,
        client_id: &str,
        scope: &str,
    ) -> Result<(Arc<CachedToken>, Lookup), TokenError> {
        let served = self.get_traced(client_id, scope).await;
        served.result.map(|t| (t, served.lookup))
    }

    /// [`TokenCache::get`], with how the cache answered and the Entra ID exchange waited for.
    pub async fn get_traced(&self, client_id: &str, scope: &str) -> Served {
        let entry = self.inner.entry(client_id, scope);
        let now = Instant::now();
        entry
            .last_used
            .store(self.inner.nanos(now), Ordering::Relaxed);
        let hit = |t: Arc<CachedToken>| Served {
            result: Ok(t),
            lookup: Lookup::Hit,
            call: None,
        };
        if let Some(t) = entry.token.load().as_ref()
            && now < t.usable_until
        {
            self.inner.metrics.cache(true);
            return hit(Arc::clone(t));
        }
        let (flight, lookup) = {
            let mut st = lock(&entry.state);
            // A flight may have finished between the read above and this lock.
            let held = entry.token.load_full();
            if let Some(t) = &held
                && now < t.usable_until
            {
                self.inner.metrics.cache(true);
                return hit(Arc::clone(t));
            }
            let lookup = if held.is_some() {
                Lookup::Refresh
            } else {
                Lookup::Miss
            };
            if let Some((until, e)) = &st.blocked {
                if now < *until {
                    self.inner.metrics.cache(false);
                    return Served {
                        result: Err(e.with_retry_after(*until - now)),
                        lookup,
                        call: None,
                    };
                }
                st.blocked = None;
            }
            let f = match &st.flight {
                Some(f) => f.clone(),
                None => {
                    let f = self.inner.start_flight(&entry, false);
                    st.flight = Some(f.clone());
                    f
                }
            };
            (f, lookup)
        };
        self.inner.metrics.cache(false);
        let (result, call) = flight.await;
        Served {
            result,
            lookup,
            call,
        }
    }

    /// Every key in use (asked for within its token's lifetime, so the refresher keeps it
    /// fresh) with its token, for the metrics a scrape computes. A key nobody asks for is left
    /// out: its token is let run down on purpose, which is no reason to alert.
    pub fn tokens(&self) -> Vec<(Arc<str>, Arc<str>, Arc<CachedToken>)> {
        let now = Instant::now();
        self.inner
            .read_map()
            .values()
            .flat_map(|m| m.values())
            .filter_map(|e| {
                let t = e.token.load_full()?;
                let last_used = self.inner.instant(e.last_used.load(Ordering::Relaxed));
                (now.saturating_duration_since(last_used) < t.lifetime)
                    .then(|| (Arc::clone(&e.client_id), Arc::clone(&e.scope), t))
            })
            .collect()
    }
}

impl Inner {
    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    fn instant(&self, nanos: u64) -> Instant {
        self.base + Duration::from_nanos(nanos)
    }

    fn entry(&self, client_id: &str, scope: &str) -> Arc<Entry> {
        if let Some(e) = self.read_map().get(client_id).and_then(|m| m.get(scope)) {
            return Arc::clone(e);
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get(client_id).and_then(|m| m.get(scope)) {
            return Arc::clone(e);
        }
        if self.len.load(Ordering::Relaxed) >= self.max_entries {
            evict_lru(&mut map, &self.len);
        }
        let entry = Arc::new(Entry {
            client_id: Arc::from(client_id),
            scope: Arc::from(scope),
            token: ArcSwapOption::empty(),
            last_used: AtomicU64::new(self.nanos(Instant::now())),
            state: Mutex::new(State {
                flight: None,
                failures: 0,
                retry_at: None,
                blocked: None,
            }),
        });
        map.entry(Arc::clone(&entry.client_id))
            .or_default()
            .insert(Arc::clone(&entry.scope), Arc::clone(&entry));
        let n = self.len.fetch_add(1, Ordering::Relaxed) + 1;
        self.metrics.set_cached_tokens(n);
        // Once per (client id, scope) while it stays cached: who asks this sidecar for what.
        tracing::info!(
            client_id,
            scope,
            cached_pairs = n,
            "first request for this identity and scope"
        );
        entry
    }

    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, Map> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the upstream call for `entry`; the caller holds its state lock and stores the flight.
    fn start_flight(self: &Arc<Self>, entry: &Arc<Entry>, background: bool) -> Flight {
        let inner = Arc::clone(self);
        let entry = Arc::clone(entry);
        let task = tokio::spawn(async move {
            let (result, call) = inner
                .fetcher
                .fetch(Arc::clone(&entry.client_id), Arc::clone(&entry.scope))
                .await;
            let now = Instant::now();
            inner
                .metrics
                .token_fetch(&entry.client_id, &entry.scope, result.is_ok());
            let mut st = lock(&entry.state);
            st.flight = None;
            let result = match result {
                Ok(issued) => {
                    let token = Arc::new(CachedToken::new(issued));
                    tracing::info!(
                        client_id = %entry.client_id,
                        scope = %entry.scope,
                        lifetime_s = token.lifetime.as_secs(),
                        "{}",
                        if background {
                            "background refresh: new token from Entra ID"
                        } else {
                            "new token from Entra ID"
                        }
                    );
                    entry.token.store(Some(Arc::clone(&token)));
                    st.failures = 0;
                    st.retry_at = None;
                    st.blocked = None;
                    drop(st);
                    if background {
                        inner.metrics.refresh(RefreshOutcome::Success);
                    }
                    inner.wake.notify_one();
                    Ok(token)
                }
                Err(e) => {
                    st.failures += 1;
                    let hinted = e.retry_after();
                    if let (
                        TokenError::Entra(super::entra::EntraError::Throttled { .. }),
                        Some(wait),
                    ) = (&e, hinted)
                    {
                        st.blocked = Some((now + wait, e.clone()));
                    }
                    let backoff = RENEW_BACKOFF
                        .delay(st.failures)
                        .max(hinted.unwrap_or(Duration::ZERO));
                    st.retry_at = Some(now + backoff);
                    if !background {
                        drop(st);
                        tracing::warn!(
                            client_id = %entry.client_id,
                            scope = %entry.scope,
                            next_try_ms = backoff.as_millis() as u64,
                            "no token from Entra ID: {e}"
                        );
                    } else {
                        let left = entry
                            .token
                            .load()
                            .as_ref()
                            .map(|t| t.usable_until.saturating_duration_since(now));
                        drop(st);
                        inner.metrics.refresh(RefreshOutcome::Failure);
                        tracing::warn!(
                            client_id = %entry.client_id,
                            scope = %entry.scope,
                            serving_cached_for_s = left.map(|d| d.as_secs()),
                            next_try_ms = backoff.as_millis() as u64,
                            "background token refresh failed: {e}"
                        );
                    }
                    Err(e)
                }
            };
            (result, call)
        });
        async move {
            match task.await {
                Ok(r) => r,
                Err(e) => (
                    Err(TokenError::Internal(format!(
                        "token fetch task failed: {e}"
                    ))),
                    None,
                ),
            }
        }
        .boxed()
        .shared()
    }

    /// One pass of the refresher: renews what is due, drops what is idle, and returns when to
    /// look again.
    fn tick(self: &Arc<Self>, now: Instant) -> Instant {
        let mut next = now + MAX_TICK;
        let mut idle: Vec<(Arc<str>, Arc<str>, u64)> = Vec::new();
        {
            let map = self.read_map();
            for entry in map.values().flat_map(|m| m.values()) {
                let mut st = lock(&entry.state);
                if st.flight.is_some() {
                    continue;
                }
                let seen = entry.last_used.load(Ordering::Relaxed);
                let last_used = self.instant(seen);
                let Some(t) = entry.token.load_full() else {
                    if now.saturating_duration_since(last_used) > IDLE_WITHOUT_TOKEN {
                        idle.push((Arc::clone(&entry.client_id), Arc::clone(&entry.scope), seen));
                    }
                    continue;
                };
                // In use: asked for within the last token lifetime. SDKs cache tokens themselves and
                // come back near expiry, so a shorter window would let their next request wait.
                let in_use = now.saturating_duration_since(last_used) < t.lifetime;
                if !in_use {
                    if now >= t.usable_until {
                        idle.push((Arc::clone(&entry.client_id), Arc::clone(&entry.scope), seen));
                    } else {
                        next = next.min(t.usable_until);
                    }
                    continue;
                }
                let due = st.retry_at.map_or(t.refresh_at, |r| r.max(t.refresh_at));
                if now >= due {
                    st.flight = Some(self.start_flight(entry, true));
                } else {
                    next = next.min(due);
                }
            }
        }
        if !idle.is_empty() {
            let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
            for (c, s, seen) in idle {
                if let Some(m) = map.get_mut(&c) {
                    // Re-check under the write lock: a request may have arrived meanwhile.
                    let still_idle = m.get(&s).is_some_and(|e| {
                        let st = lock(&e.state);
                        st.flight.is_none() && e.last_used.load(Ordering::Relaxed) == seen
                    });
                    if still_idle && m.remove(&s).is_some() {
                        self.len.fetch_sub(1, Ordering::Relaxed);
                        tracing::debug!(client_id = %c, scope = %s, "dropped idle token");
                    }
                    if m.is_empty() {
                        map.remove(&c);
                    }
                }
            }
            self.metrics
                .set_cached_tokens(self.len.load(Ordering::Relaxed));
        }
        next.max(now + Duration::from_millis(5))
    }
}

/// Removes the least recently used key that is not being fetched.
fn evict_lru(map: &mut Map, len: &AtomicUsize) {
    let victim = map
        .values()
        .flat_map(|m| m.values())
        .filter_map(|e| {
            let st = lock(&e.state);
            st.flight.is_none().then_some((
                e.last_used.load(Ordering::Relaxed),
                Arc::clone(&e.client_id),
                Arc::clone(&e.scope),
            ))
        })
        .min_by_key(|(t, _, _)| *t);
    if let Some((_, c, s)) = victim
        && let Some(m) = map.get_mut(&c)
    {
        if m.remove(&s).is_some() {
            len.fetch_sub(1, Ordering::Relaxed);
        }
        if m.is_empty() {
            map.remove(&c);
        }
    }
}

async fn refresher(inner: Arc<Inner>) {
    loop {
        let notified = inner.wake.notified();
        let next = inner.tick(Instant::now());
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = notified => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    struct Stub {
        calls: AtomicU32,
        lifetime: u64,
        delay: Duration,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Fetch for Stub {
        fn fetch(&self, _c: Arc<str>, _s: Arc<str>) -> BoxFuture<'static, Fetched> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let (lifetime, delay, fail) =
                (self.lifetime, self.delay, self.fail.load(Ordering::SeqCst));
            async move {
                tokio::time::sleep(delay).await;
                if fail {
                    return (Err(TokenError::Internal("down".into())), None);
                }
                let issued = IssuedToken {
                    access_token: Secret::new(format!("token-{n}")),
                    expires_in: lifetime,
                    ext_expires_in: None,
                    refresh_in: None,
                };
                (Ok(issued), None)
            }
            .boxed()
        }
    }

    fn stub(lifetime: u64, delay_ms: u64) -> Arc<Stub> {
        Arc::new(Stub {
            calls: AtomicU32::new(0),
            lifetime,
            delay: Duration::from_millis(delay_ms),
            fail: false.into(),
        })
    }

    fn token_text(t: &CachedToken) -> String {
        t.access_token_json.expose().trim_matches('"').to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_share_one_fetch() {
        let s = stub(3600, 50);
        let cache = Arc::new(TokenCache::new(s.clone(), 16, Arc::new(Metrics::new())));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let c = Arc::clone(&cache);
            tasks.push(tokio::spawn(async move {
                c.get("a", "s").await.map(|(t, _)| token_text(&t))
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("join").expect("token"), "token-1");
        }
        assert_eq!(s.calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.get("a", "s").await.expect("hit").1, Lookup::Hit);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_not_cached() {
        let s = stub(3600, 0);
        s.fail.store(true, Ordering::SeqCst);
        let cache = TokenCache::new(s.clone(), 16, Arc::new(Metrics::new()));
        assert!(cache.get("a", "s").await.is_err());
        s.fail.store(false, Ordering::SeqCst);
        assert!(cache.get("a", "s").await.is_ok());
        assert_eq!(s.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cache_evicts_the_least_recently_used_key() {
        let s = stub(3600, 0);
        let cache = TokenCache::new(s.clone(), 2, Arc::new(Metrics::new()));
        let tick = || tokio::time::advance(Duration::from_millis(10));
        cache.get("a", "1").await.expect("token");
        tick().await;
        cache.get("a", "2").await.expect("token");
        tick().await;
        // Key 1 is used again, so key 2 is now the least recently used.
        cache.get("a", "1").await.expect("hit");
        tick().await;
        cache.get("a", "3").await.expect("token");
        assert_eq!(cache.len(), 2);
        assert!(cache.try_hit("a", "2").is_none(), "key 2 was evicted");
        assert!(cache.try_hit("a", "1").is_some(), "key 1 was kept");
        assert!(cache.try_hit("a", "3").is_some(), "key 3 was added");
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_renewed_at_half_life_without_callers_waiting() {
        let s = stub(2, 0);
        let cache = TokenCache::new(s.clone(), 16, Arc::new(Metrics::new()));
        let (first, _) = cache.get("a", "s").await.expect("token");
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(
            s.calls.load(Ordering::SeqCst),
            1,
            "not renewed before half-life"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(s.calls.load(Ordering::SeqCst), 2, "renewed at half-life");
        let (second, how) = cache.get("a", "s").await.expect("token");
        assert_eq!(how, Lookup::Hit);
        assert_ne!(token_text(&first), token_text(&second));
    }

    #[tokio::test(start_paused = true)]
    async fn only_keys_in_use_are_listed_for_the_metrics() {
        let s = stub(10, 0);
        let cache = TokenCache::new(s.clone(), 16, Arc::new(Metrics::new()));
        cache.get("a", "s").await.expect("token");
        assert_eq!(cache.tokens().len(), 1);
        // The refresher renews it once at half-life; a lifetime after the last request the key
        // is idle: still cached, no longer listed.
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        assert!(!cache.is_empty());
        assert!(cache.tokens().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn keys_nobody_asks_for_stop_refreshing_and_are_dropped() {
        let s = stub(1, 0);
        let cache = TokenCache::new(s.clone(), 16, Arc::new(Metrics::new()));
        cache.get("a", "s").await.expect("token");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(cache.is_empty(), "idle key dropped");
        let calls = s.calls.load(Ordering::SeqCst);
        assert!(
            calls <= 2,
            "at most one renewal after the last use: {calls}"
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            s.calls.load(Ordering::SeqCst),
            calls,
            "no renewals once dropped"
        );
    }
}
