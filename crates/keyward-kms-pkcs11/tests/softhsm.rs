//! The PKCS#11 provider against a real SoftHSM2 token: revocation by destroying or disabling
//! the key, logout and session loss, onboarding validation, the session pool.
//! Each test runs in its own child process with a private token (`SoftHsm::isolate`).
#![allow(clippy::unwrap_used, reason = "test code fails loudly on purpose")]

use std::sync::Arc;

use keyward_kms::{
    ErrorKind, KeyProvider, KeyRef, KeyState, ProviderKind, Purpose, SecretKey, WrapContext,
};
use keyward_kms_pkcs11::{Pkcs11Config, Pkcs11Provider, WRAPPED_LEN};
use keyward_test_support::pkcs11::{KeySpec, SoftHsm, TOKEN_LABEL};

fn ctx() -> WrapContext {
    WrapContext::new(
        &"acme".try_into().unwrap(),
        &keyward_envelope::KeyId::generate().unwrap(),
        Purpose::TenantKey,
    )
}

fn key() -> SecretKey {
    SecretKey::generate().unwrap()
}

/// A provider on the token, a new KEK, and one tenant key wrapped under it.
struct Wrapped {
    p: Pkcs11Provider,
    kek: KeyRef,
    c: WrapContext,
    k: SecretKey,
    w: keyward_kms::WrappedKey,
}

async fn wrapped(hsm: &SoftHsm) -> Wrapped {
    let p = hsm.provider().await;
    let kek = hsm.create_key("kek");
    let c = ctx();
    let k = key();
    let w = p.wrap(&kek, &k, &c).await.unwrap();
    Wrapped { p, kek, c, k, w }
}

#[tokio::test]
async fn wrapped_key_layout_is_version_iv_ciphertext_tag() {
    let Some(hsm) = SoftHsm::isolate("wrapped_key_layout_is_version_iv_ciphertext_tag") else {
        return;
    };
    let Wrapped { p, kek, c, k, w } = wrapped(&hsm).await;
    assert_eq!(w.as_bytes().len(), WRAPPED_LEN);
    assert_eq!(w.as_bytes()[0], 0x01);
    let back = p.unwrap(&kek, &w, &c).await.unwrap();
    assert_eq!(back.expose_secret(), k.expose_secret());
    // A flipped tag bit fails the token's GCM check: InvalidCiphertext, session kept.
    let mut bytes = w.as_bytes().to_vec();
    *bytes.last_mut().unwrap() ^= 1;
    let e = p
        .unwrap(&kek, &keyward_kms::WrappedKey::new(bytes), &c)
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidCiphertext, "{e}");
    p.unwrap(&kek, &w, &c).await.unwrap();
    let caps = p.capabilities();
    assert!(caps.reports_key_state && caps.production_grade && !caps.generates_keys);
    assert_eq!(p.kind(), ProviderKind::Pkcs11);
}

/// Destroying the key object (crypto-shredding) is a refusal on wrap, unwrap and describe: a
/// revocation, not the terminal `destroyed` state, since PKCS#11 cannot tell a destroyed key
/// from a removed one and a key object can come back from a token backup. Onboarding the same
/// reference is `NotFound`.
#[tokio::test]
async fn destroyed_key_is_refused() {
    let Some(hsm) = SoftHsm::isolate("destroyed_key_is_refused") else {
        return;
    };
    let p = hsm.provider().await;
    let kek = p.canonicalize(&hsm.create_key("kek")).await.unwrap();
    let c = ctx();
    let w = p.wrap(&kek, &key(), &c).await.unwrap();
    hsm.destroy_key(&kek);
    let e = p.unwrap(&kek, &w, &c).await.map(drop).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(e.is_revocation_signal());
    assert!(e.message().contains("destroyed or removed"), "{e}");
    assert!(e.remediation().unwrap().contains("backup"), "{e:?}");
    let e = p.wrap(&kek, &key(), &c).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    let e = p.describe(&kek).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    let e = p.canonicalize(&kek).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.remediation().unwrap().contains("pkcs11-tool"), "{e:?}");
}

