//! Which `expires_on` format a 2017-09-01 (`MSI_ENDPOINT` + `MSI_SECRET`) client can read, told
//! from its `User-Agent`.
//!
//! Real App Service answered this protocol version with a date (`11/27/2026 03:54:03 PM +00:00`),
//! Azure ML and this sidecar with epoch seconds. No single format serves every client:
//!
//! | Client (product token in the User-Agent) | Reads | Gets |
//! |---|---|---|
//! | azure-identity Python 1.5.0b1 - 1.5.x (`azsdk-python-identity/1.5.*`) | the date only (`strptime`; `int()` is not tried) | date |
//! | @azure/identity JS 1.5.0 - 2.x (`azsdk-js-identity/<3`) | the date only (`Date.parse`; NaN for epoch, so the token never expires for its cycler) | date |
//! | @azure/identity JS 1.0 - 1.4 (no identity token: core-http's own `core-http/<v> Node/...`) | the date only (`Date.parse`) | date |
//! | everything else: azure-identity Python <1.5 and >=1.6, @azure/identity >=3, msal, MSAL.NET/Go/Java, adal, unknown or missing | epoch (current Python does `int()` and fails on the date; msal-node reads a date as "expires now") | epoch |
//!
//! A product token counts wherever it stands: azure-core puts an application id before the SDK's
//! token and `AZURE_HTTP_USER_AGENT` after it; comments in parentheses are skipped. The SDK source
//! lines behind each row are in docs/protocols.md#app-service-2017-09-01-expires_on-by-client.
use std::str::FromStr;

/// The `--msi-2017-expires-on` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpiresOnMode {
    /// Decide per request from the User-Agent ([`format_for`]).
    #[default]
    Auto,
    /// Always epoch seconds (Azure ML's answer; what unknown clients get under `auto`).
    Epoch,
    /// Always App Service's date.
    Date,
}

impl ExpiresOnMode {
    /// `auto`, `epoch` or `date` (any case); blank means `auto`. The value parser of
    /// `--msi-2017-expires-on` ([`crate::cmd::serve::ServeArgs`]).
    pub fn parse(text: &str) -> Result<ExpiresOnMode, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(ExpiresOnMode::Auto),
            "epoch" => Ok(ExpiresOnMode::Epoch),
            "date" => Ok(ExpiresOnMode::Date),
            other => Err(format!("{other:?} is not one of: auto, epoch, date")),
        }
    }

    /// The setting's name, as the flag takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ExpiresOnMode::Auto => "auto",
            ExpiresOnMode::Epoch => "epoch",
            ExpiresOnMode::Date => "date",
        }
    }
}

impl FromStr for ExpiresOnMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ExpiresOnMode::parse(s)
    }
}

/// The format one answer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiresOnFormat {
    /// `"1795794843"`
    Epoch,
    /// `"11/27/2026 03:54:03 PM +00:00"` (UTC)
    Date,
}

impl ExpiresOnMode {
    /// The format for a request carrying `user_agent` (raw header bytes, if any).
    pub fn format(self, user_agent: Option<&[u8]>) -> ExpiresOnFormat {
        match self {
            ExpiresOnMode::Auto => format_for(user_agent),
            ExpiresOnMode::Epoch => ExpiresOnFormat::Epoch,
            ExpiresOnMode::Date => ExpiresOnFormat::Date,
        }
    }
}

