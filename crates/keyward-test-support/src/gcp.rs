//! A **test double** of Google Cloud KMS, for tests only (`keyward-test-support`, feature `gcp`;
//! for `keyward-kms-gcp`'s tests and the end-to-end tests).
//!
//! Google ships no Cloud KMS emulator, so this module serves the subset of the documented
//! Cloud KMS v1 REST API that [`keyward_kms_gcp::GcpKmsProvider`] calls, on
//! `http://127.0.0.1:<port>`, to the **unmodified** official client (`google-cloud-kms-v1`,
//! configured with anonymous credentials and this endpoint):
//!
//! | request                                   | behaviour                                           |
//! |-------------------------------------------|-----------------------------------------------------|
//! | `POST /v1/{cryptoKey}:encrypt`            | AES-256-GCM under the primary version               |
//! | `POST /v1/{cryptoKeyVersion}:encrypt`     | under that version (the API allows it for symmetric keys) |
//! | `POST /v1/{cryptoKey}:decrypt`            | under the version named in the ciphertext           |
//! | `GET /v1/{cryptoKey}`                     | the CryptoKey with its primary version              |
//! | `GET /v1/{cryptoKeyVersion}`              | the version                                         |
//!
//! It does real cryptography (AES-256-GCM from aws-lc-rs; a random 256-bit key per version; the
//! request's `additionalAuthenticatedData` as GCM AAD; the ciphertext is
//! `version id (u32 BE) ‖ nonce (12) ‖ ciphertext ‖ tag (16)`), checks and returns the CRC32C
//! integrity fields, answers in Google's JSON error format
//! (`{"error":{"code":400,"message":"…","status":"FAILED_PRECONDITION"}}`) with the status codes
//! the real service uses (`PERMISSION_DENIED` for an unknown key and when the key's "deny"
//! switch is on, `FAILED_PRECONDITION` for a version that is not enabled, `INVALID_ARGUMENT` for
//! a ciphertext that does not authenticate, a checksum that does not match or a key whose
//! purpose is not `ENCRYPT_DECRYPT`), and encodes enums as numbers, as the client asks with
//! `$alt=json;enum-encoding=int`.
//!
//! **An unknown key is `PERMISSION_DENIED`**, as Cloud KMS answers a caller that holds no
//! permission on the key ring or project: IAM is checked before existence, so such a caller
//! cannot tell a missing key from one it may not use ("Permission 'cloudkms.cryptoKeys.get'
//! denied on resource '…' (or it may not exist)"). Keyward's onboarding grants its roles on the
//! key only, so this is what a customer who mistypes a key name sees.
//! [`KmsDouble::set_key_ring_viewer`] switches to the other case, a caller with
//! `cloudkms.cryptoKeys.get` on the key ring or project, which sees `NOT_FOUND`.
//!
//! **It can lie**, to prove that the provider checks what Google asks clients to check:
//! [`KmsDouble::set_lie`] corrupts one integrity field of its successful answers (the
//! `verified_*_crc32c` flags, a response checksum, the version name, an empty ciphertext; see
//! [`Lie`]). [`KmsDouble::create_key_with_purpose`] makes a key that is not a symmetric
//! encryption key, and [`KmsDouble::requests_without_checksums`] counts requests that came
//! without their CRC32C fields.
//!
//! What it does **not** model: IAM beyond the above (one per-key deny switch, one key-ring-wide
//! read permission), key creation/rotation through the API (tests drive them through
//! [`KmsDouble`]'s methods), protection levels, quotas, and OAuth (it accepts requests without
//! credentials).
//!
//! The server runs on its own thread with its own tokio runtime, so it keeps answering while a
//! test blocks (e.g. waiting for a child `keyward` process), and stops when dropped.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    reason = "test support: a broken test environment fails the test loudly"
)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method as HttpMethod, Request, Response, StatusCode};
use keyward_kms::{KeyRef, ProviderKind};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use keyward_kms_gcp::{GcpCredentials, GcpKmsConfig};

/// The project, location and key ring of keys created by [`KmsDouble::create_key`].
pub const KEY_RING: &str = "projects/keyward-test/locations/global/keyRings/keyward";

