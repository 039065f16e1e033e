//! What the provider refuses, and how it recovers, on answers the double gives only when told:
//! keys that cannot wrap (RSA below 2048 bits, an EC key, `key_ops` without `wrapKey` or
//! `unwrapKey`), an identity that may read a key but not use it, and access tokens that the
//! vault stops accepting, with and without the token endpoint issuing new ones.
#![allow(clippy::unwrap_used, reason = "test code fails loudly on purpose")]

use keyward_envelope::{KeyId, SecretKey, TenantId};
use keyward_kms::{ErrorKind, KeyProvider, KeyRef, Purpose, WrapContext};
use keyward_kms_azure::{AzureKeyVaultProvider, VaultKind};
use keyward_test_support::azure::{CLIENT_ID, Call, KeyVaultDouble};

fn ctx() -> WrapContext {
    WrapContext::new(
        &TenantId::try_from("acme").unwrap(),
        &KeyId::from_bytes([3; 16]),
        Purpose::TenantKey,
    )
}

/// Registration (canonicalize), wrap and describe all refuse `kek` as `Misconfigured` with
/// `what` in the message and the create-a-key remediation; no `wrapKey` reached the vault.
async fn refused_as_unusable(
    double: &KeyVaultDouble,
    p: &AzureKeyVaultProvider,
    kek: &KeyRef,
    what: &str,
) {
    let wraps = double.calls(Call::WrapKey);
    for (op, e) in [
        (
            "canonicalize",
            p.canonicalize(kek).await.map(drop).unwrap_err(),
        ),
        (
            "wrap",
            p.wrap(kek, &SecretKey::generate().unwrap(), &ctx())
                .await
                .map(drop)
                .unwrap_err(),
        ),
        ("describe", p.describe(kek).await.map(drop).unwrap_err()),
    ] {
        assert_eq!(e.kind(), ErrorKind::Misconfigured, "{op}: {e}");
        assert!(!e.is_revocation_signal(), "{op}: {e}");
        assert!(e.message().contains(what), "{op}: expected '{what}' in {e}");
        let r = e.remediation().unwrap();
        assert!(
            r.contains("az keyvault key create --vault-name kwtest")
                && r.contains("--ops wrapKey unwrapKey"),
            "{op}: {r}"
        );
    }
    assert_eq!(
        double.calls(Call::WrapKey),
        wraps,
        "a wrapKey reached the vault"
    );
}

#[tokio::test]
async fn keys_that_cannot_wrap_are_refused_at_registration() {
    let double = KeyVaultDouble::start(VaultKind::KeyVault).await;
    let p = double.provider();

    let small = double.create_small_rsa_key("rsa-1024", 1024);
    refused_as_unusable(
        &double,
        &p,
        &small,
        "is a 1024-bit RSA key; Keyward needs at least 2048 bits",
    )
    .await;

    let ec = double.create_ec_key("ec");
    refused_as_unusable(
        &double,
        &p,
        &ec,
        "is a EC key; Keyward needs an RSA key (Key Vault) or a 256-bit AES key (Managed HSM)",
    )
    .await;

    for (name, ops, listed) in [
        (
            "no-unwrap",
            &["wrapKey", "encrypt"][..],
            "[wrapKey, encrypt]",
        ),
        (
            "no-wrap",
            &["unwrapKey", "decrypt"][..],
            "[unwrapKey, decrypt]",
        ),
        ("sign-only", &["sign"][..], "[sign]"),
    ] {
        let kek = double.create_rsa_key(name);
        double.set_key_ops(name, ops);
        refused_as_unusable(
            &double,
            &p,
            &kek,
            &format!("does not permit wrapKey and unwrapKey (its key_ops are {listed})"),
        )
        .await;
    }

    // The checks are not too strict: a 2048-bit RSA key whose key_ops are exactly the two.
    let kek = double.create_rsa_key("just-enough");
    double.set_key_ops("just-enough", &["unwrapKey", "wrapKey"]);
    assert_eq!(p.canonicalize(&kek).await.unwrap(), kek);
    let key = SecretKey::generate().unwrap();
    let wrapped = p.wrap(&kek, &key, &ctx()).await.unwrap();
    assert_eq!(
        p.unwrap(&kek, &wrapped, &ctx())
            .await
            .unwrap()
            .expose_secret(),
        key.expose_secret()
    );
}

