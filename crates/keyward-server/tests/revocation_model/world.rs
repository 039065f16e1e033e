//! The replicas on one store, the steps run on them, and the checks after each step.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use keyward_audit::{AuditEvent, IdentifierHasher, StateTransition};
use keyward_envelope::{EncryptionContext, KeyId, TenantId};
use keyward_kms::{KeyRef, ProviderKind, local::LocalProvider};
use keyward_server::{
    CachePolicy, Keyring, Providers,
    error::ServiceError,
    keyring::RotationPolicy,
    keyring::{MonitorPolicy, RevocationSource},
};
use keyward_store::{AuditQuery, KekBinding, KekState, Scope, Store, TenantPolicy};
use tokio::task::JoinHandle;

use super::{
    REPLICAS, SERVER_TTL, STEP_TIMEOUT, TTL_SLACK, WAIT,
    kms::{KmsControl, ReplicaKms},
    model::{
        BindingModel, EnvelopeModel, Invariant, Model, Revocation, Violation, by, check,
        is_revoked, kek_state,
    },
    ops::{HoldAt, Kek, Op, Task},
    store::FaultyStore,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

pub(crate) struct ReplicaHandle {
    pub(crate) keyring: Arc<Keyring>,
    pub(crate) store: Arc<FaultyStore>,
    pub(crate) kms: Arc<ReplicaKms>,
}

impl ReplicaHandle {}

/// What a held task returned.
pub(crate) enum TaskResult {
    Checked,
    Decrypted {
        envelope: usize,
        result: Result<Vec<u8>, ServiceError>,
    },
    Revoked(Result<KekBinding, ServiceError>),
    Restored(Result<KekBinding, ServiceError>),
}

pub(crate) struct Held {
    pub(crate) on: usize,
    /// The step that started it (its reads are from then).
    pub(crate) started: usize,
    pub(crate) task: JoinHandle<TaskResult>,
    pub(crate) release: tokio::sync::oneshot::Sender<()>,
}

pub(crate) struct World {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) replicas: Vec<ReplicaHandle>,
    pub(crate) control: Arc<KmsControl>,
    pub(crate) tenant: TenantId,
    pub(crate) model: Model,
    pub(crate) held: Option<Held>,
    pub(crate) messages: u64,
}

pub(crate) async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(STEP_TIMEOUT, future).await {
        Ok(t) => t,
        Err(_) => panic!("{what} did not finish within {STEP_TIMEOUT:?} (a deadlock?)"),
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap())
}

impl World {
    pub(crate) async fn new(store: Arc<dyn Store>, kms_dir: &std::path::Path) -> World {
        let local = LocalProvider::open(kms_dir).unwrap();
        for kek in [Kek::K0, Kek::K1] {
            local.create_key(kek.name()).unwrap();
        }
        let control = Arc::new(KmsControl::default());
        let replicas = (0..REPLICAS)
            .map(|i| {
                let faulty = Arc::new(FaultyStore::new(Arc::clone(&store)));
                let kms = Arc::new(ReplicaKms::new(
                    LocalProvider::open(kms_dir).unwrap(),
                    Arc::clone(&control),
                ));
                let keyring = Keyring::new(
                    faulty.clone(),
                    Providers::default().with(kms.clone()),
                    CachePolicy {
                        ttl: SERVER_TTL,
                        max_tenant_keys: 1000,
                        max_deks: 1000,
                    },
                    RotationPolicy {
                        max_age: Duration::from_secs(3600),
                        max_messages: 1 << 20,
                        max_bytes: 1 << 30,
                    },
                    Arc::new(IdentifierHasher::new([7; 32])),
                )
                .with_replica_id(format!("R{i}"));
                ReplicaHandle {
                    keyring: Arc::new(keyring),
                    store: faulty,
                    kms,
                }
            })
            .collect();
        let mut world = World {
            store,
            replicas,
            control,
            tenant: TenantId::try_from("model").unwrap(),
            model: Model::default(),
            held: None,
            messages: 0,
        };
        let r0 = &world.replicas[0].keyring;
        r0.create_tenant(&world.tenant, "Model tenant", "model".to_owned())
            .await
            .unwrap();
        r0.register_key(&world.tenant, &KeyRef::new(ProviderKind::Local, "k0"))
            .await
            .unwrap();
        world.observe(0, None).await.unwrap();
        world
    }

