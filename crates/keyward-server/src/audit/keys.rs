//! The deployment's audit keys on disk: the checkpoint-signing key and the identifier HMAC key,
//! created on first start (mode 0600) and read back on every start.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, PoisonError},
};

use keyward_audit::{AuditError, IdentifierHasher, PublicKey, SigningKey};

use super::internal;
use crate::error::ServiceError;

/// The deployment's audit keys, created on first start under `<data_dir>/audit/`
/// (mode 0600): the Ed25519 checkpoint-signing key (PKCS#8) and the HMAC key
/// that pseudonymises caller-chosen identifiers.
pub struct AuditKeys {
    /// Replaced by [`Auditor::rotate_signing_key`] on the replica that rotates, and on every
    /// other replica by [`AuditKeys::hold`] when the chain shows a rotation (see
    /// `Auditor::follow_chain`).
    pub(crate) signing: std::sync::RwLock<SigningKey>,
    pub(crate) hasher: Arc<IdentifierHasher>,
    pub(super) dir: PathBuf,
}

impl std::fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKeys")
            .field("signing_key_id", &self.public_key().key_id())
            .finish_non_exhaustive()
    }
}

pub(super) const SIGNING_KEY_FILE: &str = "signing-key.pk8";

/// A rotation's new key, written before the rotation is recorded (see
/// [`Auditor::rotate_signing_key`] and [`Auditor::recover_rotation`]).
pub(super) const PENDING_SIGNING_KEY_FILE: &str = "signing-key.pk8.new";

/// Why the audit keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    #[error("audit key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit key file {path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: AuditError,
    },
}

impl AuditKeys {
    pub fn load_or_create(dir: &Path) -> Result<Self, AuditKeyError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| AuditKeyError::Io { path, source }
        };
        let invalid = |path: &Path| {
            let path = path.to_owned();
            move |source| AuditKeyError::Invalid { path, source }
        };
        create_private_dir(dir).map_err(io(dir))?;

        let signing_path = dir.join(SIGNING_KEY_FILE);
        let signing = match read_secret(&signing_path).map_err(io(&signing_path))? {
            Some(der) => SigningKey::from_pkcs8(&der).map_err(invalid(&signing_path))?,
            None => {
                let key = SigningKey::generate().map_err(invalid(&signing_path))?;
                let der = key.to_pkcs8().map_err(invalid(&signing_path))?;
                if create_secret(&signing_path, &der).map_err(io(&signing_path))? {
                    tracing::info!(key_id = %key.public_key().key_id(), "created the audit signing key");
                    key
                } else {
                    // Another replica sharing this directory created it first: use theirs.
                    let der = read_secret(&signing_path)
                        .map_err(io(&signing_path))?
                        .unwrap_or_default();
                    SigningKey::from_pkcs8(&der).map_err(invalid(&signing_path))?
                }
            }
        };

        let hmac_path = dir.join("identifier-key");
        let hasher = match read_secret(&hmac_path).map_err(io(&hmac_path))? {
            Some(bytes) => IdentifierHasher::from_slice(&bytes).map_err(invalid(&hmac_path))?,
            None => {
                let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
                aws_lc_rs::rand::fill(bytes.as_mut_slice()).map_err(|_| AuditKeyError::Io {
                    path: hmac_path.clone(),
                    source: std::io::Error::other("the system random number generator failed"),
                })?;
                if create_secret(&hmac_path, bytes.as_slice()).map_err(io(&hmac_path))? {
                    IdentifierHasher::new(*bytes)
                } else {
                    let bytes = read_secret(&hmac_path)
                        .map_err(io(&hmac_path))?
                        .unwrap_or_default();
                    IdentifierHasher::from_slice(&bytes).map_err(invalid(&hmac_path))?
                }
            }
        };
        Ok(Self {
            signing: std::sync::RwLock::new(signing),
            hasher: Arc::new(hasher),
            dir: dir.to_owned(),
        })
    }

    pub fn public_key(&self) -> PublicKey {
        self.signing
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .public_key()
    }

    pub(super) fn sign(
        &self,
        head: &keyward_audit::ChainHead,
        time_ms: i64,
    ) -> Result<keyward_audit::Checkpoint, ServiceError> {
        self.signing
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .sign_checkpoint(head, time_ms)
            .map_err(|e| ServiceError::Internal(format!("signing a checkpoint: {e}")))
    }

    pub fn hasher(&self) -> &Arc<IdentifierHasher> {
        &self.hasher
    }

    /// Makes `key_id` the held signing key, reading it from the key directory if another key is
    /// held: from `signing-key.pk8`, or from `signing-key.pk8.new` while the replica that rotated
    /// has recorded the rotation but not yet renamed its pending file into place. Fails if the
    /// directory holds no such key: the caller then signs nothing.
    pub(super) fn hold(&self, key_id: &str) -> Result<(), ServiceError> {
        if self.public_key().key_id() == key_id {
            return Ok(());
        }
        // The current file is read again last: the rotating replica may rename the pending
        // file over it between the first two reads.
        for name in [SIGNING_KEY_FILE, PENDING_SIGNING_KEY_FILE, SIGNING_KEY_FILE] {
            let path = self.dir.join(name);
            let Some(der) = read_secret(&path)
                .map_err(|e| internal(format!("audit key file {}: {e}", path.display())))?
            else {
                continue;
            };
            // A pending file of a rotation that is still being written does not parse yet; a
            // recorded rotation's pending file was complete (and synced) before its record.
            let Ok(key) = SigningKey::from_pkcs8(&der) else {
                continue;
            };
            if key.public_key().key_id() == key_id {
                let replaced = std::mem::replace(
                    &mut *self.signing.write().unwrap_or_else(PoisonError::into_inner),
                    key,
                );
                tracing::warn!(
                    old = %replaced.public_key().key_id(),
                    new = %key_id,
                    "now signing audit checkpoints with the key the audit chain has in force"
                );
                return Ok(());
            }
        }
        Err(ServiceError::Internal(format!(
            "the audit chain has signing key {key_id} in force, but the audit key directory {} \
             does not hold it; no checkpoint is signed with another key (replicas must share \
             the audit key directory)",
            self.dir.display()
        )))
    }
}

/// The identifier key in `dir` (`<audit_dir>/identifier-key`), read without creating anything:
/// for `keyward store authenticate-tenant-keys`, which must tag tenant keys with the key the
/// servers use, never with a fresh one. A missing key is an error.
pub fn load_identifier_key(dir: &Path) -> Result<IdentifierHasher, AuditKeyError> {
    let path = dir.join("identifier-key");
    match read_secret(&path) {
        Ok(Some(bytes)) => {
            IdentifierHasher::from_slice(&bytes).map_err(|source| AuditKeyError::Invalid {
                path: path.clone(),
                source,
            })
        }
        Ok(None) => Err(AuditKeyError::Io {
            path,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no identifier key: point at the audit key directory the servers use",
            ),
        }),
        Err(source) => Err(AuditKeyError::Io { path, source }),
    }
}

pub(super) fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

pub(super) fn read_secret(path: &Path) -> std::io::Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(zeroize::Zeroizing::new(bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates `path` holding `bytes`, atomically (written to a private temporary file, then
/// hard-linked into place), so replicas starting at once on a shared key directory never see a
/// partial key. Returns false, writing nothing, if `path` already exists.
pub(super) fn create_secret(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    let temp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    write_secret(&temp, bytes)?;
    let linked = std::fs::hard_link(&temp, path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

pub(super) fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
