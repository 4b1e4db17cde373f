//! Sealing one credential value: AES-256-GCM under the master key, with a fresh random 96-bit
//! nonce per value and the credential's name as associated data, so a sealed value moved to
//! another name (in Redis or the embedded file) does not open.
//!
//! The stored form is base64 (standard) of `version (1 byte) || nonce (12) || ciphertext+tag`.
//! The version byte lets a later format (another cipher) be read beside this one.

use super::master::MasterKey;
use super::value::Secret;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use zeroize::Zeroizing;

/// The format written today.
const VERSION: u8 = 1;
/// AES-GCM's standard nonce: 96 bits.
const NONCE_BYTES: usize = 12;

/// Why a sealed value did not open (or could not be sealed). Never carries the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the sealed value is not in a format this version reads")]
    Format,
    /// The wrong master key, another credential's sealed value, or a damaged one: AES-GCM's
    /// tag does not tell which.
    #[error("the sealed value does not open with this master key and name")]
    Open,
    #[error("the value could not be sealed")]
    Seal,
}

fn cipher(key: &MasterKey) -> Aes256Gcm {
    Aes256Gcm::new(key.bytes().into())
}

/// `value` sealed under `key` for the credential `name`, as stored.
pub fn seal(key: &MasterKey, name: &str, value: &Secret) -> Result<String, SealError> {
    let mut nonce = [0u8; NONCE_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
    let payload = Payload {
        msg: value.expose().as_bytes(),
        aad: name.as_bytes(),
    };
    let sealed = cipher(key)
        .encrypt(Nonce::from_slice(&nonce), payload)
        .map_err(|_| SealError::Seal)?;
    let mut stored = Vec::with_capacity(1 + NONCE_BYTES + sealed.len());
    stored.push(VERSION);
    stored.extend_from_slice(&nonce);
    stored.extend_from_slice(&sealed);
    Ok(base64::engine::general_purpose::STANDARD.encode(stored))
}

/// The value `sealed` (from [`seal`]) holds, if `key` and `name` are the ones it was sealed with.
pub fn open(key: &MasterKey, name: &str, sealed: &str) -> Result<Secret, SealError> {
    let stored = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .map_err(|_| SealError::Format)?;
    let (&version, rest) = stored.split_first().ok_or(SealError::Format)?;
    if version != VERSION || rest.len() < NONCE_BYTES {
        return Err(SealError::Format);
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_BYTES);
    let payload = Payload {
        msg: ciphertext,
        aad: name.as_bytes(),
    };
    let plain = Zeroizing::new(
        cipher(key)
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| SealError::Open)?,
    );
    let text = std::str::from_utf8(&plain).map_err(|_| SealError::Open)?;
    Ok(Secret::new(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new("sk-live-0123456789abcdef".to_owned())
    }

    #[test]
    fn a_sealed_value_opens_with_its_key_and_name() {
        let key = MasterKey::generate();
        let sealed = seal(&key, "MY_API", &secret()).expect("sealed");
        assert!(!sealed.contains("sk-live"));
        let opened = open(&key, "MY_API", &sealed).expect("opens");
        assert_eq!(opened.expose(), secret().expose());
    }

    #[test]
    fn another_master_key_does_not_open_it() {
        let sealed = seal(&MasterKey::generate(), "MY_API", &secret()).expect("sealed");
        assert_eq!(
            open(&MasterKey::generate(), "MY_API", &sealed).err(),
            Some(SealError::Open)
        );
    }

    #[test]
    fn another_name_does_not_open_it() {
        let key = MasterKey::generate();
        let sealed = seal(&key, "MY_API", &secret()).expect("sealed");
        assert_eq!(
            open(&key, "OTHER_API", &sealed).err(),
            Some(SealError::Open)
        );
    }

    #[test]
    fn each_seal_takes_a_fresh_nonce() {
        let key = MasterKey::generate();
        let decode = |s: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .expect("base64")
        };
        let (a, b) = (
            decode(&seal(&key, "n", &secret()).expect("a")),
            decode(&seal(&key, "n", &secret()).expect("b")),
        );
        assert_eq!(a[0], VERSION);
        assert_ne!(a[1..=NONCE_BYTES], b[1..=NONCE_BYTES]);
        assert_ne!(a, b);
    }

    #[test]
    fn damaged_or_foreign_forms_are_refused() {
        let key = MasterKey::generate();
        let sealed = seal(&key, "n", &secret()).expect("sealed");
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(&sealed)
            .expect("base64");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let flipped = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert_eq!(open(&key, "n", &flipped).err(), Some(SealError::Open));
        bytes[0] = 9;
        let versioned = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert_eq!(open(&key, "n", &versioned).err(), Some(SealError::Format));
        assert_eq!(open(&key, "n", "%%").err(), Some(SealError::Format));
        assert_eq!(open(&key, "n", "").err(), Some(SealError::Format));
    }
}
