//! Keyward's durable store: tenants, KEK bindings, wrapped tenant keys, wrapped DEKs and the
//! hash-chained audit log.
//!
//! The [`Store`] trait is backend-neutral; [`sqlite::SqliteStore`] is the embedded default and
//! `postgres::PostgresStore` (module and feature `postgres`) serves several replicas on one
//! PostgreSQL database. Both are [`sql::SqlStore`] on a [`sql::Dialect`]: every statement and
//! write transaction is written once, and the dialects differ only in how a write transaction
//! takes the write lock, text checks, `NOTIFY`, the retry budget, the health check and change
//! notifications ([`Store::key_state_changes`]). Every backend runs the same `conformance` suite
//! (module and feature `conformance`).
//!
//! The store is precious: wrapped tenant keys and wrapped DEKs live only here, and a key that
//! appears in an envelope returned to a caller must be committed (durably) first. See
//! `docs/store.md` for the schema, the durability guarantees and the backup note.
//!
//! Fail closed: every lifecycle change (tenant creation, KEK binding, binding state change, DEK
//! creation) takes an [`AuditFn`] that turns the change's result into audit events, and the
//! store appends those events to the chain in the same transaction. If the append fails, the
//! change is rolled back and the method fails: no acknowledged change lacks its record.
#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

pub use keyward_audit::{AuditError, AuditEvent, ChainHead, Checkpoint, Record, RevocationSource};
pub use keyward_envelope::{KeyId, TenantId, WrappedKey};
pub use keyward_kms::ProviderKind;
pub use query::AuditQuery;

#[cfg(feature = "conformance")]
pub mod conformance;
mod decode;
#[cfg(feature = "postgres")]
pub mod postgres;
mod query;
pub mod sql;
pub mod sqlite;

/// Caller-chosen DEK scope label: 1..=128 bytes, no control characters; "default" when none.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

impl Scope {
    /// The scope used when the caller names none.
    pub const DEFAULT: &'static str = "default";
    /// Longest accepted scope label, in bytes.
    pub const MAX_LEN: usize = 128;

    /// The `"default"` scope.
    pub fn default_scope() -> Self {
        Self(Self::DEFAULT.to_owned())
    }

    /// The label.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn validate(s: &str) -> Result<(), StoreError> {
        if s.is_empty() {
            return Err(StoreError::InvalidInput(
                "scope must not be empty".to_owned(),
            ));
        }
        if s.len() > Self::MAX_LEN {
            return Err(StoreError::InvalidInput(format!(
                "scope is {} bytes long, at most {} are allowed",
                s.len(),
                Self::MAX_LEN
            )));
        }
        if s.chars().any(char::is_control) {
            return Err(StoreError::InvalidInput(
                "scope must not contain control characters".to_owned(),
            ));
        }
        Ok(())
    }
}

impl Default for Scope {
    fn default() -> Self {
        Self::default_scope()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Scope {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::validate(s)?;
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<&str> for Scope {
    type Error = StoreError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl TryFrom<String> for Scope {
    type Error = StoreError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::validate(&s)?;
        Ok(Self(s))
    }
}

impl AsRef<str> for Scope {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The health of a KEK binding, as last observed (monitor, KMS refusal, `RevokeKey`, restore).
///
/// Independent of whether the binding is the tenant's current one: a deactivated (rotated-away)
/// binding keeps its last state.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KekState {
    /// The KEK wraps and unwraps.
    Active,
    /// The KMS refused us (disabled key, removed grant, explicit revocation).
    Revoked,
    /// The KMS could not be reached; not a refusal.
    Unavailable,
    /// The KEK works again after a revocation.
    Restored,
    /// The KEK is gone for good: everything below it is crypto-shredded.
    Destroyed,
}

impl KekState {
    /// Every state, in declaration order.
    pub const ALL: [KekState; 5] = [
        KekState::Active,
        KekState::Revoked,
        KekState::Unavailable,
        KekState::Restored,
        KekState::Destroyed,
    ];

    /// The stored (and displayed) name: `"active"`, `"revoked"`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            KekState::Active => "active",
            KekState::Revoked => "revoked",
            KekState::Unavailable => "unavailable",
            KekState::Restored => "restored",
            KekState::Destroyed => "destroyed",
        }
    }
}

impl fmt::Display for KekState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KekState {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KekState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| StoreError::InvalidInput(format!("unknown KEK state {s:?}")))
    }
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    pub id: TenantId,
    pub display_name: String,
    pub created_at_ms: i64,
    pub policy: TenantPolicy,
}

