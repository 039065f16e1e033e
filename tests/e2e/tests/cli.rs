//! The README quickstart, through the real `keyward` CLI against the real server.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod support;

use support::Server;

#[test]
fn quickstart_through_the_cli() {
    let server = Server::start(&[
        ("KEYWARD_CACHE__TTL_SECONDS", "1"),
        ("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "1"),
    ]);
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

    // Disable the key; within the TTL (or the monitor's next sweep) decrypt fails.
    let (ok, _, err) = server.cli(
        &["key", "disable", "default", "--local-kms-dir", kms_dir],
        b"",
    );
    assert!(ok, "{err}");
    let disabled = std::time::Instant::now();
    let (ok, out, _) = server.cli(&["key", "list", "--local-kms-dir", kms_dir], b"");
    assert!(ok);
    assert!(String::from_utf8_lossy(&out).contains("default\tdisabled"));
    let (err, _) =
        support::bound::stops_serving_blocking(disabled, server.revocation_bound(), || {
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
            if ok { Ok(()) } else { Err(err) }
        });
    assert!(
        err.contains("KEY_REFUSED") || err.contains("KEY_REVOKED"),
        "{err}"
    );

    // Enabled again: the monitor restores access on its next sweep.
    let (ok, _, err) = server.cli(
        &["key", "enable", "default", "--local-kms-dir", kms_dir],
        b"",
    );
    assert!(ok, "{err}");
    let decrypt = [
        "decrypt",
        "--tenant",
        "acme",
        "--context",
        "conversation=42",
    ];
    let interval = server.monitor_interval.unwrap();
    let plain = support::bound::eventually_blocking(
        std::time::Instant::now(),
        support::bound::monitor(interval),
        || {
            let (ok, plain, err) = server.cli(&decrypt, &envelope);
            if ok { Ok(plain) } else { Err(err) }
        },
    );
    assert_eq!(plain, prompt);

    // Break glass: revoke-key takes effect on the next request; only restore-key lifts it.
    let (ok, _, err) = server.cli(
        &[
            "tenant",
            "revoke-key",
            "acme",
            "--reason",
            "drill",
            "--requested-by",
            "ciso",
        ],
        b"",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = server.cli(&decrypt, &envelope);
    assert!(!ok && err.contains("KEY_REVOKED"), "{err}");
    // The report shows both revocations, the purge and the denied requests.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let report = loop {
        let (ok, out, err) = server.cli(&["audit", "report", "--tenant", "acme"], b"");
        assert!(ok, "{err}");
        let report = String::from_utf8(out).unwrap();
        // The denial after the break-glass revocation is flushed within a second or two.
        let explicit = report.find("source Explicit").map(|i| &report[i..]);
        // (Counts are per second: a second shared with the previous revocation's
        // last denials is attributed to the later one.)
        let denied = explicit
            .and_then(|tail| tail.split("requests denied since: ").nth(1))
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<u64>().ok());
        if denied.is_some_and(|n| n >= 1) {
            break report;
        }
        assert!(std::time::Instant::now() < deadline, "{report}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert!(
        report.contains("source Explicit, actor Developer::\"dev\" requested_by=\"ciso\""),
        "{report}"
    );
    assert!(report.contains("reason: drill"), "{report}");
    assert!(report.contains("caches purged"), "{report}");
    assert!(report.contains("last plaintext served before"), "{report}");
    let (ok, _, err) = server.cli(
        &["tenant", "restore-key", "acme", "--reason", "drill over"],
        b"",
    );
    assert!(ok, "{err}");
    let (ok, plain, err) = server.cli(&decrypt, &envelope);
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

/// `keyward policy check` on the shipped policies passes; a wrong expectation, a malformed
/// policy and an unknown mapping field each fail with a message naming what is wrong.
#[test]
fn policy_check_validates_and_replays_the_cases() {
    use std::process::Command;
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let check = |policies: &std::path::Path| {
        let out = Command::new(support::keyward_bin())
            .args(["policy", "check", "--policies"])
            .arg(policies)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = check(&shipped);
    assert!(ok, "{out}");
    assert!(out.contains(" passed, 0 failed"), "{out}");

    let copy = tempfile::tempdir().unwrap();
    let policies = copy.path();
    std::fs::create_dir(policies.join("tests")).unwrap();
    for dir in ["", "tests"] {
        for entry in std::fs::read_dir(shipped.join(dir)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), policies.join(dir).join(entry.file_name())).unwrap();
            }
        }
    }
    std::fs::write(
        policies.join("tests/zz-wrong.toml"),
        "[[case]]\nname = \"auditors may decrypt (wrong on purpose)\"\nidentity = \"spiffe://keyward.test/ns/compliance/sa/auditor\"\naction = \"Decrypt\"\ntenant = \"acme\"\nexpect = \"allow\"\n",
    )
    .unwrap();
    let (ok, out) = check(policies);
    assert!(!ok, "{out}");
    assert!(out.contains("FAILED"), "{out}");
    assert!(
        out.contains("auditors may decrypt (wrong on purpose)"),
        "{out}"
    );
    assert!(out.contains("1 failed"), "{out}");

    std::fs::write(
        policies.join("services.cedar"),
        "permit (principal, action, resource)\nwhen { principal.nonsense };\n",
    )
    .unwrap();
    let (ok, out) = check(policies);
    assert!(!ok, "{out}");
    assert!(out.contains("services.cedar:2"), "{out}");
}

