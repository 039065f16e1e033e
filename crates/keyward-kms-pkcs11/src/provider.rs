//! [`Pkcs11Provider`]: the [`KeyProvider`] on a PKCS#11 token.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use keyward_envelope::{SecretKey, WrappedKey};
use keyward_kms::{
    Capabilities, ErrorKind, KeyProvider, KeyRef, KeyStatus, ProviderError, ProviderKind,
    WrapContext,
};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::Pkcs11Config;
use crate::classify::{SessionFate, classify};
use crate::remediation;
use crate::token_keys::{
    Absent, CkErrorText, Fail, check_protected, disabled, find_key, find_token, is_pin_error,
    logged_in, read_attrs, start_error, status_of,
};
use crate::uri::Pkcs11KeyUri;
use crate::wrapped_key_format::{self as layout, IV_LEN, KEY_LEN, TAG_LEN};

/// A PKCS#11 token as a KEK provider.
///
/// - KEKs are non-extractable, sensitive AES-256 secret keys on one token, found by the token's
///   label and named by [`Pkcs11KeyUri`]s (`pkcs11:token=…;object=…` and/or `id=…`).
/// - Wraps are `C_Encrypt` with `CKM_AES_GCM`: a 96-bit IV from the token's RNG, a 128-bit tag,
///   and [`WrapContext::aad`] as AAD, so the token itself authenticates the tenant, tenant key
///   and purpose. Unwraps are `C_Decrypt` with the same parameters. Layout in `wrapped_key_format.rs`.
/// - A bounded pool of read-only sessions (`sessions`, default 4); every PKCS#11 call runs on
///   `tokio::task::spawn_blocking`. The user (CKU_USER) logs in once. A logout by the token
///   (`CKR_USER_NOT_LOGGED_IN` on sessions that were logged in) is a refusal: the call that meets
///   it is [`ErrorKind::Refused`], and the next call logs in again. Sessions lost to a device
///   error (token restart) are logged in again silently. A PIN the token rejected is never tried
///   twice: the PIN source is read again, and only a changed PIN is tried (`LoginState`).
/// - A key that no longer matches its registered reference (destroyed, or removed from the
///   token) is [`ErrorKind::Refused`] on wrap, unwrap and describe; only
///   [`KeyProvider::canonicalize`] (onboarding) reports a missing key as
///   [`ErrorKind::NotFound`]. PKCS#11 cannot tell a destroyed key from one never created, and a
///   key object can come back from a token backup, so absence is a revocation that the monitor
///   lifts if the key returns, not the terminal `destroyed` state.
/// - Each `CKR_*` is classified once (`classify.rs`, table in `docs/providers/pkcs11.md`); a
///   broken session is dropped from the pool and replaced on demand.
#[derive(Clone)]
pub struct Pkcs11Provider {
    inner: Arc<Inner>,
}

struct Inner {
    config: Pkcs11Config,
    ctx: Pkcs11,
    slot: Slot,
    /// What Keyward knows of its login ([`LoginState`] as `u8`): read on every call, written
    /// under `login`.
    login_state: AtomicU8,
    /// The PIN and login attempts; held while logging in, so logins never race.
    login: Mutex<Login>,
    idle: Mutex<Vec<Session>>,
    permits: Arc<Semaphore>,
}

/// The user PIN Keyward logs in with, and how many `C_Login` calls it has made.
struct Login {
    pin: Zeroizing<String>,
    attempts: u64,
}

/// Keyward's view of its login to the token (PKCS#11 login state is per application and token:
/// one `C_Logout` logs out every session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum LoginState {
    /// Logged in: a session found not logged in means the token logged Keyward out, which is
    /// reported once as a refusal.
    LoggedIn = 0,
    /// Sessions were lost to a device error (module or token restarted); a session found not
    /// logged in is logged in again without a refusal.
    SessionsLost = 1,
    /// The token logged Keyward out and one call was refused for it; the next call logs in.
    LoggedOut = 2,
    /// The token rejected the PIN Keyward holds. No `C_Login` with that PIN again (HSMs lock a
    /// PIN after a few wrong tries): each call reads the PIN source and tries only a new PIN.
    PinRejected = 3,
}

impl LoginState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::LoggedIn,
            1 => Self::SessionsLost,
            2 => Self::LoggedOut,
            _ => Self::PinRejected,
        }
    }
}

