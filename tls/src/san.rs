//! The URI names in a DER certificate's subjectAltName extension, and its serial number and
//! expiry, read with a minimal DER walker: only the path certificate → tbsCertificate →
//! serialNumber, validity, extensions → subjectAltName is read, every length is checked against
//! what is left, and anything unexpected is an error.

use std::time::SystemTime;

/// subjectAltName, 2.5.29.17.
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];
const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
/// The `[3]` explicit tag around a certificate's extensions.
const EXTENSIONS: u8 = 0xa3;
/// A GeneralName's `uniformResourceIdentifier [6] IA5String`.
const URI: u8 = 0x86;
/// The `[0]` explicit tag around a certificate's version.
const VERSION: u8 = 0xa0;
const INTEGER: u8 = 0x02;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed certificate: {0}")]
pub struct DerError(&'static str);

/// One element: its tag, its contents and what follows it.
fn element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), DerError> {
    let truncated = DerError("truncated");
    let (&tag, rest) = input.split_first().ok_or(truncated.clone())?;
    let (&first, rest) = rest.split_first().ok_or(truncated.clone())?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let bytes = usize::from(first & 0x7f);
        if bytes == 0 || bytes > 4 || rest.len() < bytes {
            return Err(DerError("bad length"));
        }
        let len = rest[..bytes].iter().fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, &rest[bytes..])
    };
    if rest.len() < len {
        return Err(truncated);
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// The contents of an element that must have `tag`.
fn expect<'a>(input: &'a [u8], tag: u8, what: &'static str) -> Result<(&'a [u8], &'a [u8]), DerError> {
    match element(input)? {
        (found, contents, rest) if found == tag => Ok((contents, rest)),
        _ => Err(DerError(what)),
    }
}

/// The elements of a constructed value, in order.
fn elements(mut input: &[u8]) -> impl Iterator<Item = Result<(u8, &[u8]), DerError>> {
    std::iter::from_fn(move || {
        if input.is_empty() {
            return None;
        }
        Some(element(input).map(|(tag, contents, rest)| {
            input = rest;
            (tag, contents)
        }))
    })
}

/// Every URI subjectAltName of the certificate (none if it has no such extension).
pub fn uris(cert_der: &[u8]) -> Result<Vec<&str>, DerError> {
    let (cert, _) = expect(cert_der, SEQUENCE, "not a certificate")?;
    let (tbs, _) = expect(cert, SEQUENCE, "no tbsCertificate")?;
    let mut uris = Vec::new();
    for item in elements(tbs) {
        let (tag, contents) = item?;
        if tag != EXTENSIONS {
            continue;
        }
        let (extensions, _) = expect(contents, SEQUENCE, "extensions are not a sequence")?;
        for extension in elements(extensions) {
            let (tag, extension) = extension?;
            if tag != SEQUENCE {
                return Err(DerError("an extension is not a sequence"));
            }
            let (oid, mut rest) = expect(extension, OID, "an extension without an id")?;
            if oid != SAN_OID {
                continue;
            }
            if let Ok((BOOLEAN, _, after)) = element(rest) {
                rest = after;
            }
            let (value, _) = expect(rest, OCTET_STRING, "subjectAltName without a value")?;
            let (names, _) = expect(value, SEQUENCE, "subjectAltName is not a sequence")?;
            for name in elements(names) {
                if let (URI, uri) = name? {
                    uris.push(std::str::from_utf8(uri).map_err(|_| DerError("a URI name is not text"))?);
                }
            }
        }
    }
    Ok(uris)
}

