//! Hostile input at the gRPC edge, against the real `keyward` binary on 127.0.0.1: oversized
//! messages, encryption contexts beyond their bounds, invalid UTF-8 in string fields, unknown
//! fields, deep nesting, and a flood of requests from one mTLS caller. Each gets a precise
//! status, and the store (domain tables and audit log) is unchanged afterwards
//! (docs/errors.md, "Limits").
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod support;

use std::time::{Duration, Instant};

use keyward_proto::v1::{
    self as pb, crypto_service_client::CryptoServiceClient,
    tenant_service_client::TenantServiceClient,
};
use keyward_store::{AuditQuery, Store as _, sqlite::SqliteStore};
use prost::{
    Message as _,
    bytes::{Buf as _, BufMut as _},
};
use support::{
    Server, assert_status, context, domain_state, local_key,
    pki::{Ca, Leaf, San, connect},
};
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    transport::Channel,
};
use tonic_types::StatusExt as _;

// ----- raw protobuf ---------------------------------------------------------------------------

/// Sends and receives message bytes as they are, so that a test can put anything on the wire.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; buf.remaining()];
        buf.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

async fn raw_call(channel: &Channel, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(body),
        PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

const ENCRYPT: &str = "/keyward.v1.CryptoService/Encrypt";
const CREATE_TENANT: &str = "/keyward.v1.TenantService/CreateTenant";
const GET_TENANT: &str = "/keyward.v1.TenantService/GetTenant";

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn key(field: u64, wire_type: u64, out: &mut Vec<u8>) {
    varint((field << 3) | wire_type, out);
}

/// A length-delimited field.
fn ld(field: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    key(field, 2, &mut out);
    varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// `depth` groups nested in one another under field `field` (wire types 3 and 4), with a
/// varint inside the innermost: the only way a client can make protobuf nest deeply in a
/// message whose own fields are flat.
fn nested_groups(field: u64, depth: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..depth {
        key(field, 3, &mut out);
    }
    key(1, 0, &mut out);
    varint(7, &mut out);
    for _ in 0..depth {
        key(field, 4, &mut out);
    }
    out
}

// ----- state ------------------------------------------------------------------------------

/// The domain tables and every audit record: what a refused request must leave unchanged.
async fn state(server: &Server) -> (String, Vec<(u64, Vec<u8>)>) {
    let store = SqliteStore::open_read_only(&server.database())
        .await
        .unwrap();
    let audit = store
        .audit_records(&AuditQuery::default().with_limit(100_000))
        .await
        .unwrap()
        .iter()
        .map(|r| (r.seq(), r.hash().to_vec()))
        .collect();
    (domain_state(&store).await, audit)
}

/// A development-mode server with one onboarded tenant, `acme`, and nothing running in the
/// background that writes to the store on its own (no monitor, hourly checkpoints).
async fn dev_server(extra: &[(&str, &str)]) -> Server {
    let mut env = vec![
        ("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "0"),
        ("KEYWARD_AUDIT__CHECKPOINT_INTERVAL_SECONDS", "3600"),
    ];
    env.extend_from_slice(extra);
    let server = Server::start(&env);
    server.onboard("acme").await;
    server
}

fn encrypt_request(ctx: std::collections::HashMap<String, String>) -> pb::EncryptRequest {
    pb::EncryptRequest {
        tenant_id: "acme".into(),
        plaintext: b"a prompt".to_vec(),
        encryption_context: ctx,
        scope: String::new(),
        justification: None,
    }
}

// ----- tests ------------------------------------------------------------------------------

#[tokio::test]
async fn oversized_messages_are_out_of_range_and_change_nothing() {
    let server = dev_server(&[("KEYWARD_MAX_PLAINTEXT_BYTES", "1024")]).await;
    let mut crypto = server.crypto().await;
    let mut tenants = server.tenants().await;
    let before = state(&server).await;

    // CryptoService decodes at most max_plaintext_bytes + 64 KiB: beyond, tonic refuses the
    // message before it is decoded.
    let limit = 1024 + 64 * 1024;
    let mut huge = encrypt_request(context(&[]));
    huge.plaintext = vec![0x41; limit + 1];
    let status = crypto.encrypt(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains(&limit.to_string()),
        "the message names the limit: {status:?}"
    );
    assert!(
        status.message().contains("EncryptStream"),
        "and where larger data goes: {status:?}"
    );
    // Within the message limit but above max_plaintext_bytes: the service's own check.
    let mut big = encrypt_request(context(&[]));
    big.plaintext = vec![0x41; 1025];
    let status = crypto.encrypt(big).await.unwrap_err();
    assert_status(
        Err::<(), _>(status.clone()),
        Code::InvalidArgument,
        "PAYLOAD_TOO_LARGE",
    );
    assert!(status.message().contains("EncryptStream"), "{status:?}");
    // A stream's messages have the same limit; a first message over it, or with a frame size
    // out of bounds, is refused before any key is touched.
    let first = |frame_size: u32, plaintext: usize| pb::EncryptStreamRequest {
        tenant_id: "acme".into(),
        encryption_context: context(&[]),
        scope: String::new(),
        frame_size,
        plaintext: vec![0x41; plaintext],
        justification: None,
    };
    let status = crypto
        .encrypt_stream(tokio_stream::iter([first(0, limit + 1)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    for frame_size in [1023, (1 << 20) + 1] {
        let status = crypto
            .encrypt_stream(tokio_stream::iter([first(frame_size, 10)]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("frame_size"), "{status:?}");
    }
    // TenantService and AuditService requests are small: at most 64 KiB.
    let status = tenants
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: "globex".into(),
            display_name: "x".repeat(64 * 1024 + 1),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    assert_eq!(before, state(&server).await);
    // The connection is still good.
    tenants
        .get_tenant(pb::GetTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn encryption_contexts_beyond_their_bounds_are_invalid_arguments_naming_the_bound() {
    let server = dev_server(&[]).await;
    let mut crypto = server.crypto().await;
    // The context is checked before the envelope is looked at (and before any key is
    // touched), so any bytes do here; no successful call, so no usage record can appear.
    let sealed = b"KW\x01 not a real envelope".to_vec();
    let before = state(&server).await;

    let pairs = |n: usize, value_len: usize| -> std::collections::HashMap<String, String> {
        (0..n)
            .map(|i| (format!("k{i:03}"), "v".repeat(value_len)))
            .collect()
    };
    let cases: Vec<(std::collections::HashMap<String, String>, &str)> = vec![
        (pairs(65, 0), "64"),
        (context(&[("k".repeat(129).as_str(), "v")]), "128"),
        (context(&[("", "v")]), "128"),
        (context(&[("k", "v".repeat(1025).as_str())]), "1024"),
        // Every entry within bounds, 16 × 1032 + 2 bytes in all: over the 16 KiB total.
        (pairs(16, 1024), "16384"),
        (context(&[("keyward:tenant", "globex")]), "reserved"),
    ];
    for (ctx, bound) in cases {
        for status in [
            crypto
                .encrypt(encrypt_request(ctx.clone()))
                .await
                .unwrap_err(),
            crypto
                .decrypt(pb::DecryptRequest {
                    tenant_id: "acme".into(),
                    envelope: sealed.clone(),
                    encryption_context: ctx.clone(),
                    justification: None,
                })
                .await
                .unwrap_err(),
        ] {
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert_eq!(
                status.get_details_error_info().unwrap().reason,
                "INVALID_ARGUMENT"
            );
            let violations = status.get_details_bad_request().unwrap().field_violations;
            assert_eq!(violations[0].field, "encryption_context", "{status:?}");
            assert!(
                status.message().contains(bound),
                "{bound} not in {status:?}"
            );
        }
    }
    assert_eq!(before, state(&server).await);
}

#[tokio::test]
async fn invalid_utf8_in_a_string_field_is_invalid_argument_and_changes_nothing() {
    let server = dev_server(&[]).await;
    let channel = server.channel().await;
    let before = state(&server).await;

    let valid = encrypt_request(context(&[])).encode_to_vec();
    // tenant_id (field 1) that is not UTF-8; then an encryption_context entry (field 3)
    // whose key is not UTF-8; then a scope (field 4) that is not UTF-8.
    let bad_tenant = [ld(1, b"ac\xffme"), ld(2, b"x")].concat();
    let bad_context_key = [
        valid.clone(),
        ld(3, &[ld(1, b"\xc3\x28"), ld(2, b"v")].concat()),
    ]
    .concat();
    let bad_scope = [valid.clone(), ld(4, b"\xed\xa0\x80")].concat();
    let bad_display_name = [ld(1, b"globex"), ld(2, b"\xfe\xff")].concat();
    for (path, body) in [
        (ENCRYPT, bad_tenant),
        (ENCRYPT, bad_context_key),
        (ENCRYPT, bad_scope),
        (CREATE_TENANT, bad_display_name),
    ] {
        let status = raw_call(&channel, path, body).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        assert!(
            status
                .message()
                .starts_with(keyward_proto::codec::DECODE_ERROR_PREFIX),
            "{status:?}"
        );
        assert!(status.message().contains("UTF-8"), "{status:?}");
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            keyward_proto::codec::MALFORMED_MESSAGE_REASON
        );
    }
    assert_eq!(before, state(&server).await);
    // The same request with valid UTF-8 is served on the same connection.
    raw_call(&channel, ENCRYPT, valid).await.unwrap();
}

#[tokio::test]
async fn unknown_fields_are_ignored_as_if_absent() {
    let server = dev_server(&[]).await;
    let channel = server.channel().await;
    let mut crypto = CryptoServiceClient::new(channel.clone());

    let request = encrypt_request(context(&[("purpose", "chat")]));
    let mut unknown = Vec::new();
    key(100, 0, &mut unknown); // varint
    varint(u64::MAX, &mut unknown);
    unknown.extend(ld(101, b"not a field of EncryptRequest"));
    key(102, 1, &mut unknown); // fixed64
    unknown.extend([0xAB; 8]);
    key(103, 5, &mut unknown); // fixed32
    unknown.extend([0xCD; 4]);
    unknown.extend(nested_groups(104, 8));
    let body = [request.encode_to_vec(), unknown.clone()].concat();
    let response =
        pb::EncryptResponse::decode(&raw_call(&channel, ENCRYPT, body).await.unwrap()[..]).unwrap();
    // Processed as the request without the unknown fields: it decrypts with that context.
    let plaintext = crypto
        .decrypt(pb::DecryptRequest {
            tenant_id: "acme".into(),
            envelope: response.envelope,
            encryption_context: request.encryption_context.clone(),
            justification: None,
        })
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    assert_eq!(plaintext, request.plaintext);

    // An unknown field between known ones, on an administrative call: same answer as without.
    let body = [ld(99, b"x"), ld(1, b"acme")].concat();
    let with =
        pb::Tenant::decode(&raw_call(&channel, GET_TENANT, body).await.unwrap()[..]).unwrap();
    let without = pb::Tenant::decode(
        &raw_call(&channel, GET_TENANT, ld(1, b"acme"))
            .await
            .unwrap()[..],
    )
    .unwrap();
    assert_eq!(with, without);
}

#[tokio::test]
async fn deep_nesting_is_refused_at_protobufs_recursion_limit_without_harm() {
    let server = dev_server(&[]).await;
    let channel = server.channel().await;
    let before = state(&server).await;
    let get = ld(1, b"acme");

    // Shallow nesting in an unknown field is skipped like any unknown field.
    let body = [get.clone(), nested_groups(15, 50)].concat();
    raw_call(&channel, GET_TENANT, body).await.unwrap();
    // Beyond prost's recursion limit (100): refused, whatever the depth. 20 000 levels are
    // 40 KB on the wire; the decoder stops at level 100 and never recurses further.
    for depth in [101, 150, 20_000] {
        let body = [get.clone(), nested_groups(15, depth)].concat();
        let status = raw_call(&channel, GET_TENANT, body).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{depth}: {status:?}");
        assert!(status.message().contains("recursion limit"), "{status:?}");
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            "MALFORMED_MESSAGE"
        );
        let body = [
            encrypt_request(context(&[])).encode_to_vec(),
            nested_groups(15, depth),
        ]
        .concat();
        let status = raw_call(&channel, ENCRYPT, body).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{depth}: {status:?}");
    }
    // Unbalanced groups (a start without its end) are a decode error too.
    let mut open = get.clone();
    key(15, 3, &mut open);
    let status = raw_call(&channel, GET_TENANT, open).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    assert_eq!(before, state(&server).await);
    raw_call(&channel, GET_TENANT, get).await.unwrap();
}

// ----- the per-caller in-flight limit -------------------------------------------------------

const CHAT: &str = "spiffe://keyward.test/ns/chat/sa/chat-api";
const BILLING: &str = "spiffe://keyward.test/ns/billing/sa/worker";
const OPERATOR: &str = "spiffe://keyward.test/ns/keyward/sa/operator";
const ACME_ADMIN: &str = "spiffe://keyward.test/ns/acme/sa/secops";
const GLOBEX_ADMIN: &str = "spiffe://keyward.test/ns/globex/sa/secops";

const IDENTITIES: &str = r#"
[[service]]
id = "chat-api"
identities = ["spiffe://keyward.test/ns/chat/sa/chat-api"]
tenants = ["acme"]
purposes = ["chat-history"]

[[service]]
id = "billing-worker"
identities = ["spiffe://keyward.test/ns/billing/sa/worker"]
tenants = ["globex"]

[[tenant_admin]]
id = "acme-secops"
identities = ["spiffe://keyward.test/ns/acme/sa/secops"]
tenant = "acme"

[[tenant_admin]]
id = "globex-secops"
identities = ["spiffe://keyward.test/ns/globex/sa/secops"]
tenant = "globex"

[[operator]]
id = "oncall"
identities = ["spiffe://keyward.test/ns/keyward/sa/operator"]
"#;

/// The limit used by the flood test.
const LIMIT: usize = 4;

/// An `Encrypt` call whose request message never comes: the server has the call (it counts
/// against the caller from its headers on) but cannot answer it, so the task only ends if the
/// call is refused. Aborting the task resets the stream, which ends the call on the server.
fn hold_one_call(
    channel: Channel,
) -> tokio::task::JoinHandle<Result<tonic::Response<tonic::Streaming<pb::EncryptResponse>>, Status>>
{
    tokio::spawn(async move {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let never = tokio_stream::pending::<pb::EncryptRequest>();
        grpc.streaming::<_, _, pb::EncryptResponse, _>(
            tonic::Request::new(never),
            PathAndQuery::from_static(ENCRYPT),
            keyward_proto::codec::ProstCodec::default(),
        )
        .await
    })
}

async fn health(channel: &Channel) -> Result<(), Status> {
    tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
}

fn assert_caller_limit(result: Result<impl std::fmt::Debug, Status>) {
    let status = result.expect_err("expected RESOURCE_EXHAUSTED");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "CALLER_CONCURRENCY_LIMIT");
    assert_eq!(info.metadata["limit"], LIMIT.to_string());
    assert!(
        status.message().contains("limits.max_in_flight_per_caller"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_flood_from_one_caller_is_refused_while_another_caller_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "main");
    let server_leaf = ca.server();
    let client_ca = dir.path().join("client-ca.pem");
    std::fs::write(&client_ca, ca.pem()).unwrap();
    let identities = dir.path().join("identities.toml");
    std::fs::write(&identities, IDENTITIES).unwrap();
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let limit = LIMIT.to_string();
    let env = [
        ("KEYWARD_TLS__CERT_FILE", s(&server_leaf.cert_file)),
        ("KEYWARD_TLS__KEY_FILE", s(&server_leaf.key_file)),
        ("KEYWARD_TLS__CLIENT_CA_FILE", s(&client_ca)),
        ("KEYWARD_AUTHZ__POLICIES_DIR", s(&policies)),
        ("KEYWARD_AUTHZ__IDENTITIES_FILE", s(&identities)),
        ("KEYWARD_LIMITS__MAX_IN_FLIGHT_PER_CALLER", limit.clone()),
        ("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "0".into()),
        ("KEYWARD_AUDIT__CHECKPOINT_INTERVAL_SECONDS", "3600".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(&env);
    let leaf = |name: &str, id: &str| -> Leaf { ca.client(name, &[San::Uri(id)], false) };
    let channel = |leaf: Leaf| {
        let ca = &ca;
        let addr = server.addr.clone();
        async move { connect(&addr, ca, Some(&leaf)).await.unwrap() }
    };

    // Onboarding: the operator creates the tenants, their admins register keys.
    let op = channel(leaf("operator", OPERATOR)).await;
    for (tenant, admin, name) in [
        ("acme", ACME_ADMIN, "acme-admin"),
        ("globex", GLOBEX_ADMIN, "globex-admin"),
    ] {
        TenantServiceClient::new(op.clone())
            .create_tenant(pb::CreateTenantRequest {
                tenant_id: tenant.into(),
                display_name: tenant.into(),
            })
            .await
            .unwrap();
        TenantServiceClient::new(channel(leaf(name, admin)).await)
            .register_key(local_key(tenant, "default"))
            .await
            .unwrap();
    }

    // The chat service opens LIMIT + 1 calls that never send their message, on two
    // connections (the limit is per caller, not per connection): exactly one is refused, the
    // other LIMIT stay in flight. Nothing else is sent as chat meanwhile, so this is exact.
    let chat_a = channel(leaf("chat", CHAT)).await;
    let chat_b = channel(leaf("chat-b", CHAT)).await;
    let mut held: Vec<_> = (0..=LIMIT)
        .map(|i| {
            hold_one_call(if i % 2 == 0 {
                chat_a.clone()
            } else {
                chat_b.clone()
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        if let Some(i) = held.iter().position(|h| h.is_finished()) {
            break held.remove(i);
        }
        assert!(
            Instant::now() < deadline,
            "none of the {} calls was refused",
            LIMIT + 1
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_caller_limit(refused.await.unwrap().map(|_| ()));
    assert!(held.iter().all(|h| !h.is_finished()));
    let before = state(&server).await;

    // A flood of authorized calls from chat, on both connections and a third: all refused at
    // once, none reaches the service (no DEK, no usage, no audit record).
    let chat_c = channel(leaf("chat-c", CHAT)).await;
    let mut flood = Vec::new();
    for i in 0..60 {
        let ch = [&chat_a, &chat_b, &chat_c][i % 3].clone();
        flood.push(tokio::spawn(async move {
            let mut crypto = CryptoServiceClient::new(ch);
            crypto
                .encrypt(pb::EncryptRequest {
                    tenant_id: "acme".into(),
                    plaintext: b"a prompt".to_vec(),
                    encryption_context: context(&[("purpose", "chat-history")]),
                    scope: format!("conversation-{i}"),
                    justification: None,
                })
                .await
        }));
    }
    for call in flood {
        assert_caller_limit(call.await.unwrap());
    }
    assert_caller_limit(
        TenantServiceClient::new(chat_c.clone())
            .get_tenant(pb::GetTenantRequest {
                tenant_id: "acme".into(),
            })
            .await,
    );
    assert_eq!(
        before,
        state(&server).await,
        "a refused call changed the store"
    );

    // Meanwhile another caller is served.
    let billing = channel(leaf("billing", BILLING)).await;
    let sealed = CryptoServiceClient::new(billing.clone())
        .encrypt(pb::EncryptRequest {
            tenant_id: "globex".into(),
            plaintext: b"an invoice".to_vec(),
            encryption_context: context(&[("purpose", "invoices")]),
            scope: String::new(),
            justification: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!sealed.envelope.is_empty());

    // The held calls end; chat is served again.
    for call in &held {
        call.abort();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(&chat_a).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the slots of the ended calls were not released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    CryptoServiceClient::new(chat_c)
        .encrypt(pb::EncryptRequest {
            tenant_id: "acme".into(),
            plaintext: b"a prompt".to_vec(),
            encryption_context: context(&[("purpose", "chat-history")]),
            scope: String::new(),
            justification: None,
        })
        .await
        .unwrap();
}
