//! The one duration syntax of every flag, variable and mock-aad spec.
//!
//! A duration is a number and a unit: `500ms`, `10s`, `2m`, `1h`; decimals are allowed (`1.5s`),
//! and so is a space before the unit. **A bare number means seconds** (`--entra-timeout 3`,
//! `--token-lifetime 3600`, `probe --wait 30`), which is what those settings always meant.
//!
//! The one place where a bare number used to mean milliseconds, mock-aad's `delay:` fault, now
//! requires a unit ([`parse_with_unit`]): an old `delay:250` is refused with a message instead of
//! silently becoming 250 seconds.
use std::time::Duration;

/// Longest duration accepted, so that arithmetic on deadlines cannot overflow.
const MAX_SECS: f64 = 1e9;

/// Parses a duration; a bare number is seconds. Zero is allowed.
pub fn parse(text: &str) -> Result<Duration, String> {
    parse_inner(text, true)
}

/// Like [`parse`], but zero is refused (timeouts, lifetimes, grace periods).
pub fn parse_positive(text: &str) -> Result<Duration, String> {
    match parse_inner(text, true) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!(
            "{:?} is not a positive duration like 500ms, 10s, 2m or 1h",
            text.trim()
        )),
    }
}

/// Like [`parse`], but the unit is required.
pub fn parse_with_unit(text: &str) -> Result<Duration, String> {
    parse_inner(text, false)
}

fn parse_inner(text: &str, bare_is_seconds: bool) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("{text:?} is not a duration like 500ms, 10s, 2m or 1h");
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "" if bare_is_seconds => n,
        "" => {
            return Err(format!(
                "{text:?} has no unit: write it like 500ms, 10s, 2m or 1h"
            ));
        }
        _ => return Err(bad()),
    };
    if secs.is_finite() && (0.0..MAX_SECS).contains(&secs) {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(bad())
    }
}

/// Writes `d` in the syntax above, in the largest unit that keeps it whole (`1h`, `90s`, `250ms`).
pub fn display(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_string(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_decimals() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse(" 1 h "), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn a_bare_number_is_seconds() {
        assert_eq!(parse("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_positive("3600"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn a_unit_can_be_required() {
        assert!(
            parse_with_unit("250")
                .expect_err("bare")
                .contains("has no unit")
        );
        assert_eq!(parse_with_unit("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn nonsense_negative_and_zero_are_refused() {
        for bad in ["-1s", "1d", "soon", "", "1e12s", "s"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert!(parse_positive("0").expect_err("zero").contains("positive"));
    }

    #[test]
    fn display_round_trips() {
        for d in ["1h", "90m", "45s", "250ms", "0s"] {
            assert_eq!(display(parse(d).expect("parses")), d);
        }
    }
}
