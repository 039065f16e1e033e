//! Keyward's tamper-evident audit log, as a pure library (no storage, no network).
//!
//! - [`AuditEvent`]: what is recorded. Never plaintext or key bytes; scope labels only as
//!   [`IdentifierHasher`] digests.
//! - [`Record`]: one event in the hash chain. `hash = SHA-256("keyward-audit-v1\n" ||
//!   canonical JSON of {event, prev_hash, seq, time_ms})` (format v1), or, for records appended
//!   through a [`RecordSealer`], over a salted digest of the event and a tag of its tenant
//!   (format v2), so that a per-tenant export can redact other tenants' records
//!   ([`TenantScope`], [`shown_in_full`]); [`ChainHead`] is the end of the chain.
//! - [`Checkpoint`]: an Ed25519 signature by the deployment's [`SigningKey`] over a chain head.
//! - [`ExportWriter`] / [`verify_export`]: the JSON Lines export and its offline verifier, which
//!   names the first broken link exactly ([`VerifyFailure`], [`FailureKind`]);
//!   [`verify_export_all`] goes on to report every problem it can find.
//! - [`timeline`]: a tenant's revocation timeline, built from its records (what
//!   `keyward audit report` prints); [`access`]: who accessed its data and why, from its
//!   `access_summary` records (what `keyward audit report --html` shows).
//!
//! The byte-exact format is specified in `docs/audit-format.md`; what the events mean to an
//! auditor is in `docs/auditor-guide.md`.
//!
//! ## Appending inside the store's transaction
//!
//! ```
//! use keyward_audit::{AuditEvent, ChainHead, Record};
//!
//! # fn main() -> Result<(), keyward_audit::AuditError> {
//! // In the same SQL transaction as the lifecycle change:
//! let head = ChainHead::GENESIS; // SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1
//! let event = AuditEvent::TenantCreated { tenant: "acme".parse().map_err(|_| keyward_audit::AuditError::Malformed("tenant".into()))?, actor: None };
//! let record = Record::append(&head, 1_700_000_000_000, event)?;
//! let (bytes, hash) = (record.canonical_bytes(), *record.hash()); // INSERT …; a unique seq
//! // key makes a concurrent appender fail, and the whole transaction roll back.
//! let back = Record::from_stored(&bytes, hash)?;
//! assert!(back.verify_hash() && back.follows(&head));
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod access;
mod canonical;
mod chain_head;
mod checkpoint;
mod error;
mod event;
mod export;
mod fields;
mod identifier;
mod record;
mod redaction;
mod sealer;
pub mod timeline;
mod verify;

pub use chain_head::ChainHead;
pub use checkpoint::{
    CHECKPOINT_DOMAIN, Checkpoint, PUBLIC_KEY_TEXT_PREFIX, PublicKey, SigningKey,
};
pub use error::AuditError;
pub use event::{
    AuditEvent, DekRetireReason, KeyState, RegistrationOutcome, RevocationSource, StateTransition,
};
pub use export::{EXPORT_TYPE, EXPORT_VERSION, ExportHeader, ExportWriter, TENANT_EXPORT_VERSION};
pub use identifier::{IDENTIFIER_HASH_PREFIX, IdentifierHasher, TAG_LEN};
pub use record::{EVENT_DIGEST_DOMAIN, RECORD_DOMAIN, RECORD_DOMAIN_V2, Record, SALT_LEN};
pub use redaction::{TenantScope, shown_in_full};
pub use sealer::{RecordSealer, TENANT_TAG_KIND};
pub use verify::{
    FailureKind, TenantReport, Verification, VerifyFailure, VerifyReport, verify_export,
    verify_export_all,
};
