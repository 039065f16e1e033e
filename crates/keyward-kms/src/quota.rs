//! [`QuotaProvider`]: a per-KEK request quota in front of any [`KeyProvider`].
//!
//! KMSs meter requests per account, region and often per key (AWS KMS: a shared
//! requests-per-second quota for cryptographic operations; exceeding it answers
//! `ThrottlingException` to *every* caller in the account, the customer's own services included).
//! Keyward should never be the reason a customer's KMS throttles, so every call to a KEK takes a
//! token from that KEK's bucket first: `requests_per_second` refill, up to `burst` saved. A call
//! that finds no token waits for one in arrival order, up to `max_wait`; if its turn would come
//! later than that it fails at once with [`ErrorKind::Throttled`] (a transient error: gRPC
//! `UNAVAILABLE`, never a revocation) without calling the KMS.
//!
//! Buckets are created on first use and kept in a bounded map. A bucket that has refilled to
//! `burst` is indistinguishable from a new one, so such idle buckets are dropped whenever the map
//! is full; if every bucket is busy the new key's call is throttled rather than the map grown.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::{
    Capabilities, ErrorKind, KeyProvider, KeyRef, KeyStatus, ProviderError, ProviderKind,
    SecretKey, WrapContext, WrappedKey,
};

/// The quota of one KEK.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaPolicy {
    /// Sustained requests per second to one KEK (> 0).
    pub requests_per_second: f64,
    /// Requests that may be sent at once after an idle period (≥ 1).
    pub burst: u32,
    /// Longest a call waits for its token before failing [`ErrorKind::Throttled`].
    pub max_wait: Duration,
    /// Most KEKs with a bucket at once (≥ 1).
    pub max_keys: usize,
}

impl QuotaPolicy {
    fn validate(&self) -> Result<(), ProviderError> {
        if !(self.requests_per_second.is_finite() && self.requests_per_second > 0.0)
            || self.burst == 0
            || self.max_keys == 0
        {
            return Err(ProviderError::new(
                ErrorKind::Misconfigured,
                format!(
                    "invalid KMS quota: requests_per_second ({}) must be positive, burst ({}) and \
                     the number of keys ({}) at least 1",
                    self.requests_per_second, self.burst, self.max_keys
                ),
            ));
        }
        Ok(())
    }

    fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.requests_per_second)
    }
}

/// One KEK's bucket, as a "theoretical arrival time" (GCRA): the bucket is full at or before
/// `tat - burst × interval`, and a request at `now` is served at `max(now, tat - (burst - 1) ×
/// interval)`, pushing `tat` one interval further.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tat: Instant,
}

/// A [`KeyProvider`] that enforces a [`QuotaPolicy`] per KEK on every call (wrap, unwrap,
/// generate, describe, canonicalize) and delegates to the provider it wraps.
pub struct QuotaProvider {
    inner: Arc<dyn KeyProvider>,
    policy: QuotaPolicy,
    buckets: Mutex<HashMap<KeyRef, Bucket>>,
}

impl fmt::Debug for QuotaProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaProvider")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .field("keys", &self.tracked_keys())
            .finish()
    }
}

