//! The values the store keeps and returns: scopes, key states, tenants and their policies, KEK
//! bindings and their changes, tenant keys and DEKs (re-exported at the crate root).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

#[cfg(doc)]
use crate::Store;
use crate::{KeyId, ProviderKind, RevocationSource, StoreError, TenantId, WrappedKey};

/// Caller-chosen DEK scope label: 1..=128 bytes, no control characters; "default" when none.
///
/// Shared (`Arc<str>`): the active-key cache keys by (tenant, scope) on every Encrypt, and a
/// clone is a reference-count increment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(Arc<str>);

impl Scope {
    /// The scope used when the caller names none.
    pub const DEFAULT: &'static str = "default";
    /// Longest accepted scope label, in bytes.
    pub const MAX_LEN: usize = 128;

    /// The `"default"` scope.
    pub fn default_scope() -> Self {
        static DEFAULT: std::sync::LazyLock<Arc<str>> =
            std::sync::LazyLock::new(|| Arc::from(Scope::DEFAULT));
        Self(Arc::clone(&DEFAULT))
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
        Ok(Self(Arc::from(s)))
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
        Ok(Self(Arc::from(s)))
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
    /// Re-keyed (`Store::retire_bindings`): every tenant key it wrapped is wrapped by a newer
    /// binding's KEK, so nothing depends on its key any more. Not a revocation; final (stored as
    /// `kek_bindings.retired_at_ms`, never written as a state).
    Retired,
}

impl KekState {
    /// Every state, in declaration order.
    pub const ALL: [KekState; 6] = [
        KekState::Active,
        KekState::Revoked,
        KekState::Unavailable,
        KekState::Restored,
        KekState::Destroyed,
        KekState::Retired,
    ];

    /// The stored (and displayed) name: `"active"`, `"revoked"`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            KekState::Active => "active",
            KekState::Revoked => "revoked",
            KekState::Unavailable => "unavailable",
            KekState::Restored => "restored",
            KekState::Destroyed => "destroyed",
            KekState::Retired => "retired",
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
    /// Scheduled re-key: when a new key is bound, re-key the tenant in the background.
    pub auto_rekey: bool,
    /// The purposes allowed to decrypt the tenant's data, as a bit set: bit n is the proto
    /// `keyward.v1.Purpose` value n (1..=30); 0 is no rule (docs/justifications.md). Bit 0 and
    /// bit 31 are never set ([`TenantPolicy::PURPOSE_BITS`]).
    pub decrypt_purposes: u32,
}

impl TenantPolicy {
    /// The bits [`TenantPolicy::decrypt_purposes`] may have set.
    pub const PURPOSE_BITS: u32 = 0x7fff_fffe;
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

/// A KEK binding with what depends on it ([`Store::binding_usage`]): one line of the tenant's
/// key history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingUsage {
    pub binding: KekBinding,
    /// DEKs not shredded (active or retired) under the tenant keys the binding's KEK wraps now
    /// (its own tenant key, plus older ones a re-key moved under it; none once a re-key moved
    /// its own away): while this is not 0, disabling the binding's KEK makes that data
    /// unreadable.
    pub deks: u64,
    /// The distinct scopes of those DEKs.
    pub scopes: u64,
    /// DEKs of the binding's tenant key shredded so far (its rows of `dek_tombstones`).
    pub deks_shredded: u64,
    /// The caller that registered the binding, as its `kek_binding_changed` audit record names
    /// it; `None` when the record names none (written before records carried it, or a binding
    /// made without a caller).
    pub bound_by: Option<String>,
}

/// What a store holds and how old the oldest of it is ([`SqlStore::contents`]); what
/// `keyward store backup` reports about the copy it wrote.
///
/// [`SqlStore::contents`]: crate::sql::SqlStore::contents
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreContents {
    pub tenants: u64,
    /// Wrapped tenant keys (one per binding, current or older).
    pub tenant_keys: u64,
    /// Wrapped DEKs (active or retired; shredded ones are no longer there).
    pub deks: u64,
    /// Tombstones of shredded DEKs (no key material).
    pub dek_tombstones: u64,
    /// When the oldest wrapped DEK was created; `None` without DEKs.
    pub oldest_dek_created_at_ms: Option<i64>,
    /// When the oldest wrapped tenant key was created; `None` without tenant keys.
    pub oldest_tenant_key_created_at_ms: Option<i64>,
    /// The time of the last audit record (the newest lifecycle change the store holds);
    /// `None` while the chain is empty.
    pub last_record_at_ms: Option<i64>,
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

/// A canary check of one binding's key claimed from the monitor's shared schedule
/// ([`Store::claim_key_checks`]), with what the monitor needs to run it and schedule the next:
/// no further store read per check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCheck {
    /// The binding as the claim read it (its state may change before the check's answer is
    /// applied: the answer is applied with a compare-and-set).
    pub binding: KekBinding,
    /// A tenant key the binding's KEK wraps now, which the canary asks the KMS to unwrap;
    /// `None` when it wraps none (a re-key moved them all under a newer binding): nothing
    /// depends on the binding's key, there is nothing to check.
    pub tenant_key: Option<TenantKeyRecord>,
    /// The latest deadline of any replica's cached copy of the binding's tenant key: none is
    /// held after it (`0`: never held).
    pub held_until_ms: i64,
    /// When the check was due.
    pub due_at_ms: i64,
    /// The tenant's monitor interval override (`TenantPolicy::monitor_interval_seconds`).
    pub monitor_interval_seconds: Option<u64>,
}

impl KeyCheck {
    /// Whether some replica may still hold the binding's tenant key unwrapped at `now_ms`.
    pub fn held_at(&self, now_ms: i64) -> bool {
        self.held_until_ms > now_ms
    }
}

/// A request to crypto-shred one scope of a tenant ([`Store::shred_scope`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeShred {
    pub tenant: TenantId,
    pub scope: Scope,
    /// The scope's HMAC (the only form of the label kept in the tombstones and the audit log).
    pub scope_hmac: String,
    /// Who asked (the caller's identity), recorded in each tombstone.
    pub shredded_by: String,
    /// Why, recorded in each tombstone.
    pub reason: String,
    /// Retention shredding: shred the scope only if it is still [`WrittenBefore`] inside the
    /// transaction (a DEK created since the candidates were listed keeps the scope).
    pub only_if: Option<WrittenBefore>,
}