impl fmt::Debug for Pkcs11Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Provider")
            .field("config", &self.inner.config)
            .field("slot", &self.inner.slot.id())
            .field("idle_sessions", &self.inner.lock_idle().len())
            .finish_non_exhaustive()
    }
}

impl Pkcs11Provider {
    /// Loads the module, finds the token by label, opens a first session and logs in as the
    /// user. Fails with [`ErrorKind::Misconfigured`] (with a remediation) when the module, the
    /// token or the PIN is wrong, and [`ErrorKind::Unavailable`] when the token does not answer.
    pub async fn new(config: Pkcs11Config) -> Result<Self, ProviderError> {
        tokio::task::spawn_blocking(move || Self::new_blocking(config))
            .await
            .map_err(|e| {
                ProviderError::new(ErrorKind::Unavailable, "PKCS#11 start-up task failed")
                    .with_source(e)
            })?
    }

    fn new_blocking(config: Pkcs11Config) -> Result<Self, ProviderError> {
        let pin = config.validate_and_read_pin()?;
        let module = config.module_path.display().to_string();
        let ctx = Pkcs11::new(&config.module_path).map_err(|e| {
            ProviderError::new(
                ErrorKind::Misconfigured,
                format!("cannot load the PKCS#11 module {module}"),
            )
            .with_remediation(format!(
                "Install the HSM vendor's PKCS#11 library and set pkcs11.module_path to it \
                 (for SoftHSM2 on Debian: apt-get install softhsm2; module {module})"
            ))
            .with_source(e)
        })?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            // Another part of this process (or a test) initialised the same module: fine.
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(start_error(&e, "C_Initialize", &config)),
        }
        let slot = find_token(&ctx, &config)?;
        let session = ctx
            .open_ro_session(slot)
            .map_err(|e| start_error(&e, "C_OpenSession", &config))?;
        match session.login(UserType::User, Some(&AuthPin::from(pin.to_string()))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e @ CkError::Pkcs11(rv, _)) if is_pin_error(rv) => {
                return Err(ProviderError::new(
                    ErrorKind::Misconfigured,
                    format!(
                        "the token '{}' rejected the user PIN ({rv:?})",
                        config.token_label
                    ),
                )
                .with_remediation(
                    "Put the token's user PIN (not the SO PIN) in pkcs11.pin_file or the \
                     pkcs11.pin_env variable. A locked PIN must be unlocked by the token's \
                     security officer (pkcs11-tool --login --login-type so --init-pin).",
                )
                .with_source(e));
            }
            Err(e) => return Err(start_error(&e, "C_Login", &config)),
        }
        let permits = Arc::new(Semaphore::new(config.sessions));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                ctx,
                slot,
                login_state: AtomicU8::new(LoginState::LoggedIn as u8),
                login: Mutex::new(Login { pin, attempts: 1 }),
                idle: Mutex::new(vec![session]),
                permits,
            }),
        })
    }

    /// The configuration this provider was built with.
    pub fn config(&self) -> &Pkcs11Config {
        &self.inner.config
    }

    /// How many sessions are open and idle in the pool right now (for tests and metrics).
    pub fn idle_sessions(&self) -> usize {
        self.inner.lock_idle().len()
    }

    /// How many times the provider has called `C_Login`, start-up included (for tests and
    /// metrics: a rejected PIN must not be retried).
    pub fn login_attempts(&self) -> u64 {
        self.inner.lock_login().attempts
    }

    fn parse(&self, kek: &KeyRef) -> Result<Pkcs11KeyUri, ProviderError> {
        if kek.kind() != ProviderKind::Pkcs11 {
            return Err(ProviderError::new(
                ErrorKind::Misconfigured,
                format!("the PKCS#11 provider cannot use key reference '{kek}'"),
            ));
        }
        let uri = Pkcs11KeyUri::from_key_ref_id(kek.id())?;
        if let Some(token) = &uri.token
            && *token != self.inner.config.token_label
        {
            return Err(ProviderError::new(
                ErrorKind::Misconfigured,
                format!(
                    "key reference '{kek}' names token '{token}', but this provider serves token '{}'",
                    self.inner.config.token_label
                ),
            ));
        }
        Ok(uri)
    }

    /// Runs `op` on a pooled session on the blocking pool, with one re-login and retry when
    /// the token has forgotten the login, and with the call timeout.
    async fn run<T, F>(
        &self,
        what: &'static str,
        uri: &Pkcs11KeyUri,
        op: F,
    ) -> Result<T, ProviderError>
    where
        T: Send + 'static,
        F: FnMut(&Session) -> Result<T, Fail> + Send + 'static,
    {
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| {
                ProviderError::new(ErrorKind::Unavailable, "the PKCS#11 session pool is closed")
                    .with_source(e)
            })?;
        let inner = self.inner.clone();
        let key = uri.to_string();
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            inner.run_blocking(what, &key, op)
        });
        let timeout = Duration::from_millis(self.inner.config.call_timeout_ms);
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(ProviderError::new(
                ErrorKind::Unavailable,
                format!("{what} on {uri}: the PKCS#11 call panicked or was cancelled"),
            )
            .with_source(join)),
            Err(_) => Err(ProviderError::new(
                ErrorKind::Timeout,
                format!(
                    "{what} on {uri} did not finish within {} ms",
                    self.inner.config.call_timeout_ms
                ),
            )),
        }
    }
}

