//! The key-state monitor (docs/revocation.md, "Monitor"; docs/adr/0012-monitor-schedule.md):
//! which bindings' keys are checked with the KMS, when, by which replica, at what pace, and the
//! canary check whose observation [`Revocation`] turns into a transition.
//!
//! The work list is the store's shared schedule (`key_checks`), not a scan of every tenant:
//! - a replica that unwraps a tenant key publishes that it holds it until its cache deadline
//!   ([`Schedule::hold`]) and, if the binding has no check scheduled, schedules one an interval
//!   later. A key no replica holds needs no canary: it cannot serve plaintext without a KMS call.
//!   A key of an older binding (data written before a rotation) is held and checked like the
//!   current one;
//! - each replica claims the checks that are due, earliest first, in batches with a lease
//!   ([`Store::claim_key_checks`]; PostgreSQL `FOR UPDATE SKIP LOCKED`): one canary per binding
//!   per interval for the whole fleet, and a claim of a replica that died comes due again when
//!   its lease lapses;
//! - claimed checks run concurrently (at most `max_concurrent_checks` per provider kind),
//!   started at most `max_checks_per_second` per second (the budget); the KMS providers' own
//!   per-key quota (`[kms_quota]`) applies to them as to every call;
//! - a check that starts later than its slack after its due time means the budget does not
//!   cover the due checks: the monitor says so (log, metric, readiness detail) and, while that
//!   lasts, tenant keys are cached for at most their monitor interval ([`Schedule::hold`]), so
//!   that the window stays bounded by the interval rather than stretching silently.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt as _;
use keyward_envelope::TenantId;
use keyward_store::{KekBinding, KekState, KeyCheck, ProviderKind, Store};

use super::{
    kek::Kek,
    revocation::{CheckOutcome, Observation, Revocation, RevocationSource},
};
use crate::{error::ServiceError, metrics::Metrics, now_ms};

/// How the key-state monitor paces itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MonitorPolicy {
    /// Time between two checks of one binding's key (a tenant's policy may override it).
    pub interval: Duration,
    /// The budget: most checks (KMS calls) this replica starts per second.
    pub max_checks_per_second: u32,
    /// Most checks in flight at once on this replica, per provider kind (AWS KMS, Cloud KMS, …).
    pub max_concurrent_checks: u32,
}

impl MonitorPolicy {
    /// Checks every `interval`, at most `max_checks_per_second`, with the default concurrency.
    pub fn new(interval: Duration, max_checks_per_second: u32) -> Self {
        Self {
            interval,
            max_checks_per_second,
            max_concurrent_checks: DEFAULT_CONCURRENT_CHECKS,
        }
    }

    /// How long a claim is this replica's: long enough for a batch's checks to start under the
    /// budget and answer, short enough that a dead replica's claims come due again within an
    /// interval.
    fn lease(&self) -> Duration {
        self.interval.clamp(MIN_LEASE, MAX_LEASE)
    }

    /// Checks claimed at once: what the budget starts in about a second.
    fn batch(&self) -> u32 {
        self.max_checks_per_second.clamp(1, MAX_BATCH)
    }
}

impl Default for MonitorPolicy {
    fn default() -> Self {
        Self::new(Duration::from_secs(60), DEFAULT_CHECKS_PER_SECOND)
    }
}

/// Default budget (`revocation.monitor_max_checks_per_second`): 10,000 held keys checked every
/// 60 s need 167 checks per second.
pub const DEFAULT_CHECKS_PER_SECOND: u32 = 200;
/// Default of `revocation.monitor_max_concurrent_checks`.
pub const DEFAULT_CONCURRENT_CHECKS: u32 = 32;
const MIN_LEASE: Duration = Duration::from_secs(2);
const MAX_LEASE: Duration = Duration::from_secs(30);
const MAX_BATCH: u32 = 500;
/// Longest sleep between two looks at the schedule: another replica may schedule a check
/// earlier than the earliest one seen (a tenant with a shorter interval).
const MAX_IDLE: Duration = Duration::from_secs(1);
const MIN_IDLE: Duration = Duration::from_millis(10);
/// How long the monitor counts as overcommitted after a late check (at least an interval): long
/// enough for a metrics scrape to see it, and for keys loaded meanwhile to be cached briefly.
const OVERCOMMIT_MEMORY: Duration = Duration::from_secs(60);
/// A check that starts this much later than its due time (or a tenth of its interval, if more)
/// means the budget does not cover the schedule.
const LATE: Duration = Duration::from_secs(1);

