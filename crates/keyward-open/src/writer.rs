//! [`ExportWriter`]: writes an export directory (`keyward export`), streaming the data keys and
//! tombstones to their files as they arrive (a tenant may have millions) and hashing each file
//! as it is written; the manifest is written last, so a directory without one is an export
//! that did not finish, and `keyward-open` refuses it.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{BufWriter, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use aws_lc_rs::digest;
use keyward_envelope::TenantId;

use crate::format::{
    AuditRefs, Counts, DATA_KEYS, DataKeyEntry, FORMAT, FORMAT_VERSION, FileDigest, MANIFEST,
    Manifest, TENANT_KEYS, TOMBSTONES, TenantKeyEntry, TenantKeysFile, TombstoneEntry,
};

/// Mode of the export's files and directory: they hold no key in clear, but wrapped keys and
/// scope labels are the customer's business only.
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// A failure while writing an export: what could not be done, and the file.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {path}")]
pub struct WriteError {
    what: String,
    path: PathBuf,
    #[source]
    source: Option<std::io::Error>,
}

impl WriteError {
    fn io(what: &str, path: &Path, source: std::io::Error) -> Self {
        Self {
            what: what.to_owned(),
            path: path.to_owned(),
            source: Some(source),
        }
    }

    fn refused(what: String, path: &Path) -> Self {
        Self {
            what,
            path: path.to_owned(),
            source: None,
        }
    }
}

/// A file being written and hashed.
struct HashedFile {
    path: PathBuf,
    out: BufWriter<File>,
    sha256: digest::Context,
    bytes: u64,
}

impl HashedFile {
    fn create(path: PathBuf) -> Result<Self, WriteError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(|e| WriteError::io("cannot create", &path, e))?;
        Ok(Self {
            path,
            out: BufWriter::new(file),
            sha256: digest::Context::new(&digest::SHA256),
            bytes: 0,
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<(), WriteError> {
        self.out
            .write_all(data)
            .map_err(|e| WriteError::io("cannot write", &self.path, e))?;
        self.sha256.update(data);
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// One JSON object and a newline.
    fn line<T: serde::Serialize>(&mut self, value: &T) -> Result<(), WriteError> {
        let mut line = serde_json::to_vec(value)
            .map_err(|e| WriteError::refused(format!("cannot encode a line ({e})"), &self.path))?;
        line.push(b'\n');
        self.write(&line)
    }

    /// Flushes and syncs the file; its digest.
    fn finish(self) -> Result<FileDigest, WriteError> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| WriteError::io("cannot write", &self.path, e.into_error()))?;
        file.sync_all()
            .map_err(|e| WriteError::io("cannot sync", &self.path, e))?;
        Ok(FileDigest {
            sha256: hex::encode(self.sha256.finish().as_ref()),
            bytes: self.bytes,
        })
    }
}

/// What the manifest records besides the files: the export's time and audit references.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    /// When the export began: RFC 3339 UTC, and Unix milliseconds.
    pub exported_at: String,
    pub exported_at_ms: i64,
    pub audit: AuditRefs,
}

/// Writes one export directory; see the module docs. Dropped without [`ExportWriter::finish`]
/// (an export that failed part-way), it removes what it wrote.
#[derive(Debug)]
pub struct ExportWriter {
    dir: PathBuf,
    created_dir: bool,
    tenant: TenantId,
    tenant_keys: Vec<TenantKeyEntry>,
    data_keys: Option<HashedFileHandle>,
    tombstones: Option<HashedFileHandle>,
    counts: Counts,
    finished: bool,
}

/// [`HashedFile`] behind a `Debug` that shows only the path.
struct HashedFileHandle(HashedFile);

impl std::fmt::Debug for HashedFileHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("HashedFile").field(&self.0.path).finish()
    }
}