impl Inner {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Session>> {
        // Only whole sessions are pushed and popped; a panic cannot leave the Vec inconsistent.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run_blocking<T>(
        &self,
        what: &'static str,
        key: &str,
        mut op: impl FnMut(&Session) -> Result<T, Fail>,
    ) -> Result<T, ProviderError> {
        let popped = self.lock_idle().pop();
        let session = match popped {
            Some(s) => s,
            None => match self.ctx.open_ro_session(self.slot) {
                Ok(s) => s,
                Err(e) => return Err(self.ck_error(&e, what, key).0),
            },
        };
        let result = match op(&session) {
            Err(Fail::NotLoggedIn)
            | Err(Fail::Ck(CkError::Pkcs11(RvError::UserNotLoggedIn, _))) => {
                match self.log_in_again(&session, what, key) {
                    Ok(()) => match op(&session) {
                        Err(Fail::NotLoggedIn) => Err(Fail::Done(ProviderError::new(
                            ErrorKind::Refused,
                            format!(
                                "{what} on {key}: the token still reports the session as not logged in after a fresh login"
                            ),
                        ))),
                        other => other,
                    },
                    Err(fail) => Err(fail),
                }
            }
            other => other,
        };
        match result {
            Ok(v) => {
                // Only a logged-in session sees the (private) key: the login is back.
                if self.login_state.load(Ordering::Relaxed) != LoginState::LoggedIn as u8 {
                    self.set_login_state(LoginState::LoggedIn);
                }
                self.lock_idle().push(session);
                Ok(v)
            }
            Err(Fail::Done(e)) => {
                self.lock_idle().push(session);
                Err(e)
            }
            Err(Fail::NotLoggedIn) => {
                self.lock_idle().push(session);
                Err(ProviderError::new(
                    ErrorKind::Refused,
                    format!("{what} on {key}: the session is not logged in"),
                ))
            }
            Err(Fail::Ck(e)) => {
                let (err, fate) = self.ck_error(&e, what, key);
                match fate {
                    SessionFate::Keep => self.lock_idle().push(session),
                    SessionFate::Reset => self.reset(session),
                }
                Err(err)
            }
        }
    }

    fn lock_login(&self) -> std::sync::MutexGuard<'_, Login> {
        // Plain data: a panic cannot leave it inconsistent.
        self.login.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_login_state(&self, state: LoginState) {
        self.login_state.store(state as u8, Ordering::Relaxed);
    }

