//! The worked example of docs/exit.md ("Open one envelope, by hand"), value by value: the same
//! hex as the document, checked against the implementation, so that the document stays true. The
//! values were computed independently with Python's `cryptography` from the document's rules.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::os::unix::fs::PermissionsExt as _;

use keyward_envelope::{
    EncryptionContext, KeyId, Sealer, SecretKey, Suite, TenantId, WrappedKey, dek_wrap_aad, parse,
    unwrap_key,
};
use keyward_kms::{KeyProvider as _, KeyRef, ProviderKind, local::LocalProvider};
use keyward_open::{
    ExportInfo, ExportWriter, ProviderSettings,
    format::{AuditRefs, DataKeyEntry, TenantKeyEntry, tenant_key_context},
    open_envelope,
};

const LOCAL_KEK: &str = "8018c1a4e7377d8fb029e5aec7e3568d78a5604053d764540c9f45002cf37969";
const TENANT_KEY_ID: &str = "00112233445566778899aabbccddeeff";
const WRAP_AAD: &str = "0003000f6b6579776172643a707572706f7365000a74656e616e742d6b6579000e6b6579776172643a74656e616e74000461636d6500156b6579776172643a74656e616e742d6b65792d696400203030313132323333343435353636373738383939616162626363646465656666";
const WRAPPED_TENANT_KEY: &str = "01000102030405060708090a0b94958433f642faad9e2ee0d51885113e709260032f8d50f7157d9f13a2d4455c197766b44d3944403d087ba32171df0c";
const TENANT_KEY: &str = "5133a963306b8c7e3b6f2eea13d72f29195635b0df43499c43e86e4107bfe990";
const DEK_ID: &str = "0f0e0d0c0b0a09080706050403020100";
const DEK_AAD: &str = "0004000e6b6579776172643a64656b2d696400203066306530643063306230613039303830373036303530343033303230313030000f6b6579776172643a707572706f7365000364656b000d6b6579776172643a73636f70650007636f6e762d3432000e6b6579776172643a74656e616e74000461636d65";
const WRAPPED_DEK: &str = "010c0d0e0f1011121314151617f99e96f293b384b7dbfee64f21592c963e2216a7db8b517125d84de592d159a43ff715bdd1b94b1a5c4ce953425892ec";
const DEK: &str = "b2c3f67e71a687f993a6d72e29fc792373196a5593fae7b1e96474c197bba2de";
const SALT: &str = "10f32ec96eafaf34d47ccf9976f13dcec740838acd3d2b1c33143c51eda675a4";
const CONTEXT: &str = "0001000c636f6e766572736174696f6e00023432";
const ENVELOPE: &str = "4b570100020461636d650f0e0d0c0b0a0908070605040302010010f32ec96eafaf34d47ccf9976f13dcec740838acd3d2b1c33143c51eda675a4352b768a90cd18d1ce8245c53f87d03460a1dce8bfa5475ff21187aa3f7d4ec6323ec4c260a60345319c333e79832e04f02d4b4f7029747392d0e37dd55004b7e674a0763d7b97";
const PLAINTEXT: &[u8] = b"Hello from the exit kit";

fn key(hex_text: &str) -> SecretKey {
    SecretKey::try_from_slice(&hex::decode(hex_text).unwrap()).unwrap()
}

fn bytes(hex_text: &str) -> Vec<u8> {
    hex::decode(hex_text).unwrap()
}

fn context() -> EncryptionContext {
    EncryptionContext::try_from_map([("conversation".into(), "42".into())].into()).unwrap()
}

