//! The byte layout of a key wrapped by this provider, and the local half of the construction.
//!
//! Key Vault's `wrapKey` algorithms (RSA-OAEP-256, A256KW) take no additional authenticated
//! data, so the vault cannot bind a wrapped key to Keyward's [`WrapContext`]. The binding is
//! done locally, under a key only the vault can release:
//!
//! 1. a fresh 256-bit **intermediate key** `K` is drawn from the system CSPRNG for every wrap;
//! 2. the vault wraps `K` (`wrapKey`, RSA-OAEP-256 for RSA keys, A256KW for Managed HSM AES
//!    keys);
//! 3. the tenant key is sealed locally with AES-256-GCM under `K`, a random 96-bit nonce, and
//!    `AAD = "keyward:azure-key-vault:v1" || header || WrapContext::aad()`, where `header` is every
//!    byte of the layout before the nonce (so the algorithm, key version and vault-wrapped `K`
//!    are authenticated too);
//! 4. `K` is zeroized.
//!
//! Unwrapping asks the vault to `unwrapKey` `K` (so a disabled key, a removed role assignment or
//! a deleted key stops it), then opens the seal; another tenant, tenant key id or purpose fails
//! the GCM tag check. `K` is used for exactly one seal.
//!
//! ```text
//! offset      len  field
//! 0           1    layout version = 0x01
//! 1           1    vault algorithm: 0x01 RSA-OAEP-256, 0x02 A256KW
//! 2           1    v = length of the key version (32)
//! 3           v    key version used by wrapKey (ASCII hex, from the response's kid)
//! 3+v         2    n = length of the vault-wrapped K, big-endian
//!                  (RSA-OAEP-256: the modulus size, 256/384/512; A256KW: 40)
//! 5+v         n    K as wrapped by the vault (the wrapKey result)
//! 5+v+n       12   AES-256-GCM nonce (random)
//! 17+v+n      32   the tenant key, encrypted under K
//! 49+v+n      16   GCM tag
//! ```
//!
//! With a 2048-bit RSA key: 1+1+1+32+2+256+12+32+16 = 353 bytes. Any other length, version,
//! algorithm or size is rejected as `InvalidCiphertext` before the vault is called.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use keyward_envelope::SecretKey;
use keyward_kms::WrapContext;
use zeroize::Zeroizing;

/// The only layout version.
pub(crate) const VERSION: u8 = 0x01;
/// Domain separation of the local seal's AAD.
const AAD_LABEL: &[u8] = b"keyward:azure-key-vault:v1";
const KEY_LEN: usize = keyward_envelope::KEY_LEN;
const TAG_LEN: usize = 16;

/// The vault algorithm that wrapped the intermediate key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VaultAlg {
    RsaOaep256,
    A256Kw,
}