/// A certificate's serial number (big-endian bytes, as encoded) and its validity (not before,
/// not after).
pub fn serial_and_validity(cert_der: &[u8]) -> Result<(Vec<u8>, SystemTime, SystemTime), DerError> {
    let (cert, _) = expect(cert_der, SEQUENCE, "not a certificate")?;
    let (mut tbs, _) = expect(cert, SEQUENCE, "no tbsCertificate")?;
    if let Ok((VERSION, _, rest)) = element(tbs) {
        tbs = rest;
    }
    let (serial, rest) = expect(tbs, INTEGER, "no serial number")?;
    let (_signature, rest) = expect(rest, SEQUENCE, "no signature algorithm")?;
    let (_issuer, rest) = expect(rest, SEQUENCE, "no issuer")?;
    let (validity, _) = expect(rest, SEQUENCE, "no validity")?;
    let (tag, not_before, rest) = element(validity)?;
    let not_before = time_of(tag, not_before)?;
    let (tag, not_after, _) = element(rest)?;
    Ok((serial.to_vec(), not_before, time_of(tag, not_after)?))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time_of(tag: u8, text: &[u8]) -> Result<SystemTime, DerError> {
    let bad = || DerError("a validity time is not of the form YYMMDDHHMMSSZ");
    let digits = text.strip_suffix(b"Z").ok_or_else(bad)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let number = |range: std::ops::Range<usize>| {
        digits.get(range).ok_or_else(bad).map(|d| d.iter().fold(0u32, |n, b| n * 10 + u32::from(b - b'0')))
    };
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy = number(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (GENERALIZED_TIME, 14) => (number(0..4)?, 4),
        _ => return Err(bad()),
    };
    let field = |i: usize| number(rest + 2 * i..rest + 2 * i + 2).and_then(|n| u8::try_from(n).map_err(|_| bad()));
    let month = time::Month::try_from(field(0)?).map_err(|_| bad())?;
    let date =
        time::Date::from_calendar_date(i32::try_from(year).map_err(|_| bad())?, month, field(1)?).map_err(|_| bad())?;
    let time = time::Time::from_hms(field(2)?, field(3)?, field(4)?).map_err(|_| bad())?;
    Ok(time::PrimitiveDateTime::new(date, time).assume_utc().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{Ca, Validity};
    use crate::identity::{PeerIdentity, Role};

    fn cert() -> Vec<u8> {
        let ca = Ca::generate("c", Validity::days_from_now(1)).unwrap();
        let id = PeerIdentity::new("c", Role::Client, "app").unwrap();
        let issued = ca.issue(&id, &["localhost".into()], Validity::days_from_now(1)).unwrap();
        let der: rustls_pki_types::CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        der.to_vec()
    }

    #[test]
    fn finds_the_uri_name_among_the_others() {
        assert_eq!(uris(&cert()).unwrap(), ["spiffe://shardkv/c/client/app"]);
    }

    #[test]
    fn reads_the_serial_and_the_expiry() {
        let ca = Ca::generate("c", Validity::days_from_now(1)).unwrap();
        let id = PeerIdentity::new("c", Role::Client, "app").unwrap();
        let not_after = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000_000);
        let validity = Validity { not_before: SystemTime::now(), not_after };
        let issued = ca.issue(&id, &[], validity).unwrap();
        let der: rustls_pki_types::CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let (serial, _, read) = serial_and_validity(&der).unwrap();
        assert_eq!(read, not_after);
        assert!(!serial.is_empty());
        let later = Validity {
            not_before: SystemTime::now(),
            not_after: not_after + std::time::Duration::from_secs(86_400 * 365 * 40),
        };
        let (_, _, read) = serial_and_validity(&der_of(&ca.issue(&id, &[], later).unwrap().cert_pem)).unwrap();
        assert_eq!(read, later.not_after, "a GeneralizedTime after 2049");
        let der = cert();
        for len in 0..der.len() {
            assert!(serial_and_validity(&der[..len]).is_err(), "a certificate cut at {len} bytes was accepted");
        }
    }

    fn der_of(pem: &str) -> Vec<u8> {
        let der: rustls_pki_types::CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes()).unwrap();
        der.to_vec()
    }

    #[test]
    fn truncated_or_garbled_certificates_are_errors_not_panics() {
        let der = cert();
        for len in 0..der.len() {
            assert!(uris(&der[..len]).is_err(), "a certificate cut at {len} bytes was accepted");
        }
        for at in 0..der.len() {
            let mut garbled = der.clone();
            garbled[at] ^= 0xff;
            let _ = uris(&garbled);
            let _ = serial_and_validity(&garbled);
        }
        assert!(uris(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