/// The monitor's shared state with the data path: the policy the holdings are scheduled with,
/// and whether the budget covers the schedule.
pub(super) struct Schedule {
    store: Arc<dyn Store>,
    /// `None`: the monitor is off; nothing is published (the cache TTL alone bounds the window).
    policy: Option<MonitorPolicy>,
    /// Until when tenant keys are cached for at most their monitor interval (ms since the epoch;
    /// 0: not overcommitted): a minute, or an interval if longer, after the last late check.
    overcommitted_until_ms: AtomicI64,
    /// How late the latest late check started (ms).
    lag_ms: AtomicI64,
    /// Holdings that could not be published.
    hold_failures: AtomicU64,
    metrics: Option<Arc<Metrics>>,
}

/// Whether the monitor keeps up with its schedule on this replica, for `/readyz` and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MonitorStatus {
    /// The budget did not cover the due checks within the last interval: cached keys' lifetimes
    /// are shortened to the monitor interval meanwhile.
    pub overcommitted: bool,
    /// How late the latest late check started, in milliseconds.
    pub lag_ms: u64,
    /// Holdings that could not be published to the store (their keys were cached for at most
    /// the monitor interval instead).
    pub hold_failures: u64,
}

impl Schedule {
    pub(super) fn new(
        store: Arc<dyn Store>,
        policy: Option<MonitorPolicy>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self {
            store,
            policy,
            overcommitted_until_ms: AtomicI64::new(0),
            lag_ms: AtomicI64::new(0),
            hold_failures: AtomicU64::new(0),
            metrics,
        }
    }

    pub(super) fn status(&self) -> MonitorStatus {
        MonitorStatus {
            overcommitted: self.overcommitted(now_ms()),
            lag_ms: u64::try_from(self.lag_ms.load(Ordering::Relaxed)).unwrap_or(0),
            hold_failures: self.hold_failures.load(Ordering::Relaxed),
        }
    }

