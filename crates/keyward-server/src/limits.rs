//! Limits at the gRPC edge that are not a single field's validation: the per-caller bound on
//! in-flight RPCs ([`CallerLimitLayer`]), and the request size of the administrative services.
//!
//! A caller is the identity of its connection ([`PeerInfo`], set by [`crate::tls`] for every
//! connection): the verified certificate's SPIFFE ID or DNS name, or, in development mode, the
//! single development principal. Requests beyond `limits.max_in_flight_per_caller` in flight
//! for one caller fail at once with `RESOURCE_EXHAUSTED` (reason `CALLER_CONCURRENCY_LIMIT`,
//! the limit in the `ErrorInfo` metadata), before the request body is read and before any
//! authorization, store or KMS work: nothing is created, cached or audited for them. Other
//! callers are not affected. The bound is a count, not a rate: a caller that waits for its
//! answers is never refused.
//!
//! Cost per call: a shared (read) lock on the map of callers to find the caller's counter,
//! one atomic increment and one decrement. The map's write lock is taken only the first time a
//! caller is seen. The map is bounded ([`MAX_TRACKED_CALLERS`]): when full, callers with
//! nothing in flight are dropped from it, and if all are busy the new caller shares one
//! overflow counter with the same limit.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use serde::{Deserialize, Serialize};
use tonic::{
    Code, Status,
    codegen::{Service, http},
};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::{
    error::ERROR_DOMAIN,
    tls::{PeerIdentity, PeerInfo},
};

/// Default of `limits.max_in_flight_per_caller`.
pub const DEFAULT_MAX_IN_FLIGHT_PER_CALLER: usize = 256;
/// Largest accepted `limits.max_in_flight_per_caller`.
pub const MAX_IN_FLIGHT_CEILING: usize = 1_000_000;
/// Distinct callers whose counters are kept (identities come from certificates signed by the
/// client CA, so this is a bound against a misbehaving CA, not a working limit).
pub const MAX_TRACKED_CALLERS: usize = 65_536;
/// Largest request message of `TenantService` and `AuditService`, whose requests are a few
/// identifiers and strings (the `CryptoService` limit follows `max_plaintext_bytes`).
pub const ADMIN_MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Room for the envelope header, the encryption context and protobuf framing on top of the
/// largest accepted plaintext: the crypto service's message limit is `max_plaintext_bytes` plus
/// this, both ways. A batch whose response could exceed it is refused before any work.
pub const MESSAGE_OVERHEAD_BYTES: usize = 64 * 1024;
/// `ErrorInfo.reason` of a call refused by the per-caller limit.
pub const CALLER_LIMIT_REASON: &str = "CALLER_CONCURRENCY_LIMIT";

/// `[limits]` in the configuration file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most RPCs one caller (certificate identity; in development mode the development
    /// principal) may have in flight; more fail at once with `RESOURCE_EXHAUSTED`.
    pub max_in_flight_per_caller: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_in_flight_per_caller: DEFAULT_MAX_IN_FLIGHT_PER_CALLER,
        }
    }
}

impl LimitsConfig {
    /// The error message for an out-of-range value.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.max_in_flight_per_caller == 0
            || self.max_in_flight_per_caller > MAX_IN_FLIGHT_CEILING
        {
            return Err(format!(
                "limits.max_in_flight_per_caller must be between 1 and {MAX_IN_FLIGHT_CEILING}"
            ));
        }
        Ok(())
    }
}

/// Whom a request is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CallerKey {
    Development,
    Certificate(Arc<str>),
    /// A connection without a usable identity (it will be refused by authorization anyway).
    Unidentified,
    /// Callers beyond [`MAX_TRACKED_CALLERS`] while every tracked caller is busy.
    Overflow,
}

impl CallerKey {
    fn of(info: Option<&PeerInfo>) -> Self {
        match info.map(|i| &i.identity) {
            Some(PeerIdentity::Development) => Self::Development,
            Some(PeerIdentity::Certificate(id)) => Self::Certificate(Arc::clone(id)),
            Some(PeerIdentity::NoUsableName) | None => Self::Unidentified,
        }
    }
}

