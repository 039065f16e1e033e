//! A `keyward serve` with mutual TLS whose files a test rewrites while it runs: the server
//! certificate and key, the client CA bundle, the identity mapping and a copy of the shipped
//! policies, all at fixed paths in a private directory, and the server's log in a file.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use keyward_proto::v1::{self as pb, audit_service_client::AuditServiceClient};
use tonic::transport::Channel;

use super::{
    Server,
    pki::{Ca, Leaf, connect},
};

/// The files the server reads, and its log.
pub(crate) struct MtlsFiles {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
    pub(crate) client_ca_file: PathBuf,
    pub(crate) identities_file: PathBuf,
    pub(crate) policies_dir: PathBuf,
    pub(crate) log_file: PathBuf,
}

impl MtlsFiles {
    /// The server's certificate and key from `server`, `client_cas` as the client CA bundle,
    /// `identities` as the mapping, the shipped policies.
    pub(crate) fn new(
        dir: tempfile::TempDir,
        server: &Leaf,
        client_cas: &[&Ca],
        identities: &str,
    ) -> Self {
        let path = |name: &str| dir.path().join(name);
        let files = MtlsFiles {
            cert_file: path("server.pem"),
            key_file: path("server.key"),
            client_ca_file: path("client-ca.pem"),
            identities_file: path("identities.toml"),
            policies_dir: path("policies"),
            log_file: path("server.log"),
            dir,
        };
        files.install_server_pair(server);
        files.set_client_cas(client_cas);
        std::fs::write(&files.identities_file, identities).expect("write identities");
        std::fs::create_dir(&files.policies_dir).expect("policies dir");
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
        for entry in std::fs::read_dir(shipped).expect("shipped policies") {
            let entry = entry.expect("entry");
            if entry.file_type().expect("file type").is_file() {
                std::fs::copy(entry.path(), files.policies_dir.join(entry.file_name()))
                    .expect("copy policy");
            }
        }
        files
    }

    /// Replaces the server's certificate with `leaf`'s (the key file is left alone).
    pub(crate) fn install_cert(&self, leaf: &Leaf) {
        replace(
            &self.cert_file,
            &std::fs::read(&leaf.cert_file).expect("read cert"),
        );
    }

    /// Replaces the server's key with `leaf`'s (the certificate file is left alone).
    pub(crate) fn install_key(&self, leaf: &Leaf) {
        replace(
            &self.key_file,
            &std::fs::read(&leaf.key_file).expect("read key"),
        );
    }

    pub(crate) fn install_server_pair(&self, leaf: &Leaf) {
        self.install_cert(leaf);
        self.install_key(leaf);
    }

    pub(crate) fn set_client_cas(&self, cas: &[&Ca]) {
        let bundle: String = cas.iter().map(|ca| ca.pem()).collect();
        replace(&self.client_ca_file, bundle.as_bytes());
    }

    /// Starts the server on these files, checking for changes every `reload_interval_seconds`,
    /// logging at info level to [`MtlsFiles::log_file`].
    pub(crate) fn start(&self, reload_interval_seconds: u64) -> Server {
        let s = |p: &Path| p.to_str().expect("utf-8").to_owned();
        let interval = reload_interval_seconds.to_string();
        let env = [
            ("KEYWARD_TLS__CERT_FILE", s(&self.cert_file)),
            ("KEYWARD_TLS__KEY_FILE", s(&self.key_file)),
            ("KEYWARD_TLS__CLIENT_CA_FILE", s(&self.client_ca_file)),
            ("KEYWARD_TLS__RELOAD_INTERVAL_SECONDS", interval),
            ("KEYWARD_AUTHZ__POLICIES_DIR", s(&self.policies_dir)),
            ("KEYWARD_AUTHZ__IDENTITIES_FILE", s(&self.identities_file)),
            ("KEYWARD_LOG", "info".to_owned()),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let log = std::fs::File::create(&self.log_file).expect("log file");
        let data = self.dir.path().join("data");
        Server::start_with_stderr(&data, &env, Stdio::from(log))
    }

    /// The server's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).expect("read log")
    }

    /// How many log lines contain `needle`.
    pub(crate) fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits (≤ 15 s) until the log holds more than `before` lines containing `needle`.
    pub(crate) fn wait_for_log(&self, needle: &str, before: usize) {
        let since = Instant::now();
        while self.count(needle) <= before {
            assert!(
                since.elapsed() < Duration::from_secs(15),
                "the server did not log {needle:?} within 15 s; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Writes `bytes` to `path` atomically (a new file renamed over the old one, as an operator
/// is told to), so that the server never reads half a file.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// SIGHUP to the server: the reload trigger besides the periodic file check.
pub(crate) fn hangup(server: &Server) {
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -HUP failed");
}

/// One `GetPublicKey` (every principal may call it) on `channel`.
pub(crate) async fn call(channel: &Channel) -> Result<(), tonic::Status> {
    AuditServiceClient::new(channel.clone())
        .get_public_key(pb::GetAuditPublicKeyRequest {})
        .await
        .map(drop)
}

/// A new connection (trusting `server_ca` for the server, presenting `client`) and one call on
/// it; the error's text when either fails.
pub(crate) async fn call_on_new_connection(
    server: &Server,
    server_ca: &Ca,
    client: &Leaf,
) -> Result<Channel, String> {
    let channel = connect(&server.addr, server_ca, Some(client))
        .await
        .map_err(|e| format!("{e:?}"))?;
    call(&channel).await.map_err(|s| format!("{s:?}"))?;
    Ok(channel)
}
