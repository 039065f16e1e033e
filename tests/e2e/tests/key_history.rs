//! The tenant's key history through the real binary (issue #21 item 5): `ListKeyBindings` and
//! `keyward tenant keys` after rotations count each binding's own DEKs and scopes, name who
//! bound it, and say which older keys still protect data; an unknown tenant and a bad tenant
//! id are refused.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod support;

use keyward_proto::v1 as pb;
use support::{Server, assert_status, local_key};
use tonic::Code;

async fn encrypt(server: &Server, scope: &str, messages: usize) {
    let mut crypto = server.crypto().await;
    for _ in 0..messages {
        crypto
            .encrypt(pb::EncryptRequest {
                tenant_id: "acme".into(),
                plaintext: b"a prompt".to_vec(),
                encryption_context: Default::default(),
                scope: scope.into(),
                justification: None,
            })
            .await
            .unwrap();
    }
}

fn cli_ok(server: &Server, args: &[&str]) -> String {
    let (ok, out, err) = server.cli(args, b"");
    assert!(ok, "{args:?}: {err}");
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_keys_counts_each_bindings_data_after_rotations() {
    // Two messages per DEK: a third message in a scope makes its second DEK.
    let server = Server::start(&[("KEYWARD_ROTATION__MAX_MESSAGES", "2")]);
    let kms_dir = server.local_kms_dir();
    for key in ["k2", "k3", "k4"] {
        cli_ok(
            &server,
            &[
                "key",
                "create",
                key,
                "--local-kms-dir",
                kms_dir.to_str().unwrap(),
            ],
        );
    }
    cli_ok(&server, &["tenant", "create", "acme"]);
    let none = cli_ok(&server, &["tenant", "keys", "acme"]);
    assert_eq!(
        none,
        "tenant acme has no key binding yet: run `keyward tenant register-key`\n"
    );

    // Binding 1 ("default"): 2 DEKs in s1, 1 in s2.
    cli_ok(
        &server,
        &["tenant", "register-key", "acme", "--local-key", "default"],
    );
    encrypt(&server, "s1", 3).await;
    encrypt(&server, "s2", 1).await;
    // Binding 2 ("k2"): one DEK in s1 (the scope moves to the new key; its old DEKs stay
    // under binding 1) and one in s3.
    cli_ok(
        &server,
        &["tenant", "register-key", "acme", "--local-key", "k2"],
    );
    encrypt(&server, "s1", 1).await;
    encrypt(&server, "s3", 1).await;
    // Binding 3 ("k3") replaced before any data went under it; binding 4 ("k4") is current.
    cli_ok(
        &server,
        &["tenant", "register-key", "acme", "--local-key", "k3"],
    );
    cli_ok(
        &server,
        &["tenant", "register-key", "acme", "--local-key", "k4"],
    );

    let history = server
        .tenants()
        .await
        .list_key_bindings(pb::ListKeyBindingsRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .bindings;
    let counts: Vec<(String, u64, u64, u64, bool)> = history
        .iter()
        .map(|u| {
            let b = u.binding.clone().unwrap();
            (
                b.key_ref,
                u.deks,
                u.scopes,
                u.deks_shredded,
                u.replaced_at.is_some(),
            )
        })
        .collect();
    let line = |key: &str, deks, scopes, replaced| (key.to_owned(), deks, scopes, 0, replaced);
    assert_eq!(
        counts,
        [
            line("default", 3, 2, true),
            line("k2", 2, 2, true),
            line("k3", 0, 0, true),
            line("k4", 0, 0, false),
        ]
    );
    // Who bound each one: the caller RegisterKey authenticated (development mode's principal),
    // read back from the signed record of the binding.
    let bound_by = &history[0].bound_by;
    assert!(!bound_by.is_empty());
    assert!(history.iter().all(|u| &u.bound_by == bound_by));
    // Oldest first, each replaced when the next one was bound.
    for pair in history.windows(2) {
        let next = pair[1].binding.as_ref().unwrap().bound_at.unwrap();
        assert_eq!(pair[0].replaced_at.unwrap(), next);
    }

    let text = cli_ok(&server, &["tenant", "keys", "acme"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "tenant acme: 4 key bindings, oldest first");
    assert!(lines[1].starts_with("BINDING  PROVIDER  KEY"), "{text}");
    for (row, (key, deks, scopes)) in
        lines[2..6]
            .iter()
            .zip([("default", 3, 2), ("k2", 2, 2), ("k3", 0, 0), ("k4", 0, 0)])
    {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1..4], ["local", key, "active"], "{row}");
        // bound, replaced ("-" for the current one), DEKs, scopes, shredded, bound by.
        assert_eq!(cells[5] == "-", key == "k4", "{row}");
        let counts = [deks.to_string(), scopes.to_string(), "0".into()];
        assert_eq!(cells[6..9], counts, "{row}");
        assert!(row.ends_with(bound_by.as_str()), "{row}");
    }
    assert_eq!(
        lines[6..],
        [
            "binding 1 (default) still wraps 3 DEKs in 2 scopes: do not disable it (or first move them to the current key: keyward tenant rekey acme)",
            "binding 2 (k2) still wraps 2 DEKs in 2 scopes: do not disable it (or first move them to the current key: keyward tenant rekey acme)",
            "no data depends on binding 3 (k3): its KMS key may be disabled",
            "binding 4 (k4) is the current key: new data goes under it",
        ]
    );

    let json = cli_ok(&server, &["tenant", "keys", "acme", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let bindings = json["bindings"].as_array().unwrap();
    assert_eq!(bindings.len(), 4);
    assert_eq!(bindings[0]["deks"], 3);
    assert_eq!(bindings[0]["scopes"], 2);
    assert_eq!(bindings[0]["verdict"], "still_wraps_data");
    assert_eq!(bindings[0]["bound_by"], bound_by.as_str());
    assert_eq!(bindings[2]["verdict"], "key_may_be_disabled");
    assert_eq!(bindings[3]["replaced_at"], serde_json::Value::Null);
    assert_eq!(bindings[3]["verdict"], "current");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_tenant_and_a_bad_tenant_id_are_refused() {
    let server = Server::start(&[]);
    let mut tenants = server.tenants().await;
    assert_status(
        tenants
            .list_key_bindings(pb::ListKeyBindingsRequest {
                tenant_id: "nobody".into(),
            })
            .await,
        Code::NotFound,
        "TENANT_NOT_FOUND",
    );
    assert_status(
        tenants
            .list_key_bindings(pb::ListKeyBindingsRequest {
                tenant_id: "Bad Tenant!".into(),
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    // The CLI: the server refused (exit 3), with the reason.
    let (code, out, err) = server.cli_code(&["tenant", "keys", "nobody"], b"");
    assert_eq!(code, Some(3), "{err}");
    assert!(out.is_empty());
    assert!(err.contains("TENANT_NOT_FOUND"), "{err}");
    let (code, _, err) = server.cli_code(&["tenant", "keys", "Bad Tenant!", "--json"], b"");
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("INVALID_ARGUMENT"), "{err}");

    // A tenant created by another caller: the history of a tenant with one binding.
    support::create_tenant(&mut tenants, "acme").await;
    tenants
        .register_key(local_key("acme", "default"))
        .await
        .unwrap();
    let history = tenants
        .list_key_bindings(pb::ListKeyBindingsRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .bindings;
    assert_eq!(history.len(), 1);
    assert_eq!((history[0].deks, history[0].scopes), (0, 0));
    assert!(history[0].replaced_at.is_none());
}
