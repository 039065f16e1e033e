//! `AwsKmsProvider` (the unmodified AWS SDK) through the fault-injecting proxy in front of moto:
//! per-attempt deadlines fire on a stalled KMS, the operation budget caps a call whatever the
//! attempts left, retries stop at the configured attempts, throttling bursts are retried after
//! jittered backoff (gaps measured at the proxy), and resets / 5xx answers are outages
//! (`Unavailable`), never revocations.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stderr,
    reason = "test code fails loudly on purpose; measurements are reported on stderr"
)]

use std::time::{Duration, Instant};

use keyward_envelope::{KeyId, TenantId, WrappedKey};
use keyward_kms::{ErrorKind, KeyProvider, KeyRef, ProviderError, Purpose, WrapContext};
use keyward_kms_aws::{AwsKmsConfig, AwsKmsProvider};
use keyward_test_support::aws::{Fault, FaultProxy, MotoServer, key_ref};

fn ctx() -> WrapContext {
    WrapContext::new(
        &TenantId::try_from("acme").unwrap(),
        &KeyId::from_bytes([0x42; 16]),
        Purpose::TenantKey,
    )
}

/// moto, the proxy in front of it, a key (created on moto directly: not counted) and a
/// provider whose KMS endpoint is the proxy.
struct Rig {
    proxy: FaultProxy,
    provider: AwsKmsProvider,
    kek: KeyRef,
    config: AwsKmsConfig,
    _moto: MotoServer,
}

async fn rig(config: AwsKmsConfig) -> Rig {
    let moto = MotoServer::start();
    let proxy = FaultProxy::start(&moto.endpoint);
    let kek = key_ref(&moto.create_symmetric_key().await);
    let config = AwsKmsConfig {
        endpoint_url: Some(proxy.endpoint.clone()),
        sts_endpoint_url: Some(moto.endpoint.clone()),
        ..config
    };
    let provider = AwsKmsProvider::with_sdk_config(config.clone(), moto.sdk_config().await)
        .await
        .unwrap();
    Rig {
        proxy,
        provider,
        kek,
        config,
        _moto: moto,
    }
}

fn fast(max_attempts: u32) -> AwsKmsConfig {
    AwsKmsConfig {
        attempt_timeout_ms: 300,
        connect_timeout_ms: 300,
        max_attempts,
        initial_backoff_ms: 50,
        max_backoff_ms: 200,
        operation_timeout_ms: 5000,
        ..AwsKmsConfig::default()
    }
}

#[track_caller]
fn err<T>(r: Result<T, ProviderError>) -> ProviderError {
    match r {
        Ok(_) => panic!("expected an error, got Ok"),
        Err(e) => e,
    }
}

#[track_caller]
fn outage(e: &ProviderError) {
    assert!(
        matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "an outage must be unavailable or timeout, got {e}"
    );
    assert!(!e.is_revocation_signal(), "{e}");
    assert!(e.is_transient(), "{e}");
}

#[tokio::test]
async fn a_stall_fires_the_attempt_timeout_and_retries_stop_at_max_attempts() {
    let r = rig(fast(3)).await;
    r.proxy.set(Fault::Stall);
    let wrapped = WrappedKey::new(vec![1; 64]);
    let started = Instant::now();
    let e = err(r.provider.unwrap(&r.kek, &wrapped, &ctx()).await);
    let elapsed = started.elapsed();
    eprintln!("stall: {e} after {elapsed:?}");
    outage(&e);
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    // Exactly max_attempts: the retry quota is the provider's own (500 tokens, 10 per retry
    // after a timeout), so nothing else can refuse these two retries, and nothing adds a fourth.
    assert_eq!(r.proxy.count_op("Decrypt"), 3, "{:?}", r.proxy.seen());
    // Every attempt waited its full 300 ms deadline (the proxy never answers), and the call
    // ended when the attempts ran out, not at the 5 s operation budget: no real-time upper
    // bound tighter than that is needed (the count above is what says "stops at the maximum").
    let deadline = Duration::from_millis(r.config.attempt_timeout_ms);
    assert!(elapsed >= deadline * 3, "{elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(r.config.operation_timeout_ms),
        "{elapsed:?}"
    );
    // Stalls are not revocations: the key works as soon as the KMS answers again.
    r.proxy.set(Fault::PassThrough);
    let (key, wrapped) = r.provider.generate(&r.kek, &ctx()).await.unwrap();
    let back = r.provider.unwrap(&r.kek, &wrapped, &ctx()).await.unwrap();
    assert_eq!(back.expose_secret(), key.expose_secret());
}

