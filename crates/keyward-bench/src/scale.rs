//! `keyward-bench scale`: Keyward with many tenants and many stored DEKs (issue #7, scenario 5).
//!
//! 1. Populate a SQLite store with `--tenants` tenants (local development KEK) and `--deks` DEKs
//!    (spread evenly, one scope per DEK; each tenant's first scope is "default"), in bulk: rows
//!    written through the store's own connection pool in large transactions, every DEK really
//!    wrapped under its tenant key with Keyward's DEK context, but without the per-row audit
//!    records the API would write (a populate shortcut; the data path never reads them).
//! 2. Server start time over that store.
//! 3. Resident memory per cached DEK, in process: VmRSS after warming one DEK per tenant (the
//!    tenant keys come with them) and after warming every other DEK, through `Keyring::decrypt`.
//! 4. Warm throughput: Encrypt + Decrypt of 1 KiB over gRPC (32 loops, 4 connections), spread
//!    round-robin across every tenant vs one tenant, after a pass that warms every tenant.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use keyward_envelope::{EncryptionContext, KeyId, Sealer, SecretKey, TenantId, wrap_key};
use keyward_kms::{KeyProvider, KeyRef, ProviderKind, Purpose, WrapContext, local::LocalProvider};
use keyward_server::{Config, Providers};
use keyward_store::sqlite::SqliteStore;

use crate::harness::{self, Server, Until};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Tenants in the store.
    #[arg(long, default_value_t = 100_000)]
    tenants: u64,
    /// DEKs in the store (spread evenly over the tenants; at least one per tenant).
    #[arg(long, default_value_t = 1_000_000)]
    deks: u64,
    /// Measured seconds per throughput cell.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// 200 tenants, 2,000 DEKs, 0.2 s cells: the smoke run (its figures mean nothing).
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/scale.json")]
    json: PathBuf,
}

const CONCURRENCY: usize = 32;
/// Rows per populate transaction.
const CHUNK: usize = 20_000;

fn tenant_name(i: u64) -> String {
    format!("t{i:06}")
}

fn scope_name(j: u64) -> String {
    if j == 0 {
        "default".to_owned()
    } else {
        format!("s{j}")
    }
}

