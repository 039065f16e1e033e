//! A tenant's revocation timeline, built from its audit records by plain functions: for each
//! revocation, when it was observed and recorded, the purges each replica recorded (with the
//! last time it returned plaintext), later changes while revoked, the restoration, and the
//! requests denied meanwhile. What `keyward audit report` prints, whether the records come from
//! the live server or from a verified export (one builder, so both give the same timeline).
//!
//! The timeline is a typed model; rendering it (text, JSON) is the caller's.

use crate::event::{AuditEvent, KeyState, StateTransition};
use crate::record::Record;

/// One audit record as the timeline reads it: its place in the chain, when it was written, and
/// what it says. Built from a [`Record`], or by a reader that tolerates what a [`Record`] does
/// not (an event with fields this version does not know).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The record's `seq`.
    pub seq: u64,
    /// When the record was written (Unix milliseconds).
    pub time_ms: i64,
    /// What the record says.
    pub event: AuditEvent,
}

impl From<&Record> for Entry {
    fn from(record: &Record) -> Entry {
        Entry {
            seq: record.seq(),
            time_ms: record.time_ms(),
            event: record.event().clone(),
        }
    }
}

/// A replica's purge of the tenant's cached keys (`keys_purged`; each replica writes its own).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    /// The purge record's `seq`.
    pub seq: u64,
    /// When the replica purged (Unix milliseconds).
    pub purged_at_ms: i64,
    /// How many cached keys it dropped.
    pub entries: u64,
    /// The last time the replica returned plaintext for the tenant, if it ever did.
    pub last_plaintext_at_ms: Option<i64>,
    /// The replica's id, when the record names it (records of older servers do not).
    pub replica: Option<String>,
}

impl Purge {
    /// Whether the replica returned plaintext after `revoked_ms` (a revocation's record).
    pub fn served_after(&self, revoked_ms: i64) -> bool {
        self.last_plaintext_at_ms.is_some_and(|t| t > revoked_ms)
    }
}

/// A state transition and the record that wrote it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedTransition {
    /// The record's `seq`.
    pub seq: u64,
    /// When the record was written (Unix milliseconds).
    pub recorded_ms: i64,
    /// The transition.
    pub transition: StateTransition,
}

/// The denial records of one second: how many requests were refused in it.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeniedSecond {
    /// The second (Unix seconds).
    pub second: i64,
    /// Requests denied in it.
    pub count: u64,
}

/// A revocation of one binding, from its record until a `restored` record of that binding.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The revocation's record: to `revoked` or `destroyed`.
    pub recorded: RecordedTransition,
    /// Later transitions of the binding while revoked (made explicit, destroyed).
    pub changes: Vec<RecordedTransition>,
    /// The purges recorded after it (a replica purges when it learns of the latest revocation).
    pub purges: Vec<Purge>,
    /// The `restored` record that ended it, if any.
    pub restored: Option<RecordedTransition>,
    /// The denials attributed to it, by the second they count.
    pub denials: Vec<DeniedSecond>,
}

impl Revocation {
    /// Purges whose replica returned plaintext after the revocation was recorded.
    pub fn served_after(&self) -> Vec<&Purge> {
        self.purges
            .iter()
            .filter(|p| p.served_after(self.recorded.recorded_ms))
            .collect()
    }

    /// Requests denied during it.
    pub fn denied(&self) -> u64 {
        self.denials.iter().map(|d| d.count).sum()
    }

    /// Denials count per second: a second counts for this revocation if any part of it falls
    /// between the revocation (its first observation, if earlier than its record) and the
    /// restoration's record.
    fn covers_second(&self, second: i64) -> bool {
        let start = self
            .recorded
            .transition
            .observed_at_ms
            .min(self.recorded.recorded_ms);
        let (from, to) = (
            second.saturating_mul(1000),
            second.saturating_mul(1000) + 999,
        );
        start <= to
            && self
                .restored
                .as_ref()
                .is_none_or(|end| end.recorded_ms >= from)
    }
}

/// One step of the timeline, in record order.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A revocation, with what followed it.
    Revocation(Box<Revocation>),
    /// Any other state change: to `unavailable` (not a revocation), or a restoration that
    /// ends no revocation in these records.
    Change {
        /// The change and its record.
        recorded: RecordedTransition,
        /// Whether it is a `restored` record.
        restored: bool,
    },
}

