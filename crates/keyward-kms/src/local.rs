//! The local development KEK provider. **NOT FOR PRODUCTION.**
//!
//! KEKs are 32-byte files in one directory, on the same disk as the data they protect: anyone
//! who can read the store and the key directory can decrypt everything, and there is no
//! customer-held key to revoke. It exists so that Keyward can be developed, tested and
//! demonstrated (including revocation, with `keyward key disable`) without a cloud account.
//! See `docs/providers/local.md`.
//!
//! Layout of the directory (mode `0700`):
//! - `<name>.key`: the KEK, 32 random bytes, mode `0600`, created exclusively (`O_CREAT|O_EXCL`)
//!   and fsync'd together with the directory. A key file that group or others may access is
//!   refused.
//! - `<name>.disabled`: an empty marker; while it exists the key refuses to wrap and unwrap,
//!   like a disabled key in a cloud KMS.
//!
//! Key state is read from disk on every wrap, unwrap and describe (these happen about once per
//! cache TTL), so `keyward key disable NAME` run in another process takes effect on a running
//! server without a restart.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use keyward_envelope::{KEY_LEN, SecretKey, WrappedKey};
use zeroize::Zeroizing;

use crate::{
    Capabilities, ErrorKind, KeyProvider, KeyRef, KeyState, KeyStatus, ProviderError, ProviderKind,
    WrapContext,
};

/// The key that [`LocalProvider::open`] creates if it is absent.
pub const DEFAULT_KEY_NAME: &str = "default";

/// Longest allowed key name, in bytes.
const MAX_NAME_LEN: usize = 64;
const KEY_SUFFIX: &str = ".key";
const DISABLED_SUFFIX: &str = ".disabled";
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
/// Permission bits that give group or others any access.
const GROUP_OTHER_BITS: u32 = 0o077;
const NAME_RULE: &str = "1 to 64 characters from a-z, 0-9, '_' and '-'";
const NOT_FOR_PRODUCTION: &str =
    "NOT FOR PRODUCTION: the KEK is a file on the same machine as the data it protects";

/// Local development KEK provider. **NOT FOR PRODUCTION**: the key-encryption keys are files on
/// the same disk as the data they protect (see the [module documentation](self)).
///
/// Cheap to open several times on the same directory: it holds no state but the path, so a
/// second instance (the CLI in another process) can disable a key under a running server.
pub struct LocalProvider {
    dir: PathBuf,
}

impl fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalProvider")
            .field("dir", &self.dir)
            .field("warning", &NOT_FOR_PRODUCTION)
            .finish()
    }
}