impl VaultAlg {
    pub(crate) fn code(self) -> u8 {
        match self {
            VaultAlg::RsaOaep256 => 0x01,
            VaultAlg::A256Kw => 0x02,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<Self> {
        match c {
            0x01 => Some(VaultAlg::RsaOaep256),
            0x02 => Some(VaultAlg::A256Kw),
            _ => None,
        }
    }

    /// Whether `n` is a possible length of a vault-wrapped 32-byte key.
    pub(crate) fn valid_wrapped_len(self, n: usize) -> bool {
        match self {
            VaultAlg::RsaOaep256 => matches!(n, 256 | 384 | 512),
            VaultAlg::A256Kw => n == KEY_LEN + 8,
        }
    }
}

/// A parsed wrapped key; borrows the input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Parsed<'a> {
    pub(crate) alg: VaultAlg,
    pub(crate) key_version: &'a str,
    pub(crate) vault_wrapped: &'a [u8],
    pub(crate) header: &'a [u8],
    pub(crate) nonce: [u8; NONCE_LEN],
    pub(crate) sealed: &'a [u8],
}

/// Why bytes are not a wrapped key of this provider (no secret in it).
pub(crate) fn describe_layout_error(reason: &str, len: usize) -> String {
    format!("the wrapped key ({len} bytes) is not an Azure Key Vault wrapped key: {reason}")
}

/// Splits `bytes` into its fields, checking every length.
pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed<'_>, &'static str> {
    let (&version, rest) = bytes.split_first().ok_or("it is empty")?;
    if version != VERSION {
        return Err("unknown layout version");
    }
    let (&alg, rest) = rest.split_first().ok_or("it is truncated")?;
    let alg = VaultAlg::from_code(alg).ok_or("unknown vault algorithm")?;
    let (&v, rest) = rest.split_first().ok_or("it is truncated")?;
    let v = usize::from(v);
    if rest.len() < v + 2 {
        return Err("it is truncated");
    }
    let (key_version, rest) = rest.split_at(v);
    let key_version = std::str::from_utf8(key_version)
        .ok()
        .filter(|s| s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or("the key version is not 32 hexadecimal digits")?;
    let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
    let rest = &rest[2..];
    if !alg.valid_wrapped_len(n) {
        return Err("the vault-wrapped key has an impossible length for its algorithm");
    }
    if rest.len() != n + NONCE_LEN + KEY_LEN + TAG_LEN {
        return Err("its length does not match its header");
    }
    let (vault_wrapped, rest) = rest.split_at(n);
    let header_len = bytes.len() - rest.len();
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&rest[..NONCE_LEN]);
    Ok(Parsed {
        alg,
        key_version,
        vault_wrapped,
        header: &bytes[..header_len],
        nonce,
        sealed: &rest[NONCE_LEN..],
    })
}

pub(crate) fn header(alg: VaultAlg, key_version: &str, vault_wrapped: &[u8]) -> Option<Vec<u8>> {
    let v = u8::try_from(key_version.len()).ok()?;
    let n = u16::try_from(vault_wrapped.len()).ok()?;
    let mut out = Vec::with_capacity(5 + key_version.len() + vault_wrapped.len());
    out.push(VERSION);
    out.push(alg.code());
    out.push(v);
    out.extend_from_slice(key_version.as_bytes());
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(vault_wrapped);
    Some(out)
}

fn aad(header: &[u8], ctx: &WrapContext) -> Vec<u8> {
    let ctx = ctx.aad();
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + header.len() + ctx.len());
    aad.extend_from_slice(AAD_LABEL);
    aad.extend_from_slice(header);
    aad.extend_from_slice(&ctx);
    aad
}

fn gcm_key(k: &[u8; KEY_LEN]) -> Result<LessSafeKey, &'static str> {
    UnboundKey::new(&AES_256_GCM, k)
        .map(LessSafeKey::new)
        .map_err(|_| "AES-256-GCM rejected the intermediate key")
}