/// The state of a key version (numbers as in `google.cloud.kms.v1.CryptoKeyVersion.State`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    /// `ENABLED` (1).
    Enabled,
    /// `DISABLED` (2).
    Disabled,
    /// `DESTROYED` (3).
    Destroyed,
    /// `DESTROY_SCHEDULED` (4).
    DestroyScheduled,
}

impl VersionState {
    fn number(self) -> i32 {
        match self {
            VersionState::Enabled => 1,
            VersionState::Disabled => 2,
            VersionState::Destroyed => 3,
            VersionState::DestroyScheduled => 4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            VersionState::Enabled => "ENABLED",
            VersionState::Disabled => "DISABLED",
            VersionState::Destroyed => "DESTROYED",
            VersionState::DestroyScheduled => "DESTROY_SCHEDULED",
        }
    }
}

/// A key purpose other than `ENCRYPT_DECRYPT` (numbers as in
/// `google.cloud.kms.v1.CryptoKey.CryptoKeyPurpose`), for [`KmsDouble::create_key_with_purpose`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPurpose {
    /// `ENCRYPT_DECRYPT` (1): a symmetric encryption key, what Keyward needs.
    EncryptDecrypt,
    /// `ASYMMETRIC_SIGN` (5).
    AsymmetricSign,
    /// `ASYMMETRIC_DECRYPT` (6).
    AsymmetricDecrypt,
    /// `MAC` (9).
    Mac,
}

impl KeyPurpose {
    fn number(self) -> i32 {
        match self {
            KeyPurpose::EncryptDecrypt => 1,
            KeyPurpose::AsymmetricSign => 5,
            KeyPurpose::AsymmetricDecrypt => 6,
            KeyPurpose::Mac => 9,
        }
    }

    fn name(self) -> &'static str {
        match self {
            KeyPurpose::EncryptDecrypt => "ENCRYPT_DECRYPT",
            KeyPurpose::AsymmetricSign => "ASYMMETRIC_SIGN",
            KeyPurpose::AsymmetricDecrypt => "ASYMMETRIC_DECRYPT",
            KeyPurpose::Mac => "MAC",
        }
    }
}

/// An integrity field the double corrupts in its successful answers ([`KmsDouble::set_lie`]):
/// what a response damaged in transit, or a misbehaving endpoint, would look like. Each is one
/// check the provider must make (docs/providers/gcp.md, "Integrity").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lie {
    /// Encrypt answers `verifiedPlaintextCrc32c: false`: the service did not check the
    /// plaintext against the request's checksum.
    UnverifiedPlaintext,
    /// Encrypt answers `verifiedAdditionalAuthenticatedDataCrc32c: false`.
    UnverifiedAad,
    /// Encrypt's `ciphertextCrc32c` does not match the returned ciphertext.
    CiphertextChecksum,
    /// Encrypt names a version of another key (`…/cryptoKeys/<key>-other/cryptoKeyVersions/1`).
    ForeignVersionName,
    /// Encrypt returns an empty ciphertext (with the matching checksum, 0).
    EmptyCiphertext,
    /// Decrypt's `plaintextCrc32c` does not match the returned plaintext.
    PlaintextChecksum,
}

struct Version {
    id: u32,
    state: VersionState,
    material: Zeroizing<[u8; 32]>,
}

struct Key {
    versions: Vec<Version>,
    primary: u32,
    denied: bool,
    purpose: KeyPurpose,
}

