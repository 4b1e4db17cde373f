//! The key format `sg_<key id>_<secret>`: generating, parsing, hashing and masking keys.
//!
//! The secret is 32 random alphanumerics (190 bits from the OS CSPRNG) followed by a 6-character
//! [`checksum`] of the rest of the key. Keys issued before the checksum have the 32 random
//! characters alone and are still accepted, with no checksum to check; the lengths tell the two
//! apart. Only a SHA-256 digest of the whole secret is ever stored; with 190 random bits a fast
//! hash is enough (there is nothing to brute-force).

use super::checksum;
use crate::model::{now_unix, KeyRecord, UnixSeconds};
use rand::distr::{Alphanumeric, SampleString};
use rand::TryRngCore;
use sha2::{Digest, Sha256};
use siphasher::sip128::SipHasher13;
use std::sync::LazyLock;
use subtle::ConstantTimeEq;

const PREFIX: &str = "sg_";
/// 12 alphanumerics ≈ 71 bits: unique ids without a round trip to check.
const ID_LEN: usize = 12;
/// 32 alphanumerics ≈ 190 bits, well past the 128 the contract asks for.
const RANDOM_LEN: usize = 32;
/// A secret as issued now: the random part, then the checksum of everything before it.
const SECRET_LEN: usize = RANDOM_LEN + checksum::LEN;
/// A secret issued before the checksum: the random part alone.
const LEGACY_SECRET_LEN: usize = RANDOM_LEN;

/// A freshly generated key: shown once, then only its digest is kept.
pub struct NewKey {
    pub id: String,
    pub full: String,
    pub digest_hex: String,
    pub masked: String,
}

opaque_debug!(NewKey);

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
    let random = Alphanumeric.sample_string(&mut rng, RANDOM_LEN);
    let full = compose(&id, &random);
    let secret = &full[full.len() - SECRET_LEN..];
    NewKey {
        digest_hex: hex::encode(digest(secret)),
        masked: mask(&full),
        id,
        full,
    }
}

/// `sg_<id>_<random><checksum>`.
fn compose(id: &str, random: &str) -> String {
    let body = format!("{PREFIX}{id}_{random}");
    let sum = checksum::of(&body);
    body + &sum
}

/// Also used for ids of apps.
pub fn random_id() -> String {
    Alphanumeric.sample_string(&mut rand::rngs::OsRng.unwrap_err(), ID_LEN)
}

/// Splits a presented key; `None` for anything we never issued: the wrong shape, or a
/// checksummed secret whose checksum does not hold. So a mistyped or made-up key is refused
/// before any lookup; only a key in the pre-checksum format can still cost one.
pub fn parse(key: &str) -> Option<PresentedKey<'_>> {
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let alphanumeric = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
    if id.len() != ID_LEN || !alphanumeric(id) || !alphanumeric(secret) {
        return None;
    }
    let genuine = match secret.len() {
        SECRET_LEN => checksum::holds(key),
        LEGACY_SECRET_LEN => true,
        _ => false,
    };
    genuine.then_some(PresentedKey { id, secret })
}

/// SHA-256 of a secret.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Compares digests in constant time.
pub fn digests_match(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// A 128-bit SipHash of a secret under a key drawn at start-up and never shown: what a cached
/// key remembers of the secret that last verified, so later requests skip SHA-256. It proves
/// nothing to anyone outside this process, and a secret that does not match it is checked
/// against the stored digest as usual.
pub fn verified_tag(secret: &str) -> [u8; 16] {
    static TAG_KEY: LazyLock<(u64, u64)> = LazyLock::new(rand::random);
    let (k0, k1) = *TAG_KEY;
    SipHasher13::new_with_keys(k0, k1)
        .hash(secret.as_bytes())
        .as_bytes()
}

/// Compares tags in constant time.
pub fn tags_match(a: &[u8; 16], b: &[u8; 16]) -> bool {
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
        assert_eq!(parsed.secret.len(), 38);
        assert_ne!(generate().full, key.full);
    }

    #[test]
    fn the_readme_example_checks_out() {
        let example = "sg_h2K9xQ0mWb7T_Yc1Dq8LzR4uVn6Jp3Ae0Gs5Wk9Tb2Hf72QxHRw";
        assert_eq!(parse(example).map(|p| p.id), Some("h2K9xQ0mWb7T"));
        assert_eq!(checksum::of("123456789"), "3jZRME");
    }

    #[test]
    fn keys_in_the_pre_checksum_format_still_parse() {
        let old = "sg_AbCdEf012345_0123456789abcdefghijKLMNOPqrstuv";
        let parsed = parse(old).expect("an old key parses");
        assert_eq!(parsed.secret, "0123456789abcdefghijKLMNOPqrstuv");
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
        let secret = "0123456789abcdefghijKLMNOPqrstuv";
        for bad in [
            "",
            "sg_",
            "sg__x",
            "sg_x_",
            "xx_a_b",
            "sg_a_b_c",
            "sg_a-b_c",
            "sg_a_ b",
            // Right shape but for one part.
            &format!("sg_AbCdEf01234_{secret}"),
            &format!("sg_AbCdEf0123456_{secret}"),
            &format!("sg_AbCdEf012345_{secret}x"),
            &format!("sg_AbCdEf012345_{secret}_"),
            &format!("sg_AbCdEf-12345_{secret}"),
            // 38 characters whose last 6 are not the checksum.
            &format!("sg_AbCdEf012345_{secret}000000"),
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse(&format!("sg_a_{}", "x".repeat(200))), None);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        const ALPHANUMERIC: &[u8] =
            b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

            #[test]
            fn every_issued_key_passes_its_checksum(
                id in "[0-9A-Za-z]{12}",
                random in "[0-9A-Za-z]{32}",
            ) {
                let full = compose(&id, &random);
                let parsed = parse(&full);
                prop_assert!(parsed.is_some(), "{}", full);
                prop_assert_eq!(parsed.map(|p| p.id), Some(id.as_str()));
            }

            /// Any one character of the id or secret replaced by another alphanumeric: refused.
            #[test]
            fn any_single_substitution_fails_the_checksum(
                id in "[0-9A-Za-z]{12}",
                random in "[0-9A-Za-z]{32}",
                at in 0..ID_LEN + SECRET_LEN,
                shift in 1..ALPHANUMERIC.len(),
            ) {
                let full = compose(&id, &random);
                // Skip the `_` between id and secret: the position runs over the id, then the secret.
                let index = PREFIX.len() + if at < ID_LEN { at } else { at + 1 };
                let mut bytes = full.clone().into_bytes();
                let was = ALPHANUMERIC.iter().position(|&c| c == bytes[index]).unwrap_or(0);
                bytes[index] = ALPHANUMERIC[(was + shift) % ALPHANUMERIC.len()];
                let changed = String::from_utf8(bytes).unwrap_or_default();
                prop_assert_ne!(&changed, &full);
                prop_assert_eq!(parse(&changed), None, "{} from {}", changed, full);
            }

            #[test]
            fn generated_keys_pass_their_checksum(_round in 0..64u8) {
                let key = generate();
                prop_assert!(parse(&key.full).is_some(), "{}", key.full);
            }
        }
    }
}
