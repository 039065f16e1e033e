//! A customer key in Google Cloud KMS through the real binary, with the server's unmodified
//! Cloud KMS client pointed at the test double (anonymous credentials, http endpoint; there is
//! no Cloud KMS emulator): onboarding validation and remediation, round trips, and revocation by
//! disabling the key's primary version, noticed by the key-state monitor within its interval.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod support;

use keyward_audit::{AuditEvent, KeyState as AuditKeyState};
use keyward_proto::v1 as pb;
use keyward_store::Store as _;
use keyward_store::sqlite::SqliteStore;
use keyward_test_support::gcp::KmsDouble;
use support::Server;
use tonic::Code;
use tonic_types::StatusExt as _;

const MEMBER: &str = "serviceAccount:keyward@keyward-test.iam.gserviceaccount.com";

fn register(tenant: &str, crypto_key: &str) -> pb::RegisterKeyRequest {
    pb::RegisterKeyRequest {
        tenant_id: tenant.into(),
        key: Some(pb::register_key_request::Key::GcpKms(pb::GcpKmsKey {
            crypto_key: crypto_key.into(),
        })),
    }
}

#[tokio::test]
async fn gcp_key_onboarding_round_trip_and_revocation() {
    let kms = KmsDouble::start();
    let kek = kms.create_key("kek");
    let denied = kms.create_key("denied");
    kms.set_denied(&denied, true);
    let endpoint = kms.endpoint();
    let server = Server::start(&[
        ("KEYWARD_GCP__ENDPOINT", &endpoint),
        ("KEYWARD_GCP__CREDENTIALS__KIND", "anonymous"),
        ("KEYWARD_GCP__MEMBER", MEMBER),
        ("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "1"),
    ]);
    let mut tenants = server.tenants().await;
    support::create_tenant(&mut tenants, "acme").await;

    // Onboarding: a malformed name and a version name are invalid arguments naming the field
    // and the expected form; nothing reaches Cloud KMS for them.
    for bad in [
        "projects/keyward-test/locations/global/keyRings/keyward",
        "projects/keyward-test/locations/global/keyRings/keyward/cryptoKeys/kek/cryptoKeyVersions/1",
        "",
    ] {
        let status = tenants
            .register_key(register("acme", bad))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status:?}");
        assert!(
            status.message().contains("gcp_kms.crypto_key"),
            "{status:?}"
        );
        if !bad.is_empty() {
            assert!(
                status.message().contains(keyward_kms_gcp::EXPECTED_FORM),
                "{status:?}"
            );
        }
    }
    assert_eq!(kms.calls(&kek, "get") + kms.calls(&kek, "encrypt"), 0);

    // A key Keyward may not use: refused, with the exact gcloud command that grants access.
    let status = tenants
        .register_key(register("acme", denied.id()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "KEY_REFUSED", "{status:?}");
    let remediation = info.metadata.get("remediation").unwrap();
    assert!(
        remediation.contains(&format!(
            "gcloud kms keys add-iam-policy-binding denied --keyring keyward --location global \
             --project keyward-test --member {MEMBER} --role roles/cloudkms.cryptoKeyEncrypterDecrypter"
        )),
        "{remediation}"
    );
    // A key that does not exist: with Keyward's roles bound on keys only (onboarding step 3),
    // Cloud KMS answers PERMISSION_DENIED, so the customer sees KEY_REFUSED, and the remediation
    // says first how to check that the key exists.
    let status = tenants
        .register_key(register("acme", &KmsDouble::key_name("no-such-key")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "KEY_REFUSED", "{status:?}");
    let remediation = info.metadata.get("remediation").unwrap();
    assert!(
        remediation.contains(
            "gcloud kms keys describe no-such-key --keyring keyward --location global --project keyward-test"
        ),
        "{remediation}"
    );

    let tenant = tenants
        .register_key(register("acme", kek.id()))
        .await
        .unwrap()
        .into_inner();
    let binding = tenant.active_key.unwrap();
    assert_eq!(binding.provider(), pb::ProviderKind::GcpKms);
    assert!(kms.calls(&kek, "encrypt") >= 1 && kms.calls(&kek, "decrypt") >= 1);

    let decrypt = support::round_trip(&server, "acme", b"held under a Cloud KMS key").await;

    // The customer disables the primary version: the monitor's canary is refused
    // (FAILED_PRECONDITION) within its interval and the tenant is revoked, although the cache
    // TTL is 300 s.
    kms.disable_primary(&kek);
    support::assert_revoked_after_disable(&server, decrypt).await;

    // The revocation is in the audit log, with the provider's classified reason.
    let store = SqliteStore::open_read_only(&server.database())
        .await
        .unwrap();
    let records = store
        .audit_records(&keyward_store::AuditQuery::default())
        .await
        .unwrap();
    let revoked = records
        .iter()
        .find_map(|r| match r.event() {
            AuditEvent::RevocationStateChanged(t) if t.to == AuditKeyState::Revoked => Some(t),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no revocation record"));
    assert_eq!(revoked.tenant.as_str(), "acme");
    assert!(
        revoked.reason.contains("FAILED_PRECONDITION"),
        "{}",
        revoked.reason
    );
}
