//! Helpers shared by the integration tests: real parts, started per test.
#![allow(dead_code)]

pub mod redis;
