//! RSA signing keys and their JWKS.
//!
//! The mock holds two [`SigningKey`]s: one signs the access tokens it issues (published at
//! `/{tenant}/discovery/v2.0/keys`), the other signs the federated service-account tokens of its
//! Kubernetes-like issuer (published at `/issuer/openid/v1/jwks`). Both are RSA 2048, RS256, made
//! fresh at every start; the `kid` is the key's RFC 7638 thumbprint.

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::Serialize;

use super::MockAadError;

/// An RS256 key pair with its public JWK.
pub(crate) struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Public JWK as published (`kty`, `use`, `kid`, `alg`, `n`, `e`).
    jwk: serde_json::Value,
}

impl SigningKey {
    /// Generates a fresh RSA 2048 key. CPU-bound (tens of milliseconds): call from a blocking task.
    pub(crate) fn generate() -> Result<Self, MockAadError> {
        let key_err =
            |what: &str, e: &dyn std::fmt::Display| MockAadError::Key(format!("{what}: {e}"));
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .map_err(|e| key_err("generating the RSA key", &e))?;
        let encoding = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes())
            .map_err(|e| key_err("loading the RSA key", &e))?;
        let public = Jwk::from_encoding_key(&encoding, Algorithm::RS256)
            .map_err(|e| key_err("deriving the public JWK", &e))?;
        let kid = public
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| key_err("computing the key thumbprint", &e))?;
        let AlgorithmParameters::RSA(rsa) = &public.algorithm else {
            return Err(MockAadError::Key("generated key is not RSA".into()));
        };
        let decoding = DecodingKey::from_rsa_components(&rsa.n, &rsa.e)
            .map_err(|e| key_err("building the verifying key", &e))?;
        let jwk = serde_json::json!({
            "kty": "RSA",
            "use": "sig",
            "kid": kid,
            "alg": "RS256",
            "n": rsa.n,
            "e": rsa.e,
        });
        Ok(SigningKey {
            kid,
            encoding,
            decoding,
            jwk,
        })
    }

    /// The verifying half, for checking tokens this key signed.
    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// The JWKS document publishing this key.
    pub(crate) fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.jwk] })
    }

    /// Signs `claims` as an RS256 JWT with `typ: JWT` and this key's `kid`.
    pub(crate) fn sign<T: Serialize>(&self, claims: &T) -> Result<String, MockAadError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| MockAadError::Key(format!("signing a token: {e}")))
    }
}
