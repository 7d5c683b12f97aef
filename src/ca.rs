//! A throw-away certificate authority and the server certificates it signs (ECDSA P-256, rcgen):
//! the mock Entra ID's HTTPS (`dev`, `mock-aad`) and the webhook's `certs` subcommand. Only in
//! builds with the `mock` or `webhook` feature; never on the request path of `serve`.
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// A CA certificate and the issuer that signs with its key.
pub struct Authority {
    cert: Certificate,
    issuer: Issuer<'static, KeyPair>,
}

/// A server certificate and its private key.
pub struct ServerCert {
    pub cert: Certificate,
    pub key: KeyPair,
}

fn err(what: &str, e: rcgen::Error) -> String {
    format!("{what}: {e}")
}

fn named(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

impl Authority {
    /// A new CA named `common_name`, valid from an hour ago (clock skew) for `days`; it may sign
    /// server certificates but no further CA.
    pub fn new(common_name: &str, days: i64) -> Result<Authority, String> {
        let now = time::OffsetDateTime::now_utc();
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA parameters", e))?;
        params.distinguished_name = named(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(days);
        let key = KeyPair::generate().map_err(|e| err("CA key", e))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| err("CA certificate", e))?;
        Ok(Authority {
            cert,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate: what clients must trust.
    pub fn cert(&self) -> &Certificate {
        &self.cert
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid for `days`.
    pub fn sign_server(
        &self,
        names: Vec<String>,
        common_name: &str,
        days: i64,
    ) -> Result<ServerCert, String> {
        let now = time::OffsetDateTime::now_utc();
        let mut params =
            CertificateParams::new(names).map_err(|e| err("server certificate names", e))?;
        params.distinguished_name = named(common_name);
        params.is_ca = IsCa::NoCa;
        // ECDSA: signing only (KeyEncipherment is for RSA key transport).
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(days);
        let key = KeyPair::generate().map_err(|e| err("server key", e))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| err("server certificate", e))?;
        Ok(ServerCert { cert, key })
    }
}
