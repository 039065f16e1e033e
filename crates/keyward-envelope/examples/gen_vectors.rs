//! Generates `docs/envelope/vectors-v1.json`, the envelope format v1 test vectors.
//!
//! ```text
//! cargo run -p keyward-envelope --example gen_vectors > docs/envelope/vectors-v1.json
//! ```
//!
//! Valid vectors use fixed keys and salts through `Sealer` (`suite`, `fixed_salt_for_test_vectors`), in both suites
//! (production code always uses `seal`, which draws a random salt), so the output is deterministic: regenerating must give a
//! byte-identical file unless the format changed. Invalid vectors are derived from one valid
//! envelope by truncating, corrupting or re-encoding it. `tests/vectors.rs` replays the file.

#![allow(
    clippy::print_stdout,
    reason = "the generator writes the vectors file to stdout"
)]
#![allow(
    clippy::unwrap_used,
    reason = "a generator with fixed inputs; failing loudly is right"
)]

use std::collections::BTreeMap;

use keyward_envelope::{
    EncryptionContext, KeyId, Sealer, SecretKey, Suite, TenantId, WRAPPED_KEY_FORMAT, aead,
};

const SUITE_1: Suite = Suite::Aes256GcmHkdfSha512Committing;
const SUITE_2: Suite = Suite::Aes256GcmHkdfExpandSha512Committing;
use serde_json::{Value, json};

/// Deterministic filler: byte i is (i * mul + add) mod 256.
fn pattern(len: usize, mul: usize, add: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * mul + add) % 256) as u8).collect()
}

fn arr<const N: usize>(mul: usize, add: usize) -> [u8; N] {
    pattern(N, mul, add).try_into().unwrap()
}

struct Valid {
    name: &'static str,
    dek: [u8; 32],
    tenant: String,
    dek_id: [u8; 16],
    salt: [u8; 32],
    context: BTreeMap<String, String>,
    plaintext: Vec<u8>,
}

impl Valid {
    fn seal(&self, suite: Suite) -> Vec<u8> {
        let tenant: TenantId = self.tenant.parse().unwrap();
        let ctx = EncryptionContext::with_reserved(self.context.clone()).unwrap();
        Sealer::new(
            &SecretKey::from_bytes(self.dek),
            &tenant,
            &KeyId::from_bytes(self.dek_id),
        )
        .suite(suite)
        .fixed_salt_for_test_vectors(&self.salt)
        .seal(&ctx, &self.plaintext)
        .unwrap()
    }

    /// Suite 0x0001 cases keep their original names; suite 0x0002 cases say their suite.
    fn to_json(&self, suite: Suite) -> Value {
        let name = if suite == SUITE_1 {
            self.name.to_owned()
        } else {
            format!("{} (suite 0x{:04x})", self.name, suite.id())
        };
        json!({
            "case": name,
            "suite": suite.id(),
            "dek": hex::encode(self.dek),
            "tenant": self.tenant,
            "dek_id": hex::encode(self.dek_id),
            "salt": hex::encode(self.salt),
            "context": self.context,
            "plaintext": hex::encode(&self.plaintext),
            "envelope": hex::encode(self.seal(suite)),
        })
    }
}

fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn invalid(
    name: &str,
    envelope: &[u8],
    dek: &[u8; 32],
    context: &BTreeMap<String, String>,
    stage: &str,
    error: &str,
) -> Value {
    json!({
        "case": name,
        "envelope": hex::encode(envelope),
        "dek": hex::encode(dek),
        "context": context,
        "stage": stage,
        "error": error,
    })
}

