//! Test support: the moto AWS KMS emulator, patched to enforce key states, key policies and role
//! trust policies as AWS does, and SDK helpers to drive it. In `keyward-test-support` (feature
//! `aws`); for `keyward-kms-aws`'s tests, the end-to-end tests and `keyward-bench`.
//!
//! [`MotoServer::start`] runs `tests/kms-emulator/keyward_moto.py` with `$KEYWARD_MOTO_PYTHON`
//! (`scripts/test` creates `target/test-venv` with `moto[server]` and sets it), falling back to
//! `python3`. There is no skipping: without moto the tests fail and say how to install it.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a broken emulator or a failed setup call must fail the test loudly"
)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use keyward_kms::{KeyRef, ProviderKind};

use keyward_kms_aws::{AwsKmsConfig, AwsKmsProvider};

pub mod fault_proxy;
mod sqs;
pub use fault_proxy::{Fault, FaultProxy, Seen};
pub use sqs::{DISABLE_KEY_EVENT, kms_event};

/// The region every helper works in (moto keeps one backend per region).
pub const REGION: &str = "us-east-1";
/// moto's default account id.
pub const ACCOUNT: &str = "123456789012";

const HOW_TO_INSTALL: &str =
    "run scripts/test (it installs moto[server]) or set KEYWARD_MOTO_PYTHON";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const LISTENING: &str = "moto listening on ";

/// A running moto server on 127.0.0.1; killed when dropped.
#[derive(Debug)]
pub struct MotoServer {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    child: Child,
}

