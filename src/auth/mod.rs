//! Who is calling: the credential in the request, the key it names, and the [`Principal`]
//! (key + app + scopes) it resolves to through the cache.
//!
//! Every way a key can be wrong that is not "expired" ends in one answer, so a caller learns
//! nothing about which key ids exist.

mod checksum;
pub mod credential;
pub mod key;
mod principal;

pub use self::principal::{AuthError, Authenticator, Principal};
