//! Signed checkpoints: Ed25519 signatures over the chain head (`docs/audit-format.md` §4).

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::canonical;
use crate::chain_head::ChainHead;
use crate::error::AuditError;
use crate::fields::{decode_hash, expect_keys, get_i64, get_str, get_u64};

/// Domain-separation prefix of the checkpoint signature input.
pub const CHECKPOINT_DOMAIN: &[u8] = b"keyward-audit-checkpoint-v1\n";

/// Prefix of a public key's text form.
pub const PUBLIC_KEY_TEXT_PREFIX: &str = "keyward-audit-ed25519:";

/// An Ed25519 public key that verifies checkpoints.
///
/// Text form: `keyward-audit-ed25519:` followed by the 32 key bytes in standard base64 with
/// padding (44 characters). Its [`key_id`](PublicKey::key_id) names it in checkpoints.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey {
    /// The raw 32-byte Ed25519 public key (RFC 8032).
    pub bytes: [u8; 32],
}

impl PublicKey {
    /// The key's identifier: the first 16 hex characters (64 bits) of SHA-256 of the key bytes.
    pub fn key_id(&self) -> String {
        let d = digest::digest(&digest::SHA256, &self.bytes);
        let mut id = hex::encode(d.as_ref());
        id.truncate(16);
        id
    }

    /// `keyward-audit-ed25519:<base64>`.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_KEY_TEXT_PREFIX}{}", BASE64.encode(self.bytes))
    }

    /// Parses the text form (surrounding whitespace, such as a file's final newline, is ignored).
    pub fn from_text(text: &str) -> Result<Self, AuditError> {
        let text = text.trim();
        let b64 = text.strip_prefix(PUBLIC_KEY_TEXT_PREFIX).ok_or_else(|| {
            AuditError::InvalidPublicKey(format!("must start with {PUBLIC_KEY_TEXT_PREFIX:?}"))
        })?;
        let bytes = BASE64
            .decode(b64)
            .map_err(|e| AuditError::InvalidPublicKey(format!("bad base64: {e}")))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            AuditError::InvalidPublicKey(format!("an Ed25519 key is 32 bytes, got {}", b.len()))
        })?;
        Ok(PublicKey { bytes })
    }

    /// Whether `signature` is this key's Ed25519 signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.bytes)
            .verify(message, signature)
            .is_ok()
    }

    /// Whether `checkpoint` names this key and carries its valid signature.
    pub fn verify_checkpoint(&self, checkpoint: &Checkpoint) -> bool {
        checkpoint.key_id == self.key_id()
            && checkpoint
                .signed_bytes()
                .is_ok_and(|m| self.verify(&m, &checkpoint.signature))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_text())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl FromStr for PublicKey {
    type Err = AuditError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PublicKey::from_text(s)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_text())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // Strict: the text form must be exactly what `to_text` produces.
        let key = PublicKey::from_text(&s).map_err(serde::de::Error::custom)?;
        if key.to_text() != s {
            return Err(serde::de::Error::custom("public key text is not canonical"));
        }
        Ok(key)
    }
}

/// The deployment's checkpoint-signing key (Ed25519).
///
/// The private key lives inside aws-lc (`EVP_PKEY`), which cleanses it when freed; the PKCS#8
/// export is returned in a [`Zeroizing`] buffer. No `Debug` or `Clone`.
#[allow(
    missing_debug_implementations,
    reason = "holds private key material, which must never be formatted"
)]
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// Generates a new key from the system CSPRNG.
    pub fn generate() -> Result<Self, AuditError> {
        let pair = Ed25519KeyPair::generate()
            .map_err(|_| AuditError::SigningKey("Ed25519 key generation failed".into()))?;
        Ok(SigningKey { pair })
    }

    /// Loads an unencrypted PKCS#8 (v1 or v2) Ed25519 private key, for example one made by
    /// `openssl genpkey -algorithm ED25519 -outform DER`.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, AuditError> {
        let pair = Ed25519KeyPair::from_pkcs8(der)
            .map_err(|e| AuditError::SigningKey(format!("PKCS#8 rejected: {e}")))?;
        Ok(SigningKey { pair })
    }

    /// The key as a PKCS#8 v2 DER document (private and public key), to store in the
    /// deployment's secret store.
    pub fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, AuditError> {
        let doc = self
            .pair
            .to_pkcs8()
            .map_err(|_| AuditError::SigningKey("PKCS#8 export failed".into()))?;
        Ok(Zeroizing::new(doc.as_ref().to_vec()))
    }

    /// The public half, to publish to auditors.
    pub fn public_key(&self) -> PublicKey {
        let mut bytes = [0u8; 32];
        let raw = self.pair.public_key().as_ref();
        if raw.len() == bytes.len() {
            bytes.copy_from_slice(raw);
        }
        PublicKey { bytes }
    }

    /// Signs a checkpoint over `head` at `time_ms`.
    pub fn sign_checkpoint(
        &self,
        head: &ChainHead,
        time_ms: i64,
    ) -> Result<Checkpoint, AuditError> {
        let mut checkpoint = Checkpoint {
            seq: head.seq,
            head_hash: head.hash,
            time_ms,
            key_id: self.public_key().key_id(),
            signature: [0u8; 64],
        };
        let message = checkpoint.signed_bytes()?;
        let sig = self
            .pair
            .try_sign(&message)
            .map_err(|_| AuditError::SigningKey("Ed25519 signing failed".into()))?;
        let sig: [u8; 64] = sig
            .as_ref()
            .try_into()
            .map_err(|_| AuditError::SigningKey("Ed25519 signature is not 64 bytes".into()))?;
        checkpoint.signature = sig;
        Ok(checkpoint)
    }
}

