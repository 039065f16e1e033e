//! `keyward.v1.AuditService`: listing, exporting and verifying-key answers over the
//! [`Auditor`]; the list request's conversion is in [`super::convert`].

use std::sync::Arc;

use keyward_proto::v1::{self as pb, audit_service_server::AuditService};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use keyward_authz::{Action, RequestContext};

use crate::{audit::Auditor, authz::Authz};

use super::{convert::*, split};

/// `keyward.v1.AuditService`.
#[derive(Debug, Clone)]
pub struct AuditApi {
    auditor: Arc<Auditor>,
    authz: Arc<Authz>,
}

impl AuditApi {
    pub fn new(auditor: Arc<Auditor>, authz: Arc<Authz>) -> Self {
        Self { auditor, authz }
    }
}

type ExportStream = ReceiverStream<Result<pb::ExportAuditChunk, Status>>;

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let (head, r) = split(request);
        let tenant = list_tenant(&r.tenant_id)?;
        // One tenant's records, or (no tenant named) every record: a different resource.
        self.authz.check(
            &head,
            Action::ReadAudit,
            tenant.as_ref(),
            &RequestContext::default(),
        )?;
        let query = list_query(tenant, &r)?;
        let limit = query.limit;
        let records = self.auditor.records(&query).await?;
        let next_page_token = match records.last() {
            Some(last) if records.len() == limit as usize => last.seq().to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListAuditEventsResponse {
            records: records.iter().map(record_to_pb).collect(),
            next_page_token,
        }))
    }

    type ExportStream = ExportStream;

    async fn export(
        &self,
        request: Request<pb::ExportAuditRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        // The whole chain (no tenant: resource System), or one tenant's records in full and
        // every other record redacted (resource: that tenant), docs/audit-format.md §6.2.
        let r = request.get_ref();
        let tenant = list_tenant(&r.tenant_id)?;
        let range = export_range(tenant.is_some(), r)?;
        self.authz.check(
            &request,
            Action::ExportAudit,
            tenant.as_ref(),
            &RequestContext::default(),
        )?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let auditor = Arc::clone(&self.auditor);
        tokio::spawn(async move {
            let exported = match tenant {
                None => auditor.export(tx.clone()).await,
                Some(tenant) => {
                    auditor
                        .export_tenant(&tenant, range.0, range.1, tx.clone())
                        .await
                }
            };
            if let Err(e) = exported {
                let _ = tx.send(Err(e.to_status())).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn rotate_signing_key(
        &self,
        request: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::AuditPublicKey>, Status> {
        let caller = self.authz.check(
            &request,
            Action::RotateSigningKey,
            None,
            &RequestContext::default(),
        )?;
        let requested_by = request.into_inner().requested_by;
        let key = self
            .auditor
            .rotate_signing_key(caller.actor(&requested_by))
            .await?;
        Ok(Response::new(pb::AuditPublicKey {
            public_key: key.to_text(),
            key_id: key.key_id(),
        }))
    }

    async fn get_public_key(
        &self,
        request: Request<pb::GetAuditPublicKeyRequest>,
    ) -> Result<Response<pb::AuditPublicKey>, Status> {
        self.authz.check(
            &request,
            Action::ReadAuditPublicKey,
            None,
            &RequestContext::default(),
        )?;
        let key = self.auditor.public_key_in_force().await?;
        Ok(Response::new(pb::AuditPublicKey {
            public_key: key.to_text(),
            key_id: key.key_id(),
        }))
    }
}
