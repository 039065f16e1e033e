//! Keeping unwrapped keys out of swap and out of core dumps
//! (docs/adr/0005-memory-locking.md, docs/configuration.md `[memory]`).
//!
//! [`harden`] runs once, at the start of `keyward serve`, before any key is
//! loaded:
//! - **Core dumps**: `prctl(PR_SET_DUMPABLE, 0)` (no core file, no
//!   `/proc/<pid>/mem` or ptrace access for the same uid without
//!   `CAP_SYS_PTRACE`) and `RLIMIT_CORE = 0` (soft and hard), which also stops
//!   piped `core_pattern` handlers that honour the limit (systemd-coredump).
//! - **Swap**: `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`, the whole
//!   address space, as Vault does: keys sit on the general heap (in moka's
//!   cache entries, in async state), so no smaller region can be named
//!   without a custom allocator, which would need `unsafe`.
//!
//! Locking is attempted only when it cannot fail later: with `MCL_FUTURE` and
//! a finite `RLIMIT_MEMLOCK`, any later `mmap` past the limit fails, so
//! allocations would fail in the middle of serving. It therefore needs
//! `CAP_IPC_LOCK` or `RLIMIT_MEMLOCK = infinity`; without either, `best-effort`
//! warns and runs unlocked, `required` refuses to start.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Whether the server locks its memory (`[memory] lock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockMode {
    /// Lock, or refuse to start.
    Required,
    /// Lock when the process may; otherwise warn (with the capability it lacks) and run.
    #[default]
    BestEffort,
    /// Do not try.
    Off,
}

impl LockMode {
    /// The spelling in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Required => "required",
            LockMode::BestEffort => "best-effort",
            LockMode::Off => "off",
        }
    }
}

/// The `[memory]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Lock all memory against swapping (`mlockall`).
    pub lock: LockMode,
    /// Make the process non-dumpable and set `RLIMIT_CORE` to 0. Turn off only to debug a
    /// crash on a machine that holds no customer keys.
    pub exclude_from_core_dumps: bool,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            lock: LockMode::BestEffort,
            exclude_from_core_dumps: true,
        }
    }
}

/// What [`harden`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Hardening {
    /// All memory, current and future, is locked.
    pub locked: bool,
    /// Why memory is not locked (`None` when it is, or when locking is off).
    pub not_locked_because: Option<String>,
    /// The process is non-dumpable with `RLIMIT_CORE = 0`.
    pub dumps_excluded: bool,
}