impl ExportWriter {
    /// Starts an export of `tenant` into `dir`: created (mode 0700) if absent; an existing
    /// directory must be empty, so that no older export or other file is mixed in or
    /// overwritten.
    pub fn create(dir: &Path, tenant: &TenantId) -> Result<Self, WriteError> {
        let created_dir = match fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(WriteError::refused(
                        "the export directory is not empty (write each export to a new or empty directory)".to_owned(),
                        dir,
                    ));
                }
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(DIR_MODE)
                    .create(dir)
                    .map_err(|e| WriteError::io("cannot create the export directory", dir, e))?;
                true
            }
            Err(e) => return Err(WriteError::io("cannot read the export directory", dir, e)),
        };
        let mut writer = Self {
            dir: dir.to_owned(),
            created_dir,
            tenant: tenant.clone(),
            tenant_keys: Vec::new(),
            data_keys: None,
            tombstones: None,
            counts: Counts::default(),
            finished: false,
        };
        writer.data_keys = Some(HashedFileHandle(HashedFile::create(dir.join(DATA_KEYS))?));
        writer.tombstones = Some(HashedFileHandle(HashedFile::create(dir.join(TOMBSTONES))?));
        Ok(writer)
    }

    /// The export's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds a tenant key (kept until [`ExportWriter::finish`] writes `tenant_keys.json`: a
    /// tenant has few).
    pub fn tenant_key(&mut self, entry: TenantKeyEntry) {
        self.tenant_keys.push(entry);
        self.counts.tenant_keys += 1;
    }

    /// Appends a data key to `data_keys.jsonl`.
    pub fn data_key(&mut self, entry: &DataKeyEntry) -> Result<(), WriteError> {
        if let Some(file) = &mut self.data_keys {
            file.0.line(entry)?;
            self.counts.data_keys += 1;
        }
        Ok(())
    }

    /// Appends a tombstone to `tombstones.jsonl`.
    pub fn tombstone(&mut self, entry: &TombstoneEntry) -> Result<(), WriteError> {
        if let Some(file) = &mut self.tombstones {
            file.0.line(entry)?;
            self.counts.tombstones += 1;
        }
        Ok(())
    }

    /// What was added so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Writes `tenant_keys.json`, syncs every file, then writes `manifest.json` (through a
    /// temporary file renamed into place, so it appears whole or not at all) and syncs the
    /// directory. Returns the manifest.
    pub fn finish(mut self, info: ExportInfo) -> Result<Manifest, WriteError> {
        let mut files = BTreeMap::new();
        let mut keys = HashedFile::create(self.dir.join(TENANT_KEYS))?;
        let body = TenantKeysFile {
            tenant: self.tenant.to_string(),
            tenant_keys: std::mem::take(&mut self.tenant_keys),
        };
        let mut json = serde_json::to_vec_pretty(&body).map_err(|e| {
            WriteError::refused(format!("cannot encode the tenant keys ({e})"), &keys.path)
        })?;
        json.push(b'\n');
        keys.write(&json)?;
        files.insert(TENANT_KEYS.to_owned(), keys.finish()?);
        for (name, file) in [
            (DATA_KEYS, self.data_keys.take()),
            (TOMBSTONES, self.tombstones.take()),
        ] {
            if let Some(file) = file {
                files.insert(name.to_owned(), file.0.finish()?);
            }
        }
        let manifest = Manifest {
            format: FORMAT.to_owned(),
            format_version: FORMAT_VERSION,
            tenant: self.tenant.to_string(),
            exported_at: info.exported_at,
            exported_at_ms: info.exported_at_ms,
            audit: info.audit,
            counts: self.counts,
            files,
        };
        let temp = self.dir.join(format!(".{MANIFEST}.partial"));
        let mut out = HashedFile::create(temp.clone())?;
        let mut json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| WriteError::refused(format!("cannot encode the manifest ({e})"), &temp))?;
        json.push(b'\n');
        out.write(&json)?;
        out.finish()?;
        let path = self.dir.join(MANIFEST);
        fs::rename(&temp, &path).map_err(|e| WriteError::io("cannot write", &path, e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| WriteError::io("cannot sync", &self.dir, e))?;
        self.finished = true;
        Ok(manifest)
    }
}

impl Drop for ExportWriter {
    /// An export that did not finish leaves nothing behind (best effort): its files, and its
    /// directory if this writer created it.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.data_keys = None;
        self.tombstones = None;
        for name in [
            DATA_KEYS.to_owned(),
            TOMBSTONES.to_owned(),
            TENANT_KEYS.to_owned(),
            format!(".{MANIFEST}.partial"),
        ] {
            let _ = fs::remove_file(self.dir.join(name));
        }
        if self.created_dir {
            let _ = fs::remove_dir(&self.dir);
        }
    }
}
