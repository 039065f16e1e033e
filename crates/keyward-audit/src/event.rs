//! [`AuditEvent`]: what happened. One variant per kind of event, serialised with a `"type"` tag
//! whose snake_case names are part of the format and never change.
//!
//! No event carries plaintext or key bytes. Caller-chosen identifiers that need not be readable
//! (scope labels, which may be user ids) are recorded only as
//! [`IdentifierHasher`](crate::IdentifierHasher) digests.

use keyward_envelope::{KeyId, TenantId};
use serde::{Deserialize, Serialize};

use crate::checkpoint::PublicKey;

/// One auditable event. See `docs/auditor-guide.md` for what each field means to an auditor.
///
/// Times are Unix time: `*_ms` in milliseconds, `second` in seconds, `minute` in seconds at the
/// start of the minute (a multiple of 60). Optional fields are written as `null`, never omitted.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuditEvent {
    /// A tenant was created.
    TenantCreated {
        #[serde(with = "tenant_id")]
        tenant: TenantId,
        /// The authenticated caller that created it, when known.
        actor: Option<String>,
    },
    /// A customer tried to register a KEK; the validation outcome is recorded either way.
    KeyRegistrationAttempted {
        #[serde(with = "tenant_id")]
        tenant: TenantId,
        /// Provider name (`aws-kms`, `gcp-kms`, `local`, …).
        provider: String,
        /// The customer's key reference (ARN, resource name, URI). Not secret.
        key_ref: String,
        outcome: RegistrationOutcome,
    },
    /// The tenant's active KEK binding changed (first registration or rotation).
    KekBindingChanged {
        #[serde(with = "tenant_id")]
        tenant: TenantId,
        binding_id: i64,
        provider: String,
        key_ref: String,
        /// The tenant key created under the new binding.
        #[serde(with = "key_id")]
        tenant_key_id: KeyId,
        /// The binding this one replaced, if any.
        previous_binding_id: Option<i64>,
        /// The authenticated caller that registered the key (`RegisterKey`), as the other
        /// records name actors. Absent in records written before the field existed (their
        /// canonical bytes have no key for it, and must keep hashing the same) and in records of
        /// bindings made without a caller.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
    },
    /// A data-encryption key was created.
    DekCreated {
        #[serde(with = "tenant_id")]
        tenant: TenantId,
        /// HMAC of the scope label ([`crate::IdentifierHasher`], kind `"scope"`).
        scope_hmac: String,
        #[serde(with = "key_id")]
        dek_id: KeyId,
        /// The tenant key the DEK is wrapped under.
        #[serde(with = "key_id")]
        tenant_key_id: KeyId,
    },
    /// A data-encryption key stopped being used for new encryptions (or was deleted).
    DekRetired {
        #[serde(with = "tenant_id")]
        tenant: TenantId,
        scope_hmac: String,
        #[serde(with = "key_id")]
        dek_id: KeyId,
        reason: DekRetireReason,
    },
    /// A KEK binding changed revocation state (revoked, unavailable, destroyed, …).
    RevocationStateChanged(StateTransition),
    /// A revoked KEK binding became usable again.
    Restored(StateTransition),
    /// A tenant's cached tenant keys and DEKs were purged from memory (and zeroized).
    KeysPurged {
        #[serde(with = "tenant_id")]
        tenant: TenantId,
        purged_at_ms: i64,
        /// Number of cache entries removed.
        entries: u64,
        /// When this replica last returned plaintext for the tenant before the purge (the end
        /// of the revocation window as seen by this replica), if it served any since start.
        last_plaintext_at_ms: Option<i64>,
        /// The replica that purged (its `replica_id`), so that a report can name it. Absent in
        /// records written before the field existed (their canonical bytes have no key for it,
        /// and must keep hashing the same).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replica: Option<String>,
    },
    /// Calls refused by authorization (or authentication), aggregated per principal, action,
    /// tenant and second (a flood of denied calls cannot exhaust storage; the count is exact).
    AuthorizationDenied {
        /// The Cedar principal (`Service::"chat-api"`), or `unmapped:<certificate identity>`
        /// when the identity is not in the mapping, or `unidentified`.
        principal: String,
        /// The Cedar action (`Encrypt`, `RevokeKey`, …).
        action: String,
        /// The tenant the call named, or null for calls about the whole deployment.
        #[serde(with = "opt_tenant_id")]
        tenant: Option<TenantId>,
        /// Unix time in seconds.
        second: i64,
        count: u64,
    },
    /// Requests refused because the tenant's key is revoked, aggregated per tenant per second
    /// (a flood cannot exhaust storage; the count is exact).
    RevocationDenials {
        #[serde(with = "tenant_id")]
        tenant: TenantId,
        /// Unix time in seconds.
        second: i64,
        count: u64,
    },
    /// An administrative action, with the caller's identity.
    AdminAction {
        actor: String,
        action: String,
        detail: String,
    },
    /// Per-tenant usage for one minute (support's "why did our KMS bill triple?").
    UsageSummary {
        #[serde(with = "tenant_id")]
        tenant: TenantId,
        /// Unix time in seconds of the minute's start (a multiple of 60).
        minute: i64,
        encrypts: u64,
        decrypts: u64,
        bytes_in: u64,
        bytes_out: u64,
        kms_calls: u64,
        cache_hits: u64,
        errors: u64,
    },
    /// A tenant's policy was set (`SetTenantPolicy`): the whole policy as it is from this record
    /// on (a setting absent is the server's). A record of the tenant, so that the tenant's own
    /// export shows its rules (docs/justifications.md). Deployments before this event recorded
    /// the change as an `admin_action` named `set_tenant_policy`.
    TenantPolicySet {
        #[serde(with = "tenant_id")]
        tenant: TenantId,
        /// The caller that asked.
        actor: String,
        /// Seconds, or null for the server's setting.
        cache_ttl_seconds: Option<u64>,
        monitor_interval_seconds: Option<u64>,
        auto_rekey: bool,
        /// The purposes allowed to decrypt (snake_case, proto order); empty: no rule.
        decrypt_purposes: Vec<String>,
    },
    /// Accesses to one tenant's data in one minute by one caller, for one action and declared
    /// purpose (docs/justifications.md): what the tenant's customer sees of who read their data
    /// and why. Counted in memory and written once the minute is over, like `usage_summary`.
    AccessSummary {
        #[serde(with = "tenant_id")]
        tenant: TenantId,
        /// Unix time in seconds of the minute's start (a multiple of 60).
        minute: i64,
        /// The Cedar principal (`Service::"chat-api"`), or `unidentified` when the server does
        /// not authenticate callers.
        principal: String,
        /// The Cedar action: `Encrypt`, `Decrypt` or `Rewrap`.
        action: String,
        /// The declared purpose (`model_inference`, …), or null when none was given.
        purpose: Option<String>,
        /// Calls (a batch or a stream is one call).
        requests: u64,
        /// Messages sealed or opened: 1 per unary call or stream, one per successful batch item.
        items: u64,
        /// Items refused or failed after the call was authorized (revoked key, wrong context, …).
        errors: u64,
        /// Plaintext bytes sealed or returned.
        bytes: u64,
        /// Unix milliseconds of the first and the last of these calls.
        first_ms: i64,
        last_ms: i64,
        /// The distinct justification references given, sorted; at most
        /// [`AuditEvent::MAX_ACCESS_REFERENCES`], `references_truncated` when there were more.
        references: Vec<String>,
        references_truncated: bool,
    },
    /// A scope of a tenant was crypto-shredded (`ShredScope`, or one scope of a retention run,
    /// `ShredScopes`): its DEKs were deleted, each recorded as `dek_retired` with reason
    /// `shredded` in the same transaction, before this record.
    ScopeShredded {
        #[serde(with = "tenant_id")]
        tenant: TenantId,
        /// HMAC of the scope label ([`crate::IdentifierHasher`], kind `"scope"`).
        scope_hmac: String,
        /// DEKs destroyed (0: the scope had none).
        deks: u64,
        /// The caller that asked.
        actor: String,
        /// Why, as the caller gave it.
        reason: String,
        /// The retention cutoff (Unix ms) when a retention run (`ShredScopes`) shredded it; null
        /// for `ShredScope`.
        retention_cutoff_ms: Option<i64>,
    },
    /// A re-key (`RekeyTenant`) re-wrapped one tenant key under a newer binding's KEK: the KEK
    /// of `from_binding_id` unwrapped it (its owner still allowed it) and the KEK of
    /// `to_binding_id` wraps it from this record on. The DEKs below it are unchanged.
    TenantKeyRewrapped {
        #[serde(with = "tenant_id")]
        tenant: TenantId,
        #[serde(with = "key_id")]
        tenant_key_id: KeyId,
        from_binding_id: i64,
        to_binding_id: i64,
        /// The caller that asked (`RekeyTenant`), or `scheduled-rekey` for the background re-key
        /// of a tenant whose policy asks for it.
        actor: String,
    },
    /// A re-key retired a binding: no tenant key is wrapped by its KEK any more (each was
    /// re-wrapped, `tenant_key_rewrapped`), so no data depends on that KMS key and the customer
    /// may disable or delete it. A retired binding never changes state again.
    KekBindingRetired {
        #[serde(with = "tenant_id")]
        tenant: TenantId,
        binding_id: i64,
        provider: String,
        key_ref: String,
        /// The binding whose KEK wraps the tenant's keys now.
        to_binding_id: i64,
        /// The tenant keys wrapped by `to_binding_id`'s KEK, and the DEKs below them, when this
        /// binding was retired.
        tenant_keys: u64,
        deks: u64,
        actor: String,
    },
    /// A tenant's key hierarchy was exported (`ExportKeyHierarchy`, `keyward export`: the exit
    /// kit, docs/exit.md): its wrapped tenant keys, wrapped DEKs and tombstones, no key in
    /// clear. Written when the export ends, with what was sent.
    KeyHierarchyExported {
        #[serde(with = "tenant_id")]
        tenant: TenantId,
        /// The caller that asked.
        actor: String,
        /// Tenant keys, data keys and tombstones sent.
        tenant_keys: u64,
        data_keys: u64,
        tombstones: u64,
        /// Whether the whole hierarchy was sent; false when the export stopped part-way (the
        /// caller went away, or a read failed) after sending the counts above.
        complete: bool,
    },
    /// The deployment's checkpoint-signing key was rotated. Once a checkpoint signed by the old
    /// key covers this record, verifiers trust `new_public_key` (`docs/audit-format.md` §5).
    SigningKeyRotated {
        old_key_id: String,
        new_key_id: String,
        new_public_key: PublicKey,
    },
}

