//! What to tell the customer's Azure administrator when a key is wrong, missing, disabled or
//! not granted to Keyward. Attached to errors as their remediation, shown at onboarding (the
//! server's registration canary) and in error details.

use crate::classify::Hint;
use crate::key_id::{AzureKeyId, VaultKind};

/// The role Keyward needs on the key: `wrapKey`, `unwrapKey` and key read, nothing else.
pub const KEY_VAULT_ROLE: &str = "Key Vault Crypto Service Encryption User";
/// The Managed HSM local role with the same data actions.
pub const MANAGED_HSM_ROLE: &str = "Managed HSM Crypto Service Encryption User";

/// The command that grants `principal` (Keyward's identity) use of exactly this key.
pub fn role_assignment_command(key: &AzureKeyId, principal: &str) -> String {
    match key.kind() {
        VaultKind::KeyVault => format!(
            "az role assignment create --role \"{KEY_VAULT_ROLE}\" --assignee {principal} \
             --scope \"$(az keyvault show --name {vault} --query id -o tsv)/keys/{name}\"",
            vault = key.vault_name(),
            name = key.name()
        ),
        VaultKind::ManagedHsm => format!(
            "az keyvault role assignment create --hsm-name {hsm} --role \"{MANAGED_HSM_ROLE}\" \
             --assignee {principal} --scope /keys/{name}",
            hsm = key.vault_name(),
            name = key.name()
        ),
    }
}

fn role_assignment(key: &AzureKeyId, principal: &str) -> String {
    format!(
        "Grant Keyward's identity ({principal}) the \"{role}\" role on the key (it allows get, \
         wrapKey and unwrapKey only): {cmd} (<vault resource id> is \
         /subscriptions/<subscription id>/resourceGroups/<resource group>/providers/Microsoft.KeyVault/vaults/{vault}). \
         A vault that uses access policies instead of Azure RBAC needs: az keyvault set-policy \
         --name {vault} --spn {principal} --key-permissions get wrapKey unwrapKey. \
         If access was removed on purpose, this is a revocation.",
        role = match key.kind() {
            VaultKind::KeyVault => KEY_VAULT_ROLE,
            VaultKind::ManagedHsm => MANAGED_HSM_ROLE,
        },
        cmd = role_assignment_command(key, principal),
        vault = key.vault_name(),
    )
}

/// The command that creates a correct KEK.
pub fn create_key(key: &AzureKeyId) -> String {
    match key.kind() {
        VaultKind::KeyVault => format!(
            "Create the key as an RSA key of at least 3072 bits usable for wrapKey and unwrapKey: \
             az keyvault key create --vault-name {vault} --name {name} --kty RSA-HSM --size 3072 \
             --ops wrapKey unwrapKey (use --kty RSA on a Standard-tier vault), then register the \
             id printed by: az keyvault key show --vault-name {vault} --name {name} --query key.kid -o tsv \
             (without the version part to follow rotations)",
            vault = key.vault_name(),
            name = key.name()
        ),
        VaultKind::ManagedHsm => format!(
            "Create the key as a 256-bit AES key usable for wrapKey and unwrapKey: \
             az keyvault key create --hsm-name {hsm} --name {name} --kty oct-HSM --size 256 \
             --ops wrapKey unwrapKey",
            hsm = key.vault_name(),
            name = key.name()
        ),
    }
}

/// For a disabled, expired or not-yet-valid key.
pub fn reenable(key: &AzureKeyId) -> String {
    let target = match key.kind() {
        VaultKind::KeyVault => format!("--vault-name {}", key.vault_name()),
        VaultKind::ManagedHsm => format!("--hsm-name {}", key.vault_name()),
    };
    format!(
        "Keyward treats a disabled, expired or not-yet-valid key as revoked. If that was not \
         meant as a revocation, enable the key and clear or move its validity window: \
         az keyvault key set-attributes {target} --name {name}{version} --enabled true \
         (add --expires / --not-before with new dates if they are the cause)",
        name = key.name(),
        version = key
            .version()
            .map_or_else(String::new, |v| format!(" --version {v}")),
    )
}

/// For a deleted (soft-deleted) key.
pub fn recover(key: &AzureKeyId) -> String {
    let target = match key.kind() {
        VaultKind::KeyVault => format!("--vault-name {}", key.vault_name()),
        VaultKind::ManagedHsm => format!("--hsm-name {}", key.vault_name()),
    };
    format!(
        "Keyward treats a deleted key as revoked. If the deletion was not meant as a revocation, \
         recover the key before its purge date: az keyvault key recover {target} --name {name} \
         (the revocation monitor restores the tenants once it unwraps again). Once the key is \
         purged, everything wrapped under it is unreadable for good.",
        name = key.name(),
    )
}

fn credentials() -> String {
    "Check Keyward's [azure.credential] settings: the tenant id, the client (application) id, \
     and that the client secret (or the federated credential of the workload identity) is current \
     in Microsoft Entra ID, and that the key's vault is in that tenant."
        .to_owned()
}

fn network(key: &AzureKeyId) -> String {
    format!(
        "Allow Keyward's egress addresses through the vault's firewall \
         (az keyvault network-rule add --name {vault} --ip-address <Keyward egress IP>) or \
         connect Keyward through a private endpoint. If access was removed on purpose, this is a revocation.",
        vault = key.vault_name()
    )
}

/// The remediation for a classified failure, when there is one.
pub(crate) fn for_hint(hint: Hint, key: &AzureKeyId, principal: &str) -> Option<String> {
    match hint {
        Hint::None => None,
        Hint::RoleAssignment => Some(role_assignment(key, principal)),
        Hint::Reenable => Some(reenable(key)),
        Hint::CreateKey => Some(create_key(key)),
        Hint::Credentials => Some(credentials()),
        Hint::Network => Some(network(key)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    #[test]
    fn role_assignment_commands() {
        let k = AzureKeyId::parse("https://contoso.vault.azure.net/keys/kek").unwrap();
        assert_eq!(
            role_assignment_command(&k, "11111111-2222-3333-4444-555555555555"),
            "az role assignment create --role \"Key Vault Crypto Service Encryption User\" \
             --assignee 11111111-2222-3333-4444-555555555555 \
             --scope \"$(az keyvault show --name contoso --query id -o tsv)/keys/kek\""
        );
        let r = for_hint(Hint::RoleAssignment, &k, "app-1").unwrap();
        assert!(r.contains("--assignee app-1 --scope"), "{r}");
        assert!(r.contains("/keys/kek"), "{r}");

        let h = AzureKeyId::parse("https://hsm1.managedhsm.azure.net/keys/kek").unwrap();
        let cmd = role_assignment_command(&h, "app-1");
        assert!(
            cmd.starts_with("az keyvault role assignment create --hsm-name hsm1"),
            "{cmd}"
        );
        assert!(
            cmd.contains("Managed HSM Crypto Service Encryption User"),
            "{cmd}"
        );
        assert!(create_key(&h).contains("--kty oct-HSM --size 256"));
        assert!(create_key(&k).contains("--kty RSA-HSM --size 3072"));
        assert!(reenable(&k).contains(
            "az keyvault key set-attributes --vault-name contoso --name kek --enabled true"
        ));
        assert!(for_hint(Hint::None, &k, "p").is_none());
    }
}
