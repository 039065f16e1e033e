//! The provider joint: how Keyward asks a customer's KMS or HSM to wrap and unwrap tenant keys.
//!
//! A [`KeyProvider`] wraps or unwraps an opaque 256-bit key under a key-encryption key (KEK)
//! named by a [`KeyRef`], and reports the KEK's state. It never sees payloads or DEKs: the only
//! keys that cross this joint are tenant keys (see `PRODUCT.md`, "The key hierarchy").
//!
//! Every adapter classifies its SDK's failures exactly once, from typed error codes (never
//! message text), into an [`ErrorKind`]. The server decides everything else from that kind:
//! [`ErrorKind::Refused`] is a revocation signal, [`ErrorKind::is_transient`] kinds may be retried
//! and keep cached keys serving until their TTL.
//!
//! Implementations in this crate:
//! - [`local::LocalProvider`]: a development KEK in a file. **Not for production.**
//! - [`quota::QuotaProvider`]: a per-KEK request quota (token bucket) in front of any provider.
//!
//! With the `conformance` feature, [`conformance`] holds the test suite that every provider must
//! pass.
#![forbid(unsafe_code)]

mod context;
mod error;
mod events;
mod factory;
mod provider;

pub mod local;
pub mod quota;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "test-support")]
pub mod controlled;

pub use context::{Purpose, WrapContext};
pub use error::{ErrorKind, ProviderError};
pub use events::{
    ConfiguredEventSource, DeferReason, KeyEventSink, KeyEventSource, KeyEventSourceFactory,
    RecheckSummary, RejectReason, SinkError, SourceEvent,
};
pub use factory::{
    ConfigSection, ConfigSectionError, ConfiguredProvider, InvalidKeyRef, KeyRefFields,
    ProviderFactory, ProviderRegistry, configure_if_present,
};
pub use keyward_envelope::{SecretKey, WrappedKey};
pub use provider::{
    Capabilities, KeyProvider, KeyRef, KeyState, KeyStatus, ParseKeyRefError, ProviderKind,
    UnknownProviderKind,
};
pub use quota::{QuotaPolicy, QuotaProvider};
