//! Verifying an export before anything in it is used: [`verify`].
//!
//! The manifest must be there (it is written last), name this format and version, and list
//! exactly the three data files; each file must have the size and SHA-256 the manifest gives,
//! hold as many items as it says, and every item must be well-formed and consistent with the
//! rest (its tenant, ids, wrap context and AAD recomputed from the documented rules, each data
//! key's tenant key present, data keys in strictly ascending id order). The first problem
//! refuses the whole export, naming the file (and line).
//!
//! The data keys and tombstones are read in one streaming pass each, hashing as they are
//! parsed, keeping only the one data key asked for: memory stays bounded whatever their number.
//! Nothing found is used until the file's digest has matched.
//!
//! What the digests prove: that the files are the ones the manifest describes, so an accidental
//! or partial change is caught. Anyone who can edit the files can also edit the manifest; what
//! binds the keys themselves is cryptographic (each tenant key to its tenant and id by its KEK's
//! wrap context, each data key to its tenant, scope and id by its wrap AAD), so an edit made
//! consistently still fails when that key is unwrapped (docs/exit.md, "What the export proves").

use std::{
    collections::HashSet,
    fs::File,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

use aws_lc_rs::digest;
use keyward_envelope::{KeyId, TenantId, WRAPPED_KEY_FORMAT, WRAPPED_KEY_LEN, dek_wrap_aad};
use keyward_kms::ProviderKind;
use serde::de::DeserializeOwned;

use crate::format::{
    self, BINDING_STATES, DATA_FILES, DATA_KEYS, DataKeyEntry, FORMAT, FORMAT_VERSION, MANIFEST,
    Manifest, TENANT_KEYS, TOMBSTONES, TenantKeysFile, TombstoneEntry, b64, tenant_key_context,
};

/// Largest `manifest.json` read.
const MAX_MANIFEST: u64 = 64 * 1024;
/// Largest `tenant_keys.json` read (a tenant key entry is under 8 KiB; a tenant has few).
const MAX_TENANT_KEYS: u64 = 64 * 1024 * 1024;
/// Longest line of a JSON Lines file (an entry is under 1 KiB).
const MAX_LINE: usize = 64 * 1024;
/// Longest scope label (keyward_store::Scope).
const MAX_SCOPE: usize = 128;

/// The export is refused: which file, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the export is refused: {file}: {problem}")]
pub struct Refused {
    /// The file at fault (`manifest.json`, `data_keys.jsonl`, …).
    pub file: String,
    /// What is wrong, with the line where there is one.
    pub problem: String,
}

fn refused(file: &str, problem: impl Into<String>) -> Refused {
    Refused {
        file: file.to_owned(),
        problem: problem.into(),
    }
}

/// A tenant key of a verified export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantKey {
    pub id: KeyId,
    pub provider: ProviderKind,
    pub key_ref: String,
    pub binding_id: i64,
    pub binding_state: String,
    /// The provider's ciphertext.
    pub wrapped: Vec<u8>,
}

/// A data key of a verified export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataKey {
    pub id: KeyId,
    pub tenant_key_id: KeyId,
    pub scope: String,
    /// Its wrap AAD, as recomputed (and found equal to the file's).
    pub aad: Vec<u8>,
    /// `0x01 || nonce || encrypted key || tag`.
    pub wrapped: Vec<u8>,
}

/// What a verified export says of the data key asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// It is in `data_keys.jsonl` (and not shredded).
    DataKey(DataKey),
    /// It was shredded: its tombstone. (A data key shredded while the export was read may be
    /// in both files; shredded wins.)
    Shredded(TombstoneEntry),
    /// Neither: written after the export, or of another tenant.
    Absent,
}

/// An export that verified.
#[derive(Debug, Clone)]
pub struct VerifiedExport {
    pub manifest: Manifest,
    pub tenant: TenantId,
    pub tenant_keys: Vec<TenantKey>,
    /// The data key asked for ([`verify`]'s `want`); `None` when none was.
    pub lookup: Option<Lookup>,
}

impl VerifiedExport {
    /// The tenant key `id`, if the export has it.
    pub fn tenant_key(&self, id: &KeyId) -> Option<&TenantKey> {
        self.tenant_keys.iter().find(|k| &k.id == id)
    }
}

