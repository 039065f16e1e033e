//! Prometheus metrics (served on the admin listener, [`crate::admin`]).
//!
//! The library is `prometheus-client`, the Prometheus project's own Rust client: it encodes the
//! OpenMetrics text format that Prometheus negotiates, keeps each family in one lock-protected
//! map with no global registry (rule 3 of docs: no global state), and its label sets are plain
//! structs, so a per-call lookup hashes a few `&'static str` and one `Arc<str>` without
//! allocating. docs/adr/0006-metrics-library.md records the choice against `metrics` +
//! `metrics-exporter-prometheus` and `prometheus`.
//!
//! Cardinality is bounded by construction: every label is either one of a fixed set of
//! `&'static str` (method, code, provider, operation, outcome, action, state, cache) or a
//! tenant id, and tenant ids get their own label only for the first
//! `metrics.max_tenant_labels` tenants seen since start; the rest share `tenant="_other"`.
//! Histograms carry no tenant label at all. docs/observability.md lists every metric.

use std::{
    fmt,
    sync::{Arc, OnceLock, PoisonError, RwLock},
    time::{Duration, Instant},
};

use crate::telemetry::HOT_METHODS;

use async_trait::async_trait;
use keyward_kms::{
    Capabilities, KeyProvider, KeyRef, KeyStatus, ProviderError, ProviderKind, SecretKey,
    WrapContext, WrappedKey,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use serde::{Deserialize, Serialize};

mod key_events;

/// `[metrics]` in the configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Most tenants with a `tenant` label of their own; later tenants are counted under
    /// `tenant="_other"`.
    pub max_tenant_labels: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            max_tenant_labels: DEFAULT_MAX_TENANT_LABELS,
        }
    }
}

/// Default of `metrics.max_tenant_labels`.
pub const DEFAULT_MAX_TENANT_LABELS: usize = 1000;
/// Upper bound of `metrics.max_tenant_labels` (a scrape of 100k tenants x methods x codes is
/// already more than a Prometheus server should take from one target).
pub const MAX_TENANT_LABELS_CEILING: usize = 100_000;

/// The `tenant` label of tenants past the bound.
pub const OTHER_TENANT: &str = "_other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    tenant: Arc<str>,
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    tenant: Arc<str>,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KmsLabels {
    provider: &'static str,
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KmsOpLabels {
    provider: &'static str,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    operation: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResidentLabels {
    cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

/// Latency buckets from 100 µs to ~13 s (x2 per bucket): cached crypto calls sit at the low
/// end, KMS round trips in the middle, timeouts at the top.
#[derive(Clone, Copy, Debug)]
struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.0001, 2.0, 18))
    }
}

/// What a payload byte count measures (the `kind` label of `keyward_payload_bytes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// Plaintext accepted by Encrypt.
    PlaintextIn,
    /// Envelopes returned by Encrypt.
    CiphertextOut,
    /// Envelopes presented to Decrypt.
    CiphertextIn,
    /// Plaintext returned by Decrypt.
    PlaintextOut,
}

impl PayloadKind {
    /// How many kinds there are (the variants are their own indices).
    const COUNT: usize = 4;

    fn as_str(self) -> &'static str {
        match self {
            PayloadKind::PlaintextIn => "plaintext_in",
            PayloadKind::CiphertextOut => "ciphertext_out",
            PayloadKind::CiphertextIn => "ciphertext_in",
            PayloadKind::PlaintextOut => "plaintext_out",
        }
    }
}

/// The index in [`HOT_METHODS`] (the data path's unary calls, whose successes are counted
/// through handles resolved once per tenant label); the others go through the family's lookup.
fn hot_method(method: &str) -> Option<usize> {
    HOT_METHODS.iter().position(|m| *m == method)
}