    /// `session` is not logged in. Decides, from what Keyward knows of its login, whether this
    /// is a logout to report as a refusal, or a login to redo (after a reported logout or lost
    /// sessions), and never tries a PIN the token already rejected.
    fn log_in_again(&self, session: &Session, what: &str, key: &str) -> Result<(), Fail> {
        let mut login = self.lock_login();
        match LoginState::from_u8(self.login_state.load(Ordering::Relaxed)) {
            LoginState::LoggedIn => {
                // Another call may have logged in while this one waited for the lock.
                if session
                    .get_session_info()
                    .is_ok_and(|i| logged_in(i.session_state()))
                {
                    return Ok(());
                }
                self.set_login_state(LoginState::LoggedOut);
                tracing::warn!(
                    token = %self.config.token_label,
                    "the PKCS#11 token logged Keyward out: refusing this call; the next call logs in again"
                );
                return Err(Fail::Done(
                    ProviderError::new(
                        ErrorKind::Refused,
                        format!(
                            "{what} on {key} refused: the token '{}' logged Keyward out (CKR_USER_NOT_LOGGED_IN)",
                            self.config.token_label
                        ),
                    )
                    .with_remediation(remediation::logged_out(&self.config)),
                ));
            }
            LoginState::PinRejected => {
                let fresh = self.config.read_pin().map_err(Fail::Done)?;
                if *fresh == *login.pin {
                    return Err(Fail::Done(
                        ProviderError::new(
                            ErrorKind::Refused,
                            format!(
                                "{what} on {key} refused: the token '{}' rejected Keyward's user PIN, and the configured PIN has not changed since (it is not tried again: a PIN retried blindly gets locked)",
                                self.config.token_label
                            ),
                        )
                        .with_remediation(remediation::pin_rejected(&self.config)),
                    ));
                }
                login.pin = fresh;
            }
            LoginState::SessionsLost | LoginState::LoggedOut => {}
        }
        login.attempts += 1;
        match session.login(UserType::User, Some(&AuthPin::from(login.pin.to_string()))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                tracing::info!(token = %self.config.token_label, "logged in to the PKCS#11 token again");
                self.set_login_state(LoginState::LoggedIn);
                Ok(())
            }
            Err(e @ CkError::Pkcs11(rv, _)) if is_pin_error(rv) => {
                self.set_login_state(LoginState::PinRejected);
                Err(Fail::Ck(e))
            }
            Err(e) => Err(Fail::Ck(e)),
        }
    }

    /// Drops a broken session and every idle session that no longer answers. Broken sessions
    /// are forgotten, not closed: their handle is already invalid, and closing a handle number
    /// the module may have reused would close someone else's session.
    fn reset(&self, broken: Session) {
        std::mem::forget(broken);
        // The token may have lost the login with the sessions: that is not a logout.
        if self.login_state.load(Ordering::Relaxed) == LoginState::LoggedIn as u8 {
            self.set_login_state(LoginState::SessionsLost);
        }
        let mut idle = self.lock_idle();
        let before = idle.len();
        let sessions: Vec<Session> = idle.drain(..).collect();
        for s in sessions {
            if s.get_session_info().is_ok() {
                idle.push(s);
            } else {
                std::mem::forget(s);
            }
        }
        tracing::warn!(
            token = %self.config.token_label,
            dropped = before - idle.len() + 1,
            kept = idle.len(),
            "reset broken PKCS#11 sessions; new ones are opened on demand"
        );
    }

    fn ck_error(&self, e: &CkError, what: &str, key: &str) -> (ProviderError, SessionFate) {
        let c = classify(e);
        let code = match e {
            CkError::Pkcs11(rv, f) => format!(" ({rv:?} from {f:?})"),
            _ => String::new(),
        };
        tracing::debug!(kind = %c.kind, op = what, key, error = %e, "PKCS#11 call failed");
        let mut err = ProviderError::new(
            c.kind,
            format!("{what} on {key} failed{code}: {}", c.reason),
        );
        if let Some(r) = remediation::for_error(e, &self.config, key) {
            err = err.with_remediation(r);
        }
        (err.with_source(CkErrorText(e.to_string())), c.fate)
    }
}

/// The GCM tag length in bits, as the token wants it.
fn gcm_tag_bits() -> cryptoki::types::Ulong {
    const TAG_BITS: std::os::raw::c_ulong = (TAG_LEN * 8) as std::os::raw::c_ulong;
    cryptoki::types::Ulong::from(TAG_BITS)
}

