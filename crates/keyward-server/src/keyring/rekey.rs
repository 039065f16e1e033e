//! Re-keying (docs/rekey.md, ADR 0015): every tenant key still wrapped by an older binding's
//! KEK is re-wrapped under the current binding's KEK, so that all of a tenant's data depends on
//! the current KEK only, and the older bindings are retired (the customer may then disable or
//! delete their keys).
//!
//! For each tenant key: the old KEK unwraps it (its owner still allows it: the proof that the
//! customer agreed to the move), the current KEK wraps it, the new wrap is unwrapped again and
//! compared (a KEK that wraps but cannot unwrap, e.g. a key policy granting Encrypt only, must
//! not become the only wrap), then one compare-and-set `UPDATE` replaces the wrap
//! ([`Store::rewrap_tenant_key`]), audited (`tenant_key_rewrapped`). The DEKs and envelopes are
//! not touched: the tenant key itself is the same key. Once no tenant key is wrapped by an older
//! binding, those bindings are retired in one transaction ([`Store::retire_bindings`], audited
//! `kek_binding_retired` with counts).
//!
//! Safety:
//! - a tenant key is always wrapped by exactly one KEK (the `UPDATE` swaps the wrap, its tag and
//!   its binding together): a crash at any point leaves every key readable and the re-key
//!   resumable; the status is read from the store, so it is true after a restart;
//! - revocation stays a one-way door: an older binding that is revoked or destroyed is refused
//!   before anything moves (`REKEY_BLOCKED`), and one revoked while its key is being moved keeps
//!   it (the `UPDATE` checks the old binding's state under the write lock);
//! - the current binding must still be current and usable at each commit: a RegisterKey or a
//!   revocation during a re-key stops it (a key moved before stays under a binding that was
//!   current when it moved: a later re-key moves it again);
//! - before the first write, one key of every older binding is unwrapped: an old key that
//!   refuses (disabled too early) fails the call with nothing changed.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use keyward_audit::AuditEvent;
use keyward_envelope::{KeyId, SecretKey, TenantId};
use keyward_kms::{ErrorKind, KeyRef, ProviderError, Purpose, WrapContext};
use keyward_store::{
    KekBinding, KekState, RekeyState, RetiredBindings, StoreError, TenantKeyRecord, TenantKeyRewrap,
};
use subtle::ConstantTimeEq as _;

use super::{Keyring, gate::Closed, require_tenant, revoked};
use crate::error::ServiceError;

/// The actor recorded for a scheduled re-key (`TenantPolicy::auto_rekey`).
pub const SCHEDULED_REKEY_ACTOR: &str = "scheduled-rekey";

/// How often the scheduled re-key looks for tenants to re-key when nothing woke it (it is woken
/// when a key is registered for, or the policy set on, a tenant that asks for it). A tenant whose
/// re-key failed (an old key unreachable, a quota exhausted) is tried again then.
pub const SCHEDULED_REKEY_INTERVAL: Duration = Duration::from_secs(30);

/// Times a KMS call of a re-key that the quota throttled is tried again, and the first wait.
const THROTTLED_ATTEMPTS: u32 = 8;
const THROTTLED_WAIT: Duration = Duration::from_millis(100);

/// Times a re-key reads the hierarchy again after a commit found it changed.
const MAX_ROUNDS: usize = 4;

/// What a re-key has left to do, as the store says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RekeyStatus {
    /// The tenant's current binding: every tenant key is being moved under its KEK.
    pub target: KekBinding,
    /// Tenant keys wrapped by the target's KEK, and by an older binding's (left to move).
    pub tenant_keys_current: u32,
    pub tenant_keys_remaining: u32,
    /// DEKs below the tenant keys left to move.
    pub deks_remaining: u64,
    /// Older bindings that still wrap tenant keys, oldest first.
    pub pending: Vec<KekBinding>,
    /// Retired bindings, oldest first.
    pub retired: Vec<KekBinding>,
    /// Older bindings that wrap nothing but are not retired yet (a re-key retires them).
    pub unretired: Vec<KekBinding>,
    /// This call's work (`rekey` only): tenant keys moved, bindings retired.
    pub rewrapped: u32,
    pub retired_now: u32,
    /// Why the scheduled re-key of this tenant last stopped, on this replica (`None`: it never
    /// did, or it succeeded since).
    pub last_error: Option<String>,
}