/// One `tenant` label and the series every call of it updates, each resolved from its family
/// on first use and kept: a family lookup hashes the whole label set under the family's lock,
/// several times per call.
pub(crate) struct TenantSeries {
    label: Arc<str>,
    payload: [OnceLock<Counter>; PayloadKind::COUNT],
    /// `rpc_requests_total{code="OK"}` of each of [`HOT_METHODS`].
    ok_rpcs: [OnceLock<Counter>; HOT_METHODS.len()],
}

impl TenantSeries {
    fn new(label: Arc<str>) -> Arc<Self> {
        Arc::new(Self {
            label,
            payload: Default::default(),
            ok_rpcs: Default::default(),
        })
    }

    /// The label's value.
    #[cfg(test)]
    pub(crate) fn label(&self) -> &str {
        &self.label
    }
}

/// The first `max` tenants seen get a label of their own.
struct TenantLabels {
    max: usize,
    known: RwLock<crate::fast_hash::FastMap<Box<str>, Arc<TenantSeries>>>,
    other: Arc<TenantSeries>,
    none: Arc<TenantSeries>,
}

impl TenantLabels {
    fn new(max: usize) -> Self {
        Self {
            max,
            known: RwLock::default(),
            other: TenantSeries::new(Arc::from(OTHER_TENANT)),
            none: TenantSeries::new(Arc::from("")),
        }
    }

    /// The series of `tenant`: a read-locked lookup and a reference-count increment once the
    /// tenant is known; one allocation the first time.
    fn series(&self, tenant: &str) -> Arc<TenantSeries> {
        if let Some(series) = self
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
        {
            return Arc::clone(series);
        }
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(series) = known.get(tenant) {
            return Arc::clone(series);
        }
        if known.len() >= self.max {
            return Arc::clone(&self.other);
        }
        let series = TenantSeries::new(Arc::from(tenant));
        known.insert(Box::from(tenant), Arc::clone(&series));
        series
    }
}

