//! Envelope format version 2: the *framed* envelope, for messages of any size (up to
//! [`MAX_MESSAGE_BYTES`]) sealed and opened in constant memory.
//!
//! The normative specification is `docs/envelope-format.md` §10; this module implements it.
//!
//! ```text
//! header (90 + T bytes)
//! 0      2   magic "KW"
//! 2      1   version = 0x02
//! 3      2   suite id = 0x0002
//! 5      1   tenant id length T
//! 6      T   tenant id
//! 6+T    16  DEK id
//! 22+T   32  message salt
//! 54+T   32  key commitment
//! 86+T   4   frame size F (u32 BE), 1 ..= 2^20
//! frames, each:
//! 0      4   frame word (u32 BE): bit 31 = final, bits 0..31 = plaintext length L
//! 4      L   ciphertext
//! 4+L    16  AES-GCM tag
//! ```
//!
//! ```text
//! OKM         = HMAC-SHA-512(DEK, "KEYWARD-V2-FRAMEKEYS" || suite id || salt || 0x01)
//! message key = OKM[0..32], commitment = OKM[32..64]
//! nonce(i)    = 0x00000000 || i (u64 BE)
//! AAD(i)      = header || canonical context || i (u64 BE) || frame word (u32 BE)
//! ```
//!
//! A non-final frame holds exactly F plaintext bytes, the final frame 0 ..= F. The frame's
//! sequence number and its word (final flag and length) are authenticated, so reordering,
//! duplicating or dropping frames, truncating the message at a frame boundary (no final
//! frame) or inside a frame, and appending after the final frame all fail.
//!
//! Sans-I/O: [`FrameSealer`] seals frame by frame, [`parse_framed_header`] and
//! [`FrameSplitter`] cut an incoming byte stream into the header and frames, and
//! [`FrameOpener`] authenticates and decrypts each frame. [`seal_framed`] / [`open_framed`]
//! do a whole message in memory (tests, vectors, small inputs).
//!
//! ```
//! use keyward_envelope::{EncryptionContext, KeyId, SecretKey, TenantId, framed};
//!
//! # fn main() -> Result<(), keyward_envelope::EnvelopeError> {
//! let (dek, dek_id, tenant) = (SecretKey::generate()?, KeyId::generate()?, "acme".parse::<TenantId>()?);
//! let ctx = EncryptionContext::default();
//! let (mut sealer, mut envelope) = framed::FrameSealer::new(&dek, &tenant, &dek_id, &ctx, 4)?;
//! sealer.seal_frame(b"hell", false, &mut envelope)?;
//! sealer.seal_frame(b"o", true, &mut envelope)?;
//! assert_eq!(&framed::open_framed(&envelope, &dek, &ctx)?[..], b"hello");
//! # Ok(())
//! # }
//! ```

use crate::Wiped;
use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::aead::{AeadKey, NONCE_LEN, TAG_LEN};
use crate::context::EncryptionContext;
use crate::envelope::{
    COMMITMENT_LEN, HEADER_FIXED_LEN, Reader, SALT_LEN, Suite, build_aad, expand_keys,
    read_header_fields, read_magic_and_version, write_header_fields,
};
use crate::error::{CryptoError, EnvelopeError};
use crate::key::{KeyId, SecretKey};
use crate::tenant::TenantId;