impl RekeyStatus {
    /// Nothing is left: every tenant key is wrapped by the current KEK and every older binding
    /// is retired.
    pub fn done(&self) -> bool {
        self.tenant_keys_remaining == 0 && self.pending.is_empty() && self.unretired.is_empty()
    }

    fn of(state: &RekeyState, tenant: &TenantId) -> Result<Self, ServiceError> {
        let target = state
            .bindings
            .iter()
            .find(|b| b.deactivated_at_ms.is_none())
            .cloned()
            .ok_or_else(|| ServiceError::NoKeyRegistered(tenant.to_string()))?;
        let deks: HashMap<KeyId, u64> = state.deks_by_tenant_key.iter().copied().collect();
        let remaining: Vec<&TenantKeyRecord> = state
            .tenant_keys
            .iter()
            .filter(|k| k.binding_id != target.id)
            .collect();
        let wrapping: HashSet<i64> = remaining.iter().map(|k| k.binding_id).collect();
        let older = state.bindings.iter().filter(|b| b.id != target.id);
        let pending = older
            .clone()
            .filter(|b| wrapping.contains(&b.id))
            .cloned()
            .collect();
        let retired = older
            .clone()
            .filter(|b| b.state == KekState::Retired)
            .cloned()
            .collect();
        let unretired = older
            .filter(|b| b.state != KekState::Retired && !wrapping.contains(&b.id))
            .cloned()
            .collect();
        Ok(Self {
            tenant_keys_current: count(state.tenant_keys.len() - remaining.len()),
            tenant_keys_remaining: count(remaining.len()),
            deks_remaining: remaining
                .iter()
                .map(|k| deks.get(&k.id).copied().unwrap_or(0))
                .sum(),
            target,
            pending,
            retired,
            unretired,
            rewrapped: 0,
            retired_now: 0,
            last_error: None,
        })
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The re-keys of this replica: which tenants are being re-keyed now (one at a time per tenant
/// on a replica; replicas racing on one tenant are safe, each move being a compare-and-set),
/// why a scheduled re-key last stopped, and the wake-up of the scheduled re-key.
#[derive(Default)]
pub(super) struct Rekeys {
    running: Mutex<HashSet<TenantId>>,
    last_errors: Mutex<HashMap<TenantId, String>>,
    wake: tokio::sync::Notify,
}

impl Rekeys {
    fn last_error(&self, tenant: &TenantId) -> Option<String> {
        self.last_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .cloned()
    }

    fn set_last_error(&self, tenant: &TenantId, error: Option<String>) {
        let mut errors = self
            .last_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match error {
            Some(e) => errors.insert(tenant.clone(), e),
            None => errors.remove(tenant),
        };
    }

    /// Wakes the scheduled re-key (a key was registered, or the policy set).
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Marks a tenant as being re-keyed on this replica until dropped.
struct Running<'a> {
    rekeys: &'a Rekeys,
    tenant: TenantId,
}

impl<'a> Running<'a> {
    fn start(rekeys: &'a Rekeys, tenant: &TenantId) -> Result<Self, ServiceError> {
        let fresh = rekeys
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tenant.clone());
        if !fresh {
            return Err(ServiceError::Conflict(format!(
                "a re-key of tenant {tenant} is already running on this replica; GetRekeyStatus shows its progress"
            )));
        }
        Ok(Self {
            rekeys,
            tenant: tenant.clone(),
        })
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.rekeys
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.tenant);
    }
}

impl Keyring {
    /// What a re-key of `tenant` has left to do, read from the store (true after a crash).
    /// Unknown tenant: `TenantNotFound`; no key: `NoKeyRegistered`.
    pub async fn rekey_status(&self, tenant: &TenantId) -> Result<RekeyStatus, ServiceError> {
        require_tenant(self.wiring.store.as_ref(), tenant).await?;
        let state = self.wiring.store.rekey_state(tenant).await?;
        let mut status = RekeyStatus::of(&state, tenant)?;
        status.last_error = self.rekeys.last_error(tenant);
        Ok(status)
    }