#[derive(Default)]
struct State {
    keys: BTreeMap<String, Key>,
    /// (key resource name, method) → calls answered (successful or not).
    calls: BTreeMap<(String, &'static str), u64>,
    /// The next `n` requests fail with this status (name, HTTP code).
    fail_next: Option<(&'static str, u16, u32)>,
    delay: Duration,
    lie: Option<Lie>,
    /// Keyward holds `cloudkms.cryptoKeys.get` on the key ring: unknown keys are `NOT_FOUND`.
    key_ring_viewer: bool,
    /// Encrypt/Decrypt requests that lacked a CRC32C field for their data or AAD.
    without_checksums: u64,
}

/// The Cloud KMS test double; see the module docs.
#[derive(Debug)]
pub struct KmsDouble {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl KmsDouble {
    /// Starts the double on a free port of 127.0.0.1.
    pub fn start() -> KmsDouble {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = state.clone();
        let thread = std::thread::Builder::new()
            .name("gcp-kms-double".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("test double runtime");
                rt.block_on(serve(listener, served, rx));
            })
            .expect("spawn the test double thread");
        KmsDouble {
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A provider configuration for this double: its endpoint, anonymous credentials, a 2 s
    /// call timeout and the member `serviceAccount:keyward@keyward-test.iam.gserviceaccount.com`.
    pub fn config(&self) -> GcpKmsConfig {
        GcpKmsConfig {
            endpoint: Some(self.endpoint()),
            credentials: Some(GcpCredentials::Anonymous),
            member: Some("serviceAccount:keyward@keyward-test.iam.gserviceaccount.com".into()),
            call_timeout_ms: 2000,
            max_attempts: 3,
        }
    }

    /// A provider on this double.
    pub async fn provider(&self) -> keyward_kms_gcp::GcpKmsProvider {
        keyward_kms_gcp::GcpKmsProvider::new(self.config())
            .await
            .expect("a provider on the test double")
    }

    /// The resource name of key `id` in [`KEY_RING`].
    pub fn key_name(id: &str) -> String {
        format!("{KEY_RING}/cryptoKeys/{id}")
    }

    /// The [`KeyRef`] of key `id` in [`KEY_RING`].
    pub fn key_ref(id: &str) -> KeyRef {
        KeyRef::new(ProviderKind::GcpKms, Self::key_name(id))
    }

    /// Creates a symmetric key `id` in [`KEY_RING`] with one enabled primary version.
    pub fn create_key(&self, id: &str) -> KeyRef {
        self.create_key_named(&Self::key_name(id));
        Self::key_ref(id)
    }

    /// Creates a symmetric key with the full resource name `name`.
    pub fn create_key_named(&self, name: &str) {
        self.insert_key(name, KeyPurpose::EncryptDecrypt);
    }

    /// Creates key `id` in [`KEY_RING`] with the given purpose. A key that is not
    /// `ENCRYPT_DECRYPT` reports its purpose on `GET` and refuses Encrypt and Decrypt with
    /// `INVALID_ARGUMENT`, as Cloud KMS does.
    pub fn create_key_with_purpose(&self, id: &str, purpose: KeyPurpose) -> KeyRef {
        self.insert_key(&Self::key_name(id), purpose);
        Self::key_ref(id)
    }

    fn insert_key(&self, name: &str, purpose: KeyPurpose) {
        let mut st = lock(&self.state);
        assert!(
            !st.keys.contains_key(name),
            "test double: key {name} exists"
        );
        let key = Key {
            versions: vec![new_version(1)],
            primary: 1,
            denied: false,
            purpose,
        };
        st.keys.insert(name.to_owned(), key);
    }

    /// Adds a new enabled version to `key` and makes it primary (a rotation); returns its name.
    pub fn rotate(&self, key: &KeyRef) -> String {
        let mut st = lock(&self.state);
        let k = key_mut(&mut st, key.id());
        let id = k.versions.len() as u32 + 1;
        k.versions.push(new_version(id));
        k.primary = id;
        format!("{}/cryptoKeyVersions/{id}", key.id())
    }

    /// The resource name of `key`'s primary version.
    pub fn primary_version(&self, key: &KeyRef) -> String {
        let mut st = lock(&self.state);
        let primary = key_mut(&mut st, key.id()).primary;
        format!("{}/cryptoKeyVersions/{primary}", key.id())
    }

    /// Sets the state of the version `version` (a full CryptoKeyVersion resource name).
    pub fn set_version_state(&self, version: &str, state: VersionState) {
        let (key, id) = version
            .rsplit_once("/cryptoKeyVersions/")
            .expect("a CryptoKeyVersion resource name");
        let id: u32 = id.parse().expect("a version number");
        let mut st = lock(&self.state);
        let k = key_mut(&mut st, key);
        let v = k
            .versions
            .iter_mut()
            .find(|v| v.id == id)
            .unwrap_or_else(|| panic!("test double: no version {version}"));
        v.state = state;
    }

    /// Disables `key`'s primary version, as `gcloud kms keys versions disable` would.
    pub fn disable_primary(&self, key: &KeyRef) {
        self.set_version_state(&self.primary_version(key), VersionState::Disabled);
    }

    /// Re-enables `key`'s primary version.
    pub fn enable_primary(&self, key: &KeyRef) {
        self.set_version_state(&self.primary_version(key), VersionState::Enabled);
    }

    /// Turns the "deny" switch of `key` on or off: while on, every call on the key and its
    /// versions answers `PERMISSION_DENIED` (as after removing Keyward's IAM binding).
    pub fn set_denied(&self, key: &KeyRef, denied: bool) {
        key_mut(&mut lock(&self.state), key.id()).denied = denied;
    }

    /// How many `method` calls (`"encrypt"`, `"decrypt"`, `"get"`) on `key` (or its versions)
    /// the double answered.
    pub fn calls(&self, key: &KeyRef, method: &str) -> u64 {
        lock(&self.state)
            .calls
            .iter()
            .filter(|((k, m), _)| k == key.id() && *m == method)
            .map(|(_, n)| *n)
            .sum()
    }

    /// The next `n` requests (any key) fail with `status` (`"UNAVAILABLE"`,
    /// `"RESOURCE_EXHAUSTED"`, `"DEADLINE_EXCEEDED"`, `"INTERNAL"`, …).
    pub fn fail_next(&self, n: u32, status: &'static str) {
        lock(&self.state).fail_next = Some((status, http_code(status), n));
    }

    /// Every answer is delayed by `delay` (simulated latency, for timeout tests).
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.state).delay = delay;
    }

    /// From now on, corrupt `lie`'s field in every successful answer it applies to (`None`:
    /// answer truthfully again).
    pub fn set_lie(&self, lie: Option<Lie>) {
        lock(&self.state).lie = lie;
    }

    /// Whether Keyward's identity holds `cloudkms.cryptoKeys.get` on the key ring (or project):
    /// then an unknown key is `NOT_FOUND`; without it (the default, and what Keyward's onboarding
    /// grants) `PERMISSION_DENIED`.
    pub fn set_key_ring_viewer(&self, viewer: bool) {
        lock(&self.state).key_ring_viewer = viewer;
    }

    /// How many Encrypt/Decrypt requests lacked a CRC32C field for their plaintext or
    /// ciphertext, or for their (non-empty) additional authenticated data.
    pub fn requests_without_checksums(&self) -> u64 {
        lock(&self.state).without_checksums
    }
}

impl Drop for KmsDouble {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn key_mut<'a>(st: &'a mut State, name: &str) -> &'a mut Key {
    st.keys
        .get_mut(name)
        .unwrap_or_else(|| panic!("test double: no key {name}"))
}

fn new_version(id: u32) -> Version {
    let mut material = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(material.as_mut()).expect("system RNG");
    Version {
        id,
        state: VersionState::Enabled,
        material,
    }
}

fn http_code(status: &str) -> u16 {
    match status {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => 400,
        "UNAUTHENTICATED" => 401,
        "PERMISSION_DENIED" => 403,
        "NOT_FOUND" => 404,
        "RESOURCE_EXHAUSTED" => 429,
        "UNAVAILABLE" => 503,
        "DEADLINE_EXCEEDED" => 504,
        _ => 500,
    }
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<Mutex<State>>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
    connections.abort_all();
}

type Answer = Response<Full<Bytes>>;

fn ok(body: Value) -> Answer {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json; charset=UTF-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// Google's JSON error body (AIP-193).
fn error(status: &str, message: impl Into<String>) -> Answer {
    let code = http_code(status);
    let body = json!({"error": {"code": code, "message": message.into(), "status": status}});
    Response::builder()
        .status(code)
        .header("content-type", "application/json; charset=UTF-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// A request the double refuses: a Google status name and message.
struct Rejection(&'static str, String);

fn reject(status: &'static str, message: impl Into<String>) -> Rejection {
    Rejection(status, message.into())
}

/// A CryptoKey name and, for version paths, the version id.
fn split_name(name: &str) -> Option<(String, Option<u32>)> {
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        [
            "projects",
            _,
            "locations",
            _,
            "keyRings",
            _,
            "cryptoKeys",
            k,
        ] if !k.is_empty() => Some((name.to_owned(), None)),
        [
            "projects",
            _,
            "locations",
            _,
            "keyRings",
            _,
            "cryptoKeys",
            _,
            "cryptoKeyVersions",
            v,
        ] => {
            let (key, _) = name.rsplit_once("/cryptoKeyVersions/")?;
            Some((key.to_owned(), Some(v.parse().ok()?)))
        }
        _ => None,
    }
}

async fn handle(state: &Mutex<State>, req: Request<Incoming>) -> Answer {
    let delay = lock(state).delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error("INVALID_ARGUMENT", "unreadable request body"),
    };
    let Some(rest) = path.strip_prefix("/v1/") else {
        return error("NOT_FOUND", format!("no such path {path}"));
    };
    let (name, verb): (&str, &'static str) = match (&method, rest.rsplit_once(':')) {
        (&HttpMethod::POST, Some((name, "encrypt"))) => (name, "encrypt"),
        (&HttpMethod::POST, Some((name, "decrypt"))) => (name, "decrypt"),
        (&HttpMethod::GET, _) => (rest, "get"),
        _ => return error("NOT_FOUND", format!("no such method {method} {path}")),
    };
    let Some((key_name, version)) = split_name(name) else {
        return error(
            "INVALID_ARGUMENT",
            format!("Resource name [{name}] does not match any known type"),
        );
    };

    let mut st = lock(state);
    *st.calls.entry((key_name.clone(), verb)).or_default() += 1;
    if let Some((status, _, n)) = st.fail_next {
        st.fail_next = (n > 1).then_some((status, http_code(status), n - 1));
        return error(status, "injected by the test double");
    }
    if matches!(verb, "encrypt" | "decrypt")
        && let Ok(body) = parse_json(&body)
    {
        let (data, crc) = if verb == "encrypt" {
            ("plaintext", "plaintextCrc32c")
        } else {
            ("ciphertext", "ciphertextCrc32c")
        };
        let aad_present = body
            .get("additionalAuthenticatedData")
            .is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty()));
        let missing = (body.get(data).is_some() && body.get(crc).is_none())
            || (aad_present && body.get("additionalAuthenticatedDataCrc32c").is_none());
        if missing {
            st.without_checksums += 1;
        }
    }
    let denied = |permission_of: fn(&'static str, bool) -> &'static str| {
        let permission = permission_of(verb, version.is_some());
        error(
            "PERMISSION_DENIED",
            format!("Permission '{permission}' denied on resource '{name}' (or it may not exist)."),
        )
    };
    let Some(key) = st.keys.get(&key_name) else {
        // IAM before existence: only a caller that may read the key ring learns it is missing.
        if st.key_ring_viewer {
            return error("NOT_FOUND", format!("{key_name} not found."));
        }
        return denied(permission);
    };
    if key.denied {
        return denied(permission);
    }
    let lie = st.lie;
    let answer = match verb {
        "get" => match version {
            None => Ok(crypto_key_json(&key_name, key)),
            Some(id) => match key.versions.iter().find(|v| v.id == id) {
                Some(v) => Ok(version_json(&key_name, v)),
                None => Err(reject("NOT_FOUND", format!("{name} not found."))),
            },
        },
        "encrypt" => encrypt(&key_name, key, version, &body),
        _ if version.is_some() => Err(reject(
            "INVALID_ARGUMENT",
            "Decrypt takes a CryptoKey name, not a CryptoKeyVersion name.",
        )),
        _ => decrypt(&key_name, key, &body),
    };
    match answer {
        Ok(mut body) => {
            if let Some(lie) = lie {
                tell(lie, verb, &key_name, &mut body);
            }
            ok(body)
        }
        Err(r) => error(r.0, r.1),
    }
}

/// The IAM permission a call needs.
fn permission(verb: &'static str, on_version: bool) -> &'static str {
    match verb {
        "encrypt" => "cloudkms.cryptoKeyVersions.useToEncrypt",
        "decrypt" => "cloudkms.cryptoKeyVersions.useToDecrypt",
        _ if on_version => "cloudkms.cryptoKeyVersions.get",
        _ => "cloudkms.cryptoKeys.get",
    }
}

/// Corrupts `lie`'s field of a successful `verb` answer (other answers are left alone).
fn tell(lie: Lie, verb: &str, key_name: &str, body: &mut Value) {
    let flipped = |v: &Value| {
        let crc: u32 = v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
        json!((crc ^ 1).to_string())
    };
    match (lie, verb) {
        (Lie::UnverifiedPlaintext, "encrypt") => body["verifiedPlaintextCrc32c"] = json!(false),
        (Lie::UnverifiedAad, "encrypt") => {
            body["verifiedAdditionalAuthenticatedDataCrc32c"] = json!(false);
        }
        (Lie::CiphertextChecksum, "encrypt") => {
            body["ciphertextCrc32c"] = flipped(&body["ciphertextCrc32c"]);
        }
        (Lie::ForeignVersionName, "encrypt") => {
            body["name"] = json!(format!("{key_name}-other/cryptoKeyVersions/1"));
        }
        (Lie::EmptyCiphertext, "encrypt") => {
            body["ciphertext"] = json!("");
            body["ciphertextCrc32c"] = json!("0");
        }
        (Lie::PlaintextChecksum, "decrypt") => {
            body["plaintextCrc32c"] = flipped(&body["plaintextCrc32c"]);
        }
        _ => {}
    }
}

fn version_name(key: &str, id: u32) -> String {
    format!("{key}/cryptoKeyVersions/{id}")
}

fn version_json(key: &str, v: &Version) -> Value {
    json!({
        "name": version_name(key, v.id),
        "state": v.state.number(),
        "protectionLevel": 1,      // SOFTWARE
        "algorithm": 1,            // GOOGLE_SYMMETRIC_ENCRYPTION
        "createTime": "2026-01-01T00:00:00Z",
    })
}

fn crypto_key_json(name: &str, key: &Key) -> Value {
    let mut out = json!({
        "name": name,
        "purpose": key.purpose.number(),
        "createTime": "2026-01-01T00:00:00Z",
        "versionTemplate": {"protectionLevel": 1, "algorithm": 1},
    });
    if let Some(p) = key.versions.iter().find(|v| v.id == key.primary) {
        out["primary"] = version_json(name, p);
    }
    out
}

/// A bytes field (base64) of the request; absent = empty.
fn bytes_field(body: &Value, field: &str) -> Result<Vec<u8>, Rejection> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => B64.decode(s).map_err(|_| {
            reject(
                "INVALID_ARGUMENT",
                format!("Invalid value at '{field}' (TYPE_BYTES), Base64 decoding failed"),
            )
        }),
        Some(_) => Err(reject(
            "INVALID_ARGUMENT",
            format!("Invalid value at '{field}' (TYPE_BYTES)"),
        )),
    }
}

/// An optional int64 wrapper field: a JSON string (proto3 JSON) or number.
fn int64_field(body: &Value, field: &str) -> Result<Option<i64>, Rejection> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| {
            reject(
                "INVALID_ARGUMENT",
                format!("Invalid value at '{field}' (TYPE_INT64)"),
            )
        }),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| {
            reject(
                "INVALID_ARGUMENT",
                format!("Invalid value at '{field}' (TYPE_INT64)"),
            )
        }),
        Some(_) => Err(reject(
            "INVALID_ARGUMENT",
            format!("Invalid value at '{field}' (TYPE_INT64)"),
        )),
    }
}

