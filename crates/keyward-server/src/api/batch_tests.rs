//! The crypto service's batch calls and Decrypt authorization, in process (issue #16): a
//! `DecryptBatch` whose later item meets a revocation returns no plaintext for its earlier items;
//! an `EncryptBatch` whose response could exceed the message limit is refused before any work;
//! Decrypt policies see the scope `""`, never `"default"`.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::{collections::HashMap, sync::Arc, time::Duration};

use keyward_envelope::TenantId;
use keyward_kms::{KeyRef, ProviderKind, controlled::Controlled, local::LocalProvider};
use keyward_proto::v1::{self as pb, crypto_service_server::CryptoService as _};
use keyward_store::{KekState, Scope, Store as _, sqlite::SqliteStore};
use tonic::Request;

use super::CryptoApi;
use crate::{
    CachePolicy, Keyring, Providers,
    authz::{Authz, PolicyFiles},
    keyring::RevocationSource,
    keyring::RotationPolicy,
    tls::{PeerIdentity, PeerInfo},
};

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    kms: Arc<Controlled<LocalProvider>>,
    keyring: Arc<Keyring>,
    api: CryptoApi,
}

/// The shipped policies, plus `extra` (a file of Cedar policies) when given.
fn authz(dir: &std::path::Path, extra: Option<&str>) -> Arc<Authz> {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), policies.join(entry.file_name())).unwrap();
        }
    }
    if let Some(extra) = extra {
        std::fs::write(policies.join("extra.cedar"), extra).unwrap();
    }
    Arc::new(
        Authz::load(PolicyFiles {
            identities_file: policies.join("identities.toml"),
            policies_dir: policies,
        })
        .unwrap(),
    )
}

impl Fixture {
    async fn new(max_plaintext_bytes: usize, extra_policy: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let inner = LocalProvider::open(dir.path().join("kms")).unwrap();
        inner.create_key("k1").unwrap();
        inner.create_key("k2").unwrap();
        let kms = Arc::new(Controlled::new(inner));
        let store = Arc::new(SqliteStore::open(&dir.path().join("k.db")).await.unwrap());
        let keyring = Arc::new(Keyring::new(
            store.clone(),
            Providers::default().with(kms.clone()),
            CachePolicy {
                ttl: Duration::from_secs(300),
                max_tenant_keys: 100,
                max_deks: 1000,
            },
            RotationPolicy {
                max_age: Duration::from_secs(3600),
                max_messages: 1 << 20,
                max_bytes: 1 << 30,
            },
            Arc::new(keyward_audit::IdentifierHasher::new([3; 32])),
        ));
        let api = CryptoApi::new(
            Arc::clone(&keyring),
            authz(dir.path(), extra_policy),
            max_plaintext_bytes,
        );
        Self {
            _dir: dir,
            store,
            kms,
            keyring,
            api,
        }
    }
}

/// A request from the development principal (what a plaintext loopback connection is).
fn request<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(PeerInfo {
        remote: "127.0.0.1:9".parse().unwrap(),
        identity: PeerIdentity::Development,
    });
    request
}

fn tenant(s: &str) -> TenantId {
    TenantId::try_from(s).unwrap()
}

async fn onboard(k: &Keyring, t: &TenantId) {
    k.create_tenant(t, "t", "test".to_owned()).await.unwrap();
    k.register_key(t, &KeyRef::new(ProviderKind::Local, "k1"))
        .await
        .unwrap();
}

async fn encrypt(api: &CryptoApi, t: &TenantId, plaintext: &[u8]) -> Vec<u8> {
    api.encrypt(request(pb::EncryptRequest {
        tenant_id: t.to_string(),
        plaintext: plaintext.to_vec(),
        encryption_context: HashMap::new(),
        scope: String::new(),
        justification: None,
    }))
    .await
    .unwrap()
    .into_inner()
    .envelope
}

fn item_reason(result: &pb::DecryptBatchResult) -> String {
    match result.result.as_ref().unwrap() {
        pb::decrypt_batch_result::Result::Ok(_) => "OK".to_owned(),
        pb::decrypt_batch_result::Result::Error(e) => e.reason.clone(),
    }
}

