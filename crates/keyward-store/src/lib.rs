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

pub use keyward_audit::{AuditError, AuditEvent, ChainHead, Checkpoint, Record, RevocationSource};
pub use keyward_envelope::{KeyId, TenantId, WrappedKey};
pub use keyward_kms::ProviderKind;
pub use query::AuditQuery;
pub use records::*;
pub use sql::MAX_EXPORT_PAGE;

#[cfg(feature = "conformance")]
pub mod conformance;
mod decode;
#[cfg(feature = "postgres")]
pub mod postgres;
mod query;
mod records;
pub mod sql;
pub mod sqlite;

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
    /// DEKs of the tenant were shredded ([`Store::shred_scope`]): drop its cached DEKs.
    Shredded(TenantId),
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

    /// The tenant's key history: every binding, oldest first (as [`Store::list_bindings`]),
    /// each with the DEKs and distinct scopes wrapped under its tenant key and not shredded,
    /// the DEKs of that key shredded so far (`dek_tombstones`), all counted in one statement
    /// (one snapshot), and who bound it, read from its `kek_binding_changed` audit record
    /// (indexed by event type; a record whose stored hash does not match is `Corrupt`). An
    /// unknown tenant has none (an empty `Vec`, as `list_bindings`).
    async fn binding_usage(&self, tenant: &TenantId) -> Result<Vec<BindingUsage>, StoreError>;

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

    /// Crypto-shreds one scope, in one transaction: every DEK of (tenant, scope) is deleted and
    /// replaced by a [`DekTombstone`] (no key material), and `audit(&result)` is appended. With
    /// [`ScopeShred::only_if`] (retention), the scope is shredded only if it still matches the
    /// rule under the write lock, else nothing changes and the result says `skipped`. A scope
    /// without DEKs shreds nothing (the audit function still runs, with no tombstones).
    /// Unknown tenant -> NotFound. When DEKs were destroyed, announces the tenant to other
    /// replicas (PostgreSQL: `NOTIFY` on the shred channel) at commit. SQLite overwrites the
    /// deleted rows' bytes in the transaction (`secure_delete`); call
    /// [`Store::erase_shredded`] after one or more shreds for what stays elsewhere.
    async fn shred_scope(
        &self,
        shred: ScopeShred,
        audit: AuditFn<'_, ShredResult>,
    ) -> Result<ShredResult, StoreError>;

    /// Erases what the backend still keeps of shredded rows, where it can, outside any
    /// transaction (SQLite: a WAL checkpoint that truncates the WAL, so neither the WAL nor the
    /// database file keeps an old page with a shredded key; PostgreSQL: `VACUUM deks`).
    /// Best effort: failures are logged. docs/deleting-data.md says what each backend leaves.
    async fn erase_shredded(&self) {}

    /// Up to `limit` scopes of `tenant` that match the retention rule, by label, with their DEK
    /// counts.
    async fn shred_candidates(
        &self,
        tenant: &TenantId,
        rule: &WrittenBefore,
        limit: u32,
    ) -> Result<Vec<ShredCandidate>, StoreError>;

    /// How many scopes of `tenant` match the retention rule, and how many DEKs they hold.
    async fn count_shred_candidates(
        &self,
        tenant: &TenantId,
        rule: &WrittenBefore,
    ) -> Result<(u64, u64), StoreError>;

    /// The tombstone of DEK `id`, only if it belonged to `tenant`.
    async fn dek_tombstone(
        &self,
        tenant: &TenantId,
        id: &KeyId,
    ) -> Result<Option<DekTombstone>, StoreError>;

    /// The tenants with tombstones whose `seq` is above `after_seq`, each with its highest
    /// `seq`, ordered by tenant (replicas catching up with shreds they were not told of).
    async fn shreds_after(&self, after_seq: i64) -> Result<Vec<(TenantId, i64)>, StoreError>;

    /// Every binding (current or older, of any tenant) registered with `provider`'s key
    /// `key_ref`, ordered by id: the bindings a key event naming that key concerns (indexed).
    async fn bindings_with_key(
        &self,
        provider: ProviderKind,
        key_ref: &str,
    ) -> Result<Vec<KekBinding>, StoreError>;

    /// Publishes that a replica holds binding `binding_id`'s tenant key (of `tenant`) unwrapped
    /// until `until_ms` at the latest, in the key-state monitor's shared schedule: the binding's
    /// `held_until_ms` becomes at least `until_ms`, and its next check is due at `check_at_ms`
    /// unless one is due earlier (the unwrap that loaded the key was the KMS vouching for it
    /// now). Not a lifecycle change: no audit record, no write lock of the audit chain. Unknown
    /// binding (or another tenant's) -> NotFound.
    async fn hold_key(
        &self,
        tenant: &TenantId,
        binding_id: i64,
        until_ms: i64,
        check_at_ms: i64,
    ) -> Result<(), StoreError>;

    /// Claims for `replica`, until `lease_until_ms`, up to `limit` checks due at `now_ms`
    /// (`due_at_ms <= now_ms`, no live lease), earliest due first, and returns them with their
    /// bindings and tenant intervals. Claims of several replicas never overlap (PostgreSQL:
    /// `FOR UPDATE SKIP LOCKED`; SQLite: one writer); a claim whose lease lapses (its replica
    /// died or stalled) is claimable again.
    async fn claim_key_checks(
        &self,
        replica: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<KeyCheck>, StoreError>;

    /// Ends `replica`'s claim of binding `binding_id`'s check and schedules the next: at
    /// `next_due_ms` if a replica still holds its key at `now_ms` (its `held_until_ms`, as it
    /// is when this runs, not as claimed), else at `unheld_due_ms` (`None`: no check until a
    /// replica holds the key again). Does nothing if the claim is no longer `replica`'s.
    /// Returns whether it was.
    async fn finish_key_check(
        &self,
        replica: &str,
        binding_id: i64,
        now_ms: i64,
        next_due_ms: i64,
        unheld_due_ms: Option<i64>,
    ) -> Result<bool, StoreError>;

    /// When the earliest check not claimed at `now_ms` is due (`None`: nothing scheduled).
    async fn next_key_check_due(&self, now_ms: i64) -> Result<Option<i64>, StoreError>;

    /// A tenant's key hierarchy for a re-key: every binding, every tenant key as wrapped now
    /// (`TenantKeyRecord::binding_id` is the binding whose KEK wraps it), and the DEKs below
    /// each tenant key. Unknown tenant: all empty.
    async fn rekey_state(&self, tenant: &TenantId) -> Result<RekeyState, StoreError>;

    /// Re-key of one tenant key, in one transaction: if it is still wrapped by
    /// `from_binding_id`, that binding is not revoked, destroyed or retired, and
    /// `to_binding_id` is still the tenant's current binding and usable (active, restored or
    /// unavailable), replaces its wrap, tag and wrapping binding in one `UPDATE` and appends
    /// `audit(&moved)`; otherwise changes nothing and fails with `StateChanged` (re-read and
    /// decide again). Unknown key -> NotFound. Durable before returning.
    async fn rewrap_tenant_key(
        &self,
        rewrap: TenantKeyRewrap,
        audit: AuditFn<'_, TenantKeyRecord>,
    ) -> Result<TenantKeyRecord, StoreError>;

    /// Retires, in one transaction, every older binding of the tenant (not current, not retired
    /// yet) whose KEK wraps no tenant key any more: state `retired` from then on (a new
    /// `state_version`), its monitor check removed; appends `audit(&result)` and announces the
    /// tenant when it retired any. No current binding -> NotFound. Retiring nothing changes
    /// nothing and records nothing.
    async fn retire_bindings(
        &self,
        tenant: &TenantId,
        audit: AuditFn<'_, RetiredBindings>,
    ) -> Result<RetiredBindings, StoreError>;

    /// The tenants whose policy asks for a scheduled re-key (`TenantPolicy::auto_rekey`) and
    /// that have an older binding not retired yet, ordered by id.
    async fn scheduled_rekeys(&self) -> Result<Vec<TenantId>, StoreError>;

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

    // ----- the exit kit's reads (docs/exit.md) ---------------------------------------------

    /// Every tenant key of `tenant`, oldest first (then by id), each as wrapped now: with the
    /// provider, key_ref, id and state of the binding whose KEK wraps it (its own binding's,
    /// until a re-key moves it under a newer one). An unknown tenant has none.
    async fn list_tenant_keys(&self, tenant: &TenantId)
    -> Result<Vec<TenantKeyRecord>, StoreError>;

    /// One page of `tenant`'s DEKs (active and retired), ordered by id: up to `limit` of those
    /// whose id sorts after `after` (`None`: from the first). Pass the last id of a page to get
    /// the next; an empty page is the end. `limit` must be 1..=[`MAX_EXPORT_PAGE`], else
    /// `InvalidInput`. Pages are separate reads (no snapshot spans them). Indexed
    /// (`deks_by_tenant_id`): a page costs the same however many DEKs come before it.
    async fn list_deks(
        &self,
        tenant: &TenantId,
        after: Option<&KeyId>,
        limit: u32,
    ) -> Result<Vec<DekRecord>, StoreError>;

    /// One page of `tenant`'s DEK tombstones, ordered by `seq`: up to `limit` with `seq` above
    /// `after_seq` (0: from the first). Same paging rules as [`Store::list_deks`].
    async fn list_tombstones(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<DekTombstone>, StoreError>;
}
