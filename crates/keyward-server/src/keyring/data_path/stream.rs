//! Streams (`EncryptStream`, `DecryptStream`): a framed envelope (format version 2) sealed or
//! opened frame by frame, under one DEK held for the length of the message and checked again
//! before every frame (docs/streaming.md).
//!
//! The unary calls' rules, applied per frame:
//! - the tenant's gate is open at the generation the key was loaded under (a revocation
//!   committed mid-stream ends the stream with `KEY_REVOKED` at the next frame);
//! - the DEK is not older than a shred of the tenant (else it is looked up again: a shredded
//!   DEK ends the stream with `DATA_KEY_SHREDDED`);
//! - the DEK is within its deadline: a stream longer than the cache TTL has its DEK unwrapped
//!   again (through the cache, so the KMS vouches for the tenant key once per TTL per replica,
//!   as for unary calls), and a KMS that refuses ends the stream.
//!
//! Plaintext frames are checked once more by the caller right before they leave
//! ([`crate::keyring::Keyring::release`]), like a batch's held plaintext.

use keyward_envelope::Wiped;
use std::{sync::Arc, sync::atomic::Ordering, time::Instant};

use keyward_envelope::{
    EncryptionContext, EnvelopeError, KeyId, SecretKey, TenantId,
    framed::{self, FrameOpener, FrameSealer, FrameSplitter, FramedHeader},
};
use keyward_store::Scope;

use super::{DataPath, classify_parse_error};
use crate::{
    error::ServiceError,
    keyring::{cache::ActiveDek, cache::LiveKey, internal},
};

/// The DEK a stream seals or opens under, with the gate generation it was checked at.
pub struct StreamKey {
    tenant: TenantId,
    dek_id: KeyId,
    key: Arc<LiveKey>,
    generation: u64,
    /// EncryptStream: the active DEK whose byte count grows with every frame sealed.
    active: Option<Arc<ActiveDek>>,
    /// Plaintext bytes sealed or opened so far.
    bytes: u64,
}

impl std::fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamKey")
            .field("tenant", &self.tenant)
            .field("dek_id", &self.dek_id)
            .field("generation", &self.generation)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl StreamKey {
    fn secret(&self) -> &SecretKey {
        &self.key.key
    }
}

impl DataPath {
    /// The active DEK of (tenant, scope) for an EncryptStream: one message counted against its
    /// rotation limits now, its bytes as the frames are sealed. A stream does not change DEK
    /// midway (the DEK id is in the header), so a long one may take its DEK past
    /// `rotation.max_bytes`; the next request then rotates it (docs/streaming.md).
    pub(in crate::keyring) async fn stream_encrypt_key(
        &self,
        tenant: &TenantId,
        scope: &Scope,
    ) -> Result<StreamKey, ServiceError> {
        let (active, generation) = self.reserve_active(tenant, scope, 0, &mut false).await?;
        Ok(StreamKey {
            tenant: tenant.clone(),
            dek_id: active.id,
            key: Arc::clone(&active.key),
            generation,
            active: Some(active),
            bytes: 0,
        })
    }

    /// The DEK `id` of `tenant` for a DecryptStream.
    pub(in crate::keyring) async fn stream_decrypt_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
    ) -> Result<StreamKey, ServiceError> {
        let generation = self.admit(tenant)?;
        let key = self.fresh_dek(tenant, id, generation).await?;
        Ok(StreamKey {
            tenant: tenant.clone(),
            dek_id: *id,
            key,
            generation,
            active: None,
            bytes: 0,
        })
    }

    /// The check before each frame of `len` plaintext bytes (see the module documentation):
    /// the key is current, else loaded again; the tenant is open, else `KEY_REVOKED`.
    pub(in crate::keyring) async fn stream_frame(
        &self,
        key: &mut StreamKey,
        len: usize,
    ) -> Result<(), ServiceError> {
        let tenant = &key.tenant;
        for _ in 0..2 {
            let generation = self.admit(tenant)?;
            if generation == key.generation
                && key.key.shreds == self.revocation.gates().shreds(tenant)
                && key.key.expires_at > Instant::now()
            {
                let len = u64::try_from(len).map_err(internal)?;
                key.bytes += len;
                if let Some(active) = &key.active {
                    active.bytes.fetch_add(len, Ordering::Relaxed);
                    active.unflushed_bytes.fetch_add(len, Ordering::Relaxed);
                }
                return Ok(());
            }
            key.key = self.fresh_dek(tenant, &key.dek_id, generation).await?;
            key.generation = generation;
        }
        Err(ServiceError::Conflict(format!(
            "the key state of tenant {tenant} changed twice during one frame of the stream"
        )))
    }

    /// The DEK `id` from the cache or the store, loaded at `generation` after the tenant's last
    /// shred and within its deadline (a stale cache entry is dropped and loaded again).
    async fn fresh_dek(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        generation: u64,
    ) -> Result<Arc<LiveKey>, ServiceError> {
        let cache_key = (tenant.clone(), *id);
        for _ in 0..2 {
            let dek = match self.cache.deks.get(&cache_key).await {
                Some(dek) => dek,
                None => self.dek(tenant, id).await?,
            };
            if dek.generation == generation
                && dek.shreds == self.revocation.gates().shreds(tenant)
                && dek.expires_at > Instant::now()
            {
                return Ok(dek);
            }
            self.cache.deks.invalidate(&cache_key).await;
            self.admit(tenant)?;
        }
        Err(ServiceError::Conflict(format!(
            "the key state of tenant {tenant} changed, or its key expired, while a stream loaded it"
        )))
    }

    /// Counts a finished stream in the tenant's usage (one message and its bytes), or an error;
    /// a `KEY_REVOKED` end in the revocation denials.
    pub(in crate::keyring) fn stream_finished(
        &self,
        tenant: &TenantId,
        encrypt: bool,
        result: &Result<u64, ServiceError>,
    ) {
        self.count_if_revoked(tenant, result.as_ref().err());
        self.ledger.count_usage(tenant, |u| match result {
            Ok(bytes) if encrypt => {
                u.encrypts += 1;
                u.bytes_in += bytes;
            }
            Ok(bytes) => {
                u.decrypts += 1;
                u.bytes_out += bytes;
            }
            Err(_) => u.errors += 1,
        });
    }
}

