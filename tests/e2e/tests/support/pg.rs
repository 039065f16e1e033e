//! PostgreSQL for the end-to-end tests: a fresh database per test on the shared server
//! (`support::test_db::TestDb`, keyward-store's test helper), a private cluster a test may stop and start ([`Cluster`]), and the replicas of
//! one deployment on a database ([`Deployment`]).
//!
//! The shared server is `KEYWARD_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`, exported by `scripts/test`), whose role must be
//! allowed to `CREATE DATABASE`. Without one the tests fail; they are never skipped. The shared
//! server is never stopped: a test that needs an outage starts its own [`Cluster`].

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use super::{Server, free_port};

/// Replicas of one deployment on one database: one audit key directory and one local KEK
/// directory shared by all, a data directory per replica id (kept, so that a replica killed
/// and started again comes back with its own directory).
pub(crate) struct Deployment {
    pub(crate) shared: tempfile::TempDir,
    data: HashMap<String, tempfile::TempDir>,
}

impl Deployment {
    pub(crate) fn new() -> Deployment {
        Deployment {
            shared: tempfile::tempdir().expect("tempdir"),
            data: HashMap::new(),
        }
    }

    /// Starts replica `replica_id` on `store` (a `postgres://` URL) with the key-state monitor
    /// off (only RevokeKey revokes), plus `env`.
    pub(crate) fn start(&mut self, store: &str, replica_id: &str, env: &[(&str, &str)]) -> Server {
        let data = self
            .data
            .entry(replica_id.to_owned())
            .or_insert_with(|| tempfile::tempdir().expect("tempdir"));
        let keys = self.shared.path().join("audit");
        let kms = self.shared.path().join("local-kms");
        let (keys, kms) = (keys.to_str().expect("utf-8"), kms.to_str().expect("utf-8"));
        let mut all = vec![
            ("KEYWARD_STORE", store),
            ("KEYWARD_REPLICA_ID", replica_id),
            ("KEYWARD_AUDIT__KEYS_DIR", keys),
            ("KEYWARD_LOCAL_KMS__DIR", kms),
            ("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "0"),
        ];
        all.extend_from_slice(env);
        Server::start_in(data.path(), &all)
    }
}

/// A private PostgreSQL cluster in a temp dir on a free 127.0.0.1 port, with trust
/// authentication, that a test may stop and start (the machine's server is shared and never
/// stopped). Built with the Debian server binaries (`/usr/lib/postgresql/*/bin`, else `initdb`
/// on `PATH`); as root, `initdb` and `postgres` run as the `postgres` user, as
/// scripts/ensure-postgres.sh does. Stopped (immediately) on drop.
pub(crate) struct Cluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    owner: Option<&'static str>,
    pub(crate) port: u16,
}

impl Cluster {
    /// `initdb` and start; panics (with the server's log) when that fails.
    pub(crate) fn start() -> Cluster {
        let bindir = server_bindir();
        let owner = is_root().then_some("postgres");
        let dir = tempfile::Builder::new()
            .prefix("keyward-pg-")
            .tempdir()
            .expect("tempdir");
        if let Some(owner) = owner {
            run(Command::new("chown").arg(owner).arg(dir.path()), "chown");
        }
        let port = free_port();
        let cluster = Cluster {
            dir,
            bindir,
            owner,
            port,
        };
        let data = cluster.data();
        cluster.run_as_owner(
            Command::new(cluster.bindir.join("initdb")).args([
                "-D",
                data.to_str().expect("utf-8"),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ]),
            "initdb",
        );
        cluster.start_again();
        cluster
    }

    /// The URL of database `postgres` (may CREATE DATABASE).
    pub(crate) fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the (stopped) cluster on its port; waits (≤ 30 s) until it accepts connections.
    pub(crate) fn start_again(&self) {
        let run_dir = self.dir.path().join("run");
        let log = self.dir.path().join("postgres.log");
        if !run_dir.exists() {
            self.run_as_owner(Command::new("mkdir").arg(&run_dir), "mkdir");
        }
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {}",
            self.port,
            run_dir.display()
        );
        let ok = self.pg_ctl(&["-l", log.to_str().expect("utf-8"), "-o", &options, "start"]);
        assert!(
            ok,
            "pg_ctl start failed; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the cluster: `mode` "immediate" is a crash (no checkpoint; WAL recovery at the next
    /// start), "fast" a clean shutdown that ends every session.
    pub(crate) fn stop(&self, mode: &str) {
        assert!(self.pg_ctl(&["-m", mode, "stop"]), "pg_ctl stop failed");
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        let mut cmd = Command::new(self.bindir.join("pg_ctl"));
        cmd.arg("-D")
            .arg(self.data())
            .args(["-w", "-t", "30"])
            .args(args);
        self.command(&mut cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run pg_ctl")
            .success()
    }

    fn command(&self, cmd: &mut Command) -> Command {
        let mut wrapped = match self.owner {
            Some(owner) => {
                let mut c = Command::new("runuser");
                c.args(["-u", owner, "--"]).arg(cmd.get_program());
                c
            }
            None => Command::new(cmd.get_program()),
        };
        wrapped.args(cmd.get_args());
        // The owner may not be allowed into the test's working directory.
        wrapped.current_dir(self.dir.path());
        wrapped
    }

    fn run_as_owner(&self, cmd: &mut Command, what: &str) {
        run(&mut self.command(cmd), what);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
        }
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// The newest installed server binaries (Debian keeps them out of `PATH`), else `initdb`'s
/// directory on `PATH`.
fn server_bindir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|bin| {
        bin.parent()
            .and_then(Path::file_name)
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(newest) = dirs.pop() {
        return newest;
    }
    let which = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&which.stdout).trim().to_owned();
    assert!(
        !path.is_empty(),
        "no PostgreSQL server binaries (initdb): install Debian's postgresql package"
    );
    Path::new(&path).parent().expect("bin dir").to_owned()
}