/// The version byte of a framed envelope.
pub const FRAMED_VERSION: u8 = 2;
/// Header length without the tenant id: the version 1 header (86) and the frame size (4).
pub const FRAMED_HEADER_FIXED_LEN: usize = HEADER_FIXED_LEN + 4;
/// Length of a frame's word (final flag and plaintext length).
pub const FRAME_WORD_LEN: usize = 4;
/// Bytes a frame adds to its plaintext: the word and the tag.
pub const FRAME_OVERHEAD: usize = FRAME_WORD_LEN + TAG_LEN;
/// The largest frame size the format allows (1 MiB): a reader holds one frame at a time, so
/// this bounds its memory whatever the header says.
pub const MAX_FRAME_SIZE: u32 = 1 << 20;
/// The frame size writers use unless told otherwise (64 KiB).
pub const DEFAULT_FRAME_SIZE: u32 = 64 * 1024;
/// At most 2^32 frames in one message (sequence numbers 0 ..= 2^32 - 1).
pub const MAX_FRAMES: u64 = 1 << 32;
/// At most 2^40 bytes (1 TiB) of plaintext in one message: 2^36 AES blocks under one message
/// key keeps AES-GCM's bound on an attacker's advantage near σ²/2^128 = 2^-56
/// (docs/envelope-format.md §10.5).
pub const MAX_MESSAGE_BYTES: u64 = 1 << 40;
/// HKDF-Expand `info` label of the framed format's message key and commitment (followed by the
/// suite id and the salt). Differs from suite `0x0002`'s, so a framed message and a single one
/// never share a key.
pub const FRAMED_KEYS_LABEL: &[u8] = b"KEYWARD-V2-FRAMEKEYS";

const FINAL_FLAG: u32 = 1 << 31;

/// The version byte of `bytes` if they start like a Keyward envelope (magic `KW`), so a caller
/// can route version 1 to [`crate::parse`] and version 2 to this module.
pub fn envelope_version(bytes: &[u8]) -> Option<u8> {
    match bytes {
        [b'K', b'W', version, ..] => Some(*version),
        _ => None,
    }
}

/// A parsed framed-envelope header. Nothing in it is authenticated until a frame has opened.
#[derive(Clone, PartialEq, Eq)]
pub struct FramedHeader {
    suite: Suite,
    tenant: TenantId,
    dek_id: KeyId,
    salt: [u8; SALT_LEN],
    commitment: [u8; COMMITMENT_LEN],
    frame_size: u32,
    bytes: Vec<u8>,
}

impl fmt::Debug for FramedHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FramedHeader")
            .field("suite", &self.suite)
            .field("tenant", &self.tenant)
            .field("dek_id", &self.dek_id)
            .field("frame_size", &self.frame_size)
            .finish_non_exhaustive()
    }
}

impl FramedHeader {
    /// Algorithm suite (always `0x0002` today).
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The tenant named by the header; check it against the request before fetching the DEK.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The DEK to fetch.
    pub fn dek_id(&self) -> &KeyId {
        &self.dek_id
    }

    /// Plaintext bytes of every non-final frame.
    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }

    /// The header's bytes as encoded (the first part of every frame's AAD).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// `90 + tenant id length`.
    pub fn encoded_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Parses the framed header at the start of `input`. `Ok(None)`: `input` is a valid prefix of
