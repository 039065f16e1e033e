//! The exit kit's export (docs/exit.md): a tenant's key hierarchy as the store holds it, read
//! in pages and handed on one item at a time, so that memory stays bounded however many data
//! keys the tenant has; and the audit record of the export.
//!
//! Nothing is unwrapped: tenant keys leave as the customer's KMS wrapped them, DEKs as their
//! tenant key wrapped them, tombstones hold no key at all. No KMS is called, so an export works
//! whatever state the tenant's keys are in (revoked included: the customer decides at their KMS
//! whether the export can be decrypted).
//!
//! Order: a header; the tenant keys; the DEKs by id; the tombstones by seq; any tenant key
//! created meanwhile (so that every DEK sent has its tenant key); then the audit record
//! (`key_hierarchy_exported`, with what was sent) and the trailer, which names it. An export
//! that stops part-way (the receiver went away, a read failed) is recorded too, as incomplete.

use std::collections::HashSet;

use keyward_audit::{AuditEvent, ChainHead};
use keyward_envelope::{KeyId, TenantId};
use keyward_store::{DekRecord, DekTombstone, TenantKeyRecord};
use tokio::sync::mpsc::Sender;

use super::{Keyring, require_tenant};
use crate::{error::ServiceError, now_ms};

/// Rows read per store page while exporting.
pub const EXPORT_PAGE: u32 = 1000;

/// One item of an export, in the order described in the module docs.
#[derive(Debug)]
#[non_exhaustive]
pub enum ExportItem {
    /// First: what is exported, when, and the audit chain's head when the export began.
    Header {
        tenant: TenantId,
        exported_at_ms: i64,
        audit_head: ChainHead,
    },
    /// A tenant key as wrapped now by its binding's KEK.
    TenantKey(TenantKeyRecord),
    /// A DEK as wrapped by its tenant key.
    DataKey(DekRecord),
    /// What is left of a shredded DEK.
    Tombstone(DekTombstone),
    /// Last, once the export is recorded: the counts sent and the audit record's seq.
    Trailer {
        counts: ExportCounts,
        audit_seq: u64,
    },
}

/// How many items of each kind an export sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportCounts {
    pub tenant_keys: u64,
    pub data_keys: u64,
    pub tombstones: u64,
}

/// How an export that started ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExportEnd {
    /// Everything was sent and recorded (`key_hierarchy_exported`, `complete: true`, at
    /// `audit_seq`), and the trailer was handed to the receiver.
    Complete {
        counts: ExportCounts,
        audit_seq: u64,
    },
    /// The receiver went away part-way; recorded as incomplete with what it was sent.
    ReceiverGone { counts: ExportCounts },
}

/// Why an export stopped before its trailer.
enum Stop {
    /// The receiver was dropped (the caller went away): nobody to tell.
    Gone,
    /// A read failed: sent to the receiver, then recorded.
    Failed(ServiceError),
}

/// Sends the items of one export, counting them.
struct Exporter<'a> {
    tx: &'a Sender<Result<ExportItem, ServiceError>>,
    counts: ExportCounts,
}

impl Exporter<'_> {
    async fn send(&mut self, item: ExportItem) -> Result<(), Stop> {
        let counted = match &item {
            ExportItem::TenantKey(_) => Some(&mut self.counts.tenant_keys),
            ExportItem::DataKey(_) => Some(&mut self.counts.data_keys),
            ExportItem::Tombstone(_) => Some(&mut self.counts.tombstones),
            ExportItem::Header { .. } | ExportItem::Trailer { .. } => None,
        };
        self.tx.send(Ok(item)).await.map_err(|_| Stop::Gone)?;
        if let Some(count) = counted {
            *count += 1;
        }
        Ok(())
    }
}

impl From<keyward_store::StoreError> for Stop {
    fn from(e: keyward_store::StoreError) -> Self {
        Stop::Failed(e.into())
    }
}

