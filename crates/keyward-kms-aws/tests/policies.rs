//! Refusals by AWS's access policies, produced by the emulator itself (keyward_moto.py gaps 4 and
//! 5) rather than by a hand-built error: the customer removing Keyward's statements from the key
//! policy (the most common real revocation) and a role assumed with the wrong ExternalId.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code fails loudly on purpose"
)]

use keyward_envelope::{KeyId, TenantId};
use keyward_kms::{ErrorKind, KeyProvider, KeyState, ProviderError, Purpose, WrapContext};
use keyward_test_support::aws::{ACCOUNT, MotoServer, key_ref};

fn ctx() -> WrapContext {
    WrapContext::new(
        &TenantId::try_from("acme").unwrap(),
        &KeyId::from_bytes([0x42; 16]),
        Purpose::TenantKey,
    )
}

#[track_caller]
fn refused<T>(r: Result<T, ProviderError>) -> ProviderError {
    match r {
        Ok(_) => panic!("expected a refusal, got Ok"),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
            assert!(e.is_revocation_signal(), "{e}");
            e
        }
    }
}

#[tokio::test]
async fn removing_keywards_statements_from_the_key_policy_refuses_decrypt_and_generate() {
    let moto = MotoServer::start();
    let p = moto.provider().await;
    let arn = moto.create_symmetric_key().await;
    let kek = key_ref(&arn);
    let principal = moto.caller_arn().await;

    // Onboarded: the administrators' statement plus Keyward's two statements.
    moto.put_key_policy(&arn, &moto.onboarded_key_policy(&arn, true).await)
        .await;
    let (key, wrapped) = p.generate(&kek, &ctx()).await.unwrap();
    assert_eq!(
        p.unwrap(&kek, &wrapped, &ctx())
            .await
            .unwrap()
            .expose_secret(),
        key.expose_secret()
    );
    let rewrapped = p.wrap(&kek, &key, &ctx()).await.unwrap();
    assert_eq!(p.describe(&kek).await.unwrap().state, KeyState::Enabled);

    // The customer removes Keyward's statements.
    moto.put_key_policy(&arn, &moto.onboarded_key_policy(&arn, false).await)
        .await;
    for (action, e) in [
        (
            "kms:Decrypt",
            refused(p.unwrap(&kek, &wrapped, &ctx()).await),
        ),
        (
            "kms:Decrypt",
            refused(p.unwrap(&kek, &rewrapped, &ctx()).await),
        ),
        (
            "kms:GenerateDataKey",
            refused(p.generate(&kek, &ctx()).await),
        ),
        ("kms:Encrypt", refused(p.wrap(&kek, &key, &ctx()).await)),
    ] {
        assert!(
            e.message().contains(action) && e.message().contains("AccessDeniedException"),
            "{action}: {e}"
        );
        let r = e.remediation().unwrap();
        assert!(
            r.contains(&format!(
                "does not allow {action} for Keyward's principal {principal}"
            )),
            "{action}: {r}"
        );
        assert!(r.contains("\"Sid\": \"AllowKeywardUseOfTheKey\""), "{r}");
    }
    // Keyward's DescribeKey statement went too (the administrators' kms:Describe* is theirs).
    let e = refused(p.describe(&kek).await);
    assert!(e.message().contains("kms:DescribeKey"), "{e}");

    // Putting the statements back restores access to what was wrapped before.
    moto.put_key_policy(&arn, &moto.onboarded_key_policy(&arn, true).await)
        .await;
    assert_eq!(
        p.unwrap(&kek, &wrapped, &ctx())
            .await
            .unwrap()
            .expose_secret(),
        key.expose_secret()
    );
}

#[tokio::test]
async fn keywards_statement_allows_only_keyward_encryption_contexts() {
    // The statement's conditions are evaluated: a call without Keyward's context keys, or with
    // another key in it, is refused even for Keyward's principal.
    let moto = MotoServer::start();
    let arn = moto.create_symmetric_key().await;
    moto.put_key_policy(&arn, &moto.onboarded_key_policy(&arn, true).await)
        .await;
    let kms = moto.kms_client().await;
    let plain = aws_sdk_kms::primitives::Blob::new(vec![7; 32]);
    let e = kms
        .encrypt()
        .key_id(&arn)
        .plaintext(plain.clone())
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_sdk_kms::error::ProvideErrorMetadata::code(&e),
        Some("AccessDeniedException"),
        "{e:?}"
    );
    let e = kms
        .encrypt()
        .key_id(&arn)
        .plaintext(plain)
        .encryption_context("keyward:tenant", "acme")
        .encryption_context("other", "x")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_sdk_kms::error::ProvideErrorMetadata::code(&e),
        Some("AccessDeniedException"),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_role_assumed_with_the_wrong_external_id_is_refused_with_the_trust_policy() {
    let moto = MotoServer::start();
    let p = moto.provider().await;
    let arn = moto.create_symmetric_key().await;
    let role = moto
        .create_keyward_role("keyward-access", "acme-7f3a")
        .await;
    let principal = moto.caller_arn().await;

    let right = key_ref(&format!("{arn}?role_arn={role}&external_id=acme-7f3a"));
    let (key, wrapped) = p.generate(&right, &ctx()).await.unwrap();
    assert_eq!(p.describe(&right).await.unwrap().state, KeyState::Enabled);

    // Registration's calls (describe, generate) with another external id: STS refuses.
    let wrong = key_ref(&format!("{arn}?role_arn={role}&external_id=acme-0000"));
    for e in [
        refused(p.describe(&wrong).await),
        refused(p.generate(&wrong, &ctx()).await),
        refused(p.unwrap(&wrong, &wrapped, &ctx()).await),
    ] {
        assert!(e.message().contains("sts:AssumeRole"), "{e}");
        let r = e.remediation().unwrap();
        assert!(
            r.contains(&format!(
                "STS refused to let {principal} assume {role} with external id 'acme-0000'"
            )),
            "{r}"
        );
        // The trust policy to set, with the external id Keyward was given.
        assert!(
            r.contains("\"sts:ExternalId\": \"acme-0000\"") && r.contains("sts:AssumeRole"),
            "{r}"
        );
    }
    // A role that does not exist is refused the same way (AWS does not say which).
    let missing = key_ref(&format!(
        "{arn}?role_arn=arn:aws:iam::{ACCOUNT}:role/no-such-role&external_id=acme-7f3a"
    ));
    let e = refused(p.describe(&missing).await);
    assert!(e.remediation().unwrap().contains("no-such-role"), "{e:?}");

    // The right external id still works.
    assert_eq!(
        p.unwrap(&right, &wrapped, &ctx())
            .await
            .unwrap()
            .expose_secret(),
        key.expose_secret()
    );
}