/// a header but too short (feed more bytes). Errors are as [`crate::parse`]'s, in the same
/// order, then the frame size ([`EnvelopeError::Malformed`] if 0 or over [`MAX_FRAME_SIZE`]).
pub fn parse_framed_header(input: &[u8]) -> Result<Option<FramedHeader>, EnvelopeError> {
    match parse_header_complete(input) {
        Ok(header) => Ok(Some(header)),
        // Truncated: a longer input may complete it (the only kind of error a prefix of a
        // valid header produces).
        Err(EnvelopeError::Malformed(m)) if m.starts_with("truncated") => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse_header_complete(input: &[u8]) -> Result<FramedHeader, EnvelopeError> {
    let mut r = Reader { rest: input };
    let version = read_magic_and_version(&mut r)?;
    if version != FRAMED_VERSION {
        return Err(EnvelopeError::UnsupportedVersion(version));
    }
    // Only suite 0x0002 is defined for version 2; any other is refused as soon as it is read,
    // as version 1's parser does (§10.6), so a streaming reader need not wait for the rest.
    let fields = read_header_fields(&mut r, &[Suite::Aes256GcmHkdfExpandSha512Committing])?;
    let frame_size = u32::from_be_bytes(r.take_array::<4>("truncated in the frame size")?);
    check_frame_size(frame_size)?;
    let len = input.len() - r.rest.len();
    Ok(FramedHeader {
        suite: fields.suite,
        tenant: fields.tenant,
        dek_id: fields.dek_id,
        salt: fields.salt,
        commitment: fields.commitment,
        frame_size,
        bytes: input[..len].to_vec(),
    })
}

fn check_frame_size(frame_size: u32) -> Result<(), EnvelopeError> {
    if frame_size == 0 || frame_size > MAX_FRAME_SIZE {
        return Err(EnvelopeError::Malformed(
            "frame size must be between 1 and 1048576 bytes",
        ));
    }
    Ok(())
}

/// The per-frame state shared by sealing and opening: the expanded message key, the AAD prefix
/// (header and context, then room for the sequence number and word), the next sequence number
/// and the plaintext bytes so far.
struct FrameState {
    key: AeadKey,
    aad: Vec<u8>,
    prefix_len: usize,
    frame_size: u32,
    seq: u64,
    total: u64,
    finished: bool,
}

impl FrameState {
    fn new(key: AeadKey, header: &[u8], ctx: &EncryptionContext, frame_size: u32) -> Self {
        let mut aad = build_aad(header, ctx);
        let prefix_len = aad.len();
        aad.reserve(12);
        FrameState {
            key,
            aad,
            prefix_len,
            frame_size,
            seq: 0,
            total: 0,
            finished: false,
        }
    }

    /// Checks the next frame's word against the rules (§10.3) and the limits, and sets the
    /// nonce and AAD for it.
    fn next(&mut self, word: u32) -> Result<[u8; NONCE_LEN], EnvelopeError> {
        if self.finished {
            return Err(EnvelopeError::Malformed("bytes after the final frame"));
        }
        let (last, len) = split_word(word);
        if len > self.frame_size || (!last && len != self.frame_size) {
            return Err(EnvelopeError::Malformed(
                "frame length does not match the frame size (a non-final frame holds exactly the frame size, the final one at most)",
            ));
        }
        if self.seq >= MAX_FRAMES {
            return Err(EnvelopeError::Malformed("more than 2^32 frames"));
        }
        let total = self.total + u64::from(len);
        if total > MAX_MESSAGE_BYTES {
            return Err(EnvelopeError::Malformed("message longer than 2^40 bytes"));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce[4..].copy_from_slice(&self.seq.to_be_bytes());
        self.aad.truncate(self.prefix_len);
        self.aad.extend_from_slice(&self.seq.to_be_bytes());
        self.aad.extend_from_slice(&word.to_be_bytes());
        Ok(nonce)
    }

    fn advance(&mut self, word: u32) {
        let (last, len) = split_word(word);
        self.seq += 1;
        self.total += u64::from(len);
        self.finished = last;
    }
}

impl fmt::Debug for FrameState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameState")
            .field("frame_size", &self.frame_size)
            .field("frames", &self.seq)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

fn split_word(word: u32) -> (bool, u32) {
    (word & FINAL_FLAG != 0, word & !FINAL_FLAG)
}

fn frame_word(last: bool, len: usize) -> Result<u32, EnvelopeError> {
    let len = u32::try_from(len)
        .ok()
        .filter(|l| l & FINAL_FLAG == 0)
        .ok_or(EnvelopeError::Malformed("frame too long"))?;
    Ok(if last { len | FINAL_FLAG } else { len })
}

/// Seals one framed message, frame by frame. Each frame is sealed as soon as its plaintext is
/// known; the caller says which one is final.
#[derive(Debug)]
pub struct FrameSealer {
    state: FrameState,
}

impl FrameSealer {
    /// Starts a message under `dek` (named `dek_id`, of `tenant`), bound to `ctx`, with
    /// `frame_size` plaintext bytes per frame (1 ..= [`MAX_FRAME_SIZE`]) and a fresh random
    /// salt. Returns the sealer and the header bytes, which come first in the envelope.
    pub fn new(
        dek: &SecretKey,
        tenant: &TenantId,
        dek_id: &KeyId,
        ctx: &EncryptionContext,
        frame_size: u32,
    ) -> Result<(FrameSealer, Vec<u8>), EnvelopeError> {
        let mut salt = [0u8; SALT_LEN];
        aws_lc_rs::rand::fill(&mut salt).map_err(|_| CryptoError::Rng)?;
        Self::with_salt(dek, tenant, dek_id, ctx, frame_size, &salt)
    }

    /// [`FrameSealer::new`] with a given salt, for deterministic test vectors only: the same
    /// (DEK, salt) for two messages reuses nonces. **Production code must never call this.**
    #[doc(hidden)]
    pub fn fixed_salt_for_test_vectors(
        dek: &SecretKey,
        tenant: &TenantId,
        dek_id: &KeyId,
        ctx: &EncryptionContext,
        frame_size: u32,
        salt: &[u8; SALT_LEN],
    ) -> Result<(FrameSealer, Vec<u8>), EnvelopeError> {
        Self::with_salt(dek, tenant, dek_id, ctx, frame_size, salt)
    }

    fn with_salt(
        dek: &SecretKey,
        tenant: &TenantId,
        dek_id: &KeyId,
        ctx: &EncryptionContext,
        frame_size: u32,
        salt: &[u8; SALT_LEN],
    ) -> Result<(FrameSealer, Vec<u8>), EnvelopeError> {
        check_frame_size(frame_size)?;
        let suite = Suite::Aes256GcmHkdfExpandSha512Committing;
        let keys = expand_keys(dek, FRAMED_KEYS_LABEL, suite, salt)?;
        let mut header = Vec::with_capacity(FRAMED_HEADER_FIXED_LEN + tenant.as_str().len());
        write_header_fields(
            &mut header,
            FRAMED_VERSION,
            suite,
            tenant,
            dek_id,
            salt,
            &keys.commitment,
        )?;
        header.extend_from_slice(&frame_size.to_be_bytes());
        let key = AeadKey::new(&keys.message_key)?;
        let state = FrameState::new(key, &header, ctx, frame_size);
        Ok((FrameSealer { state }, header))
    }

    /// Plaintext bytes of every non-final frame.
    pub fn frame_size(&self) -> usize {
        self.state.frame_size as usize
    }

    /// Whether the final frame was sealed (nothing may follow it).
    pub fn is_finished(&self) -> bool {
        self.state.finished
    }

    /// Seals `plaintext` as the next frame and appends it to `out`: exactly
    /// [`FrameSealer::frame_size`] bytes unless `last`, at most that if `last`. After the final
    /// frame every call fails.
    pub fn seal_frame(
        &mut self,
        plaintext: &[u8],
        last: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), EnvelopeError> {
        let word = frame_word(last, plaintext.len())?;
        let nonce = self.state.next(word)?;
        out.reserve(FRAME_OVERHEAD + plaintext.len());
        let start = out.len();
        out.extend_from_slice(&word.to_be_bytes());
        out.extend_from_slice(plaintext);
        let body = &mut out[start + FRAME_WORD_LEN..];
        match self
            .state
            .key
            .seal_in_place_separate_tag(&nonce, &self.state.aad, body)
        {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                self.state.advance(word);
                Ok(())
            }
            Err(e) => {
                // The buffer may still hold plaintext.
                out[start..].zeroize();
                out.truncate(start);
                Err(e.into())
            }
        }
    }
}

/// Authenticates and decrypts the frames of one framed message in order.
#[derive(Debug)]
pub struct FrameOpener {
    state: FrameState,
}

impl FrameOpener {
    /// Derives the message key of `header` from `dek` and checks the key commitment (in
    /// constant time) before any frame is touched: a wrong DEK fails here, as
    /// [`EnvelopeError::DecryptFailed`].
    pub fn new(
        header: &FramedHeader,
        dek: &SecretKey,
        ctx: &EncryptionContext,
    ) -> Result<FrameOpener, EnvelopeError> {
        let keys = expand_keys(dek, FRAMED_KEYS_LABEL, header.suite, &header.salt)?;
        if !bool::from(keys.commitment.ct_eq(&header.commitment)) {
            return Err(EnvelopeError::DecryptFailed);
        }
        let key = AeadKey::new(&keys.message_key)?;
        let state = FrameState::new(key, &header.bytes, ctx, header.frame_size);
        Ok(FrameOpener { state })
    }

    /// Whether the final frame has opened: the message is complete (a caller reading a
    /// stream must still check that nothing follows it, see [`FrameSplitter::is_empty`]).
    pub fn is_finished(&self) -> bool {
        self.state.finished
    }

    /// Plaintext bytes opened so far.
    pub fn plaintext_len(&self) -> u64 {
        self.state.total
    }

    /// Opens `frame` (as cut by [`FrameSplitter`]): returns its plaintext, decrypted in place,
    /// and whether it was the final frame. Every authentication failure is
    /// [`EnvelopeError::DecryptFailed`]; a frame after the final one, or whose length breaks
    /// the rules, is [`EnvelopeError::Malformed`].
    pub fn open_frame(&mut self, frame: Frame) -> Result<(Wiped, bool), EnvelopeError> {
        let Frame { word, mut body } = frame;
        let nonce = self.state.next(word)?;
        let len = self
            .state
            .key
            .open_in_place(&nonce, &self.state.aad, &mut body[..])
            .map_err(|_| EnvelopeError::DecryptFailed)?
            .len();
        body.truncate(len);
        self.state.advance(word);
        Ok((body, self.state.finished))
    }
}

/// One frame cut from the byte stream: its word and `ciphertext || tag`. Not yet authenticated.
pub struct Frame {
    word: u32,
    body: Wiped,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (last, len) = split_word(self.word);
        f.debug_struct("Frame")
            .field("final", &last)
            .field("len", &len)
            .finish()
    }
}

impl Frame {
    /// Whether the frame's word claims it is final (authenticated only once it opens).
    pub fn claims_final(&self) -> bool {
        split_word(self.word).0
    }
}

/// Cuts the bytes after the header into [`Frame`]s, whatever chunks they arrive in. Holds at
/// most one incomplete frame and the bytes of the last [`FrameSplitter::push`].
#[derive(Debug)]
pub struct FrameSplitter {
    frame_size: u32,
    buf: Vec<u8>,
    start: usize,
}

impl FrameSplitter {
    /// A splitter for frames of `header`'s frame size.
    pub fn new(header: &FramedHeader) -> Self {
        FrameSplitter {
            frame_size: header.frame_size,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// Appends bytes received.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not yet part of a returned frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether every byte pushed has been returned in a frame.
    pub fn is_empty(&self) -> bool {
        self.buffered() == 0
    }

    /// The next complete frame, if its bytes are all here. A word whose length exceeds the
    /// frame size fails at once (no waiting for bytes that would not fit).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, EnvelopeError> {
        let rest = &self.buf[self.start..];
        let Some(word) = rest.get(..FRAME_WORD_LEN) else {
            return Ok(None);
        };
        let word = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        let (_, len) = split_word(word);
        if len > self.frame_size {
            return Err(EnvelopeError::Malformed(
                "frame length exceeds the frame size",
            ));
        }
        let total = FRAME_OVERHEAD + len as usize;
        let Some(bytes) = rest.get(FRAME_WORD_LEN..total) else {
            return Ok(None);
        };
        let body = Wiped::new(bytes.to_vec());
        self.start += total;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(Frame { word, body }))
    }
}

/// Seals `plaintext` into one framed envelope in memory (for tests, vectors and small inputs;
/// a stream uses [`FrameSealer`]).
pub fn seal_framed(
    dek: &SecretKey,
    tenant: &TenantId,
    dek_id: &KeyId,
    ctx: &EncryptionContext,
    frame_size: u32,
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let (sealer, header) = FrameSealer::new(dek, tenant, dek_id, ctx, frame_size)?;
    seal_all(sealer, header, plaintext)
}

/// [`seal_framed`] with a fixed salt, for test vectors only (see
/// [`FrameSealer::fixed_salt_for_test_vectors`]).
#[doc(hidden)]
pub fn seal_framed_with_salt(
    dek: &SecretKey,
    tenant: &TenantId,
    dek_id: &KeyId,
    ctx: &EncryptionContext,
    frame_size: u32,
    plaintext: &[u8],
    salt: &[u8; SALT_LEN],
) -> Result<Vec<u8>, EnvelopeError> {
    let (sealer, header) =
        FrameSealer::fixed_salt_for_test_vectors(dek, tenant, dek_id, ctx, frame_size, salt)?;
    seal_all(sealer, header, plaintext)
}

fn seal_all(
    mut sealer: FrameSealer,
    mut out: Vec<u8>,
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let size = sealer.frame_size();
    let mut chunks = plaintext.chunks(size).peekable();
    if chunks.peek().is_none() {
        sealer.seal_frame(&[], true, &mut out)?;
    }
    while let Some(chunk) = chunks.next() {
        sealer.seal_frame(chunk, chunks.peek().is_none(), &mut out)?;
    }
    Ok(out)
}

/// Parses and opens a whole framed envelope in memory: the plaintext, or the first error
/// (structure as [`EnvelopeError::Malformed`], authentication as
/// [`EnvelopeError::DecryptFailed`], a message without its final frame as `Malformed`).
pub fn open_framed(
    envelope: &[u8],
    dek: &SecretKey,
    ctx: &EncryptionContext,
) -> Result<Wiped, EnvelopeError> {
    let header = parse_header_complete(envelope)?;
    let mut opener = FrameOpener::new(&header, dek, ctx)?;
    let mut splitter = FrameSplitter::new(&header);
    splitter.push(&envelope[header.encoded_len()..]);
    let mut plaintext = Wiped::new(Vec::new());
    while let Some(frame) = splitter.next_frame()? {
        let (part, _) = opener.open_frame(frame)?;
        plaintext.extend_from_slice(&part);
    }
    finish(&opener, &splitter)?;
    Ok(plaintext)
}

/// The end-of-input check of a framed message: the final frame opened and no byte follows it.
pub fn finish(opener: &FrameOpener, splitter: &FrameSplitter) -> Result<(), EnvelopeError> {
    if !splitter.is_empty() {
        return Err(if opener.is_finished() {
            EnvelopeError::Malformed("bytes after the final frame")
        } else {
            EnvelopeError::Malformed("truncated inside a frame")
        });
    }
    if !opener.is_finished() {
        return Err(EnvelopeError::Malformed(
            "truncated: the message ended before its final frame",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    fn setup() -> (SecretKey, TenantId, KeyId, EncryptionContext) {
        (
            SecretKey::from_bytes([7u8; 32]),
            "acme".parse().unwrap(),
            KeyId::from_bytes([1u8; 16]),
            EncryptionContext::try_from_map([("purpose".into(), "docs".into())].into()).unwrap(),
        )
    }

    fn seal(frame_size: u32, plaintext: &[u8]) -> Vec<u8> {
        let (dek, t, id, ctx) = setup();
        seal_framed_with_salt(&dek, &t, &id, &ctx, frame_size, plaintext, &[9u8; 32]).unwrap()
    }

    fn open(envelope: &[u8]) -> Result<Wiped, EnvelopeError> {
        let (dek, _, _, ctx) = setup();
        open_framed(envelope, &dek, &ctx)
    }

    /// Byte offsets of each frame (start, end) after the header.
    fn frames(envelope: &[u8]) -> Vec<(usize, usize)> {
        let header = parse_header_complete(envelope).unwrap();
        let mut at = header.encoded_len();
        let mut out = Vec::new();
        while at < envelope.len() {
            let len = u32::from_be_bytes(envelope[at..at + 4].try_into().unwrap()) & !FINAL_FLAG;
            let end = at + FRAME_OVERHEAD + len as usize;
            out.push((at, end));
            at = end;
        }
        out
    }

    #[test]
    fn layout_and_round_trip() {
        let env = seal(4, b"hello world");
        assert_eq!(env[2], FRAMED_VERSION);
        assert_eq!(envelope_version(&env), Some(2));
        let header = parse_header_complete(&env).unwrap();
        assert_eq!(header.encoded_len(), FRAMED_HEADER_FIXED_LEN + 4);
        assert_eq!(header.frame_size(), 4);
        // 11 bytes in frames of 4: 4, 4, 3 (final).
        assert_eq!(
            env.len(),
            header.encoded_len() + 3 * FRAME_OVERHEAD + 11,
            "{:?}",
            frames(&env)
        );
        assert_eq!(&open(&env).unwrap()[..], b"hello world");
        // Empty message: one empty final frame; a multiple of the frame size: no empty frame.
        assert_eq!(frames(&seal(4, b"")).len(), 1);
        assert_eq!(&open(&seal(4, b"")).unwrap()[..], b"");
        assert_eq!(frames(&seal(4, b"12345678")).len(), 2);
        assert_eq!(&open(&seal(4, b"12345678")).unwrap()[..], b"12345678");
    }

    #[test]
    fn every_reordering_duplication_drop_and_truncation_fails() {
        let env = seal(4, b"0123456789abcdef01");
        let fr = frames(&env);
        assert_eq!(fr.len(), 5);
        let h = fr[0].0;
        let piece = |i: usize| &env[fr[i].0..fr[i].1];
        let build = |order: &[usize]| {
            let mut v = env[..h].to_vec();
            for &i in order {
                v.extend_from_slice(piece(i));
            }
            v
        };
        // Swaps, duplicates and drops.
        for (i, j) in [(0, 1), (1, 2), (3, 4), (0, 4)] {
            let mut order: Vec<usize> = (0..fr.len()).collect();
            order.swap(i, j);
            assert!(open(&build(&order)).is_err(), "swap {i} {j}");
        }
        for i in 0..fr.len() {
            let mut dup: Vec<usize> = (0..fr.len()).collect();
            dup.insert(i, i);
            assert!(open(&build(&dup)).is_err(), "duplicate {i}");
            let drop: Vec<usize> = (0..fr.len()).filter(|&k| k != i).collect();
            assert!(open(&build(&drop)).is_err(), "drop {i}");
        }
        // Truncation at every byte (every boundary and inside every frame and the header).
        for cut in 0..env.len() {
            assert!(open(&env[..cut]).is_err(), "truncated at {cut}");
        }
        // Appending anything after the final frame, including a whole valid frame.
        let mut extended = env.clone();
        extended.push(0);
        assert!(open(&extended).is_err());
        let mut extended = env.clone();
        extended.extend_from_slice(piece(1));
        assert!(open(&extended).is_err());
        // Every bit of every byte.
        for i in 0..env.len() {
            for bit in 0..8 {
                let mut bad = env.clone();
                bad[i] ^= 1 << bit;
                assert!(open(&bad).is_err(), "flip byte {i} bit {bit}");
            }
        }
        assert_eq!(&open(&env).unwrap()[..], b"0123456789abcdef01");
    }

    #[test]
    fn wrong_key_or_context_fails_and_header_prefixes_need_more() {
        let env = seal(16, b"some text");
        let (_, _, _, ctx) = setup();
        let other = SecretKey::from_bytes([8u8; 32]);
        assert!(matches!(
            open_framed(&env, &other, &ctx),
            Err(EnvelopeError::DecryptFailed)
        ));
        let (dek, ..) = setup();
        assert!(matches!(
            open_framed(&env, &dek, &EncryptionContext::default()),
            Err(EnvelopeError::DecryptFailed)
        ));
        let header_len = parse_header_complete(&env).unwrap().encoded_len();
        for cut in 0..header_len {
            assert!(parse_framed_header(&env[..cut]).unwrap().is_none(), "{cut}");
        }
        assert!(parse_framed_header(&env[..header_len]).unwrap().is_some());
        // A version 1 envelope is not a framed one, and the reverse.
        let v1 = crate::Sealer::new(&dek, &"acme".parse().unwrap(), &KeyId::from_bytes([1; 16]))
            .seal(&ctx, b"x")
            .unwrap();
        assert!(matches!(
            parse_framed_header(&v1),
            Err(EnvelopeError::UnsupportedVersion(1))
        ));
        assert!(matches!(
            crate::parse(&env),
            Err(EnvelopeError::UnsupportedVersion(2))
        ));
    }

    #[test]
    fn a_suite_other_than_0x0002_is_refused_as_soon_as_it_is_read() {
        // Before the fix, suite 0x0001 (valid in version 1) was refused only after the whole
        // header had arrived: a streaming reader was told to wait for more bytes.
        for suite in [[0, 1], [0, 3], [0xff, 0xff]] {
            let prefix = [b'K', b'W', FRAMED_VERSION, suite[0], suite[1]];
            let id = u16::from_be_bytes(suite);
            assert!(
                matches!(parse_framed_header(&prefix), Err(EnvelopeError::UnsupportedSuite(s)) if s == id),
                "{suite:?}"
            );
        }
        let mut env = seal(4, b"abc");
        env[4] = 1;
        assert!(matches!(
            parse_framed_header(&env),
            Err(EnvelopeError::UnsupportedSuite(1))
        ));
        // Version 1 still reads both of its suites.
        let (dek, t, id, ctx) = setup();
        for suite in [Suite::Aes256GcmHkdfSha512Committing, Suite::SEAL] {
            let v1 = crate::Sealer::new(&dek, &t, &id)
                .suite(suite)
                .seal(&ctx, b"x")
                .unwrap();
            assert_eq!(
                &crate::parse(&v1).unwrap().open(&dek, &ctx).unwrap()[..],
                b"x"
            );
        }
    }

    #[test]
    fn bad_frame_sizes_are_refused() {
        let (dek, t, id, ctx) = setup();
        for size in [0, MAX_FRAME_SIZE + 1] {
            assert!(FrameSealer::new(&dek, &t, &id, &ctx, size).is_err());
        }
        let (mut sealer, mut out) = FrameSealer::new(&dek, &t, &id, &ctx, 4).unwrap();
        assert!(sealer.seal_frame(b"abc", false, &mut out).is_err());
        assert!(sealer.seal_frame(b"abcde", true, &mut out).is_err());
        sealer.seal_frame(b"abcd", true, &mut out).unwrap();
        assert!(sealer.is_finished());
        assert!(sealer.seal_frame(b"", true, &mut out).is_err());
        let mut env = seal(4, b"abc");
        let size_at = FRAMED_HEADER_FIXED_LEN + 4 - 4;
        env[size_at..size_at + 4].copy_from_slice(&(MAX_FRAME_SIZE + 1).to_be_bytes());
        assert!(matches!(
            parse_framed_header(&env),
            Err(EnvelopeError::Malformed(_))
        ));
    }
}
