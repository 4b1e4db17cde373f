//! scopegate: a reverse-proxy API gateway that lets each API key call only the routes its
//! app's scopes allow.
//!
//! # Layout
//! A request walks these modules in order, and no module reaches back up:
//! - [`server`] accepts connections (HTTP/1.1 and HTTP/2) and hands each request to
//! - [`pipeline`], which runs the stages below and turns any [`error`] into its response:
//! - [`routing`] normalises the path and finds the route (method + pattern → scope, upstream);
//! - [`auth`] reads the credential, resolves the key through [`cache`] (backed by [`store`])
//!   into a principal, and checks the route's scope;
//! - [`budgets`] counts the request against the key's rate limit (per instance, or shared
//!   across instances through leased slices) and its day and month quota, in one call;
//! - [`usage`] notes the key's use for a background task (the request never waits on it);
//! - [`credentials`] gives the upstream's stored credential (or the app's own), opened once
//!   and held in memory until an invalidation drops it, for the header the upstream expects;
//! - [`proxy`] forwards to the upstream over a pooled client and streams the answer back.
//!
//! Every stage reads the config in force from one [`live`] snapshot.
//!
//! Beside the request path: [`admin`] (apps and keys API), [`metrics`] (health and readiness),
//! [`config`] (the YAML file, validated), [`tls`] (the listener's certificate, upstream CAs),
//! [`gateway`] (wiring and shutdown), [`lifecycle`] (key upkeep off the request path: revoking
//! deleted apps' keys, purging revoked ones, the expiring-keys gauge), [`cli`] (with `demo`); [`redact`] keeps credentials in
//! URLs out of everything printed; [`throttle`] bounds log lines a client can cause; [`log`] writes every log line from one thread; [`meter`] reads
//! the token usage of model responses on metered routes.

/// A `Debug` that names the type and nothing more, for handles whose fields are shared state
/// with nothing useful to print, or secrets that must never be printed.
macro_rules! opaque_debug {
    ($t:ty) => {
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t)).finish_non_exhaustive()
            }
        }
    };
}

mod admin;
pub mod auth;
pub mod budgets;
pub mod cache;
pub mod cli;
pub mod config;
pub mod credentials;
mod error;
pub mod gateway;
pub mod lifecycle;
mod live;
pub mod log;
pub mod meter;
pub mod metrics;
pub mod model;
pub mod pipeline;
mod proxy;
mod redact;
mod reload;
pub mod routing;
mod server;
pub mod store;
mod throttle;
pub mod tls;
mod usage;
