//! Per-tenant admission: the in-memory mirror of revocation state that every
//! request consults first (no store read, no KMS call), a generation counter
//! that invalidates keys loaded across a revocation, and the aggregation of
//! denied requests for the audit log.

use crate::fast_hash::FastMap;
use std::sync::{
    Arc, Mutex, PoisonError, RwLock,
    atomic::{AtomicI64, Ordering},
};

use keyward_envelope::TenantId;
use keyward_store::KekState;

/// Why a tenant is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed {
    pub(crate) state: KekState,
    pub(crate) since_ms: i64,
    /// What decided it (told to the refused caller); `None` when not known, e.g. for an older
    /// binding's key, whose stored state carries no cause here.
    pub(crate) cause: Option<keyward_audit::RevocationSource>,
}

#[derive(Debug, Default, Clone)]
struct Gate {
    /// Bumped whenever the tenant is closed or reopened: a key loaded under an
    /// older generation is never used.
    generation: u64,
    closed: Option<Closed>,
    /// Bumped whenever DEKs of the tenant are shredded (here or, as notified, on another
    /// replica): a DEK loaded under an older value is looked up in the store again before use.
    shreds: u64,
    /// When this replica last returned plaintext for the tenant (0: never).
    /// Atomic so that releasing plaintext needs only the read lock.
    last_plaintext_ms: Arc<AtomicI64>,
}

/// Requests denied per (tenant, second), awaiting their audit record.
type DenialCounts = FastMap<(TenantId, i64), u64>;

#[derive(Debug, Default)]
pub(crate) struct Gates {
    gates: RwLock<FastMap<TenantId, Gate>>,
    denials: Mutex<DenialCounts>,
}

impl Gates {
    /// The tenant's current generation, or why it is closed (the caller counts the denial, see
    /// [`Gates::count_denial`]).
    pub(crate) fn admit(&self, tenant: &TenantId) -> Result<u64, Closed> {
        let gate = self
            .gates
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .map(|g| (g.generation, g.closed))
            .unwrap_or_default();
        let (generation, closed) = gate;
        match closed {
            None => Ok(generation),
            Some(closed) => Err(closed),
        }
    }

    /// Counts one request refused because of a revocation (`KEY_REVOKED`), whichever check
    /// refused it: the gate at admission, the last check before plaintext leaves, or the binding
    /// of the tenant key it needed (data under an older, revoked binding of an open tenant).
    pub(crate) fn count_denial(&self, tenant: &TenantId, now_ms: i64) {
        *self
            .denials
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((tenant.clone(), now_ms.div_euclid(1000)))
            .or_default() += 1;
    }

    pub(crate) fn generation(&self, tenant: &TenantId) -> u64 {
        self.gates
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .map_or(0, |g| g.generation)
    }

    /// The tenant's shred count: a cached DEK loaded when it was lower may have been shredded.
    pub(crate) fn shreds(&self, tenant: &TenantId) -> u64 {
        self.gates
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .map_or(0, |g| g.shreds)
    }

    /// Records that DEKs of the tenant were shredded: every DEK loaded before is stale.
    pub(crate) fn count_shred(&self, tenant: &TenantId) {
        let mut gates = self.gates.write().unwrap_or_else(PoisonError::into_inner);
        gates.entry(tenant.clone()).or_default().shreds += 1;
    }

    /// Closes the tenant; returns false if it already was.
    pub(crate) fn close(&self, tenant: &TenantId, closed: Closed) -> bool {
        let mut gates = self.gates.write().unwrap_or_else(PoisonError::into_inner);
        let gate = gates.entry(tenant.clone()).or_default();
        let was_open = gate.closed.is_none();
        gate.generation += 1;
        gate.closed = Some(closed);
        was_open
    }

    /// Opens the tenant. Only a closed gate moves to a new generation: keys cached while
    /// the gate was open stay valid when it "opens" again (e.g. `unavailable` → `active`
    /// after a KMS outage, which never closed it). Bumping there would strand every cached
    /// tenant key at the old generation, and each request loading a DEK through one would
    /// fail `ABORTED` until that key's TTL ran out (seen in the soak run, docs/benchmarks.md).
    pub(crate) fn open(&self, tenant: &TenantId) {
        let mut gates = self.gates.write().unwrap_or_else(PoisonError::into_inner);
        let gate = gates.entry(tenant.clone()).or_default();
        if gate.closed.take().is_some() {
            gate.generation += 1;
        }
    }

    /// How many tenants are closed, per state (every state listed, zeros included), for the
    /// `keyward_tenants_closed` gauge.
    pub(crate) fn closed_counts(&self) -> Vec<(&'static str, u64)> {
        let mut counts: Vec<(&'static str, u64)> =
            KekState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for gate in self
            .gates
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            if let Some(closed) = gate.closed
                && let Some(slot) = counts.iter_mut().find(|(n, _)| *n == closed.state.as_str())
            {
                slot.1 += 1;
            }
        }
        counts
    }

