//! A model-based test of the key-state monitor's shared schedule (`key_checks`, issue #20;
//! docs/adr/0012-monitor-schedule.md): random interleavings of replicas publishing the keys they
//! hold, claiming due checks, finishing them (or dying before they do) and time passing, run
//! against SQLite and PostgreSQL and compared, row by row, with a small reference model after
//! every step.
//!
//! # Invariants (each a named check; the failure message starts with the name)
//! - `schedule_matches_model`: every `key_checks` row of the case is exactly what the model says
//!   (holding, due time, lease owner and lease end).
//! - `claims_are_disjoint`: a claim never returns a check under a live lease (its own replica's
//!   or another's): one canary per binding at a time for the whole fleet.
//! - `claims_take_the_earliest_due`: a claim returns `min(limit, due)` checks, every one due and
//!   unleased, and no due unleased check is left behind that is due before one it took.
//! - `held_keys_stay_scheduled`: no binding whose key some replica holds is ever without a next
//!   check (or a live claim): holding a key is never invisible to the monitor.
//! - `a_dead_replicas_claims_come_back`: a check whose claimant never finishes is claimable again
//!   once its lease lapses (the model's `Claim` after `Advance` past the lease checks it: the
//!   claim must return it if it is among the earliest due).
//! - `late_finish_is_a_no_op`: a replica finishing a check another replica took over (its lease
//!   lapsed) changes nothing and says so.
//!
//! Times are a synthetic clock: case `k` runs its clock from `k × 10^9` ms, and a case ends by
//! claiming everything it left due for good (lease to the end of time), so no case sees another's
//! rows as due; the rows of the case are compared by binding id.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests: a failure must abort with a message"
)]

use std::collections::BTreeMap;

use keyward_store::{
    KeyId, NewKekBinding, ProviderKind, Store, TenantId, WrappedKey, sqlite::SqliteStore,
};
use proptest::prelude::*;

mod common;
use common::test_db::TestDb;

const BINDINGS: usize = 4;
const REPLICAS: usize = 3;
const CASE_SPAN: i64 = 1_000_000_000;

#[derive(Debug, Clone)]
enum Op {
    /// Replica `r` loaded binding `b`'s key: held for `ttl` ms, next check `interval` ms on.
    Hold { b: usize, ttl: i64, interval: i64 },
    /// Replica `r` claims at most `limit` due checks with a lease of `lease` ms.
    Claim { r: usize, limit: u32, lease: i64 },
    /// Replica `r` finishes its check of binding `b` (if it has one): next in `next` ms, and
    /// keeps checking without a holding when `lift`.
    Finish {
        r: usize,
        b: usize,
        next: i64,
        lift: bool,
    },
    /// Time passes.
    Advance { ms: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..BINDINGS, 1..4_000i64, 1..3_000i64)
            .prop_map(|(b, ttl, interval)| Op::Hold { b, ttl, interval }),
        3 => (0..REPLICAS, 1..4u32, 1..2_000i64)
            .prop_map(|(r, limit, lease)| Op::Claim { r, limit, lease }),
        3 => (0..REPLICAS, 0..BINDINGS, 1..3_000i64, any::<bool>())
            .prop_map(|(r, b, next, lift)| Op::Finish { r, b, next, lift }),
        2 => (1..2_500i64).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// One `key_checks` row as the model keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Row {
    held_until: i64,
    due: Option<i64>,
    owner: Option<String>,
    lease_until: i64,
}

fn replica(r: usize) -> String {
    format!("r{r}")
}

/// A `key_checks` row as SQL reads it: binding id, holding, due, lease owner, lease end.
type RawRow = (i64, i64, Option<i64>, Option<String>, i64);

/// The schedule's rows, by binding id.
fn rows(pool_rows: Vec<RawRow>) -> BTreeMap<i64, Row> {
    pool_rows
        .into_iter()
        .map(|(id, held_until, due, owner, lease_until)| {
            (
                id,
                Row {
                    held_until,
                    due,
                    owner,
                    lease_until,
                },
            )
        })
        .collect()
}

