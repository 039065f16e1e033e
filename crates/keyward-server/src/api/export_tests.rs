//! `ExportKeyHierarchy` through the tenant service, in process (issue #22, item 3): the stream's
//! order and contents (header with the audit head, every tenant key as its KEK wraps it, every
//! data key over several store pages, the tombstones, the trailer), that what it carries is
//! enough to unwrap the data keys with the documented AAD, its audit record, the shipped
//! policies (a tenant admin exports its own tenant only), an unknown tenant, and an export
//! abandoned by its receiver.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::{sync::Arc, time::Duration};

use keyward_audit::AuditEvent;
use keyward_envelope::{EncryptionContext, KeyId, TenantId, WrappedKey, dek_wrap_aad, unwrap_key};
use keyward_kms::{
    KeyProvider as _, KeyRef, ProviderKind, Purpose, WrapContext, local::LocalProvider,
};
use keyward_proto::v1::{
    self as pb, export_key_hierarchy_chunk::Item, tenant_service_server::TenantService as _,
};
use keyward_store::{AuditQuery, NewDek, Scope, Store as _, sqlite::SqliteStore};
use tokio_stream::StreamExt as _;
use tonic::{Code, Request};

use super::TenantApi;
use crate::{
    CachePolicy, Keyring, Providers,
    authz::{Authz, PolicyFiles},
    keyring::{EXPORT_PAGE, ExportEnd, ExportItem, RotationPolicy},
    tls::{PeerIdentity, PeerInfo},
};

/// acme's and globex's tenant admins in the shipped identity mapping.
const ACME_ADMIN: &str = "spiffe://keyward.test/ns/acme/sa/secops";
const GLOBEX_ADMIN: &str = "spiffe://keyward.test/ns/globex/sa/secops";

struct Fixture {
    _dir: tempfile::TempDir,
    kms: Arc<LocalProvider>,
    store: Arc<SqliteStore>,
    keyring: Arc<Keyring>,
    api: TenantApi,
    t: TenantId,
}

impl Fixture {
    /// The shipped policies; tenant `acme` on the local key `default`, DEKs rotating after two
    /// messages.
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
        let authz = Arc::new(
            Authz::load(PolicyFiles {
                identities_file: shipped.join("identities.toml"),
                policies_dir: shipped,
            })
            .unwrap(),
        );
        let kms = Arc::new(LocalProvider::open(dir.path().join("kms")).unwrap());
        kms.create_key("second").unwrap();
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
                max_messages: 2,
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
        let api = TenantApi::new(Arc::clone(&keyring), authz);
        Self {
            _dir: dir,
            kms,
            store,
            keyring,
            api,
            t,
        }
    }

    async fn encrypt(&self, scope: &str) {
        let ctx = EncryptionContext::try_from_map([("k".into(), "v".into())].into()).unwrap();
        self.keyring
            .encrypt(&self.t, &Scope::try_from(scope).unwrap(), &ctx, b"data")
            .await
            .unwrap();
    }

    /// Every chunk of an export of `tenant` by `caller`, or the call's status.
    async fn export(&self, caller: &str, tenant: &str) -> Result<Vec<Item>, tonic::Status> {
        let mut stream = self
            .api
            .export_key_hierarchy(request(
                caller,
                pb::ExportKeyHierarchyRequest {
                    tenant_id: tenant.to_owned(),
                    requested_by: "ana".to_owned(),
                },
            ))
            .await?
            .into_inner();
        let mut items = Vec::new();
        while let Some(chunk) = stream.next().await {
            items.push(chunk?.item.unwrap());
        }
        Ok(items)
    }

    async fn exported_records(&self) -> Vec<(u64, AuditEvent)> {
        self.store
            .audit_records(
                &AuditQuery::default()
                    .with_tenant(self.t.clone())
                    .with_event_type("key_hierarchy_exported".to_owned()),
            )
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.seq(), r.event().clone()))
            .collect()
    }
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

