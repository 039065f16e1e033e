//! The exit kit (docs/exit.md): a customer's way to read their data without Keyward.
//!
//! `keyward export --tenant T --out DIR` writes the tenant's key hierarchy into DIR as
//! documented, versioned JSON ([`format`](mod@format), written by [`writer::ExportWriter`]):
//! every tenant key still wrapped by the customer's KEK, every data key still wrapped by its
//! tenant key, tombstones of shredded data keys; nothing in clear. The `keyward-open` binary
//! takes such an export and an envelope, verifies the export ([`verify()`]), and opens the
//! envelope ([`open_envelope`]; [`open_stream`] streams a framed envelope frame by frame) by
//! asking the customer's own KMS, with the customer's own credentials ([`providers`]), to unwrap
//! the tenant key.
//!
//! This crate depends on no part of the Keyward service: not the server, not the store, not the
//! gRPC API (its default build has no gRPC crate at all; the `gcp` feature brings some in through
//! Google's client library). What it needs is the envelope format (`keyward-envelope`) and the
//! KEK providers, which are the same code the server unwraps tenant keys with.
#![forbid(unsafe_code)]

pub mod format;
pub mod open;
pub mod providers;
pub mod verify;
pub mod writer;

pub use open::{OpenError, open_envelope, open_stream};
pub use providers::ProviderSettings;
pub use verify::{Lookup, Refused, VerifiedExport, verify};
pub use writer::{ExportInfo, ExportWriter, WriteError};
