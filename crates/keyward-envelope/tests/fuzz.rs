//! Fuzz targets for the envelope parser and the validated input types, on the stable toolchain:
//! proptest generates the inputs (arbitrary bytes, and structure-aware mutations of valid
//! envelopes), every case is checked against an independent model of the format in
//! `docs/envelope-format.md`.
//!
//! Bounded in CI: each target runs `PROPTEST_CASES` cases (default: 256 to 1024, about a second
//! per target in a debug build). Long runs: `scripts/fuzz` (or `PROPTEST_CASES=1000000 cargo test
//! --release -p keyward-envelope --test fuzz`). A failing case is shrunk and saved by
//! proptest under `tests/proptest-regressions/fuzz.txt`, which is committed and replayed
//! first on every run; a crasher found that way is also added to `regressions()` below.

#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

use std::collections::BTreeMap;

use keyward_envelope::{
    CONTEXT_MAX_ENCODED_LEN, CONTEXT_MAX_ENTRIES, CONTEXT_MAX_KEY_LEN, CONTEXT_MAX_VALUE_LEN,
    EncryptionContext, EnvelopeError, HEADER_FIXED_LEN, KeyId, RESERVED_PREFIX, Sealer, SecretKey,
    TENANT_ID_MAX_LEN, TenantId, parse,
};
use proptest::prelude::*;

/// Cases per target: `PROPTEST_CASES`, or `default` (sized so that CI stays fast).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    }
}

/// What the specification says `parse` must answer for `bytes`, computed independently of the
/// implementation (docs/envelope-format.md, "Parsing").
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Ok,
    Malformed,
    Version(u8),
    Suite(u16),
}

fn model(bytes: &[u8]) -> Expected {
    if bytes.len() < 2 || bytes[..2] != *b"KW" {
        return Expected::Malformed;
    }
    let Some(&version) = bytes.get(2) else {
        return Expected::Malformed;
    };
    if version != 1 {
        return Expected::Version(version);
    }
    if bytes.len() < 5 {
        return Expected::Malformed;
    }
    let suite = u16::from_be_bytes([bytes[3], bytes[4]]);
    if suite != 1 && suite != 2 {
        return Expected::Suite(suite);
    }
    let Some(&t) = bytes.get(5) else {
        return Expected::Malformed;
    };
    let t = usize::from(t);
    if t == 0 || t > 64 || bytes.len() < 6 + t {
        return Expected::Malformed;
    }
    let tenant = &bytes[6..6 + t];
    let first_ok = tenant[0].is_ascii_lowercase() || tenant[0].is_ascii_digit();
    let all_ok = tenant
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c));
    if !first_ok || !all_ok {
        return Expected::Malformed;
    }
    // DEK id 16 + salt 32 + commitment 32, then at least the 16-byte tag.
    if bytes.len() < 6 + t + 80 + 16 {
        return Expected::Malformed;
    }
    Expected::Ok
}

fn outcome(r: &Result<keyward_envelope::Envelope<'_>, EnvelopeError>) -> Expected {
    match r {
        Ok(_) => Expected::Ok,
        Err(EnvelopeError::Malformed(_)) => Expected::Malformed,
        Err(EnvelopeError::UnsupportedVersion(v)) => Expected::Version(*v),
        Err(EnvelopeError::UnsupportedSuite(s)) => Expected::Suite(*s),
        Err(other) => panic!("parse returned a non-parse error: {other:?}"),
    }
}

/// Parses `bytes`; checks the answer against the model, and that a structurally valid result
/// never opens under `dek`/`ctx` (the input was not sealed under them, or was altered).
fn parse_fails_closed(bytes: &[u8], dek: &SecretKey, ctx: &EncryptionContext) {
    let parsed = parse(bytes);
    assert_eq!(
        outcome(&parsed),
        model(bytes),
        "input {}",
        hex::encode(bytes)
    );
    if let Ok(env) = parsed {
        assert!(env.header_bytes().len() > HEADER_FIXED_LEN);
        assert_eq!(
            env.header_bytes().len() + env.plaintext_len() + 16,
            bytes.len()
        );
        assert!(
            matches!(env.open(dek, ctx), Err(EnvelopeError::DecryptFailed)),
            "an input that was not sealed under this key opened: {}",
            hex::encode(bytes)
        );
    }
}

/// Random bytes, and random bytes behind a valid-looking prefix (so the fuzzer gets past the
/// magic, version and suite checks often).
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    let raw = proptest::collection::vec(any::<u8>(), 0..256);
    let prefixed = (
        0u8..=70,
        proptest::collection::vec(
            prop_oneof![Just(b'a'), Just(b'0'), Just(b'.'), Just(b'-'), any::<u8>()],
            0..70,
        ),
        proptest::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(|(len, tenant, rest)| {
            let mut out = b"KW\x01\x00\x01".to_vec();
            out.push(len);
            out.extend(tenant);
            out.extend(rest);
            out
        });
    prop_oneof![raw, prefixed]
}

/// Up to 8 arbitrary characters (cheaper to generate than a regex).
fn short_string() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..8).prop_map(String::from_iter)
}