/// A tenant's revocation timeline.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    /// The tenant.
    pub tenant: String,
    /// The tenant's records the timeline is read from (state changes, purges, denials);
    /// records of other kinds (usage summaries, data keys) do not change it, so they are not
    /// counted in it.
    pub records: usize,
    /// The first seq of those records (of all the tenant's records, when there is none).
    pub first_seq: u64,
    /// The last seq of those records (of all the tenant's records, when there is none).
    pub last_seq: u64,
    /// All the tenant's records.
    pub all_records: usize,
    /// Revocations and other state changes, in record order.
    pub items: Vec<Item>,
    /// Purges before any revocation in the records (e.g. the records start mid-revocation).
    pub unattached_purges: Vec<Purge>,
    /// Denials no revocation in the records covers.
    pub unattributed_denials: Vec<DeniedSecond>,
    /// All the tenant's denied requests.
    pub total_denied: u64,
    /// Scopes crypto-shredded (`scope_shredded` records), in record order.
    pub shreds: Vec<Shred>,
    /// Older customer keys retired by a re-key (`kek_binding_retired` records), in record
    /// order, each with the tenant keys moved off it.
    pub rekeys: Vec<Retirement>,
    /// Tenant keys moved (`tenant_key_rewrapped` records) from a binding not retired in these
    /// records (a re-key not finished, or the records end before its retirement).
    pub moves_in_progress: Vec<KeyMove>,
}

/// One tenant key moved by a re-key, from its `tenant_key_rewrapped` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMove {
    pub seq: u64,
    pub recorded_ms: i64,
    pub tenant_key_id: String,
    pub from_binding_id: i64,
    pub to_binding_id: i64,
    pub actor: String,
}

/// An older customer key retired by a re-key: its `kek_binding_retired` record and the
/// `tenant_key_rewrapped` records that moved the keys it wrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retirement {
    pub seq: u64,
    pub recorded_ms: i64,
    pub binding_id: i64,
    pub provider: String,
    pub key_ref: String,
    pub to_binding_id: i64,
    /// Tenant keys, and data keys below them, the target wraps when this one retired.
    pub tenant_keys: u64,
    pub deks: u64,
    pub actor: String,
    /// The moves off this binding in these records.
    pub moves: Vec<KeyMove>,
}

/// One scope crypto-shredded, from its `scope_shredded` record and the `dek_retired` (reason
/// `shredded`) records written in the same transaction, just before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shred {
    pub seq: u64,
    pub recorded_ms: i64,
    pub scope_hmac: String,
    /// DEKs destroyed, as the `scope_shredded` record counts them.
    pub deks: u64,
    /// The `dek_retired` (shredded) records of that scope just before it: one per DEK.
    pub dek_ids: Vec<String>,
    pub actor: String,
    pub reason: String,
    /// Set when a retention run (`ShredScopes`) shredded it.
    pub retention_cutoff_ms: Option<i64>,
}