impl LocalProvider {
    /// Opens (creating it with mode `0700` if absent) the key directory `dir`, and creates the
    /// key [`DEFAULT_KEY_NAME`] in it if absent.
    ///
    /// Logs a warning that this provider is not for production.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, ProviderError> {
        let dir = dir.into();
        ensure_private_dir(&dir)?;
        tracing::warn!(
            dir = %dir.display(),
            "local KEK provider opened; {NOT_FOR_PRODUCTION}"
        );
        let provider = Self { dir };
        if provider.create_key_file(DEFAULT_KEY_NAME)? == Created::New {
            tracing::info!(key = DEFAULT_KEY_NAME, "created local key");
        }
        Ok(provider)
    }

    /// Opens (creating it with mode `0700` if absent) the key directory `dir` and nothing else:
    /// for `keyward key create NAME`, which must be able to create [`DEFAULT_KEY_NAME`] itself in
    /// a fresh directory.
    pub fn open_dir(dir: impl Into<PathBuf>) -> Result<Self, ProviderError> {
        let dir = dir.into();
        ensure_private_dir(&dir)?;
        Ok(Self { dir })
    }

    /// Opens the existing key directory `dir` without creating anything (neither the directory
    /// nor the default key): for tools that act on a server's keys, where a mistyped directory
    /// must be an error rather than a new, unused key. A missing directory is
    /// [`ErrorKind::NotFound`].
    pub fn open_existing(dir: impl Into<PathBuf>) -> Result<Self, ProviderError> {
        let dir = dir.into();
        match fs::metadata(&dir) {
            Ok(meta) if meta.is_dir() => Ok(Self { dir }),
            Ok(_) => Err(ProviderError::new(
                ErrorKind::Misconfigured,
                format!("{} exists and is not a directory", dir.display()),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ProviderError::new(
                ErrorKind::NotFound,
                format!("local key directory {} does not exist", dir.display()),
            )),
            Err(e) => Err(io_error(
                format!("could not read local key directory {}", dir.display()),
                e,
            )),
        }
    }

    /// Creates a new key `name` (32 random bytes, mode `0600`).
    ///
    /// A key of that name already existing is [`ErrorKind::Misconfigured`]: keys are never
    /// overwritten, since that would shred everything wrapped under the old one.
    pub fn create_key(&self, name: &str) -> Result<(), ProviderError> {
        match self.create_key_file(name)? {
            Created::New => {
                tracing::info!(key = name, "created local key");
                Ok(())
            }
            Created::Existed => Err(ProviderError::new(
                ErrorKind::Misconfigured,
                format!(
                    "local key '{name}' already exists in {}",
                    self.dir.display()
                ),
            )),
        }
    }

    /// Enables or disables the key `name`, by removing or creating its `<name>.disabled` marker.
    ///
    /// A disabled key refuses wrap and unwrap with [`ErrorKind::Refused`], as a cloud KMS does:
    /// this is how revocation is demonstrated locally. A missing key is
    /// [`ErrorKind::NotFound`].
    pub fn set_enabled(&self, name: &str, enabled: bool) -> Result<(), ProviderError> {
        validate_name(name)?;
        require_key_file(&self.dir, name)?;
        let marker = marker_path(&self.dir, name);
        if enabled {
            match fs::remove_file(&marker) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(format!("could not enable local key '{name}'"), e)),
            }
        } else {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(FILE_MODE)
                .open(&marker)
                .and_then(|f| f.sync_all())
                .map_err(|e| io_error(format!("could not disable local key '{name}'"), e))?;
        }
        sync_dir(&self.dir)?;
        tracing::info!(key = name, enabled, "changed local key state");
        Ok(())
    }

    /// The state of the key `name`: [`KeyState::Enabled`] or [`KeyState::Disabled`]. A missing
    /// key is [`ErrorKind::NotFound`].
    pub fn status(&self, name: &str) -> Result<KeyStatus, ProviderError> {
        validate_name(name)?;
        status(&self.dir, name)
    }

    /// All keys in the directory with their states, sorted by name.
    pub fn list_keys(&self) -> Result<Vec<(String, KeyState)>, ProviderError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| {
            io_error(
                format!("could not list local keys in {}", self.dir.display()),
                e,
            )
        })?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| {
                io_error(
                    format!("could not list local keys in {}", self.dir.display()),
                    e,
                )
            })?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(KEY_SUFFIX)) else {
                continue;
            };
            if is_valid_name(name) {
                names.push(name.to_owned());
            }
        }
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let state = state_of(&self.dir, &name)?;
                Ok((name, state))
            })
            .collect()
    }

    /// The key directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates `<name>.key` exclusively; reports whether it was already there.
    fn create_key_file(&self, name: &str) -> Result<Created, ProviderError> {
        validate_name(name)?;
        let path = key_path(&self.dir, name);
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Created::Existed),
            Err(e) => return Err(io_error(format!("could not create local key '{name}'"), e)),
        };
        let written = SecretKey::generate()
            .map_err(|e| {
                ProviderError::new(
                    ErrorKind::Unavailable,
                    format!("could not create local key '{name}': the system random number generator failed"),
                )
                .with_source(e)
            })
            .and_then(|key| {
                file.write_all(key.expose_secret())
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io_error(format!("could not write local key '{name}'"), e))
            });
        if let Err(e) = written {
            // Never leave a short key file behind: it would be refused as corrupt forever.
            drop(file);
            if let Err(rm) = fs::remove_file(&path) {
                tracing::warn!(key = name, error = %rm, "could not remove partially written local key file");
            }
            return Err(e);
        }
        sync_dir(&self.dir)?;
        Ok(Created::New)
    }

    /// The key name a [`KeyRef`] designates, if it is a valid local key reference.
    fn key_name(kek: &KeyRef) -> Result<String, ProviderError> {
        if kek.kind() != ProviderKind::Local {
            return Err(ProviderError::new(
                ErrorKind::Misconfigured,
                format!(
                    "the local provider cannot use key reference '{kek}': it belongs to the {} provider",
                    kek.kind()
                ),
            ));
        }
        validate_name(kek.id())?;
        Ok(kek.id().to_owned())
    }

    /// Loads the usable master key for `kek`, off the async runtime.
    async fn load(&self, kek: &KeyRef) -> Result<SecretKey, ProviderError> {
        let name = Self::key_name(kek)?;
        let dir = self.dir.clone();
        blocking(move || load_master_key(&dir, &name)).await
    }
}

