//! Property tests for the envelope: round trip, tamper detection over every bit, wrong DEK.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::collections::BTreeMap;

use keyward_envelope::{
    EncryptionContext, EnvelopeError, KeyId, Sealer, SecretKey, TenantId, parse,
};
use proptest::prelude::*;

fn tenant_strategy() -> impl Strategy<Value = TenantId> {
    "[a-z0-9][a-z0-9._-]{0,63}".prop_map(|s| s.parse().unwrap())
}

fn context_strategy() -> impl Strategy<Value = EncryptionContext> {
    proptest::collection::btree_map("[a-zA-Z0-9_.:/-]{1,24}", "\\PC{0,40}", 0..8)
        .prop_filter_map("reserved prefix", |m: BTreeMap<String, String>| {
            EncryptionContext::try_from_map(m).ok()
        })
}

fn key_strategy() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn round_trip(
        dek in key_strategy(),
        tenant in tenant_strategy(),
        dek_id in any::<[u8; 16]>(),
        ctx in context_strategy(),
        plaintext in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let dek = SecretKey::from_bytes(dek);
        let dek_id = KeyId::from_bytes(dek_id);
        let env = Sealer::new(&dek, &tenant, &dek_id).seal(&ctx, &plaintext).unwrap();
        prop_assert_eq!(env.len(), keyward_envelope::sealed_len(&tenant, plaintext.len()));
        let parsed = parse(&env).unwrap();
        prop_assert_eq!(parsed.header().tenant(), &tenant);
        prop_assert_eq!(parsed.header().dek_id(), &dek_id);
        let opened = parsed.open(&dek, &ctx).unwrap();
        prop_assert_eq!(&opened[..], &plaintext[..]);
    }

    #[test]
    fn open_under_a_different_dek_fails(
        dek in key_strategy(),
        other in key_strategy(),
        ctx in context_strategy(),
        plaintext in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        prop_assume!(dek != other);
        let dek = SecretKey::from_bytes(dek);
        let other = SecretKey::from_bytes(other);
        let env = Sealer::new(&dek, &"acme".parse().unwrap(), &KeyId::from_bytes([1; 16])).seal(&ctx, &plaintext).unwrap();
        let parsed = parse(&env).unwrap();
        prop_assert!(matches!(parsed.open(&other, &ctx), Err(EnvelopeError::DecryptFailed)));
    }

    #[test]
    fn open_with_a_different_context_fails(
        ctx in context_strategy(),
        other in context_strategy(),
    ) {
        prop_assume!(ctx != other);
        let dek = SecretKey::from_bytes([7; 32]);
        let env = Sealer::new(&dek, &"acme".parse().unwrap(), &KeyId::from_bytes([1; 16])).seal(&ctx, b"data").unwrap();
        let parsed = parse(&env).unwrap();
        prop_assert!(matches!(parsed.open(&dek, &other), Err(EnvelopeError::DecryptFailed)));
    }
}

proptest! {
    // Each case flips every bit of one envelope (8 x ~100..200 opens), so fewer cases suffice.
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Flipping any single bit anywhere in the envelope makes parse or open fail.
    #[test]
    fn every_single_bit_flip_is_detected(
        dek in key_strategy(),
        tenant in tenant_strategy(),
        dek_id in any::<[u8; 16]>(),
        salt in any::<[u8; 32]>(),
        ctx in context_strategy(),
        plaintext in proptest::collection::vec(any::<u8>(), 0..48),
    ) {
        let dek = SecretKey::from_bytes(dek);
        let env = Sealer::new(&dek, &tenant, &KeyId::from_bytes(dek_id)).fixed_salt_for_test_vectors(&salt).seal(&ctx, &plaintext).unwrap();
        prop_assert_eq!(&parse(&env).unwrap().open(&dek, &ctx).unwrap()[..], &plaintext[..]);
        let mut tampered = env.clone();
        for i in 0..env.len() {
            for bit in 0..8 {
                tampered[i] ^= 1 << bit;
                let outcome = parse(&tampered).and_then(|e| e.open(&dek, &ctx).map(|_| ()));
                prop_assert!(outcome.is_err(), "flip of bit {} in byte {} was not detected", bit, i);
                tampered[i] ^= 1 << bit;
            }
        }
        prop_assert_eq!(&tampered, &env);
    }

    /// Every strict prefix of an envelope fails (parse or open), and so does any extension.
    #[test]
    fn truncation_and_extension_are_detected(
        tenant in tenant_strategy(),
        plaintext in proptest::collection::vec(any::<u8>(), 0..48),
        extra in proptest::collection::vec(any::<u8>(), 1..8),
    ) {
        let dek = SecretKey::from_bytes([3; 32]);
        let ctx = EncryptionContext::empty();
        let env = Sealer::new(&dek, &tenant, &KeyId::from_bytes([0; 16])).seal(&ctx, &plaintext).unwrap();
        for n in 0..env.len() {
            let outcome = parse(&env[..n]).and_then(|e| e.open(&dek, &ctx).map(|_| ()));
            prop_assert!(outcome.is_err(), "prefix of {} bytes accepted", n);
        }
        let mut longer = env.clone();
        longer.extend_from_slice(&extra);
        let outcome = parse(&longer).and_then(|e| e.open(&dek, &ctx).map(|_| ()));
        prop_assert!(outcome.is_err());
    }

    /// The parser never panics and never accepts garbage as a valid envelope under a key.
    #[test]
    fn parse_arbitrary_bytes_does_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(env) = parse(&bytes) {
            prop_assert!(env.header().encoded_len() + 16 <= bytes.len());
            let dek = SecretKey::from_bytes([0; 32]);
            prop_assert!(env.open(&dek, &EncryptionContext::empty()).is_err());
        }
    }
}
