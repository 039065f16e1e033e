//! Scenario 1 of `keyward-bench suite`, the cipher floor, in process: Keyward's envelope seal +
//! parse + open (a derivation per message, commitment) against two AES-256-GCM baselines:
//! one-shot (key setup + seal into a new buffer, key setup + open into a new buffer, as a
//! caller of `aead::seal`/`open` pays) and in place (a key expanded once, seal and open in one
//! reused buffer, no allocation: the physical limit of AES-GCM on this machine).

use std::time::{Duration, Instant};

use keyward_envelope::aead::AeadKey;
use keyward_envelope::{EncryptionContext, KeyId, Sealer, SecretKey, TenantId, aead, parse};

use super::cell;

pub(super) struct CipherRow {
    pub(super) size: usize,
    pub(super) raw_mbps: f64,
    /// Seal + open in place, key expanded once, no allocation.
    pub(super) in_place_mbps: f64,
    pub(super) envelope_mbps: f64,
}

/// Runs `f` repeatedly for about `budget`; returns MB/s of `bytes` per call.
fn throughput(
    bytes: usize,
    budget: Duration,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < budget {
        f()?;
        calls += 1;
    }
    Ok(calls as f64 * bytes as f64 / start.elapsed().as_secs_f64() / 1e6)
}

pub(super) fn cipher_floor() -> anyhow::Result<Vec<CipherRow>> {
    let key = SecretKey::generate()?;
    let tenant = TenantId::try_from("bench")?;
    let dek_id = KeyId::generate()?;
    let ctx = EncryptionContext::empty();
    let nonce = [7u8; 12];
    let aad = [1u8; 64];
    let expanded = AeadKey::new(&key)?;
    let mut rows = Vec::new();
    for size in [64, 1024, 16 * 1024, 1 << 20] {
        let plaintext = vec![0x5a; size];
        let budget = cell() * 3 / 10;
        // Interleave the two, twice, and keep the better of each (noise only slows).
        let mut raw = 0f64;
        let mut in_place = 0f64;
        let mut env = 0f64;
        // The in-place cell's buffer: plaintext, then the tag. (A fixed nonce is harmless in
        // a benchmark that throws the ciphertext away; the service never reuses one.)
        let mut buf = plaintext.clone();
        buf.extend_from_slice(&[0u8; 16]);
        for _ in 0..2 {
            in_place = in_place.max(throughput(size, budget, || {
                let tag = expanded.seal_in_place_separate_tag(&nonce, &aad, &mut buf[..size])?;
                buf[size..].copy_from_slice(&tag);
                let opened = expanded.open_in_place(&nonce, &aad, &mut buf)?;
                anyhow::ensure!(opened.len() == size);
                Ok(())
            })?);
            raw = raw.max(throughput(size, budget, || {
                let sealed = aead::seal(&key, &nonce, &aad, &plaintext)?;
                let opened = aead::open(&key, &nonce, &aad, &sealed)?;
                anyhow::ensure!(opened.len() == size);
                Ok(())
            })?);
            env = env.max(throughput(size, budget, || {
                let sealed = Sealer::new(&key, &tenant, &dek_id).seal(&ctx, &plaintext)?;
                let opened = parse(&sealed)?.open(&key, &ctx)?;
                anyhow::ensure!(opened.len() == size);
                Ok(())
            })?);
        }
        rows.push(CipherRow {
            size,
            raw_mbps: raw,
            in_place_mbps: in_place,
            envelope_mbps: env,
        });
    }
    Ok(rows)
}
