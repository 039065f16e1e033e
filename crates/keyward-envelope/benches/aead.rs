//! AES-256-GCM seal+open throughput: aws-lc-rs (through `keyward_envelope::aead`) vs ring, in
//! the same process, interleaved, plus the full v1 envelope (HKDF + key schedule per message)
//! for comparison with the raw AEAD.
//!
//! ```text
//! cargo bench -p keyward-envelope --features compare-ring --bench aead
//! ```
//!
//! Method: for every size, ROUNDS rounds; in each round every variant runs for about
//! `TARGET` wall time (the order alternates between rounds so drift such as frequency scaling
//! or a noisy neighbour hits both libraries alike); the median round per variant is reported.
//! Throughput counts plaintext bytes of one seal plus one open (i.e. the bytes a caller
//! encrypts and later decrypts), so MB/s = size × iterations / seconds / 10⁶.
//! Results are in docs/adr/0001-aead-library.md.

#![allow(clippy::print_stdout, reason = "a bench reports on stdout")]
#![allow(clippy::unwrap_used, reason = "a bench with fixed inputs fails loudly")]

use std::hint::black_box;
use std::time::{Duration, Instant};

use keyward_envelope::{EncryptionContext, KeyId, SecretKey, TenantId, aead};
use ring::aead as ring_aead;

const SIZES: [usize; 4] = [64, 1024, 16 * 1024, 1024 * 1024];
const ROUNDS: usize = 7;
const TARGET: Duration = Duration::from_millis(150);

