//! Property tests for the request-to-domain conversions of [`super`] (tenant ids, scopes,
//! encryption contexts, key references: AWS ARNs and PKCS#11 URIs, display names, reasons,
//! batch sizes). Each input is checked against an independent model of what must be accepted
//! and refused, written from the documented rules (docs/errors.md, docs/envelope-format.md,
//! docs/providers/aws.md, docs/onboarding/pkcs11.md), as the envelope fuzzer does: deleting or
//! loosening a validation makes a case the model refuses come back `Ok`. A refusal is
//! `InvalidArgument` naming the field the model names, with a bounded message; an accepted
//! value is exactly what the request said.
//!
//! Key references are read through every provider's factory, as the shipped binary registers
//! them ([`test_registry`]), so the AWS ARN and PKCS#11 URI parsers are the ones modelled.
//!
//! Bounded in CI: `PROPTEST_CASES` cases per target (default 512, about a second each in a debug
//! build);
//! long runs: `scripts/fuzz`. proptest saves a failing case under
//! `crates/keyward-server/proptest-regressions/api/proptests.txt` (committed, replayed first on
//! every run); such a case is also added to `regressions()`.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::collections::HashMap;

use proptest::prelude::*;

use super::convert::*;
use crate::error::ServiceError;
use crate::test_support::test_registry;
use keyward_kms::{KeyRef, ProviderKind as DomainProviderKind};
use keyward_proto::v1::{self as pb, register_key_request};
use keyward_store::Scope;

/// RegisterKey's AWS key reference, read as the server reads it (the AWS crate's factory).
fn aws_key_ref(aws: pb::AwsKmsKey) -> Result<KeyRef, ServiceError> {
    kek_ref(
        &test_registry(),
        Some(register_key_request::Key::AwsKms(aws)),
    )
}

/// RegisterKey's PKCS#11 key reference, read as the server reads it (the PKCS#11 crate's factory).
fn pkcs11_key_ref(uri: &str) -> Result<KeyRef, ServiceError> {
    kek_ref(
        &test_registry(),
        Some(register_key_request::Key::Pkcs11(pb::Pkcs11Key {
            uri: uri.to_owned(),
        })),
    )
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(512),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    }
}

/// The field of an `InvalidArgument`, or a failure naming what came back instead.
fn field_of(e: &ServiceError) -> &'static str {
    match e {
        ServiceError::InvalidArgument { field, description } => {
            assert!(!description.is_empty());
            // Messages echo input only in bounded form.
            assert!(description.len() < 4096, "unbounded message for {field}");
            assert_eq!(e.to_status().code(), tonic::Code::InvalidArgument);
            field
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// What a conversion answers, reduced to what the model predicts: accepted, or refused naming
/// a field.
fn verdict<T>(r: &Result<T, ServiceError>) -> Result<(), &'static str> {
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err(field_of(e)),
    }
}

// ----- the model -------------------------------------------------------------------------

/// Unicode general category Cc (C0, DEL, C1): the "control characters" the API refuses.
fn is_cc(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}')
}

/// docs: a tenant id is 1 to 64 characters of `[a-z0-9._-]` starting with `[a-z0-9]`.
fn tenant_ok(s: &str) -> bool {
    let lower_or_digit = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=64).contains(&s.len())
        && s.starts_with(lower_or_digit)
        && s.chars().all(|c| lower_or_digit(c) || ".-_".contains(c))
}

/// docs: a scope is empty (the default scope) or 1 to 128 bytes without control characters.
fn scope_ok(s: &str) -> bool {
    s.len() <= 128 && !s.chars().any(is_cc)
}

/// docs/envelope-format.md, "Encryption context": at most 64 entries, keys 1 to 128 bytes not
/// starting `keyward:`, values at most 1024 bytes, at most 16 KiB encoded (2 bytes of count,
/// then 2 + key + 2 + value bytes per entry).
fn context_ok(map: &HashMap<String, String>) -> bool {
    let encoded: usize = 2 + map
        .iter()
        .map(|(k, v)| 4 + k.len() + v.len())
        .sum::<usize>();
    map.len() <= 64
        && encoded <= 16 * 1024
        && map.iter().all(|(k, v)| {
            (1..=128).contains(&k.len()) && !k.starts_with("keyward:") && v.len() <= 1024
        })
}

/// At most 256 characters (not bytes), no control characters; empty is allowed.
fn display_name_ok(s: &str) -> bool {
    s.chars().count() <= 256 && !s.chars().any(is_cc)
}

