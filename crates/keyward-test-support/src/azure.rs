//! A **test double** of Azure Key Vault / Managed HSM and of the Microsoft Entra ID token
//! endpoint, for tests only (`keyward-test-support`, feature `azure`; for `keyward-kms-azure`'s
//! tests, the server's tests and the end-to-end tests).
//!
//! There is no Key Vault emulator, so this module serves the documented REST endpoints that
//! the official SDK client calls, over HTTPS on 127.0.0.1, to the unmodified client:
//!
//! - `POST /{tenant}/oauth2/v2.0/token` on `login.keyward-test.invalid` — the OAuth 2.0 client
//!   credentials grant (`client_secret`, or `client_assertion` for workload identity), for the
//!   scope `https://vault.azure.net/.default` (`https://managedhsm.azure.net/.default`);
//! - `GET /keys/{name}[/{version}]`, `POST /keys/{name}/{version}/wrapkey`,
//!   `POST /keys/{name}/{version}/unwrapkey` and `GET /deletedkeys/{name}` (each with
//!   `api-version`) on
//!   `kwtest.vault.azure.net` (or `kwtest.managedhsm.azure.net`).
//!
//! Like Key Vault, it answers a request without a valid bearer token with `401` and
//! `WWW-Authenticate: Bearer authorization="…", resource="https://vault.azure.net"` (the SDK's
//! first request is always such a probe), and errors with Key Vault's JSON error bodies
//! (`{"error":{"code":"Forbidden","message":"…","innererror":{"code":"KeyDisabled"}}}`).
//! The cryptography is real (aws-lc-rs): RSA-OAEP-256 with 2048-bit keys, AES-256 key wrap
//! (RFC 3394) on Managed HSM AES keys; a wrong ciphertext fails to unwrap with `400
//! BadParameter`. Key states: enabled/disabled per version, `exp`/`nbf` (wrap refused outside the
//! window, unwrap still allowed — Key Vault's documented behaviour), soft deletion (`404
//! KeyNotFound`, then listed under `/deletedkeys` until purged or recovered), a per-key deny
//! switch (`403 Forbidden`/`ForbiddenByRbac`, as a removed role assignment), a per-key
//! read-only switch (`GET` allowed, `wrapKey`/`unwrapKey` `403 ForbiddenByRbac`, as a role such
//! as "Key Vault Reader" that may read a key but not use it), a switch that forbids reading
//! deleted keys, injected failures (e.g. `429`, `503`), added latency, and call counting.
//!
//! Keys Keyward must refuse at registration can be made too: an EC key
//! ([`KeyVaultDouble::create_ec_key`]), an RSA key smaller than 2048 bits
//! ([`KeyVaultDouble::create_small_rsa_key`]: its public numbers only — aws-lc-rs generates no
//! RSA key below 2048 bits, so its `wrapKey`/`unwrapKey` answer `400`, which Keyward never
//! reaches), and a key whose `key_ops` lack `wrapKey` or `unwrapKey`
//! ([`KeyVaultDouble::set_key_ops`]; the double then refuses the missing operation with `403`).
//!
//! Tokens: [`KeyVaultDouble::revoke_tokens`] forgets every issued token (the vault answers the
//! next request with the `401` challenge, as after a token was revoked or the vault's tenant
//! changed), and [`KeyVaultDouble::refuse_tokens`] makes the token endpoint refuse the client
//! (`401 invalid_client`, as after the client secret expired or the app was disabled).
//!
//! The client reaches the double through the provider's ordinary configuration: `resolve` maps
//! both host names to the double's 127.0.0.1 port (so the SDK's check that the challenge resource
//! matches the vault's domain passes honestly), `ca_file` trusts the per-double CA that signed
//! its certificate, and `authority_host` points the client-secret credential at the double's
//! token endpoint. Nothing reaches a real identity or metadata endpoint: `.invalid` never
//! resolves, and the vault host is always overridden.
//!
//! Error message texts and the `403` body for a wrap outside the `exp`/`nbf` window are modelled
//! on Key Vault's, not copied from it; Keyward never reads message texts.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test support code: a broken test double should fail the test loudly"
)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrap};
use aws_lc_rs::rsa::{
    KeyPair, KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
    PrivateDecryptingKey,
};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use keyward_kms::{KeyRef, ProviderKind};
use serde_json::{Value, json};

use keyward_kms_azure::{
    AzureCredentialConfig, AzureKeyVaultConfig, AzureKeyVaultProvider, VaultKind,
};

