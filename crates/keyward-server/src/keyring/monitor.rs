//! The key-state monitor (docs/revocation.md, "Monitor"): when each tenant's key is checked
//! with the KMS (a global rate limit, per-tenant intervals, jittered passes), and the canary
//! check whose observation [`Revocation`] turns into a transition.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use keyward_envelope::TenantId;
use keyward_store::{KekBinding, KekState, ProviderKind, Store};

use super::{
    kek::Kek,
    revocation::{CheckOutcome, Observation, Revocation, RevocationSource},
};
use crate::error::ServiceError;

/// How the key-state monitor paces itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MonitorPolicy {
    /// Time between the starts of two sweeps over every tenant.
    pub interval: Duration,
    /// Global cap on canary checks (KMS calls) per second, so that many tenants
    /// do not burst the KMS; a sweep takes at least tenants / rate seconds.
    pub max_checks_per_second: u32,
}

/// Paces the checks of every tenant's key and hands what the KMS said to [`Revocation`].
pub(super) struct Monitor {
    store: Arc<dyn Store>,
    kek: Arc<Kek>,
    revocation: Arc<Revocation>,
    /// When the monitor last checked each tenant (for per-tenant intervals).
    last_checked: Mutex<HashMap<TenantId, Instant>>,
}

impl Monitor {
    pub(super) fn new(store: Arc<dyn Store>, kek: Arc<Kek>, revocation: Arc<Revocation>) -> Self {
        Self {
            store,
            kek,
            revocation,
            last_checked: Mutex::default(),
        }
    }

    /// Checks one tenant's key with a canary unwrap and applies the outcome. `binding` may be
    /// an older read (a sweep's work list): the outcome is applied to the binding as it is now
    /// (compare-and-set), never to the state that was read.
    pub(super) async fn check_binding(
        &self,
        binding: &KekBinding,
    ) -> Result<CheckOutcome, ServiceError> {
        if binding.state == KekState::Destroyed {
            return Ok(CheckOutcome::Unchanged);
        }
        let observation = match self.kek.canary(binding).await {
            Ok(()) => Observation::Works,
            Err(ServiceError::KeyRefused(e)) => Observation::Refused(e.message().to_owned()),
            Err(ServiceError::KeyNotFound(e)) => Observation::Gone(e.message().to_owned()),
            Err(ServiceError::KmsUnavailable(e)) => {
                Observation::Unreachable(e.message().to_owned())
            }
            Err(other) => return Err(other),
        };
        self.revocation
            .observe_now(binding, observation, RevocationSource::Monitor)
            .await
    }

    /// One sweep of the monitor over every tenant's current binding, paced by
    /// the global rate limit. Returns the outcomes, in tenant order.
    pub(super) async fn check_all(
        &self,
        max_checks_per_second: u32,
    ) -> Result<Vec<(TenantId, CheckOutcome)>, ServiceError> {
        let pause = Duration::from_secs(1) / max_checks_per_second.max(1);
        let mut outcomes = Vec::new();
        for (i, binding) in self.store.active_bindings().await?.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(pause).await;
            }
            match self.check_binding(&binding).await {
                Ok(outcome) => outcomes.push((binding.tenant.clone(), outcome)),
                Err(e) => {
                    tracing::error!(tenant = %binding.tenant, error = %e, "key-state check failed")
                }
            }
        }
        Ok(outcomes)
    }

    /// One pass of the monitor: checks every tenant whose interval (its
    /// policy override, else `policy.interval`) has passed since its last
    /// check, paced by the global rate limit. Returns the outcomes and how long
    /// to wait before the next pass (the shortest interval in use).
    pub(super) async fn check_due(
        &self,
        policy: MonitorPolicy,
    ) -> Result<(Vec<(TenantId, CheckOutcome)>, Duration), ServiceError> {
        let pause = Duration::from_secs(1) / policy.max_checks_per_second.max(1);
        let mut next = policy.interval;
        let mut outcomes = Vec::new();
        for binding in self.store.active_bindings().await? {
            let interval = self
                .store
                .get_tenant(&binding.tenant)
                .await?
                .and_then(|t| t.policy.monitor_interval_seconds)
                .map_or(policy.interval, Duration::from_secs);
            next = next.min(interval);
            let due = self
                .last_checked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&binding.tenant)
                .is_none_or(|last| last.elapsed() + interval.mul_f64(0.05) >= interval);
            if !due {
                continue;
            }
            if !outcomes.is_empty() {
                tokio::time::sleep(pause).await;
            }
            self.last_checked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(binding.tenant.clone(), Instant::now());
            match self.check_binding(&binding).await {
                Ok(outcome) => outcomes.push((binding.tenant.clone(), outcome)),
                Err(e) => {
                    tracing::error!(tenant = %binding.tenant, error = %e, "key-state check failed")
                }
            }
        }
        Ok((outcomes, next))
    }

    /// The key-state monitor: passes every shortest interval in use (with ±10 %
    /// jitter, so replicas drift apart) until the task is dropped.
    pub(super) async fn run(&self, policy: MonitorPolicy) {
        let mut wait = policy.interval;
        loop {
            let jitter = wait.mul_f64(jitter_fraction());
            tokio::time::sleep(wait.mul_f64(0.9) + jitter).await;
            match self.check_due(policy).await {
                Ok((_, next)) => wait = next,
                Err(e) => tracing::error!(error = %e, "key-state monitor pass failed"),
            }
        }
    }

    /// A pushed key-state event names a key: every tenant currently bound to it
    /// is checked with the KMS (the event is a hint, the KMS is the truth).
    /// Returns (checked, revoked).
    pub(super) async fn recheck_key(
        &self,
        provider: ProviderKind,
        key_ref: &str,
    ) -> Result<(u32, u32), ServiceError> {
        let mut checked = 0;
        let mut revoked = 0;
        for binding in self.store.active_bindings().await? {
            if binding.provider != provider || binding.key_ref != key_ref {
                continue;
            }
            checked += 1;
            if self.check_binding(&binding).await? == CheckOutcome::Revoked {
                revoked += 1;
            }
        }
        Ok((checked, revoked))
    }
}

/// A uniformly random fraction in [0, 0.2): the jitter of one monitor sweep.
fn jitter_fraction() -> f64 {
    let mut byte = [0u8; 1];
    if aws_lc_rs::rand::fill(&mut byte).is_err() {
        return 0.1;
    }
    f64::from(byte[0]) / 256.0 * 0.2
}
