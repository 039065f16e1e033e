//! The `keyward` command's exit codes through the real binary (docs/errors.md, "Exit codes of
//! the `keyward` command"): a verification failure, a usage error, a refused request, an
//! unreachable server and a local error are told apart by the code alone.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod support;

use support::Server;

#[test]
fn each_kind_of_failure_has_its_own_exit_code() {
    let server = Server::start(&[]);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(server.onboard("acme"));
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("audit.jsonl");
    let export = export.to_str().unwrap();

    // 0: success.
    let (code, _, err) = server.cli_code(&["audit", "export", "--output", export], b"");
    assert_eq!(code, Some(0), "{err}");
    let (code, key, err) = server.cli_code(&["audit", "public-key"], b"");
    assert_eq!(code, Some(0), "{err}");
    let key = String::from_utf8(key).unwrap().trim().to_owned();
    let (code, _, err) = server.cli_code(&["audit", "verify", export, "--public-key", &key], b"");
    assert_eq!(code, Some(0), "{err}");

    // 1: the verification found problems.
    let text = std::fs::read_to_string(export).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(2);
    let cut = dir.path().join("cut.jsonl");
    std::fs::write(&cut, lines.join("\n") + "\n").unwrap();
    let cut = cut.to_str().unwrap();
    let (code, _, err) = server.cli_code(&["audit", "verify", cut, "--public-key", &key], b"");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("verification FAILED"), "{err}");

    // 2: usage errors, found by the argument parser.
    let (code, _, err) = server.cli_code(&["audit", "verify", export], b"");
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = server.cli_code(
        &["audit", "verify", export, "--public-key", "not-a-key"],
        b"",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("keyward-audit-ed25519:"), "{err}");

    // 3: the server refused the request (NOT_FOUND, with its reason).
    let (code, _, err) = server.cli_code(&["tenant", "show", "nosuch"], b"");
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("TENANT_NOT_FOUND"), "{err}");

    // 4: nothing listens at the endpoint.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let endpoint = format!("http://{closed}");
    let (code, _, err) = server.cli_code(&["--endpoint", &endpoint, "tenant", "show", "acme"], b"");
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("cannot connect to keyward at"), "{err}");

    // 5: local errors: a file that cannot be read, a tenant no record names.
    let missing = dir.path().join("missing.jsonl");
    let (code, _, err) = server.cli_code(
        &[
            "audit",
            "verify",
            missing.to_str().unwrap(),
            "--public-key",
            &key,
        ],
        b"",
    );
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("cannot read"), "{err}");
    let (code, _, err) = server.cli_code(&["audit", "report", "--tenant", "nosuch"], b"");
    assert_eq!(code, Some(5), "{err}");
}
