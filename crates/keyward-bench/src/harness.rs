//! What the scenarios share: an in-process Keyward on 127.0.0.1 that can be stopped and started
//! again over the same data directory (a cold replica), onboarding a tenant, and a closed-loop
//! Encrypt + Decrypt load over gRPC. Every scenario starts its servers through [`Server`].

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use keyward_kms::local::LocalProvider;
use keyward_proto::v1::{
    self as pb, crypto_service_client::CryptoServiceClient, register_key_request::Key,
    tenant_service_client::TenantServiceClient,
};
use keyward_server::{Config, Keyring, Providers, Running, Settings};
use tonic::transport::Channel;

/// A Keyward server running in this process.
pub(crate) struct Server {
    running: Running,
    stop: tokio::sync::oneshot::Sender<()>,
    /// How long `ServerBuilder::start` took (store open, audit keys, revocation states, bind).
    pub(crate) start_time: Duration,
    /// The server's SQLite database, which a benchmark may seed through its own handle.
    database_path: std::path::PathBuf,
}

/// The configuration defaults for a server in this process: port 0, over `data_dir`, and no
/// admin listener (in-process servers run side by side; the admin one has a fixed port).
pub(crate) fn server_config(data_dir: &Path) -> anyhow::Result<Config> {
    Ok(Config {
        listen: "127.0.0.1:0".parse()?,
        data_dir: data_dir.to_owned(),
        admin: keyward_server::admin::AdminConfig::disabled(),
        ..Config::default()
    })
}

impl Server {
    /// Starts Keyward over `data_dir` with the configuration defaults (cache TTL 300 s,
    /// rotation 2^20 messages / 1 GiB / 24 h) changed only by `tweak`.
    pub(crate) async fn start(
        data_dir: &Path,
        providers: Providers,
        tweak: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Server> {
        Self::start_with(data_dir, tweak, |_| Ok(providers)).await
    }

    /// [`Server::start`] with the local development provider alone, its keys under the
    /// resolved `local_kms_dir` (the data directory's, unless `tweak` moves it).
    pub(crate) async fn start_local(
        data_dir: &Path,
        tweak: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Server> {
        Self::start_with(data_dir, tweak, |settings| {
            Ok(Providers::default().with(Arc::new(LocalProvider::open(&settings.local_kms_dir)?)))
        })
        .await
    }

    /// Starts Keyward with the providers `providers` builds from the resolved settings. The
    /// server runs until [`Server::stop`], or until the `Server` is dropped.
    async fn start_with(
        data_dir: &Path,
        tweak: impl FnOnce(&mut Config),
        providers: impl FnOnce(&Settings) -> anyhow::Result<Providers>,
    ) -> anyhow::Result<Server> {
        let mut config = server_config(data_dir)?;
        tweak(&mut config);
        let settings = config.resolve()?;
        let providers = providers(&settings)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let started = Instant::now();
        let running = keyward_server::ServerBuilder::new(&settings)
            .providers(providers)
            .start(async {
                let _ = stopped.await;
            })
            .await?;
        Ok(Server {
            running,
            stop,
            start_time: started.elapsed(),
            database_path: settings.database_path.clone(),
        })
    }

    /// A second handle on the server's store (the same SQLite file, in WAL mode), for
    /// benchmarks that seed many tenants faster than the API would; the server reads what it
    /// commits.
    pub(crate) async fn open_store(&self) -> anyhow::Result<Arc<dyn keyward_store::Store>> {
        Ok(Arc::new(
            keyward_store::sqlite::SqliteStore::open(&self.database_path).await?,
        ))
    }

    pub(crate) fn addr(&self) -> std::net::SocketAddr {
        self.running.local_addr()
    }

    pub(crate) fn keyring(&self) -> &Arc<Keyring> {
        self.running.keyring()
    }

    /// Stops the server and waits for it (its caches go with it).
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.running.wait().await?;
        Ok(())
    }
}

/// Onboards `tenant` as an operator would: creates it, then registers `key` (validated by the
/// server with a live round trip).
pub(crate) async fn onboard(
    tenants: &mut TenantServiceClient<Channel>,
    tenant: &str,
    key: Key,
) -> anyhow::Result<()> {
    tenants
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: tenant.to_owned(),
            display_name: String::new(),
        })
        .await
        .with_context(|| format!("create tenant {tenant}"))?;
    tenants
        .register_key(pb::RegisterKeyRequest {
            tenant_id: tenant.to_owned(),
            key: Some(key),
        })
        .await
        .with_context(|| format!("register the key of tenant {tenant}"))?;
    Ok(())
}