#[tokio::test]
async fn an_export_streams_the_whole_hierarchy_in_order_and_is_recorded_with_its_counts() {
    let fx = Fixture::new().await;
    // Three scopes, several DEKs each (rotation after two messages) ...
    for scope in ["conv-a", "conv-b", "conv-c"] {
        for _ in 0..5 {
            fx.encrypt(scope).await;
        }
    }
    // ... a second key (a second tenant key; the scopes' next DEKs go under it) ...
    fx.keyring
        .register_key(&fx.t, &KeyRef::new(ProviderKind::Local, "second"))
        .await
        .unwrap();
    fx.encrypt("conv-a").await;
    // ... enough DEKs for several store pages (wrapped bytes the export does not look into) ...
    let tenant_key = fx.store.active_binding(&fx.t).await.unwrap().unwrap();
    for i in 0..EXPORT_PAGE + 200 {
        fx.store
            .insert_dek(
                NewDek {
                    id: KeyId::generate().unwrap(),
                    tenant: fx.t.clone(),
                    scope: Scope::try_from(format!("bulk-{i}")).unwrap(),
                    tenant_key_id: tenant_key.tenant_key_id,
                    wrapped: WrappedKey::new(vec![7; 61]),
                },
                &|_| Vec::new(),
            )
            .await
            .unwrap();
    }
    // ... and one scope shredded.
    let shredded = fx
        .keyring
        .shred_scope(&fx.t, &Scope::try_from("conv-b").unwrap(), "test", "gone")
        .await
        .unwrap();
    assert!(shredded.tombstones.len() >= 2);
    let head = fx.store.audit_head().await.unwrap();

    let items = fx.export(ACME_ADMIN, "acme").await.unwrap();

    // The header first.
    let Item::Header(header) = &items[0] else {
        panic!("the header comes first: {:?}", items[0]);
    };
    assert_eq!(header.format_version, 1);
    assert_eq!(header.tenant_id, "acme");
    assert_eq!(header.audit_seq, head.seq);
    assert_eq!(header.audit_head_hash, hex::encode(head.hash));
    // Then the tenant keys, the data keys by id, the tombstones, and the trailer last.
    let kinds: Vec<&str> = items
        .iter()
        .map(|i| match i {
            Item::Header(_) => "header",
            Item::TenantKey(_) => "tenant_key",
            Item::DataKey(_) => "data_key",
            Item::Tombstone(_) => "tombstone",
            Item::Trailer(_) => "trailer",
        })
        .collect();
    let mut order = kinds.clone();
    order.dedup();
    assert_eq!(
        order,
        ["header", "tenant_key", "data_key", "tombstone", "trailer"]
    );
    let tenant_keys: Vec<&pb::ExportedTenantKey> = items
        .iter()
        .filter_map(|i| match i {
            Item::TenantKey(k) => Some(k),
            _ => None,
        })
        .collect();
    let data_keys: Vec<&pb::ExportedDataKey> = items
        .iter()
        .filter_map(|i| match i {
            Item::DataKey(k) => Some(k),
            _ => None,
        })
        .collect();
    let tombstones: Vec<&pb::ExportedTombstone> = items
        .iter()
        .filter_map(|i| match i {
            Item::Tombstone(t) => Some(t),
            _ => None,
        })
        .collect();
    let Some(Item::Trailer(trailer)) = items.last() else {
        panic!("the trailer comes last");
    };

    // Every tenant key, as its KEK wraps it.
    assert_eq!(tenant_keys.len(), 2);
    let bindings = fx.store.list_bindings(&fx.t).await.unwrap();
    for (key, binding) in tenant_keys.iter().zip(&bindings) {
        assert_eq!(key.id, binding.tenant_key_id.to_string());
        assert_eq!(key.provider(), pb::ProviderKind::Local);
        assert_eq!(key.key_ref, binding.key_ref);
        assert_eq!(key.binding_id, binding.id);
        assert_eq!(key.binding_state(), pb::KekState::Active);
    }
    // Every data key the store holds (several pages), in id order, none of the shredded ones.
    let stored = fx.store.counts().await.unwrap().deks;
    assert_eq!(data_keys.len() as u64, stored);
    assert!(data_keys.len() > EXPORT_PAGE as usize);
    assert!(data_keys.windows(2).all(|w| w[0].id < w[1].id));
    let gone: Vec<String> = shredded
        .tombstones
        .iter()
        .map(|t| t.id.to_string())
        .collect();
    assert!(!data_keys.iter().any(|d| gone.contains(&d.id)));
    assert_eq!(
        tombstones.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
        gone
    );
    assert!(tombstones.iter().all(|t| t.reason == "gone"));

    // What the export carries is enough to unwrap each real data key: the tenant key through the
    // KEK with the wrap context, the data key under it with the AAD of its tenant, scope and id.
    let mut unwrapped = 0;
    for dek in data_keys.iter().filter(|d| d.scope.starts_with("conv-")) {
        let key = tenant_keys
            .iter()
            .find(|k| k.id == dek.tenant_key_id)
            .unwrap();
        let tenant_key_id: KeyId = key.id.parse().unwrap();
        let tenant_key = fx
            .kms
            .unwrap(
                &KeyRef::new(ProviderKind::Local, key.key_ref.clone()),
                &WrappedKey::new(key.wrapped.clone()),
                &WrapContext::new(&fx.t, &tenant_key_id, Purpose::TenantKey),
            )
            .await
            .unwrap();
        let aad = dek_wrap_aad(&fx.t, &dek.scope, &dek.id.parse().unwrap()).unwrap();
        unwrap_key(&tenant_key, &WrappedKey::new(dek.wrapped.clone()), &aad).unwrap();
        // A scope changed in the export does not unwrap.
        let moved = dek_wrap_aad(&fx.t, "conv-x", &dek.id.parse().unwrap()).unwrap();
        assert!(unwrap_key(&tenant_key, &WrappedKey::new(dek.wrapped.clone()), &moved).is_err());
        unwrapped += 1;
    }
    assert!(unwrapped >= 6, "{unwrapped}");

    // The trailer counts what was sent and names the export's audit record.
    assert_eq!(trailer.tenant_keys, 2);
    assert_eq!(trailer.data_keys, data_keys.len() as u64);
    assert_eq!(trailer.tombstones, tombstones.len() as u64);
    let records = fx.exported_records().await;
    assert_eq!(records.len(), 1);
    let (seq, event) = &records[0];
    assert_eq!(*seq, trailer.audit_seq);
    assert_eq!(
        event,
        &AuditEvent::KeyHierarchyExported {
            tenant: fx.t.clone(),
            actor: "TenantAdmin::\"acme-secops\" requested_by=\"ana\"".to_owned(),
            tenant_keys: 2,
            data_keys: trailer.data_keys,
            tombstones: trailer.tombstones,
            complete: true,
        }
    );
}

