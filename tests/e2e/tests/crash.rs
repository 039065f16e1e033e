//! Crash consistency: the real binary is killed with SIGKILL at random moments while
//! several clients drive encryption and every lifecycle operation against it, hundreds of
//! times, bounded in time — once on its default SQLite store and once on PostgreSQL (the same
//! run, the same invariants; issue #27 item 12). Afterwards:
//!
//! * every acknowledged ciphertext decrypts to its plaintext;
//! * every tenant's revocation state is the one its last acknowledged lifecycle operation
//!   left (or the one of an operation that was in flight when the process died);
//! * the store holds no orphaned or duplicated state: every tenant, KEK binding and DEK row
//!   has exactly one audit record of its creation in the same chain, no tenant exists that no
//!   client asked for, no tenant has two current bindings or a scope two active DEKs;
//! * the exported audit chain verifies offline.
//!
//! The kill moments come from a seeded generator; the seed is printed, and
//! `KEYWARD_CRASH_SEED` replays a run. `KEYWARD_CRASH_ROUNDS` / `KEYWARD_CRASH_SECONDS` change
//! the bounds (defaults: up to 400 kills within 90 s; at least 100 required, for which the run may take up
//! to twice that). The two backends' runs take turns (one lock), so that neither starves the
//! other of the machine's cores.
//!
//! The PostgreSQL run needs `KEYWARD_TEST_POSTGRES_URL` (see `support::pg`); it uses its own
//! database, dropped when the run passes. Only the `keyward` process is killed: PostgreSQL's
//! own crash recovery is `pg_restart.rs`'s subject.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stderr,
    reason = "tests"
)]

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use keyward_proto::v1::{self as pb, audit_service_client::AuditServiceClient};
use sqlx::Row as _;
use support::{Server, context, local_key, test_db::TestDb};
use tonic::transport::Channel;

/// A lifecycle operation's effect on the tenant's revocation state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Revoke,
    Restore,
}

#[derive(Default)]
struct Ledger {
    /// Tenants whose CreateTenant was acknowledged.
    tenants: Vec<String>,
    /// Tenants whose CreateTenant was sent but not acknowledged (the kill came first).
    maybe_tenants: Vec<String>,
    /// Tenants whose onboarding (registrations and first encryptions) was acknowledged: the
    /// lifecycle worker's pool.
    keyed: Vec<String>,
    /// Acknowledged ciphertexts: tenant, envelope, plaintext, the context's `m` value.
    envelopes: Vec<(String, Vec<u8>, Vec<u8>, String)>,
    /// Per tenant: the last acknowledged lifecycle operation, and one sent after it that was
    /// not acknowledged.
    lifecycle: HashMap<String, (Option<Lifecycle>, Option<Lifecycle>)>,
}

/// xorshift64*: a small seeded generator, so that a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// New tenants: create, register a key (sometimes twice: a KEK binding change), encrypt in
/// several scopes. Stops at the first error (the server is gone).
async fn onboarding_worker(channel: Channel, tag: String, ledger: Arc<Mutex<Ledger>>) {
    let mut tenants = pb::tenant_service_client::TenantServiceClient::new(channel.clone());
    let mut crypto = pb::crypto_service_client::CryptoServiceClient::new(channel);
    for k in 0.. {
        let tenant = format!("crash-{tag}-{k}");
        ledger.lock().unwrap().maybe_tenants.push(tenant.clone());
        let created = tenants
            .create_tenant(pb::CreateTenantRequest {
                tenant_id: tenant.clone(),
                display_name: String::new(),
            })
            .await;
        if created.is_err() {
            return;
        }
        ledger.lock().unwrap().tenants.push(tenant.clone());
        for _ in 0..1 + k % 2 {
            if tenants
                .register_key(local_key(&tenant, "default"))
                .await
                .is_err()
            {
                return;
            }
            if !encrypt_some(&mut crypto, &tenant, &ledger, 3).await {
                return;
            }
        }
        // Only now may the lifecycle worker take it: a registration after a revocation
        // reopens the tenant, which would blur what the lifecycle worker expects.
        ledger.lock().unwrap().keyed.push(tenant.clone());
    }
}

