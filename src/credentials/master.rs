//! The master key that seals every credential value: 32 bytes, given as standard base64 in an
//! environment variable or a file. Held in zeroized memory; its `Debug` prints nothing of it,
//! and no error about it quotes it (not even the offending character of a bad encoding).

use base64::Engine;
use std::path::Path;
use zeroize::Zeroizing;

/// AES-256: a 32-byte key.
pub const MASTER_KEY_BYTES: usize = 32;

/// Why a master key could not be read. The messages name what is wrong, never the key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MasterKeyError {
    #[error("is not standard base64 (generate one with `openssl rand -base64 32`)")]
    NotBase64,
    #[error("decodes to {0} bytes; the master key must be exactly 32 random bytes, base64")]
    WrongLength(usize),
    #[error("cannot be read: {0}")]
    Unreadable(String),
}

/// The master key. Zeroized on drop; `Debug` shows nothing of it.
pub struct MasterKey(Zeroizing<[u8; MASTER_KEY_BYTES]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// The key from its base64 text (surrounding whitespace, such as a file's final newline,
    /// is ignored).
    pub fn from_base64(text: &str) -> Result<MasterKey, MasterKeyError> {
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| MasterKeyError::NotBase64)?,
        );
        let bytes: [u8; MASTER_KEY_BYTES] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| MasterKeyError::WrongLength(decoded.len()))?;
        let key = MasterKey(Zeroizing::new(bytes));
        // `bytes` was copied into the zeroized array; wipe the stack copy too.
        let mut bytes = bytes;
        zeroize::Zeroize::zeroize(&mut bytes);
        Ok(key)
    }

    /// The key in environment variable `var`: `Ok(None)` when it is not set (the gateway then
    /// answers 503 `credentials_unavailable` on credential calls).
    pub fn from_env(var: &str) -> Result<Option<MasterKey>, MasterKeyError> {
        match std::env::var(var) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                Self::from_base64(&text).map(Some)
            }
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(MasterKeyError::NotBase64),
        }
    }

    /// The key in file `path`.
    pub fn from_file(path: &Path) -> Result<MasterKey, MasterKeyError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| MasterKeyError::Unreadable(e.to_string()))?,
        );
        Self::from_base64(&text)
    }

    /// A fresh random key (tests, and `openssl rand -base64 32` for operators).
    pub fn generate() -> MasterKey {
        let mut bytes = Zeroizing::new([0u8; MASTER_KEY_BYTES]);
        rand::RngCore::fill_bytes(&mut rand::rng(), bytes.as_mut_slice());
        MasterKey(bytes)
    }

    /// The key as base64 (tests, and tools that hand a generated key to a process).
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.0.as_slice()))
    }

    pub(super) fn bytes(&self) -> &[u8; MASTER_KEY_BYTES] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_32_bytes_of_standard_base64() {
        let key = MasterKey::generate();
        let text = key.to_base64();
        let again = MasterKey::from_base64(&format!("{}\n", text.as_str())).expect("valid");
        assert_eq!(again.bytes(), key.bytes());
        assert_eq!(
            MasterKey::from_base64("c2hvcnQ=").err(),
            Some(MasterKeyError::WrongLength(5))
        );
        assert_eq!(
            MasterKey::from_base64("not base64 at all!").err(),
            Some(MasterKeyError::NotBase64)
        );
    }

    #[test]
    fn debug_and_errors_show_nothing_of_the_key() {
        let key = MasterKey::generate();
        let text = key.to_base64();
        assert_eq!(format!("{key:?}"), "MasterKey(..)");
        let bad = format!("{}%", text.as_str());
        let message = MasterKey::from_base64(&bad).expect_err("bad").to_string();
        assert!(!message.contains(text.as_str()), "{message}");
        assert!(!message.contains('%'), "{message}");
    }
}