impl MotoServer {
    /// Starts the patched emulator on a free port and waits (at most 30 s) until it listens.
    ///
    /// # Panics
    /// If Python or moto is missing, or the emulator does not start.
    pub fn start() -> MotoServer {
        let python = std::env::var("KEYWARD_MOTO_PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let script = launcher_path();
        let mut child = Command::new(&python)
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Tracebacks from the emulator show up in the test output.
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "could not run {python} {}: {e}; {HOW_TO_INSTALL}",
                    script.display()
                )
            });
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("moto did not start within {STARTUP_TIMEOUT:?}; {HOW_TO_INSTALL}");
            }
        };
        let Some(endpoint) = line.trim().strip_prefix(LISTENING) else {
            let _ = child.kill();
            let status = child.wait().ok();
            panic!(
                "moto could not be started with {python} (exit {status:?}, first line {line:?}); \
                 {HOW_TO_INSTALL}"
            );
        };
        MotoServer {
            endpoint: endpoint.to_owned(),
            child,
        }
    }

    /// An SDK configuration with static fake credentials and region [`REGION`], without an
    /// endpoint override (the provider gets it from [`MotoServer::provider_config`]). Nothing
    /// is read from the process environment that could make tests depend on each other.
    pub async fn sdk_config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::from_static(REGION))
            .credentials_provider(Credentials::new(
                "test",
                "test",
                None,
                None,
                "keyward-tests",
            ))
            .load()
            .await
    }

    /// A provider configuration pointing KMS and STS at this emulator, with short timeouts.
    pub fn provider_config(&self) -> AwsKmsConfig {
        AwsKmsConfig {
            endpoint_url: Some(self.endpoint.clone()),
            sts_endpoint_url: Some(self.endpoint.clone()),
            attempt_timeout_ms: 5000,
            connect_timeout_ms: 1000,
            max_attempts: 2,
            operation_timeout_ms: 12_000,
            ..AwsKmsConfig::default()
        }
    }

    /// An [`AwsKmsProvider`] talking to this emulator.
    pub async fn provider(&self) -> AwsKmsProvider {
        AwsKmsProvider::with_sdk_config(self.provider_config(), self.sdk_config().await)
            .await
            .expect("provider on moto")
    }

    /// An unmodified SDK client for this emulator.
    pub async fn kms_client(&self) -> aws_sdk_kms::Client {
        let sdk = self.sdk_config().await;
        let conf = aws_sdk_kms::config::Builder::from(&sdk)
            .endpoint_url(&self.endpoint)
            .build();
        aws_sdk_kms::Client::from_conf(conf)
    }

    /// A new enabled `SYMMETRIC_DEFAULT`/`ENCRYPT_DECRYPT` key; returns its key ARN.
    pub async fn create_symmetric_key(&self) -> String {
        self.create_key_with_spec(KeySpec::SymmetricDefault, KeyUsageType::EncryptDecrypt)
            .await
    }

    /// A new key of the given spec and usage; returns its key ARN.
    pub async fn create_key_with_spec(&self, spec: KeySpec, usage: KeyUsageType) -> String {
        let out = self
            .kms_client()
            .await
            .create_key()
            .key_spec(spec)
            .key_usage(usage)
            .description("keyward test key")
            .send()
            .await
            .expect("CreateKey on moto");
        out.key_metadata()
            .and_then(|m| m.arn())
            .expect("CreateKey returns the key ARN")
            .to_owned()
    }

    /// `DisableKey`.
    pub async fn disable_key(&self, key_arn: &str) {
        self.kms_client()
            .await
            .disable_key()
            .key_id(key_arn)
            .send()
            .await
            .expect("DisableKey on moto");
    }

    /// `EnableKey`.
    pub async fn enable_key(&self, key_arn: &str) {
        self.kms_client()
            .await
            .enable_key()
            .key_id(key_arn)
            .send()
            .await
            .expect("EnableKey on moto");
    }

    /// `ScheduleKeyDeletion` with the shortest window AWS allows (7 days).
    pub async fn schedule_deletion(&self, key_arn: &str) {
        self.kms_client()
            .await
            .schedule_key_deletion()
            .key_id(key_arn)
            .pending_window_in_days(7)
            .send()
            .await
            .expect("ScheduleKeyDeletion on moto");
    }

    /// `CancelKeyDeletion`; as on AWS, the key is then Disabled until enabled again.
    pub async fn cancel_deletion(&self, key_arn: &str) {
        self.kms_client()
            .await
            .cancel_key_deletion()
            .key_id(key_arn)
            .send()
            .await
            .expect("CancelKeyDeletion on moto");
    }

    /// `PutKeyPolicy` (the `default` policy, the only one KMS has): the emulator evaluates it for
    /// every operation on the key, as AWS does (`tests/kms-emulator/keyward_moto.py`, gap 4).
    pub async fn put_key_policy(&self, key_arn: &str, policy: &str) {
        self.kms_client()
            .await
            .put_key_policy()
            .key_id(key_arn)
            .policy_name("default")
            .policy(policy)
            .send()
            .await
            .expect("PutKeyPolicy on moto");
    }

    /// The key policy a customer ends up with after following the onboarding guide: the key
    /// administrators' role may manage the key, and Keyward's principal may use it through
    /// [`keyward_kms_aws::key_policy_statement`]. With `keyward: false`, the same policy after
    /// the customer removed Keyward's statements (the most common revocation): nothing in it names
    /// Keyward any more. (No `arn:aws:iam::ACCOUNT:root` statement: the emulator, which has no
    /// IAM policies, lets it match every caller of the account, and Keyward's test principal is
    /// in the same account; a real Keyward principal lives in Keyward's own account.)
    pub async fn onboarded_key_policy(&self, key_arn: &str, keyward: bool) -> String {
        let mut statements = vec![serde_json::json!({
            "Sid": "KeyAdministrators",
            "Effect": "Allow",
            "Principal": { "AWS": format!("arn:aws:iam::{ACCOUNT}:role/KeyAdministrator") },
            "Action": [
                "kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*",
                "kms:Update*", "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*",
                "kms:TagResource", "kms:UntagResource", "kms:ScheduleKeyDeletion",
                "kms:CancelKeyDeletion"
            ],
            "Resource": "*"
        })];
        if keyward {
            let principal =
                keyward_kms_aws::for_test_support::principal_for_caller(&self.caller_arn().await);
            let keyward: Vec<serde_json::Value> = serde_json::from_str(
                &keyward_kms_aws::key_policy_statement(&principal, Some(key_arn)),
            )
            .expect("key_policy_statement is a JSON array");
            statements.extend(keyward);
        }
        serde_json::json!({ "Version": "2012-10-17", "Statement": statements }).to_string()
    }

    /// The ARN `GetCallerIdentity` answers for the test credentials (moto:
    /// `arn:aws:sts::ACCOUNT:user/moto` for credentials it did not issue).
    pub async fn caller_arn(&self) -> String {
        let sdk = self.sdk_config().await;
        let conf = aws_sdk_sts::config::Builder::from(&sdk)
            .endpoint_url(&self.endpoint)
            .build();
        aws_sdk_sts::Client::from_conf(conf)
            .get_caller_identity()
            .send()
            .await
            .expect("GetCallerIdentity on moto")
            .arn()
            .expect("GetCallerIdentity returns an ARN")
            .to_owned()
    }

    /// Creates IAM role `name` whose trust policy lets the test credentials assume it with
    /// `external_id` ([`keyward_kms_aws::cross_account_trust_policy`], what the onboarding guide
    /// has the customer create); returns the role ARN. The emulator enforces the trust policy on
    /// `AssumeRole` (`keyward_moto.py`, gap 5): an unknown role or another external id is
    /// `AccessDenied`.
    pub async fn create_keyward_role(&self, name: &str, external_id: &str) -> String {
        let principal =
            keyward_kms_aws::for_test_support::principal_for_caller(&self.caller_arn().await);
        let trust = keyward_kms_aws::cross_account_trust_policy(&principal, external_id);
        self.create_role(name, &trust).await
    }

    /// IAM `CreateRole` with the given trust policy; returns the role ARN. The crate has no IAM
    /// SDK, so this is the query-protocol request itself; moto routes it by the credential
    /// scope of the `Authorization` header and does not check the signature.
    pub async fn create_role(&self, name: &str, trust_policy: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let body = format!(
            "Action=CreateRole&Version=2010-05-08&RoleName={}&AssumeRolePolicyDocument={}",
            form_encode(name),
            form_encode(trust_policy)
        );
        let host = self.endpoint.trim_start_matches("http://");
        let request = format!(
            "POST / HTTP/1.1\r\nHost: {host}\r\n\
             Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/{REGION}/iam/aws4_request, \
             SignedHeaders=host, Signature=0\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(host)
            .await
            .expect("connect to moto");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send CreateRole");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("read the CreateRole answer");
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "CreateRole {name} on moto failed: {response}"
        );
        format!("arn:aws:iam::{ACCOUNT}:role/{name}")
    }

    /// `CreateAlias` `alias/<name>` for the key; returns the alias ARN. `name` may be given
    /// with or without the `alias/` prefix.
    pub async fn create_alias(&self, name: &str, key_arn: &str) -> String {
        let name = name.strip_prefix("alias/").unwrap_or(name);
        self.kms_client()
            .await
            .create_alias()
            .alias_name(format!("alias/{name}"))
            .target_key_id(key_arn)
            .send()
            .await
            .expect("CreateAlias on moto");
        format!("arn:aws:kms:{REGION}:{ACCOUNT}:alias/{name}")
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `application/x-www-form-urlencoded` encoding of a value (RFC 3986 unreserved kept).
fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `aws-kms:` [`KeyRef`] for an ARN (or any AWS key reference string).
pub fn key_ref(id: &str) -> KeyRef {
    KeyRef::new(ProviderKind::AwsKms, id)
}

/// `tests/kms-emulator/keyward_moto.py` in the workspace.
pub fn launcher_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/kms-emulator/keyward_moto.py")
}
