//! Opening envelopes from an export, the steps of docs/exit.md ("Open one envelope"): verify the
//! export, find the envelope's data key (or its tombstone), unwrap its tenant key with the
//! customer's KEK, unwrap the data key under the tenant key with its AAD, open the envelope with
//! the caller's encryption context.
//!
//! [`open_envelope`] takes an envelope in memory, of either version; [`open_stream`] reads one
//! from a reader and writes its plaintext to a writer: a framed envelope (version 2,
//! docs/envelope-format.md §10) frame by frame, in constant memory, each frame written only
//! once it has opened.

use keyward_envelope::Wiped;
use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::path::Path;

use keyward_envelope::framed::{
    self, FRAMED_VERSION, FrameOpener, FrameSplitter, FramedHeader, envelope_version,
    parse_framed_header,
};
use keyward_envelope::{
    EncryptionContext, EnvelopeError, KeyId, SecretKey, TenantId, WrappedKey, parse, unwrap_key,
};
use keyward_kms::{ErrorKind, ProviderError, ProviderKind};

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
        tombstone: Box<TombstoneEntry>,
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
    /// A framed envelope stopped opening part-way ([`open_stream`]): the `written` bytes
    /// written before are authentic (a prefix of the sealed message), but the message is
    /// incomplete.
    #[error(
        "{error}; the {written} bytes of plaintext written before it are authentic, but the \
         message is incomplete"
    )]
    Incomplete { written: u64, error: String },
    /// Reading the envelope or writing the plaintext failed.
    #[error("cannot {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl OpenError {
    /// The process exit status for this error (docs/exit.md, "keyward-open").
    pub fn exit_code(&self) -> u8 {
        match self {
            OpenError::Refused(_) => 1,
            OpenError::Shredded { .. } => 3,
            OpenError::Kms { .. } => 4,
            OpenError::Envelope(_) | OpenError::Incomplete { .. } | OpenError::Io { .. } => 5,
        }
    }
}

/// Opens `envelope` (version 1, or a framed envelope held in memory) with `context` from the
/// export in `dir`, reaching the tenant key's KEK through `providers`. The plaintext is zeroized
/// when dropped; every key on the way is (`SecretKey`).
pub async fn open_envelope(
    dir: &Path,
    envelope: &[u8],
    context: &EncryptionContext,
    providers: &ProviderSettings,
) -> Result<Wiped, OpenError> {
    if envelope_version(envelope) == Some(FRAMED_VERSION) {
        let mut plaintext = Wiped::new(Vec::new());
        let (head, mut rest) = envelope.split_at(3);
        open_framed(
            dir,
            head.to_vec(),
            &mut rest,
            &mut *plaintext,
            context,
            providers,
        )
        .await?;
        return Ok(plaintext);
    }
    open_single(dir, envelope, context, providers).await
}

/// A version 1 envelope.
async fn open_single(
    dir: &Path,
    envelope: &[u8],
    context: &EncryptionContext,
    providers: &ProviderSettings,
) -> Result<Wiped, OpenError> {
    let parsed = parse(envelope)
        .map_err(|e| OpenError::Envelope(format!("the input is not a Keyward envelope: {e}")))?;
    let dek = data_key(
        dir,
        parsed.header().tenant(),
        parsed.header().dek_id(),
        providers,
    )
    .await?;
    parsed.open(&dek, context).map_err(not_opened)
}

/// Reads an envelope of either version from `input` and writes its plaintext to `output`;
/// returns the plaintext's length. A framed envelope is read and written frame by frame,
/// holding one frame at a time (at most 1 MiB), and each frame is written only once it has
/// opened; a failure part-way is [`OpenError::Incomplete`]. A version 1 envelope is read whole
/// first (it is one AES-GCM message).
pub async fn open_stream(
    dir: &Path,
    input: &mut dyn Read,
    output: &mut dyn Write,
    context: &EncryptionContext,
    providers: &ProviderSettings,
) -> Result<u64, OpenError> {
    let mut head = Vec::new();
    while head.len() < 3 {
        let want = 3 - head.len();
        if read_some(input, &mut head, want)? == 0 {
            break;
        }
    }
    if envelope_version(&head) != Some(FRAMED_VERSION) {
        input
            .read_to_end(&mut head)
            .map_err(|source| OpenError::Io {
                what: "read the envelope",
                source,
            })?;
        let plaintext = open_single(dir, &head, context, providers).await?;
        write(output, &plaintext)?;
        return Ok(plaintext.len() as u64);
    }
    open_framed(dir, head, input, output, context, providers).await
}