/// The metric families of one server, registered in its own [`Registry`].
pub struct Metrics {
    registry: Registry,
    tenants: TenantLabels,
    rpcs: Family<RpcLabels, Counter>,
    rpc_seconds: Family<MethodLabels, Histogram, LatencyBuckets>,
    payload_bytes: Family<BytesLabels, Counter>,
    kms_calls: Family<KmsLabels, Counter>,
    kms_seconds: Family<KmsOpLabels, Histogram, LatencyBuckets>,
    cache_lookups: Family<CacheLabels, Counter>,
    /// `cache_lookups` of (encrypt, decrypt) x (hit, miss), resolved on first use.
    hot_lookups: [OnceLock<Counter>; 4],
    /// `rpc_seconds` of each of [`HOT_METHODS`], resolved on first use.
    hot_seconds: [OnceLock<Histogram>; HOT_METHODS.len()],
    resident: Family<ResidentLabels, Gauge>,
    tenants_closed: Family<StateLabels, Gauge>,
    denials: Family<ActionLabels, Counter>,
    monitor_checks: Family<OutcomeLabels, Counter>,
    monitor_late: Counter,
    monitor_lag: Gauge<f64, std::sync::atomic::AtomicU64>,
    monitor_overcommitted: Gauge,
    monitor_hold_failures: Counter,
    deks_shredded: Counter,
    tenant_keys_rewrapped: Counter,
    bindings_retired: Counter,
    tenant_labels: Gauge,
    in_flight: Gauge,
    streams_active: Family<MethodLabels, Gauge>,
    /// `keyward_key_event_*`: the key-event sources' messages (`metrics/key_events.rs`).
    key_events: key_events::KeyEventMetrics,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("max_tenant_labels", &self.tenants.max)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Empty metrics; at most `max_tenant_labels` tenants get a `tenant` label of their own.
    pub fn new(max_tenant_labels: usize) -> Self {
        let mut registry = Registry::with_prefix("keyward");
        let key_events = key_events::KeyEventMetrics::register(&mut registry);
        let mut metrics = Self {
            registry,
            tenants: TenantLabels::new(max_tenant_labels),
            rpcs: Family::default(),
            rpc_seconds: Family::new_with_constructor(LatencyBuckets),
            payload_bytes: Family::default(),
            kms_calls: Family::default(),
            kms_seconds: Family::new_with_constructor(LatencyBuckets),
            cache_lookups: Family::default(),
            hot_lookups: Default::default(),
            hot_seconds: Default::default(),
            resident: Family::default(),
            tenants_closed: Family::default(),
            denials: Family::default(),
            monitor_checks: Family::default(),
            monitor_late: Counter::default(),
            monitor_lag: Gauge::default(),
            monitor_overcommitted: Gauge::default(),
            monitor_hold_failures: Counter::default(),
            deks_shredded: Counter::default(),
            tenant_keys_rewrapped: Counter::default(),
            bindings_retired: Counter::default(),
            tenant_labels: Gauge::default(),
            in_flight: Gauge::default(),
            streams_active: Family::default(),
            key_events,
        };
        let r = &mut metrics.registry;
        r.register(
            "rpc_requests",
            "gRPC calls by tenant, method and status code",
            metrics.rpcs.clone(),
        );
        r.register(
            "rpc_duration_seconds",
            "gRPC call latency until the response headers, by method",
            metrics.rpc_seconds.clone(),
        );
        r.register(
            "rpc_in_flight",
            "gRPC calls being served now",
            metrics.in_flight.clone(),
        );
        r.register(
            "streams_active",
            "EncryptStream and DecryptStream calls whose task is running now, by method",
            metrics.streams_active.clone(),
        );
        r.register(
            "payload_bytes",
            "Plaintext and envelope bytes of successful crypto operations, by tenant and kind",
            metrics.payload_bytes.clone(),
        );
        r.register(
            "kms_calls",
            "Calls to KEK providers by provider, operation and outcome",
            metrics.kms_calls.clone(),
        );
        r.register(
            "kms_call_duration_seconds",
            "KEK provider call latency by provider and operation",
            metrics.kms_seconds.clone(),
        );
        r.register(
            "dek_cache_lookups",
            "Data-key cache lookups of Encrypt and Decrypt by result (hit or miss)",
            metrics.cache_lookups.clone(),
        );
        r.register(
            "cache_resident_keys",
            "Unwrapped keys held in memory now, by cache",
            metrics.resident.clone(),
        );
        r.register(
            "tenants_closed",
            "Tenants this replica refuses, by key state",
            metrics.tenants_closed.clone(),
        );
        r.register(
            "authz_denials",
            "Requests refused by authentication or authorization, by action",
            metrics.denials.clone(),
        );
        r.register(
            "monitor_checks",
            "Key-state checks claimed from the shared schedule, by outcome (skipped: no replica \
             holds the key any more, no KMS call)",
            metrics.monitor_checks.clone(),
        );
        r.register(
            "monitor_late_batches",
            "Batches of key-state checks that started later than their slack after their due time",
            metrics.monitor_late.clone(),
        );
        r.register(
            "monitor_lag_seconds",
            "How late the latest late key-state check started",
            metrics.monitor_lag.clone(),
        );
        r.register(
            "monitor_overcommitted",
            "1 while the check budget does not cover the schedule (tenant keys are then cached \
             for at most the monitor interval), else 0",
            metrics.monitor_overcommitted.clone(),
        );
        r.register(
            "monitor_hold_failures",
            "Tenant keys loaded whose holding could not be published on the monitor's schedule",
            metrics.monitor_hold_failures.clone(),
        );
        r.register(
            "deks_shredded",
            "Data keys crypto-shredded by this replica (ShredScope, ShredScopes)",
            metrics.deks_shredded.clone(),
        );
        r.register(
            "tenant_keys_rewrapped",
            "Tenant keys this replica moved under a newer KEK (RekeyTenant, the scheduled re-key)",
            metrics.tenant_keys_rewrapped.clone(),
        );
        r.register(
            "kek_bindings_retired",
            "Older KEK bindings this replica retired after a re-key (their keys may be disabled)",
            metrics.bindings_retired.clone(),
        );
        r.register(
            "metrics_tenant_labels",
            "Tenants with a label of their own (bounded by metrics.max_tenant_labels)",
            metrics.tenant_labels.clone(),
        );
        metrics
    }

