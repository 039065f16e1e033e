//! Opening one envelope from an export: [`open_envelope`], the steps of docs/exit.md ("Open one
//! envelope"): verify the export, find the envelope's data key (or its tombstone), unwrap its
//! tenant key with the customer's KEK, unwrap the data key under the tenant key with its AAD,
//! open the envelope with the caller's encryption context.

use std::path::Path;

use keyward_envelope::{EncryptionContext, EnvelopeError, KeyId, WrappedKey, parse, unwrap_key};
use keyward_kms::{ErrorKind, ProviderError, ProviderKind};
use zeroize::Zeroizing;

use crate::format::{DATA_KEYS, TENANT_KEYS, TombstoneEntry, tenant_key_context};
use crate::providers::ProviderSettings;
use crate::verify::{Lookup, Refused, verify};

/// Why an envelope was not opened. Each kind has its exit status ([`OpenError::exit_code`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The export does not verify: tampered, incomplete, another version.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The envelope's data key was shredded: its data is gone for good.
    #[error(
        "the data key {id} of this envelope was shredded (shredded_at_ms {}, by {}, reason {:?}): \
         its data is unreadable for good",
        .tombstone.shredded_at_ms, .tombstone.shredded_by, .tombstone.reason
    )]
    Shredded {
        id: KeyId,
        tombstone: TombstoneEntry,
    },
    /// The customer's KEK did not unwrap the tenant key (refused, unreachable, not configured
    /// here).
    #[error("tenant key {tenant_key} ({provider} key {key_ref}) was not unwrapped: {error}")]
    Kms {
        tenant_key: KeyId,
        provider: ProviderKind,
        key_ref: String,
        #[source]
        error: ProviderError,
    },
    /// The envelope cannot be opened from this export: not an envelope, another tenant's, its
    /// data key not in the export, or it does not open with this context.
    #[error("{0}")]
    Envelope(String),
}

impl OpenError {
    /// The process exit status for this error (docs/exit.md, "keyward-open").
    pub fn exit_code(&self) -> u8 {
        match self {
            OpenError::Refused(_) => 1,
            OpenError::Shredded { .. } => 3,
            OpenError::Kms { .. } => 4,
            OpenError::Envelope(_) => 5,
        }
    }
}

/// Opens `envelope` with `context` from the export in `dir`, reaching the tenant key's KEK
/// through `providers`. The plaintext is zeroized when dropped; every key on the way is
/// (`SecretKey`).
pub async fn open_envelope(
    dir: &Path,
    envelope: &[u8],
    context: &EncryptionContext,
    providers: &ProviderSettings,
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let parsed = parse(envelope)
        .map_err(|e| OpenError::Envelope(format!("the input is not a Keyward envelope: {e}")))?;
    let dek_id = *parsed.header().dek_id();
    let export = verify(dir, Some(&dek_id))?;
    if parsed.header().tenant() != &export.tenant {
        return Err(OpenError::Envelope(format!(
            "the envelope is tenant {}'s; this export is tenant {}'s",
            parsed.header().tenant(),
            export.tenant
        )));
    }
    let data_key = match export.lookup.clone() {
        Some(Lookup::DataKey(key)) => key,
        Some(Lookup::Shredded(tombstone)) => {
            return Err(OpenError::Shredded {
                id: dek_id,
                tombstone,
            });
        }
        Some(Lookup::Absent) | None => {
            return Err(OpenError::Envelope(format!(
                "the envelope's data key {dek_id} is not in this export (the envelope was \
                 written after the export was taken: take a new export)"
            )));
        }
    };
    let tenant_key = export.tenant_key(&data_key.tenant_key_id).ok_or_else(|| {
        // verify() checked every data key's tenant key: unreachable unless it changes.
        Refused {
            file: DATA_KEYS.to_owned(),
            problem: format!("data key {dek_id}'s tenant key is not in {TENANT_KEYS}"),
        }
    })?;

    let kms_error = |error: ProviderError| {
        if error.kind() == ErrorKind::InvalidCiphertext {
            // The KEK answered, and the ciphertext is not one it made with this context: the
            // tenant key's entry (its bytes, id or tenant) is not what Keyward exported.
            OpenError::Refused(Refused {
                file: TENANT_KEYS.to_owned(),
                problem: format!(
                    "tenant key {} does not unwrap under its KEK with its wrap context \
                     ({error}): the entry was altered, or the KEK is not the one it names",
                    tenant_key.id
                ),
            })
        } else {
            OpenError::Kms {
                tenant_key: tenant_key.id,
                provider: tenant_key.provider,
                key_ref: tenant_key.key_ref.clone(),
                error,
            }
        }
    };
    let (provider, kek) = providers
        .provider(tenant_key.provider, &tenant_key.key_ref)
        .await
        .map_err(kms_error)?;
    let unwrapped_tenant_key = provider
        .unwrap(
            &kek,
            &WrappedKey::new(tenant_key.wrapped.clone()),
            &tenant_key_context(&export.tenant, &tenant_key.id),
        )
        .await
        .map_err(kms_error)?;
    let dek = unwrap_key(
        &unwrapped_tenant_key,
        &WrappedKey::new(data_key.wrapped.clone()),
        &data_key.aad,
    )
    .map_err(|_| Refused {
        file: DATA_KEYS.to_owned(),
        problem: format!(
            "data key {dek_id} does not unwrap under tenant key {} with the AAD of its \
                 tenant, scope {:?} and id: its entry was altered",
            tenant_key.id, data_key.scope
        ),
    })?;
    drop(unwrapped_tenant_key);
    parsed.open(&dek, context).map_err(|e| match e {
        EnvelopeError::DecryptFailed => OpenError::Envelope(
            "the envelope does not open: the encryption context differs from the one it was \
             sealed with, or the envelope was altered"
                .to_owned(),
        ),
        other => OpenError::Envelope(format!("the envelope does not open: {other}")),
    })
}