#[async_trait]
impl KeyProvider for LocalProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Local
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            reports_key_state: true,
            production_grade: false,
            ..Capabilities::default()
        }
    }

    async fn wrap(
        &self,
        kek: &KeyRef,
        key: &SecretKey,
        ctx: &WrapContext,
    ) -> Result<WrappedKey, ProviderError> {
        let master = self.load(kek).await?;
        keyward_envelope::wrap_key(&master, key, &ctx.aad()).map_err(|e| {
            ProviderError::new(
                ErrorKind::Unavailable,
                format!("could not wrap under local key '{}'", kek.id()),
            )
            .with_source(e)
        })
    }

    async fn unwrap(
        &self,
        kek: &KeyRef,
        wrapped: &WrappedKey,
        ctx: &WrapContext,
    ) -> Result<SecretKey, ProviderError> {
        let master = self.load(kek).await?;
        // Deliberately one coarse error whatever the cause (tampering, another key, another
        // context), so that the message is no oracle.
        keyward_envelope::unwrap_key(&master, wrapped, &ctx.aad()).map_err(|e| {
            ProviderError::new(
                ErrorKind::InvalidCiphertext,
                format!(
                    "the wrapped key is not valid under local key '{}' and this context",
                    kek.id()
                ),
            )
            .with_source(e)
        })
    }

    async fn describe(&self, kek: &KeyRef) -> Result<KeyStatus, ProviderError> {
        let name = Self::key_name(kek)?;
        let dir = self.dir.clone();
        blocking(move || status(&dir, &name)).await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Created {
    New,
    Existed,
}

/// Runs tiny blocking file I/O on tokio's blocking pool.
async fn blocking<T, F>(f: F) -> Result<T, ProviderError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ProviderError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ProviderError::new(
            ErrorKind::Unavailable,
            "the local provider's file I/O task did not complete",
        )
        .with_source(e)
    })?
}

fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Key names become file names: the rule keeps them free of path separators, dots and case
/// ambiguity.
fn validate_name(name: &str) -> Result<(), ProviderError> {
    if is_valid_name(name) {
        return Ok(());
    }
    // Echo at most a bounded, escaped prefix of what we were given.
    let shown: String = name.chars().take(MAX_NAME_LEN + 8).collect();
    let ellipsis = if shown.len() < name.len() { "…" } else { "" };
    Err(ProviderError::new(
        ErrorKind::Misconfigured,
        format!(
            "invalid local key name \"{}{ellipsis}\": use {NAME_RULE}",
            shown.escape_debug()
        ),
    ))
}

fn key_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{KEY_SUFFIX}"))
}

fn marker_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{DISABLED_SUFFIX}"))
}

fn not_found(dir: &Path, name: &str) -> ProviderError {
    ProviderError::new(
        ErrorKind::NotFound,
        format!("local key '{name}' does not exist in {}", dir.display()),
    )
}

/// Classifies an I/O error once: a missing file is `NotFound`, a permission problem is ours to
/// fix (`Misconfigured`), anything else is the disk failing (`Unavailable`).
fn io_error(message: String, e: io::Error) -> ProviderError {
    let kind = match e.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::PermissionDenied => ErrorKind::Misconfigured,
        _ => ErrorKind::Unavailable,
    };
    ProviderError::new(kind, message).with_source(e)
}

