//! The invariants (each a named check) and the model the test keeps of what was committed.

use std::{collections::BTreeMap, fmt};

use keyward_audit::KeyState as AuditState;
use keyward_envelope::KeyId;
use keyward_store::{KekBinding, KekState};

use super::REPLICAS;

// ----- invariants ------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invariant {
    NoPlaintextAfterRevocation,
    AFailedRevokeKeyClosesItsReplica,
    ExplicitRevocationLiftedOnlyByRestoreKey,
    NoOverwriteFromAnOlderRead,
    TtlBoundsKeyUse,
    AuditIsComplete,
    NoPlaintextAfterShred,
    NoMoveFromARevokedBinding,
    RetiredWrapsNothing,
}

impl Invariant {
    const ALL: [Invariant; 9] = [
        Invariant::NoPlaintextAfterRevocation,
        Invariant::AFailedRevokeKeyClosesItsReplica,
        Invariant::ExplicitRevocationLiftedOnlyByRestoreKey,
        Invariant::NoOverwriteFromAnOlderRead,
        Invariant::TtlBoundsKeyUse,
        Invariant::AuditIsComplete,
        Invariant::NoPlaintextAfterShred,
        Invariant::NoMoveFromARevokedBinding,
        Invariant::RetiredWrapsNothing,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Invariant::NoPlaintextAfterRevocation => "no_plaintext_after_revocation",
            Invariant::AFailedRevokeKeyClosesItsReplica => "a_failed_revoke_key_closes_its_replica",
            Invariant::ExplicitRevocationLiftedOnlyByRestoreKey => {
                "explicit_revocation_lifted_only_by_restore_key"
            }
            Invariant::NoOverwriteFromAnOlderRead => "no_overwrite_from_an_older_read",
            Invariant::TtlBoundsKeyUse => "ttl_bounds_key_use",
            Invariant::AuditIsComplete => "audit_is_complete",
            Invariant::NoPlaintextAfterShred => "no_plaintext_after_shred",
            Invariant::NoMoveFromARevokedBinding => "no_move_from_a_revoked_binding",
            Invariant::RetiredWrapsNothing => "retired_wraps_nothing",
        }
    }

    /// Whether `KEYWARD_MODEL_INVARIANTS` (default: all) selects this invariant.
    pub(crate) fn enabled(self) -> bool {
        match std::env::var("KEYWARD_MODEL_INVARIANTS") {
            Ok(list) if !list.trim().is_empty() => {
                let names: Vec<&str> = list.split(',').map(str::trim).collect();
                for name in &names {
                    assert!(
                        Invariant::ALL.iter().any(|i| i.name() == *name),
                        "KEYWARD_MODEL_INVARIANTS: unknown invariant {name:?}"
                    );
                }
                names.contains(&self.name())
            }
            _ => true,
        }
    }
}

/// A broken invariant, with what the model knew.
#[derive(Debug)]
pub(crate) struct Violation {
    pub(crate) invariant: Invariant,
    pub(crate) detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} violated: {}", self.invariant.name(), self.detail)
    }
}

pub(crate) fn check(
    invariant: Invariant,
    holds: bool,
    detail: impl FnOnce() -> String,
) -> Result<(), Violation> {
    if holds || !invariant.enabled() {
        Ok(())
    } else {
        Err(Violation {
            invariant,
            detail: detail(),
        })
    }
}

// ----- the model -------------------------------------------------------------------------

/// A committed revocation of a binding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Revocation {
    /// The step during which it was committed (0: set-up).
    pub(crate) step: usize,
    /// The replica whose step committed it.
    pub(crate) by: Option<usize>,
}

#[derive(Debug)]
pub(crate) struct BindingModel {
    /// The state its audit records say it is in.
    pub(crate) state: KekState,
    /// `RevokeKey` returned OK for it and `RestoreKey` has not since.
    pub(crate) explicit: Option<usize>,
    /// Committed and not lifted by a restore.
    pub(crate) revocation: Option<Revocation>,
}

