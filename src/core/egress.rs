//! The egress proxy of the outbound legs (Entra ID, the identity-binding token proxy):
//! `HTTPS_PROXY` / `https_proxy` for `https` destinations, `HTTP_PROXY` / `http_proxy` for `http`
//! ones, `NO_PROXY` / `no_proxy` for exceptions, the way curl and the Go and Python HTTP stacks
//! read them (the upper-case name first). `https` goes through an HTTP `CONNECT` tunnel; basic
//! auth in the proxy URL (`http://user:pass@proxy:3128`) becomes `Proxy-Authorization`.
//!
//! The sidecar's own listeners are never behind a proxy, and loopback destinations
//! (`localhost`, `127.0.0.0/8`, `::1`) always go direct. Proxy credentials are never displayed:
//! everything that prints a proxy prints [`ProxyUrl`]'s `host:port`.
//!
//! We match `NO_PROXY` ourselves, instead of leaving the variables to reqwest, so that `doctor`,
//! the logs and the client agree on one answer per destination ([`EgressProxy::route`]). The
//! entries are: `*` (everything), an IP address, a CIDR block (`10.0.0.0/8`, `fd00::/8`), or a
//! domain, which matches itself and its subdomains (`example.com`, `.example.com` and
//! `*.example.com` are the same). A `:port` on an entry is ignored. Names are never resolved to
//! match an IP entry.
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use reqwest::Url;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One proxy: its URL (credentials included, never displayed) and the variable it came from.
#[derive(Clone)]
pub struct ProxyUrl {
    url: Url,
    /// `HTTPS_PROXY`, `https_proxy`, ...
    pub source: &'static str,
}

impl ProxyUrl {
    /// `host:port` of the proxy: what logs and `doctor` show.
    pub fn host_port(&self) -> String {
        let host = self.url.host_str().unwrap_or("?");
        let port = self.url.port_or_known_default().unwrap_or(80);
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }

    fn has_credentials(&self) -> bool {
        !self.url.username().is_empty() || self.url.password().is_some()
    }

    /// `Basic base64(user:pass)`, percent-decoded as curl does.
    fn basic_auth(&self) -> Option<String> {
        if !self.has_credentials() {
            return None;
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let user = decode(self.url.username());
        let pass = decode(self.url.password().unwrap_or(""));
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        ))
    }
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.host_port(), self.source)
    }
}

impl std::fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.host_port())
    }
}

/// How a destination is reached.
#[derive(Debug, Clone)]
pub enum Route<'a> {
    /// Through this proxy.
    Proxy(&'a ProxyUrl),
    /// Directly, and why.
    Direct(String),
}

impl std::fmt::Display for Route<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Proxy(p) => write!(f, "through the proxy {p} ({})", p.source),
            Route::Direct(why) => write!(f, "direct ({why})"),
        }
    }
}

/// The proxy settings of the outbound legs.
#[derive(Debug, Clone, Default)]
pub struct EgressProxy {
    https: Option<ProxyUrl>,
    http: Option<ProxyUrl>,
    no_proxy: NoProxy,
    /// The variable `no_proxy` came from, for messages.
    no_proxy_source: &'static str,
}

