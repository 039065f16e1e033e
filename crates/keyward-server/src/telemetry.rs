//! Per-call telemetry at the gRPC edge: a tower layer around the tonic router that gives every
//! call a request id (the caller's `x-request-id` when well-formed, else a fresh UUID), runs
//! the call inside a `rpc` tracing span carrying that id (so every log line of the call has it,
//! and the OpenTelemetry exporter turns the span into a trace span), returns the id in the
//! response's `x-request-id` metadata, and counts the call in [`Metrics`].
//!
//! The services add what only they know through [`CallInfo`] in the request extensions: the
//! tenant ([`note_tenant`], from `Authz::check`), payload sizes ([`note_payload`]) and
//! authorization denials ([`note_denial`]). Calls that did not come through the layer
//! (in-process tests of the services) carry no `CallInfo` and the hooks do nothing.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

use crate::metrics::{Metrics, PayloadKind};

/// The metadata key of the request id, in requests and responses.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// [`REQUEST_ID_HEADER`] as a header name, made once (a `&str` key is parsed on every use).
static REQUEST_ID_NAME: http::HeaderName = http::HeaderName::from_static(REQUEST_ID_HEADER);
/// `grpc-status`, likewise.
static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// Longest caller-supplied request id kept; a longer one is replaced.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// `log_format` in the configuration.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, with the fields of the enclosing spans (request id, tenant).
    Json,
}

/// `[otlp]` in the configuration: OpenTelemetry trace export (keyward-cli feature `otlp`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// OTLP/gRPC collector endpoint, e.g. `http://127.0.0.1:4317`; unset = no export.
    pub endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: Option<String>,
}

tokio::task_local! {
    static REQUEST_ID: Arc<str>;
}

/// The request id of the call being served, if any (for `Internal` errors, whose message
/// names it).
pub fn current_request_id() -> Option<Arc<str>> {
    REQUEST_ID.try_with(Arc::clone).ok()
}

/// A caller's request id is kept when it is 1 to 64 characters of `[A-Za-z0-9._:-]`:
/// anything else (empty, long, spaces, control characters) could forge log lines or
/// blow up label and log sizes, so it is replaced by a fresh id.
pub fn well_formed_request_id(raw: &str) -> bool {
    !raw.is_empty()
        && raw.len() <= MAX_REQUEST_ID_LEN
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// What the services tell the layer about the call being served.
pub struct CallInfo {
    metrics: Arc<Metrics>,
    request_id: Arc<str>,
    /// The `tenant` metric label's series, set by the first [`note_tenant`].
    tenant: OnceLock<Arc<crate::metrics::TenantSeries>>,
}

impl fmt::Debug for CallInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallInfo")
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

impl CallInfo {
    fn new(metrics: Arc<Metrics>, request_id: Arc<str>) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            request_id,
            tenant: OnceLock::new(),
        })
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    fn tenant_series(&self) -> Arc<crate::metrics::TenantSeries> {
        match self.tenant.get() {
            Some(series) => Arc::clone(series),
            None => self.metrics.tenant_series(None),
        }
    }
}

/// Records the tenant a call is about (the `tenant` label of its metrics and span field).
pub fn note_tenant(extensions: &http::Extensions, tenant: Option<&keyward_envelope::TenantId>) {
    let (Some(call), Some(tenant)) = (extensions.get::<Arc<CallInfo>>(), tenant) else {
        return;
    };
    if call.tenant.get().is_none() {
        let _ = call
            .tenant
            .set(call.metrics.tenant_series(Some(tenant.as_str())));
        tracing::Span::current().record("tenant", tenant.as_str());
    }
}

/// Counts a successful operation's payload bytes for the call's tenant.
pub fn note_payload(extensions: &http::Extensions, kind: PayloadKind, bytes: usize) {
    if let Some(call) = extensions.get::<Arc<CallInfo>>() {
        call.metrics.payload(&call.tenant_series(), kind, bytes);
    }
}

/// Counts an authentication or authorization denial of `action`.
pub fn note_denial(extensions: &http::Extensions, action: &'static str) {
    if let Some(call) = extensions.get::<Arc<CallInfo>>() {
        call.metrics.denial(action);
    }
}

/// The tower layer; see the module documentation.
#[derive(Debug, Clone)]
pub struct RpcLayer {
    metrics: Arc<Metrics>,
}

impl RpcLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// A request id unique across processes and time, UUID-shaped: 64 random bits drawn once per
/// process, then a 64-bit counter. One relaxed atomic increment per call, where a random UUID
/// per call cost a `getrandom` system call on every RPC.
fn fresh_request_id() -> Arc<str> {
    use std::sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    };
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // uuid's own table-driven encoder into a stack buffer (`format!` with five hex fields cost
    // ~2.4k instructions), then one allocation for the shared id.
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    Arc::from(
        &*uuid::Uuid::from_u64_pair(prefix, n)
            .hyphenated()
            .encode_lower(&mut buf),
    )
}