/// The server's local development key `default`.
pub(crate) fn local_key() -> Key {
    Key::Local(pb::LocalKey {
        key_name: "default".into(),
    })
}

/// An AWS KMS key (the emulator's), used without a role.
pub(crate) fn aws_key(key_arn: String) -> Key {
    Key::AwsKms(pb::AwsKmsKey {
        key_arn,
        role_arn: String::new(),
        external_id: String::new(),
    })
}

pub(crate) async fn channels(addr: std::net::SocketAddr, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            Channel::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    Ok(out)
}

/// When a load stops.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Until {
    /// After this many round trips in all.
    RoundTrips(u64),
    /// After this long.
    Elapsed(Duration),
}

/// What a load did.
#[derive(Debug, Default)]
pub(crate) struct Load {
    /// Encrypt + Decrypt round trips completed (each is 2 operations).
    pub(crate) round_trips: u64,
    pub(crate) elapsed: Duration,
    /// Sorted latencies of the round trips, µs.
    pub(crate) latencies_us: Vec<u64>,
}

impl Load {
    pub(crate) fn round_trips_per_s(&self) -> f64 {
        self.round_trips as f64 / self.elapsed.as_secs_f64()
    }
    pub(crate) fn ops(&self) -> u64 {
        self.round_trips * 2
    }
    pub(crate) fn pct(&self, p: f64) -> u64 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i]
    }
}

/// Maps the n-th round trip (counted over all workers) to its (tenant, scope).
pub(crate) type Pick = Arc<dyn Fn(u64) -> (String, String) + Send + Sync>;

/// `concurrency` closed loops over `conns`; each iteration encrypts `payload` for
/// `pick(n)` and decrypts the envelope it got back (checking the plaintext).
pub(crate) async fn round_trips(
    conns: &[Channel],
    concurrency: usize,
    until: Until,
    payload: Arc<Vec<u8>>,
    pick: Pick,
) -> anyhow::Result<Load> {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let mut client = CryptoServiceClient::new(conns[i % conns.len()].clone());
        let (next, payload, pick) = (next.clone(), payload.clone(), pick.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let done = match until {
                    Until::RoundTrips(total) => n >= total,
                    Until::Elapsed(d) => start.elapsed() >= d,
                };
                if done {
                    break;
                }
                let (tenant_id, scope) = pick(n);
                let t = Instant::now();
                let envelope = client
                    .encrypt(pb::EncryptRequest {
                        tenant_id: tenant_id.clone(),
                        plaintext: payload.to_vec(),
                        encryption_context: Default::default(),
                        scope,
                        justification: None,
                    })
                    .await?
                    .into_inner()
                    .envelope;
                let plaintext = client
                    .decrypt(pb::DecryptRequest {
                        tenant_id,
                        envelope,
                        encryption_context: Default::default(),
                        justification: None,
                    })
                    .await?
                    .into_inner()
                    .plaintext;
                anyhow::ensure!(plaintext == *payload, "decrypt returned other bytes");
                lat.push(t.elapsed().as_micros() as u64);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    Ok(Load {
        round_trips: all.len() as u64,
        elapsed,
        latencies_us: all,
    })
}

/// Runs `jobs` futures, at most `width` at a time (a bounded fan-out without extra crates).
pub(crate) async fn bounded<T, F, Fut>(count: u64, width: usize, job: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..width {
        let (job, next) = (job.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    break;
                }
                out.push((n, job(n).await?));
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_unstable_by_key(|(n, _)| *n);
    Ok(all.into_iter().map(|(_, v)| v).collect())
}

/// The median and the 90th percentile of `samples`, µs.
pub(crate) fn median_p90(samples: &mut [u64]) -> (u64, u64) {
    samples.sort_unstable();
    if samples.is_empty() {
        return (0, 0);
    }
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    (at(0.5), at(0.9))
}

/// Writes `json` to `path`, creating its directory.
pub(crate) fn write_json(path: &Path, json: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(json)?)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
