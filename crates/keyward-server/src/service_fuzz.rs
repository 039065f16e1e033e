//! Fuzz targets for the request-to-domain conversions of [`super`] (tenant ids, scopes,
//! encryption contexts, key references: AWS ARNs and PKCS#11 URIs, display names, reasons,
//! batch sizes): arbitrary strings and maps give `Ok` or `InvalidArgument` naming the field,
//! never a panic, and an accepted value is exactly what the request said.
//!
//! Bounded in CI: `PROPTEST_CASES` cases per target (default 512, about a second each in a debug
//! build);
//! long runs: `scripts/fuzz`. proptest saves a failing case under
//! `crates/keyward-server/proptest-regressions/service_fuzz.txt` (committed, replayed first on
//! every run); such a case is also added to `regressions()`.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

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

/// Strings a caller may send: anything printable, control characters, long runs, and the
/// separators the key-reference syntaxes use.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        ".{0,40}",
        "[a-z0-9._-]{0,70}",
        "[ -~]{0,20}[\\x00-\\x1f\\x7f][ -~]{0,20}",
        (0usize..3000).prop_map(|n| "a".repeat(n)),
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
        1 => Just(String::new()),
    ]
}

fn arn_like() -> impl Strategy<Value = String> {
    let partition = prop_oneof![Just("aws"), Just("aws-cn"), Just("aws-us-gov"), Just("gcp")];
    let region = prop_oneof!["[a-z]{2}-[a-z]{4,9}-[0-9]", "[a-z0-9-]{0,12}"];
    let account = prop_oneof!["[0-9]{12}", "[0-9]{0,14}"];
    let resource = prop_oneof![
        "key/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "key/mrk-[0-9a-f]{32}",
        "alias/[a-zA-Z0-9/_-]{0,30}",
        "alias/aws/[a-z]{1,8}",
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
        "arn:aws:iam::[0-9]{0,13}:[a-z]{0,6}/[ -~]{0,20}",
        hostile_string(),
    ]
}

fn external_id_like() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-zA-Z0-9_+=,.@:/-]{1,40}",
        hostile_string(),
    ]
}

fn pkcs11_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "pkcs11:token=[a-z0-9]{1,10};object=[a-z0-9%]{1,12}",
        "pkcs11:token=[ -~]{0,10};object=[ -~]{0,10};id=[%0-9a-f]{0,12}",
        "(pkcs11:)?[a-z=;%?]{0,30}",
        hostile_string(),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn tenant_ids(raw in hostile_string()) {
        match tenant_id(&raw) {
            Ok(t) => prop_assert_eq!(t.as_str(), raw.as_str()),
            Err(e) => prop_assert_eq!(field_of(&e), "tenant_id"),
        }
    }

    #[test]
    fn scopes(raw in hostile_string()) {
        match scope(&raw) {
            Ok(s) if raw.is_empty() => prop_assert_eq!(s, Scope::default_scope()),
            Ok(s) => prop_assert_eq!(s.as_str(), raw.as_str()),
            Err(e) => prop_assert_eq!(field_of(&e), "scope"),
        }
    }

    #[test]
    fn encryption_contexts(
        raw in prop_oneof![0usize..6, 60usize..70].prop_flat_map(|n| {
            proptest::collection::vec((context_string(), context_string()), n)
                .prop_map(|pairs| pairs.into_iter().collect::<HashMap<String, String>>())
        }),
    ) {
        match context(raw.clone()) {
            Ok(ctx) => {
                prop_assert_eq!(ctx.len(), raw.len());
                for (k, v) in &raw {
                    prop_assert_eq!(ctx.get(k), Some(v.as_str()));
                }
            }
            Err(e) => prop_assert_eq!(field_of(&e), "encryption_context"),
        }
    }

    /// An accepted AWS key reference has exactly the ARN, role and external id of the
    /// request: nothing can be smuggled from one field into another.
    #[test]
    fn aws_key_references(
        key_arn in prop_oneof![arn_like(), hostile_string()],
        role_arn in role_like(),
        external_id in external_id_like(),
    ) {
        let request = pb::AwsKmsKey {
            key_arn: key_arn.clone(),
            role_arn: role_arn.clone(),
            external_id: external_id.clone(),
        };
        match aws_key_ref(request) {
            Ok(kek) => {
                prop_assert_eq!(kek.kind(), DomainProviderKind::AwsKms);
                #[cfg(feature = "aws")]
                {
                    let parsed: keyward_kms_aws::AwsKeyRef = kek.id().parse().unwrap();
                    prop_assert_eq!(parsed.arn(), key_arn);
                    match parsed.role {
                        Some(role) => {
                            prop_assert_eq!(role.role_arn, role_arn);
                            prop_assert_eq!(role.external_id, external_id);
                        }
                        None => {
                            prop_assert!(role_arn.is_empty() && external_id.is_empty());
                        }
                    }
                }
                #[cfg(not(feature = "aws"))]
                prop_assert!(kek.id().starts_with(key_arn.as_str()));
            }
            Err(e) => {
                let field = field_of(&e);
                prop_assert!(field.starts_with("aws_kms"), "field {}", field);
            }
        }
    }

    #[test]
    fn pkcs11_key_references(uri in pkcs11_like()) {
        match pkcs11_key_ref(&uri) {
            Ok(kek) => {
                prop_assert_eq!(kek.kind(), DomainProviderKind::Pkcs11);
                prop_assert!(!kek.id().is_empty());
                #[cfg(feature = "pkcs11")]
                {
                    // The stored reference is canonical: parsing it again gives itself.
                    let again = pkcs11_key_ref(kek.id()).unwrap();
                    prop_assert_eq!(again.id(), kek.id());
                }
            }
            Err(e) => prop_assert_eq!(field_of(&e), "pkcs11.uri"),
        }
    }

    #[test]
    fn display_names_and_reasons(raw in hostile_string()) {
        match display_name(&raw) {
            Ok(name) => prop_assert_eq!(name, raw.as_str()),
            Err(e) => prop_assert_eq!(field_of(&e), "display_name"),
        }
        match reason(&raw) {
            Ok(r) => prop_assert_eq!(r, raw.as_str()),
            Err(e) => prop_assert_eq!(field_of(&e), "reason"),
        }
    }

    #[test]
    fn batch_sizes(n in prop_oneof![0usize..2048, Just(usize::MAX)]) {
        match batch_size(n) {
            Ok(()) => prop_assert!((1..=MAX_BATCH_ITEMS).contains(&n)),
            Err(e) => {
                prop_assert_eq!(field_of(&e), "items");
                prop_assert!(n == 0 || n > MAX_BATCH_ITEMS);
            }
        }
    }
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
    #[cfg(feature = "aws")]
    {
        let bad_region = pb::AwsKmsKey {
            key_arn: format!("arn:aws:kms:{}:111122223333:key/x", "r".repeat(2000)),
            role_arn: String::new(),
            external_id: String::new(),
        };
        let e = aws_key_ref(bad_region).unwrap_err();
        assert_eq!(field_of(&e), "aws_kms");
        assert!(e.to_string().len() < 2700, "{}", e.to_string().len());
    }
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
