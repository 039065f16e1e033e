//! gRPC server reflection from outside, through the real binary: a Python client with no .proto
//! file discovers the whole API through `grpc.reflection.v1alpha` (grpcio-reflection's own
//! client) and through `grpc.reflection.v1`, then creates a tenant and encrypts and decrypts
//! with messages built only from what it discovered (tests/reflection/discover.py); and with
//! mutual TLS, reflection in both versions serves any caller with a valid client certificate,
//! before and without a Cedar decision, like the health service.
//!
//! The Python is `KEYWARD_TEST_PYTHON` (scripts/test installs grpcio, grpcio-reflection and
//! protobuf, pinned, into target/test-venv and exports it; default `python3`). Without it or
//! its packages these tests fail; they are never skipped.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod support;

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use keyward_proto::v1 as pb;
use serde_json::Value;
use support::{
    Server, assert_status, context,
    pki::{Ca, San, connect},
};
use tonic::{Code, transport::Channel};

/// Every service the server serves; each reflection version must list exactly these.
const SERVICES: [&str; 6] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "keyward.v1.AuditService",
    "keyward.v1.CryptoService",
    "keyward.v1.TenantService",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs discover.py against `server` through reflection `version`, creating `tenant`; returns
/// its JSON report. Panics with the script's stderr if it fails or runs over 3 minutes.
fn discover(server: &Server, version: &str, tenant: &str) -> Value {
    let python = std::env::var("KEYWARD_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    // The descriptor sets compiled into the binary: each file must be served unchanged.
    let expect = tempfile::tempdir().unwrap();
    let mut expect_files = Vec::new();
    for (name, set) in [
        ("keyward.fds", keyward_proto::FILE_DESCRIPTOR_SET),
        ("health.fds", tonic_health::pb::FILE_DESCRIPTOR_SET),
        (
            "reflection-v1.fds",
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        ),
        (
            "reflection-v1alpha.fds",
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ),
    ] {
        let path = expect.path().join(name);
        std::fs::write(&path, set).unwrap();
        expect_files.push(path);
    }
    let mut child = Command::new(&python)
        .arg(repo_root().join("tests/reflection/discover.py"))
        .args(["--version", version, "--address", &server.addr])
        .args(["--tenant", tenant, "--expect"])
        .args(&expect_files)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {python} ({e}): run the tests through scripts/test, which installs \
                 the pinned grpcio-reflection and exports KEYWARD_TEST_PYTHON"
            )
        });
    let pipe = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            r.read_to_end(&mut buf).unwrap();
            buf
        })
    };
    let stdout = pipe(Box::new(child.stdout.take().unwrap()));
    let stderr = pipe(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("discover.py --version {version} did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(
        status.success(),
        "discover.py --version {version} failed ({status}) with {python} (scripts/test installs \
         its packages and exports KEYWARD_TEST_PYTHON):\n{stderr}"
    );
    serde_json::from_slice(&stdout)
        .unwrap_or_else(|e| panic!("discover.py printed no JSON report ({e}); stderr:\n{stderr}"))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

/// What every version's report must show; then the envelope the script sealed through its
/// dynamic messages opens with the generated Rust client, to the script's plaintext.
async fn assert_discovered_and_used(server: &Server, report: &Value, version: &str) {
    assert_eq!(report["version"], version);
    assert_eq!(strings(&report["services"]), SERVICES, "{report:#}");
    let files = strings(&report["files"]);
    for file in [
        "keyward/v1/keyward.proto",
        "google/protobuf/timestamp.proto",
    ] {
        assert!(files.contains(&file), "{file} not discovered: {files:?}");
    }
    let methods = strings(&report["methods"]);
    for method in [
        "/keyward.v1.CryptoService/Encrypt (keyward.v1.EncryptRequest) -> keyward.v1.EncryptResponse",
        "/keyward.v1.CryptoService/DecryptBatch (keyward.v1.DecryptBatchRequest) -> keyward.v1.DecryptBatchResponse",
        "/keyward.v1.TenantService/GetTenant (keyward.v1.GetTenantRequest) -> keyward.v1.Tenant",
        "/keyward.v1.AuditService/ListEvents (keyward.v1.ListAuditEventsRequest) -> keyward.v1.ListAuditEventsResponse",
        "/keyward.v1.CryptoService/Rewrap (keyward.v1.RewrapRequest) -> keyward.v1.RewrapResponse",
        "/keyward.v1.TenantService/ShredScope (keyward.v1.ShredScopeRequest) -> keyward.v1.ShredScopeResponse",
        "/keyward.v1.TenantService/ListKeyBindings (keyward.v1.ListKeyBindingsRequest) -> keyward.v1.ListKeyBindingsResponse",
    ] {
        assert!(methods.contains(&method), "{method} missing: {methods:#?}");
    }
    // 25 keyward.v1 methods, the health service's and one per reflection service.
    let keyward = methods
        .iter()
        .filter(|m| m.starts_with("/keyward.v1."))
        .count();
    assert_eq!(keyward, 25, "{methods:#?}");

    let trip = &report["round_trip"];
    let hex = |key: &str| -> Vec<u8> {
        let s = trip[key].as_str().unwrap();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    let opened = server
        .crypto()
        .await
        .decrypt(pb::DecryptRequest {
            tenant_id: trip["tenant"].as_str().unwrap().to_owned(),
            envelope: hex("envelope_hex"),
            encryption_context: context(&[("purpose", "reflection-test")]),
            justification: None,
        })
        .await
        .expect("the envelope sealed through the discovered descriptors decrypts")
        .into_inner();
    assert_eq!(opened.plaintext, hex("plaintext_hex"));
}

#[tokio::test]
async fn grpcio_reflection_discovers_and_uses_the_api_through_v1alpha() {
    let server = Server::start(&[]);
    let report = discover(&server, "v1alpha", "reflected-v1alpha");
    assert_discovered_and_used(&server, &report, "v1alpha").await;
}

#[tokio::test]
async fn a_python_client_discovers_and_uses_the_api_through_v1() {
    let server = Server::start(&[]);
    let report = discover(&server, "v1", "reflected-v1");
    assert_discovered_and_used(&server, &report, "v1").await;
}

/// The services one reflection version lists, over `channel`.
async fn list_services(channel: Channel, version: &str) -> Result<Vec<String>, tonic::Status> {
    macro_rules! list {
        ($pb:ident) => {{
            use tonic_reflection::pb::$pb::{
                ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse,
            };
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut stream = ServerReflectionClient::new(channel)
                .server_reflection_info(tokio_stream::iter([request]))
                .await?
                .into_inner();
            match stream.message().await?.and_then(|r| r.message_response) {
                Some(MessageResponse::ListServicesResponse(list)) => {
                    list.service.into_iter().map(|s| s.name).collect()
                }
                other => panic!("unexpected {version} reflection response: {other:?}"),
            }
        }};
    }
    Ok(match version {
        "v1" => list!(v1),
        "v1alpha" => list!(v1alpha),
        _ => unreachable!("{version}"),
    })
}

/// With mutual TLS, reflection is not an RPC about a tenant and has no Cedar action: a caller
/// whose certificate chains to the client CA discovers the API in either version even if its
/// identity maps to no principal (which gets UNAUTHENTICATED from every Keyward RPC), like the
/// health service; without a certificate nothing is served (docs/authorization.md).
#[tokio::test]
async fn with_mtls_both_reflection_versions_serve_any_certified_caller() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "refl");
    let server_leaf = ca.server();
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let env = [
        ("KEYWARD_TLS__CERT_FILE", path(&server_leaf.cert_file)),
        ("KEYWARD_TLS__KEY_FILE", path(&server_leaf.key_file)),
        ("KEYWARD_TLS__CLIENT_CA_FILE", path(&ca.cert_file)),
        (
            "KEYWARD_AUTHZ__POLICIES_DIR",
            path(&repo_root().join("policies")),
        ),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(&env);
    let unmapped = ca.client(
        "unmapped",
        &[San::Uri(
            "spiffe://keyward.test/ns/chat/sa/not-in-the-mapping",
        )],
        false,
    );
    let channel = connect(&server.addr, &ca, Some(&unmapped)).await.unwrap();

    for version in ["v1", "v1alpha"] {
        let mut names = list_services(channel.clone(), version).await.unwrap();
        names.sort();
        assert_eq!(names, SERVICES, "{version}");
    }
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "keyward.v1.CryptoService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    assert_status(
        pb::crypto_service_client::CryptoServiceClient::new(channel)
            .encrypt(pb::EncryptRequest {
                tenant_id: "acme".into(),
                plaintext: b"x".to_vec(),
                encryption_context: context(&[]),
                scope: String::new(),
                justification: None,
            })
            .await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );

    // No client certificate: the handshake (or, with TLS 1.3, the first call) fails.
    if let Ok(anonymous) = connect(&server.addr, &ca, None).await {
        for version in ["v1", "v1alpha"] {
            let status = list_services(anonymous.clone(), version)
                .await
                .expect_err("served without a client certificate");
            assert!(
                matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
                ),
                "{version}: {status:?}"
            );
        }
    }
}