#[tokio::test]
async fn a_decrypt_batch_meeting_a_revocation_returns_no_plaintext_for_earlier_items() {
    let fx = Fixture::new(1 << 20, None).await;
    let t = tenant("batch");
    onboard(&fx.keyring, &t).await;
    let first = encrypt(&fx.api, &t, b"decrypted before the revocation").await;
    // A second tenant key, so that the second item needs a KMS call the test can hold.
    fx.keyring
        .register_key(&t, &KeyRef::new(ProviderKind::Local, "k2"))
        .await
        .unwrap();
    let second = encrypt(&fx.api, &t, b"decrypted after").await;
    fx.keyring.purge_tenant(&t).await;
    fx.keyring
        .decrypt(&t, &first, &keyward_envelope::EncryptionContext::empty())
        .await
        .unwrap(); // the first item's keys are warm

    fx.kms.hold_next_unwrap();
    let api = fx.api.clone();
    let t2 = t.clone();
    let call = tokio::spawn(async move {
        api.decrypt_batch(request(pb::DecryptBatchRequest {
            tenant_id: t2.to_string(),
            items: vec![
                pb::DecryptBatchItem {
                    envelope: first,
                    encryption_context: HashMap::new(),
                },
                pb::DecryptBatchItem {
                    envelope: second,
                    encryption_context: HashMap::new(),
                },
            ],
            justification: None,
        }))
        .await
    });
    // The first item is done; the second waits for the KMS. RevokeKey commits now.
    fx.kms.held().await;
    fx.keyring
        .revoke(
            &t,
            KekState::Revoked,
            RevocationSource::Explicit,
            Some("ciso".to_owned()),
            "incident",
            0,
        )
        .await
        .unwrap();
    fx.kms.release();
    let response = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner();
    let reasons: Vec<String> = response.results.iter().map(item_reason).collect();
    assert_eq!(
        reasons[0], "KEY_REVOKED",
        "no plaintext leaves after the revocation committed: {reasons:?}"
    );
    assert_ne!(reasons[1], "OK", "{reasons:?}");
}

#[tokio::test]
async fn an_encrypt_batch_whose_response_could_exceed_the_limit_is_refused_before_any_work() {
    let fx = Fixture::new(1024, None).await;
    let t = tenant("big-batch");
    onboard(&fx.keyring, &t).await;
    let deks = fx.store.counts().await.unwrap().deks;
    let batch = |n: usize| {
        request(pb::EncryptBatchRequest {
            tenant_id: t.to_string(),
            items: (0..n)
                .map(|i| pb::EncryptBatchItem {
                    plaintext: vec![1],
                    encryption_context: HashMap::new(),
                    scope: format!("s{i}"),
                })
                .collect(),
            justification: None,
        })
    };
    // 1000 one-byte items: a request of a few KiB, but a response of 1000 envelopes (or
    // errors), beyond 1 KiB + 64 KiB.
    let status = fx.api.encrypt_batch(batch(1000)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("split it"),
        "{}",
        status.message()
    );
    assert_eq!(
        fx.store.counts().await.unwrap().deks,
        deks,
        "nothing was done"
    );
    // A batch that fits is served.
    let ok = fx.api.encrypt_batch(batch(50)).await.unwrap().into_inner();
    assert_eq!(ok.results.len(), 50);
    assert!(
        ok.results
            .iter()
            .all(|r| matches!(r.result, Some(pb::encrypt_batch_result::Result::Ok(_))))
    );
}

#[tokio::test]
async fn decrypt_policies_see_the_empty_scope_never_default() {
    // A rule written for the default scope must not decide Decrypt calls: before, Decrypt
    // saw "default", so this forbid refused every Decrypt.
    let fx = Fixture::new(
        1 << 20,
        Some(
            r#"forbid (principal, action == Keyward::Action::"Decrypt", resource)
               when { context.scope == "default" };
               forbid (principal, action == Keyward::Action::"Decrypt", resource)
               when { context.scope != "" };"#,
        ),
    )
    .await;
    let t = tenant("scoped");
    onboard(&fx.keyring, &t).await;
    let envelope = encrypt(&fx.api, &t, b"prompt").await;
    let plaintext = fx
        .api
        .decrypt(request(pb::DecryptRequest {
            tenant_id: t.to_string(),
            envelope,
            encryption_context: HashMap::new(),
            justification: None,
        }))
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    assert_eq!(plaintext, b"prompt");
    let _ = Scope::default_scope();
}
