//! The SIEM feed (`[audit.siem]`, docs/observability.md "SIEM feed"): committed audit records,
//! streamed to a JSON Lines file as they commit, rotated by size, for a SIEM agent to tail.
//!
//! Each line is the record's export line (`docs/audit-format.md` §6: `seq`, `time_ms`,
//! `prev_hash`, `hash`, the event), so a SIEM sees a gap as a jump in `seq` and can check the
//! chain links itself. Delivery is at least once: a task polls the store for records after the
//! last seq written (so it also carries records other replicas commit, and a record written in
//! any transaction), appends them and syncs the file; after a crash the feed reads its last
//! complete line back from the file's tail (a partial last line is cut off) and goes on from
//! that seq. A record may therefore be written twice (never, in practice, since the tail is
//! read back) but is never skipped.
//!
//! Why polling and not a hook in the store's transactions: a hook would run before the commit
//! (and could write a record that then rolls back) or after it (and be lost by a crash between
//! the two); the store is the record of what committed, and its seq order is the commit order
//! (a record's seq is the head's plus one, inserted under a unique key).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_store::{AuditQuery, Store};

/// The resolved `[audit.siem]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SiemPolicy {
    /// The file written; rotated files are `<path>.1` (the newest) to `<path>.<files_kept>`.
    pub path: PathBuf,
    /// The file is rotated before a line would take it past this size (a single longer line
    /// still goes into a file of its own).
    pub max_bytes: u64,
    /// Rotated files kept; 0 keeps none (the feed's reader must keep up).
    pub files_kept: u32,
    /// How often the store is asked for new records when the feed has caught up.
    pub poll_interval: Duration,
}

impl SiemPolicy {
    /// A policy with the given file and bounds.
    pub fn new(path: PathBuf, max_bytes: u64, files_kept: u32, poll_interval: Duration) -> Self {
        SiemPolicy {
            path,
            max_bytes,
            files_kept,
            poll_interval,
        }
    }
}

/// `<path>.<n>`.
fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The feed's file, opened for appending after its last complete line.
#[derive(Debug)]
pub struct FeedFile {
    policy: SiemPolicy,
    file: File,
    size: u64,
    last_seq: u64,
}

impl FeedFile {
    /// Opens (or creates) the feed's file: a partial last line (a crash mid-write) is cut off,
    /// and the feed resumes after the seq of the last complete line, of this file or, when it is
    /// empty, of the newest rotated file (a crash right after a rotation); 0 when there is none.
    /// A last line that is not a record line is an error: the file is not this feed's.
    pub fn open(policy: SiemPolicy) -> io::Result<FeedFile> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&policy.path)?;
        let (size, mut last_seq) = repair_tail(&mut file, &policy.path)?;
        if last_seq.is_none() {
            for n in 1..=policy.files_kept.max(1) {
                match File::open(rotated(&policy.path, n)) {
                    Ok(mut older) => {
                        last_seq = last_line_seq(&mut older, &rotated(&policy.path, n))?;
                        if last_seq.is_some() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(FeedFile {
            policy,
            file,
            size,
            last_seq: last_seq.unwrap_or(0),
        })
    }

    /// The seq of the last record written (0: none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Appends `lines` (each a record's seq and export line), rotating as needed, and syncs.
    pub fn append(&mut self, lines: &[(u64, String)]) -> io::Result<()> {
        for (seq, line) in lines {
            let len = line.len() as u64 + 1;
            if self.size > 0 && self.size + len > self.policy.max_bytes {
                self.rotate()?;
            }
            let mut bytes = Vec::with_capacity(line.len() + 1);
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
            self.file.write_all(&bytes)?;
            self.size += len;
            self.last_seq = *seq;
        }
        self.file.sync_data()
    }

    /// `<path>.<n-1>` → `<path>.<n>` (the oldest is replaced), `<path>` → `<path>.1`, a new empty
    /// `<path>`; each rename is atomic, and the directory is synced so that they survive a crash.
    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_all()?;
        let path = &self.policy.path;
        if self.policy.files_kept == 0 {
            fs::remove_file(path)?;
        } else {
            for n in (1..self.policy.files_kept).rev() {
                match fs::rename(rotated(path, n), rotated(path, n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            fs::rename(path, rotated(path, 1))?;
        }
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        self.size = 0;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    }
}

/// How far back the tail is read at a time.
const CHUNK: u64 = 64 * 1024;

/// The offset just past the last `\n` before `end`, or 0.
fn line_start(file: &mut File, end: u64) -> io::Result<u64> {
    let mut pos = end;
    while pos > 0 {
        let from = pos.saturating_sub(CHUNK);
        let mut buf = vec![0u8; usize::try_from(pos - from).unwrap_or(0)];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut buf)?;
        if let Some(i) = buf.iter().rposition(|b| *b == b'\n') {
            return Ok(from + i as u64 + 1);
        }
        pos = from;
    }
    Ok(0)
}

/// Cuts off a partial last line; returns the size left and the last complete line's seq.
fn repair_tail(file: &mut File, path: &Path) -> io::Result<(u64, Option<u64>)> {
    let len = file.metadata()?.len();
    let complete = line_start(file, len)?;
    if complete < len {
        tracing::warn!(
            path = %path.display(),
            bytes = len - complete,
            "SIEM feed: cutting off a partial last line (the server stopped while writing it)"
        );
        file.set_len(complete)?;
        file.sync_data()?;
    }
    Ok((complete, last_line_seq(file, path)?))
}

/// The seq of the file's last complete line (`None`: the file has no complete line).
fn last_line_seq(file: &mut File, path: &Path) -> io::Result<Option<u64>> {
    let len = file.metadata()?.len();
    let end = line_start(file, len)?;
    if end == 0 {
        return Ok(None);
    }
    let start = line_start(file, end - 1)?;
    let mut buf = vec![0u8; usize::try_from(end - 1 - start).unwrap_or(0)];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut buf)?;
    let seq = serde_json::from_slice::<serde_json::Value>(&buf)
        .ok()
        .filter(|v| v.get("type").and_then(|t| t.as_str()) == Some("record"))
        .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64));
    match seq {
        Some(seq) => Ok(Some(seq)),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the last line of {} is not an audit record line: it is not this feed's file \
                 (move it aside, or point [audit.siem] path elsewhere)",
                path.display()
            ),
        )),
    }
}