    pub(crate) fn busy(&self, replica: usize) -> bool {
        self.held.as_ref().is_some_and(|h| h.on == replica)
    }

    pub(crate) fn envelope_index(&self, pick: u8) -> Option<usize> {
        let n = self.model.envelopes.len();
        (n > 0).then(|| usize::from(pick) % n)
    }

    /// Runs one step and checks the invariants after it.
    pub(crate) async fn step(&mut self, step: usize, op: &Op) -> Result<(), Violation> {
        let actor = self.run(step, op).await?;
        self.observe(step, actor).await
    }

    /// Runs `op`; returns the replica that acted (for attributing what it committed).
    pub(crate) async fn run(&mut self, step: usize, op: &Op) -> Result<Option<usize>, Violation> {
        let tenant = self.tenant.clone();
        let on = match op {
            Op::Encrypt { on }
            | Op::Decrypt { on, .. }
            | Op::Check { on }
            | Op::CheckStale { on }
            | Op::CheckDue { on }
            | Op::Revoke { on }
            | Op::Restore { on }
            | Op::Register { on, .. }
            | Op::SetPolicy { on, .. }
            | Op::Reconcile { on }
            | Op::Rekey { on }
            | Op::KeyEvent { on, .. }
            | Op::Shred { on }
            | Op::ApplyShred { on }
            | Op::ApplyRecorded { on }
            | Op::FailWrites { on, .. }
            | Op::FailReads { on, .. }
            | Op::FlushDenials { on }
            | Op::Purge { on }
            | Op::Hold { on, .. } => Some(on.index()),
            Op::ReadBinding | Op::Kms { .. } | Op::Wait | Op::Release => None,
        };
        if let Some(r) = on
            && self.busy(r)
        {
            return Ok(None); // skipped: a task is held on this replica
        }
        match *op {
            Op::Encrypt { on } => {
                let r = on.index();
                let used_at = Instant::now();
                self.messages += 1;
                let plaintext = format!("message {}", self.messages).into_bytes();
                let result = bounded(
                    "encrypt",
                    self.replicas[r].keyring.encrypt(
                        &tenant,
                        &Scope::default_scope(),
                        &EncryptionContext::empty(),
                        &plaintext,
                    ),
                )
                .await;
                self.count_request(refused_revoked(&result), result.is_ok());
                if let Ok((bytes, dek)) = result {
                    // A replica not told of a shred may still seal under the shredded DEK (the
                    // invariant says when it must not): its tombstone names its tenant key.
                    let tenant_key_id = match self.store.get_dek(&tenant, &dek).await.unwrap() {
                        Some(record) => record.tenant_key_id,
                        None => {
                            self.store
                                .dek_tombstone(&tenant, &dek)
                                .await
                                .unwrap()
                                .expect("a DEK an encrypt returned is stored or shredded")
                                .tenant_key_id
                        }
                    };
                    let binding = self.binding_of_key(&tenant_key_id).await;
                    self.check_key_use(r, "encrypt", binding, &tenant_key_id, used_at)?;
                    self.check_not_shredded(r, "encrypt", &dek)?;
                    self.model.envelopes.push(EnvelopeModel {
                        bytes,
                        plaintext,
                        tenant_key: tenant_key_id,
                        binding,
                        dek,
                    });
                }
            }
            Op::Decrypt { on, envelope } => {
                let r = on.index();
                let Some(index) = self.envelope_index(envelope) else {
                    return Ok(None);
                };
                let used_at = Instant::now();
                let result = bounded(
                    "decrypt",
                    self.replicas[r].keyring.decrypt(
                        &tenant,
                        &self.model.envelopes[index].bytes,
                        &EncryptionContext::empty(),
                    ),
                )
                .await
                .map(|p| p.to_vec());
                self.count_request(refused_revoked(&result), result.is_ok());
                self.decrypted(r, index, result, used_at)?;
            }
            Op::Check { on } => {
                if let Some(binding) = self.store.active_binding(&tenant).await.unwrap() {
                    let keyring = &self.replicas[on.index()].keyring;
                    let _ = bounded("check_binding", keyring.check_binding(&binding)).await;
                }
            }
            Op::ReadBinding => {
                self.model.snapshot = self.store.active_binding(&tenant).await.unwrap();
            }
            Op::CheckStale { on } => {
                if let Some(binding) = self.model.snapshot.clone() {
                    let keyring = &self.replicas[on.index()].keyring;
                    let _ = bounded("check_binding (stale)", keyring.check_binding(&binding)).await;
                }
            }
            Op::CheckDue { on } => {
                let policy = MonitorPolicy::new(Duration::from_secs(3600), 1000);
                let keyring = &self.replicas[on.index()].keyring;
                let _ = bounded("check_due", keyring.check_due(policy)).await;
            }
            Op::Revoke { on } => {
                let r = on.index();
                let result = bounded("revoke", revoke(&self.replicas[r].keyring, &tenant)).await;
                self.revoked(step, r, result);
            }
            Op::Restore { on } => {
                let result = bounded(
                    "restore",
                    restore(&self.replicas[on.index()].keyring, &tenant),
                )
                .await;
                self.restored(step, on.index(), result);
            }
            Op::Kms { kek, mode } => self.control.set(kek.name(), mode),
            Op::Rekey { on } => {
                let keyring = &self.replicas[on.index()].keyring;
                let _ = bounded("rekey", keyring.rekey(&tenant, None, "model")).await;
            }
            Op::KeyEvent { on, kek } => {
                let keyring = &self.replicas[on.index()].keyring;
                let _ = bounded(
                    "recheck_key",
                    keyring.recheck_key(ProviderKind::Local, kek.name()),
                )
                .await;
            }
            Op::Register { on, kek } => {
                let keyring = &self.replicas[on.index()].keyring;
                let kek = KeyRef::new(ProviderKind::Local, kek.name());
                let _ = bounded("register_key", keyring.register_key(&tenant, &kek)).await;
            }
            Op::SetPolicy {
                on,
                cache_ttl_s,
                monitor_interval_s,
            } => {
                let policy = TenantPolicy {
                    cache_ttl_seconds: cache_ttl_s,
                    monitor_interval_seconds: monitor_interval_s,
                    auto_rekey: false,
                    decrypt_purposes: 0,
                };
                let keyring = &self.replicas[on.index()].keyring;
                let _ = bounded(
                    "set_tenant_policy",
                    keyring.set_tenant_policy(&tenant, policy, "model".to_owned()),
                )
                .await;
            }
            Op::Reconcile { on } => {
                let r = on.index();
                if bounded("reconcile", self.replicas[r].keyring.reconcile())
                    .await
                    .is_ok()
                {
                    self.model.synced[r] = Some(step);
                    self.model.shred_synced[r] = Some(step);
                }
            }
            Op::Shred { on } => {
                let r = on.index();
                let result = bounded(
                    "shred_scope",
                    self.replicas[r].keyring.shred_scope(
                        &tenant,
                        &Scope::default_scope(),
                        "model",
                        "model",
                    ),
                )
                .await;
                if let Ok(result) = result {
                    for tombstone in result.tombstones {
                        self.model
                            .shreds
                            .insert(tombstone.id, Revocation { step, by: Some(r) });
                    }
                }
            }
            Op::ApplyShred { on } => {
                let r = on.index();
                bounded(
                    "apply_recorded_shred",
                    self.replicas[r].keyring.apply_recorded_shred(&tenant),
                )
                .await;
                self.model.shred_synced[r] = Some(step);
            }
            Op::ApplyRecorded { on } => {
                let r = on.index();
                let keyring = &self.replicas[r].keyring;
                if bounded(
                    "apply_recorded_state",
                    keyring.apply_recorded_state(&tenant),
                )
                .await
                .is_ok()
                {
                    self.model.synced[r] = Some(step);
                }
            }
            Op::FailWrites { on, pass, fail } => {
                self.replicas[on.index()]
                    .store
                    .fail_writes(u32::from(pass), u32::from(fail));
            }
            Op::FailReads { on, fail } => {
                self.replicas[on.index()]
                    .store
                    .fail_binding_reads(u32::from(fail));
            }
            Op::FlushDenials { on } => {
                let keyring = &self.replicas[on.index()].keyring;
                let _ = bounded("flush_all_denials", keyring.flush_all_denials()).await;
            }
            Op::Purge { on } => {
                let keyring = &self.replicas[on.index()].keyring;
                bounded("purge_tenant", keyring.purge_tenant(&tenant)).await;
            }
            Op::Wait => tokio::time::sleep(WAIT).await,
            Op::Hold { on, task, at } => return self.hold(step, on.index(), task, at).await,
            Op::Release => return self.release(step).await,
        }
        Ok(on)
    }