impl Keyring {
    /// Exports `tenant`'s key hierarchy into `tx` (see the module docs for the order), for
    /// `actor`, and records it in the audit log: with what was sent, when the whole hierarchy
    /// was (before the trailer, which carries the record's seq), or as incomplete when the
    /// export stopped part-way. An unknown tenant is `TenantNotFound`, returned before anything
    /// is sent or recorded; a failure after that is returned once the incomplete export is
    /// recorded, for the caller to send as the stream's last item. Reads `EXPORT_PAGE` rows at
    /// a time; `tx`'s capacity bounds what waits to be sent.
    pub async fn export_key_hierarchy(
        &self,
        tenant: &TenantId,
        actor: String,
        tx: &Sender<Result<ExportItem, ServiceError>>,
    ) -> Result<ExportEnd, ServiceError> {
        require_tenant(self.wiring.store.as_ref(), tenant).await?;
        let mut exporter = Exporter {
            tx,
            counts: ExportCounts::default(),
        };
        let stop = match self.send_hierarchy(tenant, &mut exporter).await {
            Ok(()) => {
                let counts = exporter.counts;
                let event = exported(tenant, &actor, counts, true);
                match self.wiring.store.append_audit(vec![event]).await {
                    Ok(records) => {
                        let audit_seq = records.first().map_or(0, |r| r.seq());
                        tracing::info!(%tenant, actor, ?counts, audit_seq, "key hierarchy exported");
                        // Recorded as complete: everything was sent, whether the trailer still
                        // reaches the receiver or not.
                        let _ = tx.send(Ok(ExportItem::Trailer { counts, audit_seq })).await;
                        return Ok(ExportEnd::Complete { counts, audit_seq });
                    }
                    Err(e) => Stop::Failed(e.into()),
                }
            }
            Err(stop) => stop,
        };
        let counts = exporter.counts;
        // Recorded like the other standalone records: kept and sent again if the store refuses
        // it now.
        self.ledger
            .record(vec![exported(tenant, &actor, counts, false)])
            .await;
        match stop {
            Stop::Gone => {
                tracing::warn!(%tenant, actor, ?counts, "key hierarchy export abandoned by its receiver");
                Ok(ExportEnd::ReceiverGone { counts })
            }
            Stop::Failed(error) => {
                tracing::warn!(%tenant, actor, ?counts, error = %error, "key hierarchy export failed part-way");
                Err(error)
            }
        }
    }

    /// Every item but the trailer.
    async fn send_hierarchy(&self, tenant: &TenantId, out: &mut Exporter<'_>) -> Result<(), Stop> {
        let store = self.wiring.store.as_ref();
        let audit_head = store.audit_head().await?;
        out.send(ExportItem::Header {
            tenant: tenant.clone(),
            exported_at_ms: now_ms(),
            audit_head,
        })
        .await?;
        let mut sent_keys: HashSet<KeyId> = HashSet::new();
        for key in store.list_tenant_keys(tenant).await? {
            sent_keys.insert(key.id);
            out.send(ExportItem::TenantKey(key)).await?;
        }
        let mut after: Option<KeyId> = None;
        loop {
            let page = store.list_deks(tenant, after.as_ref(), EXPORT_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for dek in page {
                out.send(ExportItem::DataKey(dek)).await?;
            }
        }
        let mut after_seq = 0;
        loop {
            let page = store
                .list_tombstones(tenant, after_seq, EXPORT_PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after_seq = last.seq;
            for tombstone in page {
                out.send(ExportItem::Tombstone(tombstone)).await?;
            }
        }
        // A key registered during the export may wrap DEKs sent above.
        for key in store.list_tenant_keys(tenant).await? {
            if sent_keys.insert(key.id) {
                out.send(ExportItem::TenantKey(key)).await?;
            }
        }
        Ok(())
    }
}

fn exported(tenant: &TenantId, actor: &str, counts: ExportCounts, complete: bool) -> AuditEvent {
    AuditEvent::KeyHierarchyExported {
        tenant: tenant.clone(),
        actor: actor.to_owned(),
        tenant_keys: counts.tenant_keys,
        data_keys: counts.data_keys,
        tombstones: counts.tombstones,
        complete,
    }
}