fn main() {
    let valid = [
        Valid {
            name: "empty plaintext, empty context",
            dek: arr(1, 0),
            tenant: "acme".into(),
            dek_id: arr(3, 1),
            salt: arr(5, 2),
            context: BTreeMap::new(),
            plaintext: Vec::new(),
        },
        Valid {
            name: "short plaintext with context",
            dek: arr(7, 3),
            tenant: "acme".into(),
            dek_id: arr(11, 4),
            salt: arr(13, 5),
            context: map(&[("purpose", "chat"), ("user", "u-42")]),
            plaintext: b"hello, keyward".to_vec(),
        },
        Valid {
            name: "one-character tenant, empty-value context entry",
            dek: [0u8; 32],
            tenant: "0".into(),
            dek_id: [0u8; 16],
            salt: [0u8; 32],
            context: map(&[("k", "")]),
            plaintext: b"x".to_vec(),
        },
        Valid {
            name: "64-character tenant, unicode context, 1000-byte plaintext",
            dek: [0xffu8; 32],
            tenant: "t.1_x-".repeat(10) + "9abc",
            dek_id: [0xffu8; 16],
            salt: [0xffu8; 32],
            context: map(&[("région", "île-de-France"), ("emoji", "🔑"), ("z", "last")]),
            plaintext: pattern(1000, 31, 7),
        },
        Valid {
            name: "reserved keyward: context keys (service-internal contexts)",
            dek: arr(17, 9),
            tenant: "tenant-1.prod_eu".into(),
            dek_id: arr(19, 10),
            salt: arr(23, 11),
            context: map(&[
                ("keyward:scope", "default"),
                ("keyward:tenant", "tenant-1.prod_eu"),
            ]),
            plaintext: pattern(16, 1, 0),
        },
        Valid {
            name: "plaintext spanning several AES blocks with a partial last block",
            dek: arr(29, 12),
            tenant: "acme".into(),
            dek_id: arr(37, 13),
            salt: arr(41, 14),
            context: map(&[("a", "1"), ("aa", "2"), ("b", "3")]),
            plaintext: pattern(65, 3, 200),
        },
    ];

    // Invalid vectors, derived from valid[1]: tenant "acme" (T = 4), so the header is 90 bytes:
    // magic 0..2, version 2, suite 3..5, tenant length 5, tenant 6..10, DEK id 10..26,
    // salt 26..58, commitment 58..90, ciphertext 90..104, tag 104..120.
    let base = &valid[1];
    let env = base.seal(SUITE_1);
    assert_eq!(env.len(), 120);
    let dek = &base.dek;
    let ctx = &base.context;
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut e = env.clone();
        f(&mut e);
        e
    };
    // The same case sealed in suite 0x0002 (same layout).
    let env2 = base.seal(SUITE_2);
    assert_eq!(env2.len(), 120);
    assert_eq!(env2[3..5], [0, 2]);
    let with2 = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut e = env2.clone();
        f(&mut e);
        e
    };
    // Replaces the tenant id (and its length byte) while keeping the rest of the envelope.
    let with_tenant = |tenant: &[u8]| {
        let mut e = env[..5].to_vec();
        e.push(u8::try_from(tenant.len()).unwrap());
        e.extend_from_slice(tenant);
        e.extend_from_slice(&env[10..]);
        e
    };
    let p = "parse";
    let o = "open";
    let mal = "Malformed";
    let df = "DecryptFailed";
    let mut other_ctx = ctx.clone();
    other_ctx.insert("user".into(), "u-43".into());
    let mut extra_ctx = ctx.clone();
    extra_ctx.insert("extra".into(), String::new());
    let mut wrong_dek = *dek;
    wrong_dek[0] ^= 1;

    let invalid_cases = vec![
        invalid("truncated: empty input", &[], dek, ctx, p, mal),
        invalid("truncated: 1 byte", &env[..1], dek, ctx, p, mal),
        invalid("truncated: magic only", &env[..2], dek, ctx, p, mal),
        invalid(
            "truncated: inside the suite id",
            &env[..4],
            dek,
            ctx,
            p,
            mal,
        ),
        invalid(
            "truncated: before the tenant id length",
            &env[..5],
            dek,
            ctx,
            p,
            mal,
        ),
        invalid(
            "truncated: inside the tenant id",
            &env[..8],
            dek,
            ctx,
            p,
            mal,
        ),
        invalid("truncated: inside the DEK id", &env[..20], dek, ctx, p, mal),
        invalid("truncated: inside the salt", &env[..40], dek, ctx, p, mal),
        invalid(
            "truncated: inside the commitment",
            &env[..70],
            dek,
            ctx,
            p,
            mal,
        ),
        invalid(
            "truncated: header only, no tag",
            &env[..90],
            dek,
            ctx,
            p,
            mal,
        ),
        invalid(
            "truncated: body of 15 bytes (shorter than the tag)",
            &env[..105],
            dek,
            ctx,
            p,
            mal,
        ),
        invalid(
            "truncated: last byte missing (parses, fails to open)",
            &env[..119],
            dek,
            ctx,
            o,
            df,
        ),
        invalid(
            "bad magic: \"KX\"",
            &with(&|e| e[1] = b'X'),
            dek,
            ctx,
            p,
            mal,
        ),
        invalid(
            "bad magic: lowercase \"kw\"",
            &with(&|e| e[..2].copy_from_slice(b"kw")),
            dek,
            ctx,
            p,
            mal,
        ),
        invalid(
            "unknown version 0",
            &with(&|e| e[2] = 0),
            dek,
            ctx,
            p,
            "UnsupportedVersion",
        ),
        invalid(
            "unknown version 2",
            &with(&|e| e[2] = 2),
            dek,
            ctx,
            p,
            "UnsupportedVersion",
        ),
        invalid(
            "unknown version 255",
            &with(&|e| e[2] = 255),
            dek,
            ctx,
            p,
            "UnsupportedVersion",
        ),
        invalid(
            "unknown version 2, rest truncated (version is checked first)",
            b"KW\x02",
            dek,
            ctx,
            p,
            "UnsupportedVersion",
        ),
        invalid(
            "unknown suite 0x0000",
            &with(&|e| e[3..5].copy_from_slice(&[0, 0])),
            dek,
            ctx,
            p,
            "UnsupportedSuite",
        ),
        invalid(
            "unknown suite 0x0003",
            &with(&|e| e[3..5].copy_from_slice(&[0, 3])),
            dek,
            ctx,
            p,
            "UnsupportedSuite",
        ),
        invalid(
            "unknown suite 0x0100 (suite id byte-swapped)",
            &with(&|e| e[3..5].copy_from_slice(&[1, 0])),
            dek,
            ctx,
            p,
            "UnsupportedSuite",
        ),
        invalid("zero-length tenant id", &with_tenant(b""), dek, ctx, p, mal),
        invalid(
            "tenant id length 65",
            &with_tenant(&[b'a'; 65]),
            dek,
            ctx,
            p,
            mal,
        ),
        invalid(
            "tenant id length 255",
            &with_tenant(&[b'a'; 255]),
            dek,
            ctx,
            p,
            mal,
        ),
        invalid(
            "tenant id with an uppercase character",
            &with_tenant(b"Acme"),
            dek,
            ctx,
            p,
            mal,
        ),
        invalid(
            "tenant id starting with '-'",
            &with_tenant(b"-cme"),
            dek,
            ctx,
            p,
            mal,
        ),
        invalid(
            "tenant id with a non-ASCII byte",
            &with_tenant(b"acm\xff"),
            dek,
            ctx,
            p,
            mal,
        ),
        invalid(
            "tenant id with a NUL byte",
            &with_tenant(b"ac\x00e"),
            dek,
            ctx,
            p,
            mal,
        ),
        invalid(
            "tenant id length byte too large (swallows a DEK id byte outside the alphabet)",
            &with(&|e| e[5] = 5),
            dek,
            ctx,
            p,
            mal,
        ),
        invalid(
            "tenant id length byte too small (every later field shifts)",
            &with(&|e| e[5] = 3),
            dek,
            ctx,
            o,
            df,
        ),
        invalid(
            "tampered header: tenant id changed to another valid id",
            &with(&|e| e[9] = b'f'),
            dek,
            ctx,
            o,
            df,
        ),
        invalid(
            "tampered header: DEK id byte",
            &with(&|e| e[10] ^= 0x01),
            dek,
            ctx,
            o,
            df,
        ),
        invalid(
            "tampered header: salt byte",
            &with(&|e| e[40] ^= 0x80),
            dek,
            ctx,
            o,
            df,
        ),
        invalid(
            "tampered commitment",
            &with(&|e| e[58] ^= 0x01),
            dek,
            ctx,
            o,
            df,
        ),
        invalid(
            "tampered ciphertext",
            &with(&|e| e[90] ^= 0x01),
            dek,
            ctx,
            o,
            df,
        ),
        invalid("tampered tag", &with(&|e| e[119] ^= 0x01), dek, ctx, o, df),
        invalid(
            "trailing byte appended (becomes ciphertext)",
            &with(&|e| e.push(0)),
            dek,
            ctx,
            o,
            df,
        ),
        invalid("wrong context: changed value", &env, dek, &other_ctx, o, df),
        invalid("wrong context: extra entry", &env, dek, &extra_ctx, o, df),
        invalid("wrong context: empty", &env, dek, &BTreeMap::new(), o, df),
        invalid(
            "wrong DEK (one bit different)",
            &env,
            &wrong_dek,
            ctx,
            o,
            df,
        ),
        // The suite id is bound into both derivations.
        invalid(
            "suite relabelled: a suite 0x0001 envelope marked 0x0002",
            &with(&|e| e[3..5].copy_from_slice(&[0, 2])),
            dek,
            ctx,
            o,
            df,
        ),
        invalid(
            "suite relabelled: a suite 0x0002 envelope marked 0x0001",
            &with2(&|e| e[3..5].copy_from_slice(&[0, 1])),
            dek,
            ctx,
            o,
            df,
        ),
        invalid(
            "suite 0x0002: tampered commitment",
            &with2(&|e| e[89] ^= 0x80),
            dek,
            ctx,
            o,
            df,
        ),
        invalid(
            "suite 0x0002: tampered tag",
            &with2(&|e| e[104] ^= 0x01),
            dek,
            ctx,
            o,
            df,
        ),
        invalid("suite 0x0002: wrong context", &env2, dek, &other_ctx, o, df),
        invalid(
            "suite 0x0002: wrong DEK (one bit different)",
            &env2,
            &wrong_dek,
            ctx,
            o,
            df,
        ),
    ];

    // Wrapped keys: 0x01 || nonce || AES-256-GCM(wrapping key, nonce, aad, key). Built here
    // from the raw AEAD with fixed nonces (wrap_key draws a random nonce).
    let wrap = |kek: [u8; 32], nonce: [u8; 12], key: [u8; 32], aad: &[u8]| {
        let mut w = vec![WRAPPED_KEY_FORMAT];
        w.extend_from_slice(&nonce);
        w.extend(aead::seal(&SecretKey::from_bytes(kek), &nonce, aad, &key).unwrap());
        w
    };
    let kek: [u8; 32] = arr(43, 15);
    let key: [u8; 32] = arr(47, 16);
    let nonce: [u8; 12] = arr(53, 17);
    let aad = b"keyward:dek\x00acme".as_slice();
    let wrapped = wrap(kek, nonce, key, aad);
    let wrapped_valid = vec![
        json!({
            "case": "DEK under a tenant key",
            "wrapping_key": hex::encode(kek), "aad": hex::encode(aad),
            "wrapped": hex::encode(&wrapped), "key": hex::encode(key),
        }),
        json!({
            "case": "empty AAD",
            "wrapping_key": hex::encode([0u8; 32]), "aad": "",
            "wrapped": hex::encode(wrap([0u8; 32], [0u8; 12], [0u8; 32], b"")),
            "key": hex::encode([0u8; 32]),
        }),
    ];
    let mut bad_format = wrapped.clone();
    bad_format[0] = 0x02;
    let mut bad_tag = wrapped.clone();
    bad_tag[60] ^= 0x01;
    let mut long = wrapped.clone();
    long.push(0);
    let wi = |name: &str, w: &[u8], aad: &[u8]| {
        json!({
            "case": name, "wrapping_key": hex::encode(kek), "aad": hex::encode(aad),
            "wrapped": hex::encode(w), "error": "Unwrap",
        })
    };
    let wrapped_invalid = vec![
        wi("wrong AAD", &wrapped, b"keyward:dek\x00acmf"),
        wi("unknown format byte 0x02", &bad_format, aad),
        wi("tampered tag", &bad_tag, aad),
        wi("truncated to 60 bytes", &wrapped[..60], aad),
        wi("62 bytes (trailing byte)", &long, aad),
        wi("empty", &[], aad),
    ];

    let doc = json!({
        "description": "Keyward envelope format v1 test vectors (docs/envelope-format.md). \
            Valid cases: Sealer::new(dek, tenant, dek_id).suite(suite).fixed_salt_for_test_vectors(salt).seal(context, \
            plaintext) must produce exactly `envelope`, and parse + open with (dek, context) must return \
            `plaintext`. Invalid cases: with stage \"parse\", parse(envelope) must fail with \
            `error`; with stage \"open\", parse must succeed and open(dek, context) must fail \
            with `error`. All byte strings are lowercase hex; contexts are string maps.",
        "regenerate": "cargo run -p keyward-envelope --example gen_vectors > docs/envelope/vectors-v1.json",
        "format_version": 1,
        "suites": [SUITE_1.id(), SUITE_2.id()],
        "valid": valid
            .iter()
            .map(|v| v.to_json(SUITE_1))
            .chain(valid.iter().map(|v| v.to_json(SUITE_2)))
            .collect::<Vec<_>>(),
        "invalid": invalid_cases,
        "wrapped_keys": { "valid": wrapped_valid, "invalid": wrapped_invalid },
    });
    println!("{}", serde_json::to_string_pretty(&doc).unwrap());
}
