//! The SIEM feed (`[audit.siem]`, src/siem.rs) against a real SQLite store: records appear in
//! order as export lines, the file rotates by size, and a restart (after a partial line, or
//! right after a rotation) resumes without a gap.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_audit::AuditEvent;
use keyward_server::siem::{FeedFile, SharedFeed, SiemPolicy, catch_up, run};
use keyward_store::Store;
use keyward_store::sqlite::SqliteStore;
use serde_json::Value;

fn rotated(path: &Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.{n}", path.display()))
}

async fn store(dir: &Path) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(&dir.join("keyward.db")).await.unwrap())
}

async fn append(store: &dyn Store, n: usize, detail_len: usize) {
    let events = (0..n)
        .map(|i| AuditEvent::AdminAction {
            actor: "ops".into(),
            action: format!("test-{i}"),
            detail: "x".repeat(detail_len),
        })
        .collect();
    store.append_audit(events).await.unwrap();
}

fn policy(dir: &Path, max_bytes: u64, files_kept: u32) -> SiemPolicy {
    SiemPolicy::new(
        dir.join("feed.jsonl"),
        max_bytes,
        files_kept,
        Duration::from_millis(10),
    )
}

fn open(policy: &SiemPolicy) -> SharedFeed {
    Arc::new(Mutex::new(FeedFile::open(policy.clone()).unwrap()))
}

/// Every pass until the feed has caught up.
async fn drain(store: &dyn Store, feed: &SharedFeed) -> usize {
    let mut total = 0;
    loop {
        let n = catch_up(store, feed).await.unwrap();
        total += n;
        if n == 0 {
            return total;
        }
    }
}

/// The seqs of a file's lines, each checked to be a record's export line.
fn seqs(path: &Path) -> Vec<u64> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let record = keyward_audit::Record::from_canonical_json(line).unwrap();
            assert!(record.verify_hash());
            record.seq()
        })
        .collect()
}

/// All seqs of the feed, oldest file first.
fn all_seqs(policy: &SiemPolicy) -> Vec<u64> {
    let path = policy.path.clone();
    let mut out = Vec::new();
    for n in (1..=2).rev() {
        out.extend(seqs(&rotated(&path, n)));
    }
    out.extend(seqs(&path));
    out
}

#[tokio::test]
async fn records_appear_in_order_as_export_lines() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let policy = policy(dir.path(), 1 << 20, 2);
    let feed = open(&policy);
    append(&*store, 5, 10).await;
    assert_eq!(drain(&*store, &feed).await, 5);
    append(&*store, 1200, 10).await;
    // More than a page: two passes.
    assert_eq!(drain(&*store, &feed).await, 1200);
    assert_eq!(seqs(&policy.path), (1..=1205).collect::<Vec<_>>());
    // The lines are the export's: type, hash and prev_hash linking each to the one before.
    let text = fs::read_to_string(&policy.path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "record");
    for pair in lines.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }
}

#[tokio::test]
async fn the_file_is_rotated_by_size_and_old_files_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let policy = policy(dir.path(), 4096, 2);
    let feed = open(&policy);
    // Lines of ~1.2 KiB: three per file.
    append(&*store, 20, 1000).await;
    drain(&*store, &feed).await;
    for path in [
        policy.path.clone(),
        rotated(&policy.path, 1),
        rotated(&policy.path, 2),
    ] {
        let size = fs::metadata(&path).unwrap().len();
        assert!(size > 0 && size <= 4096, "{}: {size}", path.display());
    }
    assert!(
        !rotated(&policy.path, 3).exists(),
        "only 2 rotated files are kept"
    );
    // The three files hold the newest records, contiguous, ending at the last.
    let kept = all_seqs(&policy);
    assert_eq!(*kept.last().unwrap(), 20);
    assert_eq!(kept, (kept[0]..=20).collect::<Vec<_>>());
    assert!(kept.len() >= 6, "{kept:?}");
}

#[tokio::test]
async fn a_restart_resumes_after_the_last_line_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let policy = policy(dir.path(), 1 << 20, 2);
    let feed = open(&policy);
    append(&*store, 10, 10).await;
    drain(&*store, &feed).await;
    drop(feed);
    // A crash mid-write: half a line at the end.
    let partial = {
        let text = fs::read_to_string(&policy.path).unwrap();
        let last = text.lines().last().unwrap().to_owned();
        last[..last.len() / 2].to_owned()
    };
    let mut f = OpenOptions::new().append(true).open(&policy.path).unwrap();
    f.write_all(partial.as_bytes()).unwrap();
    drop(f);
    append(&*store, 7, 10).await;
    let feed = open(&policy);
    assert_eq!(feed.lock().unwrap().last_seq(), 10);
    assert_eq!(drain(&*store, &feed).await, 7);
    assert_eq!(seqs(&policy.path), (1..=17).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_restart_right_after_a_rotation_resumes_from_the_rotated_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let policy = policy(dir.path(), 1 << 20, 2);
    let feed = open(&policy);
    append(&*store, 4, 10).await;
    drain(&*store, &feed).await;
    drop(feed);
    // The crash came between the rename and the first line of the new file.
    fs::rename(&policy.path, rotated(&policy.path, 1)).unwrap();
    append(&*store, 3, 10).await;
    let feed = open(&policy);
    assert_eq!(feed.lock().unwrap().last_seq(), 4);
    drain(&*store, &feed).await;
    assert_eq!(all_seqs(&policy), (1..=7).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_file_that_is_not_the_feed_s_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy(dir.path(), 1 << 20, 2);
    fs::write(&policy.path, "hello\n").unwrap();
    let err = FeedFile::open(policy.clone()).unwrap_err();
    assert!(
        err.to_string().contains("not an audit record line"),
        "{err}"
    );
}

#[tokio::test]
async fn the_task_follows_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let policy = policy(dir.path(), 1 << 20, 2);
    let task = tokio::spawn(run(Arc::clone(&store), policy.clone()));
    append(&*store, 3, 10).await;
    // Polled every 10 ms: wait (bounded) for the three lines.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seqs(&policy.path).len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed did not follow"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    assert_eq!(seqs(&policy.path), [1, 2, 3]);
}