/// The service [`RpcLayer`] wraps around the router.
#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for RpcService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let method = method_name(request.uri().path());
        let (request_id, echo): (Arc<str>, bool) = match request
            .headers()
            .get(&REQUEST_ID_NAME)
            .and_then(|v| v.to_str().ok())
        {
            Some(id) if well_formed_request_id(id) => (Arc::from(id), true),
            _ => (fresh_request_id(), false),
        };
        let call = CallInfo::new(Arc::clone(&self.metrics), Arc::clone(&request_id));
        request.extensions_mut().insert(Arc::clone(&call));
        let span = tracing::info_span!(
            "rpc",
            otel.name = method,
            request_id = %request_id,
            rpc.method = method,
            tenant = tracing::field::Empty,
            code = tracing::field::Empty,
        );
        // The clone is the one that was not made ready: take the ready one (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = Arc::clone(&self.metrics);
        let started = Instant::now();
        metrics.rpc_started();
        let id = Arc::clone(&request_id);
        let fut = async move {
            let mut result = inner.call(request).await;
            let code = match &mut result {
                Ok(response) => {
                    if matches!(method, "Encrypt" | "EncryptBatch") {
                        point_to_streams(response.headers_mut());
                    }
                    // An error is a trailers-only response (grpc-status in the headers); a
                    // success sends its grpc-status 0 in the trailers.
                    let code = response
                        .headers()
                        .get(&GRPC_STATUS)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .map_or(tonic::Code::Ok, tonic::Code::from_i32);
                    // The id goes back on every error, on every streaming call (its failure
                    // can come after these headers), and on a unary success when the caller
                    // chose it: a server-made id on every unary success cost HPACK work on both
                    // ends of every call (issue #26) and told the caller nothing it would use.
                    if (echo || code != tonic::Code::Ok || STREAMING.contains(&method))
                        && let Ok(value) = http::HeaderValue::from_str(&id)
                    {
                        response
                            .headers_mut()
                            .insert(REQUEST_ID_NAME.clone(), value);
                    }
                    code
                }
                Err(_) => tonic::Code::Unknown,
            };
            let span = tracing::Span::current();
            span.record("code", crate::metrics::code_name(code));
            let elapsed = started.elapsed();
            if code == tonic::Code::Ok {
                tracing::debug!(elapsed_ms = elapsed.as_secs_f64() * 1000.0, "rpc finished");
            } else {
                tracing::info!(
                    code = crate::metrics::code_name(code),
                    elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                    "rpc failed"
                );
            }
            metrics.rpc_finished(&call.tenant_series(), method, code, elapsed);
            result
        };
        Box::pin(REQUEST_ID.scope(request_id, fut.instrument(span)))
    }
}

/// An Encrypt (or EncryptBatch) refused by tonic before it reached the service because the
/// request is over the message limit (`OUT_OF_RANGE`, a trailers-only response): the message
/// also says where larger data goes, as the service's own `PAYLOAD_TOO_LARGE` does.
fn point_to_streams(headers: &mut http::HeaderMap) {
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    if status.code() != tonic::Code::OutOfRange {
        return;
    }
    let hinted = tonic::Status::new(
        tonic::Code::OutOfRange,
        format!(
            "{}: the request is over this server's message limit (max_plaintext_bytes + 64 KiB); encrypt larger data with EncryptStream (docs/streaming.md)",
            status.message()
        ),
    );
    let _ = hinted.add_header(headers);
}

/// The methods whose responses are streams (and `Watch`, reflection): their `x-request-id`
/// is always sent.
const STREAMING: &[&str] = &[
    "EncryptStream",
    "DecryptStream",
    "ExportKeyHierarchy",
    "Export",
    "Watch",
    "ServerReflectionInfo",
];

/// The served methods (the `method` label's values besides `other`). The first six are the data
/// path's unary calls, whose metric series `metrics` keeps resolved ([`HOT_METHODS`]).
pub(crate) const METHODS: &[&str] = &[
    "Encrypt",
    "Decrypt",
    "EncryptBatch",
    "DecryptBatch",
    "Rewrap",
    "RewrapBatch",
    "CreateTenant",
    "RegisterKey",
    "GetTenant",
    "RevokeKey",
    "RestoreKey",
    "ReportKeyEvent",
    "SetTenantPolicy",
    "ShredScope",
    "ShredScopes",
    "ListKeyBindings",
    "EncryptStream",
    "DecryptStream",
    "RekeyTenant",
    "GetRekeyStatus",
    "ExportKeyHierarchy",
    "ListEvents",
    "Export",
    "GetPublicKey",
    "RotateSigningKey",
    "Check",
    "Watch",
    "ServerReflectionInfo",
];