impl EgressProxy {
    /// Reads the process environment.
    pub fn from_env() -> Result<EgressProxy, String> {
        EgressProxy::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `get` (the environment, or a test's map).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<EgressProxy, String> {
        let first = |names: [&'static str; 2]| {
            names
                .into_iter()
                .find_map(|n| get(n).filter(|v| !v.trim().is_empty()).map(|v| (n, v)))
        };
        let proxy = |names| match first(names) {
            None => Ok(None),
            Some((source, value)) => parse_proxy(&value)
                .map(|url| Some(ProxyUrl { url, source }))
                .map_err(|e| format!("{source}: {e}")),
        };
        let (no_proxy_source, no_proxy) = match first(["NO_PROXY", "no_proxy"]) {
            Some((n, v)) => (n, NoProxy::parse(&v)),
            None => ("NO_PROXY", NoProxy::default()),
        };
        Ok(EgressProxy {
            https: proxy(["HTTPS_PROXY", "https_proxy"])?,
            http: proxy(["HTTP_PROXY", "http_proxy"])?,
            no_proxy,
            no_proxy_source,
        })
    }

    /// True when no proxy is configured at all.
    pub fn is_none(&self) -> bool {
        self.https.is_none() && self.http.is_none()
    }

    /// How `url` is reached.
    pub fn route(&self, url: &Url) -> Route<'_> {
        let proxy = match url.scheme() {
            "https" => self.https.as_ref(),
            "http" => self.http.as_ref(),
            _ => None,
        };
        let Some(proxy) = proxy else {
            let var = if url.scheme() == "http" {
                "HTTP_PROXY"
            } else {
                "HTTPS_PROXY"
            };
            return Route::Direct(format!("{var} is not set"));
        };
        let Some(host) = url.host() else {
            return Route::Direct("no host".into());
        };
        if is_loopback(&host) {
            return Route::Direct("loopback destinations never use the proxy".into());
        }
        if let Some(entry) = self.no_proxy.matching(&host) {
            return Route::Direct(format!("{} entry {entry:?}", self.no_proxy_source));
        }
        Route::Proxy(proxy)
    }

    /// The proxy for `url`, if any.
    pub fn proxy_for(&self, url: &Url) -> Option<&ProxyUrl> {
        match self.route(url) {
            Route::Proxy(p) => Some(p),
            Route::Direct(_) => None,
        }
    }

    /// Applies these settings to a client being built: a custom proxy that answers with
    /// [`EgressProxy::proxy_for`], or no proxy at all (reqwest then does not read the
    /// variables itself).
    pub fn apply(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        if self.is_none() {
            return builder.no_proxy();
        }
        let me = self.clone();
        builder.proxy(reqwest::Proxy::custom(move |url| {
            me.proxy_for(url).map(|p| p.url.clone())
        }))
    }

    /// Like [`EgressProxy::apply`], but every request of the client takes the route of
    /// `decided_for`: for the token-proxy leg, whose requests name the SNI host while the
    /// connection goes to the proxy's host.
    pub fn apply_for(
        &self,
        builder: reqwest::ClientBuilder,
        decided_for: &Url,
    ) -> reqwest::ClientBuilder {
        match self.proxy_for(decided_for) {
            None => builder.no_proxy(),
            Some(p) => {
                let url = p.url.clone();
                builder.proxy(reqwest::Proxy::custom(move |_| Some(url.clone())))
            }
        }
    }
}

/// What a proxy answers to `CONNECT target`, for errors, logs and `doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyCheck {
    /// The tunnel opens: the proxy is not the problem.
    Open,
    /// The proxy refused or failed; the text says how (no credentials in it).
    Failed(String),
}

/// Asks `proxy` for a tunnel to `host:port` the way the client does (with its basic auth), and
/// reports its answer: `connection refused`, `answered "HTTP/1.1 407 Proxy Authentication
/// Required"`, `no answer within 3s`.
pub async fn check_proxy(proxy: &ProxyUrl, host: &str, port: u16, limit: Duration) -> ProxyCheck {
    let attempt = async {
        let addr = proxy.host_port();
        let mut stream = tokio::net::TcpStream::connect(addr.as_str())
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(auth) = proxy.basic_auth() {
            req.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        req.push_str("\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("cannot send CONNECT: {e}"))?;
        let mut buf = vec![0u8; 1024];
        let mut len = 0;
        loop {
            let n = stream
                .read(&mut buf[len..])
                .await
                .map_err(|e| format!("reading its answer failed: {e}"))?;
            if n == 0 {
                return Err(if len == 0 {
                    "it closed the connection without answering".to_string()
                } else {
                    "it closed the connection mid-answer".to_string()
                });
            }
            len += n;
            if let Some(end) = buf[..len].windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&buf[..end]).into_owned();
                let ok = line
                    .split_whitespace()
                    .nth(1)
                    .is_some_and(|code| code == "200");
                return if ok {
                    Ok(())
                } else {
                    let line: String = line.chars().take(120).collect();
                    Err(format!("it answered {line:?} to CONNECT {target}"))
                };
            }
            if len == buf.len() {
                return Err("its answer is not HTTP".to_string());
            }
        }
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(Ok(())) => ProxyCheck::Open,
        Ok(Err(e)) => ProxyCheck::Failed(e),
        Err(_) => ProxyCheck::Failed(format!("no answer within {}s", limit.as_secs_f32())),
    }
}