fn nonce_for(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// Runs `op` repeatedly for about TARGET; returns MB/s of `size`-byte operations.
fn measure(size: usize, mut op: impl FnMut(u64)) -> f64 {
    // Calibrate the batch so the clock is read rarely even for 64-byte messages.
    let mut counter = 0u64;
    let start = Instant::now();
    let mut iters = 0u64;
    let mut batch = 1u64;
    loop {
        for _ in 0..batch {
            op(counter);
            counter += 1;
        }
        iters += batch;
        let elapsed = start.elapsed();
        if elapsed >= TARGET {
            return (size as f64 * iters as f64) / elapsed.as_secs_f64() / 1e6;
        }
        if elapsed < TARGET / 10 {
            batch *= 2;
        }
    }
}

/// Runs `op` repeatedly for about TARGET; returns nanoseconds per call.
fn ns_per_call(mut op: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut iters = 0u64;
    while start.elapsed() < TARGET {
        for _ in 0..64 {
            op();
        }
        iters += 64;
    }
    start.elapsed().as_nanos() as f64 / iters as f64
}

/// Fixed per-message costs of the v1 envelope, to explain the small-message column:
/// the HKDF-SHA-512 derivation (extract + two expands, as in `derive_message_keys`) and the
/// AES-256-GCM key setup, each done once by seal and once by open.
fn fixed_costs(dek: &SecretKey, tenant: &TenantId, dek_id: &KeyId, ctx: &EncryptionContext) {
    use aws_lc_rs::hkdf::{HKDF_SHA512, KeyType, Salt};
    struct Len32;
    impl KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let salt = [9u8; 32];
    let (mut hkdf, mut setup, mut empty, mut wipe) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut mib = vec![0x5Au8; 1024 * 1024];
    for _ in 0..ROUNDS {
        hkdf.push(ns_per_call(|| {
            let prk = Salt::new(HKDF_SHA512, &salt).extract(dek.expose_secret());
            let mut k = [0u8; 32];
            let mut c = [0u8; 32];
            prk.expand(&[b"KEYWARD-V1-DERIVEKEY", &[0, 1]], Len32)
                .unwrap()
                .fill(&mut k)
                .unwrap();
            prk.expand(&[b"KEYWARD-V1-COMMITKEY", &[0, 1]], Len32)
                .unwrap()
                .fill(&mut c)
                .unwrap();
            black_box((k, c));
        }));
        setup.push(ns_per_call(|| {
            black_box(aead::AeadKey::new(dek).unwrap());
        }));
        empty.push(ns_per_call(|| {
            let e = keyward_envelope::Sealer::new(dek, tenant, dek_id)
                .seal(ctx, b"")
                .unwrap();
            let pt = keyward_envelope::parse(&e).unwrap().open(dek, ctx).unwrap();
            black_box(pt);
        }));
        wipe.push(ns_per_call(|| {
            zeroize::Zeroize::zeroize(black_box(&mut mib[..]));
        }));
    }
    println!();
    println!("Fixed per-message costs (median of {ROUNDS} rounds):");
    println!(
        "  HKDF-SHA-512 extract + 2 expands      {:>8.2} us",
        median(hkdf) / 1e3
    );
    println!(
        "  AES-256-GCM key setup (AeadKey::new)  {:>8.2} us",
        median(setup) / 1e3
    );
    println!(
        "  envelope seal + parse + open, 0 B     {:>8.2} us",
        median(empty) / 1e3
    );
    println!(
        "  zeroize 1 MiB (returned plaintext)    {:>8.2} us",
        median(wipe) / 1e3
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let key_bytes = [0x42u8; 32];
    let aws_key = aead::AeadKey::new(&SecretKey::from_bytes(key_bytes)).unwrap();
    let ring_key = ring_aead::LessSafeKey::new(
        ring_aead::UnboundKey::new(&ring_aead::AES_256_GCM, &key_bytes).unwrap(),
    );
    let aad = [0xAAu8; 64];

    // Cross-check: both libraries must produce identical bytes for the same inputs.
    {
        let mut a = vec![7u8; 1000];
        let mut r = a.clone();
        aws_key
            .seal_in_place_append_tag(&nonce_for(1), &aad, &mut a)
            .unwrap();
        ring_key
            .seal_in_place_append_tag(
                ring_aead::Nonce::assume_unique_for_key(nonce_for(1)),
                ring_aead::Aad::from(&aad),
                &mut r,
            )
            .unwrap();
        assert_eq!(a, r, "aws-lc-rs and ring disagree");
    }

    let dek = SecretKey::from_bytes(key_bytes);
    let tenant: TenantId = "bench-tenant".parse().unwrap();
    let dek_id = KeyId::from_bytes([1u8; 16]);
    let ctx = EncryptionContext::try_from_map(
        [("purpose".to_owned(), "bench".to_owned())]
            .into_iter()
            .collect(),
    )
    .unwrap();

    println!(
        "AES-256-GCM seal+open, {ROUNDS} interleaved rounds of ~{} ms per variant, median round",
        TARGET.as_millis()
    );
    println!(
        "{:>9} | {:>14} | {:>14} | {:>14} | {:>16} | {:>16}",
        "size", "aws-lc-rs MB/s", "ring MB/s", "envelope MB/s", "aws-lc-rs/ring", "envelope/aws-lc"
    );

    for size in SIZES {
        let mut buf = vec![0x5Au8; size + aead::TAG_LEN];
        let (mut aws, mut rng, mut env) = (Vec::new(), Vec::new(), Vec::new());
        let plaintext = vec![0x5Au8; size];

        let run_aws = |out: &mut Vec<f64>, buf: &mut Vec<u8>| {
            out.push(measure(size, |c| {
                let n = nonce_for(c);
                buf.truncate(size);
                aws_key.seal_in_place_append_tag(&n, &aad, buf).unwrap();
                let pt = aws_key.open_in_place(&n, &aad, &mut buf[..]).unwrap();
                black_box(pt);
            }));
        };
        let run_ring = |out: &mut Vec<f64>, buf: &mut Vec<u8>| {
            out.push(measure(size, |c| {
                let n = nonce_for(c);
                buf.truncate(size);
                ring_key
                    .seal_in_place_append_tag(
                        ring_aead::Nonce::assume_unique_for_key(n),
                        ring_aead::Aad::from(&aad),
                        buf,
                    )
                    .unwrap();
                let pt = ring_key
                    .open_in_place(
                        ring_aead::Nonce::assume_unique_for_key(n),
                        ring_aead::Aad::from(&aad),
                        &mut buf[..],
                    )
                    .unwrap();
                black_box(pt);
            }));
        };
        let run_env = |out: &mut Vec<f64>| {
            out.push(measure(size, |_| {
                let e = keyward_envelope::Sealer::new(&dek, &tenant, &dek_id)
                    .seal(&ctx, &plaintext)
                    .unwrap();
                let pt = keyward_envelope::parse(&e)
                    .unwrap()
                    .open(&dek, &ctx)
                    .unwrap();
                black_box(pt);
            }));
        };

        for round in 0..ROUNDS {
            if round % 2 == 0 {
                run_aws(&mut aws, &mut buf);
                run_ring(&mut rng, &mut buf);
                run_env(&mut env);
            } else {
                run_env(&mut env);
                run_ring(&mut rng, &mut buf);
                run_aws(&mut aws, &mut buf);
            }
        }
        let (a, r, e) = (median(aws), median(rng), median(env));
        let label = if size >= 1024 * 1024 {
            format!("{} MiB", size / (1024 * 1024))
        } else if size >= 1024 {
            format!("{} KiB", size / 1024)
        } else {
            format!("{size} B")
        };
        println!(
            "{label:>9} | {a:>14.1} | {r:>14.1} | {e:>14.1} | {:>16.2} | {:>16.2}",
            a / r,
            e / a
        );
    }

    fixed_costs(&dek, &tenant, &dek_id, &ctx);
}