    /// Every request refused `KEY_REVOKED` is one denial in the audit log, whichever check
    /// refused it (the gate at admission, the binding of an older tenant key, the last check).
    pub(crate) fn count_request(&mut self, revoked: bool, ok: bool) {
        if revoked {
            self.model.denials_expected += 1;
        }
        if !ok {
            self.model.errors += 1;
        }
    }

    pub(crate) async fn binding_of_key(&self, tenant_key: &KeyId) -> i64 {
        if let Some(id) = self.model.binding_of_key(tenant_key) {
            return id;
        }
        let record = self
            .store
            .get_tenant_key(&self.tenant, tenant_key)
            .await
            .unwrap()
            .unwrap();
        record.binding_id
    }

    pub(crate) fn revoked(
        &mut self,
        step: usize,
        r: usize,
        result: Result<KekBinding, ServiceError>,
    ) {
        match result {
            Ok(binding) => {
                // RevokeKey said OK: the binding is revoked, by a break-glass revocation.
                if let Some(b) = self.model.bindings.get_mut(&binding.id) {
                    b.explicit.get_or_insert(step);
                    b.revocation.get_or_insert(Revocation { step, by: Some(r) });
                }
                self.model.unrecorded[r] = None;
            }
            Err(e) if e.reason() == "STORE_ERROR" => {
                self.model.unrecorded[r].get_or_insert(step);
            }
            Err(_) => {}
        }
    }