/// Why the server must not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// `lock = "required"` and memory could not be locked.
    #[error(
        "memory.lock = \"required\" but memory cannot be locked: {0}. {REMEDY}, or set memory.lock = \"best-effort\""
    )]
    LockRequired(String),
    /// Core dumps could not be disabled.
    #[error(
        "could not exclude the process from core dumps ({step}): {source}; set memory.exclude_from_core_dumps = false only on a machine that holds no customer keys"
    )]
    DumpExclusion {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// How an operator lets the process lock its memory.
pub const REMEDY: &str = "Grant CAP_IPC_LOCK (systemd: AmbientCapabilities=CAP_IPC_LOCK or LimitMEMLOCK=infinity; \
     Docker: --cap-add IPC_LOCK; Kubernetes: securityContext.capabilities.add [IPC_LOCK]; \
     shell: ulimit -l unlimited)";

/// Applies `config` to this process: see the module documentation.
pub fn harden(config: &MemoryConfig) -> Result<Hardening, MemoryError> {
    let dumps_excluded = if config.exclude_from_core_dumps {
        imp::exclude_from_core_dumps()?;
        true
    } else {
        tracing::warn!(
            "memory.exclude_from_core_dumps = false: a crash may write unwrapped keys to a core file"
        );
        false
    };
    let (locked, not_locked_because) = match config.lock {
        LockMode::Off => (false, None),
        mode => match imp::lock_all() {
            Ok(()) => (true, None),
            Err(reason) if mode == LockMode::Required => {
                return Err(MemoryError::LockRequired(reason));
            }
            Err(reason) => {
                tracing::warn!(
                    reason = %reason,
                    remedy = REMEDY,
                    "memory not locked: unwrapped keys may be written to swap (memory.lock = \"best-effort\")"
                );
                (false, Some(reason))
            }
        },
    };
    let hardening = Hardening {
        locked,
        not_locked_because,
        dumps_excluded,
    };
    tracing::info!(
        locked = hardening.locked,
        lock = config.lock.as_str(),
        dumps_excluded = hardening.dumps_excluded,
        "memory hardening applied"
    );
    Ok(hardening)
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use rustix::{
        io::Errno,
        mm::{MlockAllFlags, mlockall},
        process::{
            DumpableBehavior, Resource, Rlimit, getrlimit, set_dumpable_behavior, setrlimit,
        },
        thread::{CapabilitySet, capabilities},
    };

    use super::MemoryError;

    pub(super) fn exclude_from_core_dumps() -> Result<(), MemoryError> {
        set_dumpable_behavior(DumpableBehavior::NotDumpable).map_err(|e| {
            MemoryError::DumpExclusion {
                step: "prctl(PR_SET_DUMPABLE, 0)",
                source: e.into(),
            }
        })?;
        setrlimit(
            Resource::Core,
            Rlimit {
                current: Some(0),
                maximum: Some(0),
            },
        )
        .map_err(|e| MemoryError::DumpExclusion {
            step: "setrlimit(RLIMIT_CORE, 0)",
            source: e.into(),
        })
    }

    /// Locks all current and future memory, if that cannot make later allocations fail.
    pub(super) fn lock_all() -> Result<(), String> {
        let has_cap = capabilities(None)
            .map(|c| c.effective.contains(CapabilitySet::IPC_LOCK))
            .unwrap_or(false);
        let limit = getrlimit(Resource::Memlock).current;
        if !has_cap && let Some(bytes) = limit {
            return Err(format!(
                "the process lacks CAP_IPC_LOCK and RLIMIT_MEMLOCK is {bytes} bytes (locking all memory under a finite limit would make later allocations fail)"
            ));
        }
        let all = MlockAllFlags::CURRENT | MlockAllFlags::FUTURE;
        // MCL_ONFAULT (Linux 4.4) locks pages as they are first touched instead of faulting in
        // every reserved stack and arena at once; a page that ever holds a key is touched.
        match mlockall(all | MlockAllFlags::ONFAULT) {
            Err(Errno::INVAL) => mlockall(all),
            other => other,
        }
        .map_err(|e| format!("mlockall(MCL_CURRENT | MCL_FUTURE) failed: {e}"))
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::MemoryError;

    pub(super) fn exclude_from_core_dumps() -> Result<(), MemoryError> {
        Err(MemoryError::DumpExclusion {
            step: "platform",
            source: std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "only implemented on Linux",
            ),
        })
    }

    pub(super) fn lock_all() -> Result<(), String> {
        Err("memory locking is only implemented on Linux".to_owned())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Box<figment::Error>> {
        use figment::providers::Format as _;
        figment::Figment::from(figment::providers::Toml::string(text))
            .extract()
            .map_err(Box::new)
    }

    #[test]
    fn config_spellings() {
        #[derive(Deserialize)]
        struct Wrap {
            memory: MemoryConfig,
        }
        for (text, mode) in [
            ("required", LockMode::Required),
            ("best-effort", LockMode::BestEffort),
            ("off", LockMode::Off),
        ] {
            let w: Wrap = parse(&format!("[memory]\nlock = \"{text}\"\n")).unwrap();
            assert_eq!(w.memory.lock, mode);
            assert_eq!(mode.as_str(), text);
            assert!(w.memory.exclude_from_core_dumps);
        }
        assert!(parse::<Wrap>("[memory]\nlock = \"yes\"\n").is_err());
        assert!(parse::<Wrap>("[memory]\nlocked = \"off\"\n").is_err());
        assert_eq!(MemoryConfig::default().lock, LockMode::BestEffort);
    }

    #[test]
    fn required_error_names_the_remedy() {
        let msg = MemoryError::LockRequired("no capability".to_owned()).to_string();
        assert!(msg.contains("CAP_IPC_LOCK"), "{msg}");
        assert!(msg.contains("LimitMEMLOCK=infinity"), "{msg}");
        assert!(msg.contains("ulimit -l"), "{msg}");
    }
}