#[tokio::test]
async fn an_identity_that_may_read_the_key_but_not_use_it_is_refused_with_the_role_to_assign() {
    let double = KeyVaultDouble::start(VaultKind::KeyVault).await;
    let p = double.provider();
    let kek = double.create_rsa_key("kek");
    let key = SecretKey::generate().unwrap();
    let wrapped = p.wrap(&kek, &key, &ctx()).await.unwrap();

    double.set_read_only("kek", true);
    // Reading works: describe and canonicalize see an enabled key...
    assert_eq!(
        p.describe(&kek).await.unwrap().state,
        keyward_kms::KeyState::Enabled
    );
    assert_eq!(p.canonicalize(&kek).await.unwrap(), kek);
    // ...but using it is refused, naming the vault's action and the role assignment to make.
    let role = format!(
        "az role assignment create --role \"Key Vault Crypto Service Encryption User\" --assignee {CLIENT_ID} --scope \"$(az keyvault show --name kwtest --query id -o tsv)/keys/kek\""
    );
    for (op, e) in [
        (
            "wrapKey",
            p.wrap(&kek, &key, &ctx()).await.map(drop).unwrap_err(),
        ),
        (
            "unwrapKey",
            p.unwrap(&kek, &wrapped, &ctx())
                .await
                .map(drop)
                .unwrap_err(),
        ),
    ] {
        assert_eq!(e.kind(), ErrorKind::Refused, "{op}: {e}");
        assert!(e.is_revocation_signal());
        assert!(
            e.message().contains(&format!("{op} on "))
                && e.message().contains("HTTP 403 Forbidden/ForbiddenByRbac"),
            "{op}: {e}"
        );
        let r = e.remediation().unwrap();
        assert!(r.contains(&role), "{op}: {r}");
    }
    double.set_read_only("kek", false);
    assert_eq!(
        p.unwrap(&kek, &wrapped, &ctx())
            .await
            .unwrap()
            .expose_secret(),
        key.expose_secret()
    );
}

#[tokio::test]
async fn a_token_the_vault_stops_accepting_is_replaced_and_the_provider_carries_on() {
    let double = KeyVaultDouble::start(VaultKind::KeyVault).await;
    let p = double.provider();
    let kek = double.create_rsa_key("kek");
    let key = SecretKey::generate().unwrap();
    let wrapped = p.wrap(&kek, &key, &ctx()).await.unwrap();
    assert_eq!(double.calls(Call::Token), 1);

    double.revoke_tokens();
    let challenges = double.calls(Call::Challenge);
    assert_eq!(
        p.unwrap(&kek, &wrapped, &ctx())
            .await
            .unwrap()
            .expose_secret(),
        key.expose_secret()
    );
    // The old token drew the 401 challenge, and the provider fetched a new token (one per
    // request that was refused: unwrap reads the key and unwraps in parallel, so 1 or 2).
    assert!(double.calls(Call::Challenge) > challenges);
    let tokens = double.calls(Call::Token);
    assert!((2..=3).contains(&tokens), "{tokens} tokens issued");
    // And uses it from then on.
    p.wrap(&kek, &key, &ctx()).await.unwrap();
    p.describe(&kek).await.unwrap();
    assert_eq!(double.calls(Call::Token), tokens, "the new token is reused");
}

#[tokio::test]
async fn a_refused_token_refresh_is_misconfigured_not_a_revocation() {
    let double = KeyVaultDouble::start(VaultKind::KeyVault).await;
    let p = double.provider();
    let kek = double.create_rsa_key("kek");
    let key = SecretKey::generate().unwrap();
    let wrapped = p.wrap(&kek, &key, &ctx()).await.unwrap();

    double.refuse_tokens(true);
    double.revoke_tokens();
    for e in [
        p.unwrap(&kek, &wrapped, &ctx())
            .await
            .map(drop)
            .unwrap_err(),
        p.describe(&kek).await.map(drop).unwrap_err(),
    ] {
        // Our credentials are broken: the customer revoked nothing.
        assert_eq!(e.kind(), ErrorKind::Misconfigured, "{e}");
        assert!(!e.is_revocation_signal(), "{e}");
        assert!(
            e.message().contains("Entra ID token endpoint: HTTP 401"),
            "{e}"
        );
        assert!(
            e.remediation().unwrap().contains("[azure.credential]"),
            "{e:?}"
        );
    }
    // Once the token endpoint issues tokens again, so does the provider.
    double.refuse_tokens(false);
    assert_eq!(
        p.unwrap(&kek, &wrapped, &ctx())
            .await
            .unwrap()
            .expose_secret(),
        key.expose_secret()
    );
}
