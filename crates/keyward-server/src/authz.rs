//! Authorization of every RPC: the caller's [`PeerInfo`] (set by [`crate::tls`]) is mapped to
//! a Cedar principal and the request is evaluated against the policies in `policies/`
//! ([`keyward_authz`]). Deny by default: an unmapped identity is `UNAUTHENTICATED`, a request
//! no policy permits is `PERMISSION_DENIED`, and neither says whether the tenant exists (the
//! check runs before any lookup).
//!
//! Denials are counted per (principal, action, tenant, second) and written to the audit log as
//! `authorization_denied` records once a second (`Authz::take_finished_denials`), so a flood
//! of denied calls costs one record per second per distinct combination, with exact counts.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError, RwLock},
};

use keyward_audit::AuditEvent;
use keyward_authz::{Action, Policies, Principal, RequestContext, Resource};
use keyward_envelope::TenantId;
use tonic::Request;

use crate::{
    error::ServiceError,
    now_ms,
    tls::{PeerIdentity, PeerInfo},
};

/// Distinct denial combinations kept per second; beyond it they are counted under one
/// overflow entry, so memory stays bounded under a flood of varied requests.
const MAX_DENIAL_KEYS: usize = 10_000;
/// Longest certificate identity copied into an audit record.
const MAX_RECORDED_IDENTITY: usize = 256;

/// Where the policies come from, for reloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFiles {
    pub policies_dir: PathBuf,
    pub identities_file: PathBuf,
}

/// The authenticated, authorized caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    principal: Arc<Principal>,
}

impl Caller {
    /// The audit log's actor: the principal, plus the name the caller gave for the human
    /// behind the request (`requested_by`), recorded as a claim.
    pub fn actor(&self, requested_by: &str) -> String {
        let claimed: String = requested_by
            .chars()
            .filter(|c| !c.is_control())
            .take(256)
            .collect();
        if claimed.is_empty() {
            self.principal.to_string()
        } else {
            format!("{} requested_by={claimed:?}", self.principal)
        }
    }

