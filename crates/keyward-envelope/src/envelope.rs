//! Envelope format v1: header, per-message key derivation, key commitment, seal, parse, open.
//!
//! The normative byte-by-byte specification is `docs/envelope-format.md`; this module is its
//! implementation and the comments cite it.
//!
//! ```text
//! offset      size  field
//! 0           2     magic "KW" (0x4B 0x57)
//! 2           1     format version = 0x01
//! 3           2     suite id, u16 big-endian: 0x0001 or 0x0002 (sealed)
//! 5           1     tenant id length T, 1..=64
//! 6           T     tenant id, [a-z0-9._-], first byte [a-z0-9]
//! 6+T         16    DEK id
//! 22+T        32    message salt (random per message)
//! 54+T        32    key commitment
//! 86+T        N     ciphertext (N = plaintext length)
//! 86+T+N      16    AES-GCM tag
//! ```
//!
//! Header = bytes `0 .. 86+T` (magic through commitment, inclusive).
//! AAD = header || [`EncryptionContext::canonical_bytes`].

use crate::Wiped;
use std::fmt;

use aws_lc_rs::hmac;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::aead::{AeadKey, NONCE_LEN, TAG_LEN};
use crate::context::EncryptionContext;
use crate::error::{CryptoError, EnvelopeError};
use crate::key::{KEY_ID_LEN, KEY_LEN, KeyId, SecretKey};
use crate::tenant::{TENANT_ID_MAX_LEN, TenantId, is_valid_tenant_id};

/// The two magic bytes that start every envelope: ASCII `"KW"`.
pub const MAGIC: [u8; 2] = *b"KW";
/// The envelope format version this crate writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Length of the per-message salt in bytes.
pub const SALT_LEN: usize = 32;
/// Length of the key commitment in bytes.
pub const COMMITMENT_LEN: usize = 32;
/// Header length without the tenant id: magic 2 + version 1 + suite 2 + tenant length 1 +
/// DEK id 16 + salt 32 + commitment 32 = 86.
pub const HEADER_FIXED_LEN: usize = 2 + 1 + 2 + 1 + KEY_ID_LEN + SALT_LEN + COMMITMENT_LEN;

/// HKDF-Expand `info` label for the per-message encryption key (followed by the suite id).
pub const DERIVE_KEY_LABEL: &[u8] = b"KEYWARD-V1-DERIVEKEY";
/// HKDF-Expand `info` label for the key commitment (followed by the suite id).
pub const COMMIT_KEY_LABEL: &[u8] = b"KEYWARD-V1-COMMITKEY";
/// Suite `0x0002`: HKDF-Expand `info` label for the message key and the commitment together
/// (followed by the suite id and the salt).
pub const MESSAGE_KEYS_LABEL: &[u8] = b"KEYWARD-V2-MSGKEYS";

/// The fixed GCM nonce. Safe because every message key encrypts exactly one message
/// (see [`Suite::Aes256GcmHkdfSha512Committing`]).
const ZERO_NONCE: [u8; NONCE_LEN] = [0u8; NONCE_LEN];

/// Algorithm suites. Each suite fixes the AEAD, the KDF and the commitment scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Suite {
    /// Suite `0x0001`: AES-256-GCM with a per-message key derived by HKDF-SHA-512 from the DEK
    /// and a random 256-bit salt, a 256-bit key commitment, and an all-zero 96-bit nonce.
    ///
    /// Modelled on the AWS Encryption SDK suite
    /// `AES_256_GCM_HKDF_SHA512_COMMIT_KEY` (0x0478).
    ///
    /// *Nonce safety*: each message has its own key, so the fixed nonce is never reused under
    /// one key unless two message keys collide, which requires two salts to collide (HKDF with
    /// the same DEK and the same salt). Over q messages under one DEK that probability is at
    /// most q²/2²⁵⁷: about 2⁻¹⁷⁷ at q = 2⁴⁰. By contrast, random 96-bit nonces under a single
    /// key reach q²/2⁹⁷ ≈ 2⁻³³ already at q = 2³², which is why NIST SP 800-38D caps them at 2³²
    /// invocations per key. 2⁴⁰ messages per DEK is therefore far inside the safe region; the
    /// DEK rotation limits exist for blast radius and crypto-shredding granularity, not for
    /// nonce safety.
    Aes256GcmHkdfSha512Committing,
    /// Suite `0x0002`: suite `0x0001` with a cheaper derivation of the same two values. The
    /// DEK, a uniformly random 256-bit key, is used directly as HKDF's PRK (RFC 5869 §3.3: the
    /// extract step may be skipped for such keys), and one HKDF-Expand of 64 bytes with the
    /// salt in `info` gives the message key (first half) and the commitment (second half):
    /// one HMAC-SHA-512, 4 SHA-512 compressions per message instead of 10. Same header, AEAD,
    /// nonce, AAD and commitment check; the nonce-safety argument is unchanged (the message
    /// key is a PRF output of the DEK on an input holding the fresh salt). Sealed by default
    /// since it exists; suite `0x0001` envelopes stay readable. docs/envelope-format.md §2b.
    Aes256GcmHkdfExpandSha512Committing,
}