    /// `RestoreKey`, started at step `started`, returned. What it lifted (if anything) is read
    /// from its `restored` record: the binding it returns may be the state it read long ago.
    pub(crate) fn restored(
        &mut self,
        started: usize,
        r: usize,
        result: Result<KekBinding, ServiceError>,
    ) {
        if result.is_ok() {
            self.model.restore_started = Some(started);
            self.model.unrecorded[r] = None;
        }
    }

    /// The envelope's plaintext came back (or not) from replica `r`.
    pub(crate) fn decrypted(
        &mut self,
        r: usize,
        index: usize,
        result: Result<Vec<u8>, ServiceError>,
        used_at: Instant,
    ) -> Result<(), Violation> {
        let Ok(plaintext) = result else {
            return Ok(());
        };
        self.model.decrypts_ok += 1;
        let envelope = &self.model.envelopes[index];
        assert_eq!(
            plaintext, envelope.plaintext,
            "decrypt returned another plaintext"
        );
        let (tenant_key, dek) = (envelope.tenant_key, envelope.dek);
        // The binding whose KEK wraps the tenant key now: a re-key moves it, and what decides
        // whether its data may be read is that binding's state.
        let binding = self
            .model
            .binding_of_key(&tenant_key)
            .unwrap_or(envelope.binding);
        self.check_not_shredded(r, "decrypt", &dek)?;
        self.check_key_use(r, "decrypt", binding, &tenant_key, used_at)
    }

    /// An encrypt or decrypt that succeeded on replica `r` with `dek` did not use a DEK whose
    /// shred that replica had made or been told of.
    pub(crate) fn check_not_shredded(
        &self,
        r: usize,
        what: &str,
        dek: &KeyId,
    ) -> Result<(), Violation> {
        let shred = self.model.known_shred(dek, r);
        check(Invariant::NoPlaintextAfterShred, shred.is_none(), || {
            let shred = shred.unwrap();
            format!(
                "{what} on R{r} succeeded with DEK {dek}, shredded at step {} by {} and \
                 delivered to R{r}",
                shred.step,
                by(shred.by)
            )
        })
    }

