//! [`Pkcs11Config`]: the `[pkcs11]` section of the server configuration.

use std::path::PathBuf;

use keyward_kms::{ErrorKind, ProviderError};
use zeroize::Zeroizing;

/// How Keyward reaches one PKCS#11 token.
///
/// The user PIN is read from `pin_file` or from the environment variable named by `pin_env`
/// (exactly one of them), never from the command line or from this configuration itself.
/// The token is found by its label: slot ids are not stable across restarts and HSM firmware.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pkcs11Config {
    /// The vendor's PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`. Required.
    pub module_path: PathBuf,
    /// The label of the token that holds the KEKs (CKA_LABEL of the token, at most 32 bytes).
    /// Required.
    pub token_label: String,
    /// A file holding the user (CKU_USER) PIN; one trailing newline is ignored. Must not be
    /// readable by group or others.
    pub pin_file: Option<PathBuf>,
    /// The name of an environment variable holding the user PIN.
    pub pin_env: Option<String>,
    /// The most PKCS#11 sessions open (and calls in flight) at once. Default 4.
    pub sessions: usize,
    /// The longest one PKCS#11 call may take before the caller gets a `Timeout` error, in
    /// milliseconds. The call itself cannot be cancelled: its session stays busy until the
    /// module returns. Default 5000.
    pub call_timeout_ms: u64,
}

impl Default for Pkcs11Config {
    fn default() -> Self {
        Self {
            module_path: PathBuf::new(),
            token_label: String::new(),
            pin_file: None,
            pin_env: None,
            sessions: 4,
            call_timeout_ms: 5000,
        }
    }
}

fn misconfigured(msg: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorKind::Misconfigured, msg)
}

impl Pkcs11Config {
    /// Checks the values and reads the PIN.
    pub(crate) fn validate_and_read_pin(&self) -> Result<Zeroizing<String>, ProviderError> {
        if self.module_path.as_os_str().is_empty() {
            return Err(misconfigured(
                "pkcs11.module_path is empty: give the vendor's PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so",
            ));
        }
        if self.token_label.is_empty() || self.token_label.len() > 32 {
            return Err(misconfigured(format!(
                "pkcs11.token_label '{}' must be 1 to 32 bytes (the token's label, as `pkcs11-tool --list-slots` shows it)",
                self.token_label
            )));
        }
        if !(1..=256).contains(&self.sessions) {
            return Err(misconfigured(format!(
                "pkcs11.sessions is {}; it must be 1 to 256",
                self.sessions
            )));
        }
        if self.call_timeout_ms == 0 {
            return Err(misconfigured("pkcs11.call_timeout_ms must be positive"));
        }
        self.read_pin()
    }

    /// Reads the user PIN from `pin_file` or `pin_env` (again: after the token rejected a PIN,
    /// the provider reads its source once more before trying another login).
    pub(crate) fn read_pin(&self) -> Result<Zeroizing<String>, ProviderError> {
        let pin = Zeroizing::new(match (&self.pin_file, &self.pin_env) {
            (Some(path), None) => read_pin_file(path)?,
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                misconfigured(format!(
                    "pkcs11.pin_env names the environment variable '{var}', which is not set (or not UTF-8)"
                ))
            })?,
            (None, None) => {
                return Err(misconfigured(
                    "pkcs11: no PIN source; set pin_file (a file readable only by Keyward) or pin_env (an environment variable name)",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(misconfigured(
                    "pkcs11: both pin_file and pin_env are set; set exactly one",
                ));
            }
        });
        let trimmed = pin.strip_suffix('\n').unwrap_or(&pin);
        let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
        if trimmed.is_empty() {
            return Err(misconfigured("pkcs11: the PIN is empty"));
        }
        Ok(Zeroizing::new(trimmed.to_owned()))
    }
}

fn read_pin_file(path: &std::path::Path) -> Result<String, ProviderError> {
    let shown = path.display();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| {
            misconfigured(format!("pkcs11.pin_file {shown} cannot be read")).with_source(e)
        })?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(misconfigured(format!(
                "pkcs11.pin_file {shown} has mode {:o}; it must not be accessible to group or others",
                mode & 0o777
            ))
            .with_remediation(format!("chmod 600 {shown}")));
        }
    }
    std::fs::read_to_string(path).map_err(|e| {
        misconfigured(format!(
            "pkcs11.pin_file {shown} cannot be read as UTF-8 text"
        ))
        .with_source(e)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    fn base() -> Pkcs11Config {
        Pkcs11Config {
            module_path: "/usr/lib/softhsm/libsofthsm2.so".into(),
            token_label: "keyward".into(),
            pin_env: Some("KEYWARD_TEST_PIN_UNIT".into()),
            ..Pkcs11Config::default()
        }
    }

    #[test]
    fn serde_names_defaults_and_unknown_fields() {
        let c: Pkcs11Config =
            toml::from_str("module_path = \"/m.so\"\ntoken_label = \"t\"\npin_file = \"/p\"\n")
                .unwrap();
        assert_eq!(c.sessions, 4);
        assert_eq!(c.call_timeout_ms, 5000);
        assert_eq!(c.pin_file.as_deref(), Some(std::path::Path::new("/p")));
        let e = toml::from_str::<Pkcs11Config>("pin = \"1234\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn validation_errors() {
        let mut c = base();
        c.pin_env = None;
        let e = c.validate_and_read_pin().unwrap_err();
        assert!(e.message().contains("no PIN source"), "{e}");
        c.pin_env = Some("X".into());
        c.pin_file = Some("/x".into());
        assert!(
            c.validate_and_read_pin()
                .unwrap_err()
                .message()
                .contains("both")
        );
        let mut c = base();
        c.sessions = 0;
        assert!(
            c.validate_and_read_pin()
                .unwrap_err()
                .message()
                .contains("sessions")
        );
        let mut c = base();
        c.token_label = "x".repeat(33);
        assert!(
            c.validate_and_read_pin()
                .unwrap_err()
                .message()
                .contains("token_label")
        );
        let mut c = base();
        c.pin_env = Some("KEYWARD_TEST_PIN_SURELY_UNSET".into());
        let e = c.validate_and_read_pin().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Misconfigured);
        assert!(e.message().contains("not set"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn pin_file_permissions_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("keyward-p11-pin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pin");
        std::fs::write(&path, "1234\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut c = base();
        c.pin_env = None;
        c.pin_file = Some(path.clone());
        let e = c.validate_and_read_pin().unwrap_err();
        assert!(e.remediation().unwrap().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        c.validate_and_read_pin().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