/// Required (not only whitespace), at most 1024 characters, no control characters.
fn reason_ok(s: &str) -> bool {
    !s.chars().all(char::is_whitespace) && s.chars().count() <= 1024 && !s.chars().any(is_cc)
}

const PARTITIONS: [&str; 5] = ["aws", "aws-cn", "aws-us-gov", "aws-iso", "aws-iso-b"];

fn all_bytes(s: &str, ok: impl Fn(u8) -> bool) -> bool {
    s.bytes().all(ok)
}

/// `xx-name(-name)*-N`: two lower-case letters, one or more lower-case words, one or two digits.
fn region_ok(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && all_bytes(parts[0], |b| b.is_ascii_lowercase())
        && parts[1..parts.len() - 1]
            .iter()
            .all(|w| !w.is_empty() && all_bytes(w, |b| b.is_ascii_lowercase()))
        && (1..=2).contains(&parts[parts.len() - 1].len())
        && all_bytes(parts[parts.len() - 1], |b| b.is_ascii_digit())
}

fn account_ok(s: &str) -> bool {
    s.len() == 12 && all_bytes(s, |b| b.is_ascii_digit())
}

fn hex_ok(s: &str, len: usize) -> bool {
    s.len() == len && all_bytes(s, |b| b.is_ascii_hexdigit())
}

/// `key/<UUID>`, `key/mrk-<32 hex>`, or `alias/<1 to 250 of [A-Za-z0-9/_-]>` but not `alias/aws/…`.
fn kms_resource_ok(r: &str) -> bool {
    if let Some(id) = r.strip_prefix("key/") {
        if let Some(hex) = id.strip_prefix("mrk-") {
            return hex_ok(hex, 32);
        }
        let groups: Vec<&str> = id.split('-').collect();
        return groups.len() == 5
            && groups
                .iter()
                .zip([8, 4, 4, 4, 12])
                .all(|(g, n)| hex_ok(g, n));
    }
    r.strip_prefix("alias/").is_some_and(|name| {
        !name.starts_with("aws/")
            && (1..=250).contains(&name.len())
            && all_bytes(name, |b| b.is_ascii_alphanumeric() || b"/_-".contains(&b))
    })
}

/// The partition of a valid KMS key ARN `arn:<partition>:kms:<region>:<account>:<resource>`.
fn kms_arn_partition(arn: &str) -> Option<&str> {
    let f: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = f.len() == 6
        && f[0] == "arn"
        && PARTITIONS.contains(&f[1])
        && f[2] == "kms"
        && region_ok(f[3])
        && account_ok(f[4])
        && kms_resource_ok(f[5]);
    ok.then(|| f[1])
}

/// `arn:<the key's partition>:iam::<account>:role/<path/>name`: name 1 to 64 and path+name at
/// most 576 of `[A-Za-z0-9_+=,.@-]` and `/`.
fn role_arn_ok(role: &str, partition: &str) -> bool {
    let f: Vec<&str> = role.splitn(6, ':').collect();
    if f.len() != 6 || f[0] != "arn" || f[1] != partition || f[2] != "iam" || !f[3].is_empty() {
        return false;
    }
    let Some(path_and_name) = f[5].strip_prefix("role/") else {
        return false;
    };
    let name = path_and_name.rsplit('/').next().unwrap_or_default();
    account_ok(f[4])
        && (1..=64).contains(&name.len())
        && path_and_name.len() <= 576
        && all_bytes(path_and_name, |b| {
            b.is_ascii_alphanumeric() || b"_+=,.@-/".contains(&b)
        })
}

/// 2 to 1224 of letters, digits and `_+=,.@:/-` (STS ExternalId).
fn external_id_ok(s: &str) -> bool {
    (2..=1224).contains(&s.len())
        && all_bytes(s, |b| {
            b.is_ascii_alphanumeric() || b"_+=,.@:/-".contains(&b)
        })
}

/// What `aws_key_ref` must answer: the field it names when it refuses, in the documented order
/// (empty ARN, AWS's length bounds, a query in the ARN field, role and external id set together,
/// then the whole reference's grammar).
fn aws_model(key_arn: &str, role_arn: &str, external_id: &str) -> Result<(), &'static str> {
    if key_arn.is_empty() || key_arn.len() > 2048 {
        return Err("aws_kms.key_arn");
    }
    if role_arn.len() > 2048 {
        return Err("aws_kms.role_arn");
    }
    if external_id.len() > 1224 {
        return Err("aws_kms.external_id");
    }
    if key_arn.contains('?') {
        return Err("aws_kms.key_arn");
    }
    match (role_arn.is_empty(), external_id.is_empty()) {
        (true, false) => return Err("aws_kms.role_arn"),
        (false, true) => return Err("aws_kms.external_id"),
        _ => {}
    }
    let Some(partition) = kms_arn_partition(key_arn) else {
        return Err("aws_kms");
    };
    let role_ok =
        role_arn.is_empty() || (role_arn_ok(role_arn, partition) && external_id_ok(external_id));
    if !role_ok {
        return Err("aws_kms");
    }
    Ok(())
}