    /// The `tenant` label's series for `tenant` ("" when the call named none).
    pub(crate) fn tenant_series(&self, tenant: Option<&str>) -> Arc<TenantSeries> {
        match tenant {
            Some(t) => self.tenants.series(t),
            None => Arc::clone(&self.tenants.none),
        }
    }

    pub(crate) fn rpc_started(&self) {
        self.in_flight.inc();
    }

    /// One finished gRPC call.
    pub(crate) fn rpc_finished(
        &self,
        tenant: &TenantSeries,
        method: &'static str,
        code: tonic::Code,
        elapsed: Duration,
    ) {
        self.in_flight.dec();
        let count = || {
            self.rpcs
                .get_or_create(&RpcLabels {
                    tenant: Arc::clone(&tenant.label),
                    method,
                    code: code_name(code),
                })
                .clone()
        };
        let seconds = || {
            self.rpc_seconds
                .get_or_create(&MethodLabels { method })
                .clone()
        };
        match hot_method(method) {
            Some(i) => {
                if code == tonic::Code::Ok {
                    tenant.ok_rpcs[i].get_or_init(count).inc();
                } else {
                    count().inc();
                }
                self.hot_seconds[i]
                    .get_or_init(seconds)
                    .observe(elapsed.as_secs_f64());
            }
            None => {
                count().inc();
                seconds().observe(elapsed.as_secs_f64());
            }
        }
    }

    pub(crate) fn payload(&self, tenant: &TenantSeries, kind: PayloadKind, bytes: usize) {
        tenant.payload[kind as usize]
            .get_or_init(|| {
                self.payload_bytes
                    .get_or_create(&BytesLabels {
                        tenant: Arc::clone(&tenant.label),
                        kind: kind.as_str(),
                    })
                    .clone()
            })
            .inc_by(bytes as u64);
    }

    /// An Encrypt or Decrypt found its data key in the cache (`hit`) or had to load it.
    pub fn cache_lookup(&self, operation: &'static str, hit: bool) {
        let labels = CacheLabels {
            operation,
            result: if hit { "hit" } else { "miss" },
        };
        let slot = match operation {
            "encrypt" => 0,
            "decrypt" => 2,
            _ => {
                self.cache_lookups.get_or_create(&labels).inc();
                return;
            }
        } + usize::from(!hit);
        self.hot_lookups[slot]
            .get_or_init(|| self.cache_lookups.get_or_create(&labels).clone())
            .inc();
    }