impl AuditEvent {
    /// Every event type name, as written in the `"type"` field.
    pub const TYPES: [&'static str; 19] = [
        "tenant_created",
        "key_registration_attempted",
        "kek_binding_changed",
        "dek_created",
        "dek_retired",
        "revocation_state_changed",
        "restored",
        "keys_purged",
        "authorization_denied",
        "revocation_denials",
        "admin_action",
        "usage_summary",
        "signing_key_rotated",
        "scope_shredded",
        "tenant_key_rewrapped",
        "kek_binding_retired",
        "key_hierarchy_exported",
        "access_summary",
        "tenant_policy_set",
    ];

    /// Most distinct references one `access_summary` record lists.
    pub const MAX_ACCESS_REFERENCES: usize = 16;

    /// The stable type name (the `"type"` field), for example `"dek_created"`; suitable for an
    /// indexed column.
    pub fn event_type(&self) -> &'static str {
        match self {
            AuditEvent::TenantCreated { .. } => "tenant_created",
            AuditEvent::KeyRegistrationAttempted { .. } => "key_registration_attempted",
            AuditEvent::KekBindingChanged { .. } => "kek_binding_changed",
            AuditEvent::DekCreated { .. } => "dek_created",
            AuditEvent::DekRetired { .. } => "dek_retired",
            AuditEvent::RevocationStateChanged(_) => "revocation_state_changed",
            AuditEvent::Restored(_) => "restored",
            AuditEvent::KeysPurged { .. } => "keys_purged",
            AuditEvent::AuthorizationDenied { .. } => "authorization_denied",
            AuditEvent::RevocationDenials { .. } => "revocation_denials",
            AuditEvent::AdminAction { .. } => "admin_action",
            AuditEvent::UsageSummary { .. } => "usage_summary",
            AuditEvent::AccessSummary { .. } => "access_summary",
            AuditEvent::TenantPolicySet { .. } => "tenant_policy_set",
            AuditEvent::SigningKeyRotated { .. } => "signing_key_rotated",
            AuditEvent::ScopeShredded { .. } => "scope_shredded",
            AuditEvent::TenantKeyRewrapped { .. } => "tenant_key_rewrapped",
            AuditEvent::KekBindingRetired { .. } => "kek_binding_retired",
            AuditEvent::KeyHierarchyExported { .. } => "key_hierarchy_exported",
        }
    }

    /// The tenant the event is about, if any; suitable for an indexed column.
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            AuditEvent::TenantCreated { tenant, .. }
            | AuditEvent::KeyRegistrationAttempted { tenant, .. }
            | AuditEvent::KekBindingChanged { tenant, .. }
            | AuditEvent::DekCreated { tenant, .. }
            | AuditEvent::DekRetired { tenant, .. }
            | AuditEvent::KeysPurged { tenant, .. }
            | AuditEvent::RevocationDenials { tenant, .. }
            | AuditEvent::UsageSummary { tenant, .. }
            | AuditEvent::AccessSummary { tenant, .. }
            | AuditEvent::TenantPolicySet { tenant, .. }
            | AuditEvent::ScopeShredded { tenant, .. }
            | AuditEvent::TenantKeyRewrapped { tenant, .. }
            | AuditEvent::KekBindingRetired { tenant, .. } => Some(tenant),
            AuditEvent::KeyHierarchyExported { tenant, .. } => Some(tenant),
            AuditEvent::RevocationStateChanged(t) | AuditEvent::Restored(t) => Some(&t.tenant),
            AuditEvent::AuthorizationDenied { tenant, .. } => tenant.as_ref(),
            AuditEvent::AdminAction { .. } | AuditEvent::SigningKeyRotated { .. } => None,
        }
    }
}

