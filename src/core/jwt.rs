//! Reading a compact JWT (`header.payload.signature`) without verifying it: for logs, readiness,
//! expiry decisions, `doctor` and `token --decode`. Nothing here says a token is genuine.
use base64::Engine as _;
use serde::de::DeserializeOwned;

/// The three dot-separated parts of a compact JWS.
pub struct Parts<'a> {
    pub header: &'a str,
    pub payload: &'a str,
    pub signature: &'a str,
}

/// Splits `token` into its three parts; anything else is an error.
pub fn split(token: &str) -> Result<Parts<'_>, String> {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None) => Ok(Parts {
            header,
            payload,
            signature,
        }),
        _ => Err("expected three dot-separated parts".into()),
    }
}

/// Decodes one base64url part (padding tolerated) as JSON.
pub fn decode_part<T: DeserializeOwned>(part: &str, what: &str) -> Result<T, String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| format!("{what} is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{what} is not a JSON object: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_three_parts_only() {
        let p = split("a.b.c").expect("three");
        assert_eq!((p.header, p.payload, p.signature), ("a", "b", "c"));
        for bad in ["", "a.b", "a.b.c.d"] {
            assert!(split(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn decodes_padded_and_unpadded_parts() {
        let v: serde_json::Value = decode_part("eyJhIjoxfQ", "payload").expect("json");
        assert_eq!(v, serde_json::json!({"a": 1}));
        let v: serde_json::Value = decode_part("eyJhIjoxfQ==", "payload").expect("json");
        assert_eq!(v["a"], 1);
        assert!(decode_part::<serde_json::Value>("!!!", "payload").is_err());
    }
}
