//! Re-keying through the real binaries (issue #22, items 1 and 2; docs/rekey.md): a tenant's
//! data moved from an AWS KMS key (moto) to a PKCS#11 key (SoftHSM2) with `keyward tenant
//! rekey`, after which the AWS key is disabled and scheduled for deletion and everything still
//! reads, the monitor leaving the tenant alone; `kill -9` at seeded random moments of a re-key
//! of 35 tenant keys, after which `GetRekeyStatus` says exactly what the store holds and the
//! re-key completes with nothing lost; a re-key refused by a disabled old key, which names it
//! and changes nothing; and the scheduled re-key (`set-policy --auto-rekey`), including its
//! retry after an old key refused.
//!
//! The authorization of `RekeyTenant` and `GetRekeyStatus` under the shipped policies is in
//! `authz.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stderr,
    reason = "tests: a failure must abort with a message; the crash test prints its seed"
)]

mod support;

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use keyward_kms::local::LocalProvider;
use keyward_proto::v1::{self as pb, crypto_service_client::CryptoServiceClient};
use keyward_store::{AuditEvent, AuditQuery, KekState, Store as _, sqlite::SqliteStore};
use keyward_test_support::{
    aws::MotoServer,
    pkcs11::{SoftHsm, TOKEN_LABEL},
};
use sqlx::Row as _;
use support::{Server, bound, context, local_key};
use tonic::transport::Channel;

/// An envelope the server acknowledged, and what it must decrypt to.
#[derive(Debug, Clone)]
struct Sealed {
    tenant: String,
    scope: String,
    envelope: Vec<u8>,
    plaintext: Vec<u8>,
}

/// The encryption context of every envelope of these tests: its scope again, so that a
/// decrypt with another envelope's context fails.
fn ctx(scope: &str) -> HashMap<String, String> {
    context(&[("scope", scope)])
}

async fn seal(
    crypto: &mut CryptoServiceClient<Channel>,
    tenant: &str,
    scope: &str,
    n: usize,
) -> Result<Sealed, tonic::Status> {
    let plaintext = format!("{tenant}/{scope}/{n}: a prompt").into_bytes();
    let envelope = crypto
        .encrypt(pb::EncryptRequest {
            tenant_id: tenant.into(),
            plaintext: plaintext.clone(),
            encryption_context: ctx(scope),
            scope: scope.into(),
            justification: None,
        })
        .await?
        .into_inner()
        .envelope;
    Ok(Sealed {
        tenant: tenant.into(),
        scope: scope.into(),
        envelope,
        plaintext,
    })
}

/// Seals one message in each of `scopes` for `tenant`.
async fn seal_all(server: &Server, tenant: &str, scopes: &[&str]) -> Vec<Sealed> {
    let mut crypto = server.crypto().await;
    let mut out = Vec::new();
    for (n, scope) in scopes.iter().enumerate() {
        out.push(seal(&mut crypto, tenant, scope, n).await.unwrap());
    }
    out
}

/// Every envelope decrypts to its plaintext.
async fn assert_all_open(server: &Server, sealed: &[Sealed]) {
    let mut crypto = server.crypto().await;
    for s in sealed {
        let opened = crypto
            .decrypt(pb::DecryptRequest {
                tenant_id: s.tenant.clone(),
                envelope: s.envelope.clone(),
                encryption_context: ctx(&s.scope),
                justification: None,
            })
            .await
            .unwrap_or_else(|e| panic!("{}/{} does not decrypt: {e:?}", s.tenant, s.scope))
            .into_inner()
            .plaintext;
        assert_eq!(opened, s.plaintext, "{}/{}", s.tenant, s.scope);
    }
}

