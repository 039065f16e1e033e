//! A customer key in a PKCS#11 HSM (the real SoftHSM2) through the real binary: onboarding
//! validation, round trips, and revocation by disabling or destroying the key in the HSM,
//! noticed by the key-state monitor within its interval. Runs in a child process with a private token
//! (`SoftHsm::isolate`), whose SOFTHSM2_CONF the server is given too.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod support;

use keyward_proto::v1 as pb;
use keyward_test_support::pkcs11::{KeySpec, SoftHsm, TOKEN_LABEL};
use support::{Server, assert_status};
use tonic::Code;

fn register(tenant: &str, uri: &str) -> pb::RegisterKeyRequest {
    pb::RegisterKeyRequest {
        tenant_id: tenant.into(),
        key: Some(pb::register_key_request::Key::Pkcs11(pb::Pkcs11Key {
            uri: uri.into(),
        })),
    }
}

#[tokio::test]
async fn hsm_key_onboarding_round_trip_and_revocation() {
    let Some(hsm) = SoftHsm::isolate("hsm_key_onboarding_round_trip_and_revocation") else {
        return;
    };
    hsm.create_key("kek");
    hsm.create_key_with(
        "exportable",
        KeySpec {
            extractable: true,
            ..KeySpec::default()
        },
    );
    let conf = hsm.dir().join("softhsm2.conf");
    let pin = hsm.dir().join("pin");
    let module = hsm.module().to_str().unwrap().to_owned();
    let server = Server::start(&[
        ("SOFTHSM2_CONF", conf.to_str().unwrap()),
        ("KEYWARD_PKCS11__MODULE_PATH", &module),
        ("KEYWARD_PKCS11__TOKEN_LABEL", TOKEN_LABEL),
        ("KEYWARD_PKCS11__PIN_FILE", pin.to_str().unwrap()),
        ("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "1"),
    ]);
    let mut tenants = server.tenants().await;
    support::create_tenant(&mut tenants, "acme").await;

    // Onboarding: a malformed URI names the field; an extractable key is refused with the
    // fix; a key that does not exist is not found.
    let status = tenants
        .register_key(register("acme", "pkcs11:token=keyward-test;slot-id=1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("pkcs11.uri"), "{status:?}");
    let status = tenants
        .register_key(register(
            "acme",
            &format!("pkcs11:token={TOKEN_LABEL};object=exportable"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_status(
        tenants
            .register_key(register(
                "acme",
                &format!("pkcs11:token={TOKEN_LABEL};object=no-such-key"),
            ))
            .await,
        Code::FailedPrecondition,
        "KEY_NOT_FOUND",
    );

    let tenant = tenants
        .register_key(register(
            "acme",
            &format!("pkcs11:token={TOKEN_LABEL};object=kek"),
        ))
        .await
        .unwrap()
        .into_inner();
    let binding = tenant.active_key.unwrap();
    assert_eq!(binding.provider(), pb::ProviderKind::Pkcs11);

    let decrypt = support::round_trip(&server, "acme", b"held in an HSM").await;

    // The customer disables the key in the HSM: the monitor's canary is refused within its
    // interval and the tenant is revoked (cached keys purged), although the cache TTL is 300 s.
    hsm.disable_key(&SoftHsm::key_ref("kek"));
    support::assert_revoked_after_disable(&server, decrypt).await;

    // Another tenant's key object is destroyed (crypto-shredding): refused and revoked the same
    // way within the monitor's interval (PKCS#11 cannot tell destroyed from removed, and a key
    // object can come back from a token backup, so this is `revoked`, not `destroyed`).
    hsm.create_key("kek-2");
    support::create_tenant(&mut tenants, "globex").await;
    tenants
        .register_key(register(
            "globex",
            &format!("pkcs11:token={TOKEN_LABEL};object=kek-2"),
        ))
        .await
        .unwrap();
    let decrypt = support::round_trip(&server, "globex", b"shredded soon").await;
    hsm.destroy_key(&SoftHsm::key_ref("kek-2"));
    support::assert_revoked_after_disable(&server, decrypt).await;
}