    /// Checks an encrypt or decrypt that succeeded on replica `r` with `tenant_key`.
    pub(crate) fn check_key_use(
        &mut self,
        r: usize,
        what: &str,
        binding: i64,
        tenant_key: &KeyId,
        used_at: Instant,
    ) -> Result<(), Violation> {
        if what == "encrypt" {
            self.model.encrypts_ok += 1;
        }
        let unrecorded = self.model.unrecorded[r];
        check(
            Invariant::AFailedRevokeKeyClosesItsReplica,
            unrecorded.is_none(),
            || {
                format!(
                    "{what} on R{r} succeeded with the tenant key of binding {binding} after a \
                     RevokeKey on R{r} failed on the store at step {}, with no revocation \
                     recorded or RestoreKey on R{r} since",
                    unrecorded.unwrap_or_default()
                )
            },
        )?;
        let revocation = self.model.known_revocation(binding, r);
        check(
            Invariant::NoPlaintextAfterRevocation,
            revocation.is_none(),
            || {
                let revocation = revocation.unwrap();
                format!(
                    "{what} on R{r} succeeded with the tenant key of binding {binding}, whose \
                 revocation was committed at step {} by {} and delivered to R{r}, with no \
                 restore of that binding committed since",
                    revocation.step,
                    by(revocation.by)
                )
            },
        )?;
        let vouched = self.replicas[r].kms.last_vouched(tenant_key);
        let age = vouched.map(|at| used_at.saturating_duration_since(at));
        check(
            Invariant::TtlBoundsKeyUse,
            age.is_some_and(|age| age <= SERVER_TTL + TTL_SLACK),
            || match age {
                Some(age) => format!(
                    "{what} on R{r} used tenant key {tenant_key} (binding {binding}) {age:?} \
                     after the KMS last returned it to R{r}; the server TTL is {SERVER_TTL:?}"
                ),
                None => format!(
                    "{what} on R{r} used tenant key {tenant_key} (binding {binding}) that the \
                     KMS never returned to R{r}"
                ),
            },
        )
    }

    pub(crate) async fn hold(
        &mut self,
        step: usize,
        r: usize,
        task: Task,
        at: HoldAt,
    ) -> Result<Option<usize>, Violation> {
        if self.held.is_some() {
            return Ok(None); // one held task at a time
        }
        let envelope = match task {
            Task::Decrypt { envelope } => match self.envelope_index(envelope) {
                Some(index) => Some(index),
                None => return Ok(None),
            },
            _ => None,
        };
        let binding = self.store.active_binding(&self.tenant).await.unwrap();
        let replica = &self.replicas[r];
        let mut armer = match at {
            HoldAt::KmsAnswer => replica.kms.hold.arm(),
            HoldAt::BindingRead => replica.store.hold_binding_read.arm(),
        };
        let keyring = Arc::clone(&replica.keyring);
        let tenant = self.tenant.clone();
        let bytes = envelope.map(|i| self.model.envelopes[i].bytes.clone());
        let mut handle = tokio::spawn(async move {
            match task {
                Task::Check => {
                    if let Some(binding) = binding {
                        let _ = keyring.check_binding(&binding).await;
                    }
                    TaskResult::Checked
                }
                Task::Decrypt { .. } => {
                    let result = keyring
                        .decrypt(
                            &tenant,
                            bytes.as_deref().unwrap_or_default(),
                            &EncryptionContext::empty(),
                        )
                        .await
                        .map(|p| p.to_vec());
                    TaskResult::Decrypted {
                        envelope: envelope.unwrap_or_default(),
                        result,
                    }
                }
                Task::Revoke => TaskResult::Revoked(revoke(&keyring, &tenant).await),
                Task::Restore => TaskResult::Restored(restore(&keyring, &tenant).await),
                Task::Rekey => {
                    let _ = keyring.rekey(&tenant, None, "model").await;
                    TaskResult::Checked
                }
            }
        });
        // Either it reaches the hold point, or it finishes without getting there.
        let finished = bounded("a held task", async {
            tokio::select! {
                biased;
                result = &mut handle => Some(result),
                _ = &mut armer.entered => None,
            }
        })
        .await;
        let Some(result) = finished else {
            self.held = Some(Held {
                on: r,
                started: step,
                task: handle,
                release: armer.release,
            });
            return Ok(None);
        };
        // It finished without reaching the hold point: an ordinary step.
        let replica = &self.replicas[r];
        replica.kms.hold.disarm();
        replica.store.hold_binding_read.disarm();
        self.finished(step, step, r, result.unwrap(), Instant::now())?;
        Ok(Some(r))
    }