/// The in-flight counters of every caller.
#[derive(Debug)]
pub struct CallerLimiter {
    max_in_flight: usize,
    callers: RwLock<crate::fast_hash::FastMap<CallerKey, Arc<AtomicUsize>>>,
}

/// One counted call; dropping it (the response is finished or abandoned) releases the slot.
#[derive(Debug)]
pub struct Permit {
    counter: Arc<AtomicUsize>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

impl CallerLimiter {
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            max_in_flight,
            callers: RwLock::default(),
        }
    }

    /// The configured bound.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    fn counter(&self, key: &CallerKey) -> Arc<AtomicUsize> {
        if let Some(counter) = self
            .callers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return Arc::clone(counter);
        }
        let mut callers = self.callers.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(counter) = callers.get(key) {
            return Arc::clone(counter);
        }
        if callers.len() >= MAX_TRACKED_CALLERS {
            // Under the write lock nobody can take a new reference, so a counter held only by
            // the map has no call in flight and no call about to start.
            callers.retain(|_, c| Arc::strong_count(c) > 1);
        }
        let key = if callers.len() >= MAX_TRACKED_CALLERS {
            CallerKey::Overflow
        } else {
            key.clone()
        };
        Arc::clone(callers.entry(key).or_default())
    }

    /// Counts one call of the caller identified by `info`, or refuses it when the caller
    /// already has the maximum in flight.
    pub fn try_acquire(&self, info: Option<&PeerInfo>) -> Option<Permit> {
        let counter = self.counter(&CallerKey::of(info));
        let max = self.max_in_flight;
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit { counter })
    }

    /// Calls in flight for the caller identified by `info` (tests and diagnostics).
    pub fn in_flight(&self, info: Option<&PeerInfo>) -> usize {
        self.callers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&CallerKey::of(info))
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// Callers currently tracked.
    pub fn tracked_callers(&self) -> usize {
        self.callers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The status of a refused call.
    pub fn refusal(&self) -> Status {
        let mut details = ErrorDetails::new();
        details.set_error_info(
            CALLER_LIMIT_REASON,
            ERROR_DOMAIN,
            HashMap::from([("limit".to_owned(), self.max_in_flight.to_string())]),
        );
        Status::with_error_details(
            Code::ResourceExhausted,
            format!(
                "this caller already has {} requests in flight (limits.max_in_flight_per_caller); wait for some to finish",
                self.max_in_flight
            ),
            details,
        )
    }
}

/// Tower layer applying a [`CallerLimiter`] to every RPC of the server.
#[derive(Debug, Clone)]
pub struct CallerLimitLayer {
    limiter: Arc<CallerLimiter>,
}

impl CallerLimitLayer {
    pub fn new(limiter: Arc<CallerLimiter>) -> Self {
        Self { limiter }
    }
}

impl<S> tower_layer::Layer<S> for CallerLimitLayer {
    type Service = CallerLimit<S>;

    fn layer(&self, inner: S) -> CallerLimit<S> {
        CallerLimit {
            inner,
            limiter: Arc::clone(&self.limiter),
        }
    }
}

/// The service made by [`CallerLimitLayer`].
#[derive(Debug, Clone)]
pub struct CallerLimit<S> {
    inner: S,
    limiter: Arc<CallerLimiter>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for CallerLimit<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<Held<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let Some(permit) = self
            .limiter
            .try_acquire(request.extensions().get::<PeerInfo>())
        else {
            tracing::debug!(
                limit = self.limiter.max_in_flight,
                "request refused: the caller's in-flight limit is reached"
            );
            let refused = self.limiter.refusal().into_http::<ResBody>();
            return Box::pin(std::future::ready(Ok(refused.map(|body| Held {
                inner: body,
                _permit: None,
            }))));
        };
        // The ready service handles this call; a fresh clone is left for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            // A streaming response stays counted until its body is finished or dropped.
            Ok(response.map(|body| Held {
                inner: body,
                _permit: Some(permit),
            }))
        })
    }
}