/// The data path's unary calls: the first six [`METHODS`].
pub(crate) const HOT_METHODS: &[&str] = METHODS.split_at(6).0;

/// The `method` label: one of the served methods, or `other` (bounded: never the raw path).
fn method_name(path: &str) -> &'static str {
    const SERVICES: &[&str] = &[
        "/keyward.v1.CryptoService/",
        "/keyward.v1.TenantService/",
        "/keyward.v1.AuditService/",
        "/grpc.health.v1.Health/",
        "/grpc.reflection.v1.ServerReflection/",
        "/grpc.reflection.v1alpha.ServerReflection/",
    ];
    SERVICES
        .iter()
        .find_map(|service| path.strip_prefix(service))
        .and_then(|name| METHODS.iter().find(|m| **m == name))
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn an_encrypt_over_the_message_limit_is_told_about_encrypt_stream() {
        let mut headers = http::HeaderMap::new();
        tonic::Status::out_of_range("Error, decoded message length too large: found 2000000 bytes, the limit is: 1114112 bytes")
            .add_header(&mut headers)
            .unwrap();
        point_to_streams(&mut headers);
        let status = tonic::Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert!(
            status.message().contains("found 2000000 bytes"),
            "{status:?}"
        );
        assert!(status.message().contains("EncryptStream"), "{status:?}");
        // Other refusals are left as they are.
        let mut headers = http::HeaderMap::new();
        tonic::Status::permission_denied("no")
            .add_header(&mut headers)
            .unwrap();
        point_to_streams(&mut headers);
        assert_eq!(
            tonic::Status::from_header_map(&headers).unwrap().message(),
            "no"
        );
        let mut headers = http::HeaderMap::new();
        point_to_streams(&mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn request_ids_are_short_and_plain() {
        assert!(well_formed_request_id("abc-123_x.y:z"));
        assert!(well_formed_request_id(&"a".repeat(64)));
        assert!(!well_formed_request_id(&"a".repeat(65)));
        assert!(!well_formed_request_id(""));
        assert!(!well_formed_request_id("a b"));
        assert!(!well_formed_request_id("a\nb"));
        assert!(!well_formed_request_id("a\"b"));
    }

    #[test]
    fn fresh_request_ids_are_distinct_well_formed_and_share_the_process_prefix() {
        let a = fresh_request_id();
        let b = fresh_request_id();
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.len(), 36, "{id}");
            assert!(well_formed_request_id(id), "{id}");
            assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
        }
        assert_eq!(a[..19], b[..19], "one random prefix per process");
    }

    /// The hooks in `Authz::check` and the services find the call through its extensions.
    #[test]
    fn authz_denials_and_payloads_are_counted_for_the_calls_tenant() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
        let authz = crate::authz::Authz::load(crate::authz::PolicyFiles {
            identities_file: dir.join("identities.toml"),
            policies_dir: dir,
        })
        .unwrap();
        let metrics = Arc::new(Metrics::new(10));
        let mut request = tonic::Request::new(());
        request
            .extensions_mut()
            .insert(CallInfo::new(Arc::clone(&metrics), Arc::from("id-1")));
        let tenant = keyward_envelope::TenantId::try_from("acme").unwrap();
        // No peer identity on the request: unauthenticated, a denial of Decrypt.
        let denied = authz.check(
            &request,
            keyward_authz::Action::Decrypt,
            Some(&tenant),
            &keyward_authz::RequestContext::default(),
        );
        assert!(denied.is_err());
        note_payload(request.extensions(), PayloadKind::CiphertextIn, 99);
        let text = metrics
            .encode(&crate::metrics::ScrapeGauges::default())
            .unwrap();
        assert!(
            text.contains(r#"keyward_authz_denials_total{action="Decrypt"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"keyward_payload_bytes_total{tenant="acme",kind="ciphertext_in"} 99"#),
            "{text}"
        );
        // Without a CallInfo (a call that did not come through the layer) nothing is counted.
        let bare = tonic::Request::new(());
        note_payload(bare.extensions(), PayloadKind::CiphertextIn, 1);
        note_denial(bare.extensions(), "Decrypt");
    }

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(method_name("/keyward.v1.CryptoService/Encrypt"), "Encrypt");
        assert_eq!(
            method_name("/keyward.v1.CryptoService/RewrapBatch"),
            "RewrapBatch"
        );
        assert_eq!(method_name("/grpc.health.v1.Health/Check"), "Check");
        assert_eq!(
            method_name("/keyward.v1.TenantService/ShredScope"),
            "ShredScope"
        );
        assert_eq!(method_name("/keyward.v1.CryptoService/Nope"), "other");
        assert_eq!(method_name("/x.Y/Encrypt"), "other");
        assert_eq!(method_name(""), "other");
    }
}