const ROWS_SQL: &str =
    "SELECT binding_id, held_until_ms, due_at_ms, lease_owner, lease_until_ms FROM key_checks";

/// The store under test, with SQL access to its schedule.
enum Backend {
    Sqlite(SqliteStore),
    Postgres(Box<(keyward_store::postgres::PostgresStore, TestDb)>),
}

impl Backend {
    fn store(&self) -> &dyn Store {
        match self {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => &p.0,
        }
    }

    async fn schedule(&self) -> BTreeMap<i64, Row> {
        match self {
            Backend::Sqlite(s) => rows(sqlx::query_as(ROWS_SQL).fetch_all(s.pool()).await.unwrap()),
            Backend::Postgres(p) => rows(
                sqlx::query_as(ROWS_SQL)
                    .fetch_all(p.0.pool())
                    .await
                    .unwrap(),
            ),
        }
    }
}

/// Creates `BINDINGS` tenants with one binding each; returns (tenant, binding id).
async fn bindings(store: &dyn Store, case: u64) -> Vec<(TenantId, i64)> {
    let mut out = Vec::new();
    for i in 0..BINDINGS {
        let tenant = TenantId::try_from(format!("sched-{case}-{i}").as_str()).unwrap();
        store
            .create_tenant(&tenant, "schedule model", &|_| Vec::new())
            .await
            .unwrap();
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&case.to_be_bytes());
        id[8] = u8::try_from(i).unwrap();
        let binding = store
            .bind_kek(
                NewKekBinding {
                    tenant: tenant.clone(),
                    provider: ProviderKind::Local,
                    key_ref: format!("k{i}"),
                    tenant_key_id: KeyId::from_bytes(id),
                    wrapped_tenant_key: WrappedKey::new(vec![1; 40]),
                    tenant_key_mac: Some(vec![2; 32]),
                },
                &|_| Vec::new(),
            )
            .await
            .unwrap()
            .binding;
        out.push((tenant, binding.id));
    }
    out
}