    pub(crate) async fn release(&mut self, step: usize) -> Result<Option<usize>, Violation> {
        let Some(held) = self.held.take() else {
            return Ok(None);
        };
        let released_at = Instant::now();
        let _ = held.release.send(());
        let result = bounded("the released task", held.task).await.unwrap();
        self.finished(step, held.started, held.on, result, released_at)?;
        Ok(Some(held.on))
    }

    pub(crate) fn finished(
        &mut self,
        step: usize,
        started: usize,
        r: usize,
        result: TaskResult,
        used_at: Instant,
    ) -> Result<(), Violation> {
        match result {
            TaskResult::Checked => Ok(()),
            TaskResult::Decrypted { envelope, result } => {
                self.count_request(refused_revoked(&result), result.is_ok());
                self.decrypted(r, envelope, result, used_at)
            }
            TaskResult::Revoked(result) => {
                self.revoked(step, r, result);
                Ok(())
            }
            TaskResult::Restored(result) => {
                self.restored(started, r, result);
                Ok(())
            }
        }
    }

    /// Reads what the step committed (audit records, binding states) into the model and checks
    /// the invariants that are about committed state.
    pub(crate) async fn observe(
        &mut self,
        step: usize,
        actor: Option<usize>,
    ) -> Result<(), Violation> {
        loop {
            let page = self
                .store
                .audit_records(
                    &AuditQuery::default()
                        .with_tenant(self.tenant.clone())
                        .with_after_seq(self.model.audit_cursor),
                )
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            self.model.audit_cursor = last.seq();
            for record in &page {
                self.record(step, actor, record.seq(), record.event())?;
            }
        }
        for binding in self.store.list_bindings(&self.tenant).await.unwrap() {
            let Some(model) = self.model.bindings.get(&binding.id) else {
                return check(Invariant::AuditIsComplete, false, || {
                    format!(
                        "binding {} is in the store without its audit record",
                        binding.id
                    )
                });
            };
            check(
                Invariant::AuditIsComplete,
                model.state == binding.state,
                || {
                    format!(
                        "binding {} is {} in the store but {} by its audit records (a state change \
                     without its record)",
                        binding.id, binding.state, model.state
                    )
                },
            )?;
            if let Some(since) = model.explicit {
                check(
                    Invariant::ExplicitRevocationLiftedOnlyByRestoreKey,
                    is_revoked(binding.state),
                    || {
                        format!(
                            "RevokeKey returned OK for binding {} at step {since}, no RestoreKey \
                             since, but the binding is {} in the store",
                            binding.id, binding.state
                        )
                    },
                )?;
            }
        }
        // No tenant key is wrapped by a retired binding (whose key the customer may delete).
        let state = self.store.rekey_state(&self.tenant).await.unwrap();
        for key in &state.tenant_keys {
            check(
                Invariant::RetiredWrapsNothing,
                key.binding_state != KekState::Retired,
                || {
                    format!(
                        "after step {step}: tenant key {} is wrapped by binding {}, which is retired",
                        key.id, key.binding_id
                    )
                },
            )?;
        }
        self.model.restore_started = None;
        // A replica that acted while a revocation is recorded may have applied it, which ends
        // its unrecorded closure (the recorded one is checked from now on): forget it here, so
        // the model never expects more than the code promises (it may expect less).
        if let Some(r) = actor
            && self.model.bindings.values().any(|b| is_revoked(b.state))
        {
            self.model.unrecorded[r] = None;
        }
        Ok(())
    }