#[tokio::test]
async fn the_operation_budget_caps_a_call_whatever_attempts_remain() {
    // 350 ms attempts with ~no backoff (1 ms) in a 1000 ms budget: attempts start at 0, ≥ 351
    // and ≥ 702 ms; a fourth could not start before 1053 ms, after the budget. Delays on a
    // loaded machine only push starts later, so "at most 3" is certain and "3" has 298 ms of
    // slack.
    let r = rig(AwsKmsConfig {
        attempt_timeout_ms: 350,
        max_attempts: 10,
        operation_timeout_ms: 1000,
        initial_backoff_ms: 1,
        max_backoff_ms: 1,
        ..fast(10)
    })
    .await;
    r.proxy.set(Fault::Stall);
    let started = Instant::now();
    let e = err(r.provider.describe(&r.kek).await);
    let elapsed = started.elapsed();
    eprintln!("budget: {e} after {elapsed:?}");
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    outage(&e);
    assert!(elapsed >= Duration::from_millis(1000), "{elapsed:?}");
    // Well before the 10 × 350 ms the attempts alone would take.
    assert!(elapsed < Duration::from_millis(3500), "{elapsed:?}");
    assert_eq!(r.proxy.count_op("DescribeKey"), 3, "{:?}", r.proxy.seen());
}

#[tokio::test]
async fn throttling_is_retried_after_jittered_backoff_and_attempts_are_bounded() {
    let initial = Duration::from_millis(200);
    let r = rig(AwsKmsConfig {
        initial_backoff_ms: 200,
        max_backoff_ms: 1000,
        ..fast(3)
    })
    .await;
    let (_, wrapped) = r.provider.generate(&r.kek, &ctx()).await.unwrap();

    // Twelve calls, each throttled once and then let through: each is a pair of requests at the
    // proxy whose gap is the SDK's backoff (uniform in [0, 200 ms]) plus a round trip.
    let mut gaps = Vec::new();
    for _ in 0..12 {
        r.proxy.clear();
        r.proxy.fault_next(1, Fault::Throttle);
        r.provider.unwrap(&r.kek, &wrapped, &ctx()).await.unwrap();
        let seen = r.proxy.seen();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].fault, Fault::Throttle);
        assert_eq!(seen[1].fault, Fault::PassThrough);
        gaps.push(seen[1].at - seen[0].at);
    }
    gaps.sort();
    eprintln!("throttle backoff gaps: {gaps:?}");
    let mean = gaps.iter().sum::<Duration>() / 12;
    // Spread in time, not back to back: the mean of 12 uniform [0, 200 ms] draws is below 30 ms
    // with probability < 1e-5 (Irwin–Hall).
    assert!(mean > Duration::from_millis(30), "mean gap {mean:?}");
    // Drawn from the configured first backoff, not the 1000 ms maximum: every draw is at most
    // 200 ms, so the median gap is under 250 ms unless more than half the round trips to
    // 127.0.0.1 took 50 ms; drawn from [0, 1000 ms] it would be under 250 ms with probability
    // 0.014. The median, not the largest gap, so that one request a loaded machine delays
    // cannot fail it.
    assert!(
        gaps[6] < initial + Duration::from_millis(50),
        "median gap {:?} of {gaps:?}",
        gaps[6]
    );
    // Jittered: not all the same.
    assert!(
        gaps[11] - gaps[0] > Duration::from_millis(10),
        "no jitter: {gaps:?}"
    );

    // A throttling burst longer than the attempts: the call fails Throttled after max_attempts.
    r.proxy.clear();
    r.proxy.set(Fault::Throttle);
    let e = err(r.provider.unwrap(&r.kek, &wrapped, &ctx()).await);
    assert_eq!(e.kind(), ErrorKind::Throttled, "{e}");
    assert!(e.is_transient() && !e.is_revocation_signal());
    // Exactly max_attempts (throttling retries cost 5 of the provider's own 500 tokens).
    assert_eq!(r.proxy.count_op("Decrypt"), 3, "{:?}", r.proxy.seen());
}

#[tokio::test]
async fn resets_and_server_errors_are_unavailable_never_refused() {
    let r = rig(fast(2)).await;
    let (key, wrapped) = r.provider.generate(&r.kek, &ctx()).await.unwrap();
    for fault in [
        Fault::Reset,
        Fault::ServerError(500),
        Fault::ServerError(502),
        Fault::ServerError(503),
    ] {
        r.proxy.set(fault);
        r.proxy.clear();
        let unwrap = err(r.provider.unwrap(&r.kek, &wrapped, &ctx()).await);
        let describe = err(r.provider.describe(&r.kek).await);
        let generate = err(r.provider.generate(&r.kek, &ctx()).await);
        for e in [&unwrap, &describe, &generate] {
            eprintln!("{}: {e}", fault.name());
            assert_eq!(e.kind(), ErrorKind::Unavailable, "{}: {e}", fault.name());
            outage(e);
        }
        // Retried (transient), exactly max_attempts per call.
        for op in ["Decrypt", "DescribeKey", "GenerateDataKey"] {
            let n = r.proxy.count_op(op);
            assert_eq!(n, 2, "{}: {n} {op} attempts", fault.name());
        }
    }
    r.proxy.set(Fault::PassThrough);
    let back = r.provider.unwrap(&r.kek, &wrapped, &ctx()).await.unwrap();
    assert_eq!(back.expose_secret(), key.expose_secret());
}