/// The outcome of a key registration attempt.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum RegistrationOutcome {
    /// The key validated (enabled, round trip succeeded) and was bound.
    Succeeded,
    /// Validation failed; `reason` is the message shown to the customer.
    Failed { reason: String },
}

/// Why a DEK was retired.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DekRetireReason {
    /// `rotation.max_age_seconds` reached.
    MaxAge,
    /// `rotation.max_messages` reached.
    MaxMessages,
    /// `rotation.max_bytes` reached.
    MaxBytes,
    /// The tenant's KEK binding changed.
    KekBindingChanged,
    /// The scope's wrapped DEKs were deleted: the scope is crypto-shredded.
    Shredded,
}

/// The state of a KEK binding as Keyward tracks it (issue 4's state machine).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Active,
    Revoked,
    Unavailable,
    Restored,
    Destroyed,
}

/// What told Keyward about a state change.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationSource {
    /// The KMS refused a wrap or unwrap on the data path.
    KmsRefusal,
    /// The key-state monitor's canary unwrap or metadata check.
    Monitor,
    /// An explicit `RevokeKey` / `RestoreKey` call.
    Explicit,
    /// A pushed key-state event (verified with the KMS).
    Event,
}

/// A revocation-state transition of one KEK binding; the body of
/// [`AuditEvent::RevocationStateChanged`] and [`AuditEvent::Restored`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateTransition {
    #[serde(with = "tenant_id")]
    pub tenant: TenantId,
    pub binding_id: i64,
    pub from: KeyState,
    pub to: KeyState,
    pub source: RevocationSource,
    /// The caller, for explicit transitions; `None` for KMS/monitor/event sources.
    pub actor: Option<String>,
    /// Human-readable reason (the caller's text, or the provider's classified error).
    pub reason: String,
    /// When the signal was first observed (for a KMS refusal: the first refused call), which may
    /// be earlier than the record's `time_ms`.
    pub observed_at_ms: i64,
}