fn parse_proxy(value: &str) -> Result<Url, String> {
    let v = value.trim();
    // curl and Go accept a bare host:port and mean http://.
    let with_scheme = if v.contains("://") {
        v.to_string()
    } else {
        format!("http://{v}")
    };
    let url = Url::parse(&with_scheme).map_err(|e| format!("the proxy URL is not valid: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "proxy scheme {:?} is not supported; use http://HOST:PORT (CONNECT is used for https destinations)",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the proxy URL has no host".to_string());
    }
    Ok(url)
}

fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.');
            d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost")
        }
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The parsed `NO_PROXY` list.
#[derive(Debug, Clone, Default)]
struct NoProxy {
    entries: Vec<(String, Entry)>,
}

#[derive(Debug, Clone)]
enum Entry {
    All,
    Ip(IpAddr),
    Cidr(IpAddr, u8),
    Domain(String),
}

impl NoProxy {
    fn parse(list: &str) -> NoProxy {
        let entries = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|raw| (raw.to_string(), Entry::parse(raw)))
            .collect();
        NoProxy { entries }
    }

    /// The first entry matching `host`.
    fn matching(&self, host: &url::Host<&str>) -> Option<&str> {
        let ip = match host {
            url::Host::Ipv4(v4) => Some(IpAddr::V4(*v4)),
            url::Host::Ipv6(v6) => Some(IpAddr::V6(*v6)),
            url::Host::Domain(_) => None,
        };
        self.entries
            .iter()
            .find(|(_, e)| match (e, ip, host) {
                (Entry::All, _, _) => true,
                (Entry::Ip(a), Some(ip), _) => *a == ip,
                (Entry::Cidr(net, bits), Some(ip), _) => in_cidr(ip, *net, *bits),
                (Entry::Domain(d), None, url::Host::Domain(h)) => {
                    let h = h.trim_end_matches('.').to_ascii_lowercase();
                    h == *d || h.ends_with(&format!(".{d}"))
                }
                _ => false,
            })
            .map(|(raw, _)| raw.as_str())
    }
}

impl Entry {
    fn parse(raw: &str) -> Entry {
        if raw == "*" {
            return Entry::All;
        }
        let unbracketed = raw.trim_start_matches('[').replace(']', "");
        if let Some((net, bits)) = unbracketed.split_once('/')
            && let (Ok(net), Ok(bits)) = (net.parse::<IpAddr>(), bits.parse::<u8>())
        {
            let max = if net.is_ipv4() { 32 } else { 128 };
            return Entry::Cidr(net, bits.min(max));
        }
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Entry::Ip(ip);
        }
        // `[v6]:port`, `v4:port` and `name:port`: the port is ignored.
        if let Some((h, port)) = raw.rsplit_once(':')
            && port.bytes().all(|b| b.is_ascii_digit())
        {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = h.parse::<IpAddr>() {
                return Entry::Ip(ip);
            }
            return Entry::Domain(domain(h));
        }
        Entry::Domain(domain(raw))
    }
}