async fn run_case(backend: &Backend, case: u64, ops: &[Op]) {
    let store = backend.store();
    let base = i64::try_from(case).unwrap() * CASE_SPAN + CASE_SPAN / 2;
    let mine = bindings(store, case).await;
    let ids: Vec<i64> = mine.iter().map(|(_, id)| *id).collect();
    let mut model: BTreeMap<i64, Row> = BTreeMap::new();
    let mut now = base;
    for (step, op) in ops.iter().enumerate() {
        let at = format!("step {step} ({op:?}) at t={}", now - base);
        match op.clone() {
            Op::Hold { b, ttl, interval } => {
                let (tenant, id) = &mine[b];
                store
                    .hold_key(tenant, *id, now + ttl, now + interval)
                    .await
                    .unwrap();
                let row = model.entry(*id).or_default();
                row.held_until = row.held_until.max(now + ttl);
                row.due = Some(row.due.map_or(now + interval, |d| d.min(now + interval)));
            }
            Op::Claim { r, limit, lease } => {
                let claimed = store
                    .claim_key_checks(&replica(r), now, now + lease, limit)
                    .await
                    .unwrap();
                let got: Vec<i64> = claimed.iter().map(|c| c.binding.id).collect();
                assert!(
                    got.iter().all(|id| ids.contains(id)),
                    "claims_are_disjoint: {at}: claimed another case's check {got:?}"
                );
                let eligible: Vec<(i64, i64)> = model
                    .iter()
                    .filter_map(|(id, row)| {
                        row.due
                            .filter(|due| *due <= now && row.lease_until <= now)
                            .map(|due| (due, *id))
                    })
                    .collect();
                for id in &got {
                    let row = &model[id];
                    assert!(
                        row.lease_until <= now,
                        "claims_are_disjoint: {at}: binding {id} claimed under a live lease of {:?} until {}",
                        row.owner,
                        row.lease_until - base
                    );
                    assert!(
                        row.due.is_some_and(|d| d <= now),
                        "claims_take_the_earliest_due: {at}: binding {id} is not due ({:?})",
                        row.due.map(|d| d - base)
                    );
                }
                let want = eligible.len().min(usize::try_from(limit).unwrap());
                assert_eq!(
                    got.len(),
                    want,
                    "claims_take_the_earliest_due / a_dead_replicas_claims_come_back: {at}: \
                     claimed {got:?} of the due and unleased {eligible:?}"
                );
                let latest_taken = got.iter().map(|id| model[id].due.unwrap()).max();
                if let Some(latest) = latest_taken {
                    for (due, id) in &eligible {
                        assert!(
                            *due >= latest || got.contains(id),
                            "claims_take_the_earliest_due: {at}: left {id} (due {}) for a later one",
                            due - base
                        );
                    }
                }
                for c in &claimed {
                    let row = model.get_mut(&c.binding.id).unwrap();
                    assert_eq!(
                        c.held_until_ms, row.held_until,
                        "schedule_matches_model: {at}"
                    );
                    assert_eq!(Some(c.due_at_ms), row.due, "schedule_matches_model: {at}");
                    row.owner = Some(replica(r));
                    row.lease_until = now + lease;
                }
            }
            Op::Finish { r, b, next, lift } => {
                let id = ids[b];
                let unheld = lift.then_some(now + next);
                let done = store
                    .finish_key_check(&replica(r), id, now, now + next, unheld)
                    .await
                    .unwrap();
                let expected = model
                    .get(&id)
                    .is_some_and(|row| row.owner.as_deref() == Some(&replica(r)));
                assert_eq!(
                    done,
                    expected,
                    "late_finish_is_a_no_op: {at}: finish answered {done}, the claim is {:?}",
                    model.get(&id).map(|row| row.owner.clone())
                );
                if expected {
                    let row = model.get_mut(&id).unwrap();
                    row.due = if row.held_until > now {
                        Some(now + next)
                    } else {
                        unheld
                    };
                    row.owner = None;
                    row.lease_until = 0;
                }
            }
            Op::Advance { ms } => now += ms,
        }
        let actual: BTreeMap<i64, Row> = backend
            .schedule()
            .await
            .into_iter()
            .filter(|(id, _)| ids.contains(id))
            .collect();
        assert_eq!(actual, model, "schedule_matches_model: {at}");
        for (id, row) in &model {
            assert!(
                row.held_until <= now || row.due.is_some() || row.lease_until > now,
                "held_keys_stay_scheduled: {at}: binding {id} is held until {} with no check",
                row.held_until - base
            );
        }
    }
    // Nothing this case left may be due in a later case.
    store
        .claim_key_checks("end-of-case", base + CASE_SPAN / 2 - 1, i64::MAX, 100_000)
        .await
        .unwrap();
}

fn sequences() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..40)
}

fn run(rt: &tokio::runtime::Runtime, backend: &Backend, cases: u32) {
    let case = std::cell::Cell::new(0u64);
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in sequences())| {
        case.set(case.get() + 1);
        rt.block_on(run_case(backend, case.get(), &ops));
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_schedule_on_sqlite_is_the_model() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = rt
        .block_on(SqliteStore::open(&dir.path().join("schedule.db")))
        .unwrap();
    let backend = Backend::Sqlite(store);
    run(&rt, &backend, 128);
}

#[test]
fn the_schedule_on_postgres_is_the_model() {
    let rt = runtime();
    let db = rt.block_on(TestDb::create());
    let store = rt.block_on(db.store());
    let backend = Backend::Postgres(Box::new((store, db)));
    run(&rt, &backend, 48);
    if let Backend::Postgres(p) = backend {
        let (store, db) = *p;
        rt.block_on(async {
            store.close().await;
            db.finish().await;
        });
    }
}
