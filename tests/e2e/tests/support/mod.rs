//! Starts the real `keyward` binary on a free port and talks to it.
#![allow(dead_code, reason = "each test file uses a different part")]

/// The revocation window's bound and the "stops serving within the bound" loop, shared with the
/// keyward-server crate's tests (one definition).
#[path = "../../../../crates/keyward-server/tests/common/bound.rs"]
pub(crate) mod bound;
pub(crate) mod mtls;
pub(crate) mod pg;
pub(crate) mod pki;
/// One fresh PostgreSQL database per test, shared with keyward-store's and keyward-server's
/// tests (one helper).
#[path = "../../../../crates/keyward-store/tests/common/test_db.rs"]
pub(crate) mod test_db;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use keyward_proto::v1::{
    self as pb, crypto_service_client::CryptoServiceClient,
    tenant_service_client::TenantServiceClient,
};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt as _;

/// Path of the `keyward` binary built with this workspace (or `$KEYWARD_BIN`).
pub(crate) fn keyward_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("KEYWARD_BIN") {
        return PathBuf::from(bin);
    }
    // target/<profile>/deps/<this test> -> target/<profile>/keyward
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("keyward"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build --workspace --all-features --bins` (scripts/test does)",
        bin.display()
    );
    bin
}

/// Path of the `keyward-open` binary (the exit kit's decryptor, crates/keyward-open) built with
/// this workspace (or `$KEYWARD_OPEN_BIN`), found as [`keyward_bin`] finds `keyward`.
pub(crate) fn keyward_open_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("KEYWARD_OPEN_BIN") {
        return PathBuf::from(bin);
    }
    let bin = keyward_bin().with_file_name("keyward-open");
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build --workspace --all-features --bins` (scripts/test does)",
        bin.display()
    );
    bin
}