#[tokio::test]
async fn disabled_key_is_refused_with_remediation_and_described_disabled() {
    let Some(hsm) =
        SoftHsm::isolate("disabled_key_is_refused_with_remediation_and_described_disabled")
    else {
        return;
    };
    let p = hsm.provider().await;
    let kek = hsm.create_key("kek");
    let c = ctx();
    let w = p.wrap(&kek, &key(), &c).await.unwrap();
    hsm.disable_key(&kek);
    let e = p.unwrap(&kek, &w, &c).await.map(drop).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(e.is_revocation_signal());
    assert!(e.remediation().unwrap().contains("CKA_DECRYPT"), "{e:?}");
    let s = p.describe(&kek).await.unwrap();
    assert_eq!(s.state, KeyState::Disabled);
    hsm.enable_key(&kek);
    assert_eq!(p.describe(&kek).await.unwrap().state, KeyState::Enabled);
    p.unwrap(&kek, &w, &c).await.unwrap();
}

/// C_Logout (which logs every session of the application out of the token) registers as a
/// refusal: the call that meets it is `Refused`. The provider then logs in again on the next
/// call (it holds the PIN; a customer withdrawing access for good changes the PIN, below).
#[tokio::test]
async fn logout_is_refused_then_logged_in_again() {
    let Some(hsm) = SoftHsm::isolate("logout_is_refused_then_logged_in_again") else {
        return;
    };
    let Wrapped { p, kek, c, k, w } = wrapped(&hsm).await;
    let mut logins = 1;
    assert_eq!(p.login_attempts(), logins);
    for _ in 0..2 {
        hsm.logout();
        let e = p.unwrap(&kek, &w, &c).await.map(drop).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
        assert!(e.is_revocation_signal());
        assert!(e.message().contains("logged Keyward out"), "{e}");
        assert!(
            e.remediation()
                .unwrap()
                .contains("change the token's user PIN")
        );
        assert_eq!(
            p.login_attempts(),
            logins,
            "the refused call does not log in"
        );
        let back = p.unwrap(&kek, &w, &c).await.unwrap();
        assert_eq!(back.expose_secret(), k.expose_secret());
        logins += 1;
        assert_eq!(p.login_attempts(), logins);
        // describe and wrap meet a logout the same way.
        hsm.logout();
        let e = p.describe(&kek).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
        assert_eq!(p.describe(&kek).await.unwrap().state, KeyState::Enabled);
        hsm.logout();
        let e = p.wrap(&kek, &k, &c).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
        p.wrap(&kek, &k, &c).await.unwrap();
        logins += 2;
        assert_eq!(p.login_attempts(), logins);
    }
}

/// The customer changes the user PIN and logs the token out: every call is refused. The
/// rejected PIN is tried once, never again (an HSM locks a PIN after a few wrong tries), until
/// the pin file holds a new PIN, which is tried on the next call without a restart.
#[tokio::test]
async fn a_changed_pin_is_refused_and_never_retried() {
    let Some(hsm) = SoftHsm::isolate("a_changed_pin_is_refused_and_never_retried") else {
        return;
    };
    let Wrapped { p, kek, c, k, w } = wrapped(&hsm).await;
    hsm.change_pin("new-user-pin");
    hsm.logout();
    // The logout itself, then the one login with the old PIN.
    let e = p.unwrap(&kek, &w, &c).await.map(drop).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    let e = p.unwrap(&kek, &w, &c).await.map(drop).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(e.to_string().contains("PinIncorrect"), "{e}");
    assert_eq!(p.login_attempts(), 2);
    for _ in 0..5 {
        let e = p.unwrap(&kek, &w, &c).await.map(drop).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
        assert!(e.message().contains("has not changed"), "{e}");
        assert!(
            e.remediation().unwrap().contains("no restart needed"),
            "{e:?}"
        );
        let e = p.describe(&kek).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    }
    assert_eq!(p.login_attempts(), 2, "a rejected PIN is not tried again");
    // A wrong new PIN in the file is tried once, then not again either.
    hsm.write_pin_file("still-wrong");
    for _ in 0..3 {
        let e = p.unwrap(&kek, &w, &c).await.map(drop).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    }
    assert_eq!(p.login_attempts(), 3);
    // The operator puts the current PIN in the file: the next call logs in with it.
    hsm.write_pin_file("new-user-pin");
    let back = p.unwrap(&kek, &w, &c).await.unwrap();
    assert_eq!(back.expose_secret(), k.expose_secret());
    assert_eq!(p.login_attempts(), 4);
}

