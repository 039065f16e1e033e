//! `keyward audit export` on PostgreSQL while two replicas keep appending to the one audit
//! chain (issue #27 item 15). Each export, taken mid-load from either replica, must verify
//! offline (`keyward audit verify`) and be a consistent prefix of the chain: its header's
//! range, every seq from 1 to its last exactly once and in order, and each record the very
//! record (same hash) that the chain holds at that seq afterwards — nothing missing, nothing
//! duplicated, nothing from after the head it announced.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "tests: a failure must abort with a message; measured figures are printed"
)]

mod support;

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use keyward_proto::v1 as pb;
use support::{Server, context, pg::Deployment, test_db::TestDb};

/// One export, parsed: the header's range and the records' (seq, hash) in file order.
struct Export {
    first_seq: u64,
    last_seq: u64,
    records: Vec<(u64, String)>,
}

fn parse_export(path: &Path) -> Export {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["type"], "keyward-audit-export", "{header}");
    let mut records = Vec::new();
    for line in lines {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        if line["type"] == "record" {
            records.push((
                line["seq"].as_u64().unwrap(),
                line["hash"].as_str().unwrap().to_owned(),
            ));
        }
    }
    Export {
        first_seq: header["first_seq"].as_u64().unwrap(),
        last_seq: header["last_seq"].as_u64().unwrap(),
        records,
    }
}

/// The chain as the database holds it: seq → hash.
async fn chain(db: &TestDb) -> BTreeMap<u64, String> {
    let mut conn = db.raw().await;
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT seq, hash FROM audit_records")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    rows.into_iter()
        .map(|(seq, hash)| (u64::try_from(seq).unwrap(), hash))
        .collect()
}

async fn head(db: &TestDb) -> u64 {
    let mut conn = db.raw().await;
    let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM audit_records")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    u64::try_from(seq.unwrap_or(0)).unwrap()
}

/// Exports with the CLI from `server` into `path` and verifies it offline with `public_key`.
fn export_and_verify(server: &Server, path: &Path, public_key: &str) {
    let path = path.to_str().unwrap();
    let (ok, _, err) = server.cli(&["audit", "export", "--output", path], b"");
    assert!(ok, "audit export: {err}");
    let (ok, _, err) = server.cli(&["audit", "verify", path, "--public-key", public_key], b"");
    assert!(ok, "audit verify of an export taken under load: {err}");
}

/// Audited writes until `stop`: a new DEK per message (`dek_created`), and every tenth round
/// a revocation and a restoration. Returns how many rounds ran.
async fn writer(server: &Server, tenant: String, stop: Arc<AtomicBool>) -> u64 {
    let mut crypto = server.crypto().await;
    let mut tenants = server.tenants().await;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        crypto
            .encrypt(pb::EncryptRequest {
                tenant_id: tenant.clone(),
                plaintext: b"audited".to_vec(),
                encryption_context: context(&[]),
                scope: format!("scope-{n}"),
                justification: None,
            })
            .await
            .unwrap();
        if n % 10 == 9 {
            tenants
                .revoke_key(pb::RevokeKeyRequest {
                    tenant_id: tenant.clone(),
                    reason: "export test".into(),
                    requested_by: "auditor-test".into(),
                })
                .await
                .unwrap();
            tenants
                .restore_key(pb::RestoreKeyRequest {
                    tenant_id: tenant.clone(),
                    reason: "export test".into(),
                    requested_by: "auditor-test".into(),
                    binding_id: 0,
                })
                .await
                .unwrap();
        }
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_taken_during_concurrent_writes_verifies_and_is_a_consistent_prefix() {
    let db = TestDb::create().await;
    let mut deployment = Deployment::new();
    // Checkpoints every second: exports then carry stored checkpoints as well as the final one.
    let env = [("KEYWARD_AUDIT__CHECKPOINT_INTERVAL_SECONDS", "1")];
    let a = Arc::new(deployment.start(&db.url, "a", &env));
    let b = Arc::new(deployment.start(&db.url, "b", &env));
    for tenant in ["acme", "globex", "initech", "umbrella"] {
        a.onboard(tenant).await;
    }
    let (ok, key, err) = a.cli(&["audit", "public-key"], b"");
    assert!(ok, "{err}");
    let public_key = String::from_utf8(key).unwrap().trim().to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = [
        (&a, "acme"),
        (&a, "globex"),
        (&b, "initech"),
        (&b, "umbrella"),
    ]
    .into_iter()
    .map(|(server, tenant)| {
        let (server, stop) = (Arc::clone(server), Arc::clone(&stop));
        tokio::spawn(async move { writer(&server, tenant.to_owned(), stop).await })
    })
    .collect();

    // Exports from both replicas while the writers run; the chain grows during each.
    let dir = tempfile::tempdir().unwrap();
    let mut exports = Vec::new();
    let started = Instant::now();
    for i in 0..8 {
        let before = head(&db).await;
        let server = if i % 2 == 0 { &a } else { &b };
        let path = dir.path().join(format!("export-{i}.jsonl"));
        tokio::task::block_in_place(|| export_and_verify(server, &path, &public_key));
        let after = head(&db).await;
        let export = parse_export(&path);
        assert!(
            after > before,
            "no audit record was appended while export {i} ran: the test did not test concurrency"
        );
        println!(
            "export {i}: records 1..={} while the chain grew {before} -> {after}",
            export.last_seq
        );
        exports.push(export);
    }
    stop.store(true, Ordering::Relaxed);
    let mut rounds = 0;
    for w in writers {
        rounds += w.await.unwrap();
    }
    println!(
        "{rounds} write rounds in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let chain = chain(&db).await;
    // The chain itself has no gap (seq 1..=head).
    assert!(
        chain.keys().copied().eq(1..=chain.len() as u64),
        "the stored chain has a gap"
    );
    let mut previous_last = 0;
    for (i, export) in exports.iter().enumerate() {
        assert_eq!(export.first_seq, 1, "export {i}");
        let seqs: Vec<u64> = export.records.iter().map(|(seq, _)| *seq).collect();
        assert!(
            seqs.iter().copied().eq(1..=export.last_seq),
            "export {i}: records are not exactly 1..={} in order (gap, duplicate or a record past the announced head)",
            export.last_seq
        );
        for (seq, hash) in &export.records {
            assert_eq!(
                chain.get(seq),
                Some(hash),
                "export {i}: record {seq} is not the chain's record {seq}"
            );
        }
        assert!(
            export.last_seq >= previous_last,
            "export {i} ends before an earlier export"
        );
        previous_last = export.last_seq;
    }
    drop((a, b));
    db.finish().await;
}
