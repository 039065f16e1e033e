//! `Rewrap` / `RewrapBatch` through the crypto service, in process (issue #21, item 4): the
//! request converted and checked (`target_scope` named in errors, the batch limits), and the
//! `Rewrap` Cedar action decided per item, independently of `Decrypt`: a caller permitted only
//! Rewrap moves an envelope but cannot read it, one permitted only Decrypt reads it but cannot
//! move it; policies see the target scope, or `""` when the envelope's own scope is kept.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::{collections::HashMap, sync::Arc, time::Duration};

use keyward_envelope::{EncryptionContext, TenantId};
use keyward_kms::{KeyRef, ProviderKind, local::LocalProvider};
use keyward_proto::v1::{self as pb, crypto_service_server::CryptoService as _};
use keyward_store::{Scope, Store as _, sqlite::SqliteStore};
use tonic::{Code, Request};

use super::CryptoApi;
use crate::{
    CachePolicy, Keyring, Providers,
    authz::{Authz, PolicyFiles},
    keyring::RotationPolicy,
    tls::{PeerIdentity, PeerInfo},
};

/// Callers of these tests, each mapped to a service in [`IDENTITIES`].
const MOVER: &str = "spiffe://keyward.test/ns/jobs/sa/mover";
const READER: &str = "spiffe://keyward.test/ns/jobs/sa/reader";
const ARCHIVER: &str = "spiffe://keyward.test/ns/jobs/sa/archiver";
const KEEPER: &str = "spiffe://keyward.test/ns/jobs/sa/keeper";

const IDENTITIES: &str = r#"
[[service]]
id = "mover"
identities = ["spiffe://keyward.test/ns/jobs/sa/mover"]
all_tenants = true

[[service]]
id = "reader"
identities = ["spiffe://keyward.test/ns/jobs/sa/reader"]
all_tenants = true

[[service]]
id = "archiver"
identities = ["spiffe://keyward.test/ns/jobs/sa/archiver"]
all_tenants = true

[[service]]
id = "keeper"
identities = ["spiffe://keyward.test/ns/jobs/sa/keeper"]
all_tenants = true
"#;

/// The mover may only rewrap, the reader only decrypt, the archiver only rewrap into `archive`,
/// the keeper only rewrap within the envelope's own scope (`""`, never a scope label).
const POLICIES: &str = r#"
permit (
  principal == Keyward::Service::"mover",
  action == Keyward::Action::"Rewrap",
  resource is Keyward::Tenant
);
permit (
  principal == Keyward::Service::"reader",
  action == Keyward::Action::"Decrypt",
  resource is Keyward::Tenant
);
permit (
  principal == Keyward::Service::"archiver",
  action == Keyward::Action::"Rewrap",
  resource is Keyward::Tenant
)
when { context.scope == "archive" };
permit (
  principal == Keyward::Service::"keeper",
  action == Keyward::Action::"Rewrap",
  resource is Keyward::Tenant
)
when { context.scope == "" };
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    keyring: Arc<Keyring>,
    api: CryptoApi,
    t: TenantId,
}

