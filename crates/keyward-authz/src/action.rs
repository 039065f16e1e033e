//! [`Action`]: one Cedar action per RPC.

use std::fmt;
use std::str::FromStr;

/// What a caller asks to do: one action per RPC, named as in the Cedar schema
/// (`Keyward::Action::"Encrypt"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// `CryptoService.Encrypt` on a tenant.
    Encrypt,
    /// `CryptoService.Decrypt` on a tenant.
    Decrypt,
    /// `TenantService.CreateTenant`.
    CreateTenant,
    /// `TenantService.GetTenant`.
    GetTenant,
    /// Bind a customer KEK to a tenant.
    RegisterKey,
    /// Revoke a tenant's KEK binding.
    RevokeKey,
    /// Restore a revoked KEK binding.
    RestoreKey,
    /// Change a tenant's policy settings.
    SetTenantPolicy,
    /// Push a key-state event (on the system).
    ReportKeyEvent,
    /// List audit records: of one tenant (resource tenant) or all (resource system).
    ReadAudit,
    /// Export the whole audit chain (on the system).
    ExportAudit,
    /// Fetch the audit checkpoint public key (on the system).
    ReadAuditPublicKey,
    /// Rotate the audit checkpoint signing key (on the system).
    RotateSigningKey,
    /// `CryptoService.Rewrap` (and each item of `RewrapBatch`) on a tenant: re-encrypt an
    /// envelope without the plaintext leaving the server. Not implied by Decrypt, nor it by this.
    Rewrap,
    /// `TenantService.ShredScope`: crypto-shred one scope of a tenant.
    ShredScope,
    /// `TenantService.ShredScopes`: retention shredding (and its dry run).
    ShredScopes,
    /// `TenantService.ListKeyBindings`: the tenant's key history.
    ListKeyBindings,
    /// `TenantService.RekeyTenant`: re-wrap the tenant keys of older bindings under the current
    /// KEK and retire those bindings (the customer's key decision).
    RekeyTenant,
    /// `TenantService.GetRekeyStatus`: what a re-key has left to do.
    GetRekeyStatus,
    /// `TenantService.ExportKeyHierarchy`: the tenant's exit kit (wrapped keys only).
    ExportKeyHierarchy,
}

impl Action {
    /// Every action, in declaration order.
    pub const ALL: [Action; 20] = [
        Action::Encrypt,
        Action::Decrypt,
        Action::CreateTenant,
        Action::GetTenant,
        Action::RegisterKey,
        Action::RevokeKey,
        Action::RestoreKey,
        Action::SetTenantPolicy,
        Action::ReportKeyEvent,
        Action::ReadAudit,
        Action::ExportAudit,
        Action::ReadAuditPublicKey,
        Action::RotateSigningKey,
        Action::Rewrap,
        Action::ShredScope,
        Action::ShredScopes,
        Action::ListKeyBindings,
        Action::RekeyTenant,
        Action::GetRekeyStatus,
        Action::ExportKeyHierarchy,
    ];

    /// The Cedar action id, e.g. `"Encrypt"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Encrypt => "Encrypt",
            Action::Decrypt => "Decrypt",
            Action::CreateTenant => "CreateTenant",
            Action::GetTenant => "GetTenant",
            Action::RegisterKey => "RegisterKey",
            Action::RevokeKey => "RevokeKey",
            Action::RestoreKey => "RestoreKey",
            Action::SetTenantPolicy => "SetTenantPolicy",
            Action::ReportKeyEvent => "ReportKeyEvent",
            Action::ReadAudit => "ReadAudit",
            Action::ExportAudit => "ExportAudit",
            Action::ReadAuditPublicKey => "ReadAuditPublicKey",
            Action::RotateSigningKey => "RotateSigningKey",
            Action::Rewrap => "Rewrap",
            Action::ShredScope => "ShredScope",
            Action::ShredScopes => "ShredScopes",
            Action::ListKeyBindings => "ListKeyBindings",
            Action::RekeyTenant => "RekeyTenant",
            Action::GetRekeyStatus => "GetRekeyStatus",
            Action::ExportKeyHierarchy => "ExportKeyHierarchy",
        }
    }

    /// Whether the action touches data (its Cedar context is `{ purpose, scope }`).
    pub(crate) fn is_crypto(self) -> bool {
        matches!(self, Action::Encrypt | Action::Decrypt | Action::Rewrap)
    }

    /// Position in [`Action::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`Action`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown action {given:?}; the actions are: {}", valid_actions())]
pub struct ParseActionError {
    given: String,
}

fn valid_actions() -> String {
    Action::ALL
        .iter()
        .map(|a| a.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for Action {
    type Err = ParseActionError;

    /// Parses the exact Cedar action id (case-sensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| ParseActionError {
                given: s.chars().take(64).collect(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_index_matches_all() {
        for (i, a) in Action::ALL.into_iter().enumerate() {
            assert_eq!(a.index(), i);
            assert_eq!(a.as_str().parse::<Action>(), Ok(a));
            assert_eq!(a.to_string(), a.as_str());
        }
    }

    #[test]
    fn unknown_action_lists_the_valid_ones() {
        let err = "encrypt".parse::<Action>().expect_err("case-sensitive");
        let msg = err.to_string();
        assert!(msg.contains("\"encrypt\""), "{msg}");
        for a in Action::ALL {
            assert!(msg.contains(a.as_str()), "{msg}");
        }
    }
}
