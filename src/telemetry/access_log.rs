//! The access log: one line per token request (flavor, identity, resource, status, latency,
//! cache hit or miss), in the same text or JSON layout as the rest of the logs. Off by default
//! (about 1 µs a request, and a line per request is noise at sidecar volumes; the info-level
//! lines of the token core and the periodic [`super::summary`] say what operators need): on at
//! info with `serve --access-log` (`IDENTITY_SIDECAR_ACCESS_LOG`), or at debug with
//! `RUST_LOG=identity_sidecar::access=debug`.
//!
//! It is written on every request, so it skips `tracing`'s general-purpose formatter: the line is
//! built in a reused per-thread buffer and handed to the batching log writer of
//! [`crate::telemetry::logging::sink`]. `RUST_LOG` still governs it (an event of target
//! `identity_sidecar::access`). Without that writer (a library user, tests) it falls back to a
//! plain `tracing` event.
use std::cell::RefCell;
use std::io::Write as _;

use crate::telemetry::logging::{self, LogFormat};

/// One finished token request.
pub struct Entry<'a> {
    pub flavor: &'a str,
    pub client_id: &'a str,
    pub resource: &'a str,
    pub status: u16,
    pub latency_ms: f64,
    pub cache: &'a str,
}

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

/// Writes the line of the entry `make` builds: at info when `enabled` (`--access-log`), else at
/// debug; either only if `RUST_LOG` lets that level of target `identity_sidecar::access` through.
/// The entry (its latency reads the clock) is built only when the line is written.
pub fn record<'a>(enabled: bool, make: impl FnOnce() -> Entry<'a>) {
    let level =
        if enabled && tracing::enabled!(target: "identity_sidecar::access", tracing::Level::INFO) {
            Level::Info
        } else if tracing::enabled!(target: "identity_sidecar::access", tracing::Level::DEBUG) {
            Level::Debug
        } else {
            return;
        };
    let e = &make();
    let Some((writer, format)) = logging::sink() else {
        macro_rules! event {
            ($lvl:expr) => {
                tracing::event!(
                    target: "identity_sidecar::access", $lvl,
                    flavor = e.flavor, client_id = e.client_id, resource = e.resource,
                    status = e.status, latency_ms = e.latency_ms, cache = e.cache, "token request"
                )
            };
        }
        match level {
            Level::Info => event!(tracing::Level::INFO),
            Level::Debug => event!(tracing::Level::DEBUG),
        }
        return;
    };
    BUF.with_borrow_mut(|buf| {
        buf.clear();
        line(buf, e, *format, level);
        let mut w = writer.clone();
        let _ = w.write_all(buf);
    });
}

/// RFC 3339 UTC with microseconds, like `tracing-subscriber`'s, without `fmt` machinery.
pub(crate) fn timestamp(buf: &mut Vec<u8>) {
    let now = time::OffsetDateTime::now_utc();
    digits(buf, now.year().max(0) as u32, 4);
    buf.push(b'-');
    digits(buf, u8::from(now.month()).into(), 2);
    buf.push(b'-');
    digits(buf, now.day().into(), 2);
    buf.push(b'T');
    digits(buf, now.hour().into(), 2);
    buf.push(b':');
    digits(buf, now.minute().into(), 2);
    buf.push(b':');
    digits(buf, now.second().into(), 2);
    buf.push(b'.');
    digits(buf, now.microsecond(), 6);
    buf.push(b'Z');
}