/// Encrypts `n` messages in distinct scopes; false once the server is gone.
async fn encrypt_some(
    crypto: &mut pb::crypto_service_client::CryptoServiceClient<Channel>,
    tenant: &str,
    ledger: &Mutex<Ledger>,
    n: u8,
) -> bool {
    for m in 0..n {
        let plaintext = vec![m; 64 + usize::from(m)];
        let marker = format!("{m}");
        match crypto
            .encrypt(pb::EncryptRequest {
                tenant_id: tenant.to_owned(),
                plaintext: plaintext.clone(),
                encryption_context: context(&[("m", &marker)]),
                scope: format!("s{m}"),
                justification: None,
            })
            .await
        {
            Ok(r) => ledger.lock().unwrap().envelopes.push((
                tenant.to_owned(),
                r.into_inner().envelope,
                plaintext,
                marker,
            )),
            // A revoked tenant refuses: that is an answer, not a crash.
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {}
            Err(_) => return false,
        }
    }
    true
}

/// Revokes and restores existing tenants (and encrypts for them while active), recording
/// which operations were acknowledged.
async fn lifecycle_worker(channel: Channel, seed: u64, ledger: Arc<Mutex<Ledger>>) {
    let mut tenants = pb::tenant_service_client::TenantServiceClient::new(channel.clone());
    let mut crypto = pb::crypto_service_client::CryptoServiceClient::new(channel);
    let mut rng = Rng(seed | 1);
    loop {
        let picked = {
            let l = ledger.lock().unwrap();
            (!l.keyed.is_empty()).then(|| {
                let tenant = l.keyed[rng.below(l.keyed.len() as u64) as usize].clone();
                let last = l.lifecycle.get(&tenant).copied().unwrap_or((None, None));
                (tenant, last)
            })
        };
        let Some((tenant, last)) = picked else {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        };
        // A tenant with an unacknowledged operation is left alone: its state is ambiguous
        // until the check at the end.
        if last.1.is_some() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let op = match last.0 {
            Some(Lifecycle::Revoke) => Lifecycle::Restore,
            _ => Lifecycle::Revoke,
        };
        ledger
            .lock()
            .unwrap()
            .lifecycle
            .insert(tenant.clone(), (last.0, Some(op)));
        let result = match op {
            Lifecycle::Revoke => tenants
                .revoke_key(pb::RevokeKeyRequest {
                    tenant_id: tenant.clone(),
                    reason: "crash test".into(),
                    requested_by: "crash-test".into(),
                })
                .await
                .map(drop),
            Lifecycle::Restore => tenants
                .restore_key(pb::RestoreKeyRequest {
                    tenant_id: tenant.clone(),
                    reason: "crash test".into(),
                    requested_by: "crash-test".into(),
                    binding_id: 0,
                })
                .await
                .map(drop),
        };
        if result.is_err() {
            return;
        }
        ledger
            .lock()
            .unwrap()
            .lifecycle
            .insert(tenant.clone(), (Some(op), None));
        if op == Lifecycle::Restore && !encrypt_some(&mut crypto, &tenant, &ledger, 2).await {
            return;
        }
    }
}

/// Where the killed server keeps its state.
enum Backend {
    /// `<data_dir>/keyward.db`, the default.
    Sqlite,
    /// A database of its own on the shared PostgreSQL server.
    Postgres(TestDb),
}

impl Backend {
    /// The server's environment for this store (besides the test's own settings).
    fn env(&self) -> Vec<(&str, &str)> {
        match self {
            Backend::Sqlite => Vec::new(),
            // A small pool: every killed server's connections linger until PostgreSQL sees
            // their sockets close.
            Backend::Postgres(db) => vec![
                ("KEYWARD_STORE", db.url.as_str()),
                ("KEYWARD_POSTGRES__MAX_CONNECTIONS", "4"),
            ],
        }
    }

    /// The store's tables, for the invariants (only read: SQLite is even opened read-only).
    async fn open(&self, server: &Server) -> Tables {
        match self {
            Backend::Sqlite => Tables::Sqlite(
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect(&format!("sqlite://{}?mode=ro", server.database().display()))
                    .await
                    .unwrap(),
            ),
            Backend::Postgres(db) => Tables::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&db.url)
                    .await
                    .unwrap(),
            ),
        }
    }
}

