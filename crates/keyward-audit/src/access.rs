//! Who accessed a tenant's data, and why, built from its `access_summary` records by plain
//! functions: per caller and declared purpose, the exact sums of the records (requests, items,
//! errors, bytes, first and last time, the distinct references), and the items per minute of
//! each purpose and of each caller (what `keyward audit report --html` charts). Like
//! [`crate::timeline`], a typed model; rendering it (HTML, JSON) is the caller's.

use std::collections::{BTreeMap, BTreeSet};

use crate::event::AuditEvent;
use crate::timeline::Entry;

/// The sums of some `access_summary` records.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Calls (a batch or a stream is one call).
    pub requests: u64,
    /// Messages sealed or opened.
    pub items: u64,
    /// Items refused or failed after the call was authorized.
    pub errors: u64,
    /// Plaintext bytes sealed or returned.
    pub bytes: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        // Saturating: sums of u64 counters from records a verifier accepted; an overflow would
        // take 2^64 messages, and a wrapped total must never read as a small one.
        self.requests = self.requests.saturating_add(other.requests);
        self.items = self.items.saturating_add(other.items);
        self.errors = self.errors.saturating_add(other.errors);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }
}

/// One caller's accesses for one declared purpose.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerPurpose {
    /// The Cedar principal (`Service::"chat-api"`), as recorded.
    pub principal: String,
    /// The declared purpose, or `None` when the calls gave none.
    pub purpose: Option<String>,
    /// The sums over every action.
    pub counts: Counts,
    /// The sums per action (`Encrypt`, `Decrypt`, `Rewrap`), by action name.
    pub by_action: BTreeMap<String, Counts>,
    /// The first and last call (Unix milliseconds).
    pub first_ms: i64,
    pub last_ms: i64,
    /// The distinct references the records list, sorted.
    pub references: BTreeSet<String>,
    /// Whether a record said it listed only some of its references.
    pub references_truncated: bool,
    /// The `access_summary` records summed here, as their seqs.
    pub seqs: Vec<u64>,
}

/// Items in one minute for one series (a purpose, or a caller).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteItems {
    /// Unix seconds of the minute's start.
    pub minute: i64,
    pub items: u64,
}

/// A tenant's accesses, from its `access_summary` records.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accesses {
    /// The tenant.
    pub tenant: String,
    /// The tenant's `access_summary` records read.
    pub records: usize,
    /// Per caller and purpose, sorted by principal then purpose (no purpose first).
    pub rows: Vec<CallerPurpose>,
    /// The sums of every record.
    pub totals: Counts,
    /// Items per minute for each purpose (`None`: no purpose given), minutes ascending; only
    /// minutes with records appear.
    pub by_purpose: BTreeMap<Option<String>, Vec<MinuteItems>>,
    /// Items per minute for each caller, minutes ascending.
    pub by_caller: BTreeMap<String, Vec<MinuteItems>>,
}

impl Accesses {
    /// Sums the tenant's `access_summary` records among `entries` (records of other tenants
    /// and of other types are ignored).
    pub fn build(tenant: &str, entries: &[Entry]) -> Accesses {
        let mut rows: BTreeMap<(String, Option<String>), CallerPurpose> = BTreeMap::new();
        let mut by_purpose: BTreeMap<Option<String>, BTreeMap<i64, u64>> = BTreeMap::new();
        let mut by_caller: BTreeMap<String, BTreeMap<i64, u64>> = BTreeMap::new();
        let mut totals = Counts::default();
        let mut records = 0;
        for entry in entries {
            let AuditEvent::AccessSummary {
                tenant: of,
                minute,
                principal,
                action,
                purpose,
                requests,
                items,
                errors,
                bytes,
                first_ms,
                last_ms,
                references,
                references_truncated,
            } = &entry.event
            else {
                continue;
            };
            if of.as_str() != tenant {
                continue;
            }
            records += 1;
            let counts = Counts {
                requests: *requests,
                items: *items,
                errors: *errors,
                bytes: *bytes,
            };
            totals.add(&counts);
            let row = rows
                .entry((principal.clone(), purpose.clone()))
                .or_insert_with(|| CallerPurpose {
                    principal: principal.clone(),
                    purpose: purpose.clone(),
                    counts: Counts::default(),
                    by_action: BTreeMap::new(),
                    first_ms: *first_ms,
                    last_ms: *last_ms,
                    references: BTreeSet::new(),
                    references_truncated: false,
                    seqs: Vec::new(),
                });
            row.counts.add(&counts);
            row.by_action
                .entry(action.clone())
                .or_default()
                .add(&counts);
            row.first_ms = row.first_ms.min(*first_ms);
            row.last_ms = row.last_ms.max(*last_ms);
            row.references.extend(references.iter().cloned());
            row.references_truncated |= *references_truncated;
            row.seqs.push(entry.seq);
            let slot = by_purpose
                .entry(purpose.clone())
                .or_default()
                .entry(*minute)
                .or_default();
            *slot = slot.saturating_add(*items);
            let slot = by_caller
                .entry(principal.clone())
                .or_default()
                .entry(*minute)
                .or_default();
            *slot = slot.saturating_add(*items);
        }
        fn series<K: Ord>(m: BTreeMap<K, BTreeMap<i64, u64>>) -> BTreeMap<K, Vec<MinuteItems>> {
            m.into_iter()
                .map(|(k, minutes)| {
                    let points = minutes
                        .into_iter()
                        .map(|(minute, items)| MinuteItems { minute, items })
                        .collect();
                    (k, points)
                })
                .collect()
        }
        Accesses {
            tenant: tenant.to_owned(),
            records,
            rows: rows.into_values().collect(),
            totals,
            by_purpose: series(by_purpose),
            by_caller: series(by_caller),
        }
    }