/// The `auto` rule: the date for the client releases that cannot read epoch seconds, epoch for
/// every other client, including unknown, missing or non-UTF-8 user agents (today's answer).
pub fn format_for(user_agent: Option<&[u8]>) -> ExpiresOnFormat {
    let Some(ua) = user_agent.and_then(|b| std::str::from_utf8(b).ok()) else {
        return ExpiresOnFormat::Epoch;
    };
    let mut core_http = false;
    for (name, version) in products(ua) {
        let v = parse_version(version);
        if name.eq_ignore_ascii_case("azsdk-python-identity") {
            // azure-identity 1.5.0b1-1.5.0: AppServiceCredential's _parse_app_service_expires_on
            // only strptime()s; 1.4.x (AuthnClient) and 1.6.0b1+ try int() first.
            return date_if(v.is_some_and(|v| ((1, 5, 0)..(1, 6, 0)).contains(&v)));
        }
        if name.eq_ignore_ascii_case("azsdk-js-identity") {
            // @azure/identity 1.5.0-2.1.0: appServiceMsi2017's expiresOnParser is
            // Date.parse(expires_on); 3.0.0 (whose UA says 3.0.0-beta.1) parses both.
            return date_if(v.is_some_and(|v| v < (3, 0, 0)));
        }
        core_http |= name.eq_ignore_ascii_case("core-http");
    }
    // @azure/identity 1.0-1.4 set no product token of their own: their IdentityClient is a
    // core-http ServiceClient, whose default User-Agent is `core-http/<v> Node/<v> OS/(...)`.
    date_if(core_http)
}

fn date_if(date: bool) -> ExpiresOnFormat {
    if date {
        ExpiresOnFormat::Date
    } else {
        ExpiresOnFormat::Epoch
    }
}