/// An EncryptStream in progress: plaintext in, in any chunks; sealed frames out.
pub struct StreamEncryption {
    key: StreamKey,
    sealer: FrameSealer,
    /// At most one frame of plaintext not yet sealed (its capacity is fixed: never
    /// reallocated, so no copy of plaintext is left behind unzeroized).
    pending: Wiped,
}

impl std::fmt::Debug for StreamEncryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamEncryption")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl StreamEncryption {
    /// The DEK of the envelope.
    pub fn dek_id(&self) -> &KeyId {
        &self.key.dek_id
    }

    /// Plaintext bytes sealed so far.
    pub fn bytes(&self) -> u64 {
        self.key.bytes
    }
}

/// A DecryptStream in progress: envelope bytes in, in any chunks; authenticated plaintext
/// frames out.
pub struct StreamDecryption {
    tenant: TenantId,
    ctx: EncryptionContext,
    /// The header's bytes until it is complete.
    header: Vec<u8>,
    open: Option<Opening>,
}

struct Opening {
    key: StreamKey,
    opener: FrameOpener,
    splitter: FrameSplitter,
    /// The final frame's plaintext, held until the input ended with nothing after it.
    last: Option<Wiped>,
}

impl std::fmt::Debug for StreamDecryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecryption")
            .field("tenant", &self.tenant)
            .field("key", &self.open.as_ref().map(|o| &o.key))
            .finish_non_exhaustive()
    }
}

/// One authenticated plaintext frame, with the gate generation its key was checked at (pass
/// it to [`crate::keyring::Keyring::release`] right before the frame leaves).
#[derive(Debug)]
pub struct PlainFrame {
    pub plaintext: Wiped,
    pub last: bool,
    pub generation: u64,
}

impl StreamDecryption {
    /// Plaintext bytes opened so far.
    pub fn bytes(&self) -> u64 {
        self.open.as_ref().map_or(0, |o| o.key.bytes)
    }
}

impl DataPath {
    /// Starts an EncryptStream: the scope's active DEK, a fresh salt; returns the stream and
    /// the envelope's header.
    pub(in crate::keyring) async fn begin_stream_encryption(
        &self,
        tenant: &TenantId,
        scope: &Scope,
        ctx: &EncryptionContext,
        frame_size: u32,
    ) -> Result<(StreamEncryption, Vec<u8>), ServiceError> {
        let key = self.stream_encrypt_key(tenant, scope).await?;
        let (sealer, header) = FrameSealer::new(key.secret(), tenant, &key.dek_id, ctx, frame_size)
            .map_err(internal)?;
        let pending = Wiped::new(Vec::with_capacity(sealer.frame_size()));
        Ok((
            StreamEncryption {
                key,
                sealer,
                pending,
            },
            header,
        ))
    }