#[test]
fn every_step_of_the_worked_example_is_what_the_document_says() {
    let tenant: TenantId = "acme".parse().unwrap();
    let tk_id: KeyId = TENANT_KEY_ID.parse().unwrap();
    let dek_id: KeyId = DEK_ID.parse().unwrap();
    // Step 2: the tenant key's wrap context and its AAD.
    assert_eq!(tenant_key_context(&tenant, &tk_id).aad(), bytes(WRAP_AAD));
    // Step 3 (the local provider's wrap): the tenant key.
    let tk = unwrap_key(
        &key(LOCAL_KEK),
        &WrappedKey::new(bytes(WRAPPED_TENANT_KEY)),
        &bytes(WRAP_AAD),
    )
    .unwrap();
    assert_eq!(tk.expose_secret()[..], bytes(TENANT_KEY)[..]);
    // Step 4: the data key's AAD, and the data key.
    assert_eq!(
        dek_wrap_aad(&tenant, "conv-42", &dek_id).unwrap(),
        bytes(DEK_AAD)
    );
    let dek = unwrap_key(&tk, &WrappedKey::new(bytes(WRAPPED_DEK)), &bytes(DEK_AAD)).unwrap();
    assert_eq!(dek.expose_secret()[..], bytes(DEK)[..]);
    // Step 5: the envelope, byte for byte from its inputs, and opened.
    assert_eq!(context().canonical_bytes(), bytes(CONTEXT));
    let salt: [u8; 32] = bytes(SALT).try_into().unwrap();
    let sealed = Sealer::new(&dek, &tenant, &dek_id)
        .suite(Suite::Aes256GcmHkdfExpandSha512Committing)
        .fixed_salt_for_test_vectors(&salt)
        .seal(&context(), PLAINTEXT)
        .unwrap();
    assert_eq!(hex::encode(&sealed), ENVELOPE);
    let envelope = bytes(ENVELOPE);
    let parsed = parse(&envelope).unwrap();
    assert_eq!(parsed.header().dek_id(), &dek_id);
    assert_eq!(&parsed.open(&dek, &context()).unwrap()[..], PLAINTEXT);
}

/// The same values as an export, opened by keyward-open through the local provider (the example
/// KEK as a key file).
#[tokio::test]
async fn keyward_open_opens_the_worked_example_from_an_export() {
    let temp = tempfile::tempdir().unwrap();
    let kms_dir = temp.path().join("local-kms");
    std::fs::create_dir(&kms_dir).unwrap();
    std::fs::set_permissions(&kms_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let key_file = kms_dir.join("example.key");
    std::fs::write(&key_file, bytes(LOCAL_KEK)).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let tenant: TenantId = "acme".parse().unwrap();
    let tk_id: KeyId = TENANT_KEY_ID.parse().unwrap();
    let dek_id: KeyId = DEK_ID.parse().unwrap();
    // The local provider unwraps the example's tenant key as step 3 does by hand.
    let tk = LocalProvider::open_existing(&kms_dir)
        .unwrap()
        .unwrap(
            &KeyRef::new(ProviderKind::Local, "example"),
            &WrappedKey::new(bytes(WRAPPED_TENANT_KEY)),
            &tenant_key_context(&tenant, &tk_id),
        )
        .await
        .unwrap();
    assert_eq!(tk.expose_secret()[..], bytes(TENANT_KEY)[..]);

    let dir = temp.path().join("export");
    let mut writer = ExportWriter::create(&dir, &tenant).unwrap();
    writer.tenant_key(TenantKeyEntry::new(
        &tenant,
        &tk_id,
        1,
        ProviderKind::Local,
        "example",
        1,
        "active",
        &bytes(WRAPPED_TENANT_KEY),
    ));
    writer
        .data_key(
            &DataKeyEntry::new(
                &tenant,
                &dek_id,
                &tk_id,
                "conv-42",
                2,
                None,
                &bytes(WRAPPED_DEK),
            )
            .unwrap(),
        )
        .unwrap();
    writer
        .finish(ExportInfo {
            exported_at: "2026-12-01T10:00:00.000Z".to_owned(),
            exported_at_ms: 1,
            audit: AuditRefs {
                head_seq: 0,
                head_hash: "00".repeat(32),
                export_record_seq: 1,
            },
        })
        .unwrap();
    let plaintext = open_envelope(
        &dir,
        &bytes(ENVELOPE),
        &context(),
        &ProviderSettings {
            local_kms_dir: Some(kms_dir),
            ..ProviderSettings::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(&plaintext[..], PLAINTEXT);
}
