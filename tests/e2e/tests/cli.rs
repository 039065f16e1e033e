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
    assert!(String::from_utf8_lossy(&out).contains("key provider: local development key"));

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
        let explicit = report
            .find("source: an explicit request")
            .map(|i| &report[i..]);
        let denied = explicit
            .and_then(|tail| tail.split("denied since:").nth(1))
            .map(str::trim_start)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<u64>().ok());
        if denied.is_some_and(|n| n >= 1) {
            break report;
        }
        assert!(std::time::Instant::now() < deadline, "{report}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert!(
        report.contains("source: an explicit request by Developer::\"dev\" requested_by=\"ciso\""),
        "{report}"
    );
    assert!(report.contains("reason:          drill"), "{report}");
    assert!(report.contains("cached keys at"), "{report}");
    assert!(
        report.contains("answer:          no plaintext served after the revocation was recorded"),
        "{report}"
    );
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
    // The key stays cached (held) for 30 s, so the monitor checks it every second (a key held
    // nowhere gets no canary: its next use asks the KMS).
    let server = Server::start(&[
        ("KEYWARD_CACHE__TTL_SECONDS", "30"),
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
            if shown.contains("key state:    revoked since ") {
                Ok(shown)
            } else {
                Err(shown)
            }
        });
    assert!(!shown.contains("(explicit"), "{shown}");

    // 2. Break glass on top: recorded as explicit.
    let (ok, _, err) = server.cli(
        &["tenant", "revoke-key", "acme", "--reason", "incident 7"],
        b"",
    );
    assert!(ok, "{err}");
    let shown = show();
    assert!(
        shown.contains("(explicit: RevokeKey / RestoreKey)") && shown.contains("revoked since "),
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
    assert!(show().contains("key state:    revoked since "));

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
        show().contains("key state:    restored since ")
            && show().contains("(explicit: RevokeKey / RestoreKey)"),
        "{}",
        show()
    );
}

/// `keyward key …` acts on the server's key directory, found from `--data-dir` as `serve` finds
/// it, names the directory it acted on, and refuses (creating nothing) a directory or key that
/// does not exist: a mistyped directory used to get a new key, silently disabled.
#[test]
fn key_commands_act_on_the_named_data_dir_and_create_nothing() {
    let server = Server::start(&[]);
    let data_dir = server.data_dir.to_str().unwrap().to_owned();
    let elsewhere = tempfile::tempdir().unwrap();
    let wrong = elsewhere.path().join("keyward-data");
    let wrong = wrong.to_str().unwrap();

    let (ok, _, err) = server.cli(&["key", "disable", "default", "--data-dir", wrong], b"");
    assert!(!ok, "acted on a directory that does not exist");
    assert!(
        err.contains(&format!("{wrong}/local-kms: no such local key directory")),
        "{err}"
    );
    assert!(
        !elsewhere.path().join("keyward-data").exists(),
        "it created the directory"
    );

    let (ok, _, err) = server.cli(&["key", "disable", "nosuch", "--data-dir", &data_dir], b"");
    assert!(!ok);
    assert!(
        err.contains("local key 'nosuch' does not exist in"),
        "{err}"
    );
    assert!(!server.local_kms_dir().join("nosuch.disabled").exists());

    let (ok, out, err) = server.cli(&["key", "disable", "default", "--data-dir", &data_dir], b"");
    assert!(ok, "{err}");
    let out = String::from_utf8(out).unwrap();
    let acted_on = format!("{data_dir}/local-kms");
    assert!(
        out.contains(&format!("disabled local key \"default\" in {acted_on}")),
        "{out}"
    );
    assert!(server.local_kms_dir().join("default.disabled").exists());
    let (ok, out, err) = server.cli(&["key", "list", "--data-dir", &data_dir], b"");
    assert!(ok, "{err}");
    assert_eq!(String::from_utf8(out).unwrap(), "default\tdisabled\n");
    assert!(err.contains(&format!("local keys in {acted_on}")), "{err}");

    // `key create` makes the directory when needed, and only the key it is asked for: `default`
    // in a fresh directory is created, not refused as "already exists".
    let fresh = elsewhere.path().join("fresh");
    let fresh = fresh.to_str().unwrap();
    let (ok, out, err) = server.cli(&["key", "create", "default", "--data-dir", fresh], b"");
    assert!(ok, "{err}");
    assert!(
        String::from_utf8(out).unwrap().contains(&format!(
            "created local key \"default\" in {fresh}/local-kms"
        )),
        "{err}"
    );
    let (ok, _, err) = server.cli(&["key", "create", "default", "--data-dir", fresh], b"");
    assert!(!ok);
    assert!(err.contains("already exists"), "{err}");
}

