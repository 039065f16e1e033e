//! `EncryptStream` / `DecryptStream` (issue #23) through a real tonic server on 127.0.0.1 over
//! the crypto service, on the real SQLite store and the local KEK provider: round trips in any
//! chunking, every refusal of a bad first message, a tampered, truncated or extended envelope
//! ending the stream with the unary call's error after only authentic frames and never `final`,
//! a revocation mid-stream ending it `KEY_REVOKED`, and a stream longer than the cache TTL
//! asking the KMS again.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod common;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use common::{Counting, Fixture, tenant};
use keyward_audit::IdentifierHasher;
use keyward_envelope::framed;
use keyward_kms::{KeyRef, ProviderKind};
use keyward_proto::v1::{
    self as pb, crypto_service_client::CryptoServiceClient,
    crypto_service_server::CryptoServiceServer,
};
use keyward_server::{
    CachePolicy, Keyring, Providers,
    api::CryptoApi,
    authz::{Authz, PolicyFiles},
    keyring::{RevocationSource, RotationPolicy},
    tls::{PeerIdentity, PeerInfo},
};
use keyward_store::KekState;
use tokio::sync::mpsc;
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};
use tonic::{Code, transport::Channel};

struct Server {
    _dir: tempfile::TempDir,
    _fx: Fixture,
    keyring: Arc<Keyring>,
    provider: Arc<Counting>,
    client: CryptoServiceClient<Channel>,
}

const TENANT: &str = "acme";

fn context() -> std::collections::HashMap<String, String> {
    [("purpose".to_owned(), "documents".to_owned())].into()
}

