//! The audit log's server side: the deployment's signing and identifier keys,
//! periodic signed checkpoints, export, and the `keyward.v1.AuditService`.
//!
//! Records themselves are appended by the store inside each lifecycle
//! transaction (fail closed); this module only reads them.

use std::{
    io::Write,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use keyward_audit::{
    AuditEvent, ChainHead, ExportHeader, ExportWriter, PublicKey, Record, SigningKey,
};
use keyward_proto::v1 as pb;
use keyward_store::{AuditQuery, Store, StoreError};
use tonic::Status;

use crate::{error::ServiceError, now_ms};

mod keys;

pub use keys::{AuditKeyError, AuditKeys, load_identifier_key};
use keys::{PENDING_SIGNING_KEY_FILE, SIGNING_KEY_FILE, read_secret, write_secret};

/// Records per store query while exporting or listing.
pub(crate) const PAGE: u32 = 1000;
pub(crate) const DEFAULT_LIST_PAGE: u32 = 100;

/// Signs checkpoints and produces exports.
///
/// Several replicas may share one store and one audit key directory, and any of them may
/// rotate the signing key. Each replica therefore follows the chain before it signs anything
/// (`Auditor::follow_chain`): a checkpoint signed by a key the chain has rotated away from is
/// rejected by every verifier (`docs/audit-format.md` §5), and, being stored, it would break
/// every later export that includes it.
pub struct Auditor {
    store: Arc<dyn Store>,
    keys: AuditKeys,
    /// What this replica has read of the chain's rotations. The lock serialises signing-key
    /// rotation with checkpointing and exports.
    rotation: tokio::sync::Mutex<ChainKeys>,
}

/// The chain's signing-key rotations (`signing_key_rotated` records) as far as this replica
/// has read them.
#[derive(Debug, Default)]
struct ChainKeys {
    /// Rotation records were read up to and including this seq.
    read_to: u64,
    /// The last rotation recorded at or before `read_to`; the only one that decides which key
    /// signs next.
    last: Option<RecordedRotation>,
}

#[derive(Debug)]
struct RecordedRotation {
    /// The `signing_key_rotated` record.
    at: ChainHead,
    old_key_id: String,
    new_key_id: String,
    /// A checkpoint at or after `at.seq` is stored: the rotation is confirmed (§5, step 3).
    /// Stays true once true: checkpoints are never removed.
    confirmed: bool,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Auditor {
    pub fn new(store: Arc<dyn Store>, keys: AuditKeys) -> Self {
        Self {
            store,
            keys,
            rotation: tokio::sync::Mutex::new(ChainKeys::default()),
        }
    }

    /// The key this replica last signed with (or loaded at start). After a rotation made by
    /// another replica it is the old key until this one follows the chain; prefer
    /// [`Auditor::public_key_in_force`].
    pub fn public_key(&self) -> PublicKey {
        self.keys.public_key()
    }

    /// The key that signs the chain's next checkpoints, after following any rotation another
    /// replica recorded (`Auditor::follow_chain`).
    pub async fn public_key_in_force(&self) -> Result<PublicKey, ServiceError> {
        let mut chain = self.rotation.lock().await;
        let head = self.store.audit_head().await?;
        self.follow_chain(&mut chain, &head).await?;
        Ok(self.keys.public_key())
    }

    /// Brings the held signing key in line with the chain up to `head`, so that this replica
    /// never signs with a key the chain has rotated away from, whichever replica rotated.
    ///
    /// Replicas share the store and the key directory but not memory, and the store sends no
    /// notification of a rotation; so, before every signature, this reads the rotation records
    /// appended since its last call (one indexed query, nearly always empty) and, for the last
    /// rotation `r` (old key → new key):
    ///
    /// 1. if no checkpoint is stored at or after `r` yet (the rotating replica has not stored
    ///    its confirming checkpoint, or crashed before it), it stores that checkpoint itself: over
    ///    record `r` exactly, signed by the old key, just as the rotating replica would. If both
    ///    store one, the second is `AlreadyExists`, and either confirms the rotation. The old key
    ///    never signs anything after `r`, and no replica signs after `r` before a checkpoint at
    ///    `r` exists, so the confirmation is always the first checkpoint at or after `r`;
    /// 2. it then holds the new key, re-reading the key directory if it holds another one
    ///    ([`AuditKeys::hold`]), and fails, signing nothing, if the directory does not have it.
    ///
    /// Returns the seq of the confirming checkpoint it stored, if it stored one.
    async fn follow_chain(
        &self,
        chain: &mut ChainKeys,
        head: &ChainHead,
    ) -> Result<Option<u64>, ServiceError> {
        if head.seq < chain.read_to {
            // The chain is shorter than what was read (a store restored from a backup): start over.
            *chain = ChainKeys::default();
        }
        let mut after = chain.read_to;
        'read: while after < head.seq {
            let page = self
                .store
                .audit_records(
                    &AuditQuery::default()
                        .with_event_type("signing_key_rotated")
                        .with_after_seq(after)
                        .with_limit(PAGE),
                )
                .await?;
            let full = page.len() >= PAGE as usize;
            for record in &page {
                if record.seq() > head.seq {
                    break 'read;
                }
                after = record.seq();
                if let AuditEvent::SigningKeyRotated {
                    old_key_id,
                    new_key_id,
                    ..
                } = record.event()
                {
                    chain.last = Some(RecordedRotation {
                        at: record.head(),
                        old_key_id: old_key_id.clone(),
                        new_key_id: new_key_id.clone(),
                        confirmed: false,
                    });
                }
            }
            if !full {
                break;
            }
        }
        chain.read_to = head.seq;

        // No rotation recorded: the key loaded at start is the deployment's first key.
        let Some(rotation) = chain.last.as_mut() else {
            return Ok(None);
        };
        if !rotation.confirmed {
            // Confirmations are stored over the rotation record itself; only a chain written
            // by an older build has its first checkpoint after it, and then this reads, once,
            // every checkpoint since the rotation.
            rotation.confirmed = !self
                .store
                .checkpoints(rotation.at.seq, rotation.at.seq)
                .await?
                .is_empty()
                || !self
                    .store
                    .checkpoints(rotation.at.seq, head.seq)
                    .await?
                    .is_empty();
        }
        let mut stored = None;
        if !rotation.confirmed {
            self.keys.hold(&rotation.old_key_id)?;
            let confirmation = self.keys.sign(&rotation.at, now_ms())?;
            match self.store.insert_checkpoint(&confirmation).await {
                Ok(()) => {
                    stored = Some(rotation.at.seq);
                    tracing::warn!(
                        seq = rotation.at.seq,
                        old = %rotation.old_key_id,
                        new = %rotation.new_key_id,
                        "confirmed an audit signing key rotation recorded by another replica (or before a crash)"
                    );
                }
                // The rotating replica (or another one following the chain) was first.
                Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
            rotation.confirmed = true;
        }
        self.keys.hold(&rotation.new_key_id)?;
        Ok(stored)
    }

    /// The records `query` selects (AuditService.ListEvents).
    pub async fn records(&self, query: &AuditQuery) -> Result<Vec<Record>, ServiceError> {
        Ok(self.store.audit_records(query).await?)
    }

    /// Signs and stores a checkpoint of the current head if records were
    /// appended since the last one. Returns the checkpointed seq, if any.
    pub async fn checkpoint(&self) -> Result<Option<u64>, ServiceError> {
        // Never between a rotation's record and the switch to the new key.
        let mut chain = self.rotation.lock().await;
        let head = self.store.audit_head().await?;
        if head.seq == 0 {
            return Ok(None);
        }
        if !self.store.checkpoints(head.seq, head.seq).await?.is_empty() {
            return Ok(None);
        }
        // With the key the chain has in force, even if another replica rotated it.
        if self.follow_chain(&mut chain, &head).await? == Some(head.seq) {
            return Ok(Some(head.seq));
        }
        let checkpoint = self.keys.sign(&head, now_ms())?;
        match self.store.insert_checkpoint(&checkpoint).await {
            Ok(()) => Ok(Some(head.seq)),
            // Another replica checkpointed the same head first.
            Err(keyward_store::StoreError::AlreadyExists(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the checkpoint-signing key, crash-safely: the new key is written
    /// to a pending file, the rotation is recorded in the chain, a checkpoint
    /// signed by the *old* key covers that record (so verifiers trusting the old
    /// key learn the new one), and only then does the new key take over. The other replicas
    /// switch to the new key before they sign again (`Auditor::follow_chain`).
    pub async fn rotate_signing_key(&self, actor: String) -> Result<PublicKey, ServiceError> {
        let mut chain = self.rotation.lock().await;
        // Rotate away from the key in force, even if another replica made the last rotation.
        let head = self.store.audit_head().await?;
        self.follow_chain(&mut chain, &head).await?;
        let new = SigningKey::generate().map_err(internal)?;
        let pending = self.keys.dir.join(PENDING_SIGNING_KEY_FILE);
        let _ = std::fs::remove_file(&pending);
        write_secret(&pending, &new.to_pkcs8().map_err(internal)?).map_err(internal)?;
        let old = self.keys.public_key();
        let rotated = keyward_audit::AuditEvent::SigningKeyRotated {
            old_key_id: old.key_id(),
            new_key_id: new.public_key().key_id(),
            new_public_key: new.public_key(),
        };
        let admin = keyward_audit::AuditEvent::AdminAction {
            actor,
            action: "rotate_audit_signing_key".to_owned(),
            detail: format!("{} -> {}", old.key_id(), new.public_key().key_id()),
        };
        let records = self.store.append_audit(vec![admin, rotated]).await?;
        let head = records
            .last()
            .map(keyward_audit::Record::head)
            .ok_or_else(|| internal("the rotation record was not appended"))?;
        match self
            .store
            .insert_checkpoint(&self.keys.sign(&head, now_ms())?)
            .await
        {
            Ok(()) => {}
            // Another replica following the chain stored the same confirmation (signed by the
            // old key, over the rotation record) first.
            Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.activate_pending(new)?;
        tracing::warn!(old = %old.key_id(), new = %self.keys.public_key().key_id(), "audit signing key rotated");
        Ok(self.keys.public_key())
    }

    /// At start: follows the chain (`Auditor::follow_chain`: a rotation made by another
    /// replica while this one was down, or one whose confirming checkpoint is missing), then
    /// finishes a rotation that was recorded in the chain but whose new key had not yet
    /// replaced the old file (a crash in between), or discards a pending key whose rotation was
    /// never recorded (or was superseded).
    pub async fn recover_rotation(&self) -> Result<(), ServiceError> {
        let mut chain = self.rotation.lock().await;
        let head = self.store.audit_head().await?;
        self.follow_chain(&mut chain, &head).await?;
        let pending = self.keys.dir.join(PENDING_SIGNING_KEY_FILE);
        let Some(der) = read_secret(&pending).map_err(internal)? else {
            return Ok(());
        };
        let new = SigningKey::from_pkcs8(&der).map_err(internal)?;
        let new_id = new.public_key().key_id();
        // Following the chain made the pending key the held one iff the chain's last
        // rotation introduced it.
        if self.keys.public_key().key_id() == new_id {
            self.activate_pending(new)?;
            tracing::warn!(key_id = %new_id, "completed an interrupted audit signing key rotation");
        } else {
            std::fs::remove_file(&pending).map_err(internal)?;
        }
        Ok(())
    }

    /// Moves the pending key file over the current one, and signs with `new` from now on.
    fn activate_pending(&self, new: SigningKey) -> Result<(), ServiceError> {
        let pending = self.keys.dir.join(PENDING_SIGNING_KEY_FILE);
        let current = self.keys.dir.join(SIGNING_KEY_FILE);
        match std::fs::rename(&pending, &current) {
            Ok(()) => {}
            // Another replica sharing the directory took the pending file: starting up, it moved
            // it into place (`recover_rotation`), or discarded it, having followed the chain
            // just before this rotation was recorded. The chain has `new` in force now, and the
            // other replicas can follow only if the directory holds it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let new_id = new.public_key().key_id();
                let in_place = read_secret(&current)
                    .map_err(internal)?
                    .and_then(|der| SigningKey::from_pkcs8(&der).ok())
                    .is_some_and(|key| key.public_key().key_id() == new_id);
                if !in_place {
                    let temp =
                        current.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
                    write_secret(&temp, &new.to_pkcs8().map_err(internal)?).map_err(internal)?;
                    if let Err(e) = std::fs::rename(&temp, &current) {
                        let _ = std::fs::remove_file(&temp);
                        return Err(internal(e));
                    }
                }
            }
            Err(e) => return Err(internal(e)),
        }
        if let Ok(dir) = std::fs::File::open(&self.keys.dir) {
            let _ = dir.sync_all();
        }
        *self
            .keys
            .signing
            .write()
            .unwrap_or_else(PoisonError::into_inner) = new;
        Ok(())
    }

    /// Checkpoints every `interval` until the task is dropped.
    pub async fn run_checkpoints(self: Arc<Self>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(e) = self.checkpoint().await {
                tracing::error!(error = %e, "could not write an audit checkpoint");
            }
        }
    }

    /// Streams a per-tenant export (docs/audit-format.md §6.2) of `tenant`'s records appended
    /// in `from_ms..to_ms` as `AuditService.Export` chunks into `tx`: the tenant's records in
    /// full, every other record redacted, one record on each side of the range when the chain
    /// has it (so that the verifier can show nothing of the range was cut at its ends), and a
    /// final checkpoint signed now. Format-v1 records cannot be redacted: the export starts at
    /// the first format-v2 record of that span.
    pub(crate) async fn export_tenant(
        &self,
        tenant: &keyward_store::TenantId,
        from_ms: i64,
        to_ms: i64,
        tx: tokio::sync::mpsc::Sender<Result<pb::ExportAuditChunk, Status>>,
    ) -> Result<(), ServiceError> {
        let mut chain = self.rotation.lock().await;
        let head = self.store.audit_head().await?;
        self.follow_chain(&mut chain, &head).await?;
        let span = self.tenant_export_span(head, from_ms, to_ms).await?;
        let Some((first, last)) = span else {
            return Err(ServiceError::invalid(
                "from",
                "the audit chain holds no format-v2 record in or next to this range: a per-tenant export shows format-v2 records only (docs/audit-format.md §6.2)",
            ));
        };
        let tag =
            keyward_audit::RecordSealer::new(Arc::clone(&self.keys.hasher)).tenant_tag(tenant);
        let scope = keyward_audit::TenantScope::new(tenant.clone(), tag, from_ms, to_ms);
        let checkpoints = self.store.checkpoints(first, last).await?;
        let count = u64::try_from(checkpoints.len()).map_err(internal)? + 1;
        let buffer = SharedBuffer::default();
        let mut writer = ExportWriter::new(buffer.clone());
        writer
            .write_tenant_header(&ExportHeader::new(first, last, count, now_ms()), &scope)
            .map_err(internal)?;
        let mut pending = checkpoints.into_iter().peekable();
        let mut after = first - 1;
        while after < last {
            let page = self
                .store
                .audit_records(&AuditQuery::default().with_after_seq(after).with_limit(PAGE))
                .await?;
            let Some(end) = page.last() else { break };
            after = end.seq();
            for record in page.iter().take_while(|r| r.seq() <= last) {
                if record.version() < 2 {
                    return Err(ServiceError::invalid(
                        "from",
                        format!(
                            "audit record {} is format v1 (appended by a replica older than format v2), after format-v2 records: it cannot be redacted; export from after it",
                            record.seq()
                        ),
                    ));
                }
                writer.write_record(record).map_err(internal)?;
                while let Some(cp) = pending.next_if(|cp| cp.seq == record.seq()) {
                    writer.write_checkpoint(&cp).map_err(internal)?;
                }
            }
            if !send(&tx, buffer.take()).await {
                return Ok(()); // the client went away
            }
        }
        {
            let key = self
                .keys
                .signing
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            writer.finish(&key, now_ms()).map_err(internal)?;
        }
        send(&tx, buffer.take()).await;
        Ok(())
    }

    /// The seqs `(first, last)` of a per-tenant export of `from_ms..to_ms` up to `head`: from
    /// the last record before the range (or the range's first record when there is none before,
    /// or it is format v1), skipping format-v1 records, to the first record after the range (or
    /// the head). `None` when no format-v2 record is left.
    async fn tenant_export_span(
        &self,
        head: ChainHead,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Option<(u64, u64)>, ServiceError> {
        let first_at_or_after = |ms: i64| {
            let store = Arc::clone(&self.store);
            async move {
                let page = store
                    .audit_records(
                        &AuditQuery::default()
                            .with_time_range(Some(ms), None)
                            .with_limit(1),
                    )
                    .await?;
                Ok::<_, ServiceError>(page.first().map(Record::seq))
            }
        };
        // The first record in the range, and the one before it (the left boundary).
        let in_range = first_at_or_after(from_ms).await?.unwrap_or(head.seq + 1);
        let mut first = in_range.saturating_sub(1).max(1);
        // The first record after the range (the right boundary), or the head.
        let last = match first_at_or_after(to_ms).await? {
            Some(seq) if seq <= head.seq => seq,
            _ => head.seq,
        };
        // Skip format-v1 records at the start.
        loop {
            if first > last {
                return Ok(None);
            }
            let page = self
                .store
                .audit_records(
                    &AuditQuery::default()
                        .with_after_seq(first - 1)
                        .with_limit(PAGE),
                )
                .await?;
            match page.iter().find(|r| r.version() >= 2) {
                Some(r) if r.seq() <= last => return Ok(Some((r.seq(), last))),
                Some(_) => return Ok(None),
                None if page.len() < PAGE as usize => return Ok(None),
                None => first = page.last().map_or(last + 1, |r| r.seq() + 1),
            }
        }
    }

    /// Writes the export (docs/audit-format.md) in chunks of whole lines to `tx`.
    /// Streams the whole export (header, records, checkpoints, a final signed checkpoint) as
    /// `AuditService.Export` chunks into `tx`.
    pub(crate) async fn export(
        &self,
        tx: tokio::sync::mpsc::Sender<Result<pb::ExportAuditChunk, Status>>,
    ) -> Result<(), ServiceError> {
        // The final checkpoint must be signed by the key the exported chain trusts.
        let mut chain = self.rotation.lock().await;
        let head = self.store.audit_head().await?;
        self.follow_chain(&mut chain, &head).await?;
        self.export_up_to(head, tx).await
    }

    /// Writes the export of the whole chain (docs/audit-format.md §6, what `ExportAudit`
    /// streams) to `out`, chunk by chunk, for callers in the same process.
    pub async fn export_to(&self, out: &mut (impl Write + Send)) -> Result<(), ServiceError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<pb::ExportAuditChunk, Status>>(4);
        let drain = async {
            while let Some(Ok(chunk)) = rx.recv().await {
                out.write_all(&chunk.jsonl)?;
            }
            out.flush()
        };
        // If writing fails, `rx` is dropped and the export stops at its next chunk.
        let (exported, written) = tokio::join!(self.export(tx), drain);
        exported?;
        written.map_err(|e| internal(format!("writing the audit export: {e}")))
    }

    /// The export of records `1..=head.seq`. Records appended after `head` was read (usage
    /// summaries, other callers' lifecycle changes) are left out: the header announces
    /// `head.seq`, and the final checkpoint covers exactly what was written.
    async fn export_up_to(
        &self,
        head: keyward_audit::ChainHead,
        tx: tokio::sync::mpsc::Sender<Result<pb::ExportAuditChunk, Status>>,
    ) -> Result<(), ServiceError> {
        let checkpoints = self.store.checkpoints(1, head.seq).await?;
        let count = u64::try_from(checkpoints.len()).map_err(internal)? + 1;
        let buffer = SharedBuffer::default();
        let mut writer = ExportWriter::new(buffer.clone());
        writer
            .write_header(&ExportHeader::new(1, head.seq, count, now_ms()))
            .map_err(internal)?;
        let mut pending = checkpoints.into_iter().peekable();
        let mut after = 0;
        loop {
            let page = self
                .store
                .audit_records(&AuditQuery::default().with_after_seq(after).with_limit(PAGE))
                .await?;
            let Some(last) = page.last() else { break };
            after = last.seq();
            for record in page.iter().take_while(|r| r.seq() <= head.seq) {
                writer.write_record(record).map_err(internal)?;
                while let Some(cp) = pending.next_if(|cp| cp.seq == record.seq()) {
                    writer.write_checkpoint(&cp).map_err(internal)?;
                }
            }
            if !send(&tx, buffer.take()).await {
                return Ok(()); // the client went away
            }
            if after >= head.seq {
                break;
            }
        }
        {
            let key = self
                .keys
                .signing
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            writer.finish(&key, now_ms()).map_err(internal)?;
        }
        send(&tx, buffer.take()).await;
        Ok(())
    }
}

async fn send(
    tx: &tokio::sync::mpsc::Sender<Result<pb::ExportAuditChunk, Status>>,
    jsonl: Vec<u8>,
) -> bool {
    jsonl.is_empty() || tx.send(Ok(pb::ExportAuditChunk { jsonl })).await.is_ok()
}

pub(crate) fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(e.to_string())
}

/// A `Write` whose bytes the exporter drains between pages.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use keyward_audit::AuditEvent;
    use keyward_store::sqlite::SqliteStore;

    fn admin(n: usize) -> Vec<AuditEvent> {
        (0..n)
            .map(|i| AuditEvent::AdminAction {
                actor: "test".to_owned(),
                action: "noop".to_owned(),
                detail: i.to_string(),
            })
            .collect()
    }

    async fn collect(
        auditor: &Auditor,
        head: keyward_audit::ChainHead,
    ) -> Result<Vec<u8>, ServiceError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<pb::ExportAuditChunk, Status>>(4);
        let drain = async move {
            let mut out = Vec::new();
            while let Some(chunk) = rx.recv().await {
                out.extend(chunk.expect("no error chunk").jsonl);
            }
            out
        };
        let (exported, out) = tokio::join!(auditor.export_up_to(head, tx), drain);
        exported.map(|()| out)
    }

    /// Regression (found by the crash test in CI): records appended while an export runs
    /// (usage summaries, other callers) went into the page being written although the header
    /// had announced the older head, and the export failed verification.
    #[tokio::test]
    async fn an_export_ends_at_the_head_it_announced_while_records_keep_arriving() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("k.db")).await.unwrap());
        let keys = AuditKeys::load_or_create(&dir.path().join("audit")).unwrap();
        let auditor = Auditor::new(store.clone(), keys);
        store.append_audit(admin(700)).await.unwrap();
        assert_eq!(auditor.checkpoint().await.unwrap(), Some(700));
        store.append_audit(admin(800)).await.unwrap();
        let head = store.audit_head().await.unwrap();
        assert_eq!(head.seq, 1500);
        // Appended after the export read its head: the second page (1001..=2000) holds them.
        store.append_audit(admin(600)).await.unwrap();

        let export = collect(&auditor, head).await.unwrap();
        let report =
            keyward_audit::verify_export(export.as_slice(), &[auditor.public_key()]).unwrap();
        assert_eq!((report.first_seq, report.last_seq), (1, 1500));
        assert_eq!(report.records, 1500);
        assert_eq!(report.head_hash, head.hash);
        assert_eq!(report.checkpoints, 2, "the one at 700 and the final one");
    }

    /// A replica starting while another rotates may take the pending key file (moving it into
    /// place, or discarding it before the rotation is recorded); the rotating replica then
    /// writes the key the chain now has in force itself, so the others can follow.
    #[tokio::test]
    async fn activating_a_rotation_whose_pending_file_was_taken_still_leaves_the_key_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("k.db")).await.unwrap());
        let keys_dir = dir.path().join("audit");
        let auditor = Auditor::new(store, AuditKeys::load_or_create(&keys_dir).unwrap());
        let new = SigningKey::generate().unwrap();
        let new_key = new.public_key();
        // No pending file: it was discarded.
        auditor.activate_pending(new).unwrap();
        assert_eq!(auditor.public_key(), new_key);
        assert_eq!(
            AuditKeys::load_or_create(&keys_dir).unwrap().public_key(),
            new_key
        );
        assert_eq!(
            std::fs::read_dir(&keys_dir).unwrap().count(),
            2,
            "no temporary file left"
        );
    }
}
