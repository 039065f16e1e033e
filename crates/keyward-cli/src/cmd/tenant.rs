//! `keyward tenant …`: create, configure and inspect tenants, and the tenant as people read it.

use anyhow::bail;
use keyward_proto::v1::{self as pb, tenant_service_client::TenantServiceClient};

use crate::cli::{KeyChoice, Target, TenantCommand};
use crate::client::{channel, source_words};
use crate::exit;

pub(crate) async fn tenant(endpoint: &Target, cmd: TenantCommand) -> anyhow::Result<()> {
    let mut client = TenantServiceClient::new(channel(endpoint).await?);
    let tenant = match cmd {
        TenantCommand::Shred(args) => return super::shred::shred(&mut client, args).await,
        TenantCommand::Create { tenant, name } => {
            client
                .create_tenant(pb::CreateTenantRequest {
                    tenant_id: tenant,
                    display_name: name,
                })
                .await
        }
        TenantCommand::RegisterKey {
            tenant,
            key,
            role_arn,
            external_id,
        } => {
            let key = key_request(key, role_arn, external_id)?;
            client
                .register_key(pb::RegisterKeyRequest {
                    tenant_id: tenant,
                    key: Some(key),
                })
                .await
        }
        TenantCommand::RevokeKey {
            tenant,
            reason,
            requested_by,
        } => {
            client
                .revoke_key(pb::RevokeKeyRequest {
                    tenant_id: tenant,
                    reason,
                    requested_by,
                })
                .await
        }
        TenantCommand::RestoreKey {
            tenant,
            reason,
            requested_by,
            binding,
        } => {
            client
                .restore_key(pb::RestoreKeyRequest {
                    tenant_id: tenant,
                    reason,
                    requested_by,
                    binding_id: binding.unwrap_or(0),
                })
                .await
        }
        TenantCommand::SetPolicy {
            tenant,
            cache_ttl_seconds,
            monitor_interval_seconds,
            auto_rekey,
            requested_by,
        } => {
            client
                .set_tenant_policy(pb::SetTenantPolicyRequest {
                    tenant_id: tenant,
                    policy: Some(pb::TenantPolicy {
                        cache_ttl_seconds,
                        monitor_interval_seconds,
                        auto_rekey,
                        decrypt_purposes: Vec::new(),
                    }),
                    requested_by,
                })
                .await
        }
        TenantCommand::Show { tenant } => {
            client
                .get_tenant(pb::GetTenantRequest { tenant_id: tenant })
                .await
        }
        // Not a tenant: the key history has its own answer.
        TenantCommand::Keys { tenant, json } => {
            return super::key_history::keys(&mut client, tenant, json).await;
        }
        TenantCommand::Rekey {
            tenant,
            status,
            batch,
            json,
            requested_by,
        } => {
            let args = super::rekey::RekeyArgs {
                tenant,
                status_only: status,
                batch,
                json,
                requested_by,
            };
            return super::rekey::rekey(&mut client, args).await;
        }
    }
    .map_err(exit::refused)?
    .into_inner();
    print_tenant(&tenant);
    Ok(())
}

/// The key `register-key` names (clap lets exactly one through), as the request carries it; a
/// role and its external id go with an AWS key only.
fn key_request(
    key: KeyChoice,
    role_arn: Option<String>,
    external_id: Option<String>,
) -> anyhow::Result<pb::register_key_request::Key> {
    let key = match (
        key.local_key,
        key.aws_kms_key,
        key.pkcs11_key,
        key.gcp_key,
        key.azure_key,
    ) {
        (Some(key_name), _, _, _, _) => {
            pb::register_key_request::Key::Local(pb::LocalKey { key_name })
        }
        (None, Some(key_arn), _, _, _) => pb::register_key_request::Key::AwsKms(pb::AwsKmsKey {
            key_arn,
            role_arn: role_arn.unwrap_or_default(),
            external_id: external_id.unwrap_or_default(),
        }),
        (None, None, Some(uri), _, _) => {
            pb::register_key_request::Key::Pkcs11(pb::Pkcs11Key { uri })
        }
        (None, None, None, Some(crypto_key), _) => {
            pb::register_key_request::Key::GcpKms(pb::GcpKmsKey { crypto_key })
        }
        (None, None, None, None, Some(key_id)) => {
            pb::register_key_request::Key::AzureKeyVault(pb::AzureKeyVaultKey { key_id })
        }
        (None, None, None, None, None) => {
            bail!("name a key: --local-key, --aws-kms-key, --pkcs11-key, --gcp-key or --azure-key")
        }
    };
    Ok(key)
}

fn print_tenant(t: &pb::Tenant) {
    print!("{}", tenant_text(t));
}