/// Per-tenant overrides of server-wide settings; `None`: the server's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantPolicy {
    /// Lifetime of the tenant's unwrapped keys in memory (its revocation bound).
    pub cache_ttl_seconds: Option<u64>,
    /// How often the key-state monitor checks the tenant's key.
    pub monitor_interval_seconds: Option<u64>,
}

/// What [`Store::bind_kek`] changed: the new binding and the one it deactivated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingChange {
    pub binding: KekBinding,
    /// The tenant's previously active binding, now deactivated.
    pub previous: Option<i64>,
}

/// What [`Store::set_binding_state`] changed: the updated binding and its former state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub binding: KekBinding,
    pub from: KekState,
    /// What had set the former state (`None`: registration, or unknown before schema 4).
    pub from_cause: Option<RevocationSource>,
}

/// A state change of one binding, decided from a read of it: [`Store::set_binding_state`]
/// applies it only if the binding is still at `expected_version` (compare-and-set), so a writer
/// that decided from an older read never overwrites a newer decision, of any replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateUpdate {
    pub binding_id: i64,
    /// The [`KekBinding::state_version`] the decision was made from.
    pub expected_version: i64,
    pub to: KekState,
    /// What decided the change; stored as [`KekBinding::state_cause`].
    pub cause: RevocationSource,
}

impl StateUpdate {
    /// `binding` (as read) moved to `to` because of `cause`.
    pub fn of(binding: &KekBinding, to: KekState, cause: RevocationSource) -> Self {
        Self {
            binding_id: binding.id,
            expected_version: binding.state_version,
            to,
            cause,
        }
    }
}

/// A new KEK binding together with the tenant key it wraps (see [`Store::bind_kek`]).
#[derive(Debug, Clone)]
pub struct NewKekBinding {
    pub tenant: TenantId,
    /// Which kind of KMS or HSM holds the KEK (stored as its stable name, e.g. `aws-kms`).
    pub provider: ProviderKind,
    /// The provider's name of the KEK (key ARN, CryptoKey resource name, PKCS#11 URI, …).
    pub key_ref: String,
    /// Id of the new tenant key; must not exist yet.
    pub tenant_key_id: KeyId,
    /// The new tenant key, wrapped by the KEK.
    pub wrapped_tenant_key: WrappedKey,
    /// The wrapped tenant key's authentication tag (`tenant_keys.mac`), made by the keyring
    /// under a key the store never sees (docs/adr/0007-tenant-key-mac.md). The keyring always
    /// sets it; `None` stores a row the keyring refuses until
    /// [`Store::authenticate_tenant_key`] gives it one (tests of that upgrade path).
    pub tenant_key_mac: Option<Vec<u8>>,
}

/// A KEK binding: which customer key protects a tenant's tenant key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekBinding {
    pub id: i64,
    pub tenant: TenantId,
    /// Which kind of KMS or HSM holds the KEK; a stored name no kind has is reported as
    /// [`StoreError::Corrupt`] when the row is read.
    pub provider: ProviderKind,
    pub key_ref: String,
    pub state: KekState,
    /// The tenant key this binding's KEK wraps.
    pub tenant_key_id: KeyId,
    pub created_at_ms: i64,
    /// When a newer binding replaced this one; `None` for the tenant's current binding.
    pub deactivated_at_ms: Option<i64>,
    pub state_changed_at_ms: i64,
    /// What set the current state: `Explicit` for `RevokeKey`/`RestoreKey` (an explicit
    /// revocation is lifted only by `RestoreKey`), else the monitor, a KMS refusal or a pushed
    /// event. `None` while the binding never changed state, and for states set before schema
    /// version 4 (a revoked binding whose cause is unknown is treated as explicitly revoked).
    pub state_cause: Option<RevocationSource>,
    /// Incremented by every committed state change: the compare-and-set token of
    /// [`Store::set_binding_state`] ([`StateUpdate::expected_version`]).
    pub state_version: i64,
}