/// A signed statement "the chain's record `seq` has hash `head_hash`", made at `time_ms` by the
/// key `key_id`. Because every record hashes its predecessor, it vouches for every record up to
/// and including `seq`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The sequence number of the last record covered (0: the empty chain).
    pub seq: u64,
    /// That record's hash (all zero for seq 0).
    pub head_hash: [u8; 32],
    /// When the checkpoint was signed (Unix milliseconds).
    pub time_ms: i64,
    /// [`PublicKey::key_id`] of the signing key.
    pub key_id: String,
    /// Ed25519 signature over [`Checkpoint::signed_bytes`].
    pub signature: [u8; 64],
}

impl Checkpoint {
    /// The chain head this checkpoint vouches for.
    pub fn head(&self) -> ChainHead {
        ChainHead {
            seq: self.seq,
            hash: self.head_hash,
        }
    }

    /// The signature input: `"keyward-audit-checkpoint-v1\n"` followed by the canonical JSON
    /// of `{"head_hash","key_id","seq","time_ms"}`.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, AuditError> {
        let mut body = Map::new();
        body.insert(
            "head_hash".into(),
            Value::String(hex::encode(self.head_hash)),
        );
        body.insert("key_id".into(), Value::String(self.key_id.clone()));
        body.insert("seq".into(), Value::from(self.seq));
        body.insert("time_ms".into(), Value::from(self.time_ms));
        let mut out = CHECKPOINT_DOMAIN.to_vec();
        canonical::write_value(&Value::Object(body), &mut out)?;
        Ok(out)
    }

    /// The export line (and stored form): canonical JSON of
    /// `{"head_hash","key_id","seq","signature","time_ms","type":"checkpoint"}`, no newline.
    pub fn to_canonical_json(&self) -> Result<String, AuditError> {
        let mut m = Map::new();
        m.insert(
            "head_hash".into(),
            Value::String(hex::encode(self.head_hash)),
        );
        m.insert("key_id".into(), Value::String(self.key_id.clone()));
        m.insert("seq".into(), Value::from(self.seq));
        m.insert(
            "signature".into(),
            Value::String(hex::encode(self.signature)),
        );
        m.insert("time_ms".into(), Value::from(self.time_ms));
        m.insert("type".into(), Value::String("checkpoint".into()));
        let bytes = canonical::to_vec(&Value::Object(m))?;
        String::from_utf8(bytes).map_err(|e| AuditError::Encoding(e.to_string()))
    }

    /// Parses the form written by [`Checkpoint::to_canonical_json`], strictly (it must be
    /// canonical). Does not verify the signature.
    pub fn from_canonical_json(text: &str) -> Result<Self, AuditError> {
        let value = canonical::parse_strict(text)?;
        Self::from_value(&value)
    }

    pub(crate) fn from_value(value: &Value) -> Result<Self, AuditError> {
        let obj = value
            .as_object()
            .ok_or_else(|| AuditError::Malformed("a checkpoint must be a JSON object".into()))?;
        expect_keys(
            obj,
            &["head_hash", "key_id", "seq", "signature", "time_ms", "type"],
            "checkpoint",
        )?;
        if obj.get("type").and_then(Value::as_str) != Some("checkpoint") {
            return Err(AuditError::Malformed("type must be \"checkpoint\"".into()));
        }
        let key_id = get_str(obj, "key_id")?;
        if key_id.len() != 16
            || !key_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(AuditError::Malformed(
                "key_id must be 16 lowercase hex characters".into(),
            ));
        }
        let sig_hex = get_str(obj, "signature")?;
        let mut signature = [0u8; 64];
        if sig_hex.len() != 128 || sig_hex.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(AuditError::Malformed(
                "signature must be 128 lowercase hex characters".into(),
            ));
        }
        hex::decode_to_slice(sig_hex, &mut signature)
            .map_err(|e| AuditError::Malformed(format!("signature: {e}")))?;
        Ok(Checkpoint {
            seq: get_u64(obj, "seq")?,
            head_hash: decode_hash(get_str(obj, "head_hash")?, "head_hash")?,
            time_ms: get_i64(obj, "time_ms")?,
            key_id: key_id.to_owned(),
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn sign_verify_roundtrip_and_pkcs8() {
        let key = SigningKey::generate().unwrap();
        let pk = key.public_key();
        let head = ChainHead {
            seq: 3,
            hash: [9; 32],
        };
        let cp = key.sign_checkpoint(&head, 1000).unwrap();
        assert!(pk.verify_checkpoint(&cp));
        let again = SigningKey::from_pkcs8(&key.to_pkcs8().unwrap()).unwrap();
        assert_eq!(again.public_key(), pk);

        let mut bad = cp.clone();
        bad.time_ms += 1;
        assert!(!pk.verify_checkpoint(&bad));
        let other = SigningKey::generate().unwrap().public_key();
        assert!(!other.verify_checkpoint(&cp));

        let line = cp.to_canonical_json().unwrap();
        assert_eq!(Checkpoint::from_canonical_json(&line).unwrap(), cp);
        assert!(Checkpoint::from_canonical_json(&line.replace("\"seq\":3", "\"seq\":03")).is_err());
    }

    #[test]
    fn public_key_text() {
        let pk = SigningKey::generate().unwrap().public_key();
        let text = pk.to_text();
        assert_eq!(text.len(), PUBLIC_KEY_TEXT_PREFIX.len() + 44);
        assert_eq!(PublicKey::from_text(&format!("{text}\n")).unwrap(), pk);
        assert!(PublicKey::from_text("ed25519:AAAA").is_err());
        assert!(PublicKey::from_text("keyward-audit-ed25519:AAAA").is_err());
        assert_eq!(pk.key_id().len(), 16);
    }
}
