//! `keyward-bench economy`: what Keyward costs the customer's KMS (issue #7, scenario 4).
//!
//! All against the AWS KMS emulator (moto), Keyward in process on 127.0.0.1, configuration
//! defaults (cache TTL 300 s; rotation at 2^20 messages / 1 GiB / 24 h), the key-state monitor
//! off (its canary unwraps are a fixed cost per tenant and interval, reported separately).
//!
//! 1. Cold path: the first decrypt of a cold tenant (a fresh server over the same store) against
//!    the bare KMS round trip it contains (the same SDK `Decrypt` of the same tenant key).
//! 2. Single flight: 64 concurrent first decrypts of one cold tenant, KMS unwraps counted.
//! 3. KMS calls per operation for 1, 100 and 10,000 tenants and for one tenant with 10,000
//!    scopes: a bounded closed-loop Encrypt + Decrypt load on a freshly started (cold) server,
//!    with every KMS call counted exactly (`Keyring::stats`), then the steady state at the
//!    default TTL extrapolated from the measured rate (one unwrap per active tenant per TTL).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use keyward_envelope::{KeyId, TenantId};
use keyward_kms::{KeyProvider, KeyRef, ProviderKind, Purpose, WrapContext};
use keyward_proto::v1::{self as pb, crypto_service_client::CryptoServiceClient};
use keyward_server::Providers;
use keyward_store::NewKekBinding;
use keyward_test_support::aws::MotoServer;

use crate::harness::{self, Server, Until};

/// The default cache TTL (docs/configuration.md); the model's period.
const TTL_SECONDS: f64 = 300.0;
/// Concurrent client loops, over 4 connections (as the suite's gRPC cells).
const CONCURRENCY: usize = 32;

struct Sizes {
    many_tenants: u64,
    some_tenants: u64,
    scopes: u64,
    round_trips: u64,
    cold_samples: u64,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                many_tenants: 20,
                some_tenants: 4,
                scopes: 20,
                round_trips: 500,
                cold_samples: 3,
            }
        } else {
            Sizes {
                many_tenants: 10_000,
                some_tenants: 100,
                scopes: 10_000,
                round_trips: 100_000,
                cold_samples: 40,
            }
        }
    }
}

pub(crate) struct Report {
    pub(crate) text: String,
    pub(crate) json: serde_json::Value,
}

struct Cell {
    name: String,
    tenants: u64,
    scopes: u64,
    ops: u64,
    elapsed: Duration,
    kms_calls: u64,
    deks_created: u64,
    /// The same load repeated on the warm server: its rate and KMS calls (expected 0).
    warm_ops_per_s: f64,
    warm_kms_calls: u64,
}

impl Cell {
    fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    /// Measured: KMS calls per million operations in this bounded run (cold start included).
    fn measured_per_million(&self) -> f64 {
        self.kms_calls as f64 * 1e6 / self.ops as f64
    }
    /// Steady state at the default TTL: each active tenant's key is unwrapped once per TTL, at
    /// the warm pass's measured rate; never more than one call per operation.
    fn steady_per_million(&self) -> f64 {
        let ops_per_ttl = self.warm_ops_per_s * TTL_SECONDS;
        (self.tenants as f64 * 1e6 / ops_per_ttl).min(1e6)
    }
    fn hit_ratio(&self) -> f64 {
        1.0 - self.kms_calls as f64 / self.ops as f64
    }
}

fn tenant_name(i: u64) -> String {
    format!("t{i:05}")
}