fn check_crc(
    data: &[u8],
    crc: Option<i64>,
    field: &str,
    data_field: &str,
) -> Result<bool, Rejection> {
    match crc {
        None => Ok(false),
        Some(c) if c == i64::from(crc32c::crc32c(data)) => Ok(true),
        Some(_) => Err(reject(
            "INVALID_ARGUMENT",
            format!("The checksum in field {field} did not match the data in field {data_field}."),
        )),
    }
}

fn parse_json(body: &Bytes) -> Result<Value, Rejection> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|_| reject("INVALID_ARGUMENT", "Invalid JSON payload received."))
}

fn not_enabled(key: &str, v: &Version) -> Rejection {
    reject(
        "FAILED_PRECONDITION",
        format!(
            "{} is not enabled, current state is: {}.",
            version_name(key, v.id),
            v.state.name()
        ),
    )
}

fn gcm(v: &Version) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, v.material.as_ref()).expect("32-byte key"))
}

/// Cloud KMS refuses Encrypt and Decrypt on a key that is not a symmetric encryption key.
fn require_encrypt_decrypt(key_name: &str, key: &Key) -> Result<(), Rejection> {
    if key.purpose == KeyPurpose::EncryptDecrypt {
        return Ok(());
    }
    Err(reject(
        "INVALID_ARGUMENT",
        format!(
            "{key_name} has purpose {}; this operation requires ENCRYPT_DECRYPT.",
            key.purpose.name()
        ),
    ))
}