    /// Re-keys `tenant` (see the module docs): moves up to `max_tenant_keys` tenant keys
    /// (`None`: all) under the current binding's KEK, then retires the older bindings that wrap
    /// nothing any more. Returns the status afterwards with this call's work. `actor` is
    /// recorded in the audit records.
    pub async fn rekey(
        &self,
        tenant: &TenantId,
        max_tenant_keys: Option<u32>,
        actor: &str,
    ) -> Result<RekeyStatus, ServiceError> {
        let _running = Running::start(&self.rekeys, tenant)?;
        require_tenant(self.wiring.store.as_ref(), tenant).await?;
        let mut rewrapped = 0u32;
        let mut rounds = 0;
        let status = loop {
            rounds += 1;
            let state = self.wiring.store.rekey_state(tenant).await?;
            let status = RekeyStatus::of(&state, tenant)?;
            self.check_target(tenant, &status.target)?;
            let budget = max_tenant_keys.map(|m| m.saturating_sub(rewrapped));
            if status.tenant_keys_remaining == 0 || budget == Some(0) {
                break status;
            }
            match self
                .move_keys(tenant, &state, &status.target, budget, actor)
                .await
            {
                Ok(moved) => {
                    rewrapped += moved;
                    if budget.is_some_and(|b| moved >= b) {
                        break self
                            .wiring
                            .store
                            .rekey_state(tenant)
                            .await
                            .map_or(Ok(status), |s| RekeyStatus::of(&s, tenant))?;
                    }
                }
                Err(Moved::Partly(moved, why)) if rounds < MAX_ROUNDS => {
                    // The hierarchy changed under a commit (another replica's re-key, a
                    // revocation, a new key): read it again and decide again.
                    rewrapped += moved;
                    tracing::info!(%tenant, %why, "re-key: the key hierarchy changed; reading it again");
                }
                Err(Moved::Partly(moved, why)) => {
                    rewrapped += moved;
                    return Err(ServiceError::Conflict(format!(
                        "the key hierarchy of tenant {tenant} kept changing during the re-key ({why}); {rewrapped} tenant keys were moved, run RekeyTenant again"
                    )));
                }
                Err(Moved::Failed(e)) => return Err(e),
            }
        };
        let mut status = status;
        if status.tenant_keys_remaining == 0 && !status.unretired.is_empty() {
            let retired = self.retire(tenant, actor).await?;
            if let Some(m) = &self.wiring.metrics {
                m.bindings_retired(retired.retired.len());
            }
            status = self.rekey_status(tenant).await?;
            status.retired_now = count(retired.retired.len());
        }
        status.rewrapped = rewrapped;
        status.last_error = self.rekeys.last_error(tenant);
        if rewrapped > 0 || status.retired_now > 0 {
            tracing::info!(%tenant, %actor, rewrapped, retired = status.retired_now, remaining = status.tenant_keys_remaining, "re-key");
        }
        Ok(status)
    }

    /// The re-key's target must be usable here: current and not revoked, and the tenant not
    /// closed on this replica.
    fn check_target(&self, tenant: &TenantId, target: &KekBinding) -> Result<(), ServiceError> {
        if let Some(closed) = self.revocation.gates().closed(tenant) {
            return Err(revoked(tenant, closed));
        }
        match target.state {
            KekState::Active | KekState::Restored | KekState::Unavailable => Ok(()),
            state => Err(revoked(
                tenant,
                Closed {
                    state,
                    since_ms: target.state_changed_at_ms,
                    cause: target.state_cause,
                },
            )),
        }
    }