/// All session handles become invalid (module finalised and re-initialised, as after an HSM
/// restart): the first call fails `Unavailable` (transient, not a revocation) and resets the
/// pool; the next call opens a new session, logs in again and succeeds.
#[tokio::test]
async fn closed_sessions_are_reset_and_the_next_call_succeeds() {
    let Some(hsm) = SoftHsm::isolate("closed_sessions_are_reset_and_the_next_call_succeeds") else {
        return;
    };
    let p = Arc::new(hsm.provider().await);
    let kek = hsm.create_key("kek");
    let c = ctx();
    let k = key();
    let w = p.wrap(&kek, &k, &c).await.unwrap();
    // Fill the pool with several sessions.
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (p, kek, w, c) = (p.clone(), kek.clone(), w.clone(), c.clone());
            tokio::spawn(async move { p.unwrap(&kek, &w, &c).await.map(drop) })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert!(p.idle_sessions() >= 1);

    hsm.restart();
    let e = p.unwrap(&kek, &w, &c).await.map(drop).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_transient() && !e.is_revocation_signal());
    let back = p.unwrap(&kek, &w, &c).await.unwrap();
    assert_eq!(back.expose_secret(), k.expose_secret());
    p.wrap(&kek, &k, &c).await.unwrap();
}

#[tokio::test]
async fn extractable_public_or_non_sensitive_keys_are_rejected_at_onboarding() {
    let Some(hsm) =
        SoftHsm::isolate("extractable_public_or_non_sensitive_keys_are_rejected_at_onboarding")
    else {
        return;
    };
    let p = hsm.provider().await;
    let extractable = hsm.create_key_with(
        "extractable",
        KeySpec {
            extractable: true,
            ..KeySpec::default()
        },
    );
    let not_sensitive = hsm.create_key_with(
        "not-sensitive",
        KeySpec {
            sensitive: false,
            ..KeySpec::default()
        },
    );
    let public = hsm.create_key_with(
        "public",
        KeySpec {
            private: false,
            ..KeySpec::default()
        },
    );
    let aes128 = hsm.create_key_with(
        "aes-128",
        KeySpec {
            len: 16,
            ..KeySpec::default()
        },
    );
    for (kek, what) in [
        (&extractable, "CKA_EXTRACTABLE=true"),
        (&not_sensitive, "CKA_SENSITIVE=false"),
        (&public, "CKA_PRIVATE=false"),
    ] {
        let e = p.canonicalize(kek).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Misconfigured, "{e}");
        assert!(e.message().contains(what), "{e}");
        let r = e.remediation().unwrap();
        assert!(
            r.contains("pkcs11-tool") && r.contains("--sensitive") && r.contains("AES:32"),
            "{r}"
        );
        assert!(!r.contains("--extractable ") || r.contains("do not pass --extractable"));
        let e = p.wrap(kek, &key(), &ctx()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Misconfigured, "{e}");
        let e = p.describe(kek).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Misconfigured, "{e}");
    }
    let e = p.canonicalize(&aes128).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Misconfigured, "{e}");
    assert!(e.message().contains("AES-256"), "{e}");
    assert!(e.remediation().unwrap().contains("--key-type AES:32"));
}