    /// A claimed key-state check ended with `outcome`.
    pub(crate) fn monitor_check(&self, outcome: &'static str) {
        self.monitor_checks
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// A batch of checks started `lag_ms` late.
    pub(crate) fn monitor_late(&self, lag_ms: i64) {
        self.monitor_late.inc();
        self.monitor_lag.set(lag_ms as f64 / 1000.0);
    }

    pub(crate) fn monitor_hold_failed(&self) {
        self.monitor_hold_failures.inc();
    }

    /// This replica shredded `deks` data keys.
    pub(crate) fn deks_shredded(&self, deks: usize) {
        self.deks_shredded.inc_by(deks as u64);
    }

    /// A stream's task started (`keyward_streams_active`).
    pub(crate) fn stream_started(&self, method: &'static str) {
        self.streams_active
            .get_or_create(&MethodLabels { method })
            .inc();
    }

    /// A stream's task ended, however it ended.
    pub(crate) fn stream_finished(&self, method: &'static str) {
        self.streams_active
            .get_or_create(&MethodLabels { method })
            .dec();
    }

    /// This replica moved one tenant key under a newer KEK (a re-key).
    pub(crate) fn tenant_key_rewrapped(&self) {
        self.tenant_keys_rewrapped.inc();
    }

    /// This replica retired `bindings` older KEK bindings (a re-key).
    pub(crate) fn bindings_retired(&self, bindings: usize) {
        self.bindings_retired.inc_by(bindings as u64);
    }

    /// What a key-event source did with one message.
    pub fn key_event(&self, source: &'static str, event: keyward_kms::SourceEvent) {
        self.key_events.record(source, event);
    }

    /// How long the re-check of the tenants bound to an event's key took.
    pub fn key_event_recheck(&self, source: &'static str, elapsed: Duration) {
        self.key_events.recheck(source, elapsed);
    }

    pub(crate) fn denial(&self, action: &'static str) {
        self.denials.get_or_create(&ActionLabels { action }).inc();
    }

    fn kms_call(
        &self,
        provider: ProviderKind,
        operation: &'static str,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        let provider = provider.as_str();
        self.kms_calls
            .get_or_create(&KmsLabels {
                provider,
                operation,
                outcome,
            })
            .inc();
        self.kms_seconds
            .get_or_create(&KmsOpLabels {
                provider,
                operation,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The OpenMetrics text exposition of every metric, after `refresh` set the gauges that
    /// are read at scrape time.
    pub fn encode(&self, gauges: &ScrapeGauges) -> Result<String, fmt::Error> {
        for (cache, count) in [
            ("tenant_keys", gauges.tenant_keys),
            ("deks", gauges.deks),
            ("active_deks", gauges.active_deks),
        ] {
            self.resident
                .get_or_create(&ResidentLabels { cache })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        self.monitor_overcommitted
            .set(i64::from(gauges.monitor.overcommitted));
        for (state, count) in &gauges.closed {
            self.tenants_closed
                .get_or_create(&StateLabels { state })
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        let labels = self
            .tenants
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        self.tenant_labels
            .set(i64::try_from(labels).unwrap_or(i64::MAX));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Gauges read from the key caches and the revocation gates at scrape time.
#[derive(Debug, Clone, Default)]
pub struct ScrapeGauges {
    pub tenant_keys: u64,
    pub deks: u64,
    pub active_deks: u64,
    /// Closed tenants per key state (every known state, zeros included).
    pub closed: Vec<(&'static str, u64)>,
    /// Whether the key-state monitor keeps up with its schedule.
    pub monitor: crate::keyring::MonitorStatus,
}

/// The gRPC status code's canonical name, the `code` label.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A KEK provider whose every call is counted and timed in [`Metrics`] (outcome `ok` or the
/// provider error kind, e.g. `refused`, `throttled`, `unavailable`). Everything else is the
/// wrapped provider's.
pub struct MeteredProvider {
    inner: Arc<dyn KeyProvider>,
    metrics: Arc<Metrics>,
}

impl MeteredProvider {
    pub fn new(inner: Arc<dyn KeyProvider>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    fn record<T>(
        &self,
        operation: &'static str,
        started: Instant,
        result: &Result<T, ProviderError>,
    ) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.kind().as_str(),
        };
        self.metrics
            .kms_call(self.inner.kind(), operation, outcome, started.elapsed());
    }
}

impl fmt::Debug for MeteredProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeteredProvider")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl KeyProvider for MeteredProvider {
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
        let started = Instant::now();
        let result = self.inner.wrap(kek, key, ctx).await;
        self.record("wrap", started, &result);
        result
    }

    async fn unwrap(
        &self,
        kek: &KeyRef,
        wrapped: &WrappedKey,
        ctx: &WrapContext,
    ) -> Result<SecretKey, ProviderError> {
        let started = Instant::now();
        let result = self.inner.unwrap(kek, wrapped, ctx).await;
        self.record("unwrap", started, &result);
        result
    }

    async fn describe(&self, kek: &KeyRef) -> Result<KeyStatus, ProviderError> {
        let started = Instant::now();
        let result = self.inner.describe(kek).await;
        self.record("describe", started, &result);
        result
    }

    async fn canonicalize(&self, kek: &KeyRef) -> Result<KeyRef, ProviderError> {
        let started = Instant::now();
        let result = self.inner.canonicalize(kek).await;
        self.record("canonicalize", started, &result);
        result
    }

    async fn generate(
        &self,
        kek: &KeyRef,
        ctx: &WrapContext,
    ) -> Result<(SecretKey, WrappedKey), ProviderError> {
        let started = Instant::now();
        let result = self.inner.generate(kek, ctx).await;
        self.record("generate", started, &result);
        result
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn scrape(metrics: &Metrics) -> String {
        metrics.encode(&ScrapeGauges::default()).unwrap()
    }

    #[test]
    fn tenant_labels_are_bounded_and_the_rest_is_other() {
        let metrics = Metrics::new(3);
        for i in 0..10 {
            let label = metrics.tenant_series(Some(&format!("tenant-{i}")));
            metrics.rpc_finished(&label, "Encrypt", tonic::Code::Ok, Duration::from_millis(1));
        }
        // A known tenant keeps its own label after the bound is reached.
        let label = metrics.tenant_series(Some("tenant-1"));
        assert_eq!(label.label(), "tenant-1");
        metrics.rpc_finished(&label, "Encrypt", tonic::Code::Ok, Duration::from_millis(1));
        let text = scrape(&metrics);
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("keyward_rpc_requests_total{"))
            .collect();
        assert_eq!(series.len(), 4, "{text}");
        assert!(
            text.contains(
                r#"keyward_rpc_requests_total{tenant="_other",method="Encrypt",code="OK"} 7"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"keyward_rpc_requests_total{tenant="tenant-1",method="Encrypt",code="OK"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains("keyward_metrics_tenant_labels 3"), "{text}");
        assert!(!text.contains("tenant-9"), "{text}");
    }

    #[test]
    fn zero_tenant_labels_aggregates_everything() {
        let metrics = Metrics::new(0);
        assert_eq!(metrics.tenant_series(Some("a")).label(), OTHER_TENANT);
        assert_eq!(metrics.tenant_series(None).label(), "");
    }

    #[test]
    fn exposition_names_every_family() {
        let metrics = Metrics::new(10);
        metrics.cache_lookup("decrypt", true);
        metrics.denial("Decrypt");
        metrics.kms_call(
            ProviderKind::Local,
            "unwrap",
            "ok",
            Duration::from_millis(3),
        );
        metrics.payload(
            &metrics.tenant_series(Some("t")),
            PayloadKind::PlaintextIn,
            42,
        );
        let text = metrics
            .encode(&ScrapeGauges {
                tenant_keys: 1,
                deks: 2,
                active_deks: 3,
                closed: vec![("revoked", 4)],
                monitor: crate::keyring::MonitorStatus {
                    overcommitted: true,
                    ..Default::default()
                },
            })
            .unwrap();
        for expected in [
            r#"keyward_dek_cache_lookups_total{operation="decrypt",result="hit"} 1"#,
            r#"keyward_authz_denials_total{action="Decrypt"} 1"#,
            "keyward_monitor_overcommitted 1",
            r#"keyward_payload_bytes_total{tenant="t",kind="plaintext_in"} 42"#,
            r#"keyward_cache_resident_keys{cache="deks"} 2"#,
            r#"keyward_tenants_closed{state="revoked"} 4"#,
            "# TYPE keyward_kms_call_duration_seconds histogram",
            r#"keyward_kms_calls_total{provider="local",operation="unwrap",outcome="ok"} 1"#,
            r#"keyward_kms_call_duration_seconds_count{provider="local",operation="unwrap"} 1"#,
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }
}