impl KekBinding {
    /// Revoked by `RevokeKey` (or revoked before causes were recorded): only `RestoreKey` lifts it.
    pub fn explicitly_revoked(&self) -> bool {
        self.state == KekState::Revoked
            && matches!(self.state_cause, None | Some(RevocationSource::Explicit))
    }
}

/// A tenant as the write transaction that changed it left it: its record and every binding,
/// oldest first. Returned by the writes that change a tenant, so that the caller answers with
/// what it committed instead of reading again (another writer may have moved on since).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantState {
    pub tenant: TenantRecord,
    /// Every binding of the tenant, oldest first (as [`Store::list_bindings`] lists them).
    pub bindings: Vec<KekBinding>,
}

impl TenantState {
    /// The tenant's current binding (the one not deactivated), if it has one.
    pub fn current(&self) -> Option<&KekBinding> {
        self.bindings.iter().find(|b| b.deactivated_at_ms.is_none())
    }

    /// The bindings a newer one replaced, oldest first.
    pub fn previous(&self) -> impl Iterator<Item = &KekBinding> {
        self.bindings
            .iter()
            .filter(|b| b.deactivated_at_ms.is_some())
    }
}

/// A binding as a write transaction left it, with its tenant as that transaction left it
/// ([`Store::bind_kek`], [`Store::set_binding_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingCommit {
    pub binding: KekBinding,
    pub tenant: TenantState,
}

/// A wrapped tenant key, with the provider and key ref of the binding whose KEK wraps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantKeyRecord {
    pub id: KeyId,
    pub tenant: TenantId,
    pub binding_id: i64,
    pub provider: ProviderKind,
    pub key_ref: String,
    pub wrapped: WrappedKey,
    pub created_at_ms: i64,
    /// The state of the binding whose KEK wraps this key: data under a revoked or destroyed
    /// binding stays unreadable even after a newer binding was registered.
    pub binding_state: KekState,
    /// When that binding's state last changed.
    pub binding_state_changed_at_ms: i64,
    /// The authentication tag stored with the wrapped key (`tenant_keys.mac`); `None` for a row
    /// written before schema version 5 and not yet authenticated. The store neither makes nor
    /// checks it: the keyring does, with a key the store never sees.
    pub mac: Option<Vec<u8>>,
}

/// A new DEK (see [`Store::insert_dek`]).
#[derive(Debug, Clone)]
pub struct NewDek {
    pub id: KeyId,
    pub tenant: TenantId,
    pub scope: Scope,
    /// The tenant key that wraps this DEK; must belong to `tenant`.
    pub tenant_key_id: KeyId,
    pub wrapped: WrappedKey,
}

/// A stored DEK with its usage counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DekRecord {
    pub id: KeyId,
    pub tenant: TenantId,
    pub scope: Scope,
    pub tenant_key_id: KeyId,
    pub wrapped: WrappedKey,
    pub created_at_ms: i64,
    /// When a newer DEK replaced this one for its (tenant, scope); `None` while active.
    pub retired_at_ms: Option<i64>,
    /// Messages encrypted under this DEK (saturating at `i64::MAX`).
    pub messages: u64,
    /// Plaintext bytes encrypted under this DEK (saturating at `i64::MAX`).
    pub bytes: u64,
}