impl Suite {
    /// The suite identifier written in the header (big-endian u16).
    pub fn id(self) -> u16 {
        match self {
            Suite::Aes256GcmHkdfSha512Committing => 0x0001,
            Suite::Aes256GcmHkdfExpandSha512Committing => 0x0002,
        }
    }

    /// The suite a [`Sealer`] writes unless told otherwise.
    pub const SEAL: Suite = Suite::Aes256GcmHkdfExpandSha512Committing;

    /// The suite with identifier `id`, if this build implements it.
    pub fn from_id(id: u16) -> Option<Suite> {
        match id {
            0x0001 => Some(Suite::Aes256GcmHkdfSha512Committing),
            0x0002 => Some(Suite::Aes256GcmHkdfExpandSha512Committing),
            _ => None,
        }
    }
}

/// A parsed envelope header (see the module documentation for the layout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    version: u8,
    suite: Suite,
    tenant: TenantId,
    dek_id: KeyId,
    salt: [u8; SALT_LEN],
    commitment: [u8; COMMITMENT_LEN],
}

impl Header {
    /// Format version (always [`FORMAT_VERSION`] for a successfully parsed header).
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Algorithm suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The tenant whose DEK encrypted the message. Not authenticated until
    /// [`Envelope::open`] succeeds; the caller must still check that it is the tenant the
    /// request is authorised for *before* fetching the DEK.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Identifier of the DEK to fetch. Not authenticated until [`Envelope::open`] succeeds.
    pub fn dek_id(&self) -> &KeyId {
        &self.dek_id
    }

    /// Per-message HKDF salt.
    pub fn salt(&self) -> &[u8; SALT_LEN] {
        &self.salt
    }

    /// Key commitment.
    pub fn commitment(&self) -> &[u8; COMMITMENT_LEN] {
        &self.commitment
    }

    /// Length of the encoded header in bytes (`86 + tenant id length`).
    pub fn encoded_len(&self) -> usize {
        HEADER_FIXED_LEN + self.tenant.as_str().len()
    }
}

/// A parsed, not yet authenticated, envelope borrowing the input bytes.
///
/// Parsing checks structure only; nothing in the header can be trusted until
/// [`Envelope::open`] has succeeded.
pub struct Envelope<'a> {
    header: Header,
    header_bytes: &'a [u8],
    /// `ciphertext || tag`, at least [`TAG_LEN`] bytes.
    body: &'a [u8],
}

impl fmt::Debug for Envelope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("header", &self.header)
            .field("ciphertext_len", &self.plaintext_len())
            .finish_non_exhaustive()
    }
}

/// Bounds-checked reader over the input; every read names the field for the error.
pub(crate) struct Reader<'a> {
    pub(crate) rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn take(
        &mut self,
        n: usize,
        truncated: &'static str,
    ) -> Result<&'a [u8], EnvelopeError> {
        let (head, tail) = self
            .rest
            .split_at_checked(n)
            .ok_or(EnvelopeError::Malformed(truncated))?;
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn take_array<const N: usize>(
        &mut self,
        truncated: &'static str,
    ) -> Result<[u8; N], EnvelopeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, truncated)?);
        Ok(out)
    }
}

/// Parses an envelope without decrypting it.
///
/// Fields are checked in order and the first failure is reported: truncation and bad magic as
/// [`EnvelopeError::Malformed`], then the version ([`EnvelopeError::UnsupportedVersion`]) and the
/// suite ([`EnvelopeError::UnsupportedSuite`]) as soon as they are read, because nothing after
/// them can be interpreted without knowing them; then the tenant id length and alphabet, the
/// fixed-size fields, and finally that the body holds at least the 16-byte GCM tag.
///
/// The ciphertext runs to the end of the input, so "trailing bytes" cannot exist structurally:
/// appended bytes become part of the ciphertext and make [`Envelope::open`] fail. The parser
/// allocates only the tenant id (at most 64 bytes); it never allocates based on a length field
/// beyond what the input holds.
pub fn parse(bytes: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    let mut r = Reader { rest: bytes };
    let version = read_magic_and_version(&mut r)?;
    if version != FORMAT_VERSION {
        return Err(EnvelopeError::UnsupportedVersion(version));
    }
    let fields = read_header_fields(&mut r, &VERSION_1_SUITES)?;
    let header_len = bytes.len() - r.rest.len();
    let (header_bytes, body) = bytes.split_at(header_len);
    if body.len() < TAG_LEN {
        return Err(EnvelopeError::Malformed(
            "truncated: body shorter than the 16-byte GCM tag",
        ));
    }
    Ok(Envelope {
        header: Header {
            version,
            suite: fields.suite,
            tenant: fields.tenant,
            dek_id: fields.dek_id,
            salt: fields.salt,
            commitment: fields.commitment,
        },
        header_bytes,
        body,
    })
}