#[derive(Debug)]
pub(crate) struct EnvelopeModel {
    pub(crate) bytes: Vec<u8>,
    pub(crate) plaintext: Vec<u8>,
    pub(crate) tenant_key: KeyId,
    pub(crate) binding: i64,
    /// The DEK it was sealed under.
    pub(crate) dek: KeyId,
}

#[derive(Debug, Default)]
pub(crate) struct Model {
    pub(crate) bindings: BTreeMap<i64, BindingModel>,
    /// The binding whose KEK wraps each tenant key, as the audit log says (its own binding's
    /// from `kek_binding_changed`, the target's from each `tenant_key_rewrapped`).
    pub(crate) wrapping: BTreeMap<KeyId, i64>,
    pub(crate) envelopes: Vec<EnvelopeModel>,
    /// The step of each replica's last completed reconciliation with the store.
    pub(crate) synced: [Option<usize>; REPLICAS],
    /// Shredded DEKs: the step and replica of the shred that destroyed each.
    pub(crate) shreds: BTreeMap<KeyId, Revocation>,
    /// The step of each replica's last shred notification (`ApplyShred`) or reconciliation.
    pub(crate) shred_synced: [Option<usize>; REPLICAS],
    /// The step of a `RevokeKey` on each replica that failed on the store (`STORE_ERROR`): not
    /// recorded, but in force on that replica until a revocation is recorded or `RestoreKey`
    /// succeeds there (docs/operations.md, "A PostgreSQL outage or restart").
    pub(crate) unrecorded: [Option<usize>; REPLICAS],
    /// The binding read by the last `ReadBinding`.
    pub(crate) snapshot: Option<KekBinding>,
    /// The step that started the `RestoreKey` that returned OK in this step.
    pub(crate) restore_started: Option<usize>,
    /// Requests that started while their replica's gate for the tenant was closed.
    pub(crate) denials_expected: u64,
    pub(crate) encrypts_ok: u64,
    pub(crate) decrypts_ok: u64,
    pub(crate) errors: u64,
    // From the audit log.
    pub(crate) audit_cursor: u64,
    pub(crate) revocation_seqs: Vec<u64>,
    pub(crate) purge_seqs: Vec<u64>,
    pub(crate) denials_recorded: u64,
    pub(crate) usage_recorded: (u64, u64, u64),
}

impl Model {
    /// The binding whose KEK wraps `tenant_key` now (a re-key moves it).
    pub(crate) fn binding_of_key(&self, tenant_key: &KeyId) -> Option<i64> {
        self.wrapping.get(tenant_key).copied()
    }

    /// Whether `replica` must know that `binding` is revoked (and so refuse its keys).
    pub(crate) fn known_revocation(&self, binding: i64, replica: usize) -> Option<Revocation> {
        let revocation = self.bindings.get(&binding)?.revocation?;
        let delivered = revocation.by == Some(replica)
            || self.synced[replica].is_some_and(|synced| synced > revocation.step);
        delivered.then_some(revocation)
    }
}

impl Model {
    /// Whether `replica` must know that `dek` was shredded (and so never use it).
    pub(crate) fn known_shred(&self, dek: &KeyId, replica: usize) -> Option<Revocation> {
        let shred = *self.shreds.get(dek)?;
        let delivered = shred.by == Some(replica)
            || self.shred_synced[replica].is_some_and(|synced| synced > shred.step);
        delivered.then_some(shred)
    }
}

pub(crate) fn kek_state(state: AuditState) -> KekState {
    match state {
        AuditState::Active => KekState::Active,
        AuditState::Revoked => KekState::Revoked,
        AuditState::Unavailable => KekState::Unavailable,
        AuditState::Restored => KekState::Restored,
        AuditState::Destroyed => KekState::Destroyed,
        other => panic!("an audit key state the model does not know: {other:?}"),
    }
}

pub(crate) fn is_revoked(state: KekState) -> bool {
    matches!(state, KekState::Revoked | KekState::Destroyed)
}

pub(crate) fn by(replica: Option<usize>) -> String {
    replica.map_or_else(|| "set-up".to_owned(), |r| format!("R{r}"))
}