/// Builds the audit events of a lifecycle change from its result, inside the transaction.
///
/// Called after the change's rows are written and before commit, with the result the method
/// will return; each returned event is appended to the chain, in order, in the same
/// transaction. It may be called more than once when the store retries a transaction that lost
/// a race (`StoreError::Conflict`), so it must not have side effects; it is not called when the
/// change fails before its rows are built. An empty `Vec` appends nothing.
pub type AuditFn<'a, T> = &'a (dyn Fn(&T) -> Vec<AuditEvent> + Send + Sync);

/// Result of [`Store::insert_dek`]: the new DEK and the one it retired, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DekInsert {
    pub dek: DekRecord,
    /// The (tenant, scope)'s previously active DEK, retired by this insert.
    pub retired: Option<KeyId>,
}

/// Row counts, for metrics and for tests asserting that a failed call inserted nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreCounts {
    pub tenants: u64,
    pub bindings: u64,
    pub tenant_keys: u64,
    pub deks: u64,
}

/// Store errors. Every variant but `Backend` means the call changed nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The row (tenant, tenant key, DEK id) already exists.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// A row the call refers to does not exist (or belongs to another tenant).
    #[error("not found: {0}")]
    NotFound(String),
    /// The input was rejected before touching the database.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A stored row failed validation on the way out; names the table and column.
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    /// A concurrent writer won a race on a uniqueness rule (e.g. two `insert_dek` calls for one
    /// (tenant, scope) on PostgreSQL) and the store's own bounded retries did not resolve it.
    /// Nothing was changed; the call is safe to retry.
    #[error("conflicting concurrent write, safe to retry: {0}")]
    Conflict(String),
    /// [`Store::set_binding_state`]'s compare-and-set failed: the binding changed (or moved to a
    /// newer version) since the caller read it. Nothing was changed; re-read and decide again.
    #[error("the KEK binding changed since it was read: {0}")]
    StateChanged(String),
    /// An audit record or checkpoint could not be encoded (e.g. the sequence number would
    /// overflow). Nothing was changed: the lifecycle change it belonged to was rolled back.
    #[error("audit record could not be built")]
    Audit(#[source] AuditError),
    /// The database failed (I/O, lock timeout, pool closed, …). Whether the write happened is
    /// unknown only if the failure hit the commit itself.
    #[error("store backend error")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A change committed by another process sharing the store, as delivered by
/// [`Store::key_state_changes`]: the tenant it names; the new state itself is read from the
/// store.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChange {
    /// The subscription was (re)established. Changes committed while it was down were never
    /// delivered: reconcile every key state now, before handling the events that follow.
    Subscribed,
    /// The tenant's current binding or a binding's state changed ([`Store::set_binding_state`],
    /// [`Store::bind_kek`]).
    KeyState(TenantId),
    /// The tenant's policy changed ([`Store::set_tenant_policy`]).
    Policy(TenantId),
    /// A notification whose payload names no tenant (the reason): reconcile every key state.
    Unreadable(String),
}

/// The stream of [`StoreChange`]s returned by [`Store::key_state_changes`]. It never ends on
/// its own (the backend reconnects); dropping it ends the subscription.
pub type StoreChanges = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = StoreChange> + Send>>;