/// One `name=value` attribute of a generated PKCS#11 URI, with what it decodes to.
#[derive(Debug, Clone)]
struct Attribute {
    name: &'static str,
    /// As written in the URI.
    text: String,
    /// Percent-decoded, or `None` when the text is not valid RFC 7512 (empty, a bad `%`
    /// escape, a character that must be encoded).
    decoded: Option<Vec<u8>>,
}

fn attribute() -> impl Strategy<Value = Attribute> {
    let name = prop_oneof![
        4 => Just("token"),
        4 => Just("object"),
        4 => Just("id"),
        2 => Just("type"),
        1 => Just("slot-id"),
    ];
    let value = prop_oneof![
        // Unreserved text, decoded as itself.
        6 => "[a-zA-Z0-9._~-]{1,12}".prop_map(|s| (s.clone(), Some(s.into_bytes()))),
        // Fully percent-encoded bytes, either case of hex.
        3 => (proptest::collection::vec(any::<u8>(), 1..12), any::<bool>()).prop_map(|(b, upper)| {
            let text: String = b
                .iter()
                .map(|x| if upper { format!("%{x:02X}") } else { format!("%{x:02x}") })
                .collect();
            (text, Some(b))
        }),
        1 => Just(("secret-key".to_owned(), Some(b"secret-key".to_vec()))),
        1 => Just(("public-key".to_owned(), Some(b"public-key".to_vec()))),
        // A token label one byte too long, and exactly as long as allowed.
        1 => Just(("t".repeat(33), Some(vec![b't'; 33]))),
        1 => Just(("t".repeat(32), Some(vec![b't'; 32]))),
        // Not RFC 7512.
        1 => Just((String::new(), None)),
        1 => Just(("%zz".to_owned(), None)),
        1 => Just(("a%4".to_owned(), None)),
        1 => Just(("a b".to_owned(), None)),
        1 => Just(("k/1".to_owned(), None)),
    ];
    (name, value).prop_map(|(name, (text, decoded))| Attribute {
        name,
        text,
        decoded,
    })
}

/// RFC 7512 as docs/onboarding/pkcs11.md restricts it: each of token, object, id and type at
/// most once, nothing else, values non-empty and valid percent-encoding, token and object UTF-8
/// and the token at most 32 bytes, type only `secret-key`, and object or id present. Accepted:
/// the canonical URI (token, id, object; id fully encoded in lower-case hex, labels encoded
/// where RFC 7512 requires, `&` and `=` too).
fn pkcs11_model(attributes: &[Attribute]) -> Result<String, ()> {
    let mut seen = HashMap::new();
    for a in attributes {
        let decoded = a.decoded.clone().filter(|d| !d.is_empty()).ok_or(())?;
        if seen.insert(a.name, decoded).is_some() {
            return Err(());
        }
    }
    let text = |name: &str| -> Result<Option<String>, ()> {
        seen.get(name)
            .map(|b: &Vec<u8>| String::from_utf8(b.clone()).map_err(drop))
            .transpose()
    };
    let (token, object) = (text("token")?, text("object")?);
    if seen.contains_key("slot-id")
        || token.as_ref().is_some_and(|t| t.len() > 32)
        || text("type")?.is_some_and(|t| t != "secret-key")
        || (object.is_none() && !seen.contains_key("id"))
    {
        return Err(());
    }
    let label = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~:[]@!$'()*+,".contains(&b) {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect()
    };
    let mut parts = Vec::new();
    if let Some(t) = token {
        parts.push(format!("token={}", label(&t)));
    }
    if let Some(id) = seen.get("id") {
        let hex: String = id.iter().map(|b| format!("%{b:02x}")).collect();
        parts.push(format!("id={hex}"));
    }
    if let Some(o) = object {
        parts.push(format!("object={}", label(&o)));
    }
    Ok(format!("pkcs11:{}", parts.join(";")))
}

// ----- the inputs ------------------------------------------------------------------------

