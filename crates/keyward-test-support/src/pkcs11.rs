//! A private SoftHSM2 token for tests, and helpers to create, disable, re-enable and destroy
//! KEKs on it, log the token out and restart the module. In `keyward-test-support` (feature
//! `pkcs11`); for `keyward-kms-pkcs11`'s tests, the server's tests and the end-to-end tests.
//!
//! SoftHSM2 reads its configuration (`SOFTHSM2_CONF`) once per process, at `C_Initialize`, and
//! this workspace forbids `unsafe` (so no `std::env::set_var`). So each test runs in a child
//! process of its own test binary: [`SoftHsm::isolate`] creates a temp directory with a
//! `softhsm2.conf` and a token initialised by `softhsm2-util --init-token --free`, re-runs the
//! current test (`<test binary> <name> --exact`) with `SOFTHSM2_CONF` pointing at it, and
//! returns `None` in the parent once the child passed (panicking with the child's output if it
//! failed). In the child it returns the [`SoftHsm`].
//!
//! ```ignore
//! #[tokio::test]
//! async fn my_test() {
//!     let Some(hsm) = SoftHsm::isolate("my_test") else { return };
//!     let provider = hsm.provider().await;
//!     let kek = hsm.create_key("kek-1");
//!     // ...
//! }
//! ```
//!
//! A missing SoftHSM2 is a test failure (a panic naming the fix), never a skip. The module is
//! `$KEYWARD_PKCS11_MODULE`, default [`DEFAULT_MODULE`].
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    reason = "test support: a broken test environment fails the test loudly"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use keyward_kms::{KeyRef, ProviderKind};

use keyward_kms_pkcs11::{Pkcs11Config, Pkcs11KeyUri, Pkcs11Provider};

/// The environment variable naming the PKCS#11 module (set by `scripts/test`).
pub const MODULE_ENV: &str = "KEYWARD_PKCS11_MODULE";
/// Debian's SoftHSM2 module.
pub const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The label of the test token.
pub const TOKEN_LABEL: &str = "keyward-test";
/// The user PIN of the test token (written to the pin file).
pub const USER_PIN: &str = "4711-user";
/// The security officer PIN of the test token.
pub const SO_PIN: &str = "0815-so";
/// Marks the child process and names its token directory.
const CHILD_ENV: &str = "KEYWARD_SOFTHSM_DIR";

/// Attributes of a test key beyond the fixed ones (AES-256, token, private, encrypt+decrypt).
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    /// CKA_SENSITIVE.
    pub sensitive: bool,
    /// CKA_EXTRACTABLE.
    pub extractable: bool,
    /// CKA_PRIVATE (a public key object is usable without logging in).
    pub private: bool,
    /// CKA_VALUE_LEN in bytes (32 for a correct KEK).
    pub len: u64,
}

impl Default for KeySpec {
    /// A correct KEK: private, sensitive, not extractable, 32 bytes.
    fn default() -> Self {
        Self {
            sensitive: true,
            extractable: false,
            private: true,
            len: 32,
        }
    }
}

/// A private SoftHSM2 token, seen from inside the child test process.
#[derive(Debug)]
pub struct SoftHsm {
    dir: PathBuf,
    module: PathBuf,
    ctx: Pkcs11,
    slot: Slot,
    /// The token's current user PIN ([`USER_PIN`] until [`SoftHsm::change_pin`]).
    pin: std::sync::Mutex<String>,
}

/// The module to load: `$KEYWARD_PKCS11_MODULE` or [`DEFAULT_MODULE`]; panics if it is missing.
pub fn module_path() -> PathBuf {
    let module = std::env::var_os(MODULE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MODULE));
    if !module.exists() {
        panic!(
            "SoftHSM2 is missing: the PKCS#11 module {} does not exist. Install it with \
             `apt-get install -y softhsm2` (scripts/test does), or point {MODULE_ENV} at it.",
            module.display()
        );
    }
    module
}