#[tokio::test]
async fn only_the_tenants_own_admin_exports_it_and_an_unknown_tenant_is_not_found() {
    let fx = Fixture::new().await;
    fx.encrypt("conv-a").await;
    let head = fx.store.audit_head().await.unwrap();
    let denied = fx.export(GLOBEX_ADMIN, "acme").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let bad = fx.export(ACME_ADMIN, "Not A Tenant").await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(fx.exported_records().await.is_empty());
    assert_eq!(
        fx.store.audit_head().await.unwrap(),
        head,
        "nothing recorded"
    );

    // An unknown tenant, by a principal allowed to export any (a fresh mapping would be needed
    // for another tenant admin; the keyring answers the same for every caller).
    let (tx, _rx) = tokio::sync::mpsc::channel(4);
    let unknown = TenantId::try_from("nobody").unwrap();
    let err = fx
        .keyring
        .export_key_hierarchy(&unknown, "test".to_owned(), &tx)
        .await
        .unwrap_err();
    assert_eq!(err.to_status().code(), Code::NotFound, "{err}");
}

#[tokio::test]
async fn an_export_abandoned_by_its_receiver_is_recorded_as_incomplete_with_what_was_sent() {
    let fx = Fixture::new().await;
    for scope in ["conv-a", "conv-b"] {
        fx.encrypt(scope).await;
    }
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<Result<ExportItem, crate::error::ServiceError>>(1);
    let reader = async move {
        // The header and the first tenant key, then the receiver goes away.
        let header = rx.recv().await.unwrap().unwrap();
        assert!(matches!(header, ExportItem::Header { .. }));
        let key = rx.recv().await.unwrap().unwrap();
        assert!(matches!(key, ExportItem::TenantKey(_)));
    };
    let (end, ()) = tokio::join!(
        fx.keyring
            .export_key_hierarchy(&fx.t, "Operator::\"ops\"".to_owned(), &tx),
        reader
    );
    let ExportEnd::ReceiverGone { counts } = end.unwrap() else {
        panic!("the receiver went away");
    };
    // Sent: the one tenant key, and at most the data key waiting in the channel when the
    // receiver went away (of two).
    assert_eq!(counts.tenant_keys, 1);
    assert!(counts.data_keys < 2, "{counts:?}");
    let records = fx.exported_records().await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].1,
        AuditEvent::KeyHierarchyExported {
            tenant: fx.t.clone(),
            actor: "Operator::\"ops\"".to_owned(),
            tenant_keys: 1,
            data_keys: counts.data_keys,
            tombstones: 0,
            complete: false,
        }
    );
}