/// Serde for [`TenantId`] as its string form (keyward-envelope has no serde dependency).
mod tenant_id {
    use keyward_envelope::TenantId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &TenantId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(t.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TenantId, D::Error> {
        let s = String::deserialize(d)?;
        TenantId::try_from(s).map_err(serde::de::Error::custom)
    }
}

mod opt_tenant_id {
    use keyward_envelope::TenantId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &Option<TenantId>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(t.as_str()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<TenantId>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| TenantId::try_from(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Serde for [`KeyId`] as 32 lowercase hex characters.
mod key_id {
    use keyward_envelope::KeyId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(k: &KeyId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&k.to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<KeyId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn type_names_match_serde_tags() {
        let t: TenantId = "acme".parse().unwrap();
        let events = [
            AuditEvent::TenantCreated {
                tenant: t.clone(),
                actor: None,
            },
            AuditEvent::AdminAction {
                actor: "ops".into(),
                action: "x".into(),
                detail: String::new(),
            },
            AuditEvent::KeyHierarchyExported {
                tenant: t.clone(),
                actor: "TenantAdmin::\"acme-secops\"".into(),
                tenant_keys: 2,
                data_keys: 1000,
                tombstones: 3,
                complete: true,
            },
            AuditEvent::Restored(StateTransition {
                tenant: t,
                binding_id: 1,
                from: KeyState::Revoked,
                to: KeyState::Restored,
                source: RevocationSource::Monitor,
                actor: None,
                reason: "works again".into(),
                observed_at_ms: 5,
            }),
        ];
        for e in events {
            let v = serde_json::to_value(&e).unwrap();
            assert_eq!(v["type"], e.event_type());
            assert!(AuditEvent::TYPES.contains(&e.event_type()));
            let back: AuditEvent = serde_json::from_value(v).unwrap();
            assert_eq!(back, e);
        }
    }

    /// `keys_purged` gained `replica`: a record written before it (no key) still reads, and
    /// one without a replica serializes exactly as before, so its hash is unchanged.
    #[test]
    fn keys_purged_names_its_replica_and_reads_records_without_one() {
        let old = r#"{"entries":3,"last_plaintext_at_ms":null,"purged_at_ms":5,"tenant":"acme","type":"keys_purged"}"#;
        let event: AuditEvent = serde_json::from_str(old).unwrap();
        assert!(matches!(
            &event,
            AuditEvent::KeysPurged {
                replica: None,
                entries: 3,
                ..
            }
        ));
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            serde_json::from_str::<serde_json::Value>(old).unwrap(),
            "no `replica` key added"
        );
        let named = serde_json::json!({"type": "keys_purged", "tenant": "acme", "purged_at_ms": 5,
            "entries": 3, "last_plaintext_at_ms": 4, "replica": "eu-1"});
        let event: AuditEvent = serde_json::from_value(named.clone()).unwrap();
        assert!(matches!(&event, AuditEvent::KeysPurged { replica: Some(r), .. } if r == "eu-1"));
        assert_eq!(serde_json::to_value(&event).unwrap(), named);
    }

    /// `kek_binding_changed` gained `actor`: a record written before it (no key) still reads,
    /// and one without an actor serializes exactly as before, so its hash is unchanged.
    #[test]
    fn kek_binding_changed_names_its_actor_and_reads_records_without_one() {
        let old = r#"{"binding_id":2,"key_ref":"default","previous_binding_id":1,"provider":"local","tenant":"acme","tenant_key_id":"000102030405060708090a0b0c0d0e0f","type":"kek_binding_changed"}"#;
        let event: AuditEvent = serde_json::from_str(old).unwrap();
        assert!(matches!(
            &event,
            AuditEvent::KekBindingChanged {
                actor: None,
                binding_id: 2,
                previous_binding_id: Some(1),
                ..
            }
        ));
        assert_eq!(
            crate::canonical::to_vec_of(&event).unwrap(),
            old.as_bytes(),
            "no `actor` key added: the canonical bytes of an older record are unchanged"
        );
        let mut named: serde_json::Value = serde_json::from_str(old).unwrap();
        named["actor"] = serde_json::json!("Service::\"onboarding\" requested_by=\"ana\"");
        let event: AuditEvent = serde_json::from_value(named.clone()).unwrap();
        assert!(matches!(
            &event,
            AuditEvent::KekBindingChanged { actor: Some(a), .. }
                if a == "Service::\"onboarding\" requested_by=\"ana\""
        ));
        assert_eq!(serde_json::to_value(&event).unwrap(), named);
    }

    #[test]
    fn rejects_invalid_tenant_and_unknown_fields() {
        let bad =
            serde_json::json!({"type": "tenant_created", "tenant": "Bad Tenant", "actor": null});
        assert!(serde_json::from_value::<AuditEvent>(bad).is_err());
        let extra =
            serde_json::json!({"type": "tenant_created", "tenant": "acme", "actor": null, "x": 1});
        assert!(serde_json::from_value::<AuditEvent>(extra).is_err());
    }
}