fn domain(raw: &str) -> String {
    raw.trim_start_matches("*.")
        .trim_start_matches('.')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (ip, net, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u128::from(u32::from(a)), u128::from(u32::from(n)), 32),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
        (IpAddr::V6(a), IpAddr::V4(n)) => match a.to_ipv4_mapped() {
            Some(a) => (u128::from(u32::from(a)), u128::from(u32::from(n)), 32),
            None => return false,
        },
        (IpAddr::V4(_), IpAddr::V6(_)) => return false,
    };
    if bits == 0 {
        return true;
    }
    let shift = width - u32::from(bits);
    (ip >> shift) == (net >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(vars: &[(&str, &str)]) -> EgressProxy {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        EgressProxy::from_vars(|n| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()))
            .expect("valid")
    }

    fn via(e: &EgressProxy, url: &str) -> Option<String> {
        e.proxy_for(&Url::parse(url).expect("url"))
            .map(ProxyUrl::host_port)
    }

    #[test]
    fn https_and_http_destinations_use_their_own_variable() {
        let e = egress(&[
            ("HTTPS_PROXY", "http://secure:3128"),
            ("http_proxy", "plain:8080"),
        ]);
        assert_eq!(
            via(&e, "https://login.microsoftonline.com/x").as_deref(),
            Some("secure:3128")
        );
        assert_eq!(
            via(&e, "http://example.org/").as_deref(),
            Some("plain:8080")
        );
        let only_http = egress(&[("HTTP_PROXY", "http://plain:8080")]);
        assert_eq!(via(&only_http, "https://login.microsoftonline.com/"), None);
    }

    #[test]
    fn upper_case_wins_and_blank_means_unset() {
        let e = egress(&[
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "http://lower:2"),
        ]);
        assert_eq!(via(&e, "https://a.example/").as_deref(), Some("upper:1"));
        let e = egress(&[("HTTPS_PROXY", " "), ("https_proxy", "http://lower:2")]);
        assert_eq!(via(&e, "https://a.example/").as_deref(), Some("lower:2"));
    }

    #[test]
    fn loopback_never_uses_the_proxy() {
        let e = egress(&[("HTTPS_PROXY", "http://p:1"), ("HTTP_PROXY", "http://p:1")]);
        for url in [
            "https://localhost:8443/",
            "http://127.0.0.1:8000/",
            "https://127.9.9.9/",
            "https://[::1]:1/",
            "https://a.localhost/",
        ] {
            assert_eq!(via(&e, url), None, "{url}");
        }
    }

    #[test]
    fn no_proxy_matches_hosts_suffixes_ips_cidrs_and_star() {
        let e = egress(&[
            ("HTTPS_PROXY", "http://p:1"),
            (
                "no_proxy",
                "exact.example, .suffix.example, *.star.example, 10.1.2.3, 192.168.0.0/16, fd00::/8, svc:443",
            ),
        ]);
        for direct in [
            "https://exact.example/",
            "https://sub.exact.example/",
            "https://suffix.example/",
            "https://a.b.suffix.example/",
            "https://x.star.example/",
            "https://10.1.2.3/",
            "https://192.168.44.5/",
            "https://[fd12::1]/",
            "https://svc/",
        ] {
            assert_eq!(via(&e, direct), None, "{direct}");
        }
        for proxied in [
            "https://notexact.example/",
            "https://10.1.2.4/",
            "https://192.169.0.1/",
            "https://[fe80::1]/",
            "https://login.microsoftonline.com/",
        ] {
            assert!(via(&e, proxied).is_some(), "{proxied}");
        }
        let star = egress(&[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", "*")]);
        assert_eq!(via(&star, "https://anything.example/"), None);
    }

    #[test]
    fn credentials_are_never_displayed() {
        let e = egress(&[("HTTPS_PROXY", "http://user:s3cret@proxy.corp:3128")]);
        let url = Url::parse("https://login.microsoftonline.com/").expect("url");
        let p = e.proxy_for(&url).expect("proxy");
        for shown in [
            p.to_string(),
            format!("{p:?}"),
            format!("{e:?}"),
            e.route(&url).to_string(),
        ] {
            assert!(
                !shown.contains("s3cret") && !shown.contains("user"),
                "{shown}"
            );
        }
        assert_eq!(p.basic_auth().as_deref(), Some("Basic dXNlcjpzM2NyZXQ="));
    }

    #[test]
    fn bad_proxy_urls_name_their_variable() {
        let e =
            EgressProxy::from_vars(|n| (n == "HTTPS_PROXY").then(|| "socks5://x:1".to_string()))
                .expect_err("socks");
        assert!(e.starts_with("HTTPS_PROXY"), "{e}");
    }
}