async fn rekey_status(server: &Server, tenant: &str) -> pb::RekeyStatus {
    server
        .tenants()
        .await
        .get_rekey_status(pb::GetRekeyStatusRequest {
            tenant_id: tenant.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn get_tenant(server: &Server, tenant: &str) -> pb::Tenant {
    server
        .tenants()
        .await
        .get_tenant(pb::GetTenantRequest {
            tenant_id: tenant.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Runs the CLI; panics with its stderr unless it succeeds; returns its stdout.
fn cli_ok(server: &Server, args: &[&str]) -> String {
    let (ok, out, err) = server.cli(args, b"");
    assert!(ok, "keyward {args:?}: {err}");
    String::from_utf8(out).unwrap()
}

/// What a re-key has left, in the terms `GetRekeyStatus` answers in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Left {
    target: i64,
    current: u32,
    remaining: u32,
    deks_remaining: u64,
    /// Older bindings that still wrap a tenant key, and retired bindings, by id.
    pending: BTreeSet<i64>,
    retired: BTreeSet<i64>,
    done: bool,
}

impl Left {
    fn of_status(s: &pb::RekeyStatus) -> Left {
        Left {
            target: s.target.as_ref().unwrap().binding_id,
            current: s.tenant_keys_current,
            remaining: s.tenant_keys_remaining,
            deks_remaining: s.deks_remaining,
            pending: s.pending_bindings.iter().map(|b| b.binding_id).collect(),
            retired: s.retired_bindings.iter().map(|b| b.binding_id).collect(),
            done: s.done,
        }
    }

    /// Read from the store itself (`Store::rekey_state`), not through the server, and
    /// cross-checked with plain SQL on the tables: which binding wraps each tenant key.
    async fn of_store(db: &Path, tenant: &str) -> Left {
        let store = SqliteStore::open_read_only(db).await.unwrap();
        let state = store
            .rekey_state(&tenant.try_into().unwrap())
            .await
            .unwrap();
        store.close().await;
        let target = state
            .bindings
            .iter()
            .find(|b| b.deactivated_at_ms.is_none())
            .unwrap()
            .id;
        let deks: HashMap<_, u64> = state.deks_by_tenant_key.iter().copied().collect();
        let left: Vec<_> = state
            .tenant_keys
            .iter()
            .filter(|k| k.binding_id != target)
            .collect();
        let older_all_retired = state
            .bindings
            .iter()
            .filter(|b| b.id != target)
            .all(|b| b.state == KekState::Retired);
        let view = Left {
            target,
            current: u32::try_from(state.tenant_keys.len() - left.len()).unwrap(),
            remaining: u32::try_from(left.len()).unwrap(),
            deks_remaining: left
                .iter()
                .map(|k| deks.get(&k.id).copied().unwrap_or(0))
                .sum(),
            pending: left.iter().map(|k| k.binding_id).collect(),
            retired: state
                .bindings
                .iter()
                .filter(|b| b.state == KekState::Retired)
                .map(|b| b.id)
                .collect(),
            done: left.is_empty() && older_all_retired,
        };
        let (remaining, deks_remaining, current) = tables_left(db, tenant).await;
        assert_eq!(
            (
                i64::from(view.remaining),
                i64::try_from(view.deks_remaining).unwrap(),
                view.target
            ),
            (remaining, deks_remaining, current),
            "rekey_state disagrees with the tables"
        );
        view
    }
}

/// Plain SQL on the tables, in one statement: tenant keys not wrapped by the current binding's
/// KEK, the DEKs below them, and the current binding's id.
async fn tables_left(db: &Path, tenant: &str) -> (i64, i64, i64) {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    let row = sqlx::query(
        "SELECT \
           (SELECT COUNT(*) FROM tenant_keys WHERE tenant_id = ?1 AND kek_binding_id <> b.id), \
           (SELECT COUNT(*) FROM deks d JOIN tenant_keys tk ON tk.id = d.tenant_key_id \
             WHERE d.tenant_id = ?1 AND tk.kek_binding_id <> b.id), \
           b.id \
         FROM kek_bindings b WHERE b.tenant_id = ?1 AND b.deactivated_at_ms IS NULL",
    )
    .bind(tenant)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    (row.get(0), row.get(1), row.get(2))
}

/// The audit records of `tenant` of type `event_type`.
async fn records(db: &Path, tenant: &str, event_type: &str) -> Vec<AuditEvent> {
    let store = SqliteStore::open_read_only(db).await.unwrap();
    let records = store
        .audit_records(
            &AuditQuery::default()
                .with_tenant(tenant.try_into().unwrap())
                .with_event_type(event_type),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.event().clone())
        .collect();
    store.close().await;
    records
}

/// `keyward_monitor_checks_total`, all outcomes, from the admin listener.
fn monitor_checks(server: &Server) -> u64 {
    let (code, body) = server.admin_get("/metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter(|l| l.starts_with("keyward_monitor_checks_total"))
        .map(|l| {
            let value = l.rsplit(' ').next().unwrap();
            value.parse::<f64>().unwrap() as u64
        })
        .sum()
}

/// The customer's walk from AWS KMS to an HSM: data written in several scopes under an AWS key
/// (moto), a PKCS#11 key (SoftHSM2) registered, `keyward tenant rekey acme` moves the tenant
/// key and retires the AWS binding; the customer then disables the AWS key and schedules its
/// deletion. After a restart (cold caches) every envelope written under the AWS key decrypts,
/// and the monitor (1 s here) leaves the tenant alone although the retired key refuses, while it
/// does revoke `globex`, a tenant that still depends on the same AWS key (the control: the
/// monitor runs and sees the refusal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_to_pkcs11_then_the_aws_key_is_disabled_and_scheduled_for_deletion() {
    let Some(hsm) =
        SoftHsm::isolate("aws_to_pkcs11_then_the_aws_key_is_disabled_and_scheduled_for_deletion")
    else {
        return;
    };
    hsm.create_key("kek");
    let moto = MotoServer::start();
    let arn = moto.create_symmetric_key().await;
    let conf = hsm.dir().join("softhsm2.conf");
    let pin = hsm.dir().join("pin");
    let module = hsm.module().to_str().unwrap().to_owned();
    let env = [
        ("KEYWARD_AWS_KMS__ENDPOINT_URL", moto.endpoint.as_str()),
        ("KEYWARD_AWS_KMS__STS_ENDPOINT_URL", moto.endpoint.as_str()),
        ("KEYWARD_AWS_KMS__MAX_ATTEMPTS", "2"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("SOFTHSM2_CONF", conf.to_str().unwrap()),
        ("KEYWARD_PKCS11__MODULE_PATH", &module),
        ("KEYWARD_PKCS11__TOKEN_LABEL", TOKEN_LABEL),
        ("KEYWARD_PKCS11__PIN_FILE", pin.to_str().unwrap()),
        ("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "1"),
    ];
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_in(data.path(), &env);
    let aws = |tenant: &str| pb::RegisterKeyRequest {
        tenant_id: tenant.into(),
        key: Some(pb::register_key_request::Key::AwsKms(pb::AwsKmsKey {
            key_arn: arn.clone(),
            role_arn: String::new(),
            external_id: String::new(),
        })),
    };
    let mut tenants = server.tenants().await;
    for tenant in ["acme", "globex"] {
        support::create_tenant(&mut tenants, tenant).await;
        tenants.register_key(aws(tenant)).await.unwrap();
    }
    let mut old = seal_all(&server, "acme", &["conv-1", "conv-2", "conv-3"]).await;
    old.extend(seal_all(&server, "acme", &["conv-1", "user-7"]).await);
    seal_all(&server, "globex", &["conv-1"]).await;

    let uri = format!("pkcs11:token={TOKEN_LABEL};object=kek");
    let hsm_binding = tenants
        .register_key(pb::RegisterKeyRequest {
            tenant_id: "acme".into(),
            key: Some(pb::register_key_request::Key::Pkcs11(pb::Pkcs11Key {
                uri: uri.clone(),
            })),
        })
        .await
        .unwrap()
        .into_inner()
        .active_key
        .unwrap();
    assert_eq!(hsm_binding.provider(), pb::ProviderKind::Pkcs11);
    let new = seal_all(&server, "acme", &["conv-1", "conv-9"]).await;

    // Before: the AWS binding (1) wraps one tenant key with the four scopes' DEKs below it.
    let before = cli_ok(&server, &["tenant", "rekey", "acme", "--status"]);
    let aws_named = format!("binding 1 (aws-kms {arn})");
    let hsm_named = format!("binding 3 (pkcs11 {})", hsm_binding.key_ref);
    assert_eq!(hsm_binding.binding_id, 3, "globex's binding is 2");
    assert!(
        before.contains("tenant acme: re-key not done\n"),
        "{before}"
    );
    assert!(
        before.contains(&format!(
            "  left to move: 1 tenant key (4 data keys below it); keep this key enabled until the re-key is done:\n    {aws_named}, active\n"
        )),
        "{before}"
    );

    let started = Instant::now();
    let out = cli_ok(&server, &["tenant", "rekey", "acme"]);
    eprintln!(
        "re-key AWS KMS -> PKCS#11 with the CLI: {:?}",
        started.elapsed()
    );
    assert_eq!(
        out,
        format!(
            "Re-keyed tenant acme: moved 1 tenant key under {hsm_named}; retired 1 older binding.\n\
             tenant acme: re-key done\n  current key: {hsm_named} wraps 2 tenant keys\n  \
             retired: {aws_named}: no data depends on it; its KMS key may be disabled or scheduled for deletion\n"
        )
    );
    let status: serde_json::Value = serde_json::from_str(&cli_ok(
        &server,
        &["tenant", "rekey", "acme", "--status", "--json"],
    ))
    .unwrap();
    assert_eq!(status["done"], true, "{status}");
    assert_eq!(status["tenant_keys_remaining"], 0, "{status}");
    assert_eq!(status["retired_bindings"][0]["key_ref"], arn.as_str());
    assert_eq!(status["retired_bindings"][0]["state"], "retired");
    assert_eq!(status["target"]["provider"], "pkcs11");

    // The customer retires the AWS key: disabled, and scheduled for deletion.
    moto.disable_key(&arn).await;
    moto.schedule_deletion(&arn).await;
    drop(server);
    let server = Server::start_in(data.path(), &env);
    let restarted = Instant::now();
    // Cold caches: every tenant key is unwrapped again, by the HSM.
    assert_all_open(&server, &old).await;
    assert_all_open(&server, &new).await;

    // The control: with no traffic, the monitor finds globex's AWS key refusing and revokes it.
    let interval = server.monitor_interval.unwrap();
    bound::eventually(restarted, bound::monitor(interval), || async {
        match get_tenant(&server, "globex")
            .await
            .active_key
            .unwrap()
            .state()
        {
            pb::KekState::Revoked => Ok(()),
            other => Err(format!("globex reads {other:?}")),
        }
    })
    .await;
    eprintln!(
        "the monitor revoked globex (its AWS key disabled) {:?} after the restart",
        restarted.elapsed()
    );
    // Then at least two more monitor checks, and two intervals since the restart, pass...
    let checks = monitor_checks(&server);
    let waited = Instant::now();
    bound::eventually(waited, 2 * bound::monitor(interval), || async {
        let now = monitor_checks(&server);
        if now >= checks + 2 && restarted.elapsed() >= 2 * interval {
            Ok(())
        } else {
            Err(format!("{} monitor checks since", now - checks))
        }
    })
    .await;
    eprintln!(
        "{} monitor checks; acme checked {:?} after the restart",
        monitor_checks(&server),
        restarted.elapsed()
    );
    // ...and acme is not revoked: its current key is the HSM's, its AWS binding stays retired.
    let acme = get_tenant(&server, "acme").await;
    assert_eq!(acme.active_key.unwrap().state(), pb::KekState::Active);
    let previous: Vec<_> = acme
        .previous_keys
        .iter()
        .map(|b| (b.binding_id, b.state()))
        .collect();
    assert_eq!(previous, [(1, pb::KekState::Retired)]);
    assert!(
        records(&server.database(), "acme", "revocation_state_changed")
            .await
            .is_empty()
    );
    let fresh = seal_all(&server, "acme", &["conv-10"]).await;
    assert_all_open(&server, &fresh).await;
    assert_all_open(&server, &old).await;

    // The key history: the AWS binding is retired and no data key depends on it.
    let keys: serde_json::Value =
        serde_json::from_str(&cli_ok(&server, &["tenant", "keys", "acme", "--json"])).unwrap();
    let bindings = keys["bindings"].as_array().unwrap();
    assert_eq!(bindings.len(), 2, "{keys}");
    assert_eq!(bindings[0]["key_ref"], arn.as_str());
    assert_eq!(bindings[0]["state"], "retired");
    assert_eq!(bindings[0]["deks"], 0);
    assert_eq!(bindings[0]["verdict"], "key_may_be_disabled");
    assert_eq!(bindings[1]["provider"], "pkcs11");
    assert_eq!(bindings[1]["deks"], 7, "{keys}");
    let text = cli_ok(&server, &["tenant", "keys", "acme"]);
    let row: Vec<&str> = text.lines().nth(2).unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["1", "aws-kms", &arn, "retired"], "{text}");
    assert_eq!(row[6], "0", "{text}");
    assert!(
        text.contains(&format!(
            "no data depends on binding 1 ({arn}): its KMS key may be disabled\n"
        )),
        "{text}"
    );
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
        self.next() % n.max(1)
    }
}

/// Older local keys of the crash test (after "default"): 35 tenant keys to move.
const CRASH_KEYS: usize = 35;
/// SIGKILLs while an RPC loop re-keys (one more follows while the CLI does).
const CRASH_KILLS: usize = 5;

fn crash_env() -> Vec<(&'static str, &'static str)> {
    // No monitor: nothing but the re-key and the writer touches the store.
    vec![("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "0")]
}

/// Counts of one server life's re-key calls: sent, answered, and keys the answers moved.
#[derive(Default)]
struct Calls {
    sent: AtomicU32,
    answered: AtomicU32,
    moved: AtomicU32,
}

/// `RekeyTenant(acme, max_tenant_keys 1)` until it says done or the server dies.
async fn rekey_one_at_a_time(channel: Channel, calls: Arc<Calls>) {
    let mut tenants = pb::tenant_service_client::TenantServiceClient::new(channel);
    loop {
        calls.sent.fetch_add(1, Ordering::SeqCst);
        let Ok(answer) = tenants
            .rekey_tenant(pb::RekeyTenantRequest {
                tenant_id: "acme".into(),
                max_tenant_keys: 1,
                requested_by: "crash-test".into(),
            })
            .await
        else {
            return;
        };
        let answer = answer.into_inner();
        calls.moved.fetch_add(answer.rewrapped, Ordering::SeqCst);
        calls.answered.fetch_add(1, Ordering::SeqCst);
        if answer.done {
            return;
        }
    }
}

/// Encrypts into the tenant's current key while the re-key runs, recording what was
/// acknowledged.
async fn write_meanwhile(channel: Channel, round: usize, sealed: Arc<Mutex<Vec<Sealed>>>) {
    let mut crypto = CryptoServiceClient::new(channel);
    for n in 0.. {
        let scope = format!("live-{round}-{}", n % 3);
        let Ok(s) = seal(&mut crypto, "acme", &scope, n).await else {
            return;
        };
        sealed.lock().unwrap().push(s);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

/// A tenant with 36 key bindings (one tenant key each, two scopes written under each) is
/// re-keyed one tenant key per call (`RekeyTenant`, `max_tenant_keys` 1) while a writer
/// encrypts, and the server is killed with SIGKILL at seeded random moments; a last time while
/// `keyward tenant rekey` runs, near its end (the last moves, the retirement). After each kill
/// the store is read directly, and after the restart `GetRekeyStatus` says exactly that; the
/// keys moved are between those the answers acknowledged and those the calls sent could have
/// moved. Then `keyward tenant rekey` completes it: every old tenant key moved exactly once
/// (one `tenant_key_rewrapped` each), every older binding retired once, and with all 35 old
/// keys disabled every acknowledged envelope decrypts after a restart; the audit chain
/// verifies. `KEYWARD_REKEY_CRASH_SEED` replays a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_rekey_of_many_tenant_keys_loses_nothing_and_it_resumes() {
    let seed = std::env::var("KEYWARD_REKEY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("re-key crash test seed {seed} (replay with KEYWARD_REKEY_CRASH_SEED={seed})");
    let mut rng = Rng(seed | 1);
    let started = Instant::now();

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &crash_env());
    let db = server.database();
    server.onboard("acme").await;
    let kms = LocalProvider::open_existing(server.local_kms_dir()).unwrap();
    let mut names = vec!["default".to_owned()];
    let mut sealed = Vec::new();
    let mut tenants = server.tenants().await;
    let mut crypto = server.crypto().await;
    for i in 0..=CRASH_KEYS {
        if i > 0 {
            let name = format!("k{i:02}");
            kms.create_key(&name).unwrap();
            tenants
                .register_key(local_key("acme", &name))
                .await
                .unwrap();
            names.push(name);
        }
        for s in 0..2 {
            let scope = format!("b{i:02}-s{s}");
            sealed.push(seal(&mut crypto, "acme", &scope, i).await.unwrap());
        }
    }
    let initial = Left::of_store(&db, "acme").await;
    assert_eq!(
        (
            initial.remaining,
            initial.deks_remaining,
            initial.pending.len()
        ),
        (CRASH_KEYS as u32, 2 * CRASH_KEYS as u64, CRASH_KEYS)
    );
    assert_eq!(
        Left::of_status(&rekey_status(&server, "acme").await),
        initial
    );
    server.kill_9();
    let setup = started.elapsed();

    let sealed = Arc::new(Mutex::new(sealed));
    let (mut acked, mut unacked) = (0u32, 0u32);
    let mut kill_report = Vec::new();
    for round in 0..CRASH_KILLS {
        // The server is dead: what the store holds now is the truth.
        let left = Left::of_store(&db, "acme").await;
        let moved = initial.remaining - left.remaining;
        assert!(
            (acked..=acked + unacked).contains(&moved),
            "round {round}: {moved} keys moved, {acked} acknowledged, {unacked} calls unanswered"
        );
        let server = Server::start_in(dir.path(), &crash_env());
        assert_eq!(
            Left::of_status(&rekey_status(&server, "acme").await),
            left,
            "round {round}: GetRekeyStatus after the restart vs the store"
        );
        if left.done {
            break;
        }
        let channel = server.channel().await;
        let calls = Arc::new(Calls::default());
        let workers = [
            tokio::spawn(rekey_one_at_a_time(channel.clone(), calls.clone())),
            tokio::spawn(write_meanwhile(channel, round, sealed.clone())),
        ];
        // Kill after a random number of answered calls (at most 5, so that at most 6 keys move
        // per round and work is left for the CLI), plus a random part of the next call.
        let answers = rng.below(u64::from(left.remaining.min(6))) as u32;
        let extra = Duration::from_micros(rng.below(12_000));
        let waiting = Instant::now();
        while calls.answered.load(Ordering::SeqCst) < answers && !workers[0].is_finished() {
            assert!(
                waiting.elapsed() < Duration::from_secs(30),
                "the re-key is stuck"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(extra).await;
        server.kill_9();
        for worker in workers {
            worker.abort();
            let _ = worker.await;
        }
        let (sent, answered) = (
            calls.sent.load(Ordering::SeqCst),
            calls.answered.load(Ordering::SeqCst),
        );
        acked += calls.moved.load(Ordering::SeqCst);
        unacked += sent - answered;
        kill_report.push(format!("{answered}+{extra:?}"));
    }

    // The last life: `keyward tenant rekey acme` drives the re-key, and the server is killed
    // once the store shows at most 0, 1 or 2 tenant keys left, plus a random delay: during the
    // last moves or the retirement of the older bindings, or just after.
    let left = Left::of_store(&db, "acme").await;
    let moved = initial.remaining - left.remaining;
    assert!((acked..=acked + unacked).contains(&moved));
    let server = Server::start_in(dir.path(), &crash_env());
    assert_eq!(Left::of_status(&rekey_status(&server, "acme").await), left);
    let (at_most, extra) = (
        rng.below(3) as u32,
        Duration::from_micros(rng.below(12_000)),
    );
    let endpoint = server.endpoint();
    let cli = tokio::task::spawn_blocking(move || {
        support::run_keyward(
            None,
            &[("KEYWARD_ENDPOINT", &endpoint)],
            &["tenant", "rekey", "acme"],
            b"",
        )
    });
    let waiting = Instant::now();
    while tables_left(&db, "acme").await.0 > i64::from(at_most) && !cli.is_finished() {
        assert!(
            waiting.elapsed() < Duration::from_secs(30),
            "the CLI's re-key is stuck"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(extra).await;
    server.kill_9();
    let (code, _, err) = cli.await.unwrap();
    let after = Left::of_store(&db, "acme").await;
    let by_cli = left.remaining - after.remaining;
    kill_report.push(format!("CLI at {at_most} left+{extra:?}"));
    eprintln!(
        "{} SIGKILLs after (answered calls + delay) {kill_report:?}: {moved} of {} tenant keys \
         moved by the RPC loop ({acked} acknowledged), {by_cli} more by the CLI, {} left, \
         done: {}; setup {setup:?}",
        CRASH_KILLS + 1,
        initial.remaining,
        after.remaining,
        after.done
    );
    if code == Some(0) {
        assert!(after.done, "the CLI said done: {after:?}");
    } else {
        // The connection broke during a call: exit 4 (docs/errors.md), and what moved stays.
        assert_eq!(code, Some(4), "{err}");
        if by_cli >= 2 {
            // At least one of its calls was answered.
            assert!(err.contains("Stopped after moving"), "{err}");
        }
    }

    // The final restart: the status is true, and the CLI finishes the job.
    let server = Server::start_in(dir.path(), &crash_env());
    assert_eq!(Left::of_status(&rekey_status(&server, "acme").await), after);
    let out: serde_json::Value = serde_json::from_str(&cli_ok(
        &server,
        &["tenant", "rekey", "acme", "--batch", "4", "--json"],
    ))
    .unwrap();
    assert_eq!(out["done"], true, "{out}");
    if after.done {
        assert_eq!(
            out["rewrapped"],
            serde_json::Value::Null,
            "nothing to do: {out}"
        );
    } else {
        assert_eq!(out["rewrapped"], after.remaining, "{out}");
    }
    assert_eq!(out["tenant_keys_remaining"], 0, "{out}");
    assert_eq!(
        out["retired_bindings"].as_array().unwrap().len(),
        CRASH_KEYS
    );
    let done = Left::of_store(&db, "acme").await;
    assert!(done.done && done.remaining == 0, "{done:?}");
    assert_eq!(done.retired, initial.pending);

    // Each old tenant key moved exactly once, each older binding retired exactly once.
    let rewrapped = records(&db, "acme", "tenant_key_rewrapped").await;
    let mut from = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for event in &rewrapped {
        let AuditEvent::TenantKeyRewrapped {
            tenant_key_id,
            from_binding_id,
            to_binding_id,
            ..
        } = event
        else {
            panic!("{event:?}")
        };
        assert_eq!(*to_binding_id, initial.target);
        from.insert(*from_binding_id);
        keys.insert(*tenant_key_id);
    }
    assert_eq!(rewrapped.len(), CRASH_KEYS, "{rewrapped:#?}");
    assert_eq!((from.len(), keys.len()), (CRASH_KEYS, CRASH_KEYS));
    assert_eq!(from, initial.pending);
    let retired = records(&db, "acme", "kek_binding_retired").await;
    assert_eq!(retired.len(), CRASH_KEYS);

    // The customer disables every old key ("default" with the CLI, as a user would); after a
    // restart (cold caches), every acknowledged envelope decrypts.
    cli_ok(
        &server,
        &[
            "key",
            "disable",
            "default",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
    );
    for name in &names[1..CRASH_KEYS] {
        kms.set_enabled(name, false).unwrap();
    }
    drop(server);
    let server = Server::start_in(dir.path(), &crash_env());
    let sealed = sealed.lock().unwrap().clone();
    assert!(sealed.len() > 2 * (CRASH_KEYS + 1), "the writer wrote");
    assert_all_open(&server, &sealed).await;
    let audit = tempfile::tempdir().unwrap();
    server.verify_audit_chain(audit.path());
    eprintln!(
        "{} acknowledged envelopes decrypt with the old keys disabled; {:?} in all",
        sealed.len(),
        started.elapsed()
    );
}

/// A local-key tenant with two older bindings, the second one's key disabled too early: the
/// re-key is refused before anything moves (not even the first binding's key, whose KMS
/// answers), the CLI exits 3 naming the old key, the status and the store are as before, and
/// no binding is revoked. Enabled again, the same command goes through; the customer disables
/// both old keys and everything reads (the "as a new user would").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_old_key_refuses_the_rekey_by_name_and_nothing_changes() {
    let env = [("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "0")];
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_in(data.path(), &env);
    let data_dir = data.path().to_str().unwrap().to_owned();
    let key = |verb: &str, name: &str| {
        cli_ok(&server, &["key", verb, name, "--data-dir", &data_dir]);
    };
    cli_ok(&server, &["tenant", "create", "acme"]);
    cli_ok(
        &server,
        &["tenant", "register-key", "acme", "--local-key", "default"],
    );
    let mut sealed = seal_all(&server, "acme", &["conv-1", "conv-2"]).await;
    for name in ["k2", "k3"] {
        key("create", name);
        cli_ok(
            &server,
            &["tenant", "register-key", "acme", "--local-key", name],
        );
        sealed.extend(seal_all(&server, "acme", &["conv-1", name]).await);
    }
    key("disable", "k2");

    let status = || cli_ok(&server, &["tenant", "rekey", "acme", "--status", "--json"]);
    let before = status();
    let store = SqliteStore::open_read_only(&server.database())
        .await
        .unwrap();
    let domain = support::domain_state(&store).await;
    let seq = store.audit_head().await.unwrap().seq;

    let (code, out, err) = server.cli_code(&["tenant", "rekey", "acme"], b"");
    assert_eq!(code, Some(3), "{err}");
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    assert!(err.contains("KEY_REFUSED"), "{err}");
    assert!(err.contains("old key local k2 (binding 2)"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(
        !err.contains("Stopped after moving"),
        "nothing moved: {err}"
    );

    assert_eq!(status(), before, "GetRekeyStatus changed");
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();
    assert_eq!(before["tenant_keys_remaining"], 2);
    assert_eq!(
        support::domain_state(&store).await,
        domain,
        "the store changed"
    );
    let types = support::audit_types_since(&store, seq).await;
    for kind in [
        "tenant_key_rewrapped",
        "kek_binding_retired",
        "revocation_state_changed",
    ] {
        assert!(!types.iter().any(|t| t == kind), "{kind} in {types:?}");
    }
    // A re-key's refusal is not a revocation: every binding still reads active.
    let tenant = get_tenant(&server, "acme").await;
    assert!(
        tenant
            .previous_keys
            .iter()
            .all(|b| b.state() == pb::KekState::Active),
        "{tenant:?}"
    );

    // Enabled again: the same command moves both older tenant keys.
    key("enable", "k2");
    let out = cli_ok(&server, &["tenant", "rekey", "acme"]);
    assert!(
        out.starts_with(
            "Re-keyed tenant acme: moved 2 tenant keys under binding 3 (local k3); retired 2 older bindings.\n"
        ),
        "{out}"
    );
    assert_eq!(
        records(&server.database(), "acme", "tenant_key_rewrapped")
            .await
            .len(),
        2
    );
    key("disable", "default");
    key("disable", "k2");
    drop(store);
    drop(server);
    let server = Server::start_in(data.path(), &env);
    assert_all_open(&server, &sealed).await;
}

/// `keyward tenant set-policy acme --auto-rekey`, then a new key: the background re-key moves
/// the data by itself. The first time the old key is disabled: the scheduled re-key stops,
/// `GetRekeyStatus` says why (naming the old key), and nothing moves; enabled again and the
/// policy set again (which wakes it), it finishes. Its audit records name the actor
/// `scheduled-rekey`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduled_rekey_moves_the_data_after_a_new_key_and_says_why_it_stopped() {
    let env = [("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "0")];
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_in(data.path(), &env);
    let data_dir = data.path().to_str().unwrap().to_owned();
    let key = |verb: &str, name: &str| {
        cli_ok(&server, &["key", verb, name, "--data-dir", &data_dir]);
    };
    server.onboard("acme").await;
    let mut sealed = seal_all(&server, "acme", &["conv-1", "conv-2", "conv-3"]).await;
    cli_ok(&server, &["tenant", "set-policy", "acme", "--auto-rekey"]);
    assert!(get_tenant(&server, "acme").await.policy.unwrap().auto_rekey);

    // The old key disabled too early: the scheduled re-key (woken by the registration) stops.
    key("disable", "default");
    key("create", "k2");
    let registered = Instant::now();
    cli_ok(
        &server,
        &["tenant", "register-key", "acme", "--local-key", "k2"],
    );
    let stopped = bound::eventually(registered, bound::push(), || async {
        let s = rekey_status(&server, "acme").await;
        if s.last_error.is_empty() {
            Err(format!("no error yet: {s:?}"))
        } else {
            Ok(s)
        }
    })
    .await;
    assert!(
        stopped
            .last_error
            .contains("old key local default (binding 1)"),
        "{stopped:?}"
    );
    assert!(!stopped.done);
    assert_eq!(stopped.tenant_keys_remaining, 1);
    let text = cli_ok(&server, &["tenant", "rekey", "acme", "--status"]);
    assert!(
        text.contains("  the scheduled re-key last stopped: "),
        "{text}"
    );
    assert!(
        records(&server.database(), "acme", "tenant_key_rewrapped")
            .await
            .is_empty()
    );

    // Enabled again; setting the policy again wakes the scheduled re-key: it finishes.
    key("enable", "default");
    let woken = Instant::now();
    cli_ok(&server, &["tenant", "set-policy", "acme", "--auto-rekey"]);
    let done = bound::eventually(woken, bound::push(), || async {
        let s = rekey_status(&server, "acme").await;
        if s.done { Ok(s) } else { Err(s) }
    })
    .await;
    eprintln!(
        "scheduled re-key done {:?} after it was woken",
        woken.elapsed()
    );
    assert!(done.last_error.is_empty(), "{done:?}");
    assert_eq!(
        done.retired_bindings
            .iter()
            .map(|b| (b.binding_id, b.state()))
            .collect::<Vec<_>>(),
        [(1, pb::KekState::Retired)]
    );
    sealed.extend(seal_all(&server, "acme", &["conv-1"]).await);

    let db = server.database();
    let moved = records(&db, "acme", "tenant_key_rewrapped").await;
    let retired = records(&db, "acme", "kek_binding_retired").await;
    assert!(
        matches!(
            &moved[..],
            [AuditEvent::TenantKeyRewrapped { actor, from_binding_id: 1, to_binding_id: 2, .. }]
                if actor == "scheduled-rekey"
        ),
        "{moved:#?}"
    );
    assert!(
        matches!(
            &retired[..],
            [AuditEvent::KekBindingRetired { actor, binding_id: 1, to_binding_id: 2, tenant_keys: 2, deks: 3, .. }]
                if actor == "scheduled-rekey"
        ),
        "{retired:#?}"
    );

    // The old key goes for good; after a restart everything reads.
    key("disable", "default");
    drop(server);
    let server = Server::start_in(data.path(), &env);
    assert_all_open(&server, &sealed).await;
}
