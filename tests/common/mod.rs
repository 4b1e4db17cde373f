//! Helpers shared by the integration tests: real parts, started per test.
//!
//! - [`credentials`]: the upstream-credential tests' secrets, config and leak check;
//! - [`redis`]: a real `redis-server` on an ephemeral port;
//! - [`cluster`]: a real three-master, three-replica Redis Cluster on free ports;
//! - [`upstream`]: a recording HTTP upstream on an ephemeral port;
//! - [`replica`]: a controllable upstream target that stops, restarts, fails, resets and stalls;
//! - [`models`]: fake OpenAI and Anthropic providers (JSON and event streams, counts the test sets);
//! - [`dns`]: a tiny DNS server answering A queries as a test sets them;
//! - [`pool`]: a gateway in front of one upstream of several targets, and waiting on it;
//! - [`gateway`]: a whole scopegate (in-process, port 0) from a YAML config, with admin helpers;
//! - [`h2`]: raw HTTP/2 frames on a socket, for floods no client library would send;
//! - [`http`]: a small HTTP client and raw-socket helpers;
//! - [`process`]: the real binary as a child process (`serve`, management commands);
//! - [`prom`]: a strict Prometheus text parser for `/metrics` assertions.
#![allow(dead_code)]

pub(crate) mod cluster;
pub(crate) mod credentials;
pub(crate) mod delay_proxy;
pub(crate) mod dns;
pub(crate) mod gateway;
pub(crate) mod h2;
pub(crate) mod http;
pub(crate) mod instances;
pub(crate) mod models;
pub(crate) mod pool;
pub(crate) mod process;
pub(crate) mod prom;
pub(crate) mod redis;
pub(crate) mod replica;
pub(crate) mod upstream;