    pub(crate) fn record(
        &mut self,
        step: usize,
        actor: Option<usize>,
        seq: u64,
        event: &AuditEvent,
    ) -> Result<(), Violation> {
        match event {
            AuditEvent::TenantKeyRewrapped {
                tenant_key_id,
                from_binding_id,
                to_binding_id,
                ..
            } => {
                let from = self.model.bindings.get(from_binding_id).map(|b| b.state);
                check(
                    Invariant::NoMoveFromARevokedBinding,
                    from.is_some_and(|state| !is_revoked(state) && state != KekState::Retired)
                        && self.model.wrapping.get(tenant_key_id) == Some(from_binding_id),
                    || {
                        format!(
                            "tenant_key_rewrapped record seq {seq} (step {step}, {}): tenant key \
                             {tenant_key_id} moved from binding {from_binding_id} ({from:?}, \
                             wrapping it: {}) to {to_binding_id}",
                            by(actor),
                            self.model.wrapping.get(tenant_key_id) == Some(from_binding_id)
                        )
                    },
                )?;
                self.model.wrapping.insert(*tenant_key_id, *to_binding_id);
            }
            AuditEvent::KekBindingRetired { binding_id, .. } => {
                let wraps: Vec<KeyId> = self
                    .model
                    .wrapping
                    .iter()
                    .filter(|(_, b)| **b == *binding_id)
                    .map(|(k, _)| *k)
                    .collect();
                check(Invariant::RetiredWrapsNothing, wraps.is_empty(), || {
                    format!(
                        "kek_binding_retired record seq {seq} (step {step}, {}): binding \
                         {binding_id} retired while it wraps {wraps:?}",
                        by(actor)
                    )
                })?;
                if let Some(b) = self.model.bindings.get_mut(binding_id) {
                    b.state = KekState::Retired;
                }
            }
            AuditEvent::KekBindingChanged {
                binding_id,
                tenant_key_id,
                ..
            } => {
                self.model.wrapping.insert(*tenant_key_id, *binding_id);
                self.model.bindings.insert(
                    *binding_id,
                    BindingModel {
                        state: KekState::Active,
                        explicit: None,
                        revocation: None,
                    },
                );
            }
            AuditEvent::RevocationStateChanged(transition) => {
                self.transition(step, actor, seq, transition, false)?;
            }
            AuditEvent::Restored(transition) => {
                self.transition(step, actor, seq, transition, true)?;
            }
            AuditEvent::KeysPurged { .. } => self.model.purge_seqs.push(seq),
            AuditEvent::RevocationDenials { count, .. } => self.model.denials_recorded += count,
            AuditEvent::UsageSummary {
                encrypts,
                decrypts,
                errors,
                ..
            } => {
                let usage = &mut self.model.usage_recorded;
                usage.0 += encrypts;
                usage.1 += decrypts;
                usage.2 += errors;
            }
            _ => {}
        }
        Ok(())
    }

    pub(crate) fn transition(
        &mut self,
        step: usize,
        actor: Option<usize>,
        seq: u64,
        t: &StateTransition,
        restore: bool,
    ) -> Result<(), Violation> {
        let (from, to) = (kek_state(t.from), kek_state(t.to));
        let what = format!(
            "{} record seq {seq} (step {step}, {}): binding {} {from} -> {to}, source {:?}",
            if restore {
                "restored"
            } else {
                "revocation_state_changed"
            },
            by(actor),
            t.binding_id,
            t.source
        );
        let Some(binding) = self.model.bindings.get_mut(&t.binding_id) else {
            return check(Invariant::AuditIsComplete, false, || {
                format!("{what}: a binding without its kek_binding_changed record")
            });
        };
        check(
            Invariant::NoOverwriteFromAnOlderRead,
            binding.state != KekState::Destroyed && from != KekState::Destroyed,
            || format!("{what}: a destroyed binding changed"),
        )?;
        check(
            Invariant::NoOverwriteFromAnOlderRead,
            !(from == KekState::Revoked && matches!(to, KekState::Unavailable | KekState::Active)),
            || {
                format!(
                    "{what}: a committed revocation was overwritten (only a restore, to \
                     restored, lifts one; this transition was decided from an older read)"
                )
            },
        )?;
        let lifts = is_revoked(from) && !is_revoked(to);
        if let (true, Some(explicit), Some(started)) = (
            restore && lifts && t.source == RevocationSource::Explicit,
            binding.explicit,
            self.model.restore_started,
        ) {
            // A RestoreKey lifts a break-glass revocation, but not one that returned OK after
            // the restore read the binding: that revocation was decided later and must win.
            check(
                Invariant::NoOverwriteFromAnOlderRead,
                explicit <= started,
                || {
                    format!(
                        "{what}: the RestoreKey started at step {started} lifted the RevokeKey \
                         that returned OK at step {explicit}, after the restore's read"
                    )
                },
            )?;
        }
        let explicit_lifted_by_other =
            lifts && binding.explicit.is_some() && t.source != RevocationSource::Explicit;
        check(
            Invariant::ExplicitRevocationLiftedOnlyByRestoreKey,
            !explicit_lifted_by_other,
            || {
                format!(
                    "{what}: lifts the explicit revocation of step {}",
                    binding.explicit.unwrap_or_default()
                )
            },
        )?;
        binding.state = to;
        if is_revoked(to) {
            binding
                .revocation
                .get_or_insert(Revocation { step, by: actor });
            if t.source == RevocationSource::Explicit {
                binding.explicit.get_or_insert(step);
            }
            if !is_revoked(from) {
                // A new revocation: its purge must be audited.
                self.model.revocation_seqs.push(seq);
            }
        } else if restore && lifts && !explicit_lifted_by_other {
            binding.revocation = None;
            if t.source == RevocationSource::Explicit {
                binding.explicit = None;
            }
        }
        Ok(())
    }

