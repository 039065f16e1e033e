//! Issue #16, item 10: with an Azure Key Vault RSA key, anyone who can write the database could
//! plant a tenant key — RSA-OAEP needs only the public key, so a blob wrapping a key of their
//! choosing unwraps through the vault like a genuine one, and new DEKs would go under it. The
//! keyring refuses it (docs/adr/0007-tenant-key-mac.md) before the vault sees it, and the tenant
//! is not revoked. Against the Key Vault test double.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod common;

use std::sync::Arc;

use common::{Fixture, assert_refused_without_revoking, ctx, scope, tenant};
use keyward_envelope::SecretKey;
use keyward_kms::{KeyProvider, KeyRef, ProviderKind, Purpose, WrapContext};
use keyward_kms_azure::VaultKind;
use keyward_server::Providers;
use keyward_test_support::azure::{Call, KeyVaultDouble};

#[tokio::test]
async fn a_tenant_key_forged_with_the_rsa_public_key_is_refused() {
    let double = KeyVaultDouble::start(VaultKind::KeyVault).await;
    let kek = double.create_rsa_key("kek");
    let provider: Arc<dyn KeyProvider> = Arc::new(double.provider());
    let fx = Fixture::new(Providers::default().with(provider.clone())).await;
    let keyring = fx.keyring();
    let t = tenant("acme");
    keyring
        .create_tenant(&t, "Acme", "test".to_owned())
        .await
        .unwrap();
    let binding = keyring.register_key(&t, &kek).await.unwrap().binding;
    let (envelope, _) = keyring
        .encrypt(&t, &scope("s1"), &ctx(), b"genuine")
        .await
        .unwrap();

    let genuine = fx.column(&binding.tenant_key_id, "wrapped").await.unwrap();

    // The attacker's key, wrapped with nothing but the key's public half: no vault call.
    let chosen = SecretKey::generate().unwrap();
    let wctx = WrapContext::new(&t, &binding.tenant_key_id, Purpose::TenantKey);
    let wraps = double.calls(Call::WrapKey);
    let forged = double.forge_with_public_key("kek", &chosen, &wctx);
    assert_eq!(
        double.calls(Call::WrapKey),
        wraps,
        "forged without the vault"
    );
    // The vault itself cannot tell: it unwraps to the attacker's key.
    let stored_kek = KeyRef::new(ProviderKind::AzureKeyVault, binding.key_ref.clone());
    let back = provider.unwrap(&stored_kek, &forged, &wctx).await.unwrap();
    assert_eq!(back.expose_secret(), chosen.expose_secret());

    // Planted in the database, it is refused: no DEK goes under it, nothing is revealed, the
    // vault is not asked, the tenant is not revoked.
    fx.set_column(
        &binding.tenant_key_id,
        "wrapped",
        Some(forged.as_bytes().to_vec()),
    )
    .await;
    assert_refused_without_revoking(&fx, &t, &envelope, || double.calls(Call::UnwrapKey)).await;

    // The genuine blob back in place: served again (the refusal left no state behind).
    fx.set_column(&binding.tenant_key_id, "wrapped", Some(genuine))
        .await;
    let cold = fx.keyring();
    assert_eq!(
        cold.decrypt(&t, &envelope, &ctx())
            .await
            .unwrap()
            .as_slice(),
        b"genuine"
    );
}
