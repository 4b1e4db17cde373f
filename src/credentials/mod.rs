//! Upstream credentials: secrets the gateway holds for upstreams (a model provider's API key, a
//! tool service's token), so callers hold only a scopegate key.
//!
//! # Layout
//! - [`cache`]: the opened values the proxy injects, by name, dropped on invalidation;
//! - [`master`]: the master key (`credentials.master_key_env` / `master_key_file`), 32 bytes,
//!   zeroized on drop, never printed;
//! - [`seal`]: AES-256-GCM sealing of one value under the master key, bound to its name;
//! - [`rewrap`]: moving every stored value to a new master key (`scopegate credentials
//!   rewrap`);
//! - [`value`]: the plaintext type ([`Secret`]), the checks on names and values, and the
//!   masked form shown by the admin API.
//!
//! What never happens here: a value written to a log, an error, a `Debug` output or the store
//! unsealed. The store keeps only [`seal`]'s output; the admin API shows only [`masked`].

pub mod cache;
pub mod master;
pub mod rewrap;
pub mod seal;
pub mod value;

pub use self::cache::{CredentialCache, Unavailable};
pub use self::master::{MasterKey, MasterKeyError};
pub use self::seal::{open, seal, SealError};
pub use self::value::{masked, valid_name, valid_value, Secret, MAX_NAME_LEN, MAX_VALUE_BYTES};
