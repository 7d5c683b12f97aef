//! Value parsers shared by the subcommands' flags. Each turns the text of one flag or variable into
//! a typed value, and its error names both, as the README promises: `--entra-timeout (env
//! IDENTITY_SIDECAR_ENTRA_TIMEOUT): "x" is not a positive duration like 500ms, 10s, 2m or 1h`.
//! clap exits with code 2 on any of them. Rules that involve two flags stay with the command
//! ([`super::serve::ServeArgs::validate`]).
use std::ffi::OsStr;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use reqwest::Url;

use crate::config::ResourceRule;
use crate::core::secret::Secret;
use crate::duration;

/// The Entra ID leg's time limits: the same flags for `serve` (and `doctor`) and the node agent.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EntraLimits {
    /// Time limit of one call to Entra ID (connect included). [default: 10s]
    #[arg(long, env = "IDENTITY_SIDECAR_ENTRA_TIMEOUT", value_name = "DURATION", value_parser = Checked(duration::parse_positive))]
    pub entra_timeout: Option<Duration>,

    /// Total time a token request may spend on Entra ID, retries included; after it the caller
    /// gets 503 with Retry-After. [default: 20s]
    #[arg(long, env = "IDENTITY_SIDECAR_ENTRA_BUDGET", value_name = "DURATION", value_parser = Checked(duration::parse_positive))]
    pub entra_budget: Option<Duration>,
}

impl EntraLimits {
    /// (timeout, budget) with their defaults. The error, about `--entra-budget`, says why.
    pub fn resolve(&self) -> Result<(Duration, Duration), &'static str> {
        let timeout = self.entra_timeout.unwrap_or(Duration::from_secs(10));
        let budget = self.entra_budget.unwrap_or(Duration::from_secs(20));
        if budget < timeout {
            return Err("must be at least --entra-timeout (one whole call must fit)");
        }
        Ok((timeout, budget))
    }
}

/// A clap value parser made of a plain function; see the module documentation.
pub struct Checked<T>(pub fn(&str) -> Result<T, String>);

impl<T> Clone for Checked<T> {
    fn clone(&self) -> Self {
        Checked(self.0)
    }
}

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Checked<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let parsed = match value.to_str() {
            Some(text) => (self.0)(text),
            None => Err(format!("{value:?} is not UTF-8 text")),
        };
        parsed.map_err(|message| {
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("{}: {message}\n", flag_name(arg)),
            )
            .with_cmd(cmd)
        })
    }
}

/// `--flag (env VARIABLE)`, or just `--flag` for flags without a variable.
fn flag_name(arg: Option<&clap::Arg>) -> String {
    let flag = arg
        .and_then(|a| a.get_long())
        .map_or_else(|| "value".to_string(), |l| format!("--{l}"));
    match arg.and_then(|a| a.get_env()) {
        Some(env) => format!("{flag} (env {})", env.to_string_lossy()),
        None => flag,
    }
}

const REQUIRED: &str = "is required: pass the flag or set the variable";

/// A value that must not be blank (a set-but-empty variable counts as missing).
fn required(text: &str) -> Result<&str, String> {
    match text.trim() {
        "" => Err(REQUIRED.to_string()),
        t => Ok(t),
    }
}

/// A GUID in the 8-4-4-4-12 hex form, optionally in braces.
pub fn guid(text: &str) -> Result<uuid::Uuid, String> {
    let t = required(text)?;
    let inner = t
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(t);
    let well_formed = inner.split('-').map(str::len).eq([8, 4, 4, 4, 12])
        && inner.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit());
    well_formed
        .then(|| uuid::Uuid::parse_str(inner).ok())
        .flatten()
        .ok_or_else(|| format!("{t:?} is not a GUID"))
}

/// One entry of a comma list of GUIDs; a blank entry (`a,,b`, a trailing comma) is skipped.
pub fn guid_entry(text: &str) -> Result<Option<uuid::Uuid>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    guid(text).map(Some)
}

/// An Entra tenant: a GUID or a domain name.
pub fn tenant(text: &str) -> Result<String, String> {
    let t = required(text)?;
    let domain = t.len() <= 253
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !t.starts_with(['.', '-']);
    if guid(t).is_ok() || domain {
        Ok(t.to_string())
    } else {
        Err(format!("{t:?} is neither a GUID nor a domain name"))
    }
}

