//! The steps of the model test and how a case draws them.

use proptest::prelude::*;

use super::kms::Mode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replica {
    R0,
    R1,
}

impl Replica {
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kek {
    K0,
    K1,
}

impl Kek {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kek::K0 => "k0",
            Kek::K1 => "k1",
        }
    }
}

/// Where a held task stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HoldAt {
    /// Its next KMS unwrap, after the KMS answered.
    KmsAnswer,
    /// Its next read of the tenant's current binding, after the store answered.
    BindingRead,
}

/// A task started by `Hold` and finished by `Release`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Task {
    /// A monitor check of the binding read when the task starts.
    Check,
    /// A decrypt of the `envelope`-th envelope written so far (modulo their number).
    Decrypt { envelope: u8 },
    /// `RevokeKey`.
    Revoke,
    /// `RestoreKey`.
    Restore,
    /// `RekeyTenant` (every tenant key under the current binding's KEK).
    Rekey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Encrypt {
        on: Replica,
    },
    /// Decrypts the `envelope`-th envelope written so far (modulo their number).
    Decrypt {
        on: Replica,
        envelope: u8,
    },
    /// A monitor check of the binding as it is in the store now.
    Check {
        on: Replica,
    },
    /// A sweep reads the tenant's binding now (for a later `CheckStale`).
    ReadBinding,
    /// A monitor check of the binding read by the last `ReadBinding`.
    CheckStale {
        on: Replica,
    },
    /// One pass of the monitor (`check_due`, server interval 1 h).
    CheckDue {
        on: Replica,
    },
    /// `RevokeKey` (explicit, break glass).
    Revoke {
        on: Replica,
    },
    /// `RestoreKey` (explicit).
    Restore {
        on: Replica,
    },
    /// The KMS's answer for a KEK from now on.
    Kms {
        kek: Kek,
        mode: Mode,
    },
    /// `RegisterKey`: a new binding to `kek`.
    Register {
        on: Replica,
        kek: Kek,
    },
    /// `SetTenantPolicy`.
    SetPolicy {
        on: Replica,
        cache_ttl_s: Option<u64>,
        monitor_interval_s: Option<u64>,
    },
    Reconcile {
        on: Replica,
    },
    /// A key event naming `kek` (`ReportKeyEvent`): every binding registered with it, current
    /// or older, is checked with the KMS now.
    KeyEvent {
        on: Replica,
        kek: Kek,
    },
    /// `RekeyTenant`: every tenant key moves under the current binding's KEK, the older
    /// bindings retire.
    Rekey {
        on: Replica,
    },
    /// `ShredScope` of the scope every message is written to.
    Shred {
        on: Replica,
    },
    /// The notification of another replica's shred (`apply_recorded_shred`).
    ApplyShred {
        on: Replica,
    },
    ApplyRecorded {
        on: Replica,
    },
    /// The replica's next `pass` store writes succeed, the `fail` after them fail.
    FailWrites {
        on: Replica,
        pass: u8,
        fail: u8,
    },
    /// The replica's next `fail` reads of the tenant's current binding fail.
    FailReads {
        on: Replica,
        fail: u8,
    },
    /// `flush_all_denials`: denial counts and usage summaries to the audit log.
    FlushDenials {
        on: Replica,
    },
    /// `purge_tenant`: the replica forgets the tenant's cached keys.
    Purge {
        on: Replica,
    },
    /// Time passes beyond the server TTL.
    Wait,
    /// Starts `task` on a replica and stops it at `at` (if it gets there).
    Hold {
        on: Replica,
        task: Task,
        at: HoldAt,
    },
    /// Lets the held task finish.
    Release,
}

pub(crate) fn replica() -> impl Strategy<Value = Replica> {
    prop_oneof![Just(Replica::R0), Just(Replica::R1)]
}

pub(crate) fn kek() -> impl Strategy<Value = Kek> {
    prop_oneof![Just(Kek::K0), Just(Kek::K1)]
}