    /// Whether the tenant is open at `generation`: one lookup for both (why it is closed, or
    /// `None` when it is open at another generation).
    pub(crate) fn open_at(&self, tenant: &TenantId, generation: u64) -> Result<(), Option<Closed>> {
        let gates = self.gates.read().unwrap_or_else(PoisonError::into_inner);
        let (current, closed) = gates
            .get(tenant)
            .map_or((0, None), |g| (g.generation, g.closed));
        match closed {
            Some(closed) => Err(Some(closed)),
            None if current != generation => Err(None),
            None => Ok(()),
        }
    }

    pub(crate) fn closed(&self, tenant: &TenantId) -> Option<Closed> {
        self.gates
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .and_then(|g| g.closed)
    }

    /// Records that plaintext is about to be returned: succeeds only if the
    /// tenant is still open at `generation` (the last check before a response).
    /// Holding the read lock excludes a concurrent close, which takes the write lock.
    pub(crate) fn release_plaintext(
        &self,
        tenant: &TenantId,
        generation: u64,
        now_ms: i64,
    ) -> Result<(), Option<Closed>> {
        {
            let gates = self.gates.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(gate) = gates.get(tenant) {
                if gate.closed.is_some() || gate.generation != generation {
                    return Err(gate.closed);
                }
                gate.last_plaintext_ms.store(now_ms, Ordering::Relaxed);
                return Ok(());
            }
        }
        // First plaintext for this tenant on this replica: create its gate.
        let mut gates = self.gates.write().unwrap_or_else(PoisonError::into_inner);
        let gate = gates.entry(tenant.clone()).or_default();
        if gate.closed.is_some() || gate.generation != generation {
            return Err(gate.closed);
        }
        gate.last_plaintext_ms.store(now_ms, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn last_plaintext_ms(&self, tenant: &TenantId) -> Option<i64> {
        self.gates
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .map(|g| g.last_plaintext_ms.load(Ordering::Relaxed))
            .filter(|ms| *ms > 0)
    }

    /// Takes the denial counts of seconds that are over (before `now_ms`'s second).
    pub(crate) fn take_finished_denials(&self, now_ms: i64) -> Vec<(TenantId, i64, u64)> {
        let current = now_ms.div_euclid(1000);
        let mut denials = self.denials.lock().unwrap_or_else(PoisonError::into_inner);
        let done: Vec<(TenantId, i64)> = denials
            .keys()
            .filter(|(_, second)| *second < current)
            .cloned()
            .collect();
        let mut out: Vec<(TenantId, i64, u64)> = done
            .into_iter()
            .filter_map(|key| denials.remove(&key).map(|count| (key.0, key.1, count)))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn t(s: &str) -> TenantId {
        TenantId::try_from(s).unwrap()
    }

    #[test]
    fn closing_bumps_the_generation_and_denials_are_counted_per_second() {
        let gates = Gates::default();
        let a = t("a");
        let g0 = gates.admit(&a).unwrap();
        let closed = Closed {
            state: KekState::Revoked,
            since_ms: 1_500,
            cause: None,
        };
        assert!(gates.close(&a, closed));
        assert!(
            !gates.close(&a, closed),
            "second close reports it was already closed"
        );
        for now in [2_100, 2_900, 3_000] {
            assert_eq!(gates.admit(&a), Err(closed));
            gates.count_denial(&a, now);
        }
        assert!(gates.admit(&t("b")).is_ok(), "other tenants are unaffected");
        // A key loaded before the close may not release plaintext.
        assert_eq!(gates.release_plaintext(&a, g0, 3_000), Err(Some(closed)));
        assert_eq!(gates.take_finished_denials(3_500), vec![(a.clone(), 2, 2)]);
        assert_eq!(gates.take_finished_denials(4_000), vec![(a.clone(), 3, 1)]);
        assert!(gates.take_finished_denials(9_000).is_empty());

        gates.open(&a);
        let g1 = gates.admit(&a).unwrap();
        assert!(g1 > g0);
        assert_eq!(
            gates.release_plaintext(&a, g0, 5_000),
            Err(None),
            "stale generation"
        );
        gates.release_plaintext(&a, g1, 5_001).unwrap();
        assert_eq!(gates.last_plaintext_ms(&a), Some(5_001));
    }

    #[test]
    fn opening_an_open_gate_keeps_its_generation() {
        let gates = Gates::default();
        let a = t("a");
        let g0 = gates.admit(&a).unwrap();
        gates.open(&a);
        assert_eq!(gates.admit(&a), Ok(g0), "keys loaded at g0 stay valid");
        gates.release_plaintext(&a, g0, 1_002).unwrap();
    }
}
