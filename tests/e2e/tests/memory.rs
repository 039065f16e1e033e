//! Key hygiene in the real server process (docs/adr/0005-memory-locking.md,
//! docs/threat-model.md "Unwrapped keys"): after a tenant's key is revoked and
//! its caches purged, none of its key bytes remain anywhere in the server's
//! readable memory; and the process is locked in memory and excluded from
//! core dumps.
//!
//! The test learns the exact bytes the server holds by doing what the server
//! does: it opens the same local KEK directory and the same SQLite store,
//! unwraps the tenant key under the local KEK and every DEK under the tenant
//! key. It then scans every readable mapping of the server through
//! `/proc/<pid>/mem` (the test runs as root with `CAP_SYS_PTRACE`, which the
//! kernel requires for a non-dumpable process). A positive control first
//! proves that the scan finds the keys while they are cached: without it, a
//! scan that finds nothing would prove nothing.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stderr,
    reason = "tests"
)]

mod support;

use std::{
    collections::HashMap,
    fs::File,
    hash::{BuildHasherDefault, Hasher},
    os::unix::fs::FileExt as _,
    time::{Duration, Instant},
};

use keyward_envelope::{EncryptionContext, KEY_LEN, KeyId, TenantId, unwrap_key};
use keyward_kms::{
    KeyProvider as _, KeyRef, ProviderKind, Purpose, WrapContext, local::LocalProvider,
};
use keyward_proto::v1 as pb;
use keyward_store::{DekRecord, Store as _, sqlite::SqliteStore};
use support::{Server, context};