    /// The first and last minute with records (Unix seconds), if any.
    pub fn minutes(&self) -> Option<(i64, i64)> {
        let all = self.by_caller.values().flatten().map(|p| p.minute);
        let first = all.clone().min()?;
        Some((first, all.max()?))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[allow(clippy::too_many_arguments, reason = "a test record's fields")]
    fn access(
        seq: u64,
        tenant: &str,
        minute: i64,
        principal: &str,
        action: &str,
        purpose: Option<&str>,
        requests: u64,
        items: u64,
        references: &[&str],
    ) -> Entry {
        Entry {
            seq,
            time_ms: (minute + 60) * 1000,
            event: AuditEvent::AccessSummary {
                tenant: tenant.parse().unwrap(),
                minute,
                principal: principal.into(),
                action: action.into(),
                purpose: purpose.map(str::to_owned),
                requests,
                items,
                errors: 1,
                bytes: items * 10,
                first_ms: minute * 1000 + seq as i64,
                last_ms: minute * 1000 + 50_000 + seq as i64,
                references: references.iter().map(|r| (*r).to_owned()).collect(),
                references_truncated: false,
            },
        }
    }

    #[test]
    fn sums_per_caller_and_purpose_and_minute() {
        let entries = vec![
            access(
                1,
                "acme",
                600,
                "A",
                "Decrypt",
                Some("support"),
                2,
                3,
                &["T-1"],
            ),
            access(
                2,
                "acme",
                600,
                "A",
                "Encrypt",
                Some("support"),
                1,
                1,
                &["T-2"],
            ),
            access(
                3,
                "acme",
                660,
                "A",
                "Decrypt",
                Some("support"),
                4,
                4,
                &["T-1"],
            ),
            access(4, "acme", 660, "B", "Decrypt", None, 5, 7, &[]),
            access(
                5,
                "other",
                660,
                "A",
                "Decrypt",
                Some("support"),
                9,
                9,
                &["X"],
            ),
        ];
        let a = Accesses::build("acme", &entries);
        assert_eq!(a.records, 4);
        assert_eq!(a.rows.len(), 2);
        let row = &a.rows[0];
        assert_eq!(
            (row.principal.as_str(), row.purpose.as_deref()),
            ("A", Some("support"))
        );
        assert_eq!(row.counts.requests, 7);
        assert_eq!(row.counts.items, 8);
        assert_eq!(row.counts.errors, 3);
        assert_eq!(row.counts.bytes, 80);
        assert_eq!(row.by_action["Decrypt"].items, 7);
        assert_eq!(row.by_action["Encrypt"].items, 1);
        assert_eq!(row.first_ms, 600_001);
        assert_eq!(row.last_ms, 710_003);
        assert_eq!(row.references.iter().collect::<Vec<_>>(), ["T-1", "T-2"]);
        assert_eq!(row.seqs, [1, 2, 3]);
        assert_eq!(a.totals.items, 15);
        let support = &a.by_purpose[&Some("support".to_owned())];
        assert_eq!(
            support
                .iter()
                .map(|p| (p.minute, p.items))
                .collect::<Vec<_>>(),
            [(600, 4), (660, 4)]
        );
        assert_eq!(a.by_purpose[&None][0].items, 7);
        assert_eq!(a.by_caller["B"].len(), 1);
        assert_eq!(a.minutes(), Some((600, 660)));
        assert_eq!(Accesses::build("nobody", &entries).minutes(), None);
    }
}