/// The store's tables, read with plain SQL that both backends accept.
enum Tables {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Tables {
    /// `(text, count)` rows of `sql`, whose one optional parameter is written `$1`.
    async fn pairs(&self, sql: &str, param: Option<&str>) -> BTreeMap<String, i64> {
        match self {
            Tables::Sqlite(pool) => {
                let sql = sql.replace("$1", "?");
                let mut query = sqlx::query(&sql);
                if let Some(p) = param {
                    query = query.bind(p);
                }
                query
                    .fetch_all(pool)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
                    .collect()
            }
            Tables::Postgres(pool) => {
                let mut query = sqlx::query(sql);
                if let Some(p) = param {
                    query = query.bind(p);
                }
                query
                    .fetch_all(pool)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
                    .collect()
            }
        }
    }

    async fn close(self) {
        match self {
            Tables::Sqlite(pool) => pool.close().await,
            Tables::Postgres(pool) => pool.close().await,
        }
    }
}

/// One backend's run at a time (see the module docs).
static ONE_RUN_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run_exclusively(test: impl std::future::Future<Output = ()>) {
    let _turn = ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    run_exclusively(sigkill_at_random_moments(&Backend::Sqlite));
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged_on_postgres() {
    run_exclusively(async {
        let db = TestDb::create().await;
        let backend = Backend::Postgres(db);
        sigkill_at_random_moments(&backend).await;
        let Backend::Postgres(db) = backend else {
            unreachable!()
        };
        db.finish().await;
    });
}

async fn sigkill_at_random_moments(backend: &Backend) {
    let seed = env_or(
        "KEYWARD_CRASH_SEED",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    let max_rounds: usize = env_or("KEYWARD_CRASH_ROUNDS", 400);
    let budget = Duration::from_secs(env_or("KEYWARD_CRASH_SECONDS", 90));
    eprintln!("crash test seed {seed} (replay with KEYWARD_CRASH_SEED={seed})");
    let mut rng = Rng(seed | 1);

    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let started = Instant::now();
    let mut kills = 0;
    let min_kills = max_rounds.min(100);
    // Past the budget only to reach the minimum, and never past twice the budget.
    while kills < max_rounds
        && (started.elapsed() < budget || (kills < min_kills && started.elapsed() < budget * 2))
    {
        let mut env = backend.env();
        env.push(("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "0"));
        let server = Server::start_in(dir.path(), &env);
        let Ok(channel) = Channel::from_shared(server.endpoint())
            .unwrap()
            .connect()
            .await
        else {
            server.kill_9();
            continue;
        };
        let workers = [
            tokio::spawn(onboarding_worker(
                channel.clone(),
                format!("{kills}a"),
                ledger.clone(),
            )),
            tokio::spawn(onboarding_worker(
                channel.clone(),
                format!("{kills}b"),
                ledger.clone(),
            )),
            tokio::spawn(lifecycle_worker(channel, rng.next(), ledger.clone())),
        ];
        // Anywhere from right after start to well into the work: most rounds die young (many
        // kills), one in four lives long enough to onboard tenants and revoke and restore.
        let life = if rng.below(4) == 0 {
            rng.below(1500)
        } else {
            rng.below(150)
        };
        tokio::time::sleep(Duration::from_millis(life)).await;
        server.kill_9();
        // A call whose answer had not arrived by now stays unacknowledged, as for a client
        // whose server died: the ledger already counts it as "maybe".
        for worker in workers {
            worker.abort();
            let _ = worker.await;
        }
        kills += 1;
    }

    let server = Server::start_in(dir.path(), &backend.env());
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let revocations = ledger
        .lifecycle
        .values()
        .filter(|(last, _)| last.is_some())
        .count();
    eprintln!(
        "{kills} SIGKILLs in {:.1} s; acknowledged: {} tenants, {} keyed, {} ciphertexts, \
         {revocations} tenants with revoke/restore",
        started.elapsed().as_secs_f64(),
        ledger.tenants.len(),
        ledger.keyed.len(),
        ledger.envelopes.len(),
    );
    assert!(
        kills >= min_kills,
        "only {kills} kills within the time budget"
    );
    assert!(
        ledger.envelopes.len() >= 100 && revocations >= 10,
        "the load did real work before the kills"
    );

    // Every tenant is in the state its last acknowledged lifecycle operation left, or the one
    // of the operation in flight when the process died. Revoked ones are then restored, so
    // that every ciphertext can be checked.
    let mut tenants = server.tenants().await;
    for (tenant, (acked, in_flight)) in &ledger.lifecycle {
        let state = tenants
            .get_tenant(pb::GetTenantRequest {
                tenant_id: tenant.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .active_key
            .unwrap()
            .state();
        let revoked = state == pb::KekState::Revoked;
        let expected = |op: &Option<Lifecycle>| match op {
            Some(Lifecycle::Revoke) => Some(true),
            Some(Lifecycle::Restore) => Some(false),
            None => None,
        };
        let allowed = [expected(acked).unwrap_or(false)]
            .into_iter()
            .chain(expected(in_flight))
            .collect::<Vec<_>>();
        assert!(
            allowed.contains(&revoked),
            "{tenant}: state {state:?} after acknowledged {acked:?} (in flight: {in_flight:?})"
        );
        if revoked {
            tenants
                .restore_key(pb::RestoreKeyRequest {
                    tenant_id: tenant.clone(),
                    reason: "crash test: check every ciphertext".into(),
                    requested_by: "crash-test".into(),
                    binding_id: 0,
                })
                .await
                .unwrap();
        }
    }

    // Every acknowledged ciphertext decrypts.
    let mut crypto = server.crypto().await;
    for (tenant, envelope, plaintext, marker) in &ledger.envelopes {
        let got = crypto
            .decrypt(pb::DecryptRequest {
                tenant_id: tenant.clone(),
                envelope: envelope.clone(),
                encryption_context: context(&[("m", marker)]),
                justification: None,
            })
            .await
            .unwrap_or_else(|s| panic!("acknowledged ciphertext of {tenant} lost: {s:?}"))
            .into_inner()
            .plaintext;
        assert_eq!(&got, plaintext);
    }

    // No orphaned or duplicated state: each row has exactly the audit record of its creation,
    // written in the same transaction.
    let db = backend.open(&server).await;
    let per_tenant = |sql: &'static str| db.pairs(sql, None);
    let audited = |event: &'static str| {
        db.pairs(
            "SELECT tenant_id, COUNT(*) FROM audit_records \
             WHERE event_type = $1 AND tenant_id IS NOT NULL GROUP BY tenant_id",
            Some(event),
        )
    };
    let tenant_rows = per_tenant("SELECT id, COUNT(*) FROM tenants GROUP BY id").await;
    assert_eq!(
        tenant_rows,
        audited("tenant_created").await,
        "tenant rows vs tenant_created"
    );
    for tenant in tenant_rows.keys() {
        assert!(
            ledger.maybe_tenants.contains(tenant),
            "{tenant} exists but no client asked for it"
        );
    }
    for tenant in &ledger.tenants {
        assert!(
            tenant_rows.contains_key(tenant),
            "acknowledged {tenant} lost"
        );
    }
    assert_eq!(
        per_tenant("SELECT tenant_id, COUNT(*) FROM kek_bindings GROUP BY tenant_id").await,
        audited("kek_binding_changed").await,
        "KEK binding rows vs kek_binding_changed records"
    );
    assert_eq!(
        per_tenant("SELECT tenant_id, COUNT(*) FROM deks GROUP BY tenant_id").await,
        audited("dek_created").await,
        "DEK rows vs dek_created records"
    );
    for (what, sql) in [
        (
            "two current KEK bindings",
            "SELECT tenant_id, COUNT(*) FROM kek_bindings WHERE deactivated_at_ms IS NULL \
             GROUP BY tenant_id HAVING COUNT(*) > 1",
        ),
        (
            "two active DEKs in one scope",
            "SELECT tenant_id || '/' || scope, COUNT(*) FROM deks WHERE retired_at_ms IS NULL \
             GROUP BY tenant_id, scope HAVING COUNT(*) > 1",
        ),
        (
            "a tenant key without its binding",
            "SELECT k.tenant_id, COUNT(*) FROM tenant_keys k LEFT JOIN kek_bindings b \
             ON b.id = k.binding_id WHERE b.id IS NULL GROUP BY k.tenant_id",
        ),
    ] {
        let rows = per_tenant(sql).await;
        assert!(rows.is_empty(), "{what}: {rows:?}");
    }
    db.close().await;

    // The whole chain verifies offline.
    eprintln!("{}", server.verify_audit_chain(dir.path()));

    // The audit service agrees with the store on what the tenants went through.
    let mut audit = AuditServiceClient::new(server.channel().await);
    let sample = ledger.tenants.first().unwrap();
    let records = audit
        .list_events(pb::ListAuditEventsRequest {
            tenant_id: sample.clone(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(
        records
            .iter()
            .filter(|r| r.event_type == "tenant_created")
            .count(),
        1
    );
}