/// Keyward's durable state. Implementations: [`sqlite::SqliteStore`] and, with the `postgres`
/// feature, `postgres::PostgresStore`.
///
/// Every write method runs in one transaction and is committed durably before it returns `Ok`.
/// Lifecycle methods (`create_tenant`, `bind_kek`, `set_binding_state`, `insert_dek`) append the
/// audit events their [`AuditFn`] returns in that same transaction, at the head of the chain read
/// under the transaction's write lock; if appending fails, nothing is changed and the error is
/// returned (fail closed). Record times come from the store's clock at append time and never go
/// backwards along the chain. Write transactions of all processes sharing one database are
/// serialized (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: a lock on the audit chain's lock row), so
/// the chain stays one chain with several writers.
/// Lookups by tenant-scoped id return `None` when the row belongs to another tenant, exactly as
/// when it does not exist.
#[async_trait::async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Creates a tenant and appends `audit(&tenant)`; a duplicate id is `AlreadyExists`.
    async fn create_tenant(
        &self,
        id: &TenantId,
        display_name: &str,
        audit: AuditFn<'_, TenantRecord>,
    ) -> Result<TenantRecord, StoreError>;

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError>;

    /// Replaces the tenant's policy overrides and appends `audit(&updated)`, in one
    /// transaction. Unknown tenant -> NotFound; a zero value -> InvalidInput. Announces the
    /// tenant to other replicas (PostgreSQL: `NOTIFY` on the policy channel) when it commits.
    /// Returns the tenant as the transaction left it.
    async fn set_tenant_policy(
        &self,
        id: &TenantId,
        policy: TenantPolicy,
        audit: AuditFn<'_, TenantRecord>,
    ) -> Result<TenantState, StoreError>;

    /// One transaction: deactivate the tenant's current active binding (set deactivated_at_ms;
    /// its state is kept), insert the new binding (state Active) and its wrapped tenant key,
    /// append `audit(&binding)`. Unknown tenant -> NotFound. Durable before returning; announces
    /// the tenant to other replicas (PostgreSQL: `NOTIFY`) when it commits. Returns the new
    /// binding and the tenant as the transaction left it.
    async fn bind_kek(
        &self,
        binding: NewKekBinding,
        audit: AuditFn<'_, BindingChange>,
    ) -> Result<BindingCommit, StoreError>;

    /// The tenant's current binding (the one not deactivated), whatever its state.
    async fn active_binding(&self, tenant: &TenantId) -> Result<Option<KekBinding>, StoreError>;

    /// The current binding of every tenant that has one (the key-state monitor's work list),
    /// ordered by tenant id.
    async fn active_bindings(&self) -> Result<Vec<KekBinding>, StoreError>;

    /// Every binding of the tenant, oldest first.
    async fn list_bindings(&self, tenant: &TenantId) -> Result<Vec<KekBinding>, StoreError>;

    /// Compare-and-set of a binding's state: if the binding is still at
    /// `update.expected_version`, sets its state, cause and state_changed_at_ms, increments its
    /// version and appends `audit(&change)`, in one transaction; otherwise changes nothing and
    /// fails with `StateChanged`. Unknown binding -> NotFound. Announces the tenant to other
    /// replicas (PostgreSQL: `NOTIFY`) when it commits. Returns the updated binding and the
    /// tenant as the transaction left it.
    async fn set_binding_state(
        &self,
        update: StateUpdate,
        audit: AuditFn<'_, StateChange>,
    ) -> Result<BindingCommit, StoreError>;

    /// Tenant key by id, only if it belongs to `tenant` (cross-tenant lookups return None).
    /// Includes its binding's provider and key_ref.
    async fn get_tenant_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
    ) -> Result<Option<TenantKeyRecord>, StoreError>;

    /// Every tenant key without an authentication tag (`mac` NULL: written before schema
    /// version 5), of every tenant, ordered by tenant and id; with its binding's provider and
    /// key_ref. The upgrade path's work list (docs/operations.md).
    async fn unauthenticated_tenant_keys(&self) -> Result<Vec<TenantKeyRecord>, StoreError>;

    /// Sets the authentication tag of tenant key `id` of `tenant` to `mac` if it has none, and
    /// appends `audit(&updated)`, in one transaction. Never replaces a tag: a key that already
    /// has one -> AlreadyExists; unknown key (or another tenant's) -> NotFound; an empty `mac`
    /// -> InvalidInput.
    async fn authenticate_tenant_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        mac: Vec<u8>,
        audit: AuditFn<'_, TenantKeyRecord>,
    ) -> Result<TenantKeyRecord, StoreError>;

    /// One transaction: retire the current active DEK of (tenant, scope) if any
    /// (retired_at_ms = now), insert the new one, append `audit(&result)`. The tenant key must
    /// exist and belong to the tenant (else NotFound); duplicate id -> AlreadyExists. Durable
    /// (committed; SQLite `synchronous=FULL`, PostgreSQL `synchronous_commit=on`) before
    /// returning: an envelope depending on it may be returned right after. Concurrent calls for
    /// one (tenant, scope), from one process or several, each succeed (the later retiring the
    /// earlier) or fail with `Conflict`; never two active DEKs.
    async fn insert_dek(
        &self,
        dek: NewDek,
        audit: AuditFn<'_, DekInsert>,
    ) -> Result<DekInsert, StoreError>;

    /// The active (not retired) DEK of (tenant, scope).
    async fn active_dek(
        &self,
        tenant: &TenantId,
        scope: &Scope,
    ) -> Result<Option<DekRecord>, StoreError>;

    /// A DEK by id, only if it belongs to `tenant`.
    async fn get_dek(&self, tenant: &TenantId, id: &KeyId)
    -> Result<Option<DekRecord>, StoreError>;

    /// Adds to a DEK's usage counters (saturating); unknown DEK (or another tenant's) -> NotFound.
    async fn add_dek_usage(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        messages: u64,
        bytes: u64,
    ) -> Result<(), StoreError>;

    /// Row counts over the whole store.
    async fn counts(&self) -> Result<StoreCounts, StoreError>;

    /// Standalone audit appends (failed registrations, denials, usage summaries), in order, in
    /// one transaction; returns the appended records. An empty `Vec` is a no-op.
    async fn append_audit(&self, events: Vec<AuditEvent>) -> Result<Vec<Record>, StoreError>;

    /// The end of the chain ([`ChainHead::GENESIS`] while it is empty).
    async fn audit_head(&self) -> Result<ChainHead, StoreError>;

    /// Records matching the query, seq ascending, at most `limit` (capped at
    /// [`AuditQuery::MAX_LIMIT`]), `seq > after_seq`. Every record is checked against its stored
    /// hash (mismatch -> `Corrupt` naming `audit_records` and the seq).
    async fn audit_records(&self, query: &AuditQuery) -> Result<Vec<Record>, StoreError>;

    /// Stores a signed checkpoint. Its `seq` must be at most the head's and its `head_hash` the
    /// hash of record `seq` (all zero for seq 0), else `InvalidInput`; a second checkpoint at
    /// the same seq is `AlreadyExists`. The signature is not checked here (the store does not
    /// hold the public keys); verifiers check it.
    async fn insert_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError>;

    /// Checkpoints with `from_seq <= seq <= to_seq`, seq ascending.
    async fn checkpoints(&self, from_seq: u64, to_seq: u64) -> Result<Vec<Checkpoint>, StoreError>;

    /// Checks that the store answers, for health checks. The default reads the audit chain head
    /// ([`Store::audit_head`]); a backend with a cheaper round trip overrides it (PostgreSQL: a
    /// ping on a pooled connection).
    async fn ping(&self) -> Result<(), StoreError> {
        self.audit_head().await.map(drop)
    }

    /// The changes other processes commit to this store, for a server that shares it with other
    /// replicas; `None` when no other process can write to it (SQLite: one process per file),
    /// the default.
    ///
    /// PostgreSQL: a dedicated connection with application name `listener_name` (visible in
    /// `pg_stat_activity`) that `LISTEN`s on the key-state and policy channels, reconnecting
    /// with backoff (100 ms doubling to 5 s, each connection attempt bounded by 5 s), and yields
    /// [`StoreChange::Subscribed`] after every (re)connection, before the notifications it then
    /// receives. Notifications sent while it is disconnected are lost: reconcile on
    /// `Subscribed`, and periodically. Must be called within a Tokio runtime (the subscription
    /// runs on a task of its own until the stream is dropped).
    fn key_state_changes(&self, listener_name: &str) -> Option<StoreChanges> {
        let _ = listener_name;
        None
    }
}