fn tenant_strategy() -> impl Strategy<Value = TenantId> {
    "[a-z0-9][a-z0-9._-]{0,63}".prop_map(|s| s.parse().unwrap())
}

fn context_strategy() -> impl Strategy<Value = EncryptionContext> {
    proptest::collection::btree_map("[a-z]{1,8}", "\\PC{0,16}", 0..4)
        .prop_map(|m| EncryptionContext::try_from_map(m).unwrap())
}

/// A change to a valid envelope; offsets are taken modulo the envelope length.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit {
        at: usize,
        bit: u8,
    },
    SetByte {
        at: usize,
        value: u8,
    },
    Truncate {
        to: usize,
    },
    Extend {
        with: Vec<u8>,
    },
    Insert {
        at: usize,
        with: Vec<u8>,
    },
    Remove {
        at: usize,
        len: usize,
    },
    /// A header field replaced by another value (version, suite, tenant length, tenant id,
    /// DEK id, salt, commitment).
    Field {
        field: HeaderField,
        value: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy)]
enum HeaderField {
    Version,
    Suite,
    TenantLen,
    Tenant,
    DekId,
    Salt,
    Commitment,
}

fn mutation_strategy() -> impl Strategy<Value = Mutation> {
    let field = prop_oneof![
        Just(HeaderField::Version),
        Just(HeaderField::Suite),
        Just(HeaderField::TenantLen),
        Just(HeaderField::Tenant),
        Just(HeaderField::DekId),
        Just(HeaderField::Salt),
        Just(HeaderField::Commitment),
    ];
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::SetByte { at, value }),
        any::<usize>().prop_map(|to| Mutation::Truncate { to }),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(|with| Mutation::Extend { with }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..32)
        )
            .prop_map(|(at, with)| Mutation::Insert { at, with }),
        (any::<usize>(), 1usize..48).prop_map(|(at, len)| Mutation::Remove { at, len }),
        (field, proptest::collection::vec(any::<u8>(), 1..40))
            .prop_map(|(field, value)| Mutation::Field { field, value }),
    ]
}