const TENANT: &str = "memory-canary";
/// Tenants whose keys are cached before the canary's, so that the canary's keys live in memory
/// allocated well after the process locked itself.
const FILLER_TENANTS: usize = 100;
const SCOPES: [&str; 3] = ["default", "conversation-1", "conversation-2"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_bytes_remain_in_server_memory_after_revocation() {
    let server = Server::start(&[
        ("KEYWARD_MEMORY__LOCK", "required"),
        // Only the explicit RevokeKey below may purge; no monitor canary in between.
        ("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "0"),
    ]);
    let pid = server.pid();

    // --- hardening, as the kernel reports it ---------------------------------
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(
        &fields[fields.len() - 3..],
        ["0", "0", "bytes"],
        "RLIMIT_CORE must be 0 (soft and hard): {core}"
    );
    let locked_kb = status_kb(pid, "VmLck:");
    assert!(
        locked_kb > 0,
        "memory.lock = required, yet VmLck is {locked_kb} kB"
    );
    assert_every_mapping_locked(pid);

    // --- memory allocated later: many tenants' keys fill the caches first -----
    let mut crypto = server.crypto().await;
    let ctx = context(&[("purpose", "memory-test")]);
    for i in 0..FILLER_TENANTS {
        let tenant = format!("filler-{i}");
        server.onboard(&tenant).await;
        crypto
            .encrypt(pb::EncryptRequest {
                tenant_id: tenant,
                plaintext: vec![0x42; 1024],
                encryption_context: ctx.clone(),
                scope: String::new(),
                justification: None,
            })
            .await
            .unwrap();
    }
    // Locking is not only of what existed at start (MCL_CURRENT) but of what the caches
    // allocated since (MCL_FUTURE): still every mapping, however many the allocator added.
    assert_every_mapping_locked(pid);
    let locked_later_kb = status_kb(pid, "VmLck:");
    eprintln!(
        "VmLck {locked_kb} kB at start, {locked_later_kb} kB with {FILLER_TENANTS} tenants cached \
         (VmRSS {} kB)",
        status_kb(pid, "VmRSS:")
    );

    // --- put a tenant key and several DEKs in the server's caches ------------
    server.onboard(TENANT).await;
    let mut envelopes = Vec::new();
    for scope in SCOPES {
        let sealed = crypto
            .encrypt(pb::EncryptRequest {
                tenant_id: TENANT.to_owned(),
                plaintext: format!("secret of {scope}").into_bytes(),
                encryption_context: ctx.clone(),
                scope: scope.to_owned(),
                justification: None,
            })
            .await
            .unwrap()
            .into_inner();
        envelopes.push(sealed);
    }
    // Decrypt too: the decrypt path unwraps each DEK into its own cache.
    for sealed in &envelopes {
        crypto
            .decrypt(pb::DecryptRequest {
                tenant_id: TENANT.to_owned(),
                envelope: sealed.envelope.clone(),
                encryption_context: ctx.clone(),
                justification: None,
            })
            .await
            .unwrap();
    }

    // --- the exact key bytes the server holds --------------------------------
    let keys = learn_keys(&server, &envelopes).await;
    assert_eq!(
        keys.len(),
        1 + SCOPES.len(),
        "tenant key + one DEK per scope"
    );
    let patterns = Patterns::new(&keys);

    // Positive control: every cached key is found in the live process.
    let found = scan(pid, &patterns);
    for (name, _) in &keys {
        assert!(
            found.contains_key(name.as_str()),
            "positive control failed: {name} not found in the memory of pid {pid} while cached \
             (found: {:?}); the scan cannot be trusted",
            found.keys().collect::<Vec<_>>()
        );
    }
    // Every copy of those keys, allocated after many tenants' keys, is in locked memory.
    let now = mappings(pid);
    for (name, places) in &found {
        for (addr, line) in places {
            assert!(
                now.iter()
                    .any(|m| m.locked && (m.start..m.end).contains(addr)),
                "{name} at {addr:#x} is in a mapping that is not locked: {line}"
            );
        }
    }

    // --- revoke: the tenant is closed and its caches purged (docs/revocation.md)
    let mut tenants = server.tenants().await;
    tenants
        .revoke_key(pb::RevokeKeyRequest {
            tenant_id: TENANT.to_owned(),
            reason: "memory hygiene test".to_owned(),
            requested_by: "e2e".to_owned(),
        })
        .await
        .unwrap();
    support::assert_status(
        crypto
            .decrypt(pb::DecryptRequest {
                tenant_id: TENANT.to_owned(),
                envelope: envelopes[0].envelope.clone(),
                encryption_context: ctx.clone(),
                justification: None,
            })
            .await,
        tonic::Code::FailedPrecondition,
        "KEY_REVOKED",
    );

    // The purge is done when RevokeKey returns; poll briefly anyway so that a
    // holder that lets go a moment later is told apart from one that never does.
    let deadline = Instant::now() + Duration::from_secs(10);
    let survivors = loop {
        let found = scan(pid, &patterns);
        if found.is_empty() || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        survivors.is_empty(),
        "key bytes survive the purge in pid {pid}: {}",
        describe(&survivors)
    );

    // The local KEK itself is read for each unwrap and zeroized after it: it must not
    // linger either (it is not purged by a revocation: it serves every other tenant).
    let kek = std::fs::read(server.local_kms_dir().join("default.key")).unwrap();
    let kek_pattern = Patterns::new(&[("local KEK".to_owned(), kek.try_into().unwrap())]);
    let found = scan(pid, &kek_pattern);
    assert!(
        found.is_empty(),
        "the local KEK lingers in pid {pid}: {}",
        describe(&found)
    );
}

/// Without `CAP_IPC_LOCK` and with a finite `RLIMIT_MEMLOCK` (an unprivileged user):
/// `required` refuses to start and names the remedy; `best-effort` starts unlocked, and the
/// process is still non-dumpable, which the kernel shows by giving its /proc files to root.
#[test]
fn unprivileged_server_refuses_required_locking_and_is_still_not_dumpable() {
    use std::os::unix::{fs::PermissionsExt as _, process::CommandExt as _};
    const NOBODY: u32 = 65534;
    let dir = tempfile::tempdir().unwrap();
    // The binary under a path the unprivileged user can reach wherever the checkout is: a hard
    // link (same inode, no copy of a large debug binary), or a copy across file systems.
    let bin = dir.path().join("keyward");
    if std::fs::hard_link(support::keyward_bin(), &bin).is_err() {
        std::fs::copy(support::keyward_bin(), &bin).unwrap();
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(NOBODY), Some(NOBODY)).unwrap();
    let serve = |lock: &str| {
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .env("KEYWARD_MEMORY__LOCK", lock)
            .env("KEYWARD_LOG", "warn")
            .env("NO_COLOR", "1")
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    };

    let refused = serve("required").output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "started without locking: {stderr}"
    );
    assert!(
        stderr.contains("memory.lock = \"required\"")
            && stderr.contains("CAP_IPC_LOCK")
            && stderr.contains("LimitMEMLOCK=infinity"),
        "{stderr}"
    );
    assert!(
        !data.join("keyward.db").exists(),
        "the store was opened before the refusal"
    );

    let mut child = serve("best-effort").spawn().unwrap();
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("keyward listening on ") {
                let _ = tx.send(line);
            }
        }
    });
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx2.send(line);
        }
    });
    let mut warned = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("keyward serve (best-effort, unprivileged) did not start within 60 s")
        });
        warned |= line.contains("memory not locked") && line.contains("CAP_IPC_LOCK");
        if line.starts_with("keyward listening on ") {
            break;
        }
    }
    // The two output streams are read by two threads: the warning may arrive just after.
    while !warned {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(line) => {
                warned |= line.contains("memory not locked") && line.contains("CAP_IPC_LOCK")
            }
            Err(_) => break,
        }
    }
    let status = std::fs::metadata(format!("/proc/{pid}/status"));
    let locked_kb = status_kb(pid, "VmLck:");
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "best-effort did not warn that memory is not locked");
    assert_eq!(locked_kb, 0);
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(
        status.unwrap().uid(),
        0,
        "the /proc files of a dumpable process belong to its user ({NOBODY}); of a non-dumpable one, to root"
    );
}