/// The vault (or HSM) name the double serves.
pub const VAULT_NAME: &str = "kwtest";
/// The identity host the double serves (`.invalid` never resolves without the override).
pub const LOGIN_HOST: &str = "login.keyward-test.invalid";
/// The tenant id the double's token endpoint accepts.
pub const TENANT_ID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// The client id the double's token endpoint accepts.
pub const CLIENT_ID: &str = "5e0c2b1a-6f7d-4c8e-9a0b-1c2d3e4f5a6b";

/// A Key Vault operation, for [`KeyVaultDouble::calls`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    /// A token issued by the token endpoint.
    Token,
    /// A request answered with the 401 bearer challenge.
    Challenge,
    /// `GET /keys/…`.
    GetKey,
    /// `POST …/wrapkey`.
    WrapKey,
    /// `POST …/unwrapkey`.
    UnwrapKey,
    /// `GET /deletedkeys/…`.
    GetDeletedKey,
}

enum Material {
    Rsa {
        private: OaepPrivateDecryptingKey,
        public: OaepPublicEncryptingKey,
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Aes([u8; 32]),
    /// The public numbers of an RSA key too small to be generated here (see the module docs).
    RsaPublicOnly {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// A P-256 key (`kty: EC`): its public point only; Key Vault cannot wrap with EC keys.
    Ec {
        x: [u8; 32],
        y: [u8; 32],
    },
}

struct Version {
    id: String,
    material: Material,
    enabled: bool,
    exp: Option<i64>,
    nbf: Option<i64>,
    created: i64,
    /// `key_ops` when set by [`KeyVaultDouble::set_key_ops`]; else the material's default.
    key_ops: Option<Vec<String>>,
}

#[derive(Default)]
struct DoubleKey {
    versions: Vec<Version>,
    /// When the key was (soft-)deleted, seconds since the epoch.
    deleted: Option<i64>,
    denied: bool,
    /// `GET` allowed, `wrapKey`/`unwrapKey` forbidden.
    read_only: bool,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, DoubleKey>,
    tokens: HashSet<String>,
    calls: HashMap<Call, u64>,
    inject: VecDeque<(u16, String)>,
    /// `GET /deletedkeys/…` answers `403 ForbiddenByRbac` (a role without deletedKeys/read).
    deleted_keys_forbidden: bool,
    latency: Duration,
    /// The token endpoint answers `401 invalid_client` to every request.
    tokens_refused: bool,
    secret: String,
    federated_token: String,
}

struct Shared {
    kind: VaultKind,
    vault_host: String,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running Key Vault (or Managed HSM) double with its token endpoint.
pub struct KeyVaultDouble {
    shared: Arc<Shared>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    ca_file: PathBuf,
    secret_file: PathBuf,
    token_file: PathBuf,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for KeyVaultDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVaultDouble")
            .field("vault_host", &self.shared.vault_host)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for KeyVaultDouble {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    hex::encode(b)
}

impl KeyVaultDouble {
    /// Starts a double of a Key Vault (`kwtest.vault.azure.net`) or Managed HSM
    /// (`kwtest.managedhsm.azure.net`) on 127.0.0.1, with a fresh CA and certificate.
    pub async fn start(kind: VaultKind) -> KeyVaultDouble {
        let vault_host = match kind {
            VaultKind::KeyVault => format!("{VAULT_NAME}.vault.azure.net"),
            VaultKind::ManagedHsm => format!("{VAULT_NAME}.managedhsm.azure.net"),
        };
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, server_config) = tls(&[vault_host.clone(), LOGIN_HOST.to_owned()]);
        let ca_file = dir.path().join("double-ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        let secret = random_hex(16);
        let secret_file = dir.path().join("client-secret");
        write_private(&secret_file, &format!("{secret}\n"));
        let federated_token = format!("eyJ.{}.sig", random_hex(16));
        let token_file = dir.path().join("federated-token");
        write_private(&token_file, &federated_token);

        let shared = Arc::new(Shared {
            kind,
            vault_host,
            state: Mutex::new(State {
                secret,
                federated_token,
                ..State::default()
            }),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let s = shared.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let s = s.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| handle(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        KeyVaultDouble {
            shared,
            addr,
            dir,
            ca_file,
            secret_file,
            token_file,
            server,
        }
    }

    /// The vault's host name.
    pub fn vault_host(&self) -> &str {
        &self.shared.vault_host
    }

    /// The double's 127.0.0.1 address (both host names resolve to it).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The PEM file of the double's CA.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// A private directory that lives as long as the double.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A provider configuration that reaches the double with the client-secret credential
    /// (secret in a mode-600 file), one attempt per request and a 5 s call timeout.
    pub fn config(&self) -> AzureKeyVaultConfig {
        AzureKeyVaultConfig {
            credential: Some(AzureCredentialConfig::ClientSecret {
                tenant_id: TENANT_ID.to_owned(),
                client_id: CLIENT_ID.to_owned(),
                secret_file: Some(self.secret_file.clone()),
                secret_env: None,
            }),
            authority_host: Some(format!("https://{LOGIN_HOST}")),
            ca_file: Some(self.ca_file.clone()),
            resolve: BTreeMap::from([
                (self.shared.vault_host.clone(), self.addr),
                (LOGIN_HOST.to_owned(), self.addr),
            ]),
            max_attempts: 1,
            ..AzureKeyVaultConfig::default()
        }
    }

    /// Like [`KeyVaultDouble::config`], with the workload-identity credential (federated token
    /// file).
    pub fn workload_identity_config(&self) -> AzureKeyVaultConfig {
        AzureKeyVaultConfig {
            credential: Some(AzureCredentialConfig::WorkloadIdentity {
                tenant_id: TENANT_ID.to_owned(),
                client_id: CLIENT_ID.to_owned(),
                token_file: self.token_file.clone(),
            }),
            ..self.config()
        }
    }

    /// A provider built from [`KeyVaultDouble::config`].
    pub fn provider(&self) -> AzureKeyVaultProvider {
        AzureKeyVaultProvider::new(self.config()).unwrap()
    }

    /// The versionless key id of `name` in this vault.
    pub fn key_id(&self, name: &str) -> String {
        format!("https://{}/keys/{name}", self.shared.vault_host)
    }

    /// The versionless key reference of `name` in this vault.
    pub fn key_ref(&self, name: &str) -> KeyRef {
        KeyRef::new(ProviderKind::AzureKeyVault, self.key_id(name))
    }

    /// Creates (or adds a version to) an RSA 2048 key; returns its versionless reference.
    pub fn create_rsa_key(&self, name: &str) -> KeyRef {
        let kp = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let (n, e) = rsa_public_numbers(kp.public_key().as_ref());
        let pkcs8 = kp.as_der().unwrap();
        let private = PrivateDecryptingKey::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public = OaepPublicEncryptingKey::new(private.public_key()).unwrap();
        let private = OaepPrivateDecryptingKey::new(private).unwrap();
        self.add_version(
            name,
            Material::Rsa {
                private,
                public,
                n,
                e,
            },
        )
    }

    /// Creates (or adds a version to) a 256-bit AES key (Managed HSM `oct-HSM`).
    pub fn create_aes_key(&self, name: &str) -> KeyRef {
        assert_eq!(
            self.shared.kind,
            VaultKind::ManagedHsm,
            "AES keys live in a Managed HSM"
        );
        let mut k = [0u8; 32];
        aws_lc_rs::rand::fill(&mut k).unwrap();
        self.add_version(name, Material::Aes(k))
    }

    fn add_version(&self, name: &str, material: Material) -> KeyRef {
        let mut st = self.shared.lock();
        let key = st.keys.entry(name.to_owned()).or_default();
        key.deleted = None;
        key.versions.push(Version {
            id: random_hex(16),
            material,
            enabled: true,
            exp: None,
            nbf: None,
            created: now(),
            key_ops: None,
        });
        drop(st);
        self.key_ref(name)
    }

    /// Creates (or adds a version to) a P-256 EC key (`kty: EC`, `EC-HSM` in a Managed HSM;
    /// `key_ops` `sign`, `verify`), which cannot wrap keys.
    pub fn create_ec_key(&self, name: &str) -> KeyRef {
        let mut x = [0u8; 32];
        let mut y = [0u8; 32];
        aws_lc_rs::rand::fill(&mut x).unwrap();
        aws_lc_rs::rand::fill(&mut y).unwrap();
        self.add_version(name, Material::Ec { x, y })
    }

    /// Creates (or adds a version to) an RSA key of `bits` bits (below 2048: a modulus with the
    /// top bit set and public exponent 65537; see the module docs).
    pub fn create_small_rsa_key(&self, name: &str, bits: usize) -> KeyRef {
        assert!(
            bits.is_multiple_of(8) && bits < 2048,
            "create_rsa_key makes 2048-bit keys"
        );
        let mut n = vec![0u8; bits / 8];
        aws_lc_rs::rand::fill(&mut n).unwrap();
        n[0] |= 0x80;
        if let Some(last) = n.last_mut() {
            *last |= 1;
        }
        self.add_version(
            name,
            Material::RsaPublicOnly {
                n,
                e: vec![1, 0, 1],
            },
        )
    }

    /// Sets the current version's `key_ops` (the operations the key permits), as
    /// `az keyvault key set-attributes --ops` does.
    pub fn set_key_ops(&self, name: &str, ops: &[&str]) {
        let ops = ops.iter().map(|o| (*o).to_owned()).collect();
        self.with_latest(name, |v| v.key_ops = Some(ops));
    }

    /// What anyone who has read the public half of RSA key `name` (`GET /keys/{name}` returns
    /// its `n` and `e`) can make without the vault and without any permission on the key: `key`
    /// wrapped for the current version exactly as the provider wraps (keyward-kms-azure's
    /// wrapped_key_format.rs, through `for_test_support::seal_rsa_oaep256`), with no `wrapKey`
    /// call (RSA-OAEP needs only the public key). It unwraps through the vault like a genuine
    /// wrap; docs/adr/0007-tenant-key-mac.md is why Keyward does not take it.
    pub fn forge_with_public_key(
        &self,
        name: &str,
        key: &keyward_envelope::SecretKey,
        ctx: &keyward_kms::WrapContext,
    ) -> keyward_envelope::WrappedKey {
        let st = self.shared.lock();
        let v = st
            .keys
            .get(name)
            .and_then(|k| k.versions.last())
            .unwrap_or_else(|| panic!("no key {name} in the double"));
        let Material::Rsa { public, .. } = &v.material else {
            panic!("{name} is not an RSA key");
        };
        let mut k = [0u8; 32];
        let mut nonce = [0u8; 12];
        aws_lc_rs::rand::fill(&mut k).unwrap();
        aws_lc_rs::rand::fill(&mut nonce).unwrap();
        let mut out = vec![0u8; public.ciphertext_size()];
        let vault_wrapped = public
            .encrypt(&OAEP_SHA256_MGF1SHA256, &k, &mut out, None)
            .unwrap();
        let bytes = keyward_kms_azure::for_test_support::seal_rsa_oaep256(
            &v.id,
            vault_wrapped,
            &k,
            nonce,
            key,
            ctx,
        )
        .unwrap();
        keyward_envelope::WrappedKey::new(bytes)
    }

    /// The versions of `name`, oldest first.
    pub fn versions(&self, name: &str) -> Vec<String> {
        let st = self.shared.lock();
        st.keys
            .get(name)
            .map(|k| k.versions.iter().map(|v| v.id.clone()).collect())
            .unwrap_or_default()
    }

    fn with_latest(&self, name: &str, f: impl FnOnce(&mut Version)) {
        let mut st = self.shared.lock();
        let v = st
            .keys
            .get_mut(name)
            .and_then(|k| k.versions.last_mut())
            .unwrap_or_else(|| panic!("no key {name} in the double"));
        f(v);
    }

    /// Enables or disables the current version, like `az keyvault key set-attributes --enabled`.
    pub fn set_enabled(&self, name: &str, enabled: bool) {
        self.with_latest(name, |v| v.enabled = enabled);
    }

    /// Enables or disables one version.
    pub fn set_version_enabled(&self, name: &str, version: &str, enabled: bool) {
        let mut st = self.shared.lock();
        let v = st
            .keys
            .get_mut(name)
            .and_then(|k| k.versions.iter_mut().find(|v| v.id == version))
            .unwrap();
        v.enabled = enabled;
    }

    /// Sets the current version's `exp` (seconds since the epoch).
    pub fn set_expires(&self, name: &str, exp: Option<i64>) {
        self.with_latest(name, |v| v.exp = exp);
    }

    /// Sets the current version's `nbf` (seconds since the epoch).
    pub fn set_not_before(&self, name: &str, nbf: Option<i64>) {
        self.with_latest(name, |v| v.nbf = nbf);
    }

    /// Deletes the key (all versions), like `az keyvault key delete` on a vault with soft-delete
    /// (every vault now): `GET /keys/{name}` is `404 KeyNotFound`, `GET /deletedkeys/{name}`
    /// shows it until [`KeyVaultDouble::purge`], and [`KeyVaultDouble::recover`] brings it back.
    pub fn delete(&self, name: &str) {
        if let Some(k) = self.shared.lock().keys.get_mut(name) {
            k.deleted = Some(now());
        }
    }

    /// Recovers a deleted key, like `az keyvault key recover`.
    pub fn recover(&self, name: &str) {
        if let Some(k) = self.shared.lock().keys.get_mut(name) {
            k.deleted = None;
        }
    }

    /// Purges a deleted key for good, like `az keyvault key purge`.
    pub fn purge(&self, name: &str) {
        let mut st = self.shared.lock();
        if st.keys.get(name).is_some_and(|k| k.deleted.is_some()) {
            st.keys.remove(name);
        }
    }

    /// Makes `GET /deletedkeys/…` answer `403 ForbiddenByRbac` (or not), as for an identity
    /// whose role lacks `Microsoft.KeyVault/vaults/deletedKeys/read`.
    pub fn forbid_deleted_key_reads(&self, forbidden: bool) {
        self.shared.lock().deleted_keys_forbidden = forbidden;
    }

    /// Denies (or allows again) every operation on the key with `403 Forbidden`, as a removed
    /// role assignment does.
    pub fn deny(&self, name: &str, denied: bool) {
        if let Some(k) = self.shared.lock().keys.get_mut(name) {
            k.denied = denied;
        }
    }

    /// Lets Keyward's identity read the key (`GET`) but not use it: `wrapKey` and `unwrapKey`
    /// answer `403 Forbidden`/`ForbiddenByRbac`, as for a role assignment such as "Key Vault
    /// Reader" instead of "Key Vault Crypto Service Encryption User".
    pub fn set_read_only(&self, name: &str, read_only: bool) {
        if let Some(k) = self.shared.lock().keys.get_mut(name) {
            k.read_only = read_only;
        }
    }

    /// Makes the token endpoint refuse (or accept again) the client: `401 invalid_client`
    /// (`AADSTS7000222`, an expired client secret).
    pub fn refuse_tokens(&self, refused: bool) {
        self.shared.lock().tokens_refused = refused;
    }

    /// Answers the next authenticated vault request with `status` and Key Vault error `code`.
    pub fn inject_failure(&self, status: u16, code: &str) {
        self.shared
            .lock()
            .inject
            .push_back((status, code.to_owned()));
    }

    /// Delays every answer by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// How many times `call` was answered.
    pub fn calls(&self, call: Call) -> u64 {
        self.shared.lock().calls.get(&call).copied().unwrap_or(0)
    }

    /// Forgets every issued token (the next request gets the 401 challenge again).
    pub fn revoke_tokens(&self) {
        self.shared.lock().tokens.clear();
    }
}

/// `n` and `e` of a DER RSAPublicKey (RFC 8017 A.1.1: SEQUENCE { INTEGER n, INTEGER e }).
fn rsa_public_numbers(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    fn item(d: &[u8], tag: u8) -> (&[u8], &[u8]) {
        assert_eq!(d[0], tag, "unexpected DER tag");
        let (len, skip) = match d[1] {
            l if l < 0x80 => (usize::from(l), 2),
            0x81 => (usize::from(d[2]), 3),
            0x82 => (usize::from(u16::from_be_bytes([d[2], d[3]])), 4),
            _ => panic!("unexpected DER length"),
        };
        (&d[skip..skip + len], &d[skip + len..])
    }
    let (seq, _) = item(der, 0x30);
    let (n, rest) = item(seq, 0x02);
    let (e, _) = item(rest, 0x02);
    let strip = |x: &[u8]| {
        x.iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect::<Vec<u8>>()
    };
    (strip(n), strip(e))
}

fn write_private(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// A CA (PEM) and a server config whose certificate has `hosts` as DNS SANs.
fn tls(hosts: &[String]) -> (String, rustls::ServerConfig) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Key Vault test double CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(hosts.to_vec()).unwrap();
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (issuer.pem(), config)
}

type Answer = Response<Full<Bytes>>;

fn json_answer(status: u16, body: &Value) -> Answer {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// Key Vault's error body.
fn kv_error(status: u16, code: &str, message: &str, inner: Option<&str>) -> Answer {
    let mut error = json!({ "code": code, "message": message });
    if let Some(inner) = inner {
        error["innererror"] = json!({ "code": inner });
    }
    json_answer(status, &json!({ "error": error }))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

async fn handle(s: Arc<Shared>, req: Request<Incoming>) -> Result<Answer, Infallible> {
    let latency = s.lock().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.split(':').next().unwrap_or(h).to_ascii_lowercase())
        .unwrap_or_default();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let auth = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok(if host == LOGIN_HOST {
        token_endpoint(&s, &method, &path, &body)
    } else if host == s.vault_host {
        vault(&s, &method, &path, &query, auth.as_deref(), &body)
    } else {
        kv_error(404, "NotFound", "unknown host", None)
    })
}

fn token_endpoint(s: &Shared, method: &hyper::Method, path: &str, body: &[u8]) -> Answer {
    let entra_error = |status: u16, error: &str, code: u32, description: &str| {
        json_answer(
            status,
            &json!({
                "error": error,
                "error_description": format!("AADSTS{code}: {description}"),
                "error_codes": [code],
            }),
        )
    };
    if method != hyper::Method::POST || path != format!("/{TENANT_ID}/oauth2/v2.0/token") {
        return entra_error(
            400,
            "invalid_request",
            900023,
            "Specified tenant identifier is neither a valid DNS name, nor a valid external domain.",
        );
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let expected_scope = format!("{}/.default", s.kind.public_resource());
    let mut st = s.lock();
    if form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || form.get("client_id").map(String::as_str) != Some(CLIENT_ID)
    {
        return entra_error(
            400,
            "unauthorized_client",
            700016,
            "Application not found in the directory.",
        );
    }
    if st.tokens_refused {
        return entra_error(
            401,
            "invalid_client",
            7000222,
            "The provided client secret keys for app are expired.",
        );
    }
    let authenticated = match (form.get("client_secret"), form.get("client_assertion")) {
        (Some(secret), None) => *secret == st.secret,
        (None, Some(assertion)) => {
            form.get("client_assertion_type").map(String::as_str)
                == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                && *assertion == st.federated_token
        }
        _ => false,
    };
    if !authenticated {
        return entra_error(
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided.",
        );
    }
    if form.get("scope") != Some(&expected_scope) {
        return entra_error(
            400,
            "invalid_scope",
            70011,
            "The provided value for the input parameter 'scope' is not valid.",
        );
    }
    let token = random_hex(24);
    st.tokens.insert(token.clone());
    *st.calls.entry(Call::Token).or_default() += 1;
    json_answer(
        200,
        &json!({
            "token_type": "Bearer",
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": token,
        }),
    )
}

fn vault(
    s: &Shared,
    method: &hyper::Method,
    path: &str,
    query: &str,
    auth: Option<&str>,
    body: &[u8],
) -> Answer {
    let mut st = s.lock();
    let token_ok = auth
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|t| st.tokens.contains(t));
    if !token_ok {
        *st.calls.entry(Call::Challenge).or_default() += 1;
        let mut answer = kv_error(
            401,
            "Unauthorized",
            "AKV10000: Request is missing a Bearer or PoP token.",
            None,
        );
        answer.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            format!(
                "Bearer authorization=\"https://{LOGIN_HOST}/{TENANT_ID}\", resource=\"{}\"",
                s.kind.public_resource()
            )
            .parse()
            .unwrap(),
        );
        return answer;
    }
    if !query
        .split('&')
        .any(|p| p.starts_with("api-version=") && p.len() > 12)
    {
        return kv_error(
            400,
            "BadParameter",
            "The api-version query parameter is missing.",
            None,
        );
    }
    if let Some((status, code)) = st.inject.pop_front() {
        return kv_error(status, &code, "injected failure", None);
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (name, version, op) = match (method.clone(), segments.as_slice()) {
        (hyper::Method::GET, ["keys", name]) | (hyper::Method::GET, ["keys", name, ""]) => {
            (*name, None, Call::GetKey)
        }
        (hyper::Method::GET, ["keys", name, version]) => (*name, Some(*version), Call::GetKey),
        (hyper::Method::GET, ["deletedkeys", name]) => (*name, None, Call::GetDeletedKey),
        (hyper::Method::POST, ["keys", name, version, op])
            if op.eq_ignore_ascii_case("wrapkey") =>
        {
            (
                *name,
                Some(*version).filter(|v| !v.is_empty()),
                Call::WrapKey,
            )
        }
        (hyper::Method::POST, ["keys", name, version, op])
            if op.eq_ignore_ascii_case("unwrapkey") =>
        {
            (
                *name,
                Some(*version).filter(|v| !v.is_empty()),
                Call::UnwrapKey,
            )
        }
        _ => {
            return kv_error(
                404,
                "NotFound",
                "The requested resource was not found.",
                None,
            );
        }
    };
    *st.calls.entry(op).or_default() += 1;
    let host = s.vault_host.clone();
    let not_found = || {
        kv_error(
            404,
            "KeyNotFound",
            &format!(
                "A key with (name/id) {name} was not found in this key vault. If you recently deleted this key you may be able to recover it using the correct recovery command."
            ),
            None,
        )
    };
    if op == Call::GetDeletedKey {
        return deleted_key(s, &st, name);
    }
    let Some(key) = st.keys.get(name).filter(|k| k.deleted.is_none()) else {
        return not_found();
    };
    if key.denied {
        return kv_error(
            403,
            "Forbidden",
            "Caller is not authorized to perform action on resource. Action: 'Microsoft.KeyVault/vaults/keys/read'. Assignment: (not found).",
            Some("ForbiddenByRbac"),
        );
    }
    let v = match version {
        None => key.versions.last(),
        Some(id) => key.versions.iter().find(|v| v.id.eq_ignore_ascii_case(id)),
    };
    let Some(v) = v else {
        return not_found();
    };
    let kid = format!("https://{host}/keys/{name}/{}", v.id);
    match op {
        Call::GetKey => json_answer(200, &key_json(s.kind, &kid, v)),
        Call::WrapKey | Call::UnwrapKey => {
            let opname = if op == Call::WrapKey {
                "wrapKey"
            } else {
                "unwrapKey"
            };
            if key.read_only {
                let action = if op == Call::WrapKey {
                    "wrap"
                } else {
                    "unwrap"
                };
                return kv_error(
                    403,
                    "Forbidden",
                    &format!(
                        "Caller is not authorized to perform action on resource. Action: 'Microsoft.KeyVault/vaults/keys/{action}/action'. Assignment: (not found)."
                    ),
                    Some("ForbiddenByRbac"),
                );
            }
            if !key_ops(v).iter().any(|o| o.eq_ignore_ascii_case(opname)) {
                return kv_error(
                    403,
                    "Forbidden",
                    &format!("Operation {opname} is not permitted on this key."),
                    None,
                );
            }
            if !v.enabled {
                return kv_error(
                    403,
                    "Forbidden",
                    &format!("Operation {opname} is not allowed on a disabled key."),
                    Some("KeyDisabled"),
                );
            }
            // Key Vault refuses encrypt-type operations outside [nbf, exp) but still decrypts
            // and unwraps, so data made while the key was valid can be recovered.
            if op == Call::WrapKey {
                let t = now();
                if v.exp.is_some_and(|exp| t >= exp) {
                    return kv_error(
                        403,
                        "Forbidden",
                        "Operation wrapKey is not allowed on an expired key.",
                        None,
                    );
                }
                if v.nbf.is_some_and(|nbf| t < nbf) {
                    return kv_error(
                        403,
                        "Forbidden",
                        "Operation wrapKey is not allowed on a key that is not yet valid.",
                        None,
                    );
                }
            }
            let Ok(params) = serde_json::from_slice::<Value>(body) else {
                return kv_error(
                    400,
                    "BadParameter",
                    "The request body is not valid JSON.",
                    None,
                );
            };
            let alg = params["alg"].as_str().unwrap_or("");
            let Some(value) = params["value"].as_str().and_then(unb64) else {
                return kv_error(
                    400,
                    "BadParameter",
                    "Property value is required and must be base64url.",
                    None,
                );
            };
            match crypt(&v.material, alg, op == Call::WrapKey, &value) {
                Ok(out) => json_answer(200, &json!({ "kid": kid, "value": b64(&out) })),
                Err(msg) => kv_error(400, "BadParameter", msg, None),
            }
        }
        _ => not_found(),
    }
}

/// `GET /deletedkeys/{name}`: Key Vault's DeletedKeyBundle, or `404 KeyNotFound` for a key that
/// is not deleted (or was purged, or never existed).
fn deleted_key(s: &Shared, st: &State, name: &str) -> Answer {
    if st.deleted_keys_forbidden {
        return kv_error(
            403,
            "Forbidden",
            "Caller is not authorized to perform action on resource. Action: 'Microsoft.KeyVault/vaults/deletedKeys/read'. Assignment: (not found).",
            Some("ForbiddenByRbac"),
        );
    }
    let found = st.keys.get(name).and_then(|k| {
        let deleted = k.deleted?;
        Some((deleted, k.versions.last()?))
    });
    let Some((deleted, v)) = found else {
        return kv_error(
            404,
            "KeyNotFound",
            &format!("Deleted Key not found: {name}"),
            None,
        );
    };
    let host = &s.vault_host;
    let mut body = key_json(s.kind, &format!("https://{host}/keys/{name}/{}", v.id), v);
    body["recoveryId"] = json!(format!("https://{host}/deletedkeys/{name}"));
    body["deletedDate"] = json!(deleted);
    body["scheduledPurgeDate"] = json!(deleted + 90 * 86_400);
    json_answer(200, &body)
}

/// The operations a version permits: as set, else its material's default.
fn key_ops(v: &Version) -> Vec<String> {
    if let Some(ops) = &v.key_ops {
        return ops.clone();
    }
    let default: &[&str] = match v.material {
        Material::Ec { .. } => &["sign", "verify"],
        _ => &["wrapKey", "unwrapKey", "encrypt", "decrypt"],
    };
    default.iter().map(|o| (*o).to_owned()).collect()
}

fn key_json(kind: VaultKind, kid: &str, v: &Version) -> Value {
    let hsm = kind == VaultKind::ManagedHsm;
    let mut key = match &v.material {
        Material::Rsa { n, e, .. } | Material::RsaPublicOnly { n, e } => json!({
            "kid": kid,
            "kty": if hsm { "RSA-HSM" } else { "RSA" },
            "n": b64(n),
            "e": b64(e),
        }),
        Material::Aes(_) => json!({
            "kid": kid,
            "kty": "oct-HSM",
        }),
        Material::Ec { x, y } => json!({
            "kid": kid,
            "kty": if hsm { "EC-HSM" } else { "EC" },
            "crv": "P-256",
            "x": b64(x),
            "y": b64(y),
        }),
    };
    key["key_ops"] = json!(key_ops(v));
    key["kid"] = json!(kid);
    let mut attributes = json!({
        "enabled": v.enabled,
        "created": v.created,
        "updated": v.created,
        "recoveryLevel": "Recoverable+Purgeable",
        "recoverableDays": 90,
    });
    if let Some(exp) = v.exp {
        attributes["exp"] = json!(exp);
    }
    if let Some(nbf) = v.nbf {
        attributes["nbf"] = json!(nbf);
    }
    json!({ "key": key, "attributes": attributes })
}

fn crypt(
    material: &Material,
    alg: &str,
    wrap: bool,
    value: &[u8],
) -> Result<Vec<u8>, &'static str> {
    match (material, alg) {
        (
            Material::Rsa {
                private, public, ..
            },
            "RSA-OAEP-256",
        ) => {
            if wrap {
                let mut out = vec![0u8; public.ciphertext_size()];
                let n = public
                    .encrypt(&OAEP_SHA256_MGF1SHA256, value, &mut out, None)
                    .map_err(|_| "The value is too long for the key.")?
                    .len();
                out.truncate(n);
                Ok(out)
            } else {
                let mut out = vec![0u8; private.min_output_size()];
                let n = private
                    .decrypt(&OAEP_SHA256_MGF1SHA256, value, &mut out, None)
                    .map_err(
                        |_| "The parameter is incorrect: the ciphertext could not be decrypted.",
                    )?
                    .len();
                out.truncate(n);
                Ok(out)
            }
        }
        (Material::Aes(k), "A256KW") => {
            let kek = AesKek::new(&AES_256, k).map_err(|_| "invalid key")?;
            if wrap {
                let mut out = vec![0u8; value.len() + 8];
                let n = kek
                    .wrap(value, &mut out)
                    .map_err(|_| "The value must be a multiple of 8 bytes, at least 16.")?
                    .len();
                out.truncate(n);
                Ok(out)
            } else {
                let mut out = vec![0u8; value.len()];
                let n = kek
                    .unwrap(value, &mut out)
                    .map_err(
                        |_| "The parameter is incorrect: key unwrap failed its integrity check.",
                    )?
                    .len();
                out.truncate(n);
                Ok(out)
            }
        }
        _ => Err("The algorithm is not supported for this key type."),
    }
}
