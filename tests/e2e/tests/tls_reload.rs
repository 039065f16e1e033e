//! Reloading the mutual-TLS files and the Cedar policies of a running server (issue #27 item
//! 14; docs/operations.md "Rotate certificates", docs/authorization.md "Reloads"): both
//! triggers (the periodic file check and SIGHUP), a client CA removed (its clients are refused,
//! others not, open connections keep working), the server certificate and key rotated (new
//! connections see the new certificate), a mismatched pair mid-rotation (the old configuration
//! stays, and the log says so), and a policy change taking effect without a restart (an invalid
//! one is refused and the previous policies stay).
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod support;

use std::time::{Duration, Instant};

use support::{
    mtls::{MtlsFiles, call, call_on_new_connection, hangup},
    pki::{Ca, Leaf, San},
};
use tonic::Code;

const ONCALL: &str = "spiffe://keyward.test/ns/keyward/sa/operator";
const PARTNER: &str = "spiffe://partner.test/ns/ops/sa/operator";

const IDENTITIES: &str = r#"
[[operator]]
id = "oncall"
identities = ["spiffe://keyward.test/ns/keyward/sa/operator"]

[[operator]]
id = "partner"
identities = ["spiffe://partner.test/ns/ops/sa/operator"]
"#;

const RELOADED: &str = "TLS certificate and client CA reloaded";
const RELOAD_FAILED: &str = "TLS reload failed; the previous configuration stays in force";
const REFUSED: &str = "TLS handshake refused";

/// Two client CAs (ours, a partner's), one client of each, and the server's certificate (from
/// ours).
struct Setup {
    main: Ca,
    oncall: Leaf,
    partner_op: Leaf,
    files: MtlsFiles,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let main = Ca::new(dir.path(), "main");
        let partner = Ca::new(dir.path(), "partner");
        let oncall = main.client("oncall", &[San::Uri(ONCALL)], false);
        let partner_op = partner.client("partner", &[San::Uri(PARTNER)], false);
        let server = main.server();
        let files = MtlsFiles::new(dir, &server, &[&main, &partner], IDENTITIES);
        Setup {
            main,
            oncall,
            partner_op,
            files,
        }
    }
}