/// The magic and the version byte (not checked: each format's parser checks its own).
pub(crate) fn read_magic_and_version(r: &mut Reader<'_>) -> Result<u8, EnvelopeError> {
    let magic = r.take(MAGIC.len(), "truncated in the magic")?;
    if magic != MAGIC {
        return Err(EnvelopeError::Malformed(
            "bad magic (not a Keyward envelope)",
        ));
    }
    let [version] = r.take_array::<1>("truncated before the version")?;
    Ok(version)
}

/// The header fields after the version, common to envelope versions 1 and 2.
pub(crate) struct HeaderFields {
    pub(crate) suite: Suite,
    pub(crate) tenant: TenantId,
    pub(crate) dek_id: KeyId,
    pub(crate) salt: [u8; SALT_LEN],
    pub(crate) commitment: [u8; COMMITMENT_LEN],
}

/// The suites of envelope format version 1.
const VERSION_1_SUITES: [Suite; 2] = [
    Suite::Aes256GcmHkdfSha512Committing,
    Suite::Aes256GcmHkdfExpandSha512Committing,
];

/// Reads suite id, tenant id, DEK id, salt and commitment, in that order (section 6 of the
/// spec: the first failure is reported). A suite not in `suites` (those of the envelope's
/// version) is refused as soon as it is read.
pub(crate) fn read_header_fields(
    r: &mut Reader<'_>,
    suites: &[Suite],
) -> Result<HeaderFields, EnvelopeError> {
    let suite_id = u16::from_be_bytes(r.take_array::<2>("truncated in the suite id")?);
    let suite = Suite::from_id(suite_id)
        .filter(|s| suites.contains(s))
        .ok_or(EnvelopeError::UnsupportedSuite(suite_id))?;
    let [tenant_len] = r.take_array::<1>("truncated before the tenant id length")?;
    let tenant_len = usize::from(tenant_len);
    if tenant_len == 0 {
        return Err(EnvelopeError::Malformed("tenant id length is zero"));
    }
    if tenant_len > TENANT_ID_MAX_LEN {
        return Err(EnvelopeError::Malformed("tenant id length exceeds 64"));
    }
    let tenant_bytes = r.take(tenant_len, "truncated in the tenant id")?;
    if !is_valid_tenant_id(tenant_bytes) {
        return Err(EnvelopeError::Malformed(
            "tenant id has bytes outside [a-z0-9._-] or does not start with [a-z0-9]",
        ));
    }
    let tenant = TenantId::from_validated_bytes(tenant_bytes)
        .ok_or(EnvelopeError::Malformed("tenant id is not valid"))?;
    let dek_id = KeyId::from_bytes(r.take_array::<KEY_ID_LEN>("truncated in the DEK id")?);
    let salt = r.take_array::<SALT_LEN>("truncated in the salt")?;
    let commitment = r.take_array::<COMMITMENT_LEN>("truncated in the commitment")?;
    Ok(HeaderFields {
        suite,
        tenant,
        dek_id,
        salt,
        commitment,
    })
}

/// Writes magic, `version`, suite id, tenant id (length-prefixed), DEK id, salt and
/// commitment: the header of version 1 and the start of version 2's.
pub(crate) fn write_header_fields(
    out: &mut Vec<u8>,
    version: u8,
    suite: Suite,
    tenant: &TenantId,
    dek_id: &KeyId,
    salt: &[u8; SALT_LEN],
    commitment: &[u8; COMMITMENT_LEN],
) -> Result<(), EnvelopeError> {
    let tenant_bytes = tenant.as_str().as_bytes();
    // TenantId guarantees 1..=64 bytes.
    let tenant_len = u8::try_from(tenant_bytes.len())
        .map_err(|_| EnvelopeError::InvalidTenantId("tenant id longer than 255 bytes".into()))?;
    out.extend_from_slice(&MAGIC);
    out.push(version);
    out.extend_from_slice(&suite.id().to_be_bytes());
    out.push(tenant_len);
    out.extend_from_slice(tenant_bytes);
    out.extend_from_slice(dek_id.as_bytes());
    out.extend_from_slice(salt);
    out.extend_from_slice(commitment);
    Ok(())
}

/// Why an open failed, before it is collapsed into [`EnvelopeError::DecryptFailed`].
/// Kept crate-internal so tests can check the order of checks without creating an oracle.
#[derive(Debug)]
pub(crate) enum OpenFailure {
    /// The DEK does not match the header's key commitment (checked before any AEAD work).
    Commitment,
    /// AES-GCM authentication failed (tampering or wrong context).
    Aead,
    /// A primitive failed for a reason unrelated to the input (KDF, key setup).
    Crypto(CryptoError),
}

