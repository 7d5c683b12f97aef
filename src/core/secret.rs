//! A string that must never reach a log: its `Debug` and `Display` print a placeholder.
use std::fmt;
use std::sync::Arc;

use subtle::ConstantTimeEq;

/// Holds a secret (federated token, access token, identity header). Cloning is cheap.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(s: impl Into<Arc<str>>) -> Self {
        Secret(s.into())
    }

    /// The secret itself; call only where it leaves the process on purpose.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares with a presented value in time that does not depend on where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        // Length is not secret-dependent in a useful way, but keep the comparison constant-time.
        mine.len() == presented.len() && bool::from(mine.ct_eq(presented))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_formats_the_value() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        assert!(s.matches(b"hunter2") && !s.matches(b"hunter3") && !s.matches(b"hunter"));
    }
}
