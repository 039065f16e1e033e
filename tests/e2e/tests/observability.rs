//! Observability of the real binary: the admin listener (/metrics, /livez, /readyz), request
//! ids, bounded metric labels, JSON logs without secrets, OTLP trace export to a collector
//! speaking the real OTLP TraceService proto, and the graceful shutdown (docs/observability.md).
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stderr,
    reason = "tests: a failure must abort with a message"
)]

mod support;

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use keyward_proto::v1 as pb;
use support::{Server, context, test_db::TestDb};
use tonic::{Code, Request, transport::Channel};

fn encrypt_request(tenant: &str, scope: &str, plaintext: &[u8]) -> pb::EncryptRequest {
    pb::EncryptRequest {
        tenant_id: tenant.to_owned(),
        plaintext: plaintext.to_vec(),
        encryption_context: context(&[("purpose", "test")]),
        scope: scope.to_owned(),
        justification: None,
    }
}

fn with_request_id<T>(message: T, id: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    request
}

fn response_id<T>(response: &tonic::Response<T>) -> String {
    response
        .metadata()
        .get("x-request-id")
        .expect("x-request-id in the response")
        .to_str()
        .unwrap()
        .to_owned()
}

/// The value of the one series `name{labels}` in a Prometheus exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

/// A key-state monitor whose budget cannot cover its schedule says so on /readyz (still ready)
/// and in the metrics (docs/operations.md, "Sizing the key-state monitor").
#[tokio::test]
async fn an_overcommitted_monitor_shows_on_readyz_and_in_the_metrics() {
    let server = Server::start(&[
        ("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "1"),
        ("KEYWARD_REVOCATION__MONITOR_MAX_CHECKS_PER_SECOND", "1"),
    ]);
    let (status, body) = server.admin_get("/readyz");
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    // Four held keys (registration caches each), each due every second: four checks a second
    // needed, one allowed.
    for i in 0..4 {
        server.onboard(&format!("busy-{i}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        let (status, body) = server.admin_get("/readyz");
        assert_eq!(
            status, 200,
            "an overcommitted monitor does not make a replica unready"
        );
        if body.contains("monitor: overcommitted") {
            break body;
        }
        assert!(Instant::now() < deadline, "/readyz never said so: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(body.starts_with("ready\n"), "{body}");
    let (_, metrics) = server.admin_get("/metrics");
    assert_eq!(sample(&metrics, "keyward_monitor_overcommitted"), Some(1.0));
    assert!(sample(&metrics, "keyward_monitor_lag_seconds").unwrap() > 1.0);
    assert!(
        sample(
            &metrics,
            r#"keyward_monitor_checks_total{outcome="healthy"}"#
        )
        .unwrap()
            >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn admin_endpoints_metrics_and_request_ids() {
    let server = Server::start(&[]);
    assert_eq!(server.admin_get("/livez").0, 200);
    let (status, body) = server.admin_get("/readyz");
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    assert_eq!(server.admin_get("/nope").0, 404);
    server.onboard("obs-a").await;
    let mut crypto = server.crypto().await;

    // A well-formed caller id comes back; a malformed one is replaced by a fresh id.
    let plaintext = b"seventeen bytes!!";
    let response = crypto
        .encrypt(with_request_id(
            encrypt_request("obs-a", "s1", plaintext),
            "caller-id-1",
        ))
        .await
        .unwrap();
    assert_eq!(response_id(&response), "caller-id-1");
    let envelope = response.into_inner().envelope;
    let response = crypto
        .encrypt(with_request_id(
            encrypt_request("obs-a", "s1", plaintext),
            "not a valid id",
        ))
        .await
        .unwrap();
    // A success whose id the server made carries none (issue #26: HPACK work on every call
    // for an id the caller never chose); the server still logged the call under a fresh id.
    assert!(
        response.metadata().get("x-request-id").is_none(),
        "no id on a success the caller did not name"
    );
    let decrypted = crypto
        .decrypt(pb::DecryptRequest {
            tenant_id: "obs-a".to_owned(),
            envelope: envelope.clone(),
            encryption_context: context(&[("purpose", "test")]),
            justification: None,
        })
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    assert_eq!(decrypted, plaintext);
    // An error carries a fresh id when the caller named none, and the caller's own when it
    // named one (in the status metadata).
    let wrong_context = pb::DecryptRequest {
        tenant_id: "obs-a".to_owned(),
        envelope: envelope.clone(),
        encryption_context: context(&[("purpose", "other")]),
        justification: None,
    };
    let mut failed_ids = Vec::new();
    let mut failed = None;
    for id in ["not a valid id", "caller-id-2"] {
        let status = crypto
            .decrypt(with_request_id(wrong_context.clone(), id))
            .await
            .unwrap_err();
        failed_ids.push(
            status
                .metadata()
                .get("x-request-id")
                .expect("an error carries the request id")
                .to_str()
                .unwrap()
                .to_owned(),
        );
        failed = Some(status);
    }
    let failed = failed.unwrap();
    assert_ne!(failed_ids[0], "not a valid id");
    assert_eq!(failed_ids[0].len(), 36, "a UUID: {}", failed_ids[0]);
    assert_eq!(failed_ids[1], "caller-id-2");

    let (status, metrics) = server.admin_get("/metrics");
    assert_eq!(status, 200);
    let s = |series: &str| sample(&metrics, series);
    assert_eq!(
        s(r#"keyward_rpc_requests_total{tenant="obs-a",method="Encrypt",code="OK"}"#),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        s(r#"keyward_rpc_requests_total{tenant="obs-a",method="Decrypt",code="OK"}"#),
        Some(1.0)
    );
    let failed_code = status_code_name(failed.code());
    assert_eq!(
        s(&format!(
            r#"keyward_rpc_requests_total{{tenant="obs-a",method="Decrypt",code="{failed_code}"}}"#
        )),
        Some(2.0), // the failures with a fresh id and with the caller's
        "{metrics}"
    );
    assert_eq!(
        s(r#"keyward_payload_bytes_total{tenant="obs-a",kind="plaintext_in"}"#),
        Some(34.0)
    );
    assert_eq!(
        s(r#"keyward_payload_bytes_total{tenant="obs-a",kind="plaintext_out"}"#),
        Some(17.0)
    );
    assert_eq!(
        s(r#"keyward_payload_bytes_total{tenant="obs-a",kind="ciphertext_in"}"#),
        Some(envelope.len() as f64)
    );
    // Registration generated the tenant key through the local provider; the first Encrypt
    // missed the DEK cache, the second hit it.
    assert_eq!(
        s(r#"keyward_kms_calls_total{provider="local",operation="generate",outcome="ok"}"#),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        s(r#"keyward_dek_cache_lookups_total{operation="encrypt",result="miss"}"#),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        s(r#"keyward_dek_cache_lookups_total{operation="encrypt",result="hit"}"#),
        Some(1.0)
    );
    assert!(s(r#"keyward_cache_resident_keys{cache="active_deks"}"#).is_some());
    assert_eq!(s(r#"keyward_tenants_closed{state="revoked"}"#), Some(0.0));
    assert!(metrics.contains("# TYPE keyward_kms_call_duration_seconds histogram"));
    assert!(metrics.contains("# TYPE keyward_rpc_duration_seconds histogram"));

    // Revocation shows up as a state count, not as a label per tenant.
    let mut tenants = server.tenants().await;
    tenants
        .revoke_key(pb::RevokeKeyRequest {
            tenant_id: "obs-a".to_owned(),
            reason: "test".to_owned(),
            requested_by: "test".to_owned(),
        })
        .await
        .unwrap();
    let (_, metrics) = server.admin_get("/metrics");
    assert_eq!(
        sample(&metrics, r#"keyward_tenants_closed{state="revoked"}"#),
        Some(1.0),
        "{metrics}"
    );
}

fn status_code_name(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::NotFound => "NOT_FOUND",
        other => panic!("unexpected code {other:?}"),
    }
}

#[tokio::test]
async fn tenant_labels_stay_within_the_bound() {
    let server = Server::start(&[("KEYWARD_METRICS__MAX_TENANT_LABELS", "2")]);
    let mut crypto = server.crypto().await;
    for tenant in ["lab-1", "lab-2", "lab-3", "lab-4", "lab-5"] {
        server.onboard(tenant).await;
        crypto
            .encrypt(encrypt_request(tenant, "", b"x"))
            .await
            .unwrap();
    }
    let (_, metrics) = server.admin_get("/metrics");
    let mut labels: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once("tenant=\"")?.1.split('"').next())
        .collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels, ["_other", "lab-1", "lab-2"], "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            r#"keyward_rpc_requests_total{tenant="_other",method="Encrypt",code="OK"}"#
        ),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "keyward_metrics_tenant_labels"), Some(2.0));
}

#[test]
fn a_remote_admin_address_needs_allow_remote() {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(support::keyward_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("KEYWARD_ADMIN__LISTEN", "0.0.0.0:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("admin.allow_remote"), "{stderr}");
}

const CANARY: &str = "CANARY-plaintext-5e1f0a77-do-not-log";

/// A JSON log of a session with successes, failures and a shutdown: every line is JSON, the
/// calls' lines carry their request id, and neither the plaintext nor the KEK appears.
// Multi-threaded: Server::wait_exit blocks one thread while the client connections (which
// must answer the server's GOAWAY ping) and the collector keep running on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_request_ids_and_never_secrets() {
    let data = tempfile::tempdir().unwrap();
    let log_path = data.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut server = Server::start_with_stderr(
        data.path(),
        &[("KEYWARD_LOG_FORMAT", "json"), ("KEYWARD_LOG", "debug")],
        Stdio::from(log),
    );
    server.onboard("logs-a").await;
    let mut crypto = server.crypto().await;
    let envelope = crypto
        .encrypt(with_request_id(
            encrypt_request("logs-a", "chat-1", CANARY.as_bytes()),
            "log-req-1",
        ))
        .await
        .unwrap()
        .into_inner()
        .envelope;
    let plaintext = crypto
        .decrypt(pb::DecryptRequest {
            tenant_id: "logs-a".to_owned(),
            envelope: envelope.clone(),
            encryption_context: context(&[("purpose", "test")]),
            justification: None,
        })
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    assert_eq!(plaintext, CANARY.as_bytes());
    // Failures are logged (at info) with their request id.
    crypto
        .decrypt(with_request_id(
            pb::DecryptRequest {
                tenant_id: "logs-a".to_owned(),
                envelope,
                encryption_context: context(&[("purpose", "wrong")]),
                justification: None,
            },
            "log-req-2",
        ))
        .await
        .unwrap_err();
    crypto
        .encrypt(with_request_id(
            encrypt_request("nobody", "", CANARY.as_bytes()),
            "log-req-3",
        ))
        .await
        .unwrap_err();
    let kek = std::fs::read(server.local_kms_dir().join("default.key")).unwrap();
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(30)).unwrap().success());

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.lines().count() > 5, "{log}");
    let mut failed_ids = Vec::new();
    for line in log.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            value["timestamp"].is_string() && value["level"].is_string(),
            "{line}"
        );
        if value["message"] == "rpc failed" {
            failed_ids.push(value["span"]["request_id"].as_str().unwrap().to_owned());
        }
    }
    failed_ids.sort();
    assert_eq!(failed_ids, ["log-req-2", "log-req-3"], "{log}");
    for secret in [
        CANARY.to_owned(),
        hex_of(CANARY.as_bytes()),
        hex_of(&kek),
        hex_of(&kek).to_uppercase(),
    ] {
        assert!(!log.contains(&secret), "{secret} appears in the log");
    }
    // The debug log shows the key file's bytes in no encoding either (a byte list too).
    assert!(
        !log.contains(&format!("{:?}", &kek[..8])),
        "key bytes in the log"
    );
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ----- OTLP trace export -------------------------------------------------------------------

mod collector {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    };

    /// A minimal OTLP collector: keeps every span it receives.
    #[derive(Clone, Default)]
    pub(super) struct Collector {
        pub(super) spans: Arc<Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>,
    }

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut spans = self.spans.lock().unwrap();
            for resource in request.into_inner().resource_spans {
                for scope in resource.scope_spans {
                    spans.extend(scope.spans);
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        }
    }

    /// Serves the collector on a free loopback port; returns its endpoint.
    pub(super) async fn start(collector: Collector) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    pub(super) fn attribute(
        span: &opentelemetry_proto::tonic::trace::v1::Span,
        key: &str,
    ) -> Option<String> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                Value::StringValue(s) => s.clone(),
                other => format!("{other:?}"),
            })
    }
}

// Multi-threaded: Server::wait_exit blocks one thread while the client connections (which
// must answer the server's GOAWAY ping) and the collector keep running on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector_with_the_request_id() {
    let collector = collector::Collector::default();
    let endpoint = collector::start(collector.clone()).await;
    let mut server = Server::start(&[("KEYWARD_OTLP__ENDPOINT", endpoint.as_str())]);
    server.onboard("otel-a").await;
    let mut crypto = server.crypto().await;
    crypto
        .encrypt(with_request_id(
            encrypt_request("otel-a", "", b"traced"),
            "otlp-req-1",
        ))
        .await
        .unwrap();
    // Shutdown flushes the batch exporter.
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(30)).unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let span = loop {
        let found = collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| collector::attribute(s, "request_id").as_deref() == Some("otlp-req-1"))
            .cloned();
        if let Some(span) = found {
            break span;
        }
        assert!(
            Instant::now() < deadline,
            "no span with the request id arrived: {:?}",
            collector.spans.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(span.name, "Encrypt");
    assert_eq!(
        collector::attribute(&span, "tenant").as_deref(),
        Some("otel-a")
    );
    assert_eq!(collector::attribute(&span, "code").as_deref(), Some("OK"));
    assert_eq!(
        collector::attribute(&span, "rpc.method").as_deref(),
        Some("Encrypt")
    );
    // Calls without a caller id are traced too (CreateTenant, RegisterKey).
    let names: Vec<String> = collector
        .spans
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert!(names.iter().any(|n| n == "RegisterKey"), "{names:?}");
}

// ----- graceful shutdown -------------------------------------------------------------------

/// SIGTERM while calls are in flight: readiness goes 503 first, new connections and new calls
/// are refused, the in-flight calls still complete OK, the process exits 0 within the grace
/// period, and the audit chain (with its final checkpoint) verifies afterwards.
///
/// The calls are held in flight deterministically: the test locks the `deks` table in
/// PostgreSQL, so each Encrypt of a new scope waits on the store until the test commits.
// Multi-threaded: Server::wait_exit blocks one thread while the client connections (which
// must answer the server's GOAWAY ping) and the collector keep running on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_calls_and_refuses_new_ones() {
    let db = TestDb::create().await;
    let url = db.url.clone();
    let data = tempfile::tempdir().unwrap();
    let env = [
        ("KEYWARD_STORE", url.as_str()),
        ("KEYWARD_SHUTDOWN_GRACE_SECONDS", "60"),
    ];
    let mut server = Server::start_in(data.path(), &env);
    server.onboard("drain-a").await;
    let channel = server.channel().await;
    let mut crypto = pb::crypto_service_client::CryptoServiceClient::new(channel.clone());
    crypto
        .encrypt(encrypt_request("drain-a", "warm", b"warm"))
        .await
        .unwrap();

    // Hold the store: Encrypts of new scopes wait on the lock.
    let mut lock = db.raw().await;
    sqlx::raw_sql("BEGIN; LOCK TABLE deks IN ACCESS EXCLUSIVE MODE")
        .execute(&mut lock)
        .await
        .unwrap();
    let in_flight: Vec<_> = (0..3)
        .map(|i| {
            let mut client = pb::crypto_service_client::CryptoServiceClient::new(channel.clone());
            tokio::spawn(async move {
                let scope = format!("held-{i}");
                let plaintext = format!("in flight {i}");
                client
                    .encrypt(encrypt_request("drain-a", &scope, plaintext.as_bytes()))
                    .await
                    .map(|r| (plaintext, r.into_inner().envelope))
            })
        })
        .collect();
    let mut watcher = db.raw().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut watcher)
        .await
        .unwrap();
        if waiting >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the calls never reached the store lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let signalled = Instant::now();
    server.terminate();
    // Not ready any more, with the reason.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = server.admin_get("/readyz");
        if status == 503 {
            assert!(body.contains("draining"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // New connections are refused...
    let deadline = Instant::now() + Duration::from_secs(10);
    while Channel::from_shared(server.endpoint())
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "new connections still accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... and so are new calls on the open connection.
    let refused = crypto
        .encrypt(encrypt_request("drain-a", "warm", b"late"))
        .await
        .unwrap_err();
    // Refused on the client side (GOAWAY: the stream is never sent) or by the reconnect.
    assert!(
        matches!(refused.code(), Code::Unavailable | Code::Cancelled),
        "{refused:?}"
    );
    // The in-flight calls are still waiting and the process still runs.
    assert!(server.wait_exit(Duration::from_millis(300)).is_none());

    sqlx::raw_sql("COMMIT").execute(&mut lock).await.unwrap();
    let mut envelopes = Vec::new();
    for call in in_flight {
        let outcome = tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("an in-flight call did not finish")
            .unwrap();
        envelopes.push(outcome.expect("an in-flight call failed"));
    }
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("the server did not exit after draining");
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(60));
    drop(server);

    // The envelopes acknowledged during the drain decrypt after a restart, and the audit chain
    // (ending with the shutdown's final checkpoint) verifies.
    let server = Server::start_in(data.path(), &env);
    let mut crypto = server.crypto().await;
    for (plaintext, envelope) in envelopes {
        let out = crypto
            .decrypt(pb::DecryptRequest {
                tenant_id: "drain-a".to_owned(),
                envelope,
                encryption_context: context(&[("purpose", "test")]),
                justification: None,
            })
            .await
            .unwrap()
            .into_inner()
            .plaintext;
        assert_eq!(out, plaintext.as_bytes());
    }
    server.verify_audit_chain(data.path());
    drop(server);
    drop(lock);
    drop(watcher);
    db.finish().await;
}