/// Retries `check` (≤ 15 s) until it holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let since = Instant::now();
    while !check().await {
        assert!(
            since.elapsed() < Duration::from_secs(15),
            "{what}: not within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGHUP alone (the file check is hourly here) removes a client CA: that CA's clients are
/// refused at the handshake, the other CA's are not, and a connection opened before keeps
/// working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_removes_a_client_ca_for_new_connections_only() {
    let s = Setup::new();
    let server = s.files.start(3600);
    let open = call_on_new_connection(&server, &s.main, &s.partner_op)
        .await
        .expect("the partner's client is trusted at first");
    call_on_new_connection(&server, &s.main, &s.oncall)
        .await
        .unwrap();

    // The file changes; without a SIGHUP nothing happens before the next hourly check.
    s.files.set_client_cas(&[&s.main]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    call_on_new_connection(&server, &s.main, &s.partner_op)
        .await
        .expect("reloaded without a trigger");
    assert_eq!(s.files.count(RELOADED), 0, "{}", s.files.log());

    let refused_before = s.files.count(REFUSED);
    hangup(&server);
    s.files.wait_for_log(RELOADED, 0);
    let err = call_on_new_connection(&server, &s.main, &s.partner_op)
        .await
        .expect_err("a client of the removed CA is still accepted");
    // Refused by the server, for its certificate: the server logs the refusal and the reason.
    s.files.wait_for_log(REFUSED, refused_before);
    let log = s.files.log();
    let refusal = log.lines().rfind(|l| l.contains(REFUSED)).unwrap();
    assert!(
        refusal.contains("UnknownIssuer"),
        "{refusal} (client saw {err})"
    );
    // The other CA's clients are not affected, and the server is alive.
    call_on_new_connection(&server, &s.main, &s.oncall)
        .await
        .unwrap();
    // The connection opened before the reload keeps working: a new one would be refused, so
    // these calls prove it is the same connection.
    for _ in 0..5 {
        call(&open).await.unwrap();
    }
}

/// Rotating the server's certificate and key through the periodic file check, with the
/// mismatched pair an operator leaves behind when the certificate lands before the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_rotation_applies_only_once_the_pair_matches() {
    let s = Setup::new();
    let server = s.files.start(1);
    let open = call_on_new_connection(&server, &s.main, &s.oncall)
        .await
        .unwrap();
    // The new certificate is issued by another CA, so a client can tell which one it got.
    let rotated = Ca::new(s.files.dir.path(), "rotated");
    let next = rotated.server();

    // Mid-rotation: the new certificate with the old key. Refused; the old pair stays.
    s.files.install_cert(&next);
    s.files.wait_for_log(RELOAD_FAILED, 0);
    let failure = s.files.log();
    let failure = failure.lines().find(|l| l.contains(RELOAD_FAILED)).unwrap();
    assert!(
        failure.contains(s.files.cert_file.to_str().unwrap())
            && failure.contains("do not form a usable pair"),
        "the failure names the file and the reason: {failure}"
    );
    call_on_new_connection(&server, &s.main, &s.oncall)
        .await
        .expect("the old certificate is still served after a failed reload");
    let err = call_on_new_connection(&server, &rotated, &s.oncall)
        .await
        .expect_err("the new certificate is served with the wrong key");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert_eq!(s.files.count(RELOADED), 0, "{}", s.files.log());

    // The key follows: the new pair is in force for new connections.
    s.files.install_key(&next);
    s.files.wait_for_log(RELOADED, 0);
    call_on_new_connection(&server, &rotated, &s.oncall)
        .await
        .expect("the new certificate after the rotation");
    let err = call_on_new_connection(&server, &s.main, &s.oncall)
        .await
        .expect_err("the old certificate is still served after the rotation");
    assert!(err.contains("UnknownIssuer"), "{err}");
    // Clients of both CAs still authenticate; the connection from before the rotation, which
    // negotiated the old certificate, keeps working.
    call_on_new_connection(&server, &rotated, &s.partner_op)
        .await
        .unwrap();
    for _ in 0..5 {
        call(&open).await.unwrap();
    }
}

/// A Cedar policy added, made invalid and removed while the server runs, by file change and
/// by SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_takes_effect_without_a_restart() {
    let s = Setup::new();
    let server = s.files.start(1);
    let oncall = call_on_new_connection(&server, &s.main, &s.oncall)
        .await
        .unwrap();
    let partner = call_on_new_connection(&server, &s.main, &s.partner_op)
        .await
        .unwrap();
    // Decided (and remembered) under the shipped policies.
    call(&partner).await.unwrap();

    // A forbid for the partner, picked up by the file check on the open connections.
    let extra = s.files.policies_dir.join("zz-partner.cedar");
    std::fs::write(&extra, FORBID_PARTNER).unwrap();
    eventually("the new forbid applies to the open connection", || async {
        call(&partner)
            .await
            .is_err_and(|s| s.code() == Code::PermissionDenied)
    })
    .await;
    call(&oncall).await.expect("others are not affected");

    // An invalid version is refused: the previous policies (with the forbid) stay in force.
    let failed = "policy reload failed; the previous policies stay in force";
    std::fs::write(
        &extra,
        "forbid (principal == Keyward::Operator::\"partner\",",
    )
    .unwrap();
    s.files.wait_for_log(failed, 0);
    assert!(
        s.files
            .log()
            .lines()
            .any(|l| l.contains(failed) && l.contains("zz-partner.cedar")),
        "the failure names the file: {}",
        s.files.log()
    );
    let status = call(&partner).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    call(&oncall).await.unwrap();

    // Removed, and reloaded at once by SIGHUP: allowed again.
    std::fs::remove_file(&extra).unwrap();
    hangup(&server);
    eventually("the partner is allowed again", || async {
        call(&partner).await.is_ok()
    })
    .await;

    // A new file that fails to load, then fixed in place (the directory does not change, and
    // the file was never loaded): the file check still sees the fix.
    let failures = s.files.count(failed);
    let new = s.files.policies_dir.join("zz-new.cedar");
    std::fs::write(&new, "forbid (principal == Keyward::Operator::\"partner\",").unwrap();
    s.files.wait_for_log(failed, failures);
    call(&partner)
        .await
        .expect("the invalid file changed nothing");
    std::fs::write(&new, FORBID_PARTNER).unwrap();
    eventually("the fixed new file applies without a SIGHUP", || async {
        call(&partner)
            .await
            .is_err_and(|s| s.code() == Code::PermissionDenied)
    })
    .await;
}

const FORBID_PARTNER: &str = "@id(\"no-partner-key\")\nforbid (\n  principal == \
     Keyward::Operator::\"partner\",\n  action == Keyward::Action::\"ReadAuditPublicKey\",\n  \
     resource\n);\n";