fn apply(env: &[u8], m: &Mutation) -> Vec<u8> {
    let mut out = env.to_vec();
    let n = env.len();
    let t = usize::from(env[5]);
    match m {
        Mutation::FlipBit { at, bit } => out[at % n] ^= 1u8 << *bit,
        Mutation::SetByte { at, value } => out[at % n] = *value,
        Mutation::Truncate { to } => out.truncate(to % n),
        Mutation::Extend { with } => out.extend_from_slice(with),
        Mutation::Insert { at, with } => {
            let at = at % (n + 1);
            out.splice(at..at, with.iter().copied());
        }
        Mutation::Remove { at, len } => {
            let at = at % n;
            out.drain(at..(at + len).min(n));
        }
        Mutation::Field { field, value } => {
            let (start, len) = match field {
                HeaderField::Version => (2, 1),
                HeaderField::Suite => (3, 2),
                HeaderField::TenantLen => (5, 1),
                HeaderField::Tenant => (6, t),
                HeaderField::DekId => (6 + t, 16),
                HeaderField::Salt => (22 + t, 32),
                HeaderField::Commitment => (54 + t, 32),
            };
            if start + len > out.len() {
                // An earlier mutation moved the field out of the input: nothing to replace.
                return out;
            }
            // Overwrite within the field; for the tenant id, the value may also change its
            // length (then the length byte is updated, so the header stays self-consistent).
            match field {
                HeaderField::Tenant => {
                    let v = &value[..value.len().min(64)];
                    out.splice(start..start + len, v.iter().copied());
                    out[5] = u8::try_from(v.len()).unwrap();
                }
                _ => {
                    for (i, b) in value.iter().take(len).enumerate() {
                        out[start + i] = *b;
                    }
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(config(1024))]

    /// Arbitrary bytes: never a panic, the error the specification names, and nothing opens.
    #[test]
    fn arbitrary_bytes_fail_closed(bytes in hostile_bytes(), key in any::<[u8; 32]>()) {
        parse_fails_closed(&bytes, &SecretKey::from_bytes(key), &EncryptionContext::empty());
    }

    /// Tenant ids from arbitrary strings: valid exactly when the alphabet and length say so,
    /// and otherwise a bounded error message.
    #[test]
    fn tenant_ids_from_arbitrary_strings(s in prop_oneof!["\\PC{0,80}", "[a-z0-9._-]{0,70}", ".{0,80}"]) {
        let valid = !s.is_empty()
            && s.len() <= TENANT_ID_MAX_LEN
            && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        match s.parse::<TenantId>() {
            Ok(t) => { prop_assert!(valid); prop_assert_eq!(t.as_str(), s.as_str()); }
            Err(EnvelopeError::InvalidTenantId(msg)) => {
                prop_assert!(!valid);
                prop_assert!(msg.len() <= 12 * TENANT_ID_MAX_LEN + 200, "unbounded message: {}", msg);
            }
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Structure-aware: a valid envelope, changed in one way, never decrypts under its own DEK
    /// and context, never panics, and parses exactly as the specification says.
    #[test]
    fn mutated_envelopes_never_decrypt(
        key in any::<[u8; 32]>(),
        tenant in tenant_strategy(),
        dek_id in any::<[u8; 16]>(),
        ctx in context_strategy(),
        plaintext in proptest::collection::vec(any::<u8>(), 0..300),
        mutations in proptest::collection::vec(mutation_strategy(), 1..4),
    ) {
        let dek = SecretKey::from_bytes(key);
        let env = Sealer::new(&dek, &tenant, &KeyId::from_bytes(dek_id)).seal(&ctx, &plaintext).unwrap();
        let mut mutated = env.clone();
        for m in &mutations {
            if mutated.len() < 6 { break; }
            mutated = apply(&mutated, m);
        }
        prop_assume!(mutated != env);
        parse_fails_closed(&mutated, &dek, &ctx);
    }

    /// Encryption contexts from arbitrary maps: accepted exactly within the documented bounds,
    /// otherwise `InvalidContext` naming the bound that was crossed.
    #[test]
    fn contexts_from_arbitrary_maps(
        entries in prop_oneof![0usize..8, 12usize..20, 60usize..70].prop_flat_map(|n| {
            proptest::collection::vec(
                (prop_oneof![
                    8 => short_string(),
                    1 => Just(String::new()),
                    1 => Just(format!("{RESERVED_PREFIX}x")),
                    1 => (120usize..140).prop_map(|n| "k".repeat(n)),
                ], prop_oneof![
                    3 => short_string(),
                    1 => (1000usize..1100).prop_map(|n| "v".repeat(n)),
                ]),
                n,
            )
        }),
    ) {
        let map: BTreeMap<String, String> = entries.into_iter().collect();
        let encoded: usize = 2 + map.iter().map(|(k, v)| 4 + k.len() + v.len()).sum::<usize>();
        let reserved = map.keys().any(|k| k.starts_with(RESERVED_PREFIX));
        let too_many = map.len() > CONTEXT_MAX_ENTRIES;
        let bad_key = map.keys().any(|k| k.is_empty() || k.len() > CONTEXT_MAX_KEY_LEN);
        let bad_value = map.values().any(|v| v.len() > CONTEXT_MAX_VALUE_LEN);
        let too_big = encoded > CONTEXT_MAX_ENCODED_LEN;
        match EncryptionContext::try_from_map(map.clone()) {
            Ok(ctx) => {
                prop_assert!(!(reserved || too_many || bad_key || bad_value || too_big));
                prop_assert_eq!(ctx.canonical_bytes().len(), encoded);
            }
            Err(EnvelopeError::InvalidContext(msg)) => {
                // Checked in this order: reserved prefix, entry count, each entry, total size.
                let named = if reserved {
                    msg.contains("reserved")
                } else if too_many {
                    msg.contains(&CONTEXT_MAX_ENTRIES.to_string())
                } else if bad_key || bad_value {
                    msg.contains(&CONTEXT_MAX_KEY_LEN.to_string()) || msg.contains(&CONTEXT_MAX_VALUE_LEN.to_string())
                } else {
                    too_big && msg.contains(&CONTEXT_MAX_ENCODED_LEN.to_string())
                };
                prop_assert!(named, "{} does not name the crossed bound", msg);
                prop_assert!(msg.len() < 400, "unbounded message: {}", msg);
            }
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }
}

/// Inputs found by fuzzing or written by hand at the edges; replayed on every run.
#[test]
fn regressions() {
    let key = SecretKey::from_bytes([7; 32]);
    let ctx = EncryptionContext::empty();
    let edge_cases: &[&[u8]] = &[
        b"",
        b"K",
        b"KW",
        b"KW\x01",
        b"KW\x01\x00",
        b"KW\x01\x00\x01",
        b"KW\x01\x00\x01\x00",
        b"KW\x01\x00\x01\x41",
        b"KW\x01\x00\x01\xff",
        b"KW\x02\x00\x01\x01a",
        b"KW\x01\xff\xff\x01a",
        b"KW\x01\x00\x01\x01A",
        b"KW\x01\x00\x01\x01-",
    ];
    for bytes in edge_cases {
        parse_fails_closed(bytes, &key, &ctx);
    }
    // Exactly the minimum length (empty plaintext, 1-byte tenant), one short, one long.
    let mut min = b"KW\x01\x00\x01\x01a".to_vec();
    min.extend([0u8; 80 + 16]);
    parse_fails_closed(&min, &key, &ctx);
    parse_fails_closed(&min[..min.len() - 1], &key, &ctx);
    min.push(0);
    parse_fails_closed(&min, &key, &ctx);
    // A 64-byte tenant id (the maximum) and a length byte of 65.
    let mut long = b"KW\x01\x00\x01\x40".to_vec();
    long.extend([b'a'; 64]);
    long.extend([0u8; 96]);
    parse_fails_closed(&long, &key, &ctx);
    long[5] = 65;
    long.insert(6, b'a');
    assert!(matches!(parse(&long), Err(EnvelopeError::Malformed(_))));
}