/// Strings a caller may send: anything printable, control characters, long runs, multi-byte
/// characters around the character and byte bounds, and the separators the key-reference
/// syntaxes use.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        ".{0,40}",
        "[a-z0-9._-]{0,70}",
        "[ -~]{0,20}[\\x00-\\x1f\\x7f][ -~]{0,20}",
        "[a-z]{0,5}[\\u{80}-\\u{9f}][a-z]{0,5}",
        "[ \\t\\u{a0}\\u{3000}]{0,4}",
        (0usize..3000).prop_map(|n| "a".repeat(n)),
        (120usize..136).prop_map(|n| "s".repeat(n)),
        (120usize..600).prop_map(|n| "é".repeat(n)),
        (1020usize..1030).prop_map(|n| "r".repeat(n)),
        "[?&=:;/%]{0,12}",
    ]
}

/// Context keys and values: mostly short arbitrary text, sometimes at and past the bounds.
fn context_string() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => proptest::collection::vec(any::<char>(), 0..8).prop_map(String::from_iter),
        1 => (120usize..140).prop_map(|n| "k".repeat(n)),
        1 => (1000usize..1100).prop_map(|n| "v".repeat(n)),
        1 => Just("keyward:x".to_owned()),
        1 => Just("keyward".to_owned()),
        1 => Just(String::new()),
    ]
}

/// Maps of 0 to 5 entries, around the 64-entry bound, and of about 16 near-maximal values
/// (around the 16 KiB encoded bound).
fn context_map() -> impl Strategy<Value = HashMap<String, String>> {
    let entries = |n| proptest::collection::vec((context_string(), context_string()), n);
    let big = (14usize..18).prop_flat_map(|n| {
        proptest::collection::vec(
            ("[a-z]{1,8}", (990usize..=1024).prop_map(|l| "v".repeat(l))),
            n,
        )
    });
    prop_oneof![
        prop_oneof![0usize..6, 60usize..70].prop_flat_map(entries),
        big,
    ]
    .prop_map(|pairs| pairs.into_iter().collect())
}

fn arn_like() -> impl Strategy<Value = String> {
    let partition = prop_oneof![
        Just("aws"),
        Just("aws-cn"),
        Just("aws-us-gov"),
        Just("aws-iso-b"),
        Just("gcp")
    ];
    let region = prop_oneof![
        "[a-z]{2}-[a-z]{4,9}-[0-9]",
        "[a-z]{2}(-[a-z]{1,5}){1,3}-[0-9]{1,3}",
        "[a-z0-9-]{0,12}"
    ];
    let account = prop_oneof!["[0-9]{12}", "[0-9]{0,14}"];
    let resource = prop_oneof![
        "key/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "key/[0-9A-F]{8}-[0-9a-f]{4}-[0-9a-f]{3,5}-[0-9a-f]{4}-[0-9a-f]{12}",
        "key/mrk-[0-9a-f]{31,33}",
        "alias/[a-zA-Z0-9/_:-]{0,30}",
        "alias/aws/[a-z]{1,8}",
        (248usize..253).prop_map(|n| format!("alias/{}", "a".repeat(n))),
        "\\PC{0,30}",
    ];
    let tail = prop_oneof![
        4 => Just(String::new()),
        1 => "[?&=][ -~]{0,30}",
    ];
    (partition, region, account, resource, tail)
        .prop_map(|(p, r, a, res, tail)| format!("arn:{p}:kms:{r}:{a}:{res}{tail}"))
}

fn role_like() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "arn:aws:iam::[0-9]{12}:role/[a-zA-Z0-9+=,.@_-]{1,30}",
        "arn:aws:iam::[0-9]{12}:role/([a-z]{1,5}/){0,3}[a-zA-Z0-9+=,.@_&-]{0,66}",
        "arn:aws-cn:iam::[0-9]{12}:role/r",
        "arn:aws:iam:us-east-1:[0-9]{12}:role/r",
        "arn:aws:iam::[0-9]{0,13}:[a-z]{0,6}/[ -~]{0,20}",
        hostile_string(),
    ]
}