    /// Takes more plaintext; returns the frames it completed (every frame but the last is
    /// sealed as soon as a byte after it is known).
    pub(in crate::keyring) async fn stream_encrypt_push(
        &self,
        s: &mut StreamEncryption,
        mut data: &[u8],
    ) -> Result<Vec<Vec<u8>>, ServiceError> {
        let size = s.sealer.frame_size();
        let mut frames = Vec::new();
        while !data.is_empty() {
            if s.pending.len() == size {
                frames.push(self.seal_pending(s, false).await?);
            }
            if s.pending.is_empty() && data.len() > size {
                // A whole frame with more after it: sealed from the input, not copied.
                let (frame, rest) = data.split_at(size);
                frames.push(self.seal(s, frame, false).await?);
                data = rest;
                continue;
            }
            let take = (size - s.pending.len()).min(data.len());
            s.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(frames)
    }

    /// The input ended: seals what is pending as the final frame.
    pub(in crate::keyring) async fn stream_encrypt_finish(
        &self,
        s: &mut StreamEncryption,
    ) -> Result<Vec<u8>, ServiceError> {
        self.seal_pending(s, true).await
    }

    async fn seal_pending(
        &self,
        s: &mut StreamEncryption,
        last: bool,
    ) -> Result<Vec<u8>, ServiceError> {
        let pending = std::mem::replace(
            &mut s.pending,
            Wiped::new(Vec::with_capacity(s.sealer.frame_size())),
        );
        self.seal(s, &pending, last).await
    }

    async fn seal(
        &self,
        s: &mut StreamEncryption,
        plaintext: &[u8],
        last: bool,
    ) -> Result<Vec<u8>, ServiceError> {
        self.stream_frame(&mut s.key, plaintext.len()).await?;
        let mut out = Vec::with_capacity(framed::FRAME_OVERHEAD + plaintext.len());
        s.sealer
            .seal_frame(plaintext, last, &mut out)
            .map_err(internal)?;
        Ok(out)
    }

    /// Starts a DecryptStream of `tenant`'s data bound to `ctx` (nothing is looked up before
    /// the header arrived).
    pub(in crate::keyring) fn begin_stream_decryption(
        &self,
        tenant: &TenantId,
        ctx: EncryptionContext,
    ) -> StreamDecryption {
        StreamDecryption {
            tenant: tenant.clone(),
            ctx,
            header: Vec::new(),
            open: None,
        }
    }

    /// Takes more envelope bytes; returns the plaintext frames they completed, authenticated
    /// (the final frame is held back until [`DataPath::stream_decrypt_finish`]), and the error
    /// that stopped the stream, if any: the frames opened before it are authentic and are
    /// returned with it, so the caller sends them before the error.
    pub(in crate::keyring) async fn stream_decrypt_push(
        &self,
        s: &mut StreamDecryption,
        data: &[u8],
    ) -> (Vec<PlainFrame>, Option<ServiceError>) {
        let mut frames = Vec::new();
        let error = self.open_frames(s, data, &mut frames).await.err();
        (frames, error)
    }

    async fn open_frames(
        &self,
        s: &mut StreamDecryption,
        data: &[u8],
        frames: &mut Vec<PlainFrame>,
    ) -> Result<(), ServiceError> {
        let open = match &mut s.open {
            Some(open) => {
                open.splitter.push(data);
                open
            }
            None => {
                s.header.extend_from_slice(data);
                let Some(header) = framed::parse_framed_header(&s.header).map_err(framed_error)?
                else {
                    return Ok(());
                };
                let rest = s.header.split_off(header.encoded_len());
                let mut open = self.open_stream(&s.tenant, &header, &s.ctx).await?;
                open.splitter.push(&rest);
                s.header = Vec::new();
                s.open.insert(open)
            }
        };
        while let Some(frame) = open.splitter.next_frame().map_err(framed_error)? {
            if open.last.is_some() {
                return Err(framed_error(EnvelopeError::Malformed(
                    "bytes after the final frame",
                )));
            }
            self.stream_frame(&mut open.key, 0).await?;
            let (plaintext, last) = open.opener.open_frame(frame).map_err(framed_error)?;
            open.key.bytes += plaintext.len() as u64;
            if last {
                open.last = Some(plaintext);
            } else {
                frames.push(PlainFrame {
                    plaintext,
                    last: false,
                    generation: open.key.generation,
                });
            }
        }
        Ok(())
    }

    /// The input ended: the final frame, if it opened and nothing followed it.
    pub(in crate::keyring) fn stream_decrypt_finish(
        &self,
        s: &mut StreamDecryption,
    ) -> Result<PlainFrame, ServiceError> {
        let Some(open) = &mut s.open else {
            return Err(framed_error(EnvelopeError::Malformed(
                "truncated: the stream ended inside the envelope header",
            )));
        };
        framed::finish(&open.opener, &open.splitter).map_err(framed_error)?;
        let plaintext = open.last.take().ok_or_else(|| {
            framed_error(EnvelopeError::Malformed(
                "truncated: the message ended before its final frame",
            ))
        })?;
        Ok(PlainFrame {
            plaintext,
            last: true,
            generation: open.key.generation,
        })
    }

    async fn open_stream(
        &self,
        tenant: &TenantId,
        header: &FramedHeader,
        ctx: &EncryptionContext,
    ) -> Result<Opening, ServiceError> {
        if header.tenant() != tenant {
            return Err(ServiceError::TenantMismatch);
        }
        let key = self.stream_decrypt_key(tenant, header.dek_id()).await?;
        let opener = FrameOpener::new(header, key.secret(), ctx).map_err(framed_error)?;
        Ok(Opening {
            key,
            opener,
            splitter: FrameSplitter::new(header),
            last: None,
        })
    }
}

/// A framed envelope's error as the unary calls report theirs (`MALFORMED_ENVELOPE`,
/// `UNSUPPORTED_ENVELOPE`, `DECRYPT_FAILED`).
fn framed_error(e: EnvelopeError) -> ServiceError {
    classify_parse_error(e)
}