/// A framed envelope whose first bytes are `head`, the rest in `input`.
async fn open_framed(
    dir: &Path,
    mut head: Vec<u8>,
    input: &mut dyn Read,
    output: &mut dyn Write,
    context: &EncryptionContext,
    providers: &ProviderSettings,
) -> Result<u64, OpenError> {
    let header = read_header(input, &mut head)?;
    let dek = data_key(dir, header.tenant(), header.dek_id(), providers).await?;
    let mut opener = FrameOpener::new(&header, &dek, context).map_err(not_opened)?;
    drop(dek);
    let mut splitter = FrameSplitter::new(&header);
    splitter.push(&head[header.encoded_len()..]);
    let mut buf = vec![0u8; 64 * 1024];
    // Nothing written yet: the envelope simply does not open.
    let incomplete = |opener: &FrameOpener, e: EnvelopeError| match opener.plaintext_len() {
        0 => not_opened(e),
        written => OpenError::Incomplete {
            written,
            error: why_not_opened(e),
        },
    };
    loop {
        while let Some(frame) = splitter.next_frame().map_err(|e| incomplete(&opener, e))? {
            let (plaintext, _) = opener
                .open_frame(frame)
                .map_err(|e| incomplete(&opener, e))?;
            write(output, &plaintext)?;
        }
        let n = read_some(input, &mut buf, 0)?;
        if n == 0 {
            break;
        }
        splitter.push(&buf[..n]);
    }
    framed::finish(&opener, &splitter).map_err(|e| incomplete(&opener, e))?;
    output.flush().map_err(|source| OpenError::Io {
        what: "write the plaintext",
        source,
    })?;
    Ok(opener.plaintext_len())
}

/// Reads the rest of a framed header into `head` (which holds its first bytes).
fn read_header(input: &mut dyn Read, head: &mut Vec<u8>) -> Result<FramedHeader, OpenError> {
    loop {
        match parse_framed_header(head) {
            Ok(Some(header)) => return Ok(header),
            // A header is at most 154 bytes: read a little at a time.
            Ok(None) => {
                if read_some(input, head, 64)? == 0 {
                    return Err(OpenError::Envelope(
                        "the input is not a Keyward envelope: it ends inside the header".to_owned(),
                    ));
                }
            }
            Err(e) => {
                return Err(OpenError::Envelope(format!(
                    "the input is not a Keyward envelope: {e}"
                )));
            }
        }
    }
}

/// One read into `buf`: appended after its content when `extend` > 0 (up to `extend` bytes),
/// else over it. Retries on `Interrupted`; 0 at the end of the input.
fn read_some(input: &mut dyn Read, buf: &mut Vec<u8>, extend: usize) -> Result<usize, OpenError> {
    loop {
        let result = if extend > 0 {
            let start = buf.len();
            buf.resize(start + extend, 0);
            let r = input.read(&mut buf[start..]);
            buf.truncate(start + *r.as_ref().unwrap_or(&0));
            r
        } else {
            input.read(buf)
        };
        match result {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == IoErrorKind::Interrupted => {}
            Err(source) => {
                return Err(OpenError::Io {
                    what: "read the envelope",
                    source,
                });
            }
        }
    }
}

fn write(output: &mut dyn Write, bytes: &[u8]) -> Result<(), OpenError> {
    output.write_all(bytes).map_err(|source| OpenError::Io {
        what: "write the plaintext",
        source,
    })
}

fn not_opened(e: EnvelopeError) -> OpenError {
    OpenError::Envelope(why_not_opened(e))
}

fn why_not_opened(e: EnvelopeError) -> String {
    match e {
        EnvelopeError::DecryptFailed => "the envelope does not open: the encryption context \
             differs from the one it was sealed with, or the envelope was altered"
            .to_owned(),
        other => format!("the envelope does not open: {other}"),
    }
}

/// Steps 1 and 3 to 5 of docs/exit.md section 6: the data key `dek_id` of an envelope of
/// `tenant`, from the export in `dir`.
async fn data_key(
    dir: &Path,
    tenant: &TenantId,
    dek_id: &KeyId,
    providers: &ProviderSettings,
) -> Result<SecretKey, OpenError> {
    let dek_id = *dek_id;
    let export = verify(dir, Some(&dek_id))?;
    if tenant != &export.tenant {
        return Err(OpenError::Envelope(format!(
            "the envelope is tenant {tenant}'s; this export is tenant {}'s",
            export.tenant
        )));
    }
    let data_key = match export.lookup.clone() {
        Some(Lookup::DataKey(key)) => key,
        Some(Lookup::Shredded(tombstone)) => {
            return Err(OpenError::Shredded {
                id: dek_id,
                tombstone: Box::new(tombstone),
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
    Ok(dek)
}