impl Timeline {
    /// Builds the timeline from audit records in seq order (records about other tenants are
    /// ignored). `None` when no record names the tenant: there is no such tenant in the
    /// records.
    pub fn build(tenant: &str, entries: &[Entry]) -> Option<Timeline> {
        let mine: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.event.tenant().is_some_and(|t| t.as_str() == tenant))
            .collect();
        let all_records = mine.len();
        let (all_first, all_last) = (mine.first()?.seq, mine.last()?.seq);
        let read: Vec<u64> = mine
            .iter()
            .filter(|e| {
                matches!(
                    e.event,
                    AuditEvent::RevocationStateChanged(_)
                        | AuditEvent::Restored(_)
                        | AuditEvent::KeysPurged { .. }
                        | AuditEvent::RevocationDenials { .. }
                )
            })
            .map(|e| e.seq)
            .collect();
        let mut timeline = Timeline {
            tenant: tenant.to_owned(),
            records: read.len(),
            first_seq: read.first().copied().unwrap_or(all_first),
            last_seq: read.last().copied().unwrap_or(all_last),
            all_records,
            items: Vec::new(),
            unattached_purges: Vec::new(),
            unattributed_denials: Vec::new(),
            total_denied: 0,
            shreds: Vec::new(),
            rekeys: Vec::new(),
            moves_in_progress: Vec::new(),
        };
        let mut denials = Vec::new();
        // `dek_retired` (shredded) records waiting for their scope's `scope_shredded` record.
        let mut shredded_deks: Vec<(String, String)> = Vec::new();
        for entry in mine {
            let recorded = |t: &StateTransition| RecordedTransition {
                seq: entry.seq,
                recorded_ms: entry.time_ms,
                transition: t.clone(),
            };
            match &entry.event {
                AuditEvent::RevocationStateChanged(t)
                    if matches!(t.to, KeyState::Revoked | KeyState::Destroyed) =>
                {
                    match timeline.open_revocation(t.binding_id) {
                        Some(open) => open.changes.push(recorded(t)),
                        None => timeline.items.push(Item::Revocation(Box::new(Revocation {
                            recorded: recorded(t),
                            changes: Vec::new(),
                            purges: Vec::new(),
                            restored: None,
                            denials: Vec::new(),
                        }))),
                    }
                }
                AuditEvent::RevocationStateChanged(t) => timeline.items.push(Item::Change {
                    recorded: recorded(t),
                    restored: false,
                }),
                AuditEvent::Restored(t) => match timeline.open_revocation(t.binding_id) {
                    Some(open) => open.restored = Some(recorded(t)),
                    None => timeline.items.push(Item::Change {
                        recorded: recorded(t),
                        restored: true,
                    }),
                },
                AuditEvent::KeysPurged {
                    purged_at_ms,
                    entries,
                    last_plaintext_at_ms,
                    replica,
                    ..
                } => {
                    let purge = Purge {
                        seq: entry.seq,
                        purged_at_ms: *purged_at_ms,
                        entries: *entries,
                        last_plaintext_at_ms: *last_plaintext_at_ms,
                        replica: replica.clone(),
                    };
                    // A replica purges when it learns of a revocation: the latest one recorded.
                    match timeline.revocations_mut().last_mut() {
                        Some(revocation) => revocation.purges.push(purge),
                        None => timeline.unattached_purges.push(purge),
                    }
                }
                AuditEvent::RevocationDenials { second, count, .. } => {
                    denials.push(DeniedSecond {
                        second: *second,
                        count: *count,
                    });
                }
                AuditEvent::DekRetired {
                    scope_hmac,
                    dek_id,
                    reason: crate::DekRetireReason::Shredded,
                    ..
                } => shredded_deks.push((scope_hmac.clone(), dek_id.to_string())),
                AuditEvent::TenantKeyRewrapped {
                    tenant_key_id,
                    from_binding_id,
                    to_binding_id,
                    actor,
                    ..
                } => timeline.moves_in_progress.push(KeyMove {
                    seq: entry.seq,
                    recorded_ms: entry.time_ms,
                    tenant_key_id: tenant_key_id.to_string(),
                    from_binding_id: *from_binding_id,
                    to_binding_id: *to_binding_id,
                    actor: actor.clone(),
                }),
                AuditEvent::KekBindingRetired {
                    binding_id,
                    provider,
                    key_ref,
                    to_binding_id,
                    tenant_keys,
                    deks,
                    actor,
                    ..
                } => {
                    let (moves, others): (Vec<_>, Vec<_>) = timeline
                        .moves_in_progress
                        .drain(..)
                        .partition(|m| m.from_binding_id == *binding_id);
                    timeline.moves_in_progress = others;
                    timeline.rekeys.push(Retirement {
                        seq: entry.seq,
                        recorded_ms: entry.time_ms,
                        binding_id: *binding_id,
                        provider: provider.clone(),
                        key_ref: key_ref.clone(),
                        to_binding_id: *to_binding_id,
                        tenant_keys: *tenant_keys,
                        deks: *deks,
                        actor: actor.clone(),
                        moves,
                    });
                }
                AuditEvent::ScopeShredded {
                    scope_hmac,
                    deks,
                    actor,
                    reason,
                    retention_cutoff_ms,
                    ..
                } => {
                    let (mine, others): (Vec<_>, Vec<_>) = shredded_deks
                        .drain(..)
                        .partition(|(scope, _)| scope == scope_hmac);
                    shredded_deks = others;
                    timeline.shreds.push(Shred {
                        seq: entry.seq,
                        recorded_ms: entry.time_ms,
                        scope_hmac: scope_hmac.clone(),
                        deks: *deks,
                        dek_ids: mine.into_iter().map(|(_, id)| id).collect(),
                        actor: actor.clone(),
                        reason: reason.clone(),
                        retention_cutoff_ms: *retention_cutoff_ms,
                    });
                }
                _ => {}
            }
        }
        // By the second they count, not by when their record was written (after the second is
        // over, possibly after the restoration's record): the latest revocation covering it.
        for denied in denials {
            timeline.total_denied += denied.count;
            match timeline
                .revocations_mut()
                .into_iter()
                .rev()
                .find(|r| r.covers_second(denied.second))
            {
                Some(revocation) => revocation.denials.push(denied),
                None => timeline.unattributed_denials.push(denied),
            }
        }
        Some(timeline)
    }

    /// The revocations, in record order.
    pub fn revocations(&self) -> impl Iterator<Item = &Revocation> {
        self.items.iter().filter_map(|item| match item {
            Item::Revocation(r) => Some(r.as_ref()),
            Item::Change { .. } => None,
        })
    }

    /// Requests denied outside any revocation in the records.
    pub fn denied_outside(&self) -> u64 {
        self.unattributed_denials.iter().map(|d| d.count).sum()
    }

    fn revocations_mut(&mut self) -> Vec<&mut Revocation> {
        self.items
            .iter_mut()
            .filter_map(|item| match item {
                Item::Revocation(r) => Some(r.as_mut()),
                Item::Change { .. } => None,
            })
            .collect()
    }

    fn open_revocation(&mut self, binding_id: i64) -> Option<&mut Revocation> {
        self.revocations_mut()
            .into_iter()
            .rev()
            .find(|r| r.recorded.transition.binding_id == binding_id && r.restored.is_none())
    }
}

#[cfg(test)]
#[path = "timeline_tests.rs"]
mod tests;