    /// Moves up to `budget` of the tenant keys not under `target` (as `state` read them).
    /// First unwraps one key of every older binding (nothing is written if one refuses).
    async fn move_keys(
        &self,
        tenant: &TenantId,
        state: &RekeyState,
        target: &KekBinding,
        budget: Option<u32>,
        actor: &str,
    ) -> Result<u32, Moved> {
        let bindings: HashMap<i64, &KekBinding> =
            state.bindings.iter().map(|b| (b.id, b)).collect();
        let mut by_binding: BTreeMap<i64, Vec<&TenantKeyRecord>> = BTreeMap::new();
        for key in state
            .tenant_keys
            .iter()
            .filter(|k| k.binding_id != target.id)
        {
            by_binding.entry(key.binding_id).or_default().push(key);
        }
        // Revocation is a one-way door: refuse before anything moves.
        for id in by_binding.keys() {
            let binding = bindings
                .get(id)
                .ok_or_else(|| Moved::Failed(super::internal(format!("binding {id} not read"))))?;
            if matches!(binding.state, KekState::Revoked | KekState::Destroyed) {
                return Err(Moved::Failed(ServiceError::RekeyBlocked {
                    tenant: tenant.to_string(),
                    binding_id: binding.id,
                    provider: binding.provider.to_string(),
                    key_ref: binding.key_ref.clone(),
                    state: binding.state,
                }));
            }
        }
        let target_ref = KeyRef::new(target.provider, target.key_ref.clone());
        let mut order: Vec<&TenantKeyRecord> = Vec::new();
        let mut rest: Vec<&TenantKeyRecord> = Vec::new();
        for keys in by_binding.values() {
            let (first, others) = keys
                .split_first()
                .ok_or_else(|| Moved::Failed(super::internal("a pending binding without keys")))?;
            order.push(first);
            rest.extend(others);
        }
        // One unwrap per older binding before any write: an old key disabled too early fails
        // the call with nothing changed. The keys are kept (zeroized on drop) for their move.
        let mut unwrapped: HashMap<KeyId, SecretKey> = HashMap::new();
        for record in &order {
            let key = self
                .unwrap_old(tenant, record)
                .await
                .map_err(Moved::Failed)?;
            unwrapped.insert(record.id, key);
        }
        order.extend(rest);
        let limit = budget.map_or(usize::MAX, |b| usize::try_from(b).unwrap_or(usize::MAX));
        let mut moved = 0u32;
        for record in order.into_iter().take(limit) {
            let key = match unwrapped.remove(&record.id) {
                Some(key) => key,
                None => self
                    .unwrap_old(tenant, record)
                    .await
                    .map_err(Moved::Failed)?,
            };
            let (wrapped, mac) = self
                .wrap_new(tenant, &record.id, &target_ref, &key)
                .await
                .map_err(Moved::Failed)?;
            let result = self
                .wiring
                .store
                .rewrap_tenant_key(
                    TenantKeyRewrap {
                        tenant: tenant.clone(),
                        id: record.id,
                        from_binding_id: record.binding_id,
                        to_binding_id: target.id,
                        wrapped,
                        mac,
                    },
                    &|moved: &TenantKeyRecord| {
                        vec![AuditEvent::TenantKeyRewrapped {
                            tenant: moved.tenant.clone(),
                            tenant_key_id: moved.id,
                            from_binding_id: record.binding_id,
                            to_binding_id: moved.binding_id,
                            actor: actor.to_owned(),
                        }]
                    },
                )
                .await;
            match result {
                Ok(_) => {
                    moved += 1;
                    if let Some(m) = &self.wiring.metrics {
                        m.tenant_key_rewrapped();
                    }
                }
                Err(StoreError::StateChanged(why)) => return Err(Moved::Partly(moved, why)),
                Err(e) => return Err(Moved::Failed(e.into())),
            }
        }
        Ok(moved)
    }

    /// The old KEK's unwrap of a tenant key to move (its tag checked first, ADR 0007). A
    /// refusal names the old key: the customer disabled it before the re-key was done.
    async fn unwrap_old(
        &self,
        tenant: &TenantId,
        record: &TenantKeyRecord,
    ) -> Result<SecretKey, ServiceError> {
        self.kek.check_tenant_key_mac(record)?;
        with_throttle_retries(|| self.kek.unwrap_tenant_key(tenant, &record.id, record))
            .await
            .map_err(|e| match e {
                ServiceError::KeyRefused(inner) | ServiceError::KeyNotFound(inner) => {
                    let kind = inner.kind();
                    ServiceError::KeyRefused(
                        ProviderError::new(
                            kind,
                            format!(
                                "the re-key needs the old key {} {} (binding {}) to unwrap tenant key {} once, and it refused: {}; nothing was changed for that key",
                                record.provider,
                                record.key_ref,
                                record.binding_id,
                                record.id,
                                inner.message()
                            ),
                        )
                        .with_remediation(
                            "keep the old key enabled (or enable it again) until GetRekeyStatus says the re-key is done, then run RekeyTenant again (docs/rekey.md)",
                        ),
                    )
                }
                other => other,
            })
    }