/// Verifies the export in `dir` (module docs) and looks up the data key `want`, if given.
pub fn verify(dir: &Path, want: Option<&KeyId>) -> Result<VerifiedExport, Refused> {
    let manifest = read_manifest(dir)?;
    let tenant = TenantId::try_from(manifest.tenant.as_str()).map_err(|e| {
        refused(
            MANIFEST,
            format!("tenant {:?} is not a tenant id: {e}", manifest.tenant),
        )
    })?;

    let tenant_keys = read_tenant_keys(dir, &manifest, &tenant)?;
    let known: HashSet<KeyId> = tenant_keys.iter().map(|k| k.id).collect();

    let mut data_key = None;
    let mut last: Option<KeyId> = None;
    let data_keys = read_lines(dir, &manifest, DATA_KEYS, |entry: DataKeyEntry| {
        let key = data_key_of(&entry, &tenant, &known)?;
        if last.is_some_and(|last| key.id <= last) {
            return Err(format!(
                "data key {} is out of order (the export lists data keys by ascending id, \
                 each once)",
                entry.id
            ));
        }
        last = Some(key.id);
        if want == Some(&key.id) {
            data_key = Some(key);
        }
        Ok(())
    })?;
    check_count(DATA_KEYS, "data keys", data_keys, manifest.counts.data_keys)?;

    let mut tombstone = None;
    let tombstones = read_lines(dir, &manifest, TOMBSTONES, |entry: TombstoneEntry| {
        let id = format::key_id(&entry.id, "id")?;
        format::key_id(&entry.tenant_key_id, "tenant_key_id")?;
        if want == Some(&id) {
            if tombstone.is_some() {
                return Err(format!("data key {id} has two tombstones"));
            }
            tombstone = Some(entry);
        }
        Ok(())
    })?;
    check_count(
        TOMBSTONES,
        "tombstones",
        tombstones,
        manifest.counts.tombstones,
    )?;

    let lookup = want.map(|_| match (tombstone, data_key) {
        (Some(tombstone), _) => Lookup::Shredded(tombstone),
        (None, Some(key)) => Lookup::DataKey(key),
        (None, None) => Lookup::Absent,
    });
    Ok(VerifiedExport {
        manifest,
        tenant,
        tenant_keys,
        lookup,
    })
}

fn read_manifest(dir: &Path) -> Result<Manifest, Refused> {
    let path = dir.join(MANIFEST);
    let text = match File::open(&path) {
        Ok(file) => read_bounded(file, MAX_MANIFEST)
            .map_err(|e| refused(MANIFEST, format!("cannot be read: {e}")))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(refused(
                MANIFEST,
                format!(
                    "missing from {}: the export is incomplete (`keyward export` writes the \
                     manifest last, once everything else is written) or this is not an export",
                    dir.display()
                ),
            ));
        }
        Err(e) => return Err(refused(MANIFEST, format!("cannot be read: {e}"))),
    };
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| refused(MANIFEST, format!("is not a valid manifest: {e}")))?;
    if manifest.format != FORMAT {
        return Err(refused(
            MANIFEST,
            format!("format is {:?}, not {FORMAT:?}", manifest.format),
        ));
    }
    if manifest.format_version != FORMAT_VERSION {
        return Err(refused(
            MANIFEST,
            format!(
                "format_version {} is not one this keyward-open reads (it reads {FORMAT_VERSION})",
                manifest.format_version
            ),
        ));
    }
    let listed: Vec<&str> = manifest.files.keys().map(String::as_str).collect();
    let mut expected = DATA_FILES.to_vec();
    expected.sort_unstable();
    if listed != expected {
        return Err(refused(
            MANIFEST,
            format!("lists the files {listed:?}; an export has exactly {expected:?}"),
        ));
    }
    for (name, file) in &manifest.files {
        if !is_hex(&file.sha256, 64) {
            return Err(refused(
                MANIFEST,
                format!("the SHA-256 of {name} is not 64 lowercase hex digits"),
            ));
        }
    }
    if !is_hex(&manifest.audit.head_hash, 64) {
        return Err(refused(
            MANIFEST,
            "audit.head_hash is not 64 lowercase hex digits",
        ));
    }
    Ok(manifest)
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Reads at most `limit` bytes; more is an error.
fn read_bounded(file: File, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    file.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "larger than {limit} bytes, which no export writes"
        )));
    }
    Ok(out)
}