/// Issue #16, as a customer's admin would try it with the real binary and CLI: the key is
/// disabled at the provider (the monitor revokes), then a break-glass `revoke-key`, then the key
/// is enabled again: the tenant stays revoked through several monitor sweeps; only
/// `restore-key` makes the data readable.
#[test]
fn a_break_glass_revocation_survives_the_key_coming_back() {
    use std::time::{Duration, Instant};
    let server = Server::start(&[
        ("KEYWARD_CACHE__TTL_SECONDS", "1"),
        ("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "1"),
    ]);
    let kms_dir = server.local_kms_dir();
    let kms_dir = kms_dir.to_str().unwrap();
    let (ok, _, err) = server.cli(&["tenant", "create", "acme"], b"");
    assert!(ok, "{err}");
    let (ok, _, err) = server.cli(
        &["tenant", "register-key", "acme", "--local-key", "default"],
        b"",
    );
    assert!(ok, "{err}");
    let prompt = b"a prompt the customer can revoke";
    let (ok, envelope, err) = server.cli(
        &["encrypt", "--tenant", "acme", "--context", "conversation=7"],
        prompt,
    );
    assert!(ok, "{err}");
    let decrypt = ["decrypt", "--tenant", "acme", "--context", "conversation=7"];
    let show = || {
        let (ok, out, err) = server.cli(&["tenant", "show", "acme"], b"");
        assert!(ok, "{err}");
        String::from_utf8(out).unwrap()
    };

    // 1. The customer disables the key: the monitor records the revocation.
    let (ok, _, err) = server.cli(
        &["key", "disable", "default", "--local-kms-dir", kms_dir],
        b"",
    );
    assert!(ok, "{err}");
    let shown =
        support::bound::eventually_blocking(Instant::now(), server.revocation_bound(), || {
            let shown = show();
            if shown.contains("KEK_STATE_REVOKED") {
                Ok(shown)
            } else {
                Err(shown)
            }
        });
    assert!(!shown.contains("(explicit)"), "{shown}");

    // 2. Break glass on top: recorded as explicit.
    let (ok, _, err) = server.cli(
        &["tenant", "revoke-key", "acme", "--reason", "incident 7"],
        b"",
    );
    assert!(ok, "{err}");
    let shown = show();
    assert!(
        shown.contains("KEK_STATE_REVOKED (explicit)"),
        "the binding says why it is revoked: {shown}"
    );

    // 3. The key comes back at the KMS. Several monitor sweeps later the tenant is still
    //    revoked: only restore-key lifts a break-glass revocation.
    let (ok, _, err) = server.cli(
        &["key", "enable", "default", "--local-kms-dir", kms_dir],
        b"",
    );
    assert!(ok, "{err}");
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(4) {
        let (ok, _, err) = server.cli(&decrypt, &envelope);
        assert!(!ok && err.contains("KEY_REVOKED"), "reopened: {err}");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(show().contains("KEK_STATE_REVOKED (explicit)"));

    // 4. The customer's admin restores it deliberately: readable again.
    let (ok, _, err) = server.cli(
        &[
            "tenant",
            "restore-key",
            "acme",
            "--reason",
            "incident 7 closed",
        ],
        b"",
    );
    assert!(ok, "{err}");
    let (ok, plain, err) = server.cli(&decrypt, &envelope);
    assert!(ok, "{err}");
    assert_eq!(plain, prompt);
    assert!(
        show().contains("KEK_STATE_RESTORED (explicit)"),
        "{}",
        show()
    );
}
