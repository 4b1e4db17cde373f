//! The key format `sg_<key id>_<secret>`: generating, parsing, hashing and masking keys.
//!
//! Only a SHA-256 digest of the secret is ever stored; the secret has 190 bits from the OS CSPRNG,
//! so a fast hash is enough (there is nothing to brute-force).

use crate::model::{now_unix, KeyRecord, UnixSeconds};
use rand::distr::{Alphanumeric, SampleString};
use rand::TryRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "sg_";
/// 12 alphanumerics ≈ 71 bits: unique ids without a round trip to check.
const ID_LEN: usize = 12;
/// 32 alphanumerics ≈ 190 bits, well past the 128 the contract asks for.
const SECRET_LEN: usize = 32;
/// Longest id or secret accepted when parsing, so hostile input costs little to reject.
const MAX_PART_LEN: usize = 128;

/// A freshly generated key: shown once, then only its digest is kept.
pub struct NewKey {
    pub id: String,
    pub full: String,
    pub digest_hex: String,
    pub masked: String,
}

impl NewKey {
    /// The stored record for this key (never the key itself), created now.
    pub fn record(
        &self,
        app_id: &str,
        name: &str,
        created_by: &str,
        expires_at: Option<UnixSeconds>,
    ) -> KeyRecord {
        KeyRecord {
            id: self.id.clone(),
            app_id: app_id.to_owned(),
            name: name.to_owned(),
            masked: self.masked.clone(),
            secret_hash: self.digest_hex.clone(),
            created_at: now_unix(),
            created_by: created_by.to_owned(),
            expires_at,
            last_used_at: None,
            allowed_ips: Vec::new(),
            disabled: false,
            revoked_at: None,
            revoked_by: None,
        }
    }
}

/// A syntactically valid presented key.
#[derive(Debug, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

/// Makes a new key from the OS random generator.
pub fn generate() -> NewKey {
    let mut rng = rand::rngs::OsRng.unwrap_err();
    let id = Alphanumeric.sample_string(&mut rng, ID_LEN);
    let secret = Alphanumeric.sample_string(&mut rng, SECRET_LEN);
    let full = format!("{PREFIX}{id}_{secret}");
    NewKey {
        digest_hex: hex::encode(digest(&secret)),
        masked: mask(&full),
        id,
        full,
    }
}

/// Also used for ids of apps.
pub fn random_id() -> String {
    Alphanumeric.sample_string(&mut rand::rngs::OsRng.unwrap_err(), ID_LEN)
}

/// Splits a presented key; `None` for anything not shaped like one of ours.
pub fn parse(key: &str) -> Option<PresentedKey<'_>> {
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let valid = |s: &str| {
        !s.is_empty() && s.len() <= MAX_PART_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric())
    };
    (valid(id) && valid(secret)).then_some(PresentedKey { id, secret })
}

/// SHA-256 of a secret.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Compares digests in constant time.
pub fn digests_match(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// First 4 and last 4 characters, the rest `*`.
pub fn mask(full: &str) -> String {
    let chars: Vec<char> = full.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let hidden = chars.len() - 8;
    let mut out: String = chars[..4].iter().collect();
    out.push_str(&"*".repeat(hidden));
    out.extend(&chars[chars.len() - 4..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_and_verify() {
        let key = generate();
        let parsed = parse(&key.full).expect("parses");
        assert_eq!(parsed.id, key.id);
        let mut stored = [0u8; 32];
        hex::decode_to_slice(&key.digest_hex, &mut stored).expect("hex");
        assert!(digests_match(&digest(parsed.secret), &stored));
        assert!(!digests_match(&digest("wrong"), &stored));
        assert_eq!(key.full.len(), 3 + ID_LEN + 1 + SECRET_LEN);
        assert_ne!(generate().full, key.full);
    }

    #[test]
    fn masks_all_but_the_ends() {
        let full = "sg_abcdefghijkl_0123456789";
        let masked = mask(full);
        assert_eq!(masked.len(), full.len());
        assert!(masked.starts_with("sg_a") && masked.ends_with("6789"));
        assert_eq!(masked.matches('*').count(), full.len() - 8);
    }

    #[test]
    fn rejects_malformed_keys() {
        for bad in [
            "", "sg_", "sg__x", "sg_x_", "xx_a_b", "sg_a_b_c", "sg_a-b_c", "sg_a_ b",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse(&format!("sg_a_{}", "x".repeat(200))), None);
    }
}
