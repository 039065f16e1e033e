//! The two servers of `keyward-bench stream`, each in its own process so that its memory can be
//! read from `/proc/<pid>/status` apart from the client's: the real `keyward serve`, and the
//! null streaming service (`keyward-bench serve-null`). Both are killed when dropped.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::Duration,
};

use anyhow::Context as _;

/// What the null server prints once it listens (followed by its address).
pub(crate) const NULL_LISTENING: &str = "null listening on ";
const KEYWARD_LISTENING: &str = "keyward listening on ";

/// A server process started by the bench; killed (and reaped) on drop.
#[derive(Debug)]
pub(super) struct ServerProcess {
    child: Child,
    pub(super) addr: SocketAddr,
}

impl ServerProcess {
    /// `keyward serve` over `data_dir` on a free port of 127.0.0.1, with its configuration
    /// defaults (local development provider, memory locking best-effort, monitor on) except:
    /// the admin listener on a free port too (never the default 9464) and warnings only in the
    /// log.
    pub(super) fn keyward(bin: &Path, data_dir: &Path) -> anyhow::Result<ServerProcess> {
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("KEYWARD_LOG", "warn")
            .env("KEYWARD_ADMIN__LISTEN", "127.0.0.1:0");
        Self::spawn(cmd, KEYWARD_LISTENING)
            .with_context(|| format!("start {} serve", bin.display()))
    }

    /// This binary's `serve-null`: the null streaming service alone, with the same transport
    /// settings as Keyward's. It exits when its stdin closes (the bench ended, however it did).
    pub(super) fn null() -> anyhow::Result<ServerProcess> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("serve-null");
        Self::spawn(cmd, NULL_LISTENING).context("start keyward-bench serve-null")
    }

    fn spawn(mut cmd: Command, listening: &'static str) -> anyhow::Result<ServerProcess> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        let (tx, rx) = mpsc::channel();
        // Reads the child's stdout to its end (a full pipe would block the child).
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix(listening) {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let mut process = ServerProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .context("the server did not print its address within 60 s")?;
        process.addr = addr
            .parse()
            .with_context(|| format!("the server's address {addr:?}"))?;
        Ok(process)
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `keyward` binary: `--keyward-bin`, else `$KEYWARD_BIN`, else next to this one (as
/// `cargo build -p keyward-cli -p keyward-bench` leaves them).
pub(super) fn keyward_bin(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let bin = match flag.or_else(|| std::env::var_os("KEYWARD_BIN").map(PathBuf::from)) {
        Some(bin) => bin,
        None => std::env::current_exe()?.with_file_name("keyward"),
    };
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it with `cargo build -p keyward-cli` (same profile as keyward-bench), or pass --keyward-bin",
        bin.display()
    );
    Ok(bin)
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
pub(super) fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// The peak resident size of a process over a stretch of time: its `VmHWM` reset at the start
/// (`echo 5 > /proc/<pid>/clear_refs`, Linux >= 4.0, the process's owner or root), and `VmRSS`
/// sampled every 10 ms in case the reset is refused.
#[derive(Debug)]
pub(super) struct PeakRss {
    pid: u32,
    hwm_reset: bool,
    stop: Arc<AtomicBool>,
    sampled_max_kib: Arc<AtomicU64>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

impl PeakRss {
    pub(super) fn start(pid: u32) -> PeakRss {
        let hwm_reset = reset_peak(pid);
        let stop = Arc::new(AtomicBool::new(false));
        let sampled_max_kib = Arc::new(AtomicU64::new(0));
        let sampler = {
            let (stop, max) = (stop.clone(), sampled_max_kib.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(kib) = status_kib(pid, "VmRSS") {
                        max.fetch_max(kib, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        PeakRss {
            pid,
            hwm_reset,
            stop,
            sampled_max_kib,
            sampler: Some(sampler),
        }
    }

    /// The peak since [`PeakRss::start`], KiB.
    pub(super) fn finish(mut self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(sampler) = self.sampler.take() {
            let _ = sampler.join();
        }
        let sampled = self
            .sampled_max_kib
            .load(Ordering::Relaxed)
            .max(status_kib(self.pid, "VmRSS")?);
        Ok(if self.hwm_reset {
            sampled.max(status_kib(self.pid, "VmHWM")?)
        } else {
            sampled
        })
    }
}

/// Resets the kernel's record of the process's peak resident size (`VmHWM`) to its current
/// size; false when refused. When it works, [`PeakRss::finish`] includes peaks shorter than the
/// sampling period.
pub(super) fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

impl Drop for PeakRss {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