    /// At the end: nothing held, no failures, every replica flushes; then the counts.
    pub(crate) async fn finish(&mut self, step: usize) -> Result<(), Violation> {
        for replica in &self.replicas {
            replica.store.clear_failures();
        }
        if self.held.is_some() {
            let actor = self.release(step).await?;
            self.observe(step, actor).await?;
        }
        for (i, replica) in self.replicas.iter().enumerate() {
            let flushed = bounded("flush_all_denials", replica.keyring.flush_all_denials()).await;
            check(Invariant::AuditIsComplete, flushed.is_ok(), || {
                format!(
                    "the final flush_all_denials on R{i} failed with no failure injected: \
                     {flushed:?}"
                )
            })?;
        }
        self.observe(step + 1, None).await?;
        let m = &self.model;
        check(
            Invariant::AuditIsComplete,
            m.denials_recorded == m.denials_expected,
            || {
                format!(
                    "revocation_denials records count {} denied requests; the replicas' gates \
                     denied {} (counts lost, e.g. by a failed flush)",
                    m.denials_recorded, m.denials_expected
                )
            },
        )?;
        let seen = (m.encrypts_ok, m.decrypts_ok, m.errors);
        check(Invariant::AuditIsComplete, m.usage_recorded == seen, || {
            format!(
                "usage_summary records count (encrypts, decrypts, errors) = {:?}; the requests \
                 were {seen:?}",
                m.usage_recorded
            )
        })?;
        // Each revocation needs its own keys_purged record after it.
        for (i, revocation) in m.revocation_seqs.iter().enumerate() {
            let needed = m.revocation_seqs.len() - i;
            let after = m.purge_seqs.iter().filter(|p| *p > revocation).count();
            check(Invariant::AuditIsComplete, after >= needed, || {
                format!(
                    "the revocation recorded at seq {revocation} has no keys_purged record of \
                     its own after it ({needed} revocations from there, {after} purge records)"
                )
            })?;
        }
        Ok(())
    }
}

pub(crate) async fn revoke(
    keyring: &Keyring,
    tenant: &TenantId,
) -> Result<KekBinding, ServiceError> {
    keyring
        .revoke(
            tenant,
            KekState::Revoked,
            RevocationSource::Explicit,
            Some("model".to_owned()),
            "break glass",
            now_ms(),
        )
        .await
        .map(|commit| commit.binding)
}

pub(crate) async fn restore(
    keyring: &Keyring,
    tenant: &TenantId,
) -> Result<KekBinding, ServiceError> {
    keyring
        .restore(
            tenant,
            RevocationSource::Explicit,
            Some("model".to_owned()),
            "resolved",
        )
        .await
        .map(|commit| commit.binding)
}

fn refused_revoked<T>(result: &Result<T, ServiceError>) -> bool {
    result.as_ref().is_err_and(|e| e.reason() == "KEY_REVOKED")
}