fn ensure_private_dir(dir: &Path) -> Result<(), ProviderError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & GROUP_OTHER_BITS != 0 {
                tracing::warn!(
                    dir = %dir.display(),
                    mode = format_args!("{mode:o}"),
                    "local key directory is accessible by group or others; run chmod 700 on it"
                );
            }
            Ok(())
        }
        Ok(_) => Err(ProviderError::new(
            ErrorKind::Misconfigured,
            format!(
                "local key directory {} exists and is not a directory",
                dir.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let what = || format!("could not create local key directory {}", dir.display());
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(|e| io_error(what(), e))?;
            // The umask may have narrowed the mode further, never widened it; set it exactly.
            fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
                .map_err(|e| io_error(what(), e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
            Ok(())
        }
        Err(e) => Err(io_error(
            format!("could not open local key directory {}", dir.display()),
            e,
        )),
    }
}

/// Makes a create, remove or rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), ProviderError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(format!("could not sync directory {}", dir.display()), e))
}

fn require_key_file(dir: &Path, name: &str) -> Result<(), ProviderError> {
    match fs::metadata(key_path(dir, name)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(not_found(dir, name)),
        Err(e) => Err(io_error(format!("could not read local key '{name}'"), e)),
    }
}

fn is_disabled(dir: &Path, name: &str) -> Result<bool, ProviderError> {
    marker_path(dir, name)
        .try_exists()
        .map_err(|e| io_error(format!("could not read the state of local key '{name}'"), e))
}

fn state_of(dir: &Path, name: &str) -> Result<KeyState, ProviderError> {
    Ok(if is_disabled(dir, name)? {
        KeyState::Disabled
    } else {
        KeyState::Enabled
    })
}

fn status(dir: &Path, name: &str) -> Result<KeyStatus, ProviderError> {
    require_key_file(dir, name)?;
    Ok(match state_of(dir, name)? {
        KeyState::Disabled => KeyStatus::new(KeyState::Disabled).with_detail(format!(
            "marker file {} exists; `keyward key enable {name}` removes it",
            marker_path(dir, name).display()
        )),
        state => KeyStatus::new(state),
    })
}

/// Reads the key `name` for one wrap or unwrap, after checking that it exists, is enabled and
/// is private to its owner. The bytes live only in the returned key, zeroized on drop.
fn load_master_key(dir: &Path, name: &str) -> Result<SecretKey, ProviderError> {
    let path = key_path(dir, name);
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found(dir, name)),
        Err(e) => return Err(io_error(format!("could not open local key '{name}'"), e)),
    };
    if is_disabled(dir, name)? {
        return Err(ProviderError::new(
            ErrorKind::Refused,
            format!("local key '{name}' is disabled"),
        ));
    }
    let unreadable = |e| io_error(format!("could not read local key '{name}'"), e);
    // Checked on the open handle, not the path, so the file checked is the file read.
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(ProviderError::new(
            ErrorKind::Misconfigured,
            format!("local key file {} is not a regular file", path.display()),
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & GROUP_OTHER_BITS != 0 {
        return Err(ProviderError::new(
            ErrorKind::Misconfigured,
            format!(
                "refusing to use local key file {} with mode {mode:o}: group or others can access it; run chmod 600 {}",
                path.display(),
                path.display()
            ),
        ));
    }
    if meta.len() != KEY_LEN as u64 {
        return Err(ProviderError::new(
            ErrorKind::Misconfigured,
            format!(
                "local key file {} is {} bytes long, expected {KEY_LEN}: it is corrupt or not a Keyward local key",
                path.display(),
                meta.len()
            ),
        ));
    }
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    file.read_exact(&mut bytes[..]).map_err(unreadable)?;
    SecretKey::try_from_slice(&bytes[..]).map_err(|e| {
        ProviderError::new(
            ErrorKind::Misconfigured,
            format!("local key '{name}' is not a valid key"),
        )
        .with_source(e)
    })
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests fail loudly on purpose"
)]
mod tests {
    use super::*;
    use keyward_envelope::{KeyId, TenantId};
    use tempfile::TempDir;