#[tokio::test]
async fn canonicalize_pins_token_id_and_label() {
    let Some(hsm) = SoftHsm::isolate("canonicalize_pins_token_id_and_label") else {
        return;
    };
    let p = hsm.provider().await;
    hsm.create_key("kek-a");
    // A short form (no token, typed as "pkcs11:object=kek-a").
    let short: KeyRef = "pkcs11:object=kek-a".parse().unwrap();
    let canonical = p.canonicalize(&short).await.unwrap();
    assert_eq!(
        canonical.id(),
        format!("pkcs11:token={TOKEN_LABEL};id=%6b%65%6b%2d%61;object=kek-a")
    );
    assert_eq!(canonical.kind(), ProviderKind::Pkcs11);
    let c = ctx();
    let w = p.wrap(&canonical, &key(), &c).await.unwrap();
    p.unwrap(&short, &w, &c).await.unwrap();
    assert_eq!(p.canonicalize(&canonical).await.unwrap(), canonical);
}

#[tokio::test]
async fn bad_references_are_misconfigured_with_precise_errors() {
    let Some(hsm) = SoftHsm::isolate("bad_references_are_misconfigured_with_precise_errors") else {
        return;
    };
    let p = hsm.provider().await;
    hsm.create_key("kek");
    let cases = [
        ("pkcs11:token=other-token;object=kek", "serves token"),
        ("pkcs11:slot-id=0;object=kek", "slot-id"),
        ("pkcs11:object=kek?pin-value=4711", "query"),
        ("pkcs11:id=%zz", "percent-encoding"),
        ("pkcs11:token=keyward-test", "names no key"),
    ];
    for (s, needle) in cases {
        let kek: KeyRef = s.parse().unwrap();
        let e = p.describe(&kek).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Misconfigured, "{s}: {e}");
        assert!(e.to_string().contains(needle), "{s}: {e}");
    }
    let e = p
        .describe(&KeyRef::new(ProviderKind::Local, "default"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Misconfigured);
}

#[tokio::test]
async fn start_up_errors_are_misconfigured_with_remediation() {
    let Some(hsm) = SoftHsm::isolate("start_up_errors_are_misconfigured_with_remediation") else {
        return;
    };
    let mut c = hsm.config();
    c.token_label = "no-such-token".into();
    let e = Pkcs11Provider::new(c).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Misconfigured, "{e}");
    assert!(
        e.message().contains(TOKEN_LABEL),
        "lists tokens present: {e}"
    );
    assert!(
        e.remediation()
            .unwrap()
            .contains("softhsm2-util --init-token")
    );

    let wrong_pin = hsm.dir().join("wrong-pin");
    std::fs::write(&wrong_pin, "0000\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrong_pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let c = Pkcs11Config {
        pin_file: Some(wrong_pin),
        ..hsm.config()
    };
    let e = Pkcs11Provider::new(c).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Misconfigured, "{e}");
    assert!(e.message().contains("PIN"), "{e}");

    let c = Pkcs11Config {
        module_path: "/nonexistent/libpkcs11.so".into(),
        ..hsm.config()
    };
    let e = Pkcs11Provider::new(c).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Misconfigured, "{e}");
    assert!(e.remediation().unwrap().contains("module_path"));
}

#[tokio::test]
async fn session_pool_is_bounded() {
    let Some(hsm) = SoftHsm::isolate("session_pool_is_bounded") else {
        return;
    };
    let p = Arc::new(
        Pkcs11Provider::new(Pkcs11Config {
            sessions: 2,
            ..hsm.config()
        })
        .await
        .unwrap(),
    );
    let kek = hsm.create_key("kek");
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let (p, kek) = (p.clone(), kek.clone());
            tokio::spawn(async move {
                let c = ctx();
                let k = key();
                let w = p.wrap(&kek, &k, &c).await?;
                let back = p.unwrap(&kek, &w, &c).await?;
                assert_eq!(back.expose_secret(), k.expose_secret());
                Ok::<_, keyward_kms::ProviderError>(())
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let idle = p.idle_sessions();
    assert!(
        (1..=2).contains(&idle),
        "{idle} idle sessions with sessions = 2"
    );
}