/// Every kind of step with its weight. A case draws its steps from a random subset of these
/// ("swarm testing", Groce et al., ISSTA 2012): a sequence without, say, KMS changes or store
/// failures reaches the states where the other kinds interact much more often than one that
/// mixes every kind every time.
pub(crate) fn op_kinds() -> Vec<(u32, BoxedStrategy<Op>)> {
    // Mostly answering: a KMS that refuses or is down for the rest of a case hides the
    // data-path defects behind its own errors.
    let mode = prop_oneof![
        2 => Just(Mode::Ok),
        1 => Just(Mode::Refused),
        1 => Just(Mode::Unreachable),
    ];
    let seconds = prop_oneof![Just(None), Just(Some(1)), Just(Some(3600))];
    let task = prop_oneof![
        Just(Task::Check),
        (0u8..8).prop_map(|envelope| Task::Decrypt { envelope }),
        Just(Task::Revoke),
        Just(Task::Restore),
        Just(Task::Rekey),
    ];
    let at = prop_oneof![Just(HoldAt::KmsAnswer), Just(HoldAt::BindingRead)];
    vec![
        (6, replica().prop_map(|on| Op::Encrypt { on }).boxed()),
        (
            8,
            (replica(), 0u8..8)
                .prop_map(|(on, envelope)| Op::Decrypt { on, envelope })
                .boxed(),
        ),
        (4, replica().prop_map(|on| Op::Check { on }).boxed()),
        (2, Just(Op::ReadBinding).boxed()),
        (3, replica().prop_map(|on| Op::CheckStale { on }).boxed()),
        (1, replica().prop_map(|on| Op::CheckDue { on }).boxed()),
        (4, replica().prop_map(|on| Op::Revoke { on }).boxed()),
        (3, replica().prop_map(|on| Op::Restore { on }).boxed()),
        (
            4,
            (kek(), mode)
                .prop_map(|(kek, mode)| Op::Kms { kek, mode })
                .boxed(),
        ),
        (
            3,
            (replica(), kek())
                .prop_map(|(on, kek)| Op::Register { on, kek })
                .boxed(),
        ),
        (
            2,
            (replica(), seconds.clone(), seconds)
                .prop_map(|(on, cache_ttl_s, monitor_interval_s)| Op::SetPolicy {
                    on,
                    cache_ttl_s,
                    monitor_interval_s,
                })
                .boxed(),
        ),
        (4, replica().prop_map(|on| Op::Reconcile { on }).boxed()),
        (3, replica().prop_map(|on| Op::Rekey { on }).boxed()),
        (
            2,
            (replica(), kek())
                .prop_map(|(on, kek)| Op::KeyEvent { on, kek })
                .boxed(),
        ),
        (2, replica().prop_map(|on| Op::Shred { on }).boxed()),
        (2, replica().prop_map(|on| Op::ApplyShred { on }).boxed()),
        (2, replica().prop_map(|on| Op::ApplyRecorded { on }).boxed()),
        (
            2,
            (replica(), 0u8..3, 1u8..3)
                .prop_map(|(on, pass, fail)| Op::FailWrites { on, pass, fail })
                .boxed(),
        ),
        (
            2,
            (replica(), 1u8..3)
                .prop_map(|(on, fail)| Op::FailReads { on, fail })
                .boxed(),
        ),
        (2, replica().prop_map(|on| Op::FlushDenials { on }).boxed()),
        (1, replica().prop_map(|on| Op::Purge { on }).boxed()),
        (1, Just(Op::Wait).boxed()),
        (
            2,
            (replica(), task, at)
                .prop_map(|(on, task, at)| Op::Hold { on, task, at })
                .boxed(),
        ),
        (3, Just(Op::Release).boxed()),
    ]
}

/// A sequence of 1 to 47 steps, drawn from a random subset of the kinds of step.
pub(crate) fn ops() -> impl Strategy<Value = Vec<Op>> {
    let kinds = op_kinds().len();
    prop::collection::vec(any::<bool>(), kinds).prop_flat_map(|enabled| {
        let mut kinds = op_kinds();
        if enabled.iter().any(|on| *on) {
            let mut on = enabled.iter();
            kinds.retain(|_| *on.next().unwrap_or(&true));
        }
        prop::collection::vec(prop::strategy::Union::new_weighted(kinds), 1..48)
    })
}