/// A running `keyward serve` in a private data directory; killed on drop.
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: String,
    /// The admin listener (/metrics, /livez, /readyz), on a free port.
    pub(crate) admin_addr: Option<String>,
    pub(crate) data_dir: PathBuf,
    /// `cache.ttl_seconds` as started (the environment, else the default).
    pub(crate) cache_ttl: Duration,
    /// `revocation.monitor_interval_seconds` as started; `None` when the monitor is off.
    pub(crate) monitor_interval: Option<Duration>,
    _temp: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts the server with `env` added to its environment (e.g.
    /// `KEYWARD_CACHE__TTL_SECONDS`) and waits for its "listening" line.
    pub(crate) fn start(env: &[(&str, &str)]) -> Server {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut server = Server::start_in(temp.path(), env);
        server._temp = Some(temp);
        server
    }

    /// Starts the server on an existing data directory (e.g. after a crash).
    pub(crate) fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_with_stderr(data_dir, env, Stdio::inherit())
    }

    /// [`Server::start_in`] with the server's stderr (its log) sent to `stderr`.
    pub(crate) fn start_with_stderr(
        data_dir: &Path,
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Server {
        let mut cmd = Command::new(keyward_bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir);
        Server::spawn(cmd, data_dir, env, stderr)
    }

    /// `keyward serve` run from `dir` with no `--data-dir`, as the README's quickstart does (its
    /// data in `dir/keyward-data`); only the addresses are chosen by the test (`KEYWARD_LISTEN`).
    pub(crate) fn start_in_working_dir(dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(keyward_bin());
        cmd.arg("serve")
            .current_dir(dir)
            .env("KEYWARD_LISTEN", "127.0.0.1:0");
        Server::spawn(cmd, &dir.join("keyward-data"), env, Stdio::inherit())
    }

    fn spawn(mut cmd: Command, data_dir: &Path, env: &[(&str, &str)], stderr: Stdio) -> Server {
        cmd.env("KEYWARD_LOG", "warn")
            // Servers run side by side: the admin listener on a free port too.
            .env("KEYWARD_ADMIN__LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn keyward serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut admin = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("keyward admin listening on ") {
                    admin = Some(addr.to_owned());
                }
                if let Some(addr) = line.strip_prefix("keyward listening on ") {
                    let _ = tx.send((addr.to_owned(), admin.clone()));
                }
            }
        });
        let (addr, admin_addr) = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addrs) => addrs,
            Err(_) => {
                let _ = child.kill();
                panic!("keyward serve did not report its address within 60 s");
            }
        };
        let seconds = |name: &str, default: u64| {
            env.iter()
                .rev()
                .find(|(k, _)| *k == name)
                .map_or(default, |(_, v)| v.parse().expect("a number of seconds"))
        };
        let monitor = seconds("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", 60);
        Server {
            child,
            addr,
            admin_addr,
            data_dir: data_dir.to_owned(),
            cache_ttl: Duration::from_secs(seconds("KEYWARD_CACHE__TTL_SECONDS", 300)),
            monitor_interval: (monitor > 0).then(|| Duration::from_secs(monitor)),
            _temp: None,
        }
    }

    /// How long after the KMS starts refusing this server may still serve a tenant
    /// (docs/revocation.md, "The bound"): the monitor's bound when it runs, the cache TTL's
    /// otherwise, whichever ends first.
    pub(crate) fn revocation_bound(&self) -> Duration {
        let ttl = bound::ttl(self.cache_ttl);
        self.monitor_interval
            .map_or(ttl, |interval| bound::monitor(interval).min(ttl))
    }

    /// The server's process id (for /proc inspection).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn database(&self) -> PathBuf {
        self.data_dir.join("keyward.db")
    }

    pub(crate) fn local_kms_dir(&self) -> PathBuf {
        self.data_dir.join("local-kms")
    }

    pub(crate) async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }

    pub(crate) async fn crypto(&self) -> CryptoServiceClient<Channel> {
        CryptoServiceClient::new(self.channel().await)
    }

    pub(crate) async fn tenants(&self) -> TenantServiceClient<Channel> {
        TenantServiceClient::new(self.channel().await)
    }

    /// Runs the `keyward` CLI against this server; returns (success, stdout, stderr).
    pub(crate) fn cli(&self, args: &[&str], stdin: &[u8]) -> (bool, Vec<u8>, String) {
        let (code, out, err) = self.cli_code(args, stdin);
        (code == Some(0), out, err)
    }

    /// [`Server::cli`] with the exit code (`None` if killed by a signal): docs/errors.md,
    /// "Exit codes of the `keyward` command".
    pub(crate) fn cli_code(&self, args: &[&str], stdin: &[u8]) -> (Option<i32>, Vec<u8>, String) {
        let endpoint = self.endpoint();
        run_keyward(None, &[("KEYWARD_ENDPOINT", &endpoint)], args, stdin)
    }

    /// Exports the audit chain with the CLI into `dir` and verifies it offline against the
    /// server's current audit public key, as an auditor would; returns the verifier's report.
    /// Panics with the CLI's error when either step fails.
    pub(crate) fn verify_audit_chain(&self, dir: &Path) -> String {
        let export = dir.join("audit.jsonl");
        let export = export.to_str().expect("utf-8 path");
        let (ok, _, err) = self.cli(&["audit", "export", "--output", export], b"");
        assert!(ok, "audit export: {err}");
        let (ok, key, err) = self.cli(&["audit", "public-key"], b"");
        assert!(ok, "audit public-key: {err}");
        let key = String::from_utf8(key).expect("utf-8 key");
        let (ok, out, err) = self.cli(
            &["audit", "verify", export, "--public-key", key.trim()],
            b"",
        );
        assert!(ok, "audit verify: {err}");
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Starts the server with its AWS KMS provider pointed at `kms_endpoint`
    /// (an emulator) with fake static credentials, plus `env`.
    pub(crate) fn start_with_aws(kms_endpoint: &str, env: &[(&str, &str)]) -> Server {
        let mut all = vec![
            ("KEYWARD_AWS_KMS__ENDPOINT_URL", kms_endpoint),
            ("KEYWARD_AWS_KMS__STS_ENDPOINT_URL", kms_endpoint),
            ("KEYWARD_AWS_KMS__MAX_ATTEMPTS", "2"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            // Never reach for an instance-metadata endpoint from a test.
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ];
        all.extend_from_slice(env);
        Server::start(&all)
    }

    /// Creates a tenant and binds the local development key "default".
    pub(crate) async fn onboard(&self, tenant: &str) {
        let mut tenants = self.tenants().await;
        create_tenant(&mut tenants, tenant).await;
        tenants
            .register_key(local_key(tenant, "default"))
            .await
            .expect("register key");
    }
}

impl Server {
    /// SIGTERM: the graceful shutdown.
    pub(crate) fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `limit` for the process to exit; its exit status, or `None` on timeout.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path` on the admin listener: (status code, body).
    pub(crate) fn admin_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read as _, Write as _};
        let addr = self.admin_addr.as_deref().expect("admin listener enabled");
        let mut stream = std::net::TcpStream::connect(addr).expect("connect to admin");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .expect("write request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// SIGKILL: no shutdown hook runs, as in a crash.
    pub(crate) fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `keyward serve` (on a fresh data directory) expecting it to refuse to start, within
/// 30 s; returns its stderr.
pub(crate) fn serve_fails<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
    args: &[&str],
    env: &[(K, V)],
) -> String {
    let data = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(keyward_bin());
    cmd.arg("serve")
        .args(args)
        .arg("--data-dir")
        .arg(data.path())
        .env("KEYWARD_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn keyward serve");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("keyward serve did not stop within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    assert!(!out.status.success(), "keyward serve exited successfully");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Creates `tenant` (display name "Tenant <id>"); panics if that fails.
pub(crate) async fn create_tenant(tenants: &mut TenantServiceClient<Channel>, tenant: &str) {
    tenants
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: tenant.to_owned(),
            display_name: format!("Tenant {tenant}"),
        })
        .await
        .expect("create tenant");
}

pub(crate) fn local_key(tenant: &str, key: &str) -> pb::RegisterKeyRequest {
    pb::RegisterKeyRequest {
        tenant_id: tenant.to_owned(),
        key: Some(pb::register_key_request::Key::Local(pb::LocalKey {
            key_name: key.to_owned(),
        })),
    }
}

pub(crate) fn context(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Asserts a status code and its `ErrorInfo` reason (domain keyward.v1).
pub(crate) fn assert_status(
    result: Result<impl std::fmt::Debug, Status>,
    code: Code,
    reason: &str,
) {
    let status = result.expect_err(&format!("expected {code:?} {reason}"));
    assert_eq!(status.code(), code, "{status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "keyward.v1");
    assert_eq!(info.reason, reason, "{status:?}");
}

/// A refusal seen by a request is `KEY_REFUSED` when that request met the KMS's
/// refusal itself, `KEY_REVOKED` when the revocation was already recorded
/// (by an earlier request or the key-state monitor).
pub(crate) fn assert_refused_or_revoked(status: Status) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let reason = status.get_details_error_info().expect("ErrorInfo").reason;
    assert!(
        reason == "KEY_REFUSED" || reason == "KEY_REVOKED",
        "{status:?}"
    );
}

/// Encrypts `plaintext` for `tenant` (context `c=1`) and checks that it decrypts back; returns
/// the Decrypt request, for checks after the key changes state.
pub(crate) async fn round_trip(
    server: &Server,
    tenant: &str,
    plaintext: &[u8],
) -> pb::DecryptRequest {
    let mut crypto = server.crypto().await;
    let sealed = crypto
        .encrypt(pb::EncryptRequest {
            tenant_id: tenant.into(),
            plaintext: plaintext.to_vec(),
            encryption_context: context(&[("c", "1")]),
            scope: String::new(),
            justification: None,
        })
        .await
        .expect("Encrypt")
        .into_inner();
    let decrypt = pb::DecryptRequest {
        tenant_id: tenant.into(),
        envelope: sealed.envelope,
        encryption_context: context(&[("c", "1")]),
        justification: None,
    };
    let opened = crypto
        .decrypt(decrypt.clone())
        .await
        .expect("Decrypt")
        .into_inner()
        .plaintext;
    assert_eq!(opened, plaintext);
    decrypt
}

/// After the customer disabled `tenant`'s key in its KMS: `decrypt` keeps being retried until it
/// fails, within [`Server::revocation_bound`] (the monitor's interval plus the scheduling slack,
/// far below the cache TTL), and then Decrypt and Encrypt are refused as revoked and the
/// tenant's key reads `Revoked`.
pub(crate) async fn assert_revoked_after_disable(server: &Server, decrypt: pb::DecryptRequest) {
    let crypto = server.crypto().await;
    let disabled_at = std::time::Instant::now();
    let (status, _) = bound::stops_serving(disabled_at, server.revocation_bound(), || {
        let mut crypto = crypto.clone();
        let request = decrypt.clone();
        async move { crypto.decrypt(request).await }
    })
    .await;
    assert_refused_or_revoked(status);
    let mut crypto = crypto;
    let status = crypto
        .encrypt(pb::EncryptRequest {
            tenant_id: decrypt.tenant_id.clone(),
            plaintext: b"more".to_vec(),
            encryption_context: decrypt.encryption_context.clone(),
            scope: String::new(),
            justification: None,
        })
        .await
        .expect_err("Encrypt after the revocation");
    assert_refused_or_revoked(status);
    // The gate closes before the store write (close first, record after: docs/revocation.md),
    // so the recorded state may trail the first refusal by the write's latency.
    let refused_at = std::time::Instant::now();
    let tenants = server.tenants().await;
    bound::eventually(refused_at, bound::push(), || {
        let mut tenants = tenants.clone();
        let tenant_id = decrypt.tenant_id.clone();
        async move {
            let tenant = tenants
                .get_tenant(pb::GetTenantRequest { tenant_id })
                .await
                .expect("GetTenant")
                .into_inner();
            match tenant.active_key.expect("a key").state() {
                pb::KekState::Revoked => Ok(()),
                other => Err(format!(
                    "the refusal is recorded as a revocation: the key reads {other:?}"
                )),
            }
        }
    })
    .await;
}

/// Retries `decrypt` until it succeeds (the monitor restored the tenant), within the monitor's
/// bound; returns the plaintext.
pub(crate) async fn eventually_decrypts(server: &Server, decrypt: &pb::DecryptRequest) -> Vec<u8> {
    let crypto = server.crypto().await;
    let interval = server
        .monitor_interval
        .expect("restoring a tenant needs the key-state monitor");
    bound::eventually(std::time::Instant::now(), bound::monitor(interval), || {
        let mut crypto = crypto.clone();
        let request = decrypt.clone();
        async move { crypto.decrypt(request).await }
    })
    .await
    .into_inner()
    .plaintext
}

/// The store's content without the audit tables: the domain state that a
/// rejected request must leave exactly as it was.
pub(crate) async fn domain_state(store: &keyward_store::sqlite::SqliteStore) -> String {
    let dump = store.dump().await.expect("dump");
    let mut out = String::new();
    let mut audit_table = false;
    for line in dump.lines() {
        if let Some(table) = line.strip_prefix("table ") {
            audit_table = table.starts_with("audit_");
        }
        if !audit_table {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Event types of the audit records appended after `after_seq`.
pub(crate) async fn audit_types_since(
    store: &keyward_store::sqlite::SqliteStore,
    after_seq: u64,
) -> Vec<String> {
    use keyward_store::Store as _;
    store
        .audit_records(&keyward_store::AuditQuery::default().with_after_seq(after_seq))
        .await
        .expect("audit records")
        .iter()
        .map(|r| {
            let failed = matches!(
                r.event(),
                keyward_audit::AuditEvent::KeyRegistrationAttempted {
                    outcome: keyward_audit::RegistrationOutcome::Failed { .. },
                    ..
                }
            );
            format!(
                "{}{}",
                r.event().event_type(),
                if failed { ":failed" } else { "" }
            )
        })
        .collect()
}

/// Runs the `keyward` CLI with `args` and `stdin` (from `dir` when given, with `env` added);
/// returns (exit code, `None` if killed by a signal; stdout; stderr).
pub(crate) fn run_keyward<S: AsRef<std::ffi::OsStr>>(
    dir: Option<&Path>,
    env: &[(&str, &str)],
    args: &[S],
    stdin: &[u8],
) -> (Option<i32>, Vec<u8>, String) {
    use std::io::Write as _;
    let mut cmd = Command::new(keyward_bin());
    cmd.args(args)
        .env("KEYWARD_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn keyward");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A 127.0.0.1 port nobody listens on (the kernel's pick, released at once).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