/// `tenant show` (and every tenant command's answer) as people read it: the key as its owner
/// wrote it, states and providers in words, and the settings in force with their source.
fn tenant_text(t: &pb::Tenant) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "tenant:       {}", t.tenant_id);
    if !t.display_name.is_empty() {
        let _ = writeln!(out, "name:         {}", t.display_name);
    }
    match &t.active_key {
        Some(k) => {
            let _ = writeln!(out, "key provider: {}", provider_words(k.provider()));
            for (label, value) in key_parts(k) {
                let _ = writeln!(out, "{:<14}{value}", format!("{label}:"));
            }
            let _ = writeln!(out, "key state:    {}", state_words(k));
            let _ = writeln!(out, "tenant key:   {}", k.tenant_key_id);
            let _ = writeln!(out, "binding:      {}", k.binding_id);
        }
        None => {
            let _ = writeln!(
                out,
                "key:          (none registered: run `keyward tenant register-key`)"
            );
        }
    }
    for k in &t.previous_keys {
        let parts: Vec<String> = key_parts(k)
            .into_iter()
            .map(|(label, value)| format!("{label} {value}"))
            .collect();
        let _ = writeln!(
            out,
            "older key:    binding {}: {}, {}; {}",
            k.binding_id,
            provider_words(k.provider()),
            parts.join(", "),
            state_words(k)
        );
        if k.state() == pb::KekState::Revoked {
            let _ = writeln!(
                out,
                "              data under it is refused; `keyward tenant restore-key {} --binding {} --reason …` restores it",
                t.tenant_id, k.binding_id
            );
        }
    }
    if let Some(p) = &t.effective_policy {
        let source = |s: i32| match pb::SettingSource::try_from(s) {
            Ok(pb::SettingSource::TenantPolicy) => "tenant policy",
            Ok(pb::SettingSource::Server) => "server default",
            _ => "source unknown",
        };
        let _ = writeln!(
            out,
            "cache TTL:    {} s ({})",
            p.cache_ttl_seconds,
            source(p.cache_ttl_source)
        );
        if p.monitor_interval_seconds == 0 {
            let _ = writeln!(
                out,
                "monitor:      off (the server runs no key-state monitor)"
            );
        } else {
            let _ = writeln!(
                out,
                "monitor:      every {} s ({})",
                p.monitor_interval_seconds,
                source(p.monitor_interval_source)
            );
        }
    } else if let Some(policy) = &t.policy {
        // A server without effective_policy: only the overrides are known.
        let show = |v: u64| {
            if v == 0 {
                "server default".to_owned()
            } else {
                format!("{v} s (tenant policy)")
            }
        };
        let _ = writeln!(out, "cache TTL:    {}", show(policy.cache_ttl_seconds));
        let _ = writeln!(
            out,
            "monitor:      {}",
            show(policy.monitor_interval_seconds)
        );
    }
    out
}

/// The key reference as labelled parts. An AWS key with a role is stored as
/// `ARN?role_arn=…&external_id=…` (the provider's own syntax); its owner gave three values, so
/// three are shown.
pub(super) fn key_parts(k: &pb::KekBinding) -> Vec<(&'static str, String)> {
    if k.provider() == pb::ProviderKind::AwsKms {
        let (arn, query) = k.key_ref.split_once('?').unwrap_or((&k.key_ref, ""));
        let mut parts = vec![("key ARN", arn.to_owned())];
        for param in query.split('&').filter(|p| !p.is_empty()) {
            match param.split_once('=') {
                Some(("role_arn", role)) => parts.push(("role", role.to_owned())),
                Some(("external_id", id)) => parts.push(("external id", id.to_owned())),
                _ => parts.push(("key", k.key_ref.clone())),
            }
        }
        return parts;
    }
    vec![("key", k.key_ref.clone())]
}

fn provider_words(kind: pb::ProviderKind) -> &'static str {
    match kind {
        pb::ProviderKind::Local => "local development key",
        pb::ProviderKind::AwsKms => "AWS KMS",
        pb::ProviderKind::GcpKms => "Google Cloud KMS",
        pb::ProviderKind::AzureKeyVault => "Azure Key Vault",
        pb::ProviderKind::Pkcs11 => "PKCS#11 HSM",
        pb::ProviderKind::Unspecified => "unknown provider",
    }
}