fn external_id_like() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-zA-Z0-9_+=,.@:/-]{1,40}",
        "[a-zA-Z0-9]{1,10}[&?# ][a-z]{0,5}",
        hostile_string(),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn tenant_ids(raw in hostile_string()) {
        let got = tenant_id(&raw);
        prop_assert_eq!(verdict(&got), if tenant_ok(&raw) { Ok(()) } else { Err("tenant_id") });
        if let Ok(t) = got {
            prop_assert_eq!(t.as_str(), raw.as_str());
        }
    }

    #[test]
    fn scopes(raw in hostile_string()) {
        let got = scope(&raw);
        prop_assert_eq!(verdict(&got), if scope_ok(&raw) { Ok(()) } else { Err("scope") });
        match got {
            Ok(s) if raw.is_empty() => prop_assert_eq!(s, Scope::default_scope()),
            Ok(s) => prop_assert_eq!(s.as_str(), raw.as_str()),
            Err(_) => {}
        }
    }

    #[test]
    fn encryption_contexts(raw in context_map()) {
        let got = context(raw.clone());
        let expected = if context_ok(&raw) { Ok(()) } else { Err("encryption_context") };
        prop_assert_eq!(verdict(&got), expected, "{} entries", raw.len());
        if let Ok(ctx) = got {
            prop_assert_eq!(ctx.len(), raw.len());
            for (k, v) in &raw {
                prop_assert_eq!(ctx.get(k), Some(v.as_str()));
            }
        }
    }

    /// An accepted AWS key reference has exactly the ARN, role and external id of the
    /// request: nothing can be smuggled from one field into another.
    #[test]
    fn aws_key_references(
        key_arn in prop_oneof![3 => arn_like(), 1 => hostile_string()],
        role_arn in role_like(),
        external_id in external_id_like(),
    ) {
        let request = pb::AwsKmsKey {
            key_arn: key_arn.clone(),
            role_arn: role_arn.clone(),
            external_id: external_id.clone(),
        };
        let got = aws_key_ref(request);
        prop_assert_eq!(verdict(&got), aws_model(&key_arn, &role_arn, &external_id));
        if let Ok(kek) = got {
            prop_assert_eq!(kek.kind(), DomainProviderKind::AwsKms);
            let parsed: keyward_kms_aws::AwsKeyRef = kek.id().parse().unwrap();
            prop_assert_eq!(parsed.arn(), key_arn);
            match parsed.role {
                Some(role) => {
                    prop_assert_eq!(role.role_arn, role_arn);
                    prop_assert_eq!(role.external_id, external_id);
                }
                None => prop_assert!(role_arn.is_empty() && external_id.is_empty()),
            }
        }
    }

    /// Generated URIs whose validity and canonical form the model knows.
    #[test]
    fn pkcs11_key_references(
        attributes in proptest::collection::vec(attribute(), 0..5),
        scheme in any::<bool>(),
    ) {
        let texts: Vec<String> = attributes.iter().map(|a| format!("{}={}", a.name, a.text)).collect();
        let uri = format!("{}{}", if scheme { "pkcs11:" } else { "" }, texts.join(";"));
        let got = pkcs11_key_ref(&uri);
        match pkcs11_model(&attributes) {
            Ok(canonical) => {
                let kek = got.unwrap_or_else(|e| panic!("{uri:?} refused: {e}"));
                prop_assert_eq!(kek.kind(), DomainProviderKind::Pkcs11);
                prop_assert_eq!(kek.id(), canonical.as_str(), "{}", uri);
                // The stored reference is canonical: parsing it again gives itself.
                let again = pkcs11_key_ref(kek.id()).unwrap();
                prop_assert_eq!(again.id(), kek.id());
            }
            Err(()) => prop_assert_eq!(verdict(&got), Err("pkcs11.uri"), "{}", uri),
        }
    }

    /// Arbitrary strings: never a panic; a refusal names the field; an accepted one is canonical.
    #[test]
    fn pkcs11_key_references_from_hostile_strings(uri in hostile_string()) {
        match pkcs11_key_ref(&uri) {
            Ok(kek) => {
                prop_assert_eq!(kek.kind(), DomainProviderKind::Pkcs11);
                prop_assert!(kek.id().starts_with("pkcs11:"));
                let again = pkcs11_key_ref(kek.id()).unwrap();
                prop_assert_eq!(again.id(), kek.id());
            }
            Err(e) => prop_assert_eq!(field_of(&e), "pkcs11.uri"),
        }
    }

    #[test]
    fn display_names_and_reasons(raw in hostile_string()) {
        let got = display_name(&raw);
        prop_assert_eq!(verdict(&got), if display_name_ok(&raw) { Ok(()) } else { Err("display_name") });
        if let Ok(name) = got {
            prop_assert_eq!(name, raw.as_str());
        }
        let got = reason(&raw);
        prop_assert_eq!(verdict(&got), if reason_ok(&raw) { Ok(()) } else { Err("reason") });
        if let Ok(r) = got {
            prop_assert_eq!(r, raw.as_str());
        }
    }

    #[test]
    fn batch_sizes(n in prop_oneof![0usize..2048, Just(usize::MAX)]) {
        let expected = if (1..=1000).contains(&n) { Ok(()) } else { Err("items") };
        prop_assert_eq!(verdict(&batch_size(n)), expected);
    }
}