impl<'a> Envelope<'a> {
    /// The parsed (unauthenticated) header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The exact header bytes as they appear in the input (the first part of the AAD).
    pub fn header_bytes(&self) -> &'a [u8] {
        self.header_bytes
    }

    /// Length of the plaintext this envelope would decrypt to.
    pub fn plaintext_len(&self) -> usize {
        self.body.len().saturating_sub(TAG_LEN)
    }

    /// Authenticates and decrypts the envelope with `dek` and the caller's context.
    ///
    /// Order of checks: derive the message key and commitment from `dek` and the salt; compare
    /// the commitment with the header's in constant time; only then run AES-GCM over the body
    /// with AAD = header bytes || `ctx.canonical_bytes()`. Every failure that depends on the
    /// input is reported as the single, coarse [`EnvelopeError::DecryptFailed`].
    pub fn open(&self, dek: &SecretKey, ctx: &EncryptionContext) -> Result<Wiped, EnvelopeError> {
        self.open_detailed(dek, ctx).map_err(|e| match e {
            OpenFailure::Commitment | OpenFailure::Aead => EnvelopeError::DecryptFailed,
            OpenFailure::Crypto(c) => EnvelopeError::Crypto(c),
        })
    }

    pub(crate) fn open_detailed(
        &self,
        dek: &SecretKey,
        ctx: &EncryptionContext,
    ) -> Result<Wiped, OpenFailure> {
        let keys = derive_message_keys(dek, self.header.suite, &self.header.salt)
            .map_err(OpenFailure::Crypto)?;
        if !bool::from(keys.commitment.ct_eq(&self.header.commitment)) {
            return Err(OpenFailure::Commitment);
        }
        let aead_key = AeadKey::new(&keys.message_key).map_err(OpenFailure::Crypto)?;
        let aad = build_aad(self.header_bytes, ctx);
        let mut buf = Wiped::new(self.body.to_vec());
        let len = aead_key
            .open_in_place(&ZERO_NONCE, &aad, &mut buf[..])
            .map_err(|_| OpenFailure::Aead)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// Seals v1 envelopes under one DEK: the only way to write one.
///
/// By default each message is sealed in suite [`Suite::SEAL`] with a fresh random 256-bit salt.
/// `dek_id` and `tenant` are written in the header so that [`parse`] can tell the reader which
/// key to fetch; both are authenticated (AAD). The encryption context is authenticated but not
/// stored.
///
/// ```
/// # use keyward_envelope::{EncryptionContext, KeyId, SecretKey, Sealer, Suite, TenantId};
/// # fn main() -> Result<(), keyward_envelope::EnvelopeError> {
/// # let (dek, dek_id, tenant) = (SecretKey::generate()?, KeyId::generate()?, "acme".parse::<TenantId>()?);
/// # let ctx = EncryptionContext::default();
/// let envelope = Sealer::new(&dek, &tenant, &dek_id).seal(&ctx, b"hello")?;
/// // During a rolling upgrade, keep writing the suite the oldest reader understands:
/// let older = Sealer::new(&dek, &tenant, &dek_id).suite(Suite::Aes256GcmHkdfSha512Committing).seal(&ctx, b"hi")?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy)]
pub struct Sealer<'a> {
    dek: &'a SecretKey,
    tenant: &'a TenantId,
    dek_id: &'a KeyId,
    suite: Suite,
    salt: Option<&'a [u8; SALT_LEN]>,
}