fn encrypt(
    key_name: &str,
    key: &Key,
    version: Option<u32>,
    body: &Bytes,
) -> Result<Value, Rejection> {
    {
        require_encrypt_decrypt(key_name, key)?;
        let body = parse_json(body)?;
        let plaintext = Zeroizing::new(bytes_field(&body, "plaintext")?);
        let aad = bytes_field(&body, "additionalAuthenticatedData")?;
        if plaintext.is_empty() {
            return Err(reject("INVALID_ARGUMENT", "Plaintext is required."));
        }
        if plaintext.len() > 65536 || aad.len() > 65536 {
            return Err(reject(
                "INVALID_ARGUMENT",
                "The plaintext and additional authenticated data must each be at most 64 KiB.",
            ));
        }
        let pt_ok = check_crc(
            &plaintext,
            int64_field(&body, "plaintextCrc32c")?,
            "plaintext_crc32c",
            "plaintext",
        )?;
        let aad_ok = check_crc(
            &aad,
            int64_field(&body, "additionalAuthenticatedDataCrc32c")?,
            "additional_authenticated_data_crc32c",
            "additional_authenticated_data",
        )?;
        let id = version.unwrap_or(key.primary);
        let Some(v) = key.versions.iter().find(|v| v.id == id) else {
            return Err(reject(
                "NOT_FOUND",
                format!("{} not found.", version_name(key_name, id)),
            ));
        };
        if v.state != VersionState::Enabled {
            return Err(not_enabled(key_name, v));
        }
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("system RNG");
        let mut sealed = plaintext.to_vec();
        gcm(v)
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_slice()),
                &mut sealed,
            )
            .expect("AES-GCM seal");
        let mut ciphertext = v.id.to_be_bytes().to_vec();
        ciphertext.extend_from_slice(&nonce);
        ciphertext.extend_from_slice(&sealed);
        Ok(json!({
            "name": version_name(key_name, v.id),
            "ciphertext": B64.encode(&ciphertext),
            "ciphertextCrc32c": crc32c::crc32c(&ciphertext).to_string(),
            "verifiedPlaintextCrc32c": pt_ok,
            "verifiedAdditionalAuthenticatedDataCrc32c": aad_ok,
            "protectionLevel": 1,
        }))
    }
}