    fn overcommitted(&self, now_ms: i64) -> bool {
        self.overcommitted_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// A tenant key was just unwrapped (the KMS was asked at `asked_at_ms`), to be cached for
    /// `ttl`: publishes that this replica holds it and returns how long it may be cached. That
    /// is `ttl`, or at most the tenant's monitor interval while the monitor is overcommitted or
    /// if the holding could not be published (then the interval bounds the window without the
    /// monitor's help: the key is unwrapped again, a KMS call, every interval).
    pub(super) async fn hold(
        &self,
        tenant: &TenantId,
        binding_id: i64,
        asked_at_ms: i64,
        ttl: Duration,
        tenant_interval: Option<u64>,
    ) -> Duration {
        let Some(policy) = self.policy else {
            return ttl;
        };
        let interval = tenant_interval.map_or(policy.interval, Duration::from_secs);
        let ttl = if self.overcommitted(asked_at_ms) {
            ttl.min(interval)
        } else {
            ttl
        };
        let until = asked_at_ms.saturating_add(millis(ttl));
        let check_at = asked_at_ms.saturating_add(millis(interval));
        match self
            .store
            .hold_key(tenant, binding_id, until, check_at)
            .await
        {
            Ok(()) => ttl,
            Err(e) => {
                self.hold_failures.fetch_add(1, Ordering::Relaxed);
                if let Some(m) = &self.metrics {
                    m.monitor_hold_failed();
                }
                tracing::warn!(%tenant, binding = binding_id, error = %e, interval_s = interval.as_secs(), "could not publish that this replica holds the tenant key: cached for at most the monitor interval instead");
                ttl.min(interval)
            }
        }
    }

    /// Notes how late the claimed checks start; marks the monitor overcommitted for a minute (or
    /// an interval, if longer) when one is later than its slack.
    fn note_lateness(&self, claimed: &[KeyCheck], now_ms: i64, policy: &MonitorPolicy) {
        let late = claimed
            .iter()
            .filter_map(|c| {
                let interval = interval_of(c, policy);
                let slack = millis(LATE.max(interval / 10));
                let lag = now_ms.saturating_sub(c.due_at_ms);
                (lag > slack).then_some(lag)
            })
            .max();
        let Some(lag) = late else {
            return;
        };
        self.lag_ms.store(lag, Ordering::Relaxed);
        let until = now_ms.saturating_add(millis(policy.interval.max(OVERCOMMIT_MEMORY)));
        let was = self.overcommitted_until_ms.swap(until, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.monitor_late(lag);
        }
        if was <= now_ms {
            tracing::warn!(
                lag_ms = lag,
                budget_per_s = policy.max_checks_per_second,
                interval_s = policy.interval.as_secs(),
                "key-state monitor overcommitted: checks start later than their interval; tenant keys are cached for at most the monitor interval until it keeps up (raise revocation.monitor_max_checks_per_second, or add replicas)"
            );
        }
    }
}

/// Paces the start of checks: at most `rate` per second, none in a burst. The monitor keeps one
/// across its passes (a pass may take a single check: a new budget per pass would let every
/// pass start at once).
struct Budget {
    next: std::sync::Mutex<tokio::time::Instant>,
}

impl Budget {
    fn new() -> Self {
        Self {
            next: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits for the next start `rate` per second allows.
    async fn take(&self, rate: u32) {
        let gap = Duration::from_secs(1) / rate.max(1);
        let at = {
            let mut next = self
                .next
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let at = (*next).max(tokio::time::Instant::now());
            *next = at + gap;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// Claims the due checks from the shared schedule, runs them, and hands what the KMS said to
/// [`Revocation`].
pub(super) struct Monitor {
    store: Arc<dyn Store>,
    kek: Arc<Kek>,
    revocation: Arc<Revocation>,
    schedule: Arc<Schedule>,
    /// The claimant's name in the schedule (the replica id).
    replica: String,
    /// The pace of the scheduled checks' starts, across passes.
    budget: Budget,
}

impl Monitor {
    pub(super) fn new(
        store: Arc<dyn Store>,
        kek: Arc<Kek>,
        revocation: Arc<Revocation>,
        schedule: Arc<Schedule>,
        replica: String,
    ) -> Self {
        Self {
            store,
            kek,
            revocation,
            schedule,
            replica,
            budget: Budget::new(),
        }
    }

    /// Checks one binding's key with a canary unwrap and applies the outcome. `binding` may be
    /// an older read (a claim's): the outcome is applied to the binding as it is now
    /// (compare-and-set), never to the state that was read.
    pub(super) async fn check_binding(
        &self,
        binding: &KekBinding,
    ) -> Result<CheckOutcome, ServiceError> {
        if matches!(binding.state, KekState::Destroyed | KekState::Retired) {
            return Ok(CheckOutcome::Unchanged);
        }
        match self.kek.canary(binding).await {
            // It wraps nothing (re-keyed away): nothing depends on its key.
            Ok(false) => Ok(CheckOutcome::Unchanged),
            Ok(true) => self.observe(binding, Ok(())).await,
            Err(e) => self.observe(binding, Err(e)).await,
        }
    }

    /// [`Monitor::check_binding`] of a claimed check: its wrapped tenant key came with the
    /// claim (no store read). A binding that wraps no tenant key any more has nothing to check.
    async fn check_claimed(&self, check: &KeyCheck) -> Result<CheckOutcome, ServiceError> {
        let Some(tenant_key) = &check.tenant_key else {
            return Ok(CheckOutcome::Unchanged);
        };
        let canary = self.kek.canary_of(tenant_key).await;
        self.observe(&check.binding, canary).await
    }

    /// Hands what the canary showed to [`Revocation`].
    async fn observe(
        &self,
        binding: &KekBinding,
        canary: Result<(), ServiceError>,
    ) -> Result<CheckOutcome, ServiceError> {
        let observation = match canary {
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

    /// Checks every tenant's current binding now, whether or not its key is held anywhere,
    /// paced by `max_checks_per_second`, outside the schedule (an operator's or a test's full
    /// sweep). Returns the outcomes, in tenant order.
    pub(super) async fn check_all(
        &self,
        max_checks_per_second: u32,
    ) -> Result<Vec<(TenantId, CheckOutcome)>, ServiceError> {
        let budget = Budget::new();
        let mut outcomes = Vec::new();
        for binding in self.store.active_bindings().await? {
            budget.take(max_checks_per_second).await;
            match self.check_binding(&binding).await {
                Ok(outcome) => outcomes.push((binding.tenant.clone(), outcome)),
                Err(e) => {
                    tracing::error!(tenant = %binding.tenant, error = %e, "key-state check failed")
                }
            }
        }
        Ok(outcomes)
    }

    /// One pass of the monitor: claims the checks due when it starts from the shared schedule,
    /// batch after batch until none is left, and runs them (concurrently, within the budget).
    /// Returns the outcomes of the checks that called the KMS, and how long to wait before the
    /// next pass (until the next check is due, at most a second).
    pub(super) async fn check_due(
        &self,
        policy: MonitorPolicy,
    ) -> Result<(Vec<(TenantId, CheckOutcome)>, Duration), ServiceError> {
        let mut outcomes = Vec::new();
        // A pass takes the checks due when it started: an overcommitted schedule (checks coming
        // due faster than the budget runs them) ends the pass, and the next one starts at once.
        let started = now_ms();
        loop {
            let now = now_ms();
            let claimed = self
                .store
                .claim_key_checks(
                    &self.replica,
                    started,
                    now.saturating_add(millis(policy.lease())),
                    policy.batch(),
                )
                .await?;
            let full = claimed.len() >= usize::try_from(policy.batch()).unwrap_or(usize::MAX);
            if claimed.is_empty() {
                break;
            }
            self.schedule.note_lateness(&claimed, now, &policy);
            // At most `max_concurrent_checks` in flight per provider kind, so that a slow KMS
            // does not hold up the checks of keys elsewhere.
            let per_kind = usize::try_from(policy.max_concurrent_checks.max(1)).unwrap_or(1);
            let mut kinds: Vec<ProviderKind> = claimed.iter().map(|c| c.binding.provider).collect();
            kinds.sort_unstable_by_key(|k| k.as_str());
            kinds.dedup();
            let slots: HashMap<ProviderKind, tokio::sync::Semaphore> = kinds
                .iter()
                .map(|k| (*k, tokio::sync::Semaphore::new(per_kind)))
                .collect();
            let done: Vec<Option<(TenantId, CheckOutcome)>> = futures_util::stream::iter(claimed)
                .map(|check| {
                    let (budget, slots) = (&self.budget, &slots);
                    async move {
                        let _slot = match slots.get(&check.binding.provider) {
                            Some(slot) => slot.acquire().await.ok(),
                            None => None,
                        };
                        self.run_check(check, &policy, budget).await
                    }
                })
                .buffer_unordered(per_kind.saturating_mul(kinds.len().max(1)))
                .collect()
                .await;
            outcomes.extend(done.into_iter().flatten());
            if !full {
                break;
            }
        }
        let now = now_ms();
        let wait = match self.store.next_key_check_due(now).await? {
            Some(due) => Duration::from_millis(u64::try_from(due.saturating_sub(now)).unwrap_or(0)),
            None => MAX_IDLE,
        };
        Ok((outcomes, wait.clamp(MIN_IDLE, MAX_IDLE)))
    }

    /// Runs one claimed check and schedules the next. A binding whose key no replica holds any
    /// more gets no KMS call (and no next check until a replica holds it again), unless the KMS
    /// may lift its state (a current binding revoked or unavailable by what the KMS said).
    async fn run_check(
        &self,
        check: KeyCheck,
        policy: &MonitorPolicy,
        budget: &Budget,
    ) -> Option<(TenantId, CheckOutcome)> {
        let interval = millis(interval_of(&check, policy));
        let binding = &check.binding;
        let needs_call = check.held_at(now_ms())
            || (kms_may_lift(binding) && binding.deactivated_at_ms.is_none());
        let mut answer = None;
        let mut retry_sooner = false;
        if needs_call
            && !binding.explicitly_revoked()
            && !matches!(binding.state, KekState::Destroyed | KekState::Retired)
            && check.tenant_key.is_some()
        {
            budget.take(policy.max_checks_per_second).await;
            match self.check_claimed(&check).await {
                Ok(outcome) => {
                    if let Some(m) = &self.schedule.metrics {
                        m.monitor_check(outcome_label(outcome));
                    }
                    answer = Some((binding.tenant.clone(), outcome));
                }
                Err(e) => {
                    if let Some(m) = &self.schedule.metrics {
                        m.monitor_check("error");
                    }
                    tracing::error!(tenant = %binding.tenant, binding = binding.id, error = %e, "key-state check failed; trying again sooner");
                    retry_sooner = true;
                }
            }
        } else if let Some(m) = &self.schedule.metrics {
            m.monitor_check("skipped");
        }
        let now = now_ms();
        let next = if retry_sooner {
            now.saturating_add((interval / 10).max(millis(MIN_LEASE)))
        } else {
            // One interval after this check was due, not after it ended, so that checks keep
            // their cadence when they start a little late; never sooner than a tenth of an
            // interval from now (a check that started very late does not make the next one due
            // at once).
            next_due(check.due_at_ms, now, interval)
        };
        // Without a holding, keep checking only what the KMS's answer may lift (decided from
        // the outcome: the claim's read may predate this check's own transition).
        let lift = match answer {
            Some((_, CheckOutcome::Revoked | CheckOutcome::Unavailable)) => true,
            // Nothing changed: the binding may be one the KMS still refuses (revoked by a
            // refusal, perhaps after this check was claimed), which its next answer lifts, or
            // one it never lifts (explicitly revoked, destroyed). The claim's read cannot tell:
            // read the binding as it is now. Parking a binding the KMS refuses would leave it
            // revoked after the customer enables the key again.
            Some((_, CheckOutcome::Unchanged)) => {
                match self.store.active_binding(&binding.tenant).await {
                    Ok(Some(now)) => now.id == binding.id && kms_may_lift(&now),
                    Ok(None) => false,
                    // Unknown: keep checking (a check too many costs one KMS call).
                    Err(_) => true,
                }
            }
            Some(_) => false,
            None => kms_may_lift(binding) || retry_sooner,
        };
        let unheld = (lift && binding.deactivated_at_ms.is_none()).then_some(next);
        if let Err(e) = self
            .store
            .finish_key_check(&self.replica, binding.id, now, next, unheld)
            .await
        {
            // The lease lapses and the check comes due again (here or on another replica).
            tracing::warn!(tenant = %binding.tenant, binding = binding.id, error = %e, "could not schedule the next key-state check; it comes due again when its lease lapses");
        }
        answer
    }

    /// The key-state monitor: passes over the shared schedule until the task is dropped.
    pub(super) async fn run(&self, policy: MonitorPolicy) {
        loop {
            let wait = match self.check_due(policy).await {
                Ok((_, wait)) => wait,
                Err(e) => {
                    tracing::error!(error = %e, "key-state monitor pass failed");
                    MAX_IDLE
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// A pushed key-state event names a key: every binding registered with it (current or
    /// older, found by the store's index) whose data may be readable is checked with the KMS
    /// now (the event is a hint, the KMS is the truth). Returns (checked, revoked); the first
    /// failed check's error, once every binding was checked.
    pub(super) async fn recheck_key(
        &self,
        provider: ProviderKind,
        key_ref: &str,
    ) -> Result<(u32, u32), ServiceError> {
        let outcomes = self.recheck_key_outcomes(provider, key_ref).await?;
        let (mut checked, mut revoked) = (0, 0);
        let mut first_error = None;
        for (_, outcome) in outcomes {
            checked += 1;
            match outcome {
                Ok(CheckOutcome::Revoked) => revoked += 1,
                Ok(_) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok((checked, revoked)), Err)
    }

    /// [`Monitor::recheck_key`] with what each binding's check found: a failed check of one
    /// tenant is that tenant's answer and does not stop the checks of the others.
    pub(super) async fn recheck_key_outcomes(
        &self,
        provider: ProviderKind,
        key_ref: &str,
    ) -> Result<Vec<(TenantId, Result<CheckOutcome, ServiceError>)>, ServiceError> {
        let mut outcomes = Vec::new();
        for binding in self.store.bindings_with_key(provider, key_ref).await? {
            if matches!(binding.state, KekState::Destroyed | KekState::Retired) {
                continue; // nothing readable depends on its key
            }
            let outcome = self.check_binding(&binding).await;
            outcomes.push((binding.tenant, outcome));
        }
        Ok(outcomes)
    }
}

/// When the next check of a binding whose check was due at `due` and ended at `now` is due.
fn next_due(due: i64, now: i64, interval: i64) -> i64 {
    due.saturating_add(interval)
        .max(now.saturating_add(interval / 10))
}

/// A binding in a state that the KMS's answer lifts when it accepts the key again.
fn kms_may_lift(binding: &KekBinding) -> bool {
    match binding.state {
        KekState::Revoked => !binding.explicitly_revoked(),
        KekState::Unavailable => true,
        _ => false,
    }
}

/// The interval of a claimed check: its tenant's override, else the policy's.
fn interval_of(check: &KeyCheck, policy: &MonitorPolicy) -> Duration {
    check
        .monitor_interval_seconds
        .map_or(policy.interval, Duration::from_secs)
}

fn outcome_label(outcome: CheckOutcome) -> &'static str {
    match outcome {
        CheckOutcome::Healthy => "healthy",
        CheckOutcome::Restored => "restored",
        CheckOutcome::Revoked => "revoked",
        CheckOutcome::Unavailable => "unavailable",
        _ => "unchanged",
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::next_due;

    #[test]
    fn the_next_check_keeps_the_cadence_of_the_due_times() {
        // Due at 1000, interval 60 s: ended a little late, the next is due at 61,000.
        assert_eq!(next_due(1_000, 1_250, 60_000), 61_000);
        // Started very late (overcommitted): not due again at once, a tenth of an interval on.
        assert_eq!(next_due(1_000, 70_000, 60_000), 76_000);
        // Never overflows.
        assert_eq!(next_due(i64::MAX - 1, i64::MAX - 1, 60_000), i64::MAX);
    }
}