/// A path that must not be blank.
pub fn path(text: &str) -> Result<std::path::PathBuf, String> {
    if text.is_empty() {
        return Err(REQUIRED.to_string());
    }
    Ok(text.into())
}

/// The Entra authority: `https://`, or `http://` for loopback hosts only, and always with a
/// trailing slash so that joining `{tenant}/oauth2/v2.0/token` keeps any path it has.
pub fn authority(text: &str) -> Result<Url, String> {
    let s = text.trim();
    let mut url = Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(&url) => {}
        "http" => {
            return Err(format!(
                "{s:?} uses http://, which is only accepted for loopback hosts; use https://"
            ));
        }
        other => return Err(format!("{s:?} has scheme {other:?}; use https://")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?} has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{s:?} must not have a query or fragment"));
    }
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// The identity-binding token proxy: `https`, without userinfo, query or fragment.
pub fn token_proxy(text: &str) -> Result<Url, String> {
    crate::core::token_proxy::validate_url(text)
}

/// A value that must not be blank.
pub fn non_blank(text: &str) -> Result<String, String> {
    required(text).map(str::to_string)
}

/// An address with a port.
pub fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    t.parse()
        .map_err(|_| format!("{t:?} is not an address with a port"))
}

/// One entry of a comma list of listen addresses; a blank entry is skipped.
pub fn listen_entry(text: &str) -> Result<Option<SocketAddr>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse().map(Some).map_err(|_| {
        format!("{t:?} is not an address with a port, like 127.0.0.1:8000 or [::1]:8000")
    })
}

/// The App Service secret: printable ASCII without spaces, since it travels in an HTTP header.
pub fn identity_header(text: &str) -> Result<Secret, String> {
    if text.is_empty() {
        return Err("is set but empty".to_string());
    }
    if text.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(
            "must be printable ASCII without spaces (it travels in an HTTP header)".to_string(),
        );
    }
    Ok(Secret::new(text))
}

/// One `--allowed-resources` entry; a blank entry is skipped.
pub fn resource_entry(text: &str) -> Result<Option<ResourceRule>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse().map(Some)
}

/// A whole number of at least 1.
pub fn positive_count(text: &str) -> Result<usize, String> {
    whole_number(text, 1..=usize::MAX, "a positive whole number")
}

/// A number of worker threads, 1 to 64.
pub fn worker_threads(text: &str) -> Result<usize, String> {
    whole_number(text, 1..=64, "a whole number from 1 to 64")
}

fn whole_number(
    text: &str,
    range: std::ops::RangeInclusive<usize>,
    what: &str,
) -> Result<usize, String> {
    let t = text.trim();
    t.parse::<usize>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| format!("{t:?} is not {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_in_hyphen_form_with_or_without_braces() {
        assert_eq!(
            guid("{AAAAAAAA-bbbb-cccc-dddd-eeeeeeeeeeee}")
                .expect("guid")
                .to_string(),
            "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
        );
        for bad in [
            "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeee",
            "aaaaaaaabbbbccccddddeeeeeeeeeeee",
            "urn:uuid:aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        ] {
            assert!(guid(bad).is_err(), "{bad}");
        }
        assert_eq!(guid(" ").expect_err("blank"), REQUIRED);
        assert_eq!(guid_entry(""), Ok(None));
    }

    #[test]
    fn http_authority_only_for_loopback() {
        for ok in [
            "http://127.0.0.1:9/",
            "http://localhost:8080",
            "http://[::1]:1/x",
            "https://login.example/",
        ] {
            assert!(authority(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://login.microsoftonline.com/",
            "ftp://x/",
            "not a url",
            "https://x/?a=b",
        ] {
            assert!(authority(bad).is_err(), "{bad}");
        }
        assert_eq!(
            authority("http://localhost:1/base").expect("ok").path(),
            "/base/"
        );
    }

    #[test]
    fn tenants_are_guids_or_domains() {
        assert!(tenant("contoso.onmicrosoft.com").is_ok());
        assert!(tenant("44444444-4444-4444-4444-444444444444").is_ok());
        assert!(tenant("-bad").is_err() && tenant("a b").is_err());
    }

    #[test]
    fn identity_headers_are_printable_ascii() {
        assert!(identity_header("s3cr3t").is_ok());
        assert!(identity_header("").is_err() && identity_header("a b").is_err());
    }
}
