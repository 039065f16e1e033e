//! The hash-chained audit log: the append inside every write transaction, standalone appends,
//! checkpoints and the query of an [`AuditQuery`].

use sqlx::Database;

use super::{backend, sql_impl, write_error};
use crate::decode::{self, StoredRecord, now_ms};
use crate::{
    AuditError, AuditEvent, AuditQuery, ChainHead, Checkpoint, Record, StoreError, TenantId,
};

/// The SQL of an [`AuditQuery`]: `seq > $1`, then one placeholder per filter in the order
/// tenant, event type, from, to, and the limit last (see [`SqlBackend::audit_records`]).
pub(crate) fn audit_query_sql(query: &AuditQuery) -> String {
    let mut sql = String::from(
        "SELECT seq, time_ms, event_type, tenant_id, body, hash FROM audit_records \
         WHERE seq > $1",
    );
    let mut n = 1;
    let mut clause = |sql: &mut String, condition: &str| {
        n += 1;
        sql.push_str(&format!(" AND {condition} ${n}"));
    };
    if query.tenant.is_some() {
        clause(&mut sql, "tenant_id =");
    }
    if query.event_type.is_some() {
        clause(&mut sql, "event_type =");
    }
    if query.from_ms.is_some() {
        clause(&mut sql, "time_ms >=");
    }
    if query.to_ms.is_some() {
        clause(&mut sql, "time_ms <");
    }
    sql.push_str(&format!(" ORDER BY seq LIMIT ${}", n + 1));
    sql
}

sql_impl!(impl => {
    pub(crate) fn record_from_row(row: &<D::Db as Database>::Row) -> Result<Record, StoreError> {
        const T: &str = "audit_records";
        decode::record(&StoredRecord {
            seq: Self::col(row, T, "seq")?,
            time_ms: Self::col(row, T, "time_ms")?,
            event_type: Self::col(row, T, "event_type")?,
            tenant_id: Self::col(row, T, "tenant_id")?,
            body: Self::col(row, T, "body")?,
            hash: Self::col(row, T, "hash")?,
        })
    }

    /// Appends `events`, in order, to the audit chain inside `conn`'s write transaction.
    ///
    /// The head is read here, under the write lock [`Dialect::begin_write`] took, so no other
    /// writer can append between this read and the commit. Every record of the batch gets the
    /// same time: the store clock now, or the previous record's time if the clock went
    /// backwards (times along the chain never decrease). Any failure is returned and the
    /// caller's transaction is dropped, i.e. rolled back together with the change the records
    /// describe.
    pub(crate) async fn append_events(
        &self,
        conn: &mut <D::Db as Database>::Connection,
        events: Vec<AuditEvent>,
    ) -> Result<Vec<Record>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let last =
            sqlx::query("SELECT seq, hash, time_ms FROM audit_records ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *conn)
                .await
                .map_err(backend)?;
        let (mut head, time_ms) = match last {
            None => (ChainHead::GENESIS, now_ms()),
            Some(row) => {
                const T: &str = "audit_records";
                let head = decode::chain_head(
                    Self::col(&row, T, "seq")?,
                    &Self::col::<String>(&row, T, "hash")?,
                )?;
                let previous: i64 = Self::col(&row, T, "time_ms")?;
                (head, now_ms().max(previous))
            }
        };
        let mut records = Vec::with_capacity(events.len());
        for event in events {
            let record = match &self.sealer {
                Some(sealer) => sealer.append(&head, time_ms, event),
                None => Record::append(&head, time_ms, event),
            }
            .map_err(StoreError::Audit)?;
            let body = String::from_utf8(record.canonical_bytes())
                .map_err(|e| StoreError::Audit(AuditError::Encoding(e.to_string())))?;
            let event = record.event();
            sqlx::query(
                "INSERT INTO audit_records (seq, time_ms, event_type, tenant_id, body, hash) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(decode::seq_to_db(record.seq())?)
            .bind(record.time_ms())
            .bind(event.event_type())
            .bind(event.tenant().map(TenantId::as_str))
            .bind(body)
            .bind(hex::encode(record.hash()))
            .execute(&mut *conn)
            .await
            .map_err(|e| write_error(e, &format!("audit record {}", record.seq())))?;
            head = record.head();
            records.push(record);
        }
        Ok(records)
    }

    pub(crate) async fn try_append_audit(&self, events: &[AuditEvent]) -> Result<Vec<Record>, StoreError> {
        let mut tx = D::begin_write(&self.pool).await?;
        let records = self.append_events(&mut tx, events.to_vec()).await?;
        tx.commit().await.map_err(backend)?;
        Ok(records)
    }

    pub(crate) async fn try_insert_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let seq = decode::seq_to_db(checkpoint.seq)?;
        let body = checkpoint.to_canonical_json().map_err(StoreError::Audit)?;
        let mut tx = D::begin_write(&self.pool).await?;
        let expected = if checkpoint.seq == 0 {
            ChainHead::GENESIS.hash
        } else {
            let stored: Option<String> =
                sqlx::query_scalar("SELECT hash FROM audit_records WHERE seq = $1")
                    .bind(seq)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
            let Some(stored) = stored else {
                return Err(StoreError::InvalidInput(format!(
                    "checkpoint at seq {seq} is beyond the head of the audit chain"
                )));
            };
            decode::hash("audit_records", "hash", &stored)?
        };
        if checkpoint.head_hash != expected {
            return Err(StoreError::InvalidInput(format!(
                "checkpoint head_hash {} is not the hash of audit record {seq}",
                hex::encode(checkpoint.head_hash)
            )));
        }
        let existing = sqlx::query("SELECT 1 FROM audit_checkpoints WHERE seq = $1")
            .bind(seq)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if existing.is_some() {
            return Err(StoreError::AlreadyExists(format!(
                "checkpoint at seq {seq}"
            )));
        }
        sqlx::query(
            "INSERT INTO audit_checkpoints (seq, time_ms, key_id, body) VALUES ($1, $2, $3, $4)",
        )
        .bind(seq)
        .bind(checkpoint.time_ms)
        .bind(checkpoint.key_id.as_str())
        .bind(body)
        .execute(&mut *tx)
        .await
        .map_err(|e| match write_error(e, "") {
            StoreError::Conflict(_) => {
                StoreError::AlreadyExists(format!("checkpoint at seq {seq}"))
            }
            other => other,
        })?;
        tx.commit().await.map_err(backend)?;
        Ok(())
    }
});