impl fmt::Debug for Sealer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("tenant", self.tenant)
            .field("dek_id", self.dek_id)
            .field("suite", &self.suite)
            .field("fixed_salt", &self.salt.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a> Sealer<'a> {
    /// Seals under `dek`, named `dek_id`, for `tenant`, in [`Suite::SEAL`] with fresh salts.
    pub fn new(dek: &'a SecretKey, tenant: &'a TenantId, dek_id: &'a KeyId) -> Self {
        Self {
            dek,
            tenant,
            dek_id,
            suite: Suite::SEAL,
            salt: None,
        }
    }

    /// Writes `suite` instead of [`Suite::SEAL`]: for a service that must keep writing an older
    /// suite until every reader understands the newer one (a rolling upgrade). Every suite this
    /// build implements is read by [`Envelope::open`] whatever is written.
    #[must_use]
    pub fn suite(mut self, suite: Suite) -> Self {
        self.suite = suite;
        self
    }

    /// Uses `salt` instead of a fresh random one, for deterministic test vectors only.
    ///
    /// **Production code must never call this.** The fixed all-zero GCM nonce is safe only
    /// because every salt is fresh and random: sealing two different messages with the same DEK
    /// and the same salt reuses a (key, nonce) pair and breaks both confidentiality and
    /// authenticity.
    #[doc(hidden)]
    #[must_use]
    pub fn fixed_salt_for_test_vectors(mut self, salt: &'a [u8; SALT_LEN]) -> Self {
        self.salt = Some(salt);
        self
    }

    /// Encrypts `plaintext` into one envelope, bound to `ctx`.
    pub fn seal(
        &self,
        ctx: &EncryptionContext,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, EnvelopeError> {
        let mut fresh = [0u8; SALT_LEN];
        let salt = match self.salt {
            Some(salt) => salt,
            None => {
                aws_lc_rs::rand::fill(&mut fresh).map_err(|_| CryptoError::Rng)?;
                &fresh
            }
        };
        seal_with(
            self.suite,
            self.dek,
            self.tenant,
            self.dek_id,
            ctx,
            plaintext,
            salt,
        )
    }
}

fn seal_with(
    suite: Suite,
    dek: &SecretKey,
    tenant: &TenantId,
    dek_id: &KeyId,
    ctx: &EncryptionContext,
    plaintext: &[u8],
    salt: &[u8; SALT_LEN],
) -> Result<Vec<u8>, EnvelopeError> {
    let keys = derive_message_keys(dek, suite, salt)?;
    let aead_key = AeadKey::new(&keys.message_key)?;

    let header_len = HEADER_FIXED_LEN + tenant.as_str().len();
    let mut out = Vec::with_capacity(header_len + plaintext.len() + TAG_LEN);
    write_header_fields(
        &mut out,
        FORMAT_VERSION,
        suite,
        tenant,
        dek_id,
        salt,
        &keys.commitment,
    )?;
    debug_assert_eq!(out.len(), header_len);

    let aad = build_aad(&out, ctx);
    out.extend_from_slice(plaintext);
    match aead_key.seal_in_place_separate_tag(&ZERO_NONCE, &aad, &mut out[header_len..]) {
        Ok(tag) => {
            out.extend_from_slice(&tag);
            Ok(out)
        }
        Err(e) => {
            // The buffer may still hold plaintext.
            out.zeroize();
            Err(e.into())
        }
    }
}

/// Total envelope length for a plaintext of `plaintext_len` bytes: `102 + T + N`.
pub fn sealed_len(tenant: &TenantId, plaintext_len: usize) -> usize {
    HEADER_FIXED_LEN + tenant.as_str().len() + plaintext_len + TAG_LEN
}

/// AAD = header bytes || canonical context bytes. Both parts are self-delimiting (the header
/// by its length byte and fixed sizes, the context by its count and length prefixes), so the
/// concatenation is unambiguous.
pub(crate) fn build_aad(header_bytes: &[u8], ctx: &EncryptionContext) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header_bytes.len() + ctx.encoded_len());
    aad.extend_from_slice(header_bytes);
    ctx.write_canonical(&mut aad);
    aad
}

pub(crate) struct MessageKeys {
    pub(crate) message_key: SecretKey,
    pub(crate) commitment: [u8; COMMITMENT_LEN],
}

/// Per-message key derivation (docs/envelope-format.md §2.1 and §2b.1).
pub(crate) fn derive_message_keys(
    dek: &SecretKey,
    suite: Suite,
    salt: &[u8; SALT_LEN],
) -> Result<MessageKeys, CryptoError> {
    match suite {
        Suite::Aes256GcmHkdfSha512Committing => derive_v1(dek, suite, salt),
        Suite::Aes256GcmHkdfExpandSha512Committing => derive_v2(dek, suite, salt),
    }
}

/// SHA-512 output length: one HKDF-Expand block.
pub(crate) const BLOCK: usize = 64;

/// Suite `0x0001`:
///
/// ```text
/// PRK         = HKDF-Extract-SHA-512(salt = message salt, IKM = DEK)
/// message key = HKDF-Expand-SHA-512(PRK, "KEYWARD-V1-DERIVEKEY" || suite id (u16 BE), 32)
/// commitment  = HKDF-Expand-SHA-512(PRK, "KEYWARD-V1-COMMITKEY" || suite id (u16 BE), 32)
/// ```
///
/// Both outputs are at most one SHA-512 block (64 bytes), so each HKDF-Expand is the single
/// HMAC `T(1) = HMAC(PRK, info || 0x01)` (RFC 5869 §2.3), truncated. They are computed here with
/// HMAC directly, so the PRK's HMAC key schedule is computed once and shared by both expansions:
/// 10 SHA-512 compressions per message instead of the 16 that `aws_lc_rs::hkdf` spends (it
/// re-runs the whole HKDF for each `fill`). The output is RFC 5869 HKDF exactly: the test
/// vectors in docs/envelope/vectors-v1.json and a property test against `aws_lc_rs::hkdf` pin
/// it. The PRK and the full expansion blocks live in zeroized buffers; AWS-LC cleanses its HMAC
/// contexts when they are dropped.
fn derive_v1(
    dek: &SecretKey,
    suite: Suite,
    salt: &[u8; SALT_LEN],
) -> Result<MessageKeys, CryptoError> {
    let suite_id = suite.id().to_be_bytes();

    let mut prk = Zeroizing::new([0u8; BLOCK]);
    hmac::sign_to_buffer(
        &hmac::Key::new(hmac::HMAC_SHA512, salt),
        dek.expose_secret(),
        prk.as_mut_slice(),
    )
    .map_err(|_| CryptoError::Kdf)?;
    let prk = hmac::Key::new(hmac::HMAC_SHA512, prk.as_slice());

    let expand = |label: &[u8], out: &mut [u8]| -> Result<(), CryptoError> {
        // info || 0x01, for labels of up to 32 bytes (both are 20).
        let mut input = [0u8; 32 + 2 + 1];
        let len = label.len() + suite_id.len() + 1;
        let input = input.get_mut(..len).ok_or(CryptoError::Kdf)?;
        input[..label.len()].copy_from_slice(label);
        input[label.len()..len - 1].copy_from_slice(&suite_id);
        input[len - 1] = 0x01;
        let mut block = Zeroizing::new([0u8; BLOCK]);
        hmac::sign_to_buffer(&prk, input, block.as_mut_slice()).map_err(|_| CryptoError::Kdf)?;
        out.copy_from_slice(block.get(..out.len()).ok_or(CryptoError::Kdf)?);
        Ok(())
    };

    let mut message_key = SecretKey::zeroed();
    expand(DERIVE_KEY_LABEL, message_key.bytes_mut())?;
    let mut commitment = [0u8; COMMITMENT_LEN];
    expand(COMMIT_KEY_LABEL, &mut commitment)?;

    Ok(MessageKeys {
        message_key,
        commitment,
    })
}

