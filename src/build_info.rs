//! What this binary is: its version, the commit it was built from and when (the commit's time,
//! `SOURCE_DATE_EPOCH`, not the clock: two builds of one commit stay bit-identical). Fixed at
//! compile time from the environment scripts/build-static sets (`IDENTITY_SIDECAR_COMMIT`,
//! `SOURCE_DATE_EPOCH`); a build without them (`cargo run`, tests) says `unknown`.
//!
//! Printed by `--version` of both binaries, logged at start, and meant for the metrics'
//! `identity_sidecar_build_info{version,commit}`.
use std::sync::OnceLock;

/// The package version (Cargo.toml).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit the binary was built from (40 hex digits, `-dirty` appended when the work tree
/// had uncommitted changes), or `unknown`.
pub const COMMIT: &str = match option_env!("IDENTITY_SIDECAR_COMMIT") {
    Some(c) if !c.is_empty() => c,
    _ => "unknown",
};

/// `SOURCE_DATE_EPOCH` at build time: the commit's time in seconds since 1970 (UTC).
pub const BUILD_EPOCH: Option<u64> = match option_env!("SOURCE_DATE_EPOCH") {
    Some(s) if !s.is_empty() => match parse_u64(s) {
        Some(n) => Some(n),
        None => panic!("SOURCE_DATE_EPOCH is not a number of seconds"),
    },
    _ => None,
};

const BUILD_DATE_BYTES: [u8; 20] = match BUILD_EPOCH {
    Some(secs) => rfc3339(secs),
    None => *b"unknown\0\0\0\0\0\0\0\0\0\0\0\0\0",
};

/// [`BUILD_EPOCH`] as RFC 3339 UTC (`2026-12-06T21:54:10Z`), or `unknown`.
pub const BUILD_DATE: &str = match BUILD_EPOCH {
    Some(_) => match std::str::from_utf8(&BUILD_DATE_BYTES) {
        Ok(s) => s,
        Err(_) => panic!("unreachable: the date is ASCII"),
    },
    None => "unknown",
};

/// What `--version` prints after the program name:
/// `0.1.0 (commit 0123…abcd, built 2026-12-06T21:54:10Z)`.
pub fn version_line() -> &'static str {
    static LINE: OnceLock<String> = OnceLock::new();
    LINE.get_or_init(|| format!("{VERSION} (commit {COMMIT}, built {BUILD_DATE})"))
}

const fn parse_u64(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut n: u64 = 0;
    while i < b.len() {
        let d = b[i];
        if !d.is_ascii_digit() || i >= 12 {
            return None; // not a number, or past the year 9999
        }
        n = n * 10 + (d - b'0') as u64;
        i += 1;
    }
    if b.is_empty() || n > 253_402_300_799 {
        return None;
    }
    Some(n)
}

/// Seconds since 1970 (up to the end of 9999) as `YYYY-MM-DDTHH:MM:SSZ`, in a `const fn` so the
/// date is in the binary as text (civil-from-days, H. Hinnant's algorithm).
pub const fn rfc3339(secs: u64) -> [u8; 20] {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    let mut out = *b"0000-00-00T00:00:00Z";
    const fn put(out: &mut [u8; 20], at: usize, width: usize, mut v: u64) {
        let mut i = width;
        while i > 0 {
            i -= 1;
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    put(&mut out, 0, 4, year);
    put(&mut out, 5, 2, month);
    put(&mut out, 8, 2, day);
    put(&mut out, 11, 2, rem / 3600);
    put(&mut out, 14, 2, rem % 3600 / 60);
    put(&mut out, 17, 2, rem % 60);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_the_time_crate() {
        let fmt = time::format_description::well_known::Rfc3339;
        for secs in [
            0u64,
            59,
            86_399,
            86_400,
            951_782_400, // 2000-02-29
            951_868_799,
            1_709_164_800, // 2024-02-29
            1_798_761_599, // 2026-12-31T23:59:59Z
            4_107_542_400, // 2100-03-01 (2100 is not a leap year)
            253_402_300_799,
        ] {
            let ours = rfc3339(secs);
            let theirs = time::OffsetDateTime::from_unix_timestamp(secs as i64)
                .unwrap()
                .format(&fmt)
                .unwrap();
            assert_eq!(std::str::from_utf8(&ours).unwrap(), theirs, "{secs}");
        }
    }

    #[test]
    fn parse_accepts_seconds_only() {
        assert_eq!(parse_u64("1765055650"), Some(1_765_055_650));
        assert_eq!(parse_u64("0"), Some(0));
        for bad in ["", "-1", "1.5", " 1", "17650556500000", "253402300800"] {
            assert_eq!(parse_u64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn version_line_names_version_commit_and_date() {
        let line = version_line();
        assert!(line.starts_with(VERSION), "{line}");
        assert!(line.contains(&format!("commit {COMMIT}")), "{line}");
        assert!(line.ends_with(&format!("built {BUILD_DATE})")), "{line}");
    }
}