/// `n` zero-padded to `width` digits.
fn digits(buf: &mut Vec<u8>, mut n: u32, width: usize) {
    let start = buf.len();
    buf.resize(start + width, b'0');
    for i in (start..start + width).rev() {
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The level a line is written at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Info,
    Debug,
}

/// One line in `format`: the same fields in the same order as `tracing-subscriber` would write
/// them, text or JSON.
fn line(buf: &mut Vec<u8>, e: &Entry<'_>, format: LogFormat, level: Level) {
    let json = format == LogFormat::Json;
    if json {
        buf.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(buf);
        buf.extend_from_slice(match level {
            Level::Info => b"\",\"level\":\"INFO\",\"message\":\"token request\"",
            Level::Debug => b"\",\"level\":\"DEBUG\",\"message\":\"token request\"",
        });
    } else {
        timestamp(buf);
        buf.extend_from_slice(match level {
            Level::Info => b"  INFO token request",
            Level::Debug => b" DEBUG token request",
        });
    }
    // A string field (request input: escaped), or a number written as it is.
    let text = |buf: &mut Vec<u8>, key: &str, value: &str| {
        field_key(buf, key, json);
        if json {
            json_str(buf, value);
        } else {
            text_value(buf, value);
        }
    };
    let number = |buf: &mut Vec<u8>, key: &str, value: std::fmt::Arguments<'_>| {
        field_key(buf, key, json);
        let _ = buf.write_fmt(value);
    };
    text(buf, "flavor", e.flavor);
    text(buf, "client_id", e.client_id);
    text(buf, "resource", e.resource);
    number(buf, "status", format_args!("{}", e.status));
    number(buf, "latency_ms", format_args!("{:.3}", e.latency_ms));
    text(buf, "cache", e.cache);
    buf.extend_from_slice(if json { b"}\n" } else { b"\n" });
}

/// `,"key":` in JSON, ` key=` in text.
fn field_key(buf: &mut Vec<u8>, key: &str, json: bool) {
    if json {
        buf.extend_from_slice(b",\"");
        buf.extend_from_slice(key.as_bytes());
        buf.extend_from_slice(b"\":");
    } else {
        buf.push(b' ');
        buf.extend_from_slice(key.as_bytes());
        buf.push(b'=');
    }
}

fn json_str(buf: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// Plain when safe; quoted and escaped when the value (request input) has spaces, quotes or
/// control characters, so a crafted resource cannot forge a log line.
fn text_value(buf: &mut Vec<u8>, s: &str) {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        buf.extend_from_slice(s.as_bytes());
    } else {
        let _ = write!(buf, "{s:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_in(buf: &mut Vec<u8>, format: LogFormat, level: Level, e: &Entry<'_>) {
        line(buf, e, format, level);
    }

    fn entry(resource: &str) -> Entry<'_> {
        Entry {
            flavor: "imds",
            client_id: "c",
            resource,
            status: 200,
            latency_ms: 0.1234,
            cache: "hit",
        }
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let mut buf = Vec::new();
        timestamp(&mut buf);
        let s = String::from_utf8(buf).expect("utf8");
        assert!(
            time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).is_ok(),
            "{s}"
        );
        assert_eq!(s.len(), "2026-11-26T17:32:29.258899Z".len());
    }

    #[test]
    fn json_lines_parse_and_escape_input() {
        let mut buf = Vec::new();
        line_in(
            &mut buf,
            LogFormat::Json,
            Level::Info,
            &entry("https://x\"\n{evil}"),
        );
        let v: serde_json::Value = serde_json::from_slice(&buf).expect("json");
        assert_eq!(v["resource"], "https://x\"\n{evil}");
        assert_eq!(v["status"], 200);
        assert_eq!(buf.iter().filter(|b| **b == b'\n').count(), 1);
    }

    #[test]
    fn text_lines_cannot_be_forged() {
        let mut buf = Vec::new();
        line_in(
            &mut buf,
            LogFormat::Text,
            Level::Info,
            &entry("https://vault.azure.net"),
        );
        let s = String::from_utf8(buf.clone()).expect("utf8");
        assert!(
            s.contains(" resource=https://vault.azure.net status=200 latency_ms=0.123 cache=hit\n"),
            "{s}"
        );
        buf.clear();
        line_in(
            &mut buf,
            LogFormat::Text,
            Level::Info,
            &entry("a\n2026-01-01T00:00:00Z  INFO forged"),
        );
        assert_eq!(buf.iter().filter(|b| **b == b'\n').count(), 1);
    }

    #[test]
    fn debug_lines_say_debug() {
        let mut buf = Vec::new();
        line_in(&mut buf, LogFormat::Text, Level::Debug, &entry("r"));
        assert!(String::from_utf8_lossy(&buf).contains(" DEBUG token request "));
        buf.clear();
        line_in(&mut buf, LogFormat::Json, Level::Debug, &entry("r"));
        let v: serde_json::Value = serde_json::from_slice(&buf).expect("json");
        assert_eq!(v["level"], "DEBUG");
    }
}