/// Suite `0x0002`:
///
/// ```text
/// OKM         = HKDF-Expand-SHA-512(PRK = DEK,
///                   info = "KEYWARD-V2-MSGKEYS" || suite id (u16 BE) || message salt, L = 64)
///             = HMAC-SHA-512(DEK, info || 0x01)
/// message key = OKM[0..32]
/// commitment  = OKM[32..64]
/// ```
fn derive_v2(
    dek: &SecretKey,
    suite: Suite,
    salt: &[u8; SALT_LEN],
) -> Result<MessageKeys, CryptoError> {
    expand_keys(dek, MESSAGE_KEYS_LABEL, suite, salt)
}

/// `HKDF-Expand-SHA-512(PRK = DEK, info = label || suite id || salt, L = 64)`, split into the
/// message key (first half) and the commitment (second half). One HMAC-SHA-512; `label` is at
/// most 32 bytes (suite `0x0002`'s and the framed format's labels).
pub(crate) fn expand_keys(
    dek: &SecretKey,
    label: &[u8],
    suite: Suite,
    salt: &[u8; SALT_LEN],
) -> Result<MessageKeys, CryptoError> {
    const MAX_LABEL_LEN: usize = 32;
    let mut input = [0u8; MAX_LABEL_LEN + 2 + SALT_LEN + 1];
    let len = label.len() + 2 + SALT_LEN + 1;
    let input = input.get_mut(..len).ok_or(CryptoError::Kdf)?;
    input[..label.len()].copy_from_slice(label);
    input[label.len()..label.len() + 2].copy_from_slice(&suite.id().to_be_bytes());
    input[label.len() + 2..len - 1].copy_from_slice(salt);
    input[len - 1] = 0x01;

    let mut okm = Zeroizing::new([0u8; BLOCK]);
    // HMAC-SHA-512 from the DEK's schedule, computed once per key (crate::schedule).
    dek.hmac_schedule().mac(input, &mut okm)?;
    let mut message_key = SecretKey::zeroed();
    message_key.bytes_mut().copy_from_slice(&okm[..KEY_LEN]);
    let mut commitment = [0u8; COMMITMENT_LEN];
    commitment.copy_from_slice(&okm[KEY_LEN..KEY_LEN + COMMITMENT_LEN]);
    Ok(MessageKeys {
        message_key,
        commitment,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn tenant(s: &str) -> TenantId {
        s.parse().unwrap()
    }

    fn ctx(entries: &[(&str, &str)]) -> EncryptionContext {
        EncryptionContext::try_from_map(
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        )
        .unwrap()
    }

    #[test]
    fn header_layout_matches_spec() {
        let dek = SecretKey::from_bytes([1u8; 32]);
        let id = KeyId::from_bytes([2u8; 16]);
        let salt = [3u8; 32];
        let t = tenant("acme");
        let env = Sealer::new(&dek, &t, &id)
            .fixed_salt_for_test_vectors(&salt)
            .seal(&EncryptionContext::empty(), b"hi")
            .unwrap();
        assert_eq!(env.len(), 102 + 4 + 2);
        assert_eq!(env.len(), sealed_len(&t, 2));
        assert_eq!(&env[0..2], b"KW");
        assert_eq!(env[2], 1);
        assert_eq!(&env[3..5], &[0x00, 0x02]);
        assert_eq!(env[5], 4);
        assert_eq!(&env[6..10], b"acme");
        assert_eq!(&env[10..26], &[2u8; 16]);
        assert_eq!(&env[26..58], &[3u8; 32]);
        let keys = derive_message_keys(&dek, Suite::SEAL, &salt).unwrap();
        assert_eq!(&env[58..90], &keys.commitment);

        let parsed = parse(&env).unwrap();
        let h = parsed.header();
        assert_eq!(h.version(), 1);
        assert_eq!(h.suite(), Suite::SEAL);
        assert_eq!(h.suite().id(), 2);
        assert_eq!(h.tenant(), &t);
        assert_eq!(h.dek_id(), &id);
        assert_eq!(h.salt(), &salt);
        assert_eq!(h.commitment(), &keys.commitment);
        assert_eq!(h.encoded_len(), 90);
        assert_eq!(parsed.header_bytes(), &env[..90]);
        assert_eq!(parsed.plaintext_len(), 2);
        let dbg = format!("{parsed:?}");
        assert!(
            dbg.contains("acme") && dbg.contains("ciphertext_len: 2"),
            "{dbg}"
        );
    }

    #[test]
    fn ciphertext_is_plain_aes_gcm_under_the_derived_key() {
        // Cross-check the construction against the raw AEAD layer: the body must be exactly
        // AES-256-GCM(message key, zero nonce, AAD = header || ctx) of the plaintext.
        let dek = SecretKey::from_bytes([9u8; 32]);
        let salt = [7u8; 32];
        let c = ctx(&[("purpose", "test")]);
        let env = Sealer::new(&dek, &tenant("t"), &KeyId::from_bytes([0u8; 16]))
            .fixed_salt_for_test_vectors(&salt)
            .seal(&c, b"payload")
            .unwrap();
        let keys = derive_message_keys(&dek, Suite::SEAL, &salt).unwrap();
        let header_len = HEADER_FIXED_LEN + 1;
        let mut aad = env[..header_len].to_vec();
        aad.extend_from_slice(&c.canonical_bytes());
        let body = crate::aead::seal(&keys.message_key, &[0u8; 12], &aad, b"payload").unwrap();
        assert_eq!(&env[header_len..], &body[..]);
    }

    #[test]
    fn derivation_labels_separate_key_and_commitment() {
        let dek = SecretKey::from_bytes([5u8; 32]);
        let k =
            derive_message_keys(&dek, Suite::Aes256GcmHkdfSha512Committing, &[0u8; 32]).unwrap();
        assert_ne!(k.message_key.expose_secret(), &k.commitment);
        let k2 =
            derive_message_keys(&dek, Suite::Aes256GcmHkdfSha512Committing, &[1u8; 32]).unwrap();
        assert_ne!(
            k.message_key.expose_secret(),
            k2.message_key.expose_secret()
        );
        assert_ne!(k.commitment, k2.commitment);
    }

    #[test]
    fn seal_uses_fresh_salt() {
        let dek = SecretKey::generate().unwrap();
        let t = tenant("acme");
        let id = KeyId::generate().unwrap();
        let c = EncryptionContext::empty();
        let a = Sealer::new(&dek, &t, &id).seal(&c, b"same").unwrap();
        let b = Sealer::new(&dek, &t, &id).seal(&c, b"same").unwrap();
        assert_ne!(a, b);
        assert_ne!(
            parse(&a).unwrap().header().salt(),
            parse(&b).unwrap().header().salt()
        );
    }

    #[test]
    fn tampered_commitment_fails_at_commitment_check() {
        let dek = SecretKey::generate().unwrap();
        let mut env = Sealer::new(&dek, &tenant("acme"), &KeyId::generate().unwrap())
            .seal(&EncryptionContext::empty(), b"x")
            .unwrap();
        env[HEADER_FIXED_LEN + 4 - 1] ^= 0x80; // last commitment byte
        let p = parse(&env).unwrap();
        assert!(matches!(
            p.open_detailed(&dek, &EncryptionContext::empty()),
            Err(OpenFailure::Commitment)
        ));
        assert!(matches!(
            p.open(&dek, &EncryptionContext::empty()),
            Err(EnvelopeError::DecryptFailed)
        ));
    }

    #[test]
    fn wrong_context_fails_at_aead() {
        let dek = SecretKey::generate().unwrap();
        let env = Sealer::new(&dek, &tenant("acme"), &KeyId::generate().unwrap())
            .seal(&ctx(&[("a", "1")]), b"x")
            .unwrap();
        let p = parse(&env).unwrap();
        assert!(matches!(
            p.open_detailed(&dek, &ctx(&[("a", "2")])),
            Err(OpenFailure::Aead)
        ));
        assert!(matches!(
            p.open(&dek, &EncryptionContext::empty()),
            Err(EnvelopeError::DecryptFailed)
        ));
        assert_eq!(&p.open(&dek, &ctx(&[("a", "1")])).unwrap()[..], b"x");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A wrong DEK is rejected by the key commitment, before any AES-GCM work is done:
        /// `open_detailed` reports `Commitment`, never `Aead`.
        #[test]
        fn wrong_dek_fails_at_commitment_before_aead(
            dek in any::<[u8; 32]>(),
            other in any::<[u8; 32]>(),
            salt in any::<[u8; 32]>(),
            plaintext in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            prop_assume!(dek != other);
            let dek = SecretKey::from_bytes(dek);
            let other = SecretKey::from_bytes(other);
            let env = Sealer::new(&dek, &tenant("acme"), &KeyId::from_bytes([0; 16])).fixed_salt_for_test_vectors(&salt).seal(&EncryptionContext::empty(), &plaintext).unwrap();
            let p = parse(&env).unwrap();
            prop_assert!(matches!(
                p.open_detailed(&other, &EncryptionContext::empty()),
                Err(OpenFailure::Commitment)
            ));
            prop_assert_eq!(&p.open(&dek, &EncryptionContext::empty()).unwrap()[..], &plaintext[..]);
        }

        /// The HMAC-based derivation is RFC 5869 HKDF-SHA-512 exactly: the same bytes as
        /// `aws_lc_rs::hkdf` (the implementation it replaced) for any DEK, salt and suite id.
        #[test]
        fn derivation_equals_aws_lc_hkdf(
            dek in any::<[u8; 32]>(),
            salt in any::<[u8; 32]>(),
        ) {
            let suite = Suite::Aes256GcmHkdfSha512Committing;
            let keys = derive_message_keys(&SecretKey::from_bytes(dek), suite, &salt).unwrap();
            let (key, commitment) = reference_hkdf(&dek, suite.id(), &salt);
            prop_assert_eq!(keys.message_key.expose_secret(), &key);
            prop_assert_eq!(keys.commitment, commitment);
        }
    }

    /// Suite 0x0002's derivation is HKDF-Expand with the DEK as PRK, as `aws_lc_rs::hkdf`
    /// computes it (an independent implementation of RFC 5869).
    #[test]
    fn suite_2_derivation_is_hkdf_expand_keyed_by_the_dek() {
        use aws_lc_rs::hkdf::{HKDF_SHA512, KeyType, Prk};
        struct Len64;
        impl KeyType for Len64 {
            fn len(&self) -> usize {
                64
            }
        }
        for (dek, salt) in [([0u8; 32], [0u8; 32]), ([0xa5; 32], [0x3c; 32])] {
            let suite = Suite::Aes256GcmHkdfExpandSha512Committing;
            let keys = derive_message_keys(&SecretKey::from_bytes(dek), suite, &salt).unwrap();
            let mut okm = [0u8; 64];
            Prk::new_less_safe(HKDF_SHA512, &dek)
                .expand(&[MESSAGE_KEYS_LABEL, &[0x00, 0x02], &salt], Len64)
                .unwrap()
                .fill(&mut okm)
                .unwrap();
            assert_eq!(keys.message_key.expose_secret(), &okm[..32]);
            assert_eq!(&keys.commitment, &okm[32..]);
        }
    }

    /// Envelopes sealed in suite 0x0001 (everything sealed before suite 0x0002 existed) open.
    #[test]
    fn suite_1_envelopes_still_open() {
        let dek = SecretKey::from_bytes([4u8; 32]);
        let c = ctx(&[("purpose", "old")]);
        let env = Sealer::new(&dek, &tenant("acme"), &KeyId::from_bytes([1; 16]))
            .suite(Suite::Aes256GcmHkdfSha512Committing)
            .fixed_salt_for_test_vectors(&[6u8; 32])
            .seal(&c, b"sealed last year")
            .unwrap();
        assert_eq!(&env[3..5], &[0x00, 0x01]);
        let p = parse(&env).unwrap();
        assert_eq!(p.header().suite(), Suite::Aes256GcmHkdfSha512Committing);
        assert_eq!(&p.open(&dek, &c).unwrap()[..], b"sealed last year");
    }

    /// The suite id is bound into both derivations: an envelope relabelled to the other suite
    /// fails at the commitment check, in either direction.
    #[test]
    fn relabelling_the_suite_fails_at_the_commitment() {
        let dek = SecretKey::from_bytes([8u8; 32]);
        let c = EncryptionContext::empty();
        for (from, to) in [(1u8, 2u8), (2, 1)] {
            let suite = Suite::from_id(u16::from(from)).unwrap();
            let mut env = Sealer::new(&dek, &tenant("acme"), &KeyId::from_bytes([1; 16]))
                .suite(suite)
                .fixed_salt_for_test_vectors(&[9u8; 32])
                .seal(&c, b"x")
                .unwrap();
            env[4] = to;
            let p = parse(&env).unwrap();
            assert_eq!(p.header().suite().id(), u16::from(to));
            assert!(matches!(
                p.open_detailed(&dek, &c),
                Err(OpenFailure::Commitment)
            ));
        }
    }

    /// The derivation as `aws_lc_rs::hkdf` computes it.
    fn reference_hkdf(dek: &[u8; 32], suite_id: u16, salt: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
        use aws_lc_rs::hkdf::{HKDF_SHA512, KeyType, Salt};
        struct Len32;
        impl KeyType for Len32 {
            fn len(&self) -> usize {
                32
            }
        }
        let prk = Salt::new(HKDF_SHA512, salt).extract(dek);
        let id = suite_id.to_be_bytes();
        let mut key = [0u8; 32];
        let mut commitment = [0u8; 32];
        prk.expand(&[DERIVE_KEY_LABEL, &id], Len32)
            .unwrap()
            .fill(&mut key)
            .unwrap();
        prk.expand(&[COMMIT_KEY_LABEL, &id], Len32)
            .unwrap()
            .fill(&mut commitment)
            .unwrap();
        (key, commitment)
    }
}