/// `revoked since 2026-12-06T15:23:01.310Z (explicit: RevokeKey)`: the state, since when and
/// what set it.
fn state_words(k: &pb::KekBinding) -> String {
    let state = match k.state() {
        pb::KekState::Active => "active",
        pb::KekState::Revoked => "revoked",
        pb::KekState::Unavailable => "unavailable (the KMS could not be reached)",
        pb::KekState::Destroyed => "destroyed",
        pb::KekState::Retired => "retired (re-keyed: nothing depends on this key any more)",
        pb::KekState::Restored => "restored",
        pb::KekState::Unspecified => "unknown",
    };
    if k.state_cause.is_empty() {
        return state.to_owned();
    }
    let since = k
        .state_changed_at
        .as_ref()
        .map(|t| {
            format!(
                " since {}",
                keyward_server::time::rfc3339_utc_ms(
                    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
                )
            )
        })
        .unwrap_or_default();
    format!("{state}{since} ({})", source_words(&k.state_cause))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    /// A cross-account AWS key is shown as its owner gave it: key ARN, role and external id on
    /// their own lines (never the stored `ARN?role_arn=…&external_id=…`), with the state, the
    /// provider and the settings in force in words.
    #[test]
    fn tenant_show_splits_an_aws_key_and_says_where_settings_come_from() {
        let arn = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let role = "arn:aws:iam::111122223333:role/keyward-access";
        let tenant = pb::Tenant {
            tenant_id: "acme".into(),
            active_key: Some(pb::KekBinding {
                provider: pb::ProviderKind::AwsKms.into(),
                key_ref: format!("{arn}?role_arn={role}&external_id=acme-7f3a"),
                state: pb::KekState::Revoked.into(),
                state_cause: "kms_refusal".into(),
                state_changed_at: Some({
                    // (the Timestamp type, without a dependency on prost-types)
                    let mut at = pb::KekBinding::default()
                        .state_changed_at
                        .unwrap_or_default();
                    at.seconds = 1_796_570_581;
                    at.nanos = 310_000_000;
                    at
                }),
                binding_id: 2,
                ..Default::default()
            }),
            effective_policy: Some(pb::EffectivePolicy {
                cache_ttl_seconds: 300,
                cache_ttl_source: pb::SettingSource::Server.into(),
                monitor_interval_seconds: 10,
                monitor_interval_source: pb::SettingSource::TenantPolicy.into(),
            }),
            ..Default::default()
        };
        let text = tenant_text(&tenant);
        let expected = [
            "key provider: AWS KMS\n".to_owned(),
            format!("key ARN:      {arn}\n"),
            format!("role:         {role}\n"),
            "external id:  acme-7f3a\n".to_owned(),
            "key state:    revoked since 2026-12-06T15:23:01.310Z (the customer's KMS refused a call)\n"
                .to_owned(),
            "cache TTL:    300 s (server default)\n".to_owned(),
            "monitor:      every 10 s (tenant policy)\n".to_owned(),
        ];
        for line in expected {
            assert!(text.contains(&line), "missing {line:?} in:\n{text}");
        }
        assert!(!text.contains("?role_arn="), "{text}");
    }

    fn binding(provider: pb::ProviderKind, key_ref: &str, state: pb::KekState) -> pb::KekBinding {
        pb::KekBinding {
            provider: provider.into(),
            key_ref: key_ref.into(),
            state: state.into(),
            ..Default::default()
        }
    }

    /// A tenant with a name, no key, and only its overrides known (an older server): the name,
    /// the way to register a key, and each setting as an override or the server's default.
    #[test]
    fn a_tenant_without_a_key_says_how_to_register_one() {
        let tenant = pb::Tenant {
            tenant_id: "acme".into(),
            display_name: "Acme Corp".into(),
            policy: Some(pb::TenantPolicy {
                cache_ttl_seconds: 60,
                monitor_interval_seconds: 0,
                auto_rekey: false,
            }),
            ..Default::default()
        };
        assert_eq!(
            tenant_text(&tenant),
            "tenant:       acme\n\
             name:         Acme Corp\n\
             key:          (none registered: run `keyward tenant register-key`)\n\
             cache TTL:    60 s (tenant policy)\n\
             monitor:      server default\n"
        );
    }

    /// The active key, then each older binding on one line; a revoked older binding says how to
    /// restore it; a monitor interval of 0 in force means no monitor.
    #[test]
    fn older_keys_are_listed_and_a_revoked_one_says_how_to_restore_it() {
        let mut active = binding(pb::ProviderKind::Local, "default", pb::KekState::Active);
        active.tenant_key_id = "tk-2".into();
        active.binding_id = 2;
        let mut older = binding(
            pb::ProviderKind::Pkcs11,
            "pkcs11:token=t;object=k",
            pb::KekState::Revoked,
        );
        older.binding_id = 1;
        let tenant = pb::Tenant {
            tenant_id: "acme".into(),
            active_key: Some(active),
            previous_keys: vec![older],
            effective_policy: Some(pb::EffectivePolicy {
                cache_ttl_seconds: 30,
                cache_ttl_source: pb::SettingSource::TenantPolicy.into(),
                monitor_interval_seconds: 0,
                monitor_interval_source: pb::SettingSource::Server.into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            tenant_text(&tenant),
            "tenant:       acme\n\
             key provider: local development key\n\
             key:          default\n\
             key state:    active\n\
             tenant key:   tk-2\n\
             binding:      2\n\
             older key:    binding 1: PKCS#11 HSM, key pkcs11:token=t;object=k; revoked\n              \
             data under it is refused; `keyward tenant restore-key acme --binding 1 --reason …` restores it\n\
             cache TTL:    30 s (tenant policy)\n\
             monitor:      off (the server runs no key-state monitor)\n"
        );
    }

    #[test]
    fn an_aws_key_without_a_role_is_its_arn_and_a_stray_parameter_shows_the_whole_reference() {
        let plain = binding(
            pb::ProviderKind::AwsKms,
            "arn:aws:kms:k",
            pb::KekState::Active,
        );
        assert_eq!(key_parts(&plain), [("key ARN", "arn:aws:kms:k".to_owned())]);
        let odd = binding(
            pb::ProviderKind::AwsKms,
            "arn:aws:kms:k?x=1",
            pb::KekState::Active,
        );
        assert_eq!(
            key_parts(&odd),
            [
                ("key ARN", "arn:aws:kms:k".to_owned()),
                ("key", "arn:aws:kms:k?x=1".to_owned())
            ]
        );
        // Only AWS references are split: a `?` in another provider's reference is its own.
        let gcp = binding(
            pb::ProviderKind::GcpKms,
            "projects/p?x=1",
            pb::KekState::Active,
        );
        assert_eq!(key_parts(&gcp), [("key", "projects/p?x=1".to_owned())]);
    }

    #[test]
    fn states_say_what_set_them_only_when_the_server_says() {
        let mut k = binding(
            pb::ProviderKind::Local,
            "default",
            pb::KekState::Unavailable,
        );
        assert_eq!(
            state_words(&k),
            "unavailable (the KMS could not be reached)"
        );
        k.state_cause = "monitor".into();
        // A cause without a time: no "since".
        assert_eq!(
            state_words(&k),
            "unavailable (the KMS could not be reached) (the key-state monitor's check)"
        );
        k.state = pb::KekState::Unspecified.into();
        k.state_cause = "a newer cause".into();
        assert_eq!(state_words(&k), "unknown (a newer cause)");
        assert_eq!(
            provider_words(pb::ProviderKind::AzureKeyVault),
            "Azure Key Vault"
        );
        assert_eq!(
            provider_words(pb::ProviderKind::Unspecified),
            "unknown provider"
        );
    }

    fn choice() -> KeyChoice {
        KeyChoice {
            local_key: None,
            aws_kms_key: None,
            pkcs11_key: None,
            azure_key: None,
            gcp_key: None,
        }
    }

    #[test]
    fn each_key_flag_becomes_its_provider_s_key_and_a_role_goes_with_aws_only() {
        use pb::register_key_request::Key;
        let aws = KeyChoice {
            aws_kms_key: Some("arn:aws:kms:k".into()),
            ..choice()
        };
        let key = key_request(
            aws,
            Some("arn:aws:iam::1:role/r".into()),
            Some("x-1".into()),
        )
        .unwrap();
        assert_eq!(
            key,
            Key::AwsKms(pb::AwsKmsKey {
                key_arn: "arn:aws:kms:k".into(),
                role_arn: "arn:aws:iam::1:role/r".into(),
                external_id: "x-1".into(),
            })
        );
        // Every other flag: its value, as its provider's key.
        let only = |set: fn(&mut KeyChoice, String), value: &str| {
            let mut key = choice();
            set(&mut key, value.to_owned());
            key_request(key, None, None).unwrap()
        };
        let local = only(|k, v| k.local_key = Some(v), "default");
        let key_name = "default".to_owned();
        assert_eq!(local, Key::Local(pb::LocalKey { key_name }));
        let pkcs11 = only(|k, v| k.pkcs11_key = Some(v), "pkcs11:token=t;object=k");
        let uri = "pkcs11:token=t;object=k".to_owned();
        assert_eq!(pkcs11, Key::Pkcs11(pb::Pkcs11Key { uri }));
        let gcp = only(|k, v| k.gcp_key = Some(v), "projects/p/cryptoKeys/k");
        let crypto_key = "projects/p/cryptoKeys/k".to_owned();
        assert_eq!(gcp, Key::GcpKms(pb::GcpKmsKey { crypto_key }));
        let azure = only(
            |k, v| k.azure_key = Some(v),
            "https://v.vault.azure.net/keys/k",
        );
        let key_id = "https://v.vault.azure.net/keys/k".to_owned();
        assert_eq!(azure, Key::AzureKeyVault(pb::AzureKeyVaultKey { key_id }));
        let none = key_request(choice(), None, None).unwrap_err();
        assert_eq!(
            none.to_string(),
            "name a key: --local-key, --aws-kms-key, --pkcs11-key, --gcp-key or --azure-key"
        );
    }
}
