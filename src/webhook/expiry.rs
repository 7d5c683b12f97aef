//! A certificate's `notAfter`, read straight from its DER: the webhook exports its serving
//! certificate's expiry as a metric, and walking to one field of the TBSCertificate is a few
//! lines, where an X.509 library would be a dependency for one number.
//!
//! `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
//! signature, issuer, validity SEQUENCE { notBefore, notAfter }, ... }, ... }` (RFC 5280 4.1).

/// `notAfter` of a DER certificate, as Unix time; `None` if it cannot be read.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (cert, _) = tlv(der, 0x30)?;
    let (tbs, _) = tlv(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest, 0xa0)?.1;
    }
    rest = tlv(rest, 0x02)?.1; // serialNumber
    rest = tlv(rest, 0x30)?.1; // signature
    rest = tlv(rest, 0x30)?.1; // issuer
    let (validity, _) = tlv(rest, 0x30)?;
    let tag = *validity.first()?;
    let (_, after) = tlv(validity, tag)?;
    let tag = *after.first()?;
    let (time, _) = tlv(after, tag)?;
    parse_time(tag, std::str::from_utf8(time).ok()?)
}

/// One element with tag `tag`: its content and what follows it.
fn tlv(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *b.first()? != tag {
        return None;
    }
    let first = *b.get(1)? as usize;
    let (len, head) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let len = b
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |a, x| (a << 8) | *x as usize);
        (len, 2 + n)
    };
    let content = b.get(head..head.checked_add(len)?)?;
    Some((content, &b[head + len..]))
}

/// UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, tag 0x18).
fn parse_time(tag: u8, s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i32 = s.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, s.get(2..)?)
        }
        0x18 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    let n = |r: std::ops::Range<usize>| rest.get(r)?.parse::<u8>().ok();
    let month = time::Month::try_from(n(0..2)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, n(2..4)?).ok()?;
    let t = time::Time::from_hms(n(4..6)?, n(6..8)?, n(8..10)?).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, t)
            .assume_utc()
            .unix_timestamp(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;

    #[test]
    fn reads_the_expiry_of_a_generated_certificate() {
        let g = super::super::tls::generate(&["a.example".into()], 30).expect("generate");
        let der = CertificateDer::pem_slice_iter(g.cert.as_bytes())
            .next()
            .expect("one certificate")
            .expect("PEM");
        let at = not_after(&der).expect("notAfter");
        let want = time::OffsetDateTime::now_utc().unix_timestamp() + 30 * 86400;
        assert!((at - want).abs() < 120, "{at} vs {want}");
        assert_eq!(not_after(b"\x30\x03\x02\x01"), None);
        assert_eq!(not_after(&der[..der.len() / 3]), None);
    }

    #[test]
    fn both_time_forms() {
        assert_eq!(parse_time(0x17, "491231235959Z"), Some(2524607999));
        assert_eq!(parse_time(0x18, "20491231235959Z"), Some(2524607999));
        assert_eq!(parse_time(0x17, "soon"), None);
    }
}