impl Fixture {
    /// The shipped schema with [`IDENTITIES`] and [`POLICIES`]; a tenant `acme` on a local key.
    async fn new(max_plaintext_bytes: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
        std::fs::copy(
            shipped.join("schema.cedarschema"),
            policies.join("schema.cedarschema"),
        )
        .unwrap();
        std::fs::write(policies.join("rewrap.cedar"), POLICIES).unwrap();
        std::fs::write(policies.join("identities.toml"), IDENTITIES).unwrap();
        let authz = Arc::new(
            Authz::load(PolicyFiles {
                identities_file: policies.join("identities.toml"),
                policies_dir: policies,
            })
            .unwrap(),
        );
        let kms = Arc::new(LocalProvider::open(dir.path().join("kms")).unwrap());
        let store = Arc::new(SqliteStore::open(&dir.path().join("k.db")).await.unwrap());
        let keyring = Arc::new(Keyring::new(
            store.clone(),
            Providers::default().with(kms),
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
        let t = TenantId::try_from("acme").unwrap();
        keyring
            .create_tenant(&t, "Acme", "test".to_owned())
            .await
            .unwrap();
        keyring
            .register_key(&t, &KeyRef::new(ProviderKind::Local, "default"))
            .await
            .unwrap();
        let api = CryptoApi::new(Arc::clone(&keyring), authz, max_plaintext_bytes);
        Self {
            _dir: dir,
            store,
            keyring,
            api,
            t,
        }
    }

    /// An envelope of `acme` in `scope`, sealed with [`context`].
    async fn envelope(&self, scope: &str, plaintext: &[u8]) -> Vec<u8> {
        self.keyring
            .encrypt(
                &self.t,
                &Scope::try_from(scope).unwrap(),
                &EncryptionContext::try_from_map(context().into_iter().collect()).unwrap(),
                plaintext,
            )
            .await
            .unwrap()
            .0
    }

    fn rewrap_request(&self, envelope: Vec<u8>, target_scope: &str) -> pb::RewrapRequest {
        pb::RewrapRequest {
            tenant_id: self.t.to_string(),
            envelope,
            encryption_context: context(),
            target_scope: target_scope.to_owned(),
            justification: None,
        }
    }

    async fn decrypt_as(&self, caller: &str, envelope: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
        self.api
            .decrypt(request(
                caller,
                pb::DecryptRequest {
                    tenant_id: self.t.to_string(),
                    envelope,
                    encryption_context: context(),
                    justification: None,
                },
            ))
            .await
            .map(|r| r.into_inner().plaintext)
    }
}

fn context() -> HashMap<String, String> {
    [("purpose".to_owned(), "chat-history".to_owned())].into()
}

/// A request from the mTLS caller `identity`.
fn request<T>(identity: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(PeerInfo {
        remote: "127.0.0.1:9".parse().unwrap(),
        identity: PeerIdentity::Certificate(identity.into()),
    });
    request
}

fn item_outcome(result: &pb::RewrapBatchResult) -> Result<pb::RewrapResponse, (i32, String)> {
    match result.result.as_ref().unwrap() {
        pb::rewrap_batch_result::Result::Ok(ok) => Ok(ok.clone()),
        pb::rewrap_batch_result::Result::Error(e) => Err((e.code, e.reason.clone())),
    }
}

#[tokio::test]
async fn a_caller_permitted_only_rewrap_moves_data_it_cannot_read_and_a_reader_cannot_move_it() {
    let fx = Fixture::new(1 << 20).await;
    let envelope = fx.envelope("conv-1", b"the prompt").await;

    // The mover rewraps...
    let moved = fx
        .api
        .rewrap(request(
            MOVER,
            fx.rewrap_request(envelope.clone(), "archive"),
        ))
        .await
        .unwrap()
        .into_inner();
    // ...but may not read, neither the old envelope nor the new one.
    for e in [envelope.clone(), moved.envelope.clone()] {
        let status = fx.decrypt_as(MOVER, e).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    // The reader reads both...
    for e in [envelope.clone(), moved.envelope.clone()] {
        assert_eq!(fx.decrypt_as(READER, e).await.unwrap(), b"the prompt");
    }
    // ...but may not rewrap, to another scope or within its own.
    for target in ["archive", ""] {
        let status = fx
            .api
            .rewrap(request(READER, fx.rewrap_request(envelope.clone(), target)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        let batch = fx
            .api
            .rewrap_batch(request(
                READER,
                pb::RewrapBatchRequest {
                    tenant_id: fx.t.to_string(),
                    items: vec![pb::RewrapBatchItem {
                        envelope: envelope.clone(),
                        encryption_context: context(),
                        target_scope: target.to_owned(),
                    }],
                    justification: None,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            item_outcome(&batch.results[0]).unwrap_err(),
            (
                Code::PermissionDenied as i32,
                "PERMISSION_DENIED".to_owned()
            )
        );
    }
}

/// Policies see the target scope, or `""` when the envelope keeps its own (known only from the
/// stored DEK, after authorization), and a batch is decided per item.
#[tokio::test]
async fn rewrap_policies_see_the_target_scope_per_item() {
    let fx = Fixture::new(1 << 20).await;
    let envelope = fx.envelope("conv-1", b"the prompt").await;
    let ok = fx
        .api
        .rewrap(request(
            ARCHIVER,
            fx.rewrap_request(envelope.clone(), "archive"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        fx.decrypt_as(READER, ok.envelope).await.unwrap(),
        b"the prompt"
    );
    for target in ["elsewhere", ""] {
        let status = fx
            .api
            .rewrap(request(
                ARCHIVER,
                fx.rewrap_request(envelope.clone(), target),
            ))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{target:?}: {status:?}"
        );
    }

    // Keeping the envelope's own scope is "", not the default scope's label nor any other.
    let kept = fx
        .api
        .rewrap(request(KEEPER, fx.rewrap_request(envelope.clone(), "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        fx.decrypt_as(READER, kept.envelope).await.unwrap(),
        b"the prompt"
    );
    for target in ["default", "conv-1", "archive"] {
        let status = fx
            .api
            .rewrap(request(KEEPER, fx.rewrap_request(envelope.clone(), target)))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{target:?}: {status:?}"
        );
    }

    let item = |target: &str| pb::RewrapBatchItem {
        envelope: envelope.clone(),
        encryption_context: context(),
        target_scope: target.to_owned(),
    };
    let results = fx
        .api
        .rewrap_batch(request(
            ARCHIVER,
            pb::RewrapBatchRequest {
                tenant_id: fx.t.to_string(),
                items: vec![
                    item("archive"),
                    item("elsewhere"),
                    item(""),
                    item("archive"),
                ],
                justification: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 4);
    let denied = (
        Code::PermissionDenied as i32,
        "PERMISSION_DENIED".to_owned(),
    );
    assert_eq!(item_outcome(&results[1]).unwrap_err(), denied);
    assert_eq!(item_outcome(&results[2]).unwrap_err(), denied);
    let (first, last) = (
        item_outcome(&results[0]).unwrap(),
        item_outcome(&results[3]).unwrap(),
    );
    assert_eq!(first.dek_id, ok.dek_id, "archive's active DEK");
    assert_eq!(last.dek_id, ok.dek_id);
    assert_eq!(
        fx.decrypt_as(READER, last.envelope).await.unwrap(),
        b"the prompt"
    );
}

#[tokio::test]
async fn a_bad_target_scope_is_an_invalid_argument_naming_target_scope() {
    let fx = Fixture::new(1 << 20).await;
    let envelope = fx.envelope("conv-1", b"the prompt").await;
    let deks = fx.store.counts().await.unwrap().deks;
    let status = fx
        .api
        .rewrap(request(
            MOVER,
            fx.rewrap_request(envelope.clone(), "bad\u{7}scope"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("target_scope:"),
        "{}",
        status.message()
    );
    let results = fx
        .api
        .rewrap_batch(request(
            MOVER,
            pb::RewrapBatchRequest {
                tenant_id: fx.t.to_string(),
                items: vec![
                    pb::RewrapBatchItem {
                        envelope: envelope.clone(),
                        encryption_context: context(),
                        target_scope: "bad\u{7}scope".to_owned(),
                    },
                    pb::RewrapBatchItem {
                        envelope: envelope.clone(),
                        encryption_context: context(),
                        target_scope: String::new(),
                    },
                ],
                justification: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(
        item_outcome(&results[0]).unwrap_err(),
        (Code::InvalidArgument as i32, "INVALID_ARGUMENT".to_owned())
    );
    item_outcome(&results[1]).unwrap();
    assert_eq!(fx.store.counts().await.unwrap().deks, deks, "nothing new");
}

#[tokio::test]
async fn rewrap_batches_have_the_batch_limits() {
    let fx = Fixture::new(1024).await;
    let envelope = fx.envelope("conv-1", b"the prompt").await;
    let batch = |n: usize| {
        request(
            MOVER,
            pb::RewrapBatchRequest {
                tenant_id: fx.t.to_string(),
                items: (0..n)
                    .map(|i| pb::RewrapBatchItem {
                        envelope: envelope.clone(),
                        encryption_context: context(),
                        target_scope: format!("s{i}"),
                    })
                    .collect(),
                justification: None,
            },
        )
    };
    let deks = fx.store.counts().await.unwrap().deks;
    for n in [0, super::MAX_BATCH_ITEMS + 1] {
        let status = fx.api.rewrap_batch(batch(n)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{n}: {status:?}");
    }
    // 1000 small items: a response that could exceed 1 KiB + 64 KiB, refused before any work.
    let status = fx.api.rewrap_batch(batch(1000)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
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
    let ok = fx.api.rewrap_batch(batch(20)).await.unwrap().into_inner();
    assert_eq!(ok.results.len(), 20);
    assert!(ok.results.iter().all(|r| item_outcome(r).is_ok()));
    assert_eq!(
        fx.store.counts().await.unwrap().deks,
        deks + 20,
        "one DEK per scope"
    );
}