impl SoftHsm {
    /// In the parent: runs `test_name` in a child process with a private token and returns
    /// `None` once it passed. In that child: returns the token.
    pub fn isolate(test_name: &str) -> Option<SoftHsm> {
        if let Some(dir) = std::env::var_os(CHILD_ENV) {
            return Some(SoftHsm::open(PathBuf::from(dir)));
        }
        let module = module_path();
        let tmp = tempfile::Builder::new()
            .prefix("keyward-softhsm-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let tokens = dir.join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .unwrap();
        write_pin_file(&dir.join("pin"), USER_PIN);
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(["--init-token", "--free", "--label", TOKEN_LABEL])
            .args(["--so-pin", SO_PIN, "--pin", USER_PIN])
            .args(["--module"])
            .arg(&module)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "SoftHSM2 is missing: cannot run softhsm2-util ({e}). Install it with \
                     `apt-get install -y softhsm2` (scripts/test does)."
                )
            });
        assert!(
            out.status.success(),
            "softhsm2-util --init-token failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let exe = std::env::current_exe().unwrap();
        let out = Command::new(exe)
            .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
            .env("SOFTHSM2_CONF", &conf)
            .env(CHILD_ENV, &dir)
            .env(MODULE_ENV, &module)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "test `{test_name}` failed in its SoftHSM2 child process:\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        );
        assert!(
            stdout.contains("1 passed"),
            "test `{test_name}` did not run in its child process (wrong name?):\n{stdout}"
        );
        drop(tmp);
        None
    }

    fn open(dir: PathBuf) -> SoftHsm {
        let module = module_path();
        let ctx = Pkcs11::new(&module).unwrap();
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => panic!("C_Initialize of SoftHSM2 failed: {e}"),
        }
        let slot = ctx
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == TOKEN_LABEL)
            .unwrap_or_else(|| panic!("the test token {TOKEN_LABEL} is not in {}", dir.display()));
        SoftHsm {
            dir,
            module,
            ctx,
            slot,
            pin: std::sync::Mutex::new(USER_PIN.to_owned()),
        }
    }

    /// The token's temp directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The module path.
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// A provider configuration for this token, with the PIN from a 0600 pin file.
    pub fn config(&self) -> Pkcs11Config {
        Pkcs11Config {
            module_path: self.module.clone(),
            token_label: TOKEN_LABEL.to_owned(),
            pin_file: Some(self.dir.join("pin")),
            ..Pkcs11Config::default()
        }
    }

    /// A provider for this token.
    pub async fn provider(&self) -> Pkcs11Provider {
        Pkcs11Provider::new(self.config()).await.unwrap()
    }

    /// `pkcs11:token=keyward-test;object=<label>`.
    pub fn key_ref(label: &str) -> KeyRef {
        let uri = Pkcs11KeyUri {
            token: Some(TOKEN_LABEL.to_owned()),
            object: Some(label.to_owned()),
            id: None,
        };
        KeyRef::new(ProviderKind::Pkcs11, uri.to_string())
    }

    /// An admin session, logged in as the user.
    fn session(&self) -> Session {
        let s = self.ctx.open_rw_session(self.slot).unwrap();
        let pin = self.pin.lock().unwrap().clone();
        match s.login(UserType::User, Some(&AuthPin::from(pin))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => panic!("login to the test token failed: {e}"),
        }
        s
    }

    /// Creates a correct KEK (AES-256, sensitive, not extractable, encrypt+decrypt) labelled
    /// `label` with CKA_ID = the label's bytes; returns its `object=` reference.
    pub fn create_key(&self, label: &str) -> KeyRef {
        self.create_key_with(label, KeySpec::default())
    }

    /// Creates a key with `spec`; returns its `object=` reference.
    pub fn create_key_with(&self, label: &str, spec: KeySpec) -> KeyRef {
        let s = self.session();
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(spec.len.into()),
            Attribute::Token(true),
            Attribute::Private(spec.private),
            Attribute::Sensitive(spec.sensitive),
            Attribute::Extractable(spec.extractable),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(label.as_bytes().to_vec()),
        ];
        s.generate_key(&Mechanism::AesKeyGen, &template).unwrap();
        Self::key_ref(label)
    }

    fn handle(&self, s: &Session, key: &KeyRef) -> ObjectHandle {
        let uri = Pkcs11KeyUri::from_key_ref_id(key.id()).unwrap();
        let mut template = vec![Attribute::Class(ObjectClass::SECRET_KEY)];
        if let Some(l) = &uri.object {
            template.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        if let Some(id) = &uri.id {
            template.push(Attribute::Id(id.clone()));
        }
        let found = s.find_objects(&template).unwrap();
        assert_eq!(found.len(), 1, "expected exactly one key for {key}");
        found[0]
    }

    /// Disables a key as a customer would: CKA_ENCRYPT and CKA_DECRYPT set to false.
    pub fn disable_key(&self, key: &KeyRef) {
        self.set_usage(key, false);
    }

    /// Re-enables a key: CKA_ENCRYPT and CKA_DECRYPT set to true.
    pub fn enable_key(&self, key: &KeyRef) {
        self.set_usage(key, true);
    }

    fn set_usage(&self, key: &KeyRef, on: bool) {
        let s = self.session();
        let h = self.handle(&s, key);
        s.update_attributes(h, &[Attribute::Encrypt(on), Attribute::Decrypt(on)])
            .unwrap();
    }

    /// Destroys the key object (C_DestroyObject): crypto-shredding.
    pub fn destroy_key(&self, key: &KeyRef) {
        let s = self.session();
        let h = self.handle(&s, key);
        s.destroy_object(h).unwrap();
    }

    /// C_Logout: logs every session of this process (the provider's too) out of the token.
    pub fn logout(&self) {
        let s = self.session();
        s.logout().unwrap();
    }

    /// C_SetPIN: changes the token's user PIN, as a customer withdrawing Keyward's access would
    /// (the pin file keeps the old one until [`SoftHsm::write_pin_file`]).
    pub fn change_pin(&self, new: &str) {
        let s = self.session();
        let mut pin = self.pin.lock().unwrap();
        s.set_pin(&AuthPin::from(pin.clone()), &AuthPin::from(new.to_owned()))
            .unwrap();
        *pin = new.to_owned();
    }

    /// Writes `pin` to the provider's pin file (mode 0600).
    pub fn write_pin_file(&self, pin: &str) {
        write_pin_file(&self.dir.join("pin"), pin);
    }

    /// C_Finalize then C_Initialize: every open session handle of this process (the
    /// provider's pooled sessions too) becomes invalid, as after an HSM restart.
    pub fn restart(&self) {
        self.ctx.clone().finalize().unwrap();
        self.ctx
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .unwrap();
    }
}

fn write_pin_file(path: &Path, pin: &str) {
    std::fs::write(path, format!("{pin}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}
