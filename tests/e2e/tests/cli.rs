//! The README quickstart, through the real `keyward` CLI against the real server.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod support;

use support::Server;

#[test]
fn quickstart_through_the_cli() {
    let server = Server::start(&[("KEYWARD_CACHE__TTL_SECONDS", "1")]);
    let kms_dir = server.local_kms_dir();
    let kms_dir = kms_dir.to_str().unwrap();

    let (ok, out, err) = server.cli(&["tenant", "create", "acme", "--name", "Acme Corp"], b"");
    assert!(ok, "{err}");
    assert!(String::from_utf8_lossy(&out).contains("acme"));
    let (ok, out, err) = server.cli(
        &["tenant", "register-key", "acme", "--local-key", "default"],
        b"",
    );
    assert!(ok, "{err}");
    assert!(String::from_utf8_lossy(&out).contains("PROVIDER_KIND_LOCAL"));

    let prompt = b"What is the capital of France?";
    let (ok, envelope, err) = server.cli(
        &[
            "encrypt",
            "--tenant",
            "acme",
            "--context",
            "conversation=42",
        ],
        prompt,
    );
    assert!(ok, "{err}");
    assert_eq!(&envelope[..2], b"KW");
    let (ok, plain, err) = server.cli(
        &[
            "decrypt",
            "--tenant",
            "acme",
            "--context",
            "conversation=42",
        ],
        &envelope,
    );
    assert!(ok, "{err}");
    assert_eq!(plain, prompt);

    // base64 transport works both ways.
    let (ok, b64, err) = server.cli(
        &["encrypt", "--tenant", "acme", "--output", "base64"],
        prompt,
    );
    assert!(ok, "{err}");
    let (ok, plain, err) = server.cli(&["decrypt", "--tenant", "acme", "--input", "base64"], &b64);
    assert!(ok, "{err}");
    assert_eq!(plain, prompt);

    // Wrong context: a clear message with the machine-readable reason.
    let (ok, _, err) = server.cli(
        &[
            "decrypt",
            "--tenant",
            "acme",
            "--context",
            "conversation=43",
        ],
        &envelope,
    );
    assert!(!ok);
    assert!(err.contains("DECRYPT_FAILED"), "{err}");

    // Disable the key; within the TTL decrypt fails with KEY_REFUSED.
    let (ok, _, err) = server.cli(
        &["key", "disable", "default", "--local-kms-dir", kms_dir],
        b"",
    );
    assert!(ok, "{err}");
    let (ok, out, _) = server.cli(&["key", "list", "--local-kms-dir", kms_dir], b"");
    assert!(ok);
    assert!(String::from_utf8_lossy(&out).contains("default\tdisabled"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let err = loop {
        let (ok, _, err) = server.cli(
            &[
                "decrypt",
                "--tenant",
                "acme",
                "--context",
                "conversation=42",
            ],
            &envelope,
        );
        if !ok {
            break err;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "decrypt kept working after the key was disabled"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(err.contains("KEY_REFUSED"), "{err}");
    assert!(err.contains("disabled"), "{err}");

    let (ok, _, err) = server.cli(
        &["key", "enable", "default", "--local-kms-dir", kms_dir],
        b"",
    );
    assert!(ok, "{err}");
    let (ok, plain, err) = server.cli(
        &[
            "decrypt",
            "--tenant",
            "acme",
            "--context",
            "conversation=42",
        ],
        &envelope,
    );
    assert!(ok, "{err}");
    assert_eq!(plain, prompt);

    // Bad usage is explained.
    let (ok, _, err) = server.cli(
        &["encrypt", "--tenant", "acme", "--context", "novalue"],
        b"x",
    );
    assert!(!ok);
    assert!(err.contains("KEY=VALUE"), "{err}");
}
