//! `TenantService.ExportKeyHierarchy`: the exit kit's export (docs/exit.md). Authorized as its
//! own action on the tenant; the keyring reads the hierarchy page by page into a small channel
//! (`keyring::export`), and each item is converted to its message here as the stream is polled,
//! so memory stays bounded by the channel and one store page.

use std::sync::Arc;

use keyward_authz::{Action, RequestContext};
use keyward_proto::v1::{self as pb, export_key_hierarchy_chunk::Item};
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::convert::{kek_state_to_pb, provider_to_pb, tenant_id, timestamp};
use super::split;
use super::tenant::TenantApi;
use crate::keyring::ExportItem;

/// The stream `ExportKeyHierarchy` answers with.
pub(super) type ExportStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::ExportKeyHierarchyChunk, Status>> + Send>,
>;

/// Items read ahead of the receiver (each at most a few hundred bytes).
const READ_AHEAD: usize = 64;

impl TenantApi {
    pub(super) async fn export_key_hierarchy_call(
        &self,
        request: Request<pb::ExportKeyHierarchyRequest>,
    ) -> Result<Response<ExportStream>, Status> {
        let (head, r) = split(request);
        let tenant = tenant_id(&r.tenant_id)?;
        let caller = self.authz.check(
            &head,
            Action::ExportKeyHierarchy,
            Some(&tenant),
            &RequestContext::default(),
        )?;
        // An unknown tenant is the call's NOT_FOUND, as for the other tenant calls, not an
        // error inside a stream.
        self.keyring.tenant_state(&tenant).await?;
        let actor = caller.actor(&r.requested_by);
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        let keyring = Arc::clone(&self.keyring);
        tokio::spawn(async move {
            if let Err(e) = keyring.export_key_hierarchy(&tenant, actor, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        let stream = ReceiverStream::new(rx).map(|item| match item {
            Ok(item) => Ok(pb::ExportKeyHierarchyChunk {
                item: Some(item_to_pb(item)),
            }),
            Err(e) => Err(e.to_status()),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

fn item_to_pb(item: ExportItem) -> Item {
    match item {
        ExportItem::Header {
            tenant,
            exported_at_ms,
            audit_head,
        } => Item::Header(pb::ExportHeader {
            format_version: 1,
            tenant_id: tenant.to_string(),
            exported_at: Some(timestamp(exported_at_ms)),
            audit_seq: audit_head.seq,
            audit_head_hash: hex::encode(audit_head.hash),
        }),
        ExportItem::TenantKey(key) => Item::TenantKey(pb::ExportedTenantKey {
            id: key.id.to_string(),
            provider: provider_to_pb(key.provider).into(),
            key_ref: key.key_ref,
            binding_id: key.binding_id,
            binding_state: kek_state_to_pb(key.binding_state).into(),
            wrapped: key.wrapped.into_bytes(),
            created_at: Some(timestamp(key.created_at_ms)),
        }),
        ExportItem::DataKey(dek) => Item::DataKey(pb::ExportedDataKey {
            id: dek.id.to_string(),
            tenant_key_id: dek.tenant_key_id.to_string(),
            scope: dek.scope.to_string(),
            wrapped: dek.wrapped.into_bytes(),
            created_at: Some(timestamp(dek.created_at_ms)),
            retired_at: dek.retired_at_ms.map(timestamp),
        }),
        ExportItem::Tombstone(t) => Item::Tombstone(pb::ExportedTombstone {
            id: t.id.to_string(),
            tenant_key_id: t.tenant_key_id.to_string(),
            scope_hmac: t.scope_hmac,
            created_at: Some(timestamp(t.created_at_ms)),
            shredded_at: Some(timestamp(t.shredded_at_ms)),
            shredded_by: t.shredded_by,
            reason: t.reason,
        }),
        ExportItem::Trailer { counts, audit_seq } => Item::Trailer(pb::ExportTrailer {
            tenant_keys: counts.tenant_keys,
            data_keys: counts.data_keys,
            tombstones: counts.tombstones,
            audit_seq,
        }),
    }
}