#[async_trait]
impl KeyProvider for Pkcs11Provider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Pkcs11
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::default();
        c.reports_key_state = true;
        c.production_grade = true;
        c.missing_keys_refused = true;
        c
    }

    async fn wrap(
        &self,
        kek: &KeyRef,
        key: &SecretKey,
        ctx: &WrapContext,
    ) -> Result<WrappedKey, ProviderError> {
        let uri = self.parse(kek)?;
        let aad = ctx.aad();
        let plain = Zeroizing::new(*key.expose_secret());
        let u = uri.clone();
        let bytes = self
            .run("wrap (C_Encrypt, CKM_AES_GCM)", &uri, move |s| {
                let handle = find_key(s, &u, Absent::Refused)?;
                let attrs = read_attrs(s, handle)?;
                check_protected(&attrs, &u)?;
                // A wrap that could never be unwrapped is refused like a disabled key.
                if attrs.encrypt != Some(true) || attrs.decrypt != Some(true) {
                    return Err(disabled(&u, &attrs, "wrap").into());
                }
                let mut iv = [0u8; IV_LEN];
                s.generate_random_slice(&mut iv)?;
                let mut iv_param = iv;
                let params = GcmParams::new(&mut iv_param, &aad, gcm_tag_bits())?;
                let ct = s.encrypt(&Mechanism::AesGcm(params), handle, &plain[..])?;
                layout::encode(&iv, &ct).ok_or_else(|| {
                    Fail::Done(ProviderError::new(
                        ErrorKind::Unavailable,
                        format!(
                            "C_Encrypt on {u} returned {} bytes; AES-GCM of a 32-byte key is {}",
                            ct.len(),
                            KEY_LEN + TAG_LEN
                        ),
                    ))
                })
            })
            .await?;
        Ok(WrappedKey::new(bytes))
    }

    async fn unwrap(
        &self,
        kek: &KeyRef,
        wrapped: &WrappedKey,
        ctx: &WrapContext,
    ) -> Result<SecretKey, ProviderError> {
        let uri = self.parse(kek)?;
        let aad = ctx.aad();
        let bytes = wrapped.as_bytes().to_vec();
        let u = uri.clone();
        self.run("unwrap (C_Decrypt, CKM_AES_GCM)", &uri, move |s| {
            let handle = find_key(s, &u, Absent::Refused)?;
            let attrs = read_attrs(s, handle)?;
            check_protected(&attrs, &u)?;
            if attrs.decrypt != Some(true) {
                return Err(disabled(&u, &attrs, "unwrap").into());
            }
            let (mut iv, ct) = layout::decode(&bytes).map_err(|e| {
                ProviderError::new(
                    ErrorKind::InvalidCiphertext,
                    format!("unwrap on {u}: {}", e.describe()),
                )
            })?;
            let params = GcmParams::new(&mut iv, &aad, gcm_tag_bits())?;
            let plain = Zeroizing::new(s.decrypt(&Mechanism::AesGcm(params), handle, ct)?);
            SecretKey::try_from_slice(&plain).map_err(|_| {
                Fail::Done(ProviderError::new(
                    ErrorKind::InvalidCiphertext,
                    format!(
                        "unwrap on {u}: the token returned {} bytes, not a 32-byte key",
                        plain.len()
                    ),
                ))
            })
        })
        .await
    }

    async fn describe(&self, kek: &KeyRef) -> Result<KeyStatus, ProviderError> {
        let uri = self.parse(kek)?;
        let u = uri.clone();
        self.run("describe (C_GetAttributeValue)", &uri, move |s| {
            let handle = find_key(s, &u, Absent::Refused)?;
            let attrs = read_attrs(s, handle)?;
            check_protected(&attrs, &u)?;
            Ok(status_of(&attrs))
        })
        .await
    }

    /// `token=` filled in from the configuration, plus the key's CKA_ID and CKA_LABEL as found,
    /// so that the stored reference matches only this key even if another key later takes its
    /// label. Also the onboarding check: the key must be a sensitive, non-extractable AES-256
    /// key (else `Misconfigured` with the command that creates a correct one).
    async fn canonicalize(&self, kek: &KeyRef) -> Result<KeyRef, ProviderError> {
        let uri = self.parse(kek)?;
        let u = uri.clone();
        let token = self.inner.config.token_label.clone();
        self.run("canonicalize (C_FindObjects)", &uri, move |s| {
            let handle = find_key(s, &u, Absent::NotFound)?;
            let attrs = read_attrs(s, handle)?;
            check_protected(&attrs, &u)?;
            let canonical = Pkcs11KeyUri {
                token: Some(token.clone()),
                id: (!attrs.id.is_empty()).then(|| attrs.id.clone()),
                object: String::from_utf8(attrs.label.clone())
                    .ok()
                    .filter(|l| !l.is_empty()),
            };
            if canonical.id.is_none() && canonical.object.is_none() {
                return Err(Fail::Done(ProviderError::new(
                    ErrorKind::Misconfigured,
                    format!("{u} has neither a CKA_ID nor a UTF-8 CKA_LABEL to reference it by"),
                )));
            }
            Ok(KeyRef::new(ProviderKind::Pkcs11, canonical.to_string()))
        })
        .await
    }
}