/// A server whose caches keep keys for `ttl`, with tenant `acme` on the local key `default`.
async fn server(ttl: Duration) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let provider = Counting::open(&dir.path().join("kms"));
    let fx = Fixture::new(Providers::default().with(provider.clone())).await;
    let keyring = Arc::new(Keyring::new(
        fx.store.clone(),
        fx.providers.clone(),
        CachePolicy {
            ttl,
            max_tenant_keys: 100,
            max_deks: 1000,
        },
        RotationPolicy {
            max_age: Duration::from_secs(3600),
            max_messages: 1 << 20,
            max_bytes: 1 << 40,
        },
        Arc::new(IdentifierHasher::new(common::IDENTIFIER_KEY)),
    ));
    let t = tenant(TENANT);
    keyring
        .create_tenant(&t, "Acme", "test".to_owned())
        .await
        .unwrap();
    keyring
        .register_key(&t, &KeyRef::new(ProviderKind::Local, "default"))
        .await
        .unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let authz = Arc::new(
        Authz::load(PolicyFiles {
            identities_file: shipped.join("identities.toml"),
            policies_dir: shipped,
        })
        .unwrap(),
    );
    let api = CryptoApi::new(Arc::clone(&keyring), authz, 1 << 20);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Every call is the development principal, as on a server without TLS.
    let service = tonic::service::interceptor::InterceptedService::new(
        CryptoServiceServer::new(api).max_decoding_message_size((1 << 20) + 65536),
        move |mut r: tonic::Request<()>| {
            r.extensions_mut().insert(PeerInfo {
                remote: SocketAddr::from(([127, 0, 0, 1], 1)),
                identity: PeerIdentity::Development,
            });
            Ok(r)
        },
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let client = CryptoServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_decoding_message_size(8 << 20);
    Server {
        _dir: dir,
        _fx: fx,
        keyring,
        provider,
        client,
    }
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn encrypt_requests(
    plaintext: &[u8],
    chunk: usize,
    frame_size: u32,
) -> Vec<pb::EncryptStreamRequest> {
    let mut requests = vec![pb::EncryptStreamRequest {
        tenant_id: TENANT.to_owned(),
        encryption_context: context(),
        scope: "docs".to_owned(),
        frame_size,
        plaintext: Vec::new(),
        justification: None,
    }];
    for part in plaintext.chunks(chunk) {
        requests.push(pb::EncryptStreamRequest {
            plaintext: part.to_vec(),
            ..Default::default()
        });
    }
    requests
}

fn decrypt_requests(envelope: &[u8], chunk: usize) -> Vec<pb::DecryptStreamRequest> {
    let mut requests = vec![pb::DecryptStreamRequest {
        tenant_id: TENANT.to_owned(),
        encryption_context: context(),
        envelope: Vec::new(),
        justification: None,
    }];
    for part in envelope.chunks(chunk) {
        requests.push(pb::DecryptStreamRequest {
            envelope: part.to_vec(),
            ..Default::default()
        });
    }
    requests
}

async fn encrypt(s: &mut Server, plaintext: &[u8], chunk: usize, frame_size: u32) -> Vec<u8> {
    let mut out = s
        .client
        .encrypt_stream(tokio_stream::iter(encrypt_requests(
            plaintext, chunk, frame_size,
        )))
        .await
        .unwrap()
        .into_inner();
    let mut envelope = Vec::new();
    let mut first = true;
    while let Some(part) = out.next().await {
        let part = part.unwrap();
        assert_eq!(!part.dek_id.is_empty(), first, "dek_id on the first only");
        first = false;
        envelope.extend_from_slice(&part.envelope);
    }
    envelope
}

/// What a DecryptStream returned: the plaintext frames in order, and how it ended.
struct Decrypted {
    frames: Vec<pb::DecryptStreamResponse>,
    end: Result<(), tonic::Status>,
}

impl Decrypted {
    fn plaintext(&self) -> Vec<u8> {
        self.frames
            .iter()
            .flat_map(|f| f.plaintext.clone())
            .collect()
    }

    fn finals(&self) -> usize {
        self.frames.iter().filter(|f| f.r#final).count()
    }

    fn reason(&self) -> String {
        let status = self.end.as_ref().unwrap_err();
        reason_of(status)
    }
}

fn reason_of(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"))
        .reason
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

async fn decrypt_all(s: &mut Server, requests: Vec<pb::DecryptStreamRequest>) -> Decrypted {
    let mut frames = Vec::new();
    let end = match s.client.decrypt_stream(tokio_stream::iter(requests)).await {
        Err(status) => Err(status),
        Ok(response) => {
            let mut out = response.into_inner();
            loop {
                match out.next().await {
                    Some(Ok(frame)) => frames.push(frame),
                    Some(Err(status)) => break Err(status),
                    None => break Ok(()),
                }
            }
        }
    };
    Decrypted { frames, end }
}

#[tokio::test]
async fn round_trips_in_any_chunking_and_frame_size() {
    let mut s = server(Duration::from_secs(300)).await;
    for (len, chunk, frame_size, read_chunk) in [
        (0, 1, 0, 1),
        (1, 1, 1024, 7),
        (1024, 100, 1024, 1),
        (3 * 1024, 1024, 1024, 4096),
        (300_000, 70_001, 0, 65_536),
        (1 << 20, 1 << 20, 1 << 20, 33_333),
    ] {
        let plaintext = data(len);
        let envelope = encrypt(&mut s, &plaintext, chunk, frame_size).await;
        assert_eq!(framed::envelope_version(&envelope), Some(2));
        let header = framed::parse_framed_header(&envelope).unwrap().unwrap();
        let size = if frame_size == 0 {
            framed::DEFAULT_FRAME_SIZE
        } else {
            frame_size
        };
        assert_eq!(header.frame_size(), size);
        let frames = len.div_ceil(size as usize).max(1);
        assert_eq!(
            envelope.len(),
            header.encoded_len() + frames * framed::FRAME_OVERHEAD + len,
            "len {len}: one frame per frame size, the last one final, no empty trailer"
        );
        let out = decrypt_all(&mut s, decrypt_requests(&envelope, read_chunk)).await;
        out.end.as_ref().unwrap();
        assert!(out.plaintext() == plaintext, "len {len}");
        assert_eq!(out.frames.len(), frames);
        assert_eq!(out.finals(), 1);
        assert!(out.frames.last().unwrap().r#final);
    }
}

#[tokio::test]
async fn a_tampered_truncated_or_extended_envelope_yields_only_authentic_frames_and_no_final() {
    let mut s = server(Duration::from_secs(300)).await;
    let plaintext = data(10 * 1024);
    let envelope = encrypt(&mut s, &plaintext, 4096, 1024).await;
    let header_len = framed::parse_framed_header(&envelope)
        .unwrap()
        .unwrap()
        .encoded_len();
    let frame = framed::FRAME_OVERHEAD + 1024;

    // A flipped bit in the fourth frame: the three before it arrive, then DECRYPT_FAILED.
    let mut tampered = envelope.clone();
    tampered[header_len + 3 * frame + 100] ^= 1;
    let out = decrypt_all(&mut s, decrypt_requests(&tampered, 1000)).await;
    assert_eq!(out.reason(), "DECRYPT_FAILED");
    assert_eq!(out.frames.len(), 3);
    assert!(out.plaintext() == plaintext[..3 * 1024]);
    assert_eq!(out.finals(), 0);

    // Cut after any whole frame, or inside the final one: everything before, then an error.
    for cut in [
        header_len,
        header_len + frame,
        header_len + 9 * frame,
        envelope.len() - 1,
    ] {
        let out = decrypt_all(&mut s, decrypt_requests(&envelope[..cut], 999)).await;
        assert_eq!(out.reason(), "MALFORMED_ENVELOPE", "cut at {cut}");
        assert_eq!(out.finals(), 0, "cut at {cut}");
        assert!(
            out.plaintext() == plaintext[..out.plaintext().len()],
            "cut at {cut}"
        );
    }
    // Cut inside the header: nothing at all.
    let out = decrypt_all(&mut s, decrypt_requests(&envelope[..header_len - 1], 10)).await;
    assert_eq!(out.reason(), "MALFORMED_ENVELOPE");
    assert!(out.frames.is_empty());

    // Anything after the final frame: the final frame's plaintext is never sent.
    for extra in [vec![0u8], envelope[header_len..header_len + frame].to_vec()] {
        let mut extended = envelope.clone();
        extended.extend_from_slice(&extra);
        let out = decrypt_all(&mut s, decrypt_requests(&extended, 4096)).await;
        assert_eq!(out.reason(), "MALFORMED_ENVELOPE", "{} more", extra.len());
        assert_eq!(out.finals(), 0);
        let got = out.plaintext();
        assert_eq!(got.len(), 9 * 1024, "{} more", extra.len());
        assert!(got == plaintext[..9 * 1024]);
    }

    // A version 1 envelope is not a stream, and a stream is not for the unary call.
    let unary = s
        .client
        .encrypt(pb::EncryptRequest {
            tenant_id: TENANT.to_owned(),
            plaintext: b"short".to_vec(),
            encryption_context: context(),
            scope: String::new(),
            justification: None,
        })
        .await
        .unwrap()
        .into_inner()
        .envelope;
    let out = decrypt_all(&mut s, decrypt_requests(&unary, 50)).await;
    assert_eq!(out.reason(), "UNSUPPORTED_ENVELOPE");
    let status = s
        .client
        .decrypt(pb::DecryptRequest {
            tenant_id: TENANT.to_owned(),
            envelope: envelope.clone(),
            encryption_context: context(),
            justification: None,
        })
        .await
        .unwrap_err();
    assert_eq!(reason_of(&status), "UNSUPPORTED_ENVELOPE");
    assert!(status.message().contains("DecryptStream"), "{status:?}");
}

#[tokio::test]
async fn bad_first_and_later_messages_are_refused_with_the_field_named() {
    let mut s = server(Duration::from_secs(300)).await;
    let envelope = encrypt(&mut s, &data(5000), 5000, 1024).await;

    // A wrong context or another tenant: nothing is released.
    let mut requests = decrypt_requests(&envelope, 100);
    requests[0].encryption_context = [("purpose".to_owned(), "other".to_owned())].into();
    let out = decrypt_all(&mut s, requests).await;
    assert_eq!(out.reason(), "DECRYPT_FAILED");
    assert!(out.frames.is_empty());

    s.keyring
        .create_tenant(&tenant("globex"), "Globex", "test".to_owned())
        .await
        .unwrap();
    let mut requests = decrypt_requests(&envelope, 100);
    requests[0].tenant_id = "globex".to_owned();
    let out = decrypt_all(&mut s, requests).await;
    assert_eq!(out.reason(), "TENANT_MISMATCH");

    // Tenant named in a later message.
    let mut requests = decrypt_requests(&envelope, 100);
    requests[2].tenant_id = TENANT.to_owned();
    let out = decrypt_all(&mut s, requests).await;
    assert_eq!(out.reason(), "INVALID_ARGUMENT");
    assert!(out.end.unwrap_err().message().contains("first message"));

    let mut requests = encrypt_requests(&data(10), 5, 1024);
    requests[1].scope = "x".to_owned();
    let mut out = s
        .client
        .encrypt_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut end = None;
    while let Some(item) = out.next().await {
        if let Err(status) = item {
            end = Some(status);
        }
    }
    assert_eq!(reason_of(&end.unwrap()), "INVALID_ARGUMENT");

    // First-message errors come before any response.
    for (frame_size, tenant_id, field) in [
        (1023, TENANT, "frame_size"),
        ((1 << 20) + 1, TENANT, "frame_size"),
        (0, "Bad Tenant", "tenant_id"),
    ] {
        let mut requests = encrypt_requests(&data(10), 5, frame_size);
        requests[0].tenant_id = tenant_id.to_owned();
        let status = s
            .client
            .encrypt_stream(tokio_stream::iter(requests))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{status:?}");
    }
    let status = s
        .client
        .decrypt_stream(tokio_stream::iter(Vec::<pb::DecryptStreamRequest>::new()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn a_revocation_mid_stream_ends_it_with_key_revoked_and_no_final() {
    let mut s = server(Duration::from_secs(300)).await;
    let plaintext = data(64 * 1024);
    let envelope = encrypt(&mut s, &plaintext, 8192, 1024).await;
    let (tx, rx) = mpsc::channel(8);
    let mut requests = decrypt_requests(&envelope, 1024 + framed::FRAME_OVERHEAD).into_iter();
    // The header and three frames.
    for r in requests.by_ref().take(5) {
        tx.send(r).await.unwrap();
    }
    let mut out = s
        .client
        .decrypt_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut received = Vec::new();
    while received.len() < 2 {
        let frame = out.next().await.unwrap().unwrap();
        assert!(!frame.r#final);
        received.push(frame);
    }
    s.keyring
        .revoke(
            &tenant(TENANT),
            KekState::Revoked,
            RevocationSource::Explicit,
            Some("test".to_owned()),
            "mid-stream",
            now_ms(),
        )
        .await
        .unwrap();
    for r in requests {
        if tx.send(r).await.is_err() {
            break;
        }
    }
    drop(tx);
    let end = loop {
        match out.next().await {
            Some(Ok(frame)) => {
                assert!(!frame.r#final, "no final frame after the revocation");
                received.push(frame);
            }
            Some(Err(status)) => break status,
            None => panic!("the stream ended OK after a revocation"),
        }
    };
    assert_eq!(reason_of(&end), "KEY_REVOKED", "{end:?}");
    assert_eq!(end.code(), Code::FailedPrecondition);
    assert!(
        received.len() <= 3,
        "only frames opened before the revocation: {}",
        received.len()
    );

    // Once revoked, a new stream is refused at its first frame, both ways.
    let out = decrypt_all(&mut s, decrypt_requests(&envelope, 4096)).await;
    assert_eq!(out.reason(), "KEY_REVOKED");
    assert!(out.frames.is_empty());
    let status = s
        .client
        .encrypt_stream(tokio_stream::iter(encrypt_requests(b"x", 1, 0)))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&status), "KEY_REVOKED");
}

#[tokio::test]
async fn a_stream_longer_than_the_cache_ttl_asks_the_kms_again() {
    let mut s = server(Duration::from_millis(400)).await;
    let plaintext = data(8 * 1024);
    let envelope = encrypt(&mut s, &plaintext, 8192, 1024).await;
    let (tx, rx) = mpsc::channel(1);
    let mut requests = decrypt_requests(&envelope, 1024 + framed::FRAME_OVERHEAD).into_iter();
    // The call's response headers come once the first message is read and authorized.
    tx.send(requests.next().unwrap()).await.unwrap();
    let mut out = s
        .client
        .decrypt_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let before = s.provider.unwraps();
    let mut received = Vec::new();
    for (i, r) in requests.enumerate() {
        tx.send(r).await.unwrap();
        if i == 3 || i == 6 {
            // Past the TTL between two frames.
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
    }
    drop(tx);
    while let Some(frame) = out.next().await {
        received.extend(frame.unwrap().plaintext);
    }
    assert!(received == plaintext);
    let asked = s.provider.unwraps() - before;
    assert!(
        asked >= 2,
        "the tenant key was unwrapped again once its TTL ran out mid-stream: {asked} unwraps"
    );
}

/// What a model of one DecryptStream and its tenant expects of the next step.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Feed the next `n` bytes of the envelope.
    Push(usize),
    /// `RevokeKey`.
    Revoke,
    /// `RestoreKey`.
    Restore,
    /// Shred the scope of the stream's DEK.
    Shred,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        6 => (1usize..3000).prop_map(Step::Push),
        1 => Just(Step::Revoke),
        1 => Just(Step::Restore),
        1 => Just(Step::Shred),
    ]
}

/// Model-based: any interleaving of envelope bytes arriving with revocations, restorations and
/// a shred of the stream's own scope. The model: a frame is released only while the tenant is
/// open and the DEK not shredded, in order, authentic; the first refusal ends the stream with
/// the reason the model names (`KEY_REVOKED` while revoked, `DATA_KEY_SHREDDED` once shredded);
/// a revocation followed by a restoration between two pushes does not end it; the final frame
/// comes only at the end of the input, with nothing after it.
#[test]
fn any_interleaving_of_bytes_revocations_restorations_and_shreds_keeps_the_stream_honest() {
    use proptest::prelude::*;
    let cases = std::env::var("KEYWARD_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    proptest!(ProptestConfig::with_cases(cases), |(steps in proptest::collection::vec(step(), 1..40))| {
        runtime.block_on(run_model(steps));
    });
}

async fn run_model(steps: Vec<Step>) {
    let s = server(Duration::from_secs(300)).await;
    let t = tenant(TENANT);
    let docs = keyward_store::Scope::try_from("docs").unwrap();
    let ctx = keyward_envelope::EncryptionContext::try_from_map(
        context()
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>(),
    )
    .unwrap();
    let plaintext = data(12 * 1024);
    let (mut enc, mut envelope) = s
        .keyring
        .begin_stream_encryption(&t, &docs, &ctx, 1024)
        .await
        .unwrap();
    for frame in s
        .keyring
        .stream_encrypt_push(&mut enc, &plaintext)
        .await
        .unwrap()
    {
        envelope.extend(frame);
    }
    envelope.extend(s.keyring.stream_encrypt_finish(&mut enc).await.unwrap());

    let mut stream = s.keyring.begin_stream_decryption(&t, ctx.clone());
    let (mut revoked, mut shredded) = (false, false);
    let mut sent = 0;
    let mut released: Vec<u8> = Vec::new();
    let mut ended: Option<String> = None;
    for step in steps {
        match step {
            Step::Revoke if !revoked => {
                s.keyring
                    .revoke(
                        &t,
                        KekState::Revoked,
                        RevocationSource::Explicit,
                        None,
                        "model",
                        now_ms(),
                    )
                    .await
                    .unwrap();
                revoked = true;
            }
            Step::Restore if revoked => {
                s.keyring
                    .restore(&t, RevocationSource::Explicit, None, "model")
                    .await
                    .unwrap();
                revoked = false;
            }
            Step::Shred if !revoked && !shredded => {
                s.keyring
                    .shred_scope(&t, &docs, "model", "model")
                    .await
                    .unwrap();
                shredded = true;
            }
            Step::Push(n) if ended.is_none() && sent < envelope.len() => {
                let end = (sent + n).min(envelope.len());
                let (frames, error) = s
                    .keyring
                    .stream_decrypt_push(&mut stream, &envelope[sent..end])
                    .await;
                sent = end;
                for frame in frames {
                    assert!(
                        !revoked && !shredded,
                        "a frame released while revoked={revoked} shredded={shredded}"
                    );
                    s.keyring.release(&t, frame.generation).unwrap();
                    released.extend_from_slice(&frame.plaintext);
                }
                if let Some(e) = error {
                    ended = Some(e.reason().to_owned());
                }
            }
            _ => {}
        }
        if let Some(reason) = &ended {
            let expected = if revoked {
                "KEY_REVOKED"
            } else {
                "DATA_KEY_SHREDDED"
            };
            assert!(
                revoked || shredded,
                "the stream ended {reason} with the tenant open and the DEK kept"
            );
            assert_eq!(reason, expected);
            break;
        }
    }
    assert!(
        released == plaintext[..released.len()],
        "frames in order and authentic"
    );
    if ended.is_none() && sent == envelope.len() {
        let last = s.keyring.stream_decrypt_finish(&mut stream).unwrap();
        assert!(last.last);
        released.extend_from_slice(&last.plaintext);
        assert!(released == plaintext, "the whole message, once");
    }
}