/// The tenant key and each envelope's DEK, unwrapped as the server unwraps them.
async fn learn_keys(server: &Server, envelopes: &[pb::EncryptResponse]) -> Vec<(String, [u8; 32])> {
    let tenant: TenantId = TENANT.parse().unwrap();
    let store = SqliteStore::open_read_only(&server.database())
        .await
        .unwrap();
    let provider = LocalProvider::open(server.local_kms_dir()).unwrap();
    let binding = store.active_binding(&tenant).await.unwrap().unwrap();
    let record = store
        .get_tenant_key(&tenant, &binding.tenant_key_id)
        .await
        .unwrap()
        .unwrap();
    let tenant_key = provider
        .unwrap(
            &KeyRef::new(ProviderKind::Local, record.key_ref.clone()),
            &record.wrapped,
            &WrapContext::new(&tenant, &record.id, Purpose::TenantKey),
        )
        .await
        .unwrap();
    let mut keys = vec![("tenant key".to_owned(), *tenant_key.expose_secret())];
    for sealed in envelopes {
        let id: KeyId = sealed.dek_id.parse().unwrap();
        let dek: DekRecord = store.get_dek(&tenant, &id).await.unwrap().unwrap();
        assert_eq!(dek.tenant_key_id, record.id);
        let key = unwrap_key(&tenant_key, &dek.wrapped, &dek_aad(&dek)).unwrap();
        keys.push((
            format!("DEK {id} (scope {})", dek.scope),
            *key.expose_secret(),
        ));
    }
    keys
}

/// The AAD under which the server wraps a DEK (keyring.rs `dek_aad`): if the two ever
/// differ, the unwrap above fails and so does this test.
fn dek_aad(dek: &DekRecord) -> Vec<u8> {
    let map = [
        ("keyward:purpose", "dek".to_owned()),
        ("keyward:tenant", dek.tenant.to_string()),
        ("keyward:scope", dek.scope.to_string()),
        ("keyward:dek-id", dek.id.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    EncryptionContext::with_reserved(map)
        .unwrap()
        .canonical_bytes()
}

/// A mapping of `pid` from `/proc/<pid>/smaps`: start, end, whether it has the kernel's `lo`
/// flag (VM_LOCKED: `mlock`ed, or created after `mlockall(MCL_FUTURE)`), and its header line.
struct Mapping {
    start: u64,
    end: u64,
    locked: bool,
    line: String,
}

fn mappings(pid: u32) -> Vec<Mapping> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut out = Vec::new();
    let mut header = None;
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            let (start, end, line) = header.take().expect("VmFlags after its mapping line");
            let locked = flags.split_whitespace().any(|f| f == "lo");
            out.push(Mapping {
                start,
                end,
                locked,
                line,
            });
        } else if let Some((start, rest)) = line.split_once('-') {
            let end = rest.split_whitespace().next().unwrap_or_default();
            if let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
            {
                header = Some((start, end, line.to_owned()));
            }
        }
    }
    assert!(!out.is_empty(), "no mappings in /proc/{pid}/smaps");
    out
}

/// Every mapping of `pid` is locked, but the kernel's own (`[vdso]`, `[vvar]`, `[vsyscall]`),
/// which cannot be.
fn assert_every_mapping_locked(pid: u32) {
    for m in mappings(pid) {
        let kernel = ["[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]"]
            .iter()
            .any(|k| m.line.ends_with(k));
        assert!(
            m.locked || kernel,
            "pid {pid} has a mapping that is not locked: {}",
            m.line
        );
    }
}

fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

// ----- the memory scan -----------------------------------------------------------

/// The keys to look for, indexed for a fast scan: any occurrence of a 32-byte key covers an
/// 8-byte-aligned position p at some offset j < 8 of the key, so every aligned 8-byte word
/// is looked up among the words key[j..j + 8], and a hit is checked in full at p - j.
struct Patterns {
    keys: Vec<(String, [u8; KEY_LEN])>,
    words: HashMap<u64, Vec<(usize, usize)>, BuildHasherDefault<WordHasher>>,
}

impl Patterns {
    fn new(keys: &[(String, [u8; KEY_LEN])]) -> Patterns {
        let mut words: HashMap<u64, Vec<(usize, usize)>, BuildHasherDefault<WordHasher>> =
            HashMap::default();
        for (k, (_, key)) in keys.iter().enumerate() {
            for j in 0..8 {
                let word = u64::from_ne_bytes(key[j..j + 8].try_into().unwrap());
                words.entry(word).or_default().push((k, j));
            }
        }
        Patterns {
            keys: keys.to_vec(),
            words,
        }
    }
}

/// The keys are random: their words need no hashing.
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Where each found key was seen: key name -> (address, mapping line).
type Found = HashMap<String, Vec<(u64, String)>>;

/// Scans every readable mapping of `pid` for `patterns`.
fn scan(pid: u32, patterns: &Patterns) -> Found {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = File::open(format!("/proc/{pid}/mem")).unwrap_or_else(|e| {
        panic!("cannot open /proc/{pid}/mem ({e}): this test needs root with CAP_SYS_PTRACE")
    });
    let mut found = Found::new();
    let mut readable_bytes = 0u64;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        readable_bytes += scan_region(&mem, start, end, patterns, line, &mut found);
    }
    assert!(
        readable_bytes > 1 << 20,
        "read only {readable_bytes} bytes of pid {pid}: the scan is not seeing the process"
    );
    found
}

/// Scans `[start, end)` in chunks that overlap by a key length; a chunk that cannot be read
/// (a guard page) is retried page by page and the unreadable pages skipped. Returns the
/// number of bytes read.
fn scan_region(
    mem: &File,
    start: u64,
    end: u64,
    patterns: &Patterns,
    line: &str,
    found: &mut Found,
) -> u64 {
    const CHUNK: u64 = 4 << 20;
    const PAGE: u64 = 4096;
    let mut buf = vec![0u8; CHUNK as usize + KEY_LEN];
    let mut read_total = 0;
    let mut at = start;
    while at < end {
        let len = (end - at).min(CHUNK + KEY_LEN as u64) as usize;
        match mem.read_exact_at(&mut buf[..len], at) {
            Ok(()) => {
                read_total += len as u64;
                search(&buf[..len], at, patterns, line, found);
            }
            Err(_) => {
                // Page by page; a key spanning an unreadable page cannot be read anyway.
                let mut page = at;
                while page < at + len as u64 {
                    let n = PAGE.min(at + len as u64 - page) as usize;
                    if mem.read_exact_at(&mut buf[..n], page).is_ok() {
                        read_total += n as u64;
                        search(&buf[..n], page, patterns, line, found);
                    }
                    page += PAGE;
                }
            }
        }
        at += CHUNK;
    }
    read_total
}

fn search(bytes: &[u8], base: u64, patterns: &Patterns, line: &str, found: &mut Found) {
    let mut p = 0;
    while p + 8 <= bytes.len() {
        let word = u64::from_ne_bytes(bytes[p..p + 8].try_into().unwrap());
        if let Some(candidates) = patterns.words.get(&word) {
            for &(k, j) in candidates {
                let (name, key) = &patterns.keys[k];
                if p >= j
                    && bytes.len() >= p - j + KEY_LEN
                    && bytes[p - j..p - j + KEY_LEN] == key[..]
                {
                    let addr = base + (p - j) as u64;
                    let seen = found.entry(name.clone()).or_default();
                    if !seen.iter().any(|(a, _)| *a == addr) {
                        seen.push((addr, line.to_owned()));
                    }
                }
            }
        }
        p += 8;
    }
}

fn describe(found: &Found) -> String {
    let mut out = String::new();
    for (name, places) in found {
        out.push_str(&format!("\n  {name}:"));
        for (addr, line) in places {
            out.push_str(&format!("\n    {addr:#x} in {line}"));
        }
    }
    out
}