impl QuotaProvider {
    /// `inner` behind `policy`. Rejects a policy with a zero or non-finite rate, a zero burst or
    /// a zero key limit.
    pub fn new(inner: Arc<dyn KeyProvider>, policy: QuotaPolicy) -> Result<Self, ProviderError> {
        policy.validate()?;
        Ok(Self {
            inner,
            policy,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// How many KEKs currently have a bucket.
    pub fn tracked_keys(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Waits for `kek`'s next token, or fails at once if it would come after `max_wait`.
    async fn admit(&self, kek: &KeyRef) -> Result<(), ProviderError> {
        let wait = self.reserve(kek, Instant::now())?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// Takes a token (possibly one that is only available in the future) and returns how long
    /// to wait for it. Nothing is taken when the wait would exceed `max_wait`.
    fn reserve(&self, kek: &KeyRef, now: Instant) -> Result<Duration, ProviderError> {
        let interval = self.policy.interval();
        let burst_span = interval * self.policy.burst;
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if !buckets.contains_key(kek) && buckets.len() >= self.policy.max_keys {
            // Full buckets carry no state: dropping them is lossless.
            buckets.retain(|_, b| b.tat > now);
            if buckets.len() >= self.policy.max_keys {
                return Err(self.throttled(kek, "too many KMS keys are in use at once"));
            }
        }
        let tat = buckets.get(kek).map_or(now, |b| b.tat.max(now));
        // Served at tat - (burst - 1) × interval, i.e. now if a token is saved.
        let allowed_at = (tat + interval).checked_sub(burst_span).unwrap_or(now);
        let wait = allowed_at.saturating_duration_since(now);
        if wait > self.policy.max_wait {
            return Err(self.throttled(kek, "the next request slot is too far away"));
        }
        buckets.insert(
            kek.clone(),
            Bucket {
                tat: tat + interval,
            },
        );
        Ok(wait)
    }

    fn throttled(&self, kek: &KeyRef, why: &str) -> ProviderError {
        // Debug, not warn: a burst would log a line per refused call; the caller's status names
        // the quota.
        tracing::debug!(key = %kek, why, "KMS request refused by Keyward's own quota");
        ProviderError::new(
            ErrorKind::Throttled,
            format!(
                "Keyward's request quota for {kek} ({}/s, burst {}) is exhausted: {why} \
                 (waited at most {} ms)",
                self.policy.requests_per_second,
                self.policy.burst,
                self.policy.max_wait.as_millis()
            ),
        )
    }
}

#[async_trait]
impl KeyProvider for QuotaProvider {
    fn kind(&self) -> ProviderKind {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn wrap(
        &self,
        kek: &KeyRef,
        key: &SecretKey,
        ctx: &WrapContext,
    ) -> Result<WrappedKey, ProviderError> {
        self.admit(kek).await?;
        self.inner.wrap(kek, key, ctx).await
    }

    async fn unwrap(
        &self,
        kek: &KeyRef,
        wrapped: &WrappedKey,
        ctx: &WrapContext,
    ) -> Result<SecretKey, ProviderError> {
        self.admit(kek).await?;
        self.inner.unwrap(kek, wrapped, ctx).await
    }

    async fn describe(&self, kek: &KeyRef) -> Result<KeyStatus, ProviderError> {
        self.admit(kek).await?;
        self.inner.describe(kek).await
    }

    async fn canonicalize(&self, kek: &KeyRef) -> Result<KeyRef, ProviderError> {
        self.admit(kek).await?;
        self.inner.canonicalize(kek).await
    }

    async fn generate(
        &self,
        kek: &KeyRef,
        ctx: &WrapContext,
    ) -> Result<(SecretKey, WrappedKey), ProviderError> {
        self.admit(kek).await?;
        self.inner.generate(kek, ctx).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use keyward_envelope::{KeyId, TenantId};

    use super::*;
    use crate::{KeyState, Purpose};

    /// Counts calls and answers instantly: the quota's effect is all there is to see.
    #[derive(Debug, Default)]
    struct Counting {
        calls: AtomicUsize,
    }

    #[async_trait]
    impl KeyProvider for Counting {
        fn kind(&self) -> ProviderKind {
            ProviderKind::Local
        }
        async fn wrap(
            &self,
            _: &KeyRef,
            _: &SecretKey,
            _: &WrapContext,
        ) -> Result<WrappedKey, ProviderError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(WrappedKey::new(vec![1; 40]))
        }
        async fn unwrap(
            &self,
            _: &KeyRef,
            _: &WrappedKey,
            _: &WrapContext,
        ) -> Result<SecretKey, ProviderError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(SecretKey::generate().unwrap())
        }
        async fn describe(&self, _: &KeyRef) -> Result<KeyStatus, ProviderError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(KeyStatus::new(KeyState::Enabled))
        }
    }

    fn policy(rps: f64, burst: u32, max_wait_ms: u64) -> QuotaPolicy {
        QuotaPolicy {
            requests_per_second: rps,
            burst,
            max_wait: Duration::from_millis(max_wait_ms),
            max_keys: 1000,
        }
    }

    fn quota(p: QuotaPolicy) -> (Arc<Counting>, Arc<QuotaProvider>) {
        let inner = Arc::new(Counting::default());
        let q = QuotaProvider::new(inner.clone(), p).unwrap();
        (inner, Arc::new(q))
    }

    fn kek(name: &str) -> KeyRef {
        KeyRef::new(ProviderKind::Local, name)
    }

    fn ctx() -> WrapContext {
        WrapContext::new(
            &TenantId::try_from("acme").unwrap(),
            &KeyId::from_bytes([7; 16]),
            Purpose::TenantKey,
        )
    }

    /// Starts `n` concurrent unwraps of `key`; returns (successes, throttled) once all are done.
    async fn burst(q: &Arc<QuotaProvider>, key: &str, n: usize) -> (usize, usize) {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (q, k) = (q.clone(), kek(key));
            set.spawn(async move {
                q.unwrap(&k, &WrappedKey::new(vec![1; 40]), &ctx())
                    .await
                    .map(drop)
            });
        }
        let results = set.join_all().await;
        let throttled = results
            .iter()
            .filter(|r| r.as_ref().is_err_and(|e| e.kind() == ErrorKind::Throttled))
            .count();
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok + throttled, n);
        (ok, throttled)
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_gets_burst_at_once_then_the_rate_then_throttled() {
        // 10/s, burst 5, wait at most 1 s: 5 at once + 10 more within the second = 15.
        let (inner, q) = quota(policy(10.0, 5, 1000));
        let start = Instant::now();
        let (ok, throttled) = burst(&q, "k", 40).await;
        assert_eq!((ok, throttled), (15, 25));
        assert_eq!(inner.calls.load(Ordering::SeqCst), 15);
        // The last admitted call waited its full second, not more (paused time is exact).
        assert_eq!(start.elapsed(), Duration::from_millis(1000));
        // The next slot is 100 ms after the last admitted one.
        let before = Instant::now();
        q.describe(&kek("k")).await.unwrap();
        assert_eq!(before.elapsed(), Duration::from_millis(100));
        assert_eq!(
            inner.calls.load(Ordering::SeqCst),
            16,
            "throttled calls never reach the KMS"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_calls_are_spaced_by_the_rate() {
        let (inner, q) = quota(policy(4.0, 1, 10_000));
        let start = Instant::now();
        let mut done = Vec::new();
        for _ in 0..5 {
            q.describe(&kek("k")).await.unwrap();
            done.push(start.elapsed().as_millis());
        }
        assert_eq!(done, [0, 250, 500, 750, 1000]);
        assert_eq!(inner.calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_are_per_key_and_refill() {
        let (_, q) = quota(policy(1.0, 2, 0));
        let k = kek("a");
        for _ in 0..2 {
            q.describe(&k).await.unwrap();
        }
        let e = q.describe(&k).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Throttled);
        assert!(!e.is_revocation_signal() && e.is_transient());
        assert!(e.message().contains("local:a"), "{e}");
        // Another key has its own bucket.
        q.describe(&kek("b")).await.unwrap();
        // One token back per second.
        tokio::time::advance(Duration::from_secs(1)).await;
        q.describe(&k).await.unwrap();
        assert_eq!(
            q.describe(&k).await.unwrap_err().kind(),
            ErrorKind::Throttled
        );
        // Every call counts: generate (default = local generation + one wrap) takes one token.
        tokio::time::advance(Duration::from_secs(2)).await;
        q.generate(&k, &ctx()).await.unwrap();
        q.wrap(&k, &SecretKey::generate().unwrap(), &ctx())
            .await
            .unwrap();
        assert_eq!(
            q.canonicalize(&k).await.unwrap_err().kind(),
            ErrorKind::Throttled
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_number_of_buckets_is_bounded_and_idle_ones_are_dropped() {
        let (_, q) = quota(QuotaPolicy {
            max_keys: 3,
            ..policy(10.0, 1, 0)
        });
        for name in ["a", "b", "c"] {
            q.describe(&kek(name)).await.unwrap();
        }
        assert_eq!(q.tracked_keys(), 3);
        // All three are busy (their token is not back yet): a fourth key is refused.
        let e = q.describe(&kek("d")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Throttled);
        assert!(e.message().contains("too many KMS keys"), "{e}");
        // Once they have refilled they are idle and make room.
        tokio::time::advance(Duration::from_millis(100)).await;
        q.describe(&kek("d")).await.unwrap();
        assert_eq!(q.tracked_keys(), 1);
    }

    #[test]
    fn bad_policies_are_misconfigured() {
        for p in [
            policy(0.0, 1, 0),
            policy(f64::NAN, 1, 0),
            policy(-1.0, 1, 0),
            policy(1.0, 0, 0),
            QuotaPolicy {
                max_keys: 0,
                ..policy(1.0, 1, 0)
            },
        ] {
            let e = QuotaProvider::new(Arc::new(Counting::default()), p).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Misconfigured, "{p:?}");
        }
    }

    #[tokio::test]
    async fn delegates_kind_and_capabilities() {
        let (_, q) = quota(policy(100.0, 10, 0));
        assert_eq!(q.kind(), ProviderKind::Local);
        assert!(!q.capabilities().production_grade);
        assert!(format!("{q:?}").contains("QuotaProvider"));
    }
}
