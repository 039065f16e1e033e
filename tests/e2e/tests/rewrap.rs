//! Rewrap through the real binary (issue #21, item 4): `keyward rewrap` moves an envelope from
//! one scope to another without the plaintext crossing the wire, the new envelope decrypts with
//! the original context; `RewrapBatch` answers per item, a bad item failing alone.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod support;

use keyward_proto::v1::{self as pb, rewrap_batch_result::Result as RewrapResult};
use support::{Server, assert_status, context};
use tonic::Code;

#[test]
fn the_cli_rewraps_an_envelope_into_another_scope() {
    let server = Server::start(&[]);
    let (ok, _, err) = server.cli(&["tenant", "create", "acme", "--name", "Acme Corp"], b"");
    assert!(ok, "{err}");
    let (ok, _, err) = server.cli(
        &["tenant", "register-key", "acme", "--local-key", "default"],
        b"",
    );
    assert!(ok, "{err}");

    let prompt = b"Summarise this conversation";
    let (ok, in_a, err) = server.cli(
        &[
            "encrypt",
            "--tenant",
            "acme",
            "--scope",
            "conv-a",
            "--context",
            "conversation=42",
        ],
        prompt,
    );
    assert!(ok, "{err}");
    let (ok, in_b, err) = server.cli(
        &[
            "rewrap",
            "--tenant",
            "acme",
            "--context",
            "conversation=42",
            "--to-scope",
            "conv-b",
        ],
        &in_a,
    );
    assert!(ok, "{err}");
    assert_eq!(&in_b[..2], b"KW");
    assert_ne!(in_b, in_a);
    let (ok, plain, err) = server.cli(
        &[
            "decrypt",
            "--tenant",
            "acme",
            "--context",
            "conversation=42",
        ],
        &in_b,
    );
    assert!(ok, "{err}");
    assert_eq!(plain, prompt);

    // The new envelope is under conv-b's data key: the one an Encrypt into conv-b uses.
    let (ok, fresh_b, err) = server.cli(
        &["encrypt", "--tenant", "acme", "--scope", "conv-b"],
        b"new",
    );
    assert!(ok, "{err}");
    assert_eq!(dek_id(&in_b), dek_id(&fresh_b));
    assert_ne!(dek_id(&in_b), dek_id(&in_a));

    // base64 both ways, own scope by default.
    let (ok, b64, err) = server.cli(
        &[
            "rewrap",
            "--tenant",
            "acme",
            "--context",
            "conversation=42",
            "--output",
            "base64",
        ],
        &in_b,
    );
    assert!(ok, "{err}");
    let (ok, plain, err) = server.cli(
        &[
            "decrypt",
            "--tenant",
            "acme",
            "--context",
            "conversation=42",
            "--input",
            "base64",
        ],
        &b64,
    );
    assert!(ok, "{err}");
    assert_eq!(plain, prompt);
    let (ok, again, err) = server.cli(
        &[
            "rewrap",
            "--tenant",
            "acme",
            "--context",
            "conversation=42",
            "--input",
            "base64",
        ],
        &b64,
    );
    assert!(ok, "{err}");
    assert_eq!(dek_id(&again), dek_id(&in_b), "conv-b kept");

    // A wrong context is refused as Decrypt refuses it; a bad scope label names the field.
    let (ok, out, err) = server.cli(
        &["rewrap", "--tenant", "acme", "--context", "conversation=43"],
        &in_a,
    );
    assert!(!ok);
    assert!(out.is_empty());
    assert!(err.contains("DECRYPT_FAILED"), "{err}");
    let (ok, _, err) = server.cli(
        &[
            "rewrap",
            "--tenant",
            "acme",
            "--context",
            "conversation=42",
            "--to-scope",
            "bad\u{7}scope",
        ],
        &in_a,
    );
    assert!(!ok);
    assert!(err.contains("target_scope"), "{err}");
}

/// The DEK id in an envelope's header (docs/envelope-format.md), read with the format crate.
fn dek_id(envelope: &[u8]) -> String {
    keyward_envelope::parse(envelope)
        .unwrap()
        .header()
        .dek_id()
        .to_string()
}

#[tokio::test]
async fn a_rewrap_batch_answers_per_item() {
    let server = Server::start(&[]);
    server.onboard("acme").await;
    let mut crypto = server.crypto().await;
    let encrypt = |scope: &str, ctx: &[(&str, &str)], plaintext: &[u8]| pb::EncryptRequest {
        tenant_id: "acme".into(),
        plaintext: plaintext.to_vec(),
        encryption_context: context(ctx),
        scope: scope.into(),
        justification: None,
    };
    let first = crypto
        .encrypt(encrypt("conv-1", &[("conversation", "1")], b"first"))
        .await
        .unwrap()
        .into_inner();
    let second = crypto
        .encrypt(encrypt("conv-2", &[("conversation", "2")], b"second"))
        .await
        .unwrap()
        .into_inner();
    let item = |envelope: &[u8], ctx: &[(&str, &str)], target: &str| pb::RewrapBatchItem {
        envelope: envelope.to_vec(),
        encryption_context: context(ctx),
        target_scope: target.into(),
    };
    let results = crypto
        .rewrap_batch(pb::RewrapBatchRequest {
            tenant_id: "acme".into(),
            items: vec![
                item(&first.envelope, &[("conversation", "1")], "kept"),
                item(&second.envelope, &[("conversation", "1")], "kept"), // wrong context
                item(&second.envelope, &[("conversation", "2")], ""),
            ],
            justification: None,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 3);
    let ok = |i: usize| match &results[i].result {
        Some(RewrapResult::Ok(ok)) => ok.clone(),
        other => panic!("item {i}: {other:?}"),
    };
    match &results[1].result {
        Some(RewrapResult::Error(e)) => {
            assert_eq!(
                (e.code, e.reason.as_str()),
                (Code::InvalidArgument as i32, "DECRYPT_FAILED")
            );
        }
        other => panic!("item 1: {other:?}"),
    }
    let (moved, kept) = (ok(0), ok(2));
    assert_eq!(
        kept.dek_id, second.dek_id,
        "conv-2's DEK is still its active one"
    );
    let kept_fresh = crypto
        .encrypt(encrypt("kept", &[], b"x"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.dek_id, kept_fresh.dek_id, "into kept's active DEK");
    for (envelope, ctx, expected) in [
        (moved.envelope, "1", &b"first"[..]),
        (kept.envelope, "2", b"second"),
    ] {
        let plaintext = crypto
            .decrypt(pb::DecryptRequest {
                tenant_id: "acme".into(),
                envelope,
                encryption_context: context(&[("conversation", ctx)]),
                justification: None,
            })
            .await
            .unwrap()
            .into_inner()
            .plaintext;
        assert_eq!(plaintext, expected);
    }

    // The single call answers what the batch item did.
    assert_status(
        crypto
            .rewrap(pb::RewrapRequest {
                tenant_id: "acme".into(),
                envelope: second.envelope.clone(),
                encryption_context: context(&[("conversation", "1")]),
                target_scope: "kept".into(),
                justification: None,
            })
            .await,
        Code::InvalidArgument,
        "DECRYPT_FAILED",
    );
    // An empty batch is refused whole.
    assert_status(
        crypto
            .rewrap_batch(pb::RewrapBatchRequest {
                tenant_id: "acme".into(),
                items: vec![],
                justification: None,
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
}