    use crate::Purpose;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn setup() -> (TempDir, LocalProvider) {
        let tmp = tempfile::tempdir().unwrap();
        let provider = LocalProvider::open(tmp.path().join("keys")).unwrap();
        (tmp, provider)
    }

    fn local(name: &str) -> KeyRef {
        KeyRef::new(ProviderKind::Local, name)
    }

    fn ctx() -> WrapContext {
        WrapContext::new(
            &TenantId::try_from("acme").unwrap(),
            &KeyId::from_bytes([7; 16]),
            Purpose::TenantKey,
        )
    }

    fn key() -> SecretKey {
        SecretKey::from_bytes([0x42; KEY_LEN])
    }

    fn expect_err<T>(result: Result<T, ProviderError>) -> ProviderError {
        match result {
            Ok(_) => panic!("expected an error, got Ok"),
            Err(e) => e,
        }
    }

    #[test]
    fn open_dir_creates_a_private_dir_and_no_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fresh");
        let p = LocalProvider::open_dir(&dir).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(p.list_keys().unwrap().is_empty());
        p.create_key(DEFAULT_KEY_NAME).unwrap();
        assert_eq!(
            p.list_keys().unwrap(),
            vec![(DEFAULT_KEY_NAME.to_owned(), KeyState::Enabled)]
        );
    }

    #[test]
    fn open_creates_a_private_dir_and_the_default_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("keys");
        let p = LocalProvider::open(&dir).unwrap();

        assert_eq!(p.dir(), dir);
        assert_eq!(mode(&dir), 0o700);
        let key_file = dir.join("default.key");
        assert_eq!(mode(&key_file), 0o600);
        assert_eq!(fs::read(&key_file).unwrap().len(), KEY_LEN);
        assert_eq!(
            p.list_keys().unwrap(),
            [(DEFAULT_KEY_NAME.to_owned(), KeyState::Enabled)]
        );
        assert_eq!(p.kind(), ProviderKind::Local);
        let caps = p.capabilities();
        assert!(caps.reports_key_state);
        assert!(!caps.production_grade);
        assert!(!caps.generates_keys);
    }

    #[test]
    fn reopening_keeps_the_existing_key() {
        let (tmp, p) = setup();
        let before = fs::read(p.dir().join("default.key")).unwrap();
        let again = LocalProvider::open(tmp.path().join("keys")).unwrap();
        assert_eq!(fs::read(again.dir().join("default.key")).unwrap(), before);
    }

    #[test]
    fn open_refuses_a_file_as_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let e = LocalProvider::open(&file).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Misconfigured);
        assert!(e.message().contains("not a directory"), "{e}");
    }

    #[test]
    fn created_keys_are_private_random_and_listed_sorted() {
        let (_tmp, p) = setup();
        p.create_key("zeta").unwrap();
        p.create_key("alpha_1-x").unwrap();
        assert_eq!(mode(&p.dir().join("zeta.key")), 0o600);
        assert_ne!(
            fs::read(p.dir().join("zeta.key")).unwrap(),
            fs::read(p.dir().join("alpha_1-x.key")).unwrap()
        );
        // Files that are not keys are ignored.
        fs::write(p.dir().join("README"), b"hi").unwrap();
        fs::write(p.dir().join("Bad.key"), [0; KEY_LEN]).unwrap();
        p.set_enabled("zeta", false).unwrap();
        let names: Vec<_> = p.list_keys().unwrap();
        assert_eq!(
            names,
            [
                ("alpha_1-x".to_owned(), KeyState::Enabled),
                ("default".to_owned(), KeyState::Enabled),
                ("zeta".to_owned(), KeyState::Disabled),
            ]
        );
    }

    #[test]
    fn creating_an_existing_key_is_refused_and_changes_nothing() {
        let (_tmp, p) = setup();
        let before = fs::read(p.dir().join("default.key")).unwrap();
        let e = p.create_key(DEFAULT_KEY_NAME).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Misconfigured);
        assert!(e.message().contains("already exists"), "{e}");
        assert_eq!(fs::read(p.dir().join("default.key")).unwrap(), before);
    }

    #[tokio::test]
    async fn key_names_are_validated_everywhere() {
        let (_tmp, p) = setup();
        let too_long = "a".repeat(65);
        for bad in [
            "",
            "Default",
            "a.b",
            "a/b",
            "../default",
            "with space",
            "ключ",
            too_long.as_str(),
        ] {
            let errors = [
                p.create_key(bad).unwrap_err(),
                p.set_enabled(bad, false).unwrap_err(),
                p.status(bad).unwrap_err(),
                expect_err(p.wrap(&local(bad), &key(), &ctx()).await),
                p.describe(&local(bad)).await.unwrap_err(),
            ];
            for e in errors {
                assert_eq!(e.kind(), ErrorKind::Misconfigured, "{bad:?}: {e}");
                assert!(e.message().contains("a-z, 0-9, '_' and '-'"), "{e}");
            }
        }
        let longest = "a".repeat(64);
        p.create_key(&longest).unwrap();
        p.create_key("0_-z").unwrap();
        // An over-long name is not echoed in full.
        let e = p.create_key(&"x".repeat(10_000)).unwrap_err();
        assert!(e.message().len() < 200, "{e}");
    }

    #[tokio::test]
    async fn wrap_unwrap_round_trip_and_tampering() {
        let (_tmp, p) = setup();
        let kek = local(DEFAULT_KEY_NAME);
        let wrapped = p.wrap(&kek, &key(), &ctx()).await.unwrap();
        let back = p.unwrap(&kek, &wrapped, &ctx()).await.unwrap();
        assert_eq!(back.expose_secret(), key().expose_secret());

        let mut bytes = wrapped.into_bytes();
        bytes[0] ^= 0x80;
        let e = expect_err(p.unwrap(&kek, &WrappedKey::new(bytes), &ctx()).await);
        assert_eq!(e.kind(), ErrorKind::InvalidCiphertext);
        assert!(
            e.message().contains("not valid under local key 'default'"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_key_does_not_unwrap_what_another_key_wrapped() {
        let (_tmp, p) = setup();
        p.create_key("other").unwrap();
        let wrapped = p.wrap(&local("other"), &key(), &ctx()).await.unwrap();
        let e = expect_err(p.unwrap(&local(DEFAULT_KEY_NAME), &wrapped, &ctx()).await);
        assert_eq!(e.kind(), ErrorKind::InvalidCiphertext);
    }

    #[tokio::test]
    async fn disable_in_another_instance_is_seen_by_a_running_one() {
        let (tmp, server) = setup();
        // The CLI in another process: its own instance on the same directory.
        let cli = LocalProvider::open(tmp.path().join("keys")).unwrap();
        let kek = local(DEFAULT_KEY_NAME);
        let wrapped = server.wrap(&kek, &key(), &ctx()).await.unwrap();

        cli.set_enabled(DEFAULT_KEY_NAME, false).unwrap();
        assert_eq!(mode(&server.dir().join("default.disabled")), 0o600);
        let e = expect_err(server.wrap(&kek, &key(), &ctx()).await);
        assert_eq!(e.kind(), ErrorKind::Refused);
        assert!(e.is_revocation_signal());
        assert_eq!(e.message(), "local key 'default' is disabled");
        let e = expect_err(server.unwrap(&kek, &wrapped, &ctx()).await);
        assert_eq!(e.kind(), ErrorKind::Refused);
        let status = server.describe(&kek).await.unwrap();
        assert_eq!(status.state, KeyState::Disabled);
        assert!(
            status
                .detail
                .unwrap()
                .contains("keyward key enable default")
        );
        // Disabling twice is fine.
        cli.set_enabled(DEFAULT_KEY_NAME, false).unwrap();

        cli.set_enabled(DEFAULT_KEY_NAME, true).unwrap();
        assert!(!server.dir().join("default.disabled").exists());
        let back = server.unwrap(&kek, &wrapped, &ctx()).await.unwrap();
        assert_eq!(back.expose_secret(), key().expose_secret());
        assert_eq!(
            server.describe(&kek).await.unwrap(),
            KeyStatus::new(KeyState::Enabled)
        );
        // Enabling an enabled key is fine.
        cli.set_enabled(DEFAULT_KEY_NAME, true).unwrap();
    }

    #[tokio::test]
    async fn a_key_file_readable_by_group_or_others_is_refused() {
        let (_tmp, p) = setup();
        let kek = local(DEFAULT_KEY_NAME);
        let key_file = p.dir().join("default.key");
        for loose in [0o644, 0o640, 0o604, 0o660] {
            chmod(&key_file, loose);
            for e in [
                expect_err(p.wrap(&kek, &key(), &ctx()).await),
                expect_err(p.generate(&kek, &ctx()).await),
            ] {
                assert_eq!(e.kind(), ErrorKind::Misconfigured, "{loose:o}: {e}");
                assert!(e.message().contains("chmod 600"), "{e}");
                assert!(e.message().contains(&format!("{loose:o}")), "{e}");
            }
        }
        chmod(&key_file, 0o400);
        p.wrap(&kek, &key(), &ctx()).await.unwrap();
        chmod(&key_file, 0o600);
        p.wrap(&kek, &key(), &ctx()).await.unwrap();
    }

    #[tokio::test]
    async fn a_corrupt_key_file_is_refused() {
        let (_tmp, p) = setup();
        let key_file = p.dir().join("default.key");
        fs::write(&key_file, [1u8; KEY_LEN + 1]).unwrap();
        let e = expect_err(p.wrap(&local(DEFAULT_KEY_NAME), &key(), &ctx()).await);
        assert_eq!(e.kind(), ErrorKind::Misconfigured);
        assert!(e.message().contains("33 bytes long, expected 32"), "{e}");
    }

    #[tokio::test]
    async fn missing_keys_are_not_found() {
        let (_tmp, p) = setup();
        let kek = local("absent");
        let wrapped = p
            .wrap(&local(DEFAULT_KEY_NAME), &key(), &ctx())
            .await
            .unwrap();
        for e in [
            expect_err(p.wrap(&kek, &key(), &ctx()).await),
            expect_err(p.unwrap(&kek, &wrapped, &ctx()).await),
            p.describe(&kek).await.unwrap_err(),
            p.status("absent").unwrap_err(),
            p.set_enabled("absent", false).unwrap_err(),
            p.set_enabled("absent", true).unwrap_err(),
        ] {
            assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
            assert!(
                e.message().contains("local key 'absent' does not exist"),
                "{e}"
            );
        }
        // Disabling a missing key must not leave a marker that would disable a later key.
        assert!(!p.dir().join("absent.disabled").exists());
    }

    #[tokio::test]
    async fn key_refs_of_other_providers_are_misconfigured() {
        let (_tmp, p) = setup();
        let kek = KeyRef::new(ProviderKind::AwsKms, "default");
        for e in [
            expect_err(p.wrap(&kek, &key(), &ctx()).await),
            expect_err(p.unwrap(&kek, &WrappedKey::new(vec![0; 60]), &ctx()).await),
            p.describe(&kek).await.unwrap_err(),
        ] {
            assert_eq!(e.kind(), ErrorKind::Misconfigured, "{e}");
            assert!(e.message().contains("aws-kms:default"), "{e}");
        }
    }

    #[test]
    fn debug_output_warns_and_holds_no_key_bytes() {
        let (_tmp, p) = setup();
        let bytes = fs::read(p.dir().join("default.key")).unwrap();
        let debug = format!("{p:?}");
        let pretty = format!("{p:#?}");
        assert!(debug.contains("NOT FOR PRODUCTION"), "{debug}");
        for shown in [&debug, &pretty] {
            assert!(!shown.contains(&hex::encode(&bytes)));
            assert!(!shown.contains(&hex::encode_upper(&bytes)));
            assert!(!shown.contains(&format!("{bytes:?}")));
            assert!(!shown.contains(&format!("{:?}", &bytes[..8])));
        }
    }
}
