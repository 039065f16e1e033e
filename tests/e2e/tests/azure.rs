//! A customer key in Azure Key Vault through the real binary, against the Key Vault test double
//! (`keyward_test_support::azure`: HTTPS on 127.0.0.1 with Key Vault's bearer challenge, an
//! Entra ID token endpoint, real RSA-OAEP-256; there is no Key Vault emulator). The server is
//! configured only through `[azure]` (`KEYWARD_AZURE__*`): client-secret credential from a file,
//! the double's CA as an extra trusted CA, and its host names resolved to 127.0.0.1. Covers
//! onboarding validation, the role-assignment remediation of a 403, a round trip, and revocation
//! by disabling or (soft-)deleting the key, noticed by the key-state monitor within its interval,
//! and restoration after re-enabling or recovering it.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod support;

use keyward_kms_azure::VaultKind;
use keyward_proto::v1 as pb;
use keyward_store::sqlite::SqliteStore;
use keyward_test_support::azure::{CLIENT_ID, Call, KeyVaultDouble, LOGIN_HOST, TENANT_ID};
use support::Server;
use tonic::Code;
use tonic_types::StatusExt;

fn register(tenant: &str, key_id: &str) -> pb::RegisterKeyRequest {
    pb::RegisterKeyRequest {
        tenant_id: tenant.into(),
        key: Some(pb::register_key_request::Key::AzureKeyVault(
            pb::AzureKeyVaultKey {
                key_id: key_id.into(),
            },
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_key_onboarding_round_trip_and_revocation() {
    let double = KeyVaultDouble::start(VaultKind::KeyVault).await;
    double.create_rsa_key("kek");
    double.create_rsa_key("not-granted");
    double.deny("not-granted", true);

    let secret_file = double.dir().join("client-secret");
    let resolve = format!(
        "{{\"{}\"=\"{addr}\",\"{LOGIN_HOST}\"=\"{addr}\"}}",
        double.vault_host(),
        addr = double.addr()
    );
    let authority = format!("https://{LOGIN_HOST}");
    let server = Server::start(&[
        ("KEYWARD_AZURE__CREDENTIAL__KIND", "client-secret"),
        ("KEYWARD_AZURE__CREDENTIAL__TENANT_ID", TENANT_ID),
        ("KEYWARD_AZURE__CREDENTIAL__CLIENT_ID", CLIENT_ID),
        (
            "KEYWARD_AZURE__CREDENTIAL__SECRET_FILE",
            secret_file.to_str().unwrap(),
        ),
        ("KEYWARD_AZURE__AUTHORITY_HOST", &authority),
        ("KEYWARD_AZURE__CA_FILE", double.ca_file().to_str().unwrap()),
        ("KEYWARD_AZURE__RESOLVE", &resolve),
        ("KEYWARD_AZURE__MAX_ATTEMPTS", "1"),
        ("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "1"),
    ]);
    let mut tenants = server.tenants().await;
    support::create_tenant(&mut tenants, "acme").await;

    // A malformed key id: INVALID_ARGUMENT naming the field and the expected form.
    let status = tenants
        .register_key(register(
            "acme",
            "https://kwtest.vault.azure.net/secrets/kek",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("azure_key_vault.key_id"),
        "{status:?}"
    );
    let violations = status.get_details_bad_request().unwrap().field_violations;
    assert!(
        violations[0]
            .description
            .contains("https://{vault}.vault.azure.net/keys/{name}[/{version}]"),
        "{violations:?}"
    );

    // No role assignment on the key: refused, and the error says which command fixes it.
    let status = tenants
        .register_key(register("acme", &double.key_id("not-granted")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "KEY_REFUSED", "{status:?}");
    let remediation = &info.metadata["remediation"];
    assert!(
        remediation.contains(&format!(
            "az role assignment create --role \"Key Vault Crypto Service Encryption User\" --assignee {CLIENT_ID} --scope"
        )) && remediation.contains("/keys/not-granted"),
        "{remediation}"
    );

    // The real key: registered, then a round trip.
    let key_id = double.key_id("kek");
    let tenant = tenants
        .register_key(register("acme", &key_id))
        .await
        .unwrap()
        .into_inner();
    let binding = tenant.active_key.unwrap();
    assert_eq!(binding.provider(), pb::ProviderKind::AzureKeyVault);
    assert_eq!(binding.key_ref, key_id);
    assert!(
        double.calls(Call::UnwrapKey) >= 1,
        "the registration canary unwrapped at the vault"
    );

    let decrypt = support::round_trip(&server, "acme", b"held in a key vault").await;

    // The customer disables the key in the vault: the monitor's canary is refused within its
    // interval and the tenant is revoked (cached keys purged), although the cache TTL is 300 s.
    double.set_enabled("kek", false);
    support::assert_revoked_after_disable(&server, decrypt.clone()).await;

    // Re-enabled: the monitor restores the tenant. Then the key is deleted (soft-delete): revoked
    // again, not destroyed, and recovering the key restores the tenant with its data.
    double.set_enabled("kek", true);
    support::eventually_decrypts(&server, &decrypt).await;
    double.delete("kek");
    support::assert_revoked_after_disable(&server, decrypt.clone()).await;
    double.recover("kek");
    support::eventually_decrypts(&server, &decrypt).await;
    let store = SqliteStore::open_read_only(&server.database())
        .await
        .unwrap();
    let types = support::audit_types_since(&store, 0).await;
    assert!(
        types.iter().any(|t| t == "revocation_state_changed"),
        "{types:?}"
    );
    assert!(types.iter().any(|t| t == "keys_purged"), "{types:?}");
    assert!(types.iter().any(|t| t == "restored"), "{types:?}");
}