/// `tenant show` in words: provider and state, the TTL and monitor interval in force with their
/// source; a revoked tenant's errors say the state, since when and what revoked it.
#[test]
fn tenant_show_and_revocation_errors_speak_words() {
    let server = Server::start(&[("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "45")]);
    let cli = |args: &[&str], stdin: &[u8]| {
        let (ok, out, err) = server.cli(args, stdin);
        (ok, String::from_utf8_lossy(&out).into_owned(), err)
    };
    // What creation prints is in words too: the settings in force, not "server default".
    let (ok, created, err) = cli(&["tenant", "create", "acme"], b"");
    assert!(ok, "{err}");
    assert!(
        created.contains("cache TTL:    300 s (server default)\n")
            && created.contains("monitor:      every 45 s (server default)\n"),
        "{created}"
    );
    let (ok, shown, err) = cli(
        &["tenant", "register-key", "acme", "--local-key", "default"],
        b"",
    );
    assert!(ok, "{err}");
    for line in [
        "key provider: local development key\n",
        "key:          default\n",
        "key state:    active\n",
        "cache TTL:    300 s (server default)\n",
        "monitor:      every 45 s (server default)\n",
    ] {
        assert!(shown.contains(line), "missing {line:?} in:\n{shown}");
    }
    let (ok, shown, err) = cli(
        &[
            "tenant",
            "set-policy",
            "acme",
            "--cache-ttl-seconds",
            "30",
            "--monitor-interval-seconds",
            "10",
        ],
        b"",
    );
    assert!(ok, "{err}");
    assert!(
        shown.contains("cache TTL:    30 s (tenant policy)\n"),
        "{shown}"
    );
    assert!(
        shown.contains("monitor:      every 10 s (tenant policy)\n"),
        "{shown}"
    );

    let (ok, envelope, err) = server.cli(&["encrypt", "--tenant", "acme"], b"x");
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["tenant", "revoke-key", "acme", "--reason", "drill"], b"");
    assert!(ok, "{err}");
    let (_, shown, _) = cli(&["tenant", "show", "acme"], b"");
    assert!(shown.contains("key state:    revoked since 20"), "{shown}");
    let (ok, _, err) = cli(&["decrypt", "--tenant", "acme"], &envelope);
    assert!(!ok);
    // The status message (what a service sees) and the CLI's lines from the metadata.
    assert!(
        err.contains("the key of tenant acme is revoked since 20"),
        "{err}"
    );
    assert!(err.contains("(revoked explicitly (RevokeKey))"), "{err}");
    assert!(
        err.contains("reason KEY_REVOKED)\n  key state: revoked\n  since:     20"),
        "{err}"
    );
    assert!(
        err.contains("Z (UTC)\n  source:    explicit: RevokeKey / RestoreKey"),
        "{err}"
    );
}

/// Offline commands neither list nor accept the connection options; `register-key --help` keeps
/// the key options apart from them.
#[test]
fn help_lists_connection_options_only_where_they_apply() {
    let help = |args: &[&str]| {
        let out = std::process::Command::new(support::keyward_bin())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    for offline in [
        &["audit", "verify", "--help"][..],
        &["key", "disable", "--help"],
        &["serve", "--help"],
        &["policy", "check", "--help"],
        &["store", "backup", "--help"],
        &["onboarding", "policy", "--help"],
    ] {
        let text = help(offline);
        assert!(
            !text.contains("--endpoint") && !text.contains("--tls-"),
            "{offline:?}:\n{text}"
        );
    }
    let out = std::process::Command::new(support::keyward_bin())
        .args([
            "audit",
            "verify",
            "f",
            "--endpoint",
            "http://x",
            "--public-key",
            "k",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("`keyward audit verify` works without a server"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let text = help(&["tenant", "register-key", "--help"]);
    let key_section = text
        .split("Key (exactly one):\n")
        .nth(1)
        .map_or("", |rest| {
            rest.split("AWS cross-account role").next().unwrap_or(rest)
        });
    assert!(key_section.contains("--aws-kms-key"), "{text}");
    assert!(
        !key_section.contains("--tls-"),
        "TLS options among the key options:\n{text}"
    );
    assert!(
        text.contains("Connection (commands that call a server):\n      --endpoint"),
        "{text}"
    );
    assert!(help(&["encrypt", "--help"]).contains("[default: default]"));
}