    /// The principal as the audit log names it (`Service::"chat-api"`).
    pub fn principal(&self) -> Arc<str> {
        Arc::clone(self.principal.shown())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DenialKey {
    principal: String,
    action: Action,
    tenant: Option<TenantId>,
    second: i64,
}

/// Bytes the remembered decisions of one policy version may take, as [`Remembered::bytes`]
/// counts them; a decision that would not fit makes the memo start over (a caller cycling
/// through many purposes only falls back to evaluating every call). Bytes, not entries: a
/// decision is per (principal, action, tenant, purpose, scope) and keeps the request, whose
/// purpose alone may be 1 KiB (an encryption-context value) and scope 128 bytes, so a bound on
/// the count (2¹⁸ once) is no bound on memory: ≈ 380 MB of 1 KiB purposes.
///
/// The memo must hold the working set of a service spread over every tenant the key caches
/// hold (`cache.max_tenant_keys`, 100,000 by default) for Encrypt and Decrypt: 200,000
/// decisions of ≈ 290–340 bytes with short purposes and tenant ids up to 36 bytes, ≈ 58–64 MB.
/// 80 MiB holds them with room (a unit test ties the sizes together), and ≈ 56,000 decisions
/// of ≈ 1.5 KB when every purpose, scope and tenant id is as long as allowed. A smaller memo thrashed: at 16,384 entries a service spread
/// over 100,000 tenants ran at 0.78 of one tenant's throughput, and at 0.95 with room for
/// all (docs/benchmarks.md, "Scale").
const REMEMBERED_BYTES: usize = 80 << 20;
/// [`REMEMBERED_BYTES`], smaller in unit tests (which fill it).
const MAX_REMEMBERED_BYTES: usize = if cfg!(test) {
    REMEMBERED_BYTES >> 8
} else {
    REMEMBERED_BYTES
};

/// One remembered decision; the full request is kept so that a hash collision is a miss,
/// never someone else's decision.
#[derive(Debug)]
struct Remembered {
    principal: Arc<Principal>,
    action: Action,
    tenant: Option<TenantId>,
    purpose: Option<String>,
    scope: Option<String>,
    /// The justification's purpose and reference, boxed: most calls declare none, and every
    /// slot of the table pays for the inline size (a regression test ties the sizes together).
    justification: Option<Box<(Option<String>, Option<String>)>>,
    allowed: bool,
}

impl Remembered {
    /// The memory this decision costs the memo, an upper bound: its share of the hash table
    /// at the table's emptiest (a hashbrown table that has just doubled is 7/16 full, so 16/7
    /// slots of `(u64, Remembered)` plus a control byte each), and the heap block of each
    /// string it owns (glibc malloc: the length plus an 8-byte header rounded up to 16, at
    /// least 32). The principal is shared with the policies and not counted.
    fn bytes(&self) -> usize {
        const SLOT: usize = (size_of::<(u64, Remembered)>() + 1) * 16 / 7 + 1;
        fn block(len: usize) -> usize {
            if len == 0 {
                0
            } else {
                (len + 8).next_multiple_of(16).max(32)
            }
        }
        SLOT + self.tenant.as_ref().map_or(0, |t| block(t.as_str().len()))
            + self.purpose.as_ref().map_or(0, |p| block(p.capacity()))
            + self.scope.as_ref().map_or(0, |s| block(s.capacity()))
            + self.justification.as_ref().map_or(0, |j| {
                block(size_of::<(Option<String>, Option<String>)>())
                    + j.0.as_ref().map_or(0, |s| block(s.capacity()))
                    + j.1.as_ref().map_or(0, |s| block(s.capacity()))
            })
    }
}

/// The remembered decisions and the bytes they cost ([`Remembered::bytes`]).
#[derive(Debug, Default)]
struct Memo {
    entries: crate::fast_hash::FastMap<u64, Remembered>,
    bytes: usize,
}

impl Memo {
    /// Remembers `decision` under `hash`, first starting over if it would not fit in
    /// [`MAX_REMEMBERED_BYTES`]. Returns what was dropped, for the caller to free after
    /// releasing the lock.
    fn remember(&mut self, hash: u64, decision: Remembered) -> Option<Memo> {
        let cost = decision.bytes();
        // A fresh table, not `clear()`: a cleared table keeps its buckets, which were sized
        // for the last fill and would not be counted against the next one.
        let dropped = if self.bytes + cost > MAX_REMEMBERED_BYTES {
            Some(std::mem::take(self))
        } else {
            None
        };
        if let Some(replaced) = self.entries.insert(hash, decision) {
            self.bytes -= replaced.bytes();
        }
        self.bytes += cost;
        dropped
    }
}

/// The policies in force and the decisions made under them. A reload replaces both at once,
/// so no decision outlives the policies that made it.
#[derive(Debug)]
struct Snapshot {
    policies: Policies,
    decisions: RwLock<Memo>,
    hasher: crate::fast_hash::FastState,
}

impl Snapshot {
    fn new(policies: Policies) -> Self {
        Self {
            policies,
            decisions: RwLock::new(Memo::default()),
            hasher: crate::fast_hash::FastState::default(),
        }
    }

    /// Cedar evaluation costs ~10 µs; a decision is a pure function of the policies and the
    /// request, so repeated requests (the same service, tenant and purpose) are looked up.
    fn is_authorized(
        &self,
        principal: &Arc<Principal>,
        action: Action,
        tenant: Option<&TenantId>,
        context: &RequestContext<'_>,
    ) -> bool {
        use std::hash::BuildHasher as _;
        let hash = self.hasher.hash_one((
            principal.kind().as_str(),
            principal.id(),
            action,
            tenant.map(TenantId::as_str),
            context.purpose,
            context.scope,
            context.justification,
            context.reference,
        ));
        let same = |r: &Remembered| {
            (Arc::ptr_eq(&r.principal, principal) || r.principal == *principal)
                && r.action == action
                && r.tenant.as_ref() == tenant
                && r.purpose.as_deref() == context.purpose
                && r.scope.as_deref() == context.scope
                && match &r.justification {
                    None => context.justification.is_none() && context.reference.is_none(),
                    Some(j) => {
                        j.0.as_deref() == context.justification
                            && j.1.as_deref() == context.reference
                    }
                }
        };
        if let Some(r) = self
            .decisions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .get(&hash)
            && same(r)
        {
            return r.allowed;
        }
        let resource = tenant.map_or(Resource::System, |t| Resource::Tenant(t.as_str()));
        let allowed = self
            .policies
            .is_authorized(principal, action, resource, context);
        let remembered = Remembered {
            principal: Arc::clone(principal),
            action,
            tenant: tenant.cloned(),
            purpose: context.purpose.map(str::to_owned),
            scope: context.scope.map(str::to_owned),
            justification: (context.justification.is_some() || context.reference.is_some()).then(
                || {
                    Box::new((
                        context.justification.map(str::to_owned),
                        context.reference.map(str::to_owned),
                    ))
                },
            ),
            allowed,
        };
        let dropped = self
            .decisions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remember(hash, remembered);
        // Freed outside the lock: a full memo is tens of MB.
        drop(dropped);
        allowed
    }
}

/// The policy decision point of the server.
#[derive(Debug)]
pub struct Authz {
    snapshot: RwLock<Arc<Snapshot>>,
    files: PolicyFiles,
    /// Built once: development mode asks for it on every call.
    developer: Arc<Principal>,
    denials: Mutex<HashMap<DenialKey, u64>>,
}

impl Authz {
    /// Loads and validates the policies and the identity mapping (the server refuses to start
    /// on an error; the message names the file and line).
    pub fn load(files: PolicyFiles) -> Result<Self, keyward_authz::LoadError> {
        let policies = Policies::load(&files.policies_dir, &files.identities_file)?;
        tracing::info!(
            policies = policies.policy_count(),
            principals = policies.principal_count(),
            dir = %files.policies_dir.display(),
            "authorization policies loaded"
        );
        Ok(Self {
            snapshot: RwLock::new(Arc::new(Snapshot::new(policies))),
            files,
            developer: Policies::developer(),
            denials: Mutex::new(HashMap::new()),
        })
    }

    /// Every file the policies were read from, and their directory (whose modification time
    /// changes when a policy file is added or removed): what the reloader watches.
    ///
    /// Also every `*.cedar` file in the directory now, loaded or not: a new file whose load
    /// failed and that is then fixed in place changes neither a loaded file nor the directory,
    /// and would otherwise wait for a SIGHUP.
    pub fn sources(&self) -> Vec<PathBuf> {
        let mut paths = self.current().policies.sources().to_vec();
        let mut unloaded: Vec<PathBuf> = std::fs::read_dir(&self.files.policies_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|p| p.extension().is_some_and(|e| e == "cedar") && !paths.contains(p))
            .collect();
        unloaded.sort();
        paths.append(&mut unloaded);
        paths.push(self.files.policies_dir.clone());
        paths
    }

    /// Re-reads the policies; on error the ones in use stay (and the error is returned).
    pub fn reload(&self) -> Result<(), keyward_authz::LoadError> {
        let policies = Policies::load(&self.files.policies_dir, &self.files.identities_file)?;
        *self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(Snapshot::new(policies));
        Ok(())
    }

    fn current(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Authorizes `action` on `tenant` (or on the system when `None`) for the caller of
    /// `request`. Also tells the call's telemetry which tenant it is about and counts denials
    /// ([`crate::telemetry`]).
    pub fn check<T>(
        &self,
        request: &Request<T>,
        action: Action,
        tenant: Option<&TenantId>,
        context: &RequestContext<'_>,
    ) -> Result<Caller, ServiceError> {
        crate::telemetry::note_tenant(request.extensions(), tenant);
        let result = self.decide(request, action, tenant, context);
        if result.is_err() {
            crate::telemetry::note_denial(request.extensions(), action.as_str());
        }
        result
    }

    fn decide<T>(
        &self,
        request: &Request<T>,
        action: Action,
        tenant: Option<&TenantId>,
        context: &RequestContext<'_>,
    ) -> Result<Caller, ServiceError> {
        let identity = request
            .extensions()
            .get::<PeerInfo>()
            .map(|info| &info.identity);
        let snapshot = self.current();
        let principal = match identity {
            Some(PeerIdentity::Development) => Arc::clone(&self.developer),
            Some(PeerIdentity::Certificate(id)) => match snapshot.policies.principal(id) {
                Some(principal) => principal,
                None => {
                    let recorded: String = id.chars().take(MAX_RECORDED_IDENTITY).collect();
                    tracing::warn!(identity = %recorded, action = action.as_str(), "certificate identity not in the identity mapping");
                    self.count_denial(format!("unmapped:{recorded}"), action, tenant);
                    return Err(ServiceError::Unauthenticated);
                }
            },
            // A verified certificate without a usable name, or a connection that did not come
            // through our listener (never expected): nobody.
            Some(PeerIdentity::NoUsableName) | None => {
                self.count_denial("unidentified".to_owned(), action, tenant);
                return Err(ServiceError::Unauthenticated);
            }
        };
        if snapshot.is_authorized(&principal, action, tenant, context) {
            Ok(Caller { principal })
        } else {
            tracing::info!(principal = %principal, action = action.as_str(), "authorization denied");
            self.count_denial(principal.to_string(), action, tenant);
            Err(ServiceError::PermissionDenied)
        }
    }

    /// Counts a call the tenant's justification rule refused (docs/justifications.md) as an
    /// authorization denial of `caller` (already authorized by the policies), like those the
    /// policies make: the same `authorization_denied` record and denial metric.
    pub(crate) fn count_rule_denial<T>(
        &self,
        request: &Request<T>,
        caller: &str,
        action: Action,
        tenant: &TenantId,
    ) {
        crate::telemetry::note_denial(request.extensions(), action.as_str());
        self.count_denial(caller.to_owned(), action, Some(tenant));
    }

    fn count_denial(&self, principal: String, action: Action, tenant: Option<&TenantId>) {
        let second = now_ms().div_euclid(1000);
        let mut denials = self.denials.lock().unwrap_or_else(PoisonError::into_inner);
        let mut key = DenialKey {
            principal,
            action,
            tenant: tenant.cloned(),
            second,
        };
        if denials.len() >= MAX_DENIAL_KEYS && !denials.contains_key(&key) {
            key = DenialKey {
                principal: "(overflow: too many distinct denials this second)".to_owned(),
                action,
                tenant: None,
                second,
            };
        }
        *denials.entry(key).or_default() += 1;
    }

    /// The denial counts of seconds that are over (before `now_ms`'s second), as audit events,
    /// oldest second first.
    pub(crate) fn take_finished_denials(&self, now_ms: i64) -> Vec<AuditEvent> {
        let current = now_ms.div_euclid(1000);
        let mut denials = self.denials.lock().unwrap_or_else(PoisonError::into_inner);
        let done: Vec<DenialKey> = denials
            .keys()
            .filter(|k| k.second < current)
            .cloned()
            .collect();
        let mut events: Vec<(DenialKey, u64)> = done
            .into_iter()
            .filter_map(|k| denials.remove(&k).map(|count| (k, count)))
            .collect();
        drop(denials);
        events.sort_by(|a, b| {
            (a.0.second, &a.0.principal, a.0.action.as_str()).cmp(&(
                b.0.second,
                &b.0.principal,
                b.0.action.as_str(),
            ))
        });
        events
            .into_iter()
            .map(|(k, count)| AuditEvent::AuthorizationDenied {
                principal: k.principal,
                action: k.action.as_str().to_owned(),
                tenant: k.tenant,
                second: k.second,
                count,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
    use super::*;

    fn authz() -> Authz {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
        Authz::load(PolicyFiles {
            identities_file: dir.join("identities.toml"),
            policies_dir: dir,
        })
        .unwrap()
    }

    #[test]
    fn denials_are_counted_per_principal_action_tenant_and_second() {
        let authz = authz();
        let acme = TenantId::try_from("acme").unwrap();
        for _ in 0..3 {
            authz.count_denial("Service::\"a\"".into(), Action::Decrypt, Some(&acme));
        }
        authz.count_denial("Service::\"a\"".into(), Action::Encrypt, Some(&acme));
        authz.count_denial("Operator::\"o\"".into(), Action::ExportAudit, None);
        // The current second is not over yet.
        assert!(authz.take_finished_denials(now_ms() - 1000).is_empty());
        let events = authz.take_finished_denials(i64::MAX);
        let mut counts: Vec<(String, String, Option<String>, u64)> = events
            .into_iter()
            .map(|e| match e {
                AuditEvent::AuthorizationDenied {
                    principal,
                    action,
                    tenant,
                    count,
                    ..
                } => (principal, action, tenant.map(|t| t.to_string()), count),
                other => panic!("{other:?}"),
            })
            .collect();
        counts.sort();
        assert_eq!(
            counts,
            vec![
                ("Operator::\"o\"".into(), "ExportAudit".into(), None, 1),
                (
                    "Service::\"a\"".into(),
                    "Decrypt".into(),
                    Some("acme".into()),
                    3
                ),
                (
                    "Service::\"a\"".into(),
                    "Encrypt".into(),
                    Some("acme".into()),
                    1
                ),
            ]
        );
        assert!(authz.take_finished_denials(i64::MAX).is_empty());
    }

    #[test]
    fn a_flood_of_distinct_denials_stays_bounded_and_exact() {
        let authz = authz();
        let n = MAX_DENIAL_KEYS + 500;
        for i in 0..n {
            authz.count_denial(format!("unmapped:dns:host-{i}"), Action::Encrypt, None);
        }
        assert!(authz.denials.lock().unwrap().len() <= MAX_DENIAL_KEYS + 2);
        let total: u64 = authz
            .take_finished_denials(i64::MAX)
            .iter()
            .map(|e| match e {
                AuditEvent::AuthorizationDenied { count, .. } => *count,
                _ => 0,
            })
            .sum();
        assert_eq!(total, n as u64);
    }

    /// Regression: a memo smaller than Encrypt + Decrypt for every cached tenant key thrashes
    /// under a workload spread over all of them (Scale benchmark: 0.78 of one tenant).
    /// Realistic requests: a tenant id as long as a UUID, a short purpose, the default scope
    /// on Encrypt and none on Decrypt (policies see only the purpose there).
    #[test]
    fn the_decision_memo_holds_encrypt_and_decrypt_for_every_cached_tenant() {
        let tenants = crate::config::CacheConfig::default().max_tenant_keys;
        let principal = Policies::developer();
        let tenant = TenantId::try_from("0b6f3c1e-8f2a-4c7d-9e5b-1a2b3c4d5e6f").unwrap();
        let cost = |action, scope: Option<&str>| {
            Remembered {
                principal: Arc::clone(&principal),
                action,
                tenant: Some(tenant.clone()),
                purpose: Some("support-transcripts".to_owned()),
                scope: scope.map(str::to_owned),
                justification: None,
                allowed: true,
            }
            .bytes()
        };
        let per_tenant = cost(Action::Encrypt, Some("default")) + cost(Action::Decrypt, None);
        assert!(
            per_tenant as u64 * tenants <= REMEMBERED_BYTES as u64,
            "{tenants} tenants × {per_tenant} B > {REMEMBERED_BYTES} B"
        );
    }

    /// The memory a memo's entries take: the hash table's buckets (hashbrown: a power of two,
    /// at most 7/8 full) and the heap blocks of the strings, as glibc malloc sizes them.
    fn footprint(entries: &crate::fast_hash::FastMap<u64, Remembered>) -> usize {
        let buckets = (entries.capacity() * 8).div_ceil(7).next_power_of_two();
        let block = |len: usize| {
            if len == 0 {
                0
            } else {
                (len + 8).next_multiple_of(16).max(32)
            }
        };
        let strings: usize = entries
            .values()
            .map(|r| {
                r.tenant.as_ref().map_or(0, |t| block(t.as_str().len()))
                    + r.purpose.as_ref().map_or(0, |p| block(p.capacity()))
                    + r.scope.as_ref().map_or(0, |s| block(s.capacity()))
            })
            .sum();
        buckets * (size_of::<(u64, Remembered)>() + 1) + strings
    }

    /// Regression: the memo was bounded by its number of entries, whatever their size, so
    /// requests with 1 KiB purposes (the longest encryption-context value) took ≈ 6 times the
    /// memory its documentation claimed.
    #[test]
    fn a_memo_of_1_kib_purposes_stays_within_its_byte_budget() {
        let authz = authz();
        let snapshot = authz.current();
        let chat = snapshot
            .policies
            .principal("spiffe://keyward.test/ns/chat/sa/chat-api")
            .unwrap();
        let acme = TenantId::try_from("acme").unwrap();
        let scope = "s".repeat(128);
        let (mut peak, mut started_over) = (0, false);
        // Enough requests to fill it several times over.
        for i in 0..4 * MAX_REMEMBERED_BYTES / 1024 {
            let purpose = format!("{i:01024}");
            let context = RequestContext {
                purpose: Some(&purpose),
                scope: Some(&scope),
                ..Default::default()
            };
            assert!(!snapshot.is_authorized(&chat, Action::Encrypt, Some(&acme), &context));
            let memo = snapshot.decisions.read().unwrap();
            let used = footprint(&memo.entries);
            assert!(
                used <= MAX_REMEMBERED_BYTES,
                "{} decisions take {used} B > {MAX_REMEMBERED_BYTES} B",
                memo.entries.len()
            );
            started_over |= memo.entries.len() < peak;
            peak = peak.max(memo.entries.len());
        }
        assert!(started_over);
        // The budget is used, not wasted: ≈ 1.5 KB per decision.
        assert!(peak >= MAX_REMEMBERED_BYTES / 2048, "peak {peak}");
    }

    #[test]
    fn remembered_decisions_match_fresh_ones_and_never_leak_across_requests() {
        let authz = authz();
        let snapshot = authz.current();
        let chat = snapshot
            .policies
            .principal("spiffe://keyward.test/ns/chat/sa/chat-api")
            .unwrap();
        let acme = TenantId::try_from("acme").unwrap();
        let globex = TenantId::try_from("globex").unwrap();
        fn ctx(purpose: &str) -> RequestContext<'_> {
            RequestContext {
                purpose: Some(purpose),
                scope: Some("default"),
                ..Default::default()
            }
        }
        for _ in 0..3 {
            assert!(snapshot.is_authorized(
                &chat,
                Action::Encrypt,
                Some(&acme),
                &ctx("chat-history")
            ));
            assert!(!snapshot.is_authorized(
                &chat,
                Action::Encrypt,
                Some(&globex),
                &ctx("chat-history")
            ));
            assert!(!snapshot.is_authorized(&chat, Action::Encrypt, Some(&acme), &ctx("training")));
            assert!(!snapshot.is_authorized(
                &chat,
                Action::RevokeKey,
                Some(&acme),
                &RequestContext::default()
            ));
        }
        assert_eq!(snapshot.decisions.read().unwrap().entries.len(), 4);
        // Full: starts over, still bounded, still right. Every decision costs more than 64 B.
        for i in 0..MAX_REMEMBERED_BYTES / 64 {
            let purpose = format!("p{i}");
            assert!(!snapshot.is_authorized(&chat, Action::Encrypt, Some(&acme), &ctx(&purpose)));
        }
        let memo = snapshot.decisions.read().unwrap();
        assert!(memo.bytes <= MAX_REMEMBERED_BYTES);
        assert_eq!(
            memo.bytes,
            memo.entries.values().map(Remembered::bytes).sum::<usize>()
        );
        drop(memo);
        assert!(snapshot.is_authorized(&chat, Action::Encrypt, Some(&acme), &ctx("chat-history")));
        // A reload starts with no remembered decisions.
        authz.reload().unwrap();
        assert!(authz.current().decisions.read().unwrap().entries.is_empty());
    }

    #[test]
    fn a_caller_with_the_actor_claim_is_recorded_as_a_claim() {
        let caller = Caller {
            principal: Policies::developer(),
        };
        assert_eq!(caller.actor(""), "Developer::\"dev\"");
        assert_eq!(
            caller.actor("ciso\n\"bob\""),
            "Developer::\"dev\" requested_by=\"ciso\\\"bob\\\"\""
        );
    }
}