/// The models accept and refuse what the documentation's own examples say, so that a model
/// that drifted (refusing everything, say) cannot make the properties vacuous.
#[test]
fn the_models_agree_with_the_documented_examples() {
    let key = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let role = "arn:aws:iam::111122223333:role/keyward-access";
    assert_eq!(aws_model(key, "", ""), Ok(()));
    assert_eq!(aws_model(key, role, "keyward-acme-7f3a"), Ok(()));
    assert_eq!(
        aws_model(
            "arn:aws-us-gov:kms:us-gov-west-1:111122223333:alias/k",
            "",
            ""
        ),
        Ok(())
    );
    assert_eq!(
        aws_model("arn:aws:kms:eu-west-1:111122223333:alias/aws/s3", "", ""),
        Err("aws_kms")
    );
    assert_eq!(aws_model(key, role, "x"), Err("aws_kms"));
    assert_eq!(aws_model(key, role, ""), Err("aws_kms.external_id"));
    assert!(tenant_ok("acme-prod.eu_1") && !tenant_ok("-acme") && !tenant_ok("Acme"));
    assert!(scope_ok("") && scope_ok(&"é".repeat(64)) && !scope_ok(&"é".repeat(65)));
    assert!(display_name_ok(&"é".repeat(256)) && !display_name_ok("a\u{85}b"));
    assert!(!reason_ok(" \u{3000}") && reason_ok("incident 7"));
    let attr = |name, text: &str| Attribute {
        name,
        text: text.to_owned(),
        decoded: Some(text.as_bytes().to_vec()),
    };
    assert_eq!(
        pkcs11_model(&[attr("object", "tenant-kek"), attr("token", "keyward")]),
        Ok("pkcs11:token=keyward;object=tenant-kek".to_owned())
    );
    assert_eq!(pkcs11_model(&[attr("token", "keyward")]), Err(()));
}

/// Inputs found by fuzzing, kept as regressions.
#[test]
fn regressions() {
    // Found by `aws_key_references`: a 3000-byte key ARN with a role and a 3000-byte external
    // id gave an error message that repeated the whole input (over 6 KB, twice the input).
    // Now each field is bounded first (AWS's own limits) and only the bad part is echoed.
    let long = pb::AwsKmsKey {
        key_arn: "a".repeat(3000),
        role_arn: "arn:aws:iam::000000000000:role/A_a=".into(),
        external_id: "a".repeat(3000),
    };
    assert_eq!(field_of(&aws_key_ref(long).unwrap_err()), "aws_kms.key_arn");
    let bad_region = pb::AwsKmsKey {
        key_arn: format!("arn:aws:kms:{}:111122223333:key/x", "r".repeat(2000)),
        role_arn: String::new(),
        external_id: String::new(),
    };
    let e = aws_key_ref(bad_region).unwrap_err();
    assert_eq!(field_of(&e), "aws_kms");
    assert!(e.to_string().len() < 2700, "{}", e.to_string().len());
    // A key ARN carrying its own `?role_arn=…&external_id=…` query would be read as if the
    // role fields had been set: INVALID_ARGUMENT naming aws_kms.key_arn.
    let smuggled = pb::AwsKmsKey {
        key_arn: "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab?role_arn=arn:aws:iam::111122223333:role/x&external_id=abc".into(),
        role_arn: String::new(),
        external_id: String::new(),
    };
    assert_eq!(
        field_of(&aws_key_ref(smuggled).unwrap_err()),
        "aws_kms.key_arn"
    );
    // Empty, NUL and huge values.
    assert_eq!(field_of(&tenant_id("").unwrap_err()), "tenant_id");
    assert_eq!(field_of(&scope("a\0b").unwrap_err()), "scope");
    assert_eq!(
        field_of(&context(HashMap::from([(String::new(), String::new())])).unwrap_err()),
        "encryption_context"
    );
    assert_eq!(field_of(&pkcs11_key_ref("").unwrap_err()), "pkcs11.uri");
    assert_eq!(field_of(&reason(&"r".repeat(1025)).unwrap_err()), "reason");
}
