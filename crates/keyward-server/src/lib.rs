//! Keyward's server: tonic services over the key hierarchy ([`keyring`]),
//! configuration ([`config`]) and the error-to-status mapping ([`error`]).
//!
//! Data flows one way: proto -> [`api`] -> [`keyring`] -> (store, KEK
//! providers) -> envelope. Nothing below this crate knows about gRPC.

pub mod admin;
pub mod api;
pub mod audit;
pub mod authz;
mod builtin_policies;
pub mod config;
pub mod error;
mod fast_hash;
pub mod justification;
mod key_events;
pub mod keyring;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod replication;
pub mod siem;
pub mod telemetry;
pub mod time;
pub mod tls;

mod server;

#[cfg(test)]
mod test_support;

pub use crate::{
    config::{Config, Settings},
    keyring::{CachePolicy, Keyring, Providers},
    server::{Running, ServerBuilder, StartError},
};

/// Milliseconds since the UNIX epoch, the unit of every stored and audited time.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