pub(crate) async fn run(quick: bool) -> anyhow::Result<Report> {
    let sizes = Sizes::new(quick);
    let moto = MotoServer::start();
    let aws: Arc<dyn KeyProvider> = Arc::new(moto.provider().await);
    let providers = || Providers::default().with(aws.clone());
    let key_arn = moto.create_symmetric_key().await;
    let kek = KeyRef::new(ProviderKind::AwsKms, key_arn.clone());
    let dir = tempfile::tempdir()?;
    let no_monitor = |c: &mut keyward_server::Config| c.revocation.monitor_interval_seconds = 0;

    // Populate: the tenants, bound to the emulator key straight through the store (one
    // GenerateDataKey per tenant; registration through the API would add a describe and a
    // verifying unwrap per tenant, which this scenario does not measure).
    let server = Server::start(dir.path(), providers(), no_monitor).await?;
    let mut names: Vec<String> = (0..sizes.many_tenants).map(tenant_name).collect();
    names.push("cold".to_owned());
    let populate_start = Instant::now();
    eprintln!("economy: populating {} tenants", names.len());
    {
        let keyring = server.keyring().clone();
        let store = server.open_store().await?;
        let (aws, kek, names) = (aws.clone(), kek.clone(), Arc::new(names.clone()));
        harness::bounded(names.len() as u64, 16, move |i| {
            let (keyring, store, aws, kek, names) = (
                keyring.clone(),
                store.clone(),
                aws.clone(),
                kek.clone(),
                names.clone(),
            );
            async move {
                let tenant = TenantId::try_from(names[i as usize].as_str())?;
                store.create_tenant(&tenant, "", &|_| Vec::new()).await?;
                let tenant_key_id = KeyId::generate()?;
                let ctx = WrapContext::new(&tenant, &tenant_key_id, Purpose::TenantKey);
                let (_key, wrapped) = aws.generate(&kek, &ctx).await?;
                store
                    .bind_kek(
                        // Tagged as the keyring tags what it registers, or it refuses the key.
                        keyring.with_tenant_key_mac(NewKekBinding {
                            tenant,
                            provider: ProviderKind::AwsKms,
                            key_ref: kek.id().to_owned(),
                            tenant_key_id,
                            wrapped_tenant_key: wrapped,
                            tenant_key_mac: None,
                        }),
                        &|_| Vec::new(),
                    )
                    .await?;
                anyhow::Ok(())
            }
        })
        .await?;
    }
    let populate = populate_start.elapsed();
    // One envelope per cold-latency tenant and for the single-flight tenant.
    let payload = Arc::new(vec![0x42u8; 1024]);
    let conn = harness::channels(server.addr(), 1).await?.remove(0);
    let mut crypto = CryptoServiceClient::new(conn);
    let mut envelopes = Vec::new();
    for tenant in (0..sizes.cold_samples)
        .map(tenant_name)
        .chain(["cold".to_owned()])
    {
        let envelope = crypto
            .encrypt(pb::EncryptRequest {
                tenant_id: tenant.clone(),
                plaintext: payload.to_vec(),
                encryption_context: Default::default(),
                scope: String::new(),
                justification: None,
            })
            .await?
            .into_inner()
            .envelope;
        envelopes.push((tenant, envelope));
    }
    server.stop().await?;
    let Some((_, cold_envelope)) = envelopes.pop() else {
        anyhow::bail!("no envelope for the single-flight tenant");
    };

    // 1 and 2 on a fresh (cold) server.
    eprintln!("economy: cold path and single flight");
    let server = Server::start(dir.path(), providers(), no_monitor).await?;
    let store = server.open_store().await?;
    let conn = harness::channels(server.addr(), 1).await?.remove(0);
    let mut crypto = CryptoServiceClient::new(conn.clone());
    let (mut bare, mut cold, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    for (tenant, envelope) in &envelopes {
        let tenant_id = TenantId::try_from(tenant.as_str())?;
        let binding = store
            .active_binding(&tenant_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no binding"))?;
        let record = store
            .get_tenant_key(&tenant_id, &binding.tenant_key_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no tenant key"))?;
        let ctx = WrapContext::new(&tenant_id, &binding.tenant_key_id, Purpose::TenantKey);
        let t = Instant::now();
        aws.unwrap(&kek, &record.wrapped, &ctx).await?;
        bare.push(t.elapsed().as_micros() as u64);
        for out in [&mut cold, &mut warm] {
            let t = Instant::now();
            crypto
                .decrypt(pb::DecryptRequest {
                    tenant_id: tenant.clone(),
                    envelope: envelope.clone(),
                    encryption_context: Default::default(),
                    justification: None,
                })
                .await?;
            out.push(t.elapsed().as_micros() as u64);
        }
    }
    let cold_unwraps = server.keyring().stats().kek_unwraps;
    anyhow::ensure!(
        cold_unwraps == envelopes.len() as u64,
        "expected one unwrap per cold tenant, counted {cold_unwraps}"
    );
    let before = server.keyring().stats().kek_unwraps;
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let mut client = CryptoServiceClient::new(conn.clone());
        let envelope = cold_envelope.clone();
        tasks.push(tokio::spawn(async move {
            client
                .decrypt(pb::DecryptRequest {
                    tenant_id: "cold".into(),
                    envelope,
                    encryption_context: Default::default(),
                    justification: None,
                })
                .await
                .map(drop)
        }));
    }
    for t in tasks {
        t.await??;
    }
    let single_flight_calls = server.keyring().stats().kek_unwraps - before;
    server.stop().await?;

    // 3: each cell on a freshly started server (every tenant cold).
    let cells_spec: Vec<(String, u64, u64)> = vec![
        ("1 tenant".to_owned(), 1, 1),
        (
            format!("{} tenants", sizes.some_tenants),
            sizes.some_tenants,
            1,
        ),
        (
            format!("{} tenants", sizes.many_tenants),
            sizes.many_tenants,
            1,
        ),
        (
            format!("1 tenant, {} scopes", sizes.scopes),
            1,
            sizes.scopes,
        ),
    ];
    let mut cells = Vec::new();
    for (name, tenants, scopes) in cells_spec {
        eprintln!("economy: {name}");
        let server = Server::start(dir.path(), providers(), no_monitor).await?;
        let conns = harness::channels(server.addr(), 4).await?;
        let load = harness::round_trips(
            &conns,
            CONCURRENCY,
            Until::RoundTrips(sizes.round_trips),
            payload.clone(),
            Arc::new(move |n| {
                let tenant = tenant_name(n % tenants);
                let scope = if scopes == 1 {
                    String::new()
                } else {
                    format!("s{}", (n / tenants) % scopes)
                };
                (tenant, scope)
            }),
        )
        .await?;
        let stats = server.keyring().stats();
        // The same load again on the now warm server: the sustained rate for the steady state.
        let warm = harness::round_trips(
            &conns,
            CONCURRENCY,
            Until::RoundTrips(sizes.round_trips),
            payload.clone(),
            Arc::new(move |n| {
                let tenant = tenant_name(n % tenants);
                let scope = if scopes == 1 {
                    String::new()
                } else {
                    format!("s{}", (n / tenants) % scopes)
                };
                (tenant, scope)
            }),
        )
        .await?;
        let warm_calls = server.keyring().stats().kek_unwraps - stats.kek_unwraps;
        server.stop().await?;
        cells.push(Cell {
            warm_ops_per_s: warm.ops() as f64 / warm.elapsed.as_secs_f64(),
            warm_kms_calls: warm_calls,
            name,
            tenants,
            scopes,
            ops: load.ops(),
            elapsed: load.elapsed,
            kms_calls: stats.kek_unwraps,
            deks_created: stats.deks_created,
        });
    }
    drop(moto);

    let (bare_p50, bare_p90) = harness::median_p90(&mut bare);
    let (cold_p50, cold_p90) = harness::median_p90(&mut cold);
    let (warm_p50, warm_p90) = harness::median_p90(&mut warm);
    let mut text = String::new();
    text.push_str(&format!(
        "KMS economy (AWS KMS emulator; cache TTL 300 s, rotation 2^20 messages / 1 GiB / 24 h; \
         monitor off; Encrypt + Decrypt of 1 KiB over gRPC, {CONCURRENCY} loops on 4 connections)\n"
    ));
    text.push_str(&format!(
        "populate: {} tenants bound through the store in {:.1} s\n\n",
        names.len(),
        populate.as_secs_f64()
    ));
    text.push_str(
        "| workload | ops (cold server) | ops/s (cold server) | KMS calls (counted) | KMS calls per 1M ops, this run | \
         ops served without a KMS call | DEKs created | warm pass: ops/s, KMS calls | \
         KMS calls per 1M ops, steady state at TTL 300 s (extrapolated) | ops per KMS call, steady state |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for c in &cells {
        let steady = c.steady_per_million();
        text.push_str(&format!(
            "| {} | {} | {:.0} | {} | {:.1} | {:.4} | {} | {:.0}, {} | {:.2} | {:.0} |\n",
            c.name,
            c.ops,
            c.ops_per_s(),
            c.kms_calls,
            c.measured_per_million(),
            c.hit_ratio(),
            c.deks_created,
            c.warm_ops_per_s,
            c.warm_kms_calls,
            steady,
            1e6 / steady,
        ));
    }
    text.push_str(&format!(
        "\nCold path ({} tenants, one at a time, concurrency 1): bare KMS Decrypt (SDK -> emulator) \
         p50/p90 {bare_p50}/{bare_p90} µs; Keyward cold decrypt {cold_p50}/{cold_p90} µs \
         (cold - bare at p50: {} µs); warm decrypt {warm_p50}/{warm_p90} µs\n",
        bare.len(),
        cold_p50 as i64 - bare_p50 as i64
    ));
    text.push_str(&format!(
        "Single flight: 64 concurrent first decrypts of one cold tenant -> {single_flight_calls} KMS unwrap(s)\n"
    ));
    text.push_str(
        "Key-state monitor (off above; default 60 s, at most 20 checks/s): one canary unwrap per \
         tenant per interval, whatever the load: min(T / 60, 20) calls/s for T tenants.\n",
    );

    let mut targets: Vec<(String, bool)> = Vec::new();
    if let Some(one) = cells.first() {
        let per_call = 1e6 / one.steady_per_million();
        targets.push((
            format!(
                ">= 100,000 ops per KMS call, one busy tenant at defaults (steady state {per_call:.0}; \
                 this bounded run {:.0})",
                one.ops as f64 / one.kms_calls.max(1) as f64
            ),
            per_call >= 100_000.0,
        ));
    }
    targets.push((
        format!(
            "exactly one KMS call per cold tenant under concurrency (64 decrypts: {single_flight_calls})"
        ),
        single_flight_calls == 1,
    ));
    text.push_str("\nTargets\n");
    for (name, met) in &targets {
        text.push_str(&format!(
            "- [{}] {name}\n",
            if *met { "met" } else { "NOT MET" }
        ));
    }

    let json = serde_json::json!({
        "settings": {"cache_ttl_seconds": 300, "rotation_max_messages": 1u64 << 20,
            "rotation_max_bytes": 1u64 << 30, "rotation_max_age_seconds": 86400,
            "monitor": "off", "concurrency": CONCURRENCY, "payload_bytes": 1024},
        "populate": {"tenants": names.len(), "seconds": populate.as_secs_f64()},
        "cells": cells.iter().map(|c| serde_json::json!({
            "workload": c.name, "tenants": c.tenants, "scopes": c.scopes, "ops": c.ops,
            "seconds": c.elapsed.as_secs_f64(), "ops_per_s": c.ops_per_s(),
            "kms_calls": c.kms_calls, "kms_calls_per_million_ops_measured": c.measured_per_million(),
            "kms_calls_per_million_ops_steady_state_extrapolated": c.steady_per_million(),
            "ops_without_kms_call_ratio": c.hit_ratio(), "deks_created": c.deks_created,
            "warm_ops_per_s": c.warm_ops_per_s, "warm_kms_calls": c.warm_kms_calls,
        })).collect::<Vec<_>>(),
        "cold_path": {"samples": bare.len(), "bare_kms_p50_us": bare_p50, "bare_kms_p90_us": bare_p90,
            "cold_decrypt_p50_us": cold_p50, "cold_decrypt_p90_us": cold_p90,
            "warm_decrypt_p50_us": warm_p50, "warm_decrypt_p90_us": warm_p90},
        "single_flight": {"concurrent_decrypts": 64, "kms_unwraps": single_flight_calls},
        "targets": targets.iter().map(|(name, met)| serde_json::json!({"target": name, "met": met})).collect::<Vec<_>>(),
    });
    Ok(Report { text, json })
}