/// The `name/version` product tokens of a User-Agent, outside `(comments)`, in order.
fn products(ua: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut depth = 0usize;
    ua.split_ascii_whitespace()
        .filter(move |word| {
            let outside = depth == 0 && !word.starts_with('(');
            for b in word.bytes() {
                match b {
                    b'(' => depth += 1,
                    b')' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            }
            outside
        })
        .filter_map(|word| word.split_once('/'))
}

/// `major.minor.patch` of a version such as `1.5.0`, `1.5.0b1`, `3.0.0-beta.1` or `2` (missing
/// parts are 0; a pre-release counts as its release, which the rules above allow for).
fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let mut parts = [0u32; 3];
    let mut rest = s;
    for (i, part) in parts.iter_mut().enumerate() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            if i == 0 {
                return None;
            }
            break;
        }
        *part = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        match rest.strip_prefix('.') {
            Some(r) => rest = r,
            None => break,
        }
    }
    Some((parts[0], parts[1], parts[2]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExpiresOnFormat::{Date, Epoch};

    fn f(ua: &str) -> ExpiresOnFormat {
        format_for(Some(ua.as_bytes()))
    }

    const PY_PLATFORM: &str = "Python/3.11.7 (Linux-6.18.44-fc-v669-x86_64-with-glibc2.36)";
    const JS_PLATFORM: &str = "core-rest-pipeline/1.24.0 Node/20.20.2 (Linux 6.18.44-fc-v669; x64)";

    #[test]
    fn python_azure_identity_1_5_gets_the_date() {
        for v in ["1.5.0", "1.5.0b1", "1.5.0b2"] {
            assert_eq!(
                f(&format!("azsdk-python-identity/{v} {PY_PLATFORM}")),
                Date,
                "{v}"
            );
        }
        for v in [
            "1.4.1", "1.4.0b7", "1.6.0b1", "1.6.0", "1.27.0", "2.0.0", "x",
        ] {
            assert_eq!(
                f(&format!("azsdk-python-identity/{v} {PY_PLATFORM}")),
                Epoch,
                "{v}"
            );
        }
    }

    #[test]
    fn js_azure_identity_before_3_gets_the_date() {
        for v in ["1.5.0", "1.5.2", "2.0.5", "2.1.0", "2.99.99"] {
            assert_eq!(
                f(&format!("azsdk-js-identity/{v} {JS_PLATFORM}")),
                Date,
                "{v}"
            );
        }
        for v in ["3.0.0", "3.0.0-beta.1", "3.4.2", "4.13.1"] {
            assert_eq!(
                f(&format!("azsdk-js-identity/{v} {JS_PLATFORM}")),
                Epoch,
                "{v}"
            );
        }
    }

    #[test]
    fn js_azure_identity_1_0_to_1_4_is_core_http_alone() {
        assert_eq!(
            f("core-http/1.2.6 Node/v14.15.0 OS/(x64-Linux-5.4.0)"),
            Date
        );
        assert_eq!(
            f("myapp/2.0 core-http/2.2.1 Node/v16.0.0 OS/(x64-Linux-5.4.0)"),
            Date
        );
        // core-http under a newer identity release: the identity token decides.
        assert_eq!(f("azsdk-js-identity/3.1.0 core-http/2.2.1 Node/v16"), Epoch);
    }

    #[test]
    fn the_token_counts_at_the_start_in_the_middle_and_at_the_end() {
        // azure-core: `<application id> <sdk token> ... <AZURE_HTTP_USER_AGENT>`.
        assert_eq!(
            f(&format!("azsdk-python-identity/1.5.0 {PY_PLATFORM}")),
            Date
        );
        assert_eq!(
            f(&format!(
                "myapp/1.0 azsdk-python-identity/1.5.0 {PY_PLATFORM} extra/9"
            )),
            Date
        );
        assert_eq!(
            f("Mozilla/5.0 (X11) something azsdk-js-identity/1.5.2"),
            Date
        );
        assert_eq!(f("myapp azsdk-js-identity/1.5.2\tNode/20"), Date);
        // Case of the product name does not matter.
        assert_eq!(f("AZSDK-Python-Identity/1.5.0"), Date);
        // The first identity token wins over one in AZURE_HTTP_USER_AGENT.
        assert_eq!(
            f(&format!(
                "azsdk-python-identity/1.27.0 {PY_PLATFORM} azsdk-python-identity/1.5.0"
            )),
            Epoch
        );
    }

    #[test]
    fn comments_and_look_alikes_do_not_count() {
        assert_eq!(f("curl/8.0 (azsdk-python-identity/1.5.0; x)"), Epoch);
        assert_eq!(
            f("curl/8.0 (a (nested azsdk-js-identity/1.5.2) b) c/1"),
            Epoch
        );
        assert_eq!(f("xazsdk-python-identity/1.5.0"), Epoch);
        assert_eq!(f("azsdk-python-identity-aio/1.5.0"), Epoch);
        assert_eq!(f("azsdk-python-identity 1.5.0"), Epoch);
    }

    #[test]
    fn unknown_missing_and_other_clients_keep_epoch() {
        assert_eq!(format_for(None), Epoch);
        assert_eq!(format_for(Some(b"")), Epoch);
        assert_eq!(format_for(Some(b"azsdk-python-identity/1.5.0 \xff")), Epoch);
        for ua in [
            "python-requests/2.34.2",
            "Go-http-client/1.1",
            "azsdk-net-Identity/1.3.0 (.NET 6.0; Linux)",
            "azsdk-java-azure-identity/1.2.0 (11; Linux)",
            "azsdk-go-azidentity/v1.0.0 (go1.18; linux)",
            "ms-rest-js/2.6.0 Node/v14",
        ] {
            assert_eq!(f(ua), Epoch, "{ua}");
        }
    }

    #[test]
    fn modes() {
        let old = Some(b"azsdk-python-identity/1.5.0".as_slice());
        assert_eq!(ExpiresOnMode::Auto.format(old), Date);
        assert_eq!(ExpiresOnMode::Epoch.format(old), Epoch);
        assert_eq!(ExpiresOnMode::Date.format(None), Date);
        assert_eq!("DATE".parse(), Ok(ExpiresOnMode::Date));
        assert_eq!(" epoch ".parse(), Ok(ExpiresOnMode::Epoch));
        assert_eq!("".parse(), Ok(ExpiresOnMode::Auto));
        assert!("iso".parse::<ExpiresOnMode>().is_err());
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("1.5.0b1"), Some((1, 5, 0)));
        assert_eq!(parse_version("3.0.0-beta.1"), Some((3, 0, 0)));
        assert_eq!(parse_version("2"), Some((2, 0, 0)));
        assert_eq!(parse_version("v1.0.0"), None);
        assert_eq!(parse_version("99999999999.0"), None);
    }
}