/// Lays out a wrapped key: seals `key` under the intermediate key `k` bound to `ctx`.
/// `None` only when the vault returned an impossible key version or wrapped-key length.
pub(crate) fn seal(
    alg: VaultAlg,
    key_version: &str,
    vault_wrapped: &[u8],
    k: &[u8; KEY_LEN],
    nonce: [u8; NONCE_LEN],
    key: &SecretKey,
    ctx: &WrapContext,
) -> Result<Vec<u8>, &'static str> {
    if key_version.len() != 32 || !key_version.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("the vault reported a key version that is not 32 hexadecimal digits");
    }
    if !alg.valid_wrapped_len(vault_wrapped.len()) {
        return Err("the vault returned a wrapped key of an impossible length");
    }
    let mut out = header(alg, key_version, vault_wrapped).ok_or("header too long")?;
    let aad = aad(&out, ctx);
    let mut in_out = Zeroizing::new(key.expose_secret().to_vec());
    let tag = gcm_key(k)?
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_slice()),
            &mut in_out,
        )
        .map_err(|_| "AES-256-GCM seal failed")?;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&in_out);
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Opens the local seal of `parsed` with the intermediate key `k` under `ctx`.
/// `Err` for a wrong context, a tampered byte, or another intermediate key.
pub(crate) fn open(
    parsed: &Parsed<'_>,
    k: &[u8; KEY_LEN],
    ctx: &WrapContext,
) -> Result<SecretKey, ()> {
    let aad = aad(parsed.header, ctx);
    let mut in_out = Zeroizing::new(parsed.sealed.to_vec());
    let key = gcm_key(k).map_err(drop)?;
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(parsed.nonce),
            Aad::from(aad.as_slice()),
            &mut in_out,
        )
        .map_err(drop)?;
    SecretKey::try_from_slice(plain).map_err(drop)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;
    use keyward_envelope::{KeyId, TenantId};
    use keyward_kms::Purpose;

    const V: &str = "0123456789abcdef0123456789abcdef";

    fn ctx(t: &str) -> WrapContext {
        WrapContext::new(
            &TenantId::try_from(t).unwrap(),
            &KeyId::from_bytes([1; 16]),
            Purpose::TenantKey,
        )
    }

    #[test]
    fn byte_layout_and_round_trip() {
        let key = SecretKey::generate().unwrap();
        let k = [7u8; 32];
        let vault_wrapped = vec![0xaa; 256];
        let w = seal(
            VaultAlg::RsaOaep256,
            V,
            &vault_wrapped,
            &k,
            [9; 12],
            &key,
            &ctx("acme"),
        )
        .unwrap();
        assert_eq!(w.len(), 353);
        assert_eq!(&w[..3], &[0x01, 0x01, 32]);
        assert_eq!(&w[3..35], V.as_bytes());
        assert_eq!(&w[35..37], &[0x01, 0x00]);
        assert_eq!(&w[37..293], &vault_wrapped[..]);
        assert_eq!(&w[293..305], &[9; 12]);
        let p = parse(&w).unwrap();
        assert_eq!(
            (p.alg, p.key_version, p.vault_wrapped),
            (VaultAlg::RsaOaep256, V, &vault_wrapped[..])
        );
        assert_eq!(
            open(&p, &k, &ctx("acme")).unwrap().expose_secret(),
            key.expose_secret()
        );
        assert!(open(&p, &k, &ctx("globex")).is_err());
        assert!(open(&p, &[8u8; 32], &ctx("acme")).is_err());

        let kw = seal(
            VaultAlg::A256Kw,
            V,
            &[1; 40],
            &k,
            [0; 12],
            &key,
            &ctx("acme"),
        )
        .unwrap();
        assert_eq!(kw.len(), 1 + 1 + 1 + 32 + 2 + 40 + 12 + 32 + 16);
        assert_eq!(kw[1], 0x02);
    }

    #[test]
    fn header_bytes_are_authenticated() {
        let key = SecretKey::generate().unwrap();
        let k = [7u8; 32];
        let w = seal(
            VaultAlg::RsaOaep256,
            V,
            &[0xaa; 256],
            &k,
            [9; 12],
            &key,
            &ctx("acme"),
        )
        .unwrap();
        // A changed key version (still 32 hex digits) parses, but the seal no longer opens.
        let mut other = w.clone();
        other[3] = b'f';
        assert!(open(&parse(&other).unwrap(), &k, &ctx("acme")).is_err());
    }

    #[test]
    fn rejects_malformed_layouts() {
        let key = SecretKey::generate().unwrap();
        let w = seal(
            VaultAlg::A256Kw,
            V,
            &[1; 40],
            &[7; 32],
            [0; 12],
            &key,
            &ctx("acme"),
        )
        .unwrap();
        assert_eq!(parse(&[]).unwrap_err(), "it is empty");
        let mut bad = w.clone();
        bad[0] = 2;
        assert_eq!(parse(&bad).unwrap_err(), "unknown layout version");
        let mut bad = w.clone();
        bad[1] = 9;
        assert_eq!(parse(&bad).unwrap_err(), "unknown vault algorithm");
        assert_eq!(
            parse(&w[..w.len() - 1]).unwrap_err(),
            "its length does not match its header"
        );
        let mut long = w.clone();
        long.push(0);
        assert!(parse(&long).is_err());
        let mut bad = w.clone();
        bad[3] = b'z';
        assert!(parse(&bad).unwrap_err().contains("hexadecimal"));
        assert!(
            seal(
                VaultAlg::A256Kw,
                V,
                &[1; 41],
                &[7; 32],
                [0; 12],
                &key,
                &ctx("a")
            )
            .is_err()
        );
        assert!(
            seal(
                VaultAlg::RsaOaep256,
                "v1",
                &[1; 256],
                &[7; 32],
                [0; 12],
                &key,
                &ctx("a")
            )
            .is_err()
        );
    }
}