/// Why one pass of the feed failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    #[error("reading the audit records: {0}")]
    Store(#[from] keyward_store::StoreError),
    #[error("writing the SIEM feed file: {0}")]
    File(#[from] io::Error),
}

/// The feed file, shared with the blocking task that writes it.
pub type SharedFeed = Arc<Mutex<FeedFile>>;

fn poisoned<T>(_: T) -> io::Error {
    io::Error::other("a write to the feed file panicked: its state is unknown")
}

/// Writes the records committed after the feed's last seq, one page ([`AuditQuery::MAX_LIMIT`])
/// at most, and syncs the file; returns how many. After a [`FeedError::File`] the file's end is
/// unknown: reopen it ([`FeedFile::open`] cuts off a partial line).
pub async fn catch_up(store: &dyn Store, feed: &SharedFeed) -> Result<usize, FeedError> {
    let after = feed.lock().map_err(poisoned)?.last_seq();
    let query = AuditQuery::default()
        .with_after_seq(after)
        .with_limit(AuditQuery::MAX_LIMIT);
    let records = store.audit_records(&query).await?;
    if let Some(first) = records.first()
        && first.seq() != after + 1
    {
        // Records removed from the store (retention) before the feed wrote them: the SIEM sees
        // the jump in seq as well.
        tracing::warn!(
            after,
            next = first.seq(),
            "SIEM feed: the store has no records between these seqs"
        );
    }
    let lines: Vec<(u64, String)> = records
        .iter()
        .map(|r| (r.seq(), r.to_canonical_json()))
        .collect();
    let count = lines.len();
    let feed = Arc::clone(feed);
    tokio::task::spawn_blocking(move || feed.lock().map_err(poisoned)?.append(&lines))
        .await
        .map_err(io::Error::other)??;
    Ok(count)
}

/// The feed's task: opens the file, then writes new records as they commit, polling every
/// `poll_interval` once caught up. A failed pass is logged and retried after `poll_interval`
/// (after a write failure the file is reopened first, which cuts off what the write left).
pub async fn run(store: Arc<dyn Store>, policy: SiemPolicy) {
    let poll = policy.poll_interval;
    let path = policy.path.display().to_string();
    let mut feed: Option<SharedFeed> = None;
    loop {
        let current = match &feed {
            Some(f) => Arc::clone(f),
            None => {
                let p = policy.clone();
                match tokio::task::spawn_blocking(move || FeedFile::open(p)).await {
                    Ok(Ok(f)) => {
                        tracing::info!(%path, after_seq = f.last_seq(), "SIEM feed: writing audit records");
                        let f = Arc::new(Mutex::new(f));
                        feed = Some(Arc::clone(&f));
                        f
                    }
                    Ok(Err(e)) => {
                        tracing::error!(%path, error = %e, "SIEM feed: cannot open the file; retrying");
                        tokio::time::sleep(poll).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(%path, error = %e, "SIEM feed: opening the file failed; retrying");
                        tokio::time::sleep(poll).await;
                        continue;
                    }
                }
            }
        };
        match catch_up(&*store, &current).await {
            Ok(n) if n >= AuditQuery::MAX_LIMIT as usize => {}
            Ok(_) => tokio::time::sleep(poll).await,
            Err(FeedError::Store(e)) => {
                tracing::warn!(error = %e, "SIEM feed: cannot read the audit records; retrying");
                tokio::time::sleep(poll).await;
            }
            Err(e) => {
                tracing::error!(%path, error = %e, "SIEM feed: write failed; reopening the file");
                feed = None;
                tokio::time::sleep(poll).await;
            }
        }
    }
}

// Tests: tests/siem_feed.rs (against a real SQLite store).
