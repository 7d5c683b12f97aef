//! The mock's shared state: who is registered, the keys, the active fault, the counters and the
//! log of token requests ([`TokenRequestRecord`]).
//!
//! Built once by [`super::start`] after the socket is bound (the URLs need the port) and shared by
//! every connection behind an `Arc`. Nothing here changes after start except the fault and the
//! counters.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::config::{AppRegistration, FederatedCredential, SELF_ISSUER};
use super::faults::FaultState;
use super::keys::SigningKey;
use super::remote::RemoteIssuers;

/// How many token requests [`State::record`] keeps (the oldest go first).
const TOKEN_LOG_LEN: usize = 256;

/// An app as the token endpoint sees it: object id chosen, `"self"` issuers resolved.
pub(crate) struct RegisteredApp {
    pub tenant_id: String,
    pub client_id: String,
    pub object_id: String,
    pub client_secret: Option<String>,
    pub federated_credentials: Vec<FederatedCredential>,
    pub roles: Vec<String>,
}

pub(crate) struct State {
    /// `https://127.0.0.1:PORT/`, always with the trailing slash (what `AZURE_AUTHORITY_HOST` takes).
    pub base_url: String,
    /// `{base_url}issuer`: `iss` of the federated tokens the mock mints.
    pub issuer_url: String,
    pub apps: Vec<RegisteredApp>,
    /// Known tenant ids, lower-cased.
    pub tenants: HashSet<String>,
    pub token_key: SigningKey,
    pub issuer_key: Arc<SigningKey>,
    /// Fixed access-token lifetime; `None` = random 60-90 minutes like Entra.
    pub token_lifetime: Option<Duration>,
    pub faults: FaultState,
    pub counters: Counters,
    pub remote: RemoteIssuers,
    /// The last [`TOKEN_LOG_LEN`] token requests that reached validation.
    pub token_log: Mutex<VecDeque<TokenRequestRecord>>,
}

impl State {
    pub(crate) fn new(
        base_url: String,
        apps: &[AppRegistration],
        extra_tenants: &[String],
        token_key: SigningKey,
        issuer_key: SigningKey,
        token_lifetime: Option<Duration>,
    ) -> Self {
        let issuer_url = format!("{base_url}{}", super::config::ISSUER_PATH);
        let apps: Vec<RegisteredApp> = apps
            .iter()
            .map(|app| RegisteredApp {
                tenant_id: app.tenant_id.clone(),
                client_id: app.client_id.clone(),
                object_id: app
                    .object_id
                    .clone()
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                client_secret: app.client_secret.as_ref().map(|s| s.0.clone()),
                federated_credentials: app
                    .federated_credentials
                    .iter()
                    .map(|fic| FederatedCredential {
                        issuer: if fic.issuer == SELF_ISSUER {
                            issuer_url.clone()
                        } else {
                            fic.issuer.clone()
                        },
                        ..fic.clone()
                    })
                    .collect(),
                roles: app.roles.clone(),
            })
            .collect();
        let tenants = apps
            .iter()
            .map(|a| a.tenant_id.to_ascii_lowercase())
            .chain(extra_tenants.iter().map(|t| t.to_ascii_lowercase()))
            .collect();
        State {
            base_url,
            issuer_url,
            apps,
            tenants,
            token_key,
            issuer_key: Arc::new(issuer_key),
            token_lifetime,
            faults: FaultState::default(),
            counters: Counters::default(),
            remote: RemoteIssuers::default(),
            token_log: Mutex::new(VecDeque::with_capacity(TOKEN_LOG_LEN)),
        }
    }

    pub(crate) fn record(&self, record: TokenRequestRecord) {
        if let Ok(mut log) = self.token_log.lock() {
            if log.len() == TOKEN_LOG_LEN {
                log.pop_front();
            }
            log.push_back(record);
        }
    }

    pub(crate) fn token_log(&self) -> Vec<TokenRequestRecord> {
        self.token_log
            .lock()
            .map(|log| log.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn knows_tenant(&self, tenant: &str) -> bool {
        self.tenants.contains(&tenant.to_ascii_lowercase())
    }

    /// The app with this client id in this tenant (ids compared case-insensitively, as GUIDs are).
    pub(crate) fn find_app(&self, tenant: &str, client_id: &str) -> Option<&RegisteredApp> {
        self.apps.iter().find(|a| {
            a.tenant_id.eq_ignore_ascii_case(tenant) && a.client_id.eq_ignore_ascii_case(client_id)
        })
    }
}

/// Request counters, readable through [`super::MockAad::stats`] and `GET /_mock/stats`.
#[derive(Default)]
pub(crate) struct Counters {
    pub token_requests: AtomicU64,
    pub tokens_issued: AtomicU64,
    pub token_errors: AtomicU64,
    pub faults_injected: AtomicU64,
    pub discovery_requests: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> MockAadStats {
        MockAadStats {
            token_requests: self.token_requests.load(Ordering::Relaxed),
            tokens_issued: self.tokens_issued.load(Ordering::Relaxed),
            token_errors: self.token_errors.load(Ordering::Relaxed),
            faults_injected: self.faults_injected.load(Ordering::Relaxed),
            discovery_requests: self.discovery_requests.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of the mock's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MockAadStats {
    /// Requests to `POST /{tenant}/oauth2/v2.0/token`, faults included.
    pub token_requests: u64,
    /// Access tokens issued.
    pub tokens_issued: u64,
    /// Token requests answered with an Entra error (not counting injected faults).
    pub token_errors: u64,
    /// Token requests hit by an injected fault (delays included).
    pub faults_injected: u64,
    /// Discovery, JWKS and issuer-document requests.
    pub discovery_requests: u64,
}

/// One token request as the mock saw it, for tests that check what a client sent. Holds no secret
/// and no token: only the assertion's (unverified) subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenRequestRecord {
    /// Tenant segment of the URL.
    pub tenant: String,
    /// `client_id` (form or HTTP Basic).
    pub client_id: Option<String>,
    /// `scope` as sent.
    pub scope: Option<String>,
    /// `grant_type` as sent.
    pub grant_type: Option<String>,
    /// `client_assertion`, `client_secret` or `none`.
    pub credential: &'static str,
    /// `sub` of the assertion, read without verification.
    pub assertion_subject: Option<String>,
    /// Whether the assertion arrived with surrounding whitespace (Python sends the file untrimmed).
    pub assertion_untrimmed: bool,
    /// HTTP status answered.
    pub status: u16,
    /// AADSTS code of an error answer.
    pub error_code: Option<u32>,
    /// `correlation_id` of the answer (the client's request id when it sent one).
    pub correlation_id: String,
}
