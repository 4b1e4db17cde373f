//! The checksum that ends every key's secret: CRC-32 (IEEE 802.3, as in zlib and PNG) of
//! everything before it, `sg_<key id>_<random part>`, as 6 base62 digits (`0-9A-Za-z`, most
//! significant first, zero-padded).
//!
//! It guards nothing by itself (anyone can compute it): it lets the gateway refuse a mistyped or
//! made-up key before any cache or store lookup, and lets secret scanners tell a real key from a
//! lookalike. CRC-32 catches every single-character change, and 62^6 > 2^32, so the encoding
//! loses nothing.

/// Base62 digits in ASCII order.
const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Characters of checksum at the end of a secret.
pub(super) const LEN: usize = 6;

/// The checksum of `body` (`sg_<key id>_<random part>`).
pub(super) fn of(body: &str) -> String {
    let mut n = crc32fast::hash(body.as_bytes());
    let mut out = [b'0'; LEN];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[usize::try_from(n % 62).unwrap_or(0)];
        n /= 62;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

/// Whether `key` (ASCII) ends in the checksum of the rest of it.
pub(super) fn holds(key: &str) -> bool {
    let Some(split) = key.len().checked_sub(LEN) else {
        return false;
    };
    match (key.get(..split), key.get(split..)) {
        (Some(body), Some(sum)) => of(body) == sum,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // The CRC-32 check value: 0xCBF43926, which is 3jZRME in base62.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(of("123456789"), "3jZRME");
        // CRC-32 of "" is 0.
        assert_eq!(of(""), "000000");
        assert!(holds("1234567893jZRME"));
        assert!(!holds("1234567893jZRMF"));
        assert!(!holds("3jZRM"));
    }
}