/// The retention rule of [`Store::shred_candidates`]: a scope all of whose data was written
/// before `cutoff_ms`, i.e. every DEK of it could no longer encrypt at `cutoff_ms`: it was
/// retired before, or created at least `max_age_ms` before (the rotation age after which a DEK
/// is never used again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenBefore {
    pub cutoff_ms: i64,
    pub max_age_ms: i64,
    /// Only scopes whose label starts with this (empty: every scope).
    pub scope_prefix: String,
}

/// What remains of a shredded DEK: no key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DekTombstone {
    /// Orders tombstones across the store (replicas catch up with shreds by it).
    pub seq: i64,
    pub id: KeyId,
    pub tenant: TenantId,
    pub scope_hmac: String,
    /// The tenant key the DEK was wrapped under.
    pub tenant_key_id: KeyId,
    pub created_at_ms: i64,
    pub shredded_at_ms: i64,
    pub shredded_by: String,
    pub reason: String,
}

/// What [`Store::shred_scope`] destroyed: one tombstone per DEK (none if the scope had none, or
/// if a retention shred found the scope no longer eligible).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShredResult {
    pub tenant: TenantId,
    pub scope_hmac: String,
    pub shredded_at_ms: i64,
    pub tombstones: Vec<DekTombstone>,
    /// A retention shred ([`ScopeShred::only_if`]) whose scope was no longer eligible.
    pub skipped: bool,
}

/// A scope a retention shred would destroy, with its DEK count ([`Store::shred_candidates`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShredCandidate {
    pub scope: Scope,
    pub deks: u64,
}

/// One tenant key re-wrapped by a re-key ([`Store::rewrap_tenant_key`]): the same key (same id,
/// same bytes once unwrapped), now wrapped by the KEK of `to_binding_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantKeyRewrap {
    pub tenant: TenantId,
    pub id: KeyId,
    /// The binding whose KEK wrapped it when the re-key read it: the update applies only if it
    /// still does (compare-and-set), and only if that binding is not revoked, destroyed or
    /// retired at commit.
    pub from_binding_id: i64,
    /// The tenant's current binding, which must still be current and usable at commit.
    pub to_binding_id: i64,
    /// The key wrapped by `to_binding_id`'s KEK, and its tag (ADR 0007) for that KEK.
    pub wrapped: WrappedKey,
    pub mac: Vec<u8>,
}

/// What [`Store::retire_bindings`] did: the bindings it retired (none when nothing was left to
/// retire), the binding whose KEK wraps the tenant's keys now, and what is below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredBindings {
    pub retired: Vec<KekBinding>,
    pub target: KekBinding,
    /// Tenant keys wrapped by `target`'s KEK, and the DEKs below them, at commit.
    pub tenant_keys: u64,
    pub deks: u64,
}

/// A tenant's key hierarchy as a re-key sees it ([`Store::rekey_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RekeyState {
    /// Every binding of the tenant, oldest first (the current one last, if any).
    pub bindings: Vec<KekBinding>,
    /// Every tenant key of the tenant, as wrapped now, ordered by id.
    pub tenant_keys: Vec<TenantKeyRecord>,
    /// The DEKs below each tenant key (not shredded), by tenant key id.
    pub deks_by_tenant_key: Vec<(KeyId, u64)>,
}