fn decrypt(key_name: &str, key: &Key, body: &Bytes) -> Result<Value, Rejection> {
    {
        require_encrypt_decrypt(key_name, key)?;
        let body = parse_json(body)?;
        let ciphertext = bytes_field(&body, "ciphertext")?;
        let aad = bytes_field(&body, "additionalAuthenticatedData")?;
        if ciphertext.is_empty() {
            return Err(reject("INVALID_ARGUMENT", "Ciphertext is required."));
        }
        check_crc(
            &ciphertext,
            int64_field(&body, "ciphertextCrc32c")?,
            "ciphertext_crc32c",
            "ciphertext",
        )?;
        check_crc(
            &aad,
            int64_field(&body, "additionalAuthenticatedDataCrc32c")?,
            "additional_authenticated_data_crc32c",
            "additional_authenticated_data",
        )?;
        let invalid = || {
            reject(
                "INVALID_ARGUMENT",
                "Decryption failed: the ciphertext is invalid.",
            )
        };
        let (head, rest) = ciphertext.split_at_checked(4).ok_or_else(invalid)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN).ok_or_else(invalid)?;
        let id = u32::from_be_bytes(head.try_into().map_err(|_| invalid())?);
        let v = key
            .versions
            .iter()
            .find(|v| v.id == id)
            .ok_or_else(invalid)?;
        if v.state != VersionState::Enabled {
            return Err(not_enabled(key_name, v));
        }
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| invalid())?;
        let mut buf = Zeroizing::new(sealed.to_vec());
        let plain = gcm(v)
            .open_in_place(nonce, Aad::from(aad.as_slice()), &mut buf)
            .map_err(|_| {
                reject(
                    "INVALID_ARGUMENT",
                    "Decryption failed: verify that 'name' refers to the correct CryptoKey.",
                )
            })?;
        Ok(json!({
            "plaintext": B64.encode(&*plain),
            "plaintextCrc32c": crc32c::crc32c(plain).to_string(),
            "usedPrimary": v.id == key.primary,
            "protectionLevel": 1,
        }))
    }
}
