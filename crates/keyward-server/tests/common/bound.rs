//! The revocation window as the tests check it, defined once (docs/revocation.md, "The bound").
//!
//! Used by the crate's own tests (`common::bound`) and, through a `#[path]` module, by the
//! end-to-end tests (`tests/e2e/tests/support`), so that every "stops serving within the bound"
//! assertion uses the same bound and the same loop. Depends on `std` and `tokio` only.
//!
//! The loops measure from the right instant: a request *sent* after the bound that still
//! succeeds is the violation (one sent just before the bound may legitimately finish after it),
//! and the bound is counted from the caller's `since`, which must be an instant when the
//! revocation had already happened (after the KMS call that disabled the key returned, or after
//! `RevokeKey` returned).
#![allow(dead_code, reason = "each test binary uses a part")]

use std::{
    future::Future,
    time::{Duration, Instant},
};

/// How late a loaded CI machine (2 cores shared by several builds and test binaries) may make
/// something the server *does* on a period: a monitor sweep that is due is scheduled late, its
/// canary call to a KMS double on 127.0.0.1 is answered late, a LISTEN/NOTIFY fan-out is
/// delivered and applied late, and the test's own poll request makes one round trip. The
/// product promises the period; this slack is what the tests allow the machine on top of it, not
/// part of the promise. Largest delay seen in `cargo test -p keyward-e2e` runs on such a
/// machine: under 1 s (the revocation benchmark's time to first denial with a 1 s monitor is
/// 0.7 s, docs/benchmarks.md).
pub(crate) const SCHEDULING_SLACK: Duration = Duration::from_secs(2);

/// How far the cache's clock may disagree with the test's: cache expiry is checked when a key
/// is used, so no task needs scheduling, only the clocks' granularity and the request's own
/// path to the cache lookup.
pub(crate) const CACHE_CLOCK_SLACK: Duration = Duration::from_millis(100);

/// Poll period of the loops below.
pub(crate) const POLL: Duration = Duration::from_millis(50);

/// With only the cache TTL to end service (the monitor off, or the KMS unreachable): no
/// request sent later than this after the last moment the KMS vouched for the key succeeds.
pub(crate) fn ttl(ttl: Duration) -> Duration {
    ttl + CACHE_CLOCK_SLACK
}

/// With the key-state monitor sweeping every `interval` (±10 % jitter) and one canary check per
/// tenant: the next sweep refuses the key, plus the scheduling slack.
pub(crate) fn monitor(interval: Duration) -> Duration {
    interval + interval / 10 + SCHEDULING_SLACK
}

/// A pushed signal (`RevokeKey` on another replica, delivered by LISTEN/NOTIFY): only the
/// scheduling slack.
pub(crate) fn push() -> Duration {
    SCHEDULING_SLACK
}

/// Retries `attempt` every [`POLL`] until it fails; panics if an attempt sent `bound` or more
/// after `since` succeeded. Returns the failure and when the failing attempt was sent, counted
/// from `since`.
pub(crate) async fn stops_serving<T, E, F, Fut>(
    since: Instant,
    bound: Duration,
    mut attempt: F,
) -> (E, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        let sent = Instant::now();
        match attempt().await {
            Err(e) => return (e, sent.duration_since(since)),
            Ok(_) => {
                let late = sent.duration_since(since);
                assert!(
                    late < bound,
                    "still serving: a request sent {late:?} after the revocation succeeded (bound {bound:?})"
                );
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

/// Retries `attempt` every [`POLL`] until it succeeds (service restored, a state recorded);
/// panics with the last error if no attempt sent before `since + bound` did. Returns the value.
pub(crate) async fn eventually<T, E, F, Fut>(since: Instant, bound: Duration, mut attempt: F) -> T
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        let sent = Instant::now();
        match attempt().await {
            Ok(value) => return value,
            Err(e) => {
                assert!(
                    sent.duration_since(since) < bound,
                    "still not done {bound:?} after it was due: {e:?}"
                );
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

/// [`stops_serving`] for tests without a runtime (the CLI tests run the `keyward` binary).
pub(crate) fn stops_serving_blocking<T, E>(
    since: Instant,
    bound: Duration,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> (E, Duration) {
    loop {
        let sent = Instant::now();
        match attempt() {
            Err(e) => return (e, sent.duration_since(since)),
            Ok(_) => {
                let late = sent.duration_since(since);
                assert!(
                    late < bound,
                    "still serving: a request sent {late:?} after the revocation succeeded (bound {bound:?})"
                );
                std::thread::sleep(POLL);
            }
        }
    }
}

/// [`eventually`] for tests without a runtime.
pub(crate) fn eventually_blocking<T, E: std::fmt::Debug>(
    since: Instant,
    bound: Duration,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> T {
    loop {
        let sent = Instant::now();
        match attempt() {
            Ok(value) => return value,
            Err(e) => {
                assert!(
                    sent.duration_since(since) < bound,
                    "still not done {bound:?} after it was due: {e:?}"
                );
                std::thread::sleep(POLL);
            }
        }
    }
}