/// Opens a data file listed in the manifest.
fn open_listed(dir: &Path, name: &str) -> Result<(File, PathBuf), Refused> {
    let path = dir.join(name);
    match File::open(&path) {
        Ok(file) => Ok((file, path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(refused(
            name,
            "missing: manifest.json lists it, the export is incomplete",
        )),
        Err(e) => Err(refused(name, format!("cannot be read: {e}"))),
    }
}

/// The digest check of a file read whole or streamed: `sha256` and `bytes` against the
/// manifest's entry.
fn check_digest(
    manifest: &Manifest,
    name: &str,
    sha256: digest::Digest,
    bytes: u64,
) -> Result<(), Refused> {
    let listed = &manifest.files[name];
    if bytes != listed.bytes || hex::encode(sha256.as_ref()) != listed.sha256 {
        return Err(refused(
            name,
            format!(
                "does not match its SHA-256 and size in manifest.json ({bytes} bytes, manifest \
                 says {}): the file was changed or truncated after the export was written",
                listed.bytes
            ),
        ));
    }
    Ok(())
}

fn check_count(name: &str, what: &str, found: u64, listed: u64) -> Result<(), Refused> {
    if found != listed {
        return Err(refused(
            name,
            format!("holds {found} {what}; manifest.json says {listed}"),
        ));
    }
    Ok(())
}

fn read_tenant_keys(
    dir: &Path,
    manifest: &Manifest,
    tenant: &TenantId,
) -> Result<Vec<TenantKey>, Refused> {
    let (file, _) = open_listed(dir, TENANT_KEYS)?;
    let bytes =
        read_bounded(file, MAX_TENANT_KEYS).map_err(|e| refused(TENANT_KEYS, e.to_string()))?;
    check_digest(
        manifest,
        TENANT_KEYS,
        digest::digest(&digest::SHA256, &bytes),
        bytes.len() as u64,
    )?;
    let body: TenantKeysFile = serde_json::from_slice(&bytes)
        .map_err(|e| refused(TENANT_KEYS, format!("is not valid: {e}")))?;
    if body.tenant != tenant.as_str() {
        return Err(refused(
            TENANT_KEYS,
            format!(
                "is of tenant {:?}; manifest.json is of tenant {tenant}",
                body.tenant
            ),
        ));
    }
    check_count(
        TENANT_KEYS,
        "tenant keys",
        body.tenant_keys.len() as u64,
        manifest.counts.tenant_keys,
    )?;
    let mut keys: Vec<TenantKey> = Vec::with_capacity(body.tenant_keys.len());
    for entry in body.tenant_keys {
        let key = tenant_key_of(&entry, tenant).map_err(|problem| {
            refused(TENANT_KEYS, format!("tenant key {:?}: {problem}", entry.id))
        })?;
        if keys.iter().any(|k| k.id == key.id) {
            return Err(refused(
                TENANT_KEYS,
                format!("tenant key {} is listed twice", key.id),
            ));
        }
        keys.push(key);
    }
    Ok(keys)
}

fn tenant_key_of(entry: &format::TenantKeyEntry, tenant: &TenantId) -> Result<TenantKey, String> {
    let id = format::key_id(&entry.id, "id")?;
    let provider: ProviderKind = entry.provider.parse().map_err(|e| format!("{e}"))?;
    if entry.key_ref.is_empty() {
        return Err("key_ref is empty".to_owned());
    }
    if !BINDING_STATES.contains(&entry.binding_state.as_str()) {
        return Err(format!(
            "binding_state {:?} is not one of {BINDING_STATES:?}",
            entry.binding_state
        ));
    }
    let context = tenant_key_context(tenant, &id);
    if entry.wrap_context != context.pairs() {
        return Err(
            "wrap_context is not this tenant key's (keyward:tenant, keyward:tenant-key-id, \
             keyward:purpose = tenant-key)"
                .to_owned(),
        );
    }
    if entry.wrap_aad != b64(&context.aad()) {
        return Err("wrap_aad is not the canonical encoding of wrap_context".to_owned());
    }
    let wrapped = format::unb64(&entry.wrapped, "wrapped")?;
    if wrapped.is_empty() {
        return Err("wrapped is empty".to_owned());
    }
    Ok(TenantKey {
        id,
        provider,
        key_ref: entry.key_ref.clone(),
        binding_id: entry.binding_id,
        binding_state: entry.binding_state.clone(),
        wrapped,
    })
}

fn data_key_of(
    entry: &DataKeyEntry,
    tenant: &TenantId,
    known: &HashSet<KeyId>,
) -> Result<DataKey, String> {
    let id = format::key_id(&entry.id, "id")?;
    let tenant_key_id = format::key_id(&entry.tenant_key_id, "tenant_key_id")?;
    if !known.contains(&tenant_key_id) {
        return Err(format!(
            "data key {id} is wrapped under tenant key {tenant_key_id}, which tenant_keys.json \
             does not have"
        ));
    }
    if entry.scope.is_empty()
        || entry.scope.len() > MAX_SCOPE
        || entry.scope.chars().any(char::is_control)
    {
        return Err(format!(
            "data key {id}: scope is not 1 to {MAX_SCOPE} bytes without control characters"
        ));
    }
    let aad = dek_wrap_aad(tenant, &entry.scope, &id).map_err(|e| format!("data key {id}: {e}"))?;
    if entry.wrap_aad != b64(&aad) {
        return Err(format!(
            "data key {id}: wrap_aad is not the AAD of its tenant, scope and id"
        ));
    }
    let wrapped = format::unb64(&entry.wrapped, "wrapped")?;
    if wrapped.len() != WRAPPED_KEY_LEN || wrapped[0] != WRAPPED_KEY_FORMAT {
        return Err(format!(
            "data key {id}: wrapped is not a {WRAPPED_KEY_LEN}-byte wrapped key of format \
             {WRAPPED_KEY_FORMAT:#04x}"
        ));
    }
    Ok(DataKey {
        id,
        tenant_key_id,
        scope: entry.scope.clone(),
        aad,
        wrapped,
    })
}

/// Streams the JSON Lines file `name`: hashes every byte, parses each line as `T` and hands it
/// to `each`, counts the lines. The digest is checked first: a parse error in a file that does
/// not match its digest is reported as the changed file it is. Returns the number of lines.
fn read_lines<T: DeserializeOwned>(
    dir: &Path,
    manifest: &Manifest,
    name: &str,
    mut each: impl FnMut(T) -> Result<(), String>,
) -> Result<u64, Refused> {
    let (file, _) = open_listed(dir, name)?;
    let mut reader = BufReader::new(file);
    let mut sha256 = digest::Context::new(&digest::SHA256);
    let mut bytes = 0u64;
    let mut lines = 0u64;
    let mut first_problem: Option<String> = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| refused(name, format!("cannot be read: {e}")))?;
        if n == 0 {
            break;
        }
        sha256.update(&line);
        bytes += n as u64;
        lines += 1;
        if first_problem.is_some() {
            continue;
        }
        if line.last() != Some(&b'\n') {
            if line.len() > MAX_LINE {
                first_problem = Some(format!("line {lines} is longer than {MAX_LINE} bytes"));
                // Hash the rest of the over-long line without keeping it.
                skip_to_newline(&mut reader, &mut sha256, &mut bytes)
                    .map_err(|e| refused(name, format!("cannot be read: {e}")))?;
            } else {
                first_problem = Some(format!("line {lines} does not end with a newline"));
            }
            continue;
        }
        let parsed = serde_json::from_slice::<T>(&line[..line.len() - 1])
            .map_err(|e| e.to_string())
            .and_then(&mut each);
        if let Err(problem) = parsed {
            first_problem = Some(format!("line {lines}: {problem}"));
        }
    }
    check_digest(manifest, name, sha256.finish(), bytes)?;
    match first_problem {
        Some(problem) => Err(refused(name, problem)),
        None => Ok(lines),
    }
}

fn skip_to_newline(
    reader: &mut impl BufRead,
    sha256: &mut digest::Context,
    bytes: &mut u64,
) -> std::io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (buf.len(), false),
        };
        sha256.update(&buf[..take]);
        *bytes += take as u64;
        reader.consume(take);
        if done {
            return Ok(());
        }
    }
}