#[tokio::test]
async fn latency_below_the_deadline_is_only_latency() {
    let r = rig(AwsKmsConfig {
        attempt_timeout_ms: 1000,
        ..fast(3)
    })
    .await;
    r.proxy.set(Fault::Latency(Duration::from_millis(300)));
    let started = Instant::now();
    let (key, wrapped) = r.provider.generate(&r.kek, &ctx()).await.unwrap();
    let back = r.provider.unwrap(&r.kek, &wrapped, &ctx()).await.unwrap();
    assert_eq!(back.expose_secret(), key.expose_secret());
    assert!(started.elapsed() >= Duration::from_millis(600));
    // One attempt each: a slow answer inside the deadline is not retried.
    assert_eq!(r.proxy.count(), 2, "{:?}", r.proxy.seen());
}

#[tokio::test]
async fn a_persistent_outage_does_not_become_a_retry_storm() {
    // Generous deadlines: every attempt must reach the proxy to be counted, even with 100
    // connections arriving at once on a loaded machine.
    let r = rig(AwsKmsConfig {
        attempt_timeout_ms: 3000,
        connect_timeout_ms: 3000,
        operation_timeout_ms: 10_000,
        ..fast(3)
    })
    .await;
    let (_, wrapped) = r.provider.generate(&r.kek, &ctx()).await.unwrap();
    r.proxy.set(Fault::ServerError(503));
    r.proxy.clear();
    let provider = std::sync::Arc::new(r.provider);
    let burst = |calls: usize| {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..calls {
            let (p, kek, w) = (provider.clone(), r.kek.clone(), wrapped.clone());
            set.spawn(async move { p.unwrap(&kek, &w, &ctx()).await.map(drop) });
        }
        set.join_all()
    };
    let results = burst(100).await;
    for r in &results {
        match r {
            Ok(()) => panic!("a call succeeded during the outage"),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}"),
        }
    }
    let first = r.proxy.count_op("Decrypt");
    eprintln!("100 calls under a 503 outage: {first} attempts (max_attempts 3)");
    // Without the retry quota: 300. With it (500 tokens, 5 per retry): at most 100 retries.
    assert!((100..=200).contains(&first), "{first} attempts");
    // The quota is spent: further calls during the outage make one attempt each.
    r.proxy.clear();
    burst(20).await;
    assert_eq!(r.proxy.count_op("Decrypt"), 20);
}

#[tokio::test]
async fn the_quota_keeps_a_burst_of_cold_calls_under_the_configured_rate() {
    use keyward_kms::{QuotaPolicy, QuotaProvider};
    let r = rig(fast(3)).await;
    let (_, wrapped) = r.provider.generate(&r.kek, &ctx()).await.unwrap();
    r.proxy.clear();
    // 5 at once, then 5 per second; nobody waits more than 1 s for a slot.
    let quota = std::sync::Arc::new(
        QuotaProvider::new(
            std::sync::Arc::new(r.provider),
            QuotaPolicy {
                requests_per_second: 5.0,
                burst: 5,
                max_wait: Duration::from_secs(1),
                max_keys: 100,
            },
        )
        .unwrap(),
    );
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let (q, kek, w) = (quota.clone(), r.kek.clone(), wrapped.clone());
        set.spawn(async move { q.unwrap(&kek, &w, &ctx()).await.map(drop) });
    }
    let results = set.join_all().await;
    let elapsed = started.elapsed();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let throttled = results
        .iter()
        .filter(|r| r.as_ref().is_err_and(|e| e.kind() == ErrorKind::Throttled))
        .count();
    let seen = r.proxy.seen();
    eprintln!(
        "quota 5/s burst 5: {ok} admitted, {throttled} throttled, {} KMS requests in {elapsed:?}",
        seen.len()
    );
    assert_eq!(ok + throttled, 40);
    // burst + rate × max_wait = 5 + 5 admitted; every other call failed without a KMS request.
    assert_eq!(ok, 10);
    assert_eq!(seen.len(), 10, "{seen:?}");
    // And the KMS saw them at the quota's pace: no more than burst + rate × t in any prefix.
    let first = seen[0].at;
    for (i, s) in seen.iter().enumerate() {
        let allowed = 5.0 + 5.0 * (s.at - first).as_secs_f64() + 1.0;
        assert!(
            (i + 1) as f64 <= allowed,
            "request {i} at {:?}",
            s.at - first
        );
    }
}
