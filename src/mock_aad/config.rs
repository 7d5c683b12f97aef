//! Who the mock knows: tenants, registered apps, their secrets and federated credentials.
//!
//! Zero-config gives one app ([`AppRegistration::default_app`]) in [`DEFAULT_TENANT_ID`] trusting
//! the mock's own issuer for [`DEFAULT_SUBJECT`]. A config file (TOML, or JSON when the name ends in
//! `.json`) replaces that with its own list:
//!
//! ```toml
//! token_lifetime_secs = 3600          # optional; default: random 60-90 min like Entra
//! tenants = ["extra-tenant-guid"]     # optional; tenants of the apps are always known
//! [[apps]]
//! tenant_id = "00000000-0000-4000-8000-00000000000a"
//! client_id = "00000000-0000-4000-8000-00000000000c"
//! client_secret = "s3cret"            # optional
//! [[apps.federated_credentials]]
//! issuer = "self"                     # the mock's own issuer, or any https/http issuer URL
//! subject = "system:serviceaccount:default:workload"
//! audiences = ["api://AzureADTokenExchange"]   # this is the default
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::MockAadError;

/// Tenant of the zero-config app.
pub const DEFAULT_TENANT_ID: &str = "00000000-0000-4000-8000-00000000000a";
/// Client (application) id of the zero-config app.
pub const DEFAULT_CLIENT_ID: &str = "00000000-0000-4000-8000-00000000000c";
/// Object id of the zero-config app's service principal (`oid`/`sub` of its access tokens).
pub const DEFAULT_OBJECT_ID: &str = "00000000-0000-4000-8000-00000000000b";
/// Subject the zero-config app's federated credential trusts.
pub const DEFAULT_SUBJECT: &str = "system:serviceaccount:default:workload";
/// The audience Entra expects in federated assertions.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Path under the authority where the mock's Kubernetes-like issuer lives (`{base}/issuer`).
pub const ISSUER_PATH: &str = "issuer";
/// Value of [`FederatedCredential::issuer`] that means "the mock's own issuer".
pub const SELF_ISSUER: &str = "self";

/// A client secret; never printed.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct ClientSecret(pub String);

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(***)")
    }
}

/// A federated identity credential: which (issuer, subject, audience) may act as the app.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FederatedCredential {
    /// Issuer URL, or `"self"` for the mock's own issuer. Compared exactly, as Entra does.
    pub issuer: String,
    /// Subject, compared case-sensitively.
    pub subject: String,
    /// Accepted audiences; default `["api://AzureADTokenExchange"]`.
    #[serde(default = "default_audiences")]
    pub audiences: Vec<String>,
}

fn default_audiences() -> Vec<String> {
    vec![TOKEN_EXCHANGE_AUDIENCE.to_owned()]
}

impl FederatedCredential {
    /// A credential trusting the mock's own issuer for `subject` with the usual audience.
    pub fn self_issued(subject: impl Into<String>) -> Self {
        FederatedCredential {
            issuer: SELF_ISSUER.into(),
            subject: subject.into(),
            audiences: default_audiences(),
        }
    }
}

/// An app registration (or user-assigned identity) in one tenant.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppRegistration {
    /// Tenant the app lives in.
    pub tenant_id: String,
    /// Client (application) id.
    pub client_id: String,
    /// Service principal object id; a random one is chosen at start when absent.
    #[serde(default)]
    pub object_id: Option<String>,
    /// Secret accepted as `client_secret`; absent means the app has none.
    #[serde(default)]
    pub client_secret: Option<ClientSecret>,
    /// Federated credentials accepted as `client_assertion`.
    #[serde(default)]
    pub federated_credentials: Vec<FederatedCredential>,
    /// App roles put in the `roles` claim of issued tokens.
    #[serde(default)]
    pub roles: Vec<String>,
}

impl AppRegistration {
    /// The zero-config app: [`DEFAULT_TENANT_ID`], [`DEFAULT_CLIENT_ID`], trusting the mock's
    /// own issuer for [`DEFAULT_SUBJECT`], no secret.
    pub fn default_app() -> Self {
        AppRegistration {
            tenant_id: DEFAULT_TENANT_ID.into(),
            client_id: DEFAULT_CLIENT_ID.into(),
            object_id: Some(DEFAULT_OBJECT_ID.into()),
            client_secret: None,
            federated_credentials: vec![FederatedCredential::self_issued(DEFAULT_SUBJECT)],
            roles: Vec::new(),
        }
    }
}

/// What a config file may hold.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    /// Registered apps; replaces the default app when not empty.
    #[serde(default)]
    pub apps: Vec<AppRegistration>,
    /// Extra tenants that exist without apps (discovery works, tokens fail with 700016).
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Fixed lifetime of issued access tokens, in seconds.
    #[serde(default)]
    pub token_lifetime_secs: Option<u64>,
}

impl RegistryFile {
    /// Reads a TOML file, or JSON if the name ends in `.json`.
    pub fn load(path: &Path) -> Result<Self, MockAadError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| MockAadError::Config(format!("cannot read {}: {e}", path.display())))?;
        let parsed = if path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("json"))
        {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str(&text).map_err(|e| e.to_string())
        };
        parsed.map_err(|e| MockAadError::Config(format!("{}: {e}", path.display())))
    }
}
