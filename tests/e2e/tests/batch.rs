//! `EncryptBatch` / `DecryptBatch` through the real binary: per-item results in request order,
//! per-item context and scope, bounded batch size, and each item's error exactly what the
//! single call would have returned.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod support;

use keyward_proto::v1::{
    self as pb, decrypt_batch_result::Result as DecResult,
    encrypt_batch_result::Result as EncResult,
};
use keyward_store::sqlite::SqliteStore;
use support::{Server, assert_status, context, domain_state};
use tonic::Code;

fn item(plaintext: &[u8], ctx: &[(&str, &str)], scope: &str) -> pb::EncryptBatchItem {
    pb::EncryptBatchItem {
        plaintext: plaintext.to_vec(),
        encryption_context: context(ctx),
        scope: scope.into(),
    }
}

#[tokio::test]
async fn batches_have_per_item_results_contexts_and_errors() {
    let server = Server::start(&[("KEYWARD_MAX_PLAINTEXT_BYTES", "4096")]);
    server.onboard("acme").await;
    let mut crypto = server.crypto().await;

    let results = crypto
        .encrypt_batch(pb::EncryptBatchRequest {
            tenant_id: "acme".into(),
            items: vec![
                item(b"first", &[("conversation", "c-1")], ""),
                item(b"second", &[("conversation", "c-2")], "user-7"),
                item(b"bad context", &[("keyward:reserved", "x")], ""),
                item(&[0u8; 4097], &[], ""),
                item(b"bad scope", &[], "\u{7}"),
                item(b"", &[], ""),
            ],
            justification: None,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 6);
    let ok = |i: usize| match &results[i].result {
        Some(EncResult::Ok(ok)) => ok.clone(),
        other => panic!("item {i}: {other:?}"),
    };
    let err = |i: usize| match &results[i].result {
        Some(EncResult::Error(e)) => e.clone(),
        other => panic!("item {i}: {other:?}"),
    };
    let (first, second, empty) = (ok(0), ok(1), ok(5));
    assert_ne!(first.dek_id, second.dek_id, "two scopes, two DEKs");
    assert_eq!(
        (err(2).code, err(2).reason.as_str()),
        (Code::InvalidArgument as i32, "INVALID_ARGUMENT")
    );
    assert!(
        err(2).message.contains("encryption_context"),
        "{:?}",
        err(2)
    );
    assert_eq!(err(3).reason, "PAYLOAD_TOO_LARGE");
    assert!(err(4).message.contains("scope"), "{:?}", err(4));

    // Decrypt: each item with its own context; a wrong context fails only its item.
    let results = crypto
        .decrypt_batch(pb::DecryptBatchRequest {
            tenant_id: "acme".into(),
            items: vec![
                pb::DecryptBatchItem {
                    envelope: second.envelope.clone(),
                    encryption_context: context(&[("conversation", "c-2")]),
                },
                pb::DecryptBatchItem {
                    envelope: first.envelope.clone(),
                    encryption_context: context(&[("conversation", "c-2")]),
                },
                pb::DecryptBatchItem {
                    envelope: first.envelope.clone(),
                    encryption_context: context(&[("conversation", "c-1")]),
                },
                pb::DecryptBatchItem {
                    envelope: b"not an envelope".to_vec(),
                    encryption_context: Default::default(),
                },
                pb::DecryptBatchItem {
                    envelope: empty.envelope.clone(),
                    encryption_context: Default::default(),
                },
            ],
            justification: None,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let plaintexts: Vec<Result<Vec<u8>, String>> = results
        .into_iter()
        .map(|r| match r.result {
            Some(DecResult::Ok(ok)) => Ok(ok.plaintext),
            Some(DecResult::Error(e)) => Err(e.reason),
            None => panic!("empty result"),
        })
        .collect();
    assert_eq!(
        plaintexts,
        vec![
            Ok(b"second".to_vec()),
            Err("DECRYPT_FAILED".to_owned()),
            Ok(b"first".to_vec()),
            Err("MALFORMED_ENVELOPE".to_owned()),
            Ok(Vec::new()),
        ]
    );

    // The same envelope through the single call agrees with the batch.
    let single = crypto
        .decrypt(pb::DecryptRequest {
            tenant_id: "acme".into(),
            envelope: first.envelope.clone(),
            encryption_context: context(&[("conversation", "c-1")]),
            justification: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(single.plaintext, b"first");
}

#[tokio::test]
async fn a_bad_batch_as_a_whole_is_rejected_and_changes_nothing() {
    let server = Server::start(&[]);
    server.onboard("acme").await;
    let mut crypto = server.crypto().await;
    let store = SqliteStore::open_read_only(&server.database())
        .await
        .unwrap();
    let before = domain_state(&store).await;

    assert_status(
        crypto
            .encrypt_batch(pb::EncryptBatchRequest {
                tenant_id: "acme".into(),
                items: vec![],
                justification: None,
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_status(
        crypto
            .encrypt_batch(pb::EncryptBatchRequest {
                tenant_id: "acme".into(),
                items: (0..1001).map(|_| item(b"x", &[], "")).collect(),
                justification: None,
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_status(
        crypto
            .decrypt_batch(pb::DecryptBatchRequest {
                tenant_id: "Not A Tenant".into(),
                items: vec![pb::DecryptBatchItem::default()],
                justification: None,
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    // A tenant that does not exist: every item fails alike, nothing is created.
    let results = crypto
        .encrypt_batch(pb::EncryptBatchRequest {
            tenant_id: "nobody".into(),
            items: vec![item(b"x", &[], ""), item(b"y", &[], "s")],
            justification: None,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    for r in results {
        match r.result {
            Some(EncResult::Error(e)) => assert_eq!(e.reason, "TENANT_NOT_FOUND"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(before, domain_state(&store).await);
}