/// Keyward's DEK wrap context (keyring.rs `dek_aad`).
fn dek_aad(tenant: &str, scope: &str, id: &KeyId) -> anyhow::Result<Vec<u8>> {
    let map: BTreeMap<String, String> = [
        ("keyward:purpose", "dek".to_owned()),
        ("keyward:tenant", tenant.to_owned()),
        ("keyward:scope", scope.to_owned()),
        ("keyward:dek-id", id.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Ok(EncryptionContext::with_reserved(map)?.canonical_bytes())
}

fn vm_rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/self/status"))
}

/// One small envelope per DEK (tenant index, envelope), to warm the caches with.
type Envelopes = Vec<(u32, Vec<u8>)>;

async fn populate(
    store: &SqliteStore,
    audit_keys: &keyward_server::audit::AuditKeys,
    local: &LocalProvider,
    tenants: u64,
    deks_per_tenant: u64,
) -> anyhow::Result<Envelopes> {
    let kek = KeyRef::new(ProviderKind::Local, keyward_kms::local::DEFAULT_KEY_NAME);
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let ctx = EncryptionContext::empty();
    let mut envelopes = Vec::with_capacity((tenants * deks_per_tenant) as usize);
    let per_chunk = (CHUNK as u64 / deks_per_tenant).max(1);
    let mut first = 0;
    while first < tenants {
        let last = (first + per_chunk).min(tenants);
        let mut tx = store.pool().begin().await?;
        for i in first..last {
            let name = tenant_name(i);
            let tenant = TenantId::try_from(name.as_str())?;
            let tenant_key_id = KeyId::generate()?;
            let (tenant_key, wrapped) = local
                .generate(
                    &kek,
                    &WrapContext::new(&tenant, &tenant_key_id, Purpose::TenantKey),
                )
                .await?;
            let binding = i64::try_from(i)? + 1;
            sqlx::query("INSERT INTO tenants (id, display_name, created_at_ms) VALUES (?, '', ?)")
                .bind(&name)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO kek_bindings (id, tenant_id, provider, key_ref, state, created_at_ms, \
                 deactivated_at_ms, state_changed_at_ms) VALUES (?, ?, 'local', ?, 'active', ?, NULL, ?)",
            )
            .bind(binding)
            .bind(&name)
            .bind(kek.id())
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            // Tagged as the keyring tags what it registers, or the server refuses it (ADR 0007).
            let mac = keyward_server::keyring::tag_tenant_key(
                audit_keys.hasher(),
                &tenant,
                &tenant_key_id,
                kek.kind(),
                kek.id(),
                wrapped.as_bytes(),
            );
            sqlx::query(
                "INSERT INTO tenant_keys (id, tenant_id, binding_id, kek_binding_id, wrapped, created_at_ms, mac) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(tenant_key_id.to_string())
            .bind(&name)
            .bind(binding)
            .bind(binding)
            .bind(wrapped.as_bytes())
            .bind(now)
            .bind(mac)
            .execute(&mut *tx)
            .await?;
            for j in 0..deks_per_tenant {
                let scope = scope_name(j);
                let id = KeyId::generate()?;
                let key = SecretKey::generate()?;
                let wrapped = wrap_key(&tenant_key, &key, &dek_aad(&name, &scope, &id)?)?;
                sqlx::query(
                    "INSERT INTO deks (id, tenant_id, scope, tenant_key_id, wrapped, created_at_ms, \
                     retired_at_ms, messages, bytes) VALUES (?, ?, ?, ?, ?, ?, NULL, 0, 0)",
                )
                .bind(id.to_string())
                .bind(&name)
                .bind(&scope)
                .bind(tenant_key_id.to_string())
                .bind(wrapped.as_bytes())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                envelopes.push((
                    u32::try_from(i)?,
                    Sealer::new(&key, &tenant, &id).seal(&ctx, b"x")?,
                ));
            }
        }
        tx.commit().await?;
        first = last;
    }
    Ok(envelopes)
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let (tenants, deks, seconds) = if args.quick {
        (200, 2_000, 0.2)
    } else {
        (args.tenants.max(1), args.deks, args.seconds)
    };
    let deks_per_tenant = (deks / tenants).max(1);
    let deks = deks_per_tenant * tenants;
    let dir = tempfile::tempdir()?;
    let mut config = harness::server_config(dir.path())?;
    config.revocation.monitor_interval_seconds = 0;
    let settings = config.resolve()?;
    std::fs::create_dir_all(dir.path())?;

    eprintln!("scale: populating {tenants} tenants, {deks} DEKs");
    let t = Instant::now();
    let local = LocalProvider::open(&settings.local_kms_dir)?;
    let store = SqliteStore::open(&settings.database_path).await?;
    // The audit keys the server will load: its identifier key tags the tenant keys.
    let audit_keys = keyward_server::audit::AuditKeys::load_or_create(&settings.audit_dir)?;
    let envelopes = populate(&store, &audit_keys, &local, tenants, deks_per_tenant).await?;
    store.close().await;
    let populate_time = t.elapsed();
    let db_bytes = std::fs::metadata(&settings.database_path)?.len()
        + std::fs::metadata(settings.database_path.with_extension("db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);

    let providers = || -> anyhow::Result<Providers> {
        Ok(Providers::default().with(Arc::new(LocalProvider::open(&settings.local_kms_dir)?)))
    };
    let no_monitor = |c: &mut Config| c.revocation.monitor_interval_seconds = 0;
    // Start time: a first start (opens the populated store, creates the audit keys), stopped,
    // then the measured start of a replica over an existing deployment.
    Server::start(dir.path(), providers()?, no_monitor)
        .await?
        .stop()
        .await?;
    let server = Server::start(dir.path(), providers()?, no_monitor).await?;
    let start_time = server.start_time;

    // Memory: one DEK per tenant (with its tenant key), then the rest.
    eprintln!("scale: warming {deks} DEKs in process");
    let envelopes = Arc::new(envelopes);
    let names: Arc<Vec<TenantId>> = Arc::new(
        (0..tenants)
            .map(|i| TenantId::try_from(tenant_name(i).as_str()))
            .collect::<Result<_, _>>()?,
    );
    let rss_before = vm_rss_kib()?;
    let warm = |indices: Arc<Vec<usize>>| {
        let (keyring, envelopes, names) =
            (server.keyring().clone(), envelopes.clone(), names.clone());
        harness::bounded(indices.len() as u64, 8, move |n| {
            let (keyring, envelopes, names, indices) = (
                keyring.clone(),
                envelopes.clone(),
                names.clone(),
                indices.clone(),
            );
            async move {
                let (tenant, envelope) = &envelopes[indices[n as usize]];
                keyring
                    .decrypt(
                        &names[*tenant as usize],
                        envelope,
                        &EncryptionContext::empty(),
                    )
                    .await?;
                anyhow::Ok(())
            }
        })
    };
    let per_tenant = deks_per_tenant as usize;
    let t = Instant::now();
    warm(Arc::new(
        (0..tenants as usize).map(|i| i * per_tenant).collect(),
    ))
    .await?;
    let rss_tenants = vm_rss_kib()?;
    warm(Arc::new(
        (0..envelopes.len())
            .filter(|i| i % per_tenant != 0)
            .collect(),
    ))
    .await?;
    let warm_time = t.elapsed();
    let rss_all = vm_rss_kib()?;
    let rest = deks - tenants;
    let per_dek = if rest > 0 {
        (rss_all.saturating_sub(rss_tenants)) as f64 * 1024.0 / rest as f64
    } else {
        0.0
    };
    let per_tenant_bytes =
        (rss_tenants.saturating_sub(rss_before)) as f64 * 1024.0 / tenants as f64;

    // Throughput: warm every tenant's active DEK, then spread vs one, twice, best of each.
    eprintln!("scale: warm throughput");
    let conns = harness::channels(server.addr(), 4).await?;
    let payload = Arc::new(vec![0x42u8; 1024]);
    let spread: harness::Pick = Arc::new(move |n| (tenant_name(n % tenants), String::new()));
    let one: harness::Pick = Arc::new(|_| (tenant_name(0), String::new()));
    harness::round_trips(
        &conns,
        CONCURRENCY,
        Until::RoundTrips(tenants),
        payload.clone(),
        spread.clone(),
    )
    .await?;
    let cell = Until::Elapsed(Duration::from_secs_f64(seconds));
    let (mut spread_rps, mut one_rps) = (0f64, 0f64);
    let (mut spread_p99, mut one_p99) = (0, 0);
    for _ in 0..2 {
        let s = harness::round_trips(&conns, CONCURRENCY, cell, payload.clone(), spread.clone())
            .await?;
        if s.round_trips_per_s() > spread_rps {
            spread_rps = s.round_trips_per_s();
            spread_p99 = s.pct(0.99);
        }
        let o =
            harness::round_trips(&conns, CONCURRENCY, cell, payload.clone(), one.clone()).await?;
        if o.round_trips_per_s() > one_rps {
            one_rps = o.round_trips_per_s();
            one_p99 = o.pct(0.99);
        }
    }
    let stats = server.keyring().stats();
    server.stop().await?;

    let ratio = spread_rps / one_rps;
    let met = ratio >= 0.9;
    let text = format!(
        "Scale: {tenants} tenants, {deks} stored DEKs ({deks_per_tenant} per tenant), SQLite, local KEK\n\
         | measure | value |\n|---|---|\n\
         | populate (bulk, {CHUNK} rows per transaction) | {:.1} s |\n\
         | database size | {:.0} MiB |\n\
         | server start over that store | {} ms |\n\
         | warm all {deks} DEKs in process (Keyring::decrypt, 8 tasks) | {:.1} s |\n\
         | VmRSS: start / one DEK per tenant / all DEKs | {} / {} / {} MiB |\n\
         | resident memory per cached tenant (tenant key + its first DEK) | {:.0} B |\n\
         | resident memory per further cached DEK | {:.0} B |\n\
         | Encrypt+Decrypt 1 KiB x{CONCURRENCY}, spread over {tenants} tenants | {:.0} round trips/s (p99 {} µs) |\n\
         | Encrypt+Decrypt 1 KiB x{CONCURRENCY}, one tenant | {:.0} round trips/s (p99 {} µs) |\n\
         | spread / one | {:.2} |\n\
         | tenant-key unwraps (local KEK) / DEKs created during the run | {} / {} |\n\n\
         Targets\n- [{}] spread across {tenants} tenants within 10 % of one tenant (got {ratio:.2})\n",
        populate_time.as_secs_f64(),
        db_bytes as f64 / (1 << 20) as f64,
        start_time.as_millis(),
        warm_time.as_secs_f64(),
        rss_before / 1024,
        rss_tenants / 1024,
        rss_all / 1024,
        per_tenant_bytes,
        per_dek,
        spread_rps,
        spread_p99,
        one_rps,
        one_p99,
        ratio,
        stats.kek_unwraps,
        stats.deks_created,
        if met { "met" } else { "NOT MET" },
    );
    println!("{text}");
    harness::write_json(
        &args.json,
        &serde_json::json!({
            "tenants": tenants, "deks": deks, "deks_per_tenant": deks_per_tenant,
            "populate_seconds": populate_time.as_secs_f64(), "database_bytes": db_bytes,
            "start_ms": start_time.as_millis() as u64,
            "warm_seconds": warm_time.as_secs_f64(),
            "vm_rss_kib": {"start": rss_before, "one_dek_per_tenant": rss_tenants, "all_deks": rss_all},
            "bytes_per_cached_tenant": per_tenant_bytes, "bytes_per_cached_dek": per_dek,
            "spread_round_trips_per_s": spread_rps, "spread_p99_us": spread_p99,
            "one_tenant_round_trips_per_s": one_rps, "one_tenant_p99_us": one_p99,
            "spread_over_one": ratio, "concurrency": CONCURRENCY, "payload_bytes": 1024,
            "kek_unwraps": stats.kek_unwraps, "deks_created": stats.deks_created,
            "targets": [{"target": "spread within 10 % of one tenant", "met": met}],
        }),
    )
}