    /// `key` wrapped by the target KEK under the tenant key's wrap context, unwrapped again and
    /// compared, with its tag (ADR 0007).
    async fn wrap_new(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        target: &KeyRef,
        key: &SecretKey,
    ) -> Result<(keyward_envelope::WrappedKey, Vec<u8>), ServiceError> {
        let provider = self.kek.providers.get(target.kind())?;
        let ctx = WrapContext::new(tenant, id, Purpose::TenantKey);
        self.ledger.count_usage(tenant, |u| u.kms_calls += 2); // wrap + the check's unwrap
        let wrapped = with_throttle_retries(|| async {
            provider
                .wrap(target, key, &ctx)
                .await
                .map_err(ServiceError::from_provider)
        })
        .await?;
        let back = with_throttle_retries(|| async {
            provider
                .unwrap(target, &wrapped, &ctx)
                .await
                .map_err(ServiceError::from_provider)
        })
        .await?;
        if !bool::from(key.expose_secret().ct_eq(back.expose_secret())) {
            return Err(ServiceError::KeyMisconfigured(ProviderError::new(
                ErrorKind::Misconfigured,
                format!(
                    "key {target} did not return the re-wrapped tenant key {id} on unwrap; nothing was changed"
                ),
            )));
        }
        let mac = self.kek.tenant_key_tag(tenant, id, target, &wrapped);
        Ok((wrapped, mac))
    }

    /// Retires the older bindings that wrap nothing any more (audited with counts).
    async fn retire(
        &self,
        tenant: &TenantId,
        actor: &str,
    ) -> Result<RetiredBindings, ServiceError> {
        Ok(self
            .wiring
            .store
            .retire_bindings(tenant, &|r: &RetiredBindings| {
                r.retired
                    .iter()
                    .map(|b| AuditEvent::KekBindingRetired {
                        tenant: b.tenant.clone(),
                        binding_id: b.id,
                        provider: b.provider.to_string(),
                        key_ref: b.key_ref.clone(),
                        to_binding_id: r.target.id,
                        tenant_keys: r.tenant_keys,
                        deks: r.deks,
                        actor: actor.to_owned(),
                    })
                    .collect()
            })
            .await?)
    }

    /// Wakes the scheduled re-key now (a key was registered for a tenant, or its policy set).
    pub fn wake_scheduled_rekey(&self) {
        self.rekeys.wake();
    }

    /// One pass of the scheduled re-key: re-keys every tenant whose policy asks for it
    /// (`auto_rekey`) and that has an older binding not retired. A failure is remembered for
    /// `GetRekeyStatus` and tried again on the next pass. Returns how many tenants were
    /// re-keyed to the end.
    pub async fn run_scheduled_rekeys_once(&self) -> Result<usize, ServiceError> {
        let mut done = 0;
        for tenant in self.wiring.store.scheduled_rekeys().await? {
            match self.rekey(&tenant, None, SCHEDULED_REKEY_ACTOR).await {
                Ok(status) if status.done() => {
                    self.rekeys.set_last_error(&tenant, None);
                    done += 1;
                }
                Ok(_) => {}
                // Another re-key of the tenant runs here: it does the work.
                Err(ServiceError::Conflict(_)) => {}
                Err(e) => {
                    let error = e.to_string();
                    // Once per new reason: a blocked tenant is tried every pass.
                    if self.rekeys.last_error(&tenant).as_deref() != Some(error.as_str()) {
                        tracing::warn!(%tenant, error = %error, "scheduled re-key stopped; trying again every pass until it succeeds (GetRekeyStatus shows why)");
                    }
                    self.rekeys.set_last_error(&tenant, Some(error));
                }
            }
        }
        Ok(done)
    }

    /// The scheduled re-key: a pass when woken ([`Keyring::wake_scheduled_rekey`]) and every
    /// `interval`, until the task is dropped.
    pub async fn run_scheduled_rekeys(self: Arc<Self>, interval: Duration) {
        loop {
            if let Err(e) = self.run_scheduled_rekeys_once().await {
                tracing::error!(error = %e, "scheduled re-key pass failed");
            }
            let _ = tokio::time::timeout(interval, self.rekeys.wake.notified()).await;
        }
    }
}

/// How far a batch of moves got before it stopped.
enum Moved {
    /// `n` keys were moved, then a commit found the hierarchy changed (read it again).
    Partly(u32, String),
    /// It failed; whatever moved before is committed (every move is its own transaction).
    Failed(ServiceError),
}

/// Runs a KMS call again while the quota throttles it (`[kms_quota]`): a re-key shares the
/// customer's quota with the data path and waits its turn rather than failing.
async fn with_throttle_retries<T, F, Fut>(mut call: F) -> Result<T, ServiceError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ServiceError>>,
{
    let mut wait = THROTTLED_WAIT;
    for _ in 1..THROTTLED_ATTEMPTS {
        match call().await {
            Err(ServiceError::KmsUnavailable(e)) if e.kind() == ErrorKind::Throttled => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
    call().await
}