/// A response body that keeps its call's [`Permit`] until it is dropped.
#[derive(Debug)]
pub struct Held<B> {
    inner: B,
    _permit: Option<Permit>,
}

impl<B> tonic::codegen::Body for Held<B>
where
    B: tonic::codegen::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn peer(identity: PeerIdentity) -> PeerInfo {
        PeerInfo {
            remote: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            identity,
        }
    }

    #[test]
    fn the_bound_is_per_caller_and_released_on_drop() {
        let limiter = CallerLimiter::new(2);
        let a = peer(PeerIdentity::Certificate(Arc::from("spiffe://t/a")));
        let b = peer(PeerIdentity::Certificate(Arc::from("spiffe://t/b")));
        let p1 = limiter.try_acquire(Some(&a)).unwrap();
        let _p2 = limiter.try_acquire(Some(&a)).unwrap();
        assert!(limiter.try_acquire(Some(&a)).is_none());
        assert_eq!(limiter.in_flight(Some(&a)), 2);
        // Another caller is not affected.
        let _q = limiter.try_acquire(Some(&b)).unwrap();
        drop(p1);
        assert_eq!(limiter.in_flight(Some(&a)), 1);
        assert!(limiter.try_acquire(Some(&a)).is_some());
        // A refusal does not count.
        assert_eq!(limiter.in_flight(Some(&a)), 1);
    }

    #[test]
    fn development_and_unidentified_callers_have_their_own_counters() {
        let limiter = CallerLimiter::new(1);
        let dev = peer(PeerIdentity::Development);
        let _d = limiter.try_acquire(Some(&dev)).unwrap();
        assert!(limiter.try_acquire(Some(&dev)).is_none());
        let _n = limiter
            .try_acquire(Some(&peer(PeerIdentity::NoUsableName)))
            .unwrap();
        // No PeerInfo at all counts as unidentified, which is now busy.
        assert!(limiter.try_acquire(None).is_none());
    }

    #[test]
    fn the_map_of_callers_stays_bounded() {
        let limiter = CallerLimiter::new(1);
        let id = |i: usize| peer(PeerIdentity::Certificate(Arc::from(format!("dns:h{i}"))));
        // Idle callers are forgotten when the map is full.
        for i in 0..MAX_TRACKED_CALLERS + 10 {
            drop(limiter.try_acquire(Some(&id(i))).unwrap());
        }
        assert!(limiter.tracked_callers() <= MAX_TRACKED_CALLERS);
        // Busy callers are not: newcomers then share the overflow counter.
        let held: Vec<Permit> = (0..MAX_TRACKED_CALLERS)
            .map(|i| limiter.try_acquire(Some(&id(1_000_000 + i))).unwrap())
            .collect();
        assert_eq!(limiter.tracked_callers(), MAX_TRACKED_CALLERS);
        let overflow = limiter.try_acquire(Some(&id(5_000_000))).unwrap();
        assert!(limiter.try_acquire(Some(&id(5_000_001))).is_none());
        assert!(limiter.tracked_callers() <= MAX_TRACKED_CALLERS + 1);
        drop(overflow);
        drop(held);
    }

    #[test]
    fn the_refusal_names_the_limit() {
        let status = CallerLimiter::new(7).refusal();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("limits.max_in_flight_per_caller"),
            "{status:?}"
        );
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, CALLER_LIMIT_REASON);
        assert_eq!(info.metadata["limit"], "7");
    }

    #[test]
    fn config_bounds() {
        assert!(LimitsConfig::default().validate().is_ok());
        for bad in [0, MAX_IN_FLIGHT_CEILING + 1] {
            let c = LimitsConfig {
                max_in_flight_per_caller: bad,
            };
            assert!(
                c.validate()
                    .unwrap_err()
                    .contains("max_in_flight_per_caller")
            );
        }
    }
}
