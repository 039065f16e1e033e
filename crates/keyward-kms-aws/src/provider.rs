//! [`AwsKmsProvider`]: the [`KeyProvider`] on AWS KMS: its SDK clients (one per region and
//! assumed role, built on first use, sharing one retry quota) and the [`KeyProvider`] calls.
//!
//! What a failed call tells the customer (the error and its "To fix it", naming the principal
//! and the policy statement) is in `provider/remediation.rs`; the checks of what `DescribeKey`
//! returns (account, region, key spec) and the mapping of AWS key states are in
//! `provider/key_metadata.rs`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kms::config::retry::RetryPartition;
use aws_sdk_kms::types::{DataKeySpec, KeyMetadata};
use aws_smithy_types::Blob;
use keyward_envelope::{KEY_LEN, SecretKey, WrappedKey};
use keyward_kms::{
    Capabilities, ErrorKind, KeyProvider, KeyRef, KeyStatus, ProviderError, ProviderKind,
    WrapContext,
};
use zeroize::Zeroizing;

use crate::AwsKmsConfig;
use crate::classify::Op;
use crate::key_ref::{AssumeRole, AwsKeyRef};

mod key_metadata;
mod remediation;

use key_metadata::{check_described, check_spec, key_status};

/// The session name of every `AssumeRole`: it shows in the customer's CloudTrail as the
/// assumed-role session of Keyward.
const SESSION_NAME: &str = "keyward";

/// KMS ciphertext blobs are 1 to 6144 bytes (API_Decrypt.html); anything else is not a wrapped
/// key and is rejected without a call.
const MAX_CIPHERTEXT_LEN: usize = 6144;

/// The region used for `GetCallerIdentity` when the SDK configuration has none.
const FALLBACK_STS_REGION: &str = "us-east-1";

/// AWS KMS as a KEK provider.
///
/// - Tenant keys come from `GenerateDataKey` (AES_256) — see `docs/adr/0004-aws-generate-data-key.md`;
///   wraps are `Encrypt`, unwraps are `Decrypt` with `KeyId` pinned to the registered key ARN.
/// - Every call carries [`WrapContext::pairs`] as its encryption context, so the customer's
///   CloudTrail shows which tenant, tenant key and purpose each call was for.
/// - The region comes from each key ARN; one SDK client per (region, assumed role), built on
///   first use. Cross-account keys are used through STS `AssumeRole` with an `ExternalId`.
/// - Each SDK error is classified once (`classify.rs`, table in `docs/providers/aws.md`); an `AccessDeniedException`
///   carries a remediation naming the denied action, the principal and the statement to paste.
pub struct AwsKmsProvider {
    config: AwsKmsConfig,
    /// The base SDK configuration (credentials chain, timeouts, retries).
    sdk: SdkConfig,
    /// The same, with the STS endpoint override, for `AssumeRole` and `GetCallerIdentity`.
    sts_sdk: SdkConfig,
    clients: Mutex<HashMap<(String, Option<AssumeRole>), aws_sdk_kms::Client>>,
    /// The retry quota (the standard mode's token bucket: 500 tokens, 5 per retry, 10 per retry
    /// after a timeout, refilled by successes) shared by every client of this provider. Owned
    /// here rather than the SDK's process-wide default partition, so that the quota is one per
    /// provider and two providers (tests, benchmarks) never drain each other's.
    retry_partition: RetryPartition,
    /// Keyward's own principal, from `GetCallerIdentity`, once it succeeded.
    caller: tokio::sync::Mutex<Option<String>>,
}

impl fmt::Debug for AwsKmsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let clients = self
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("AwsKmsProvider")
            .field("config", &self.config)
            .field("clients", &clients)
            .finish_non_exhaustive()
    }
}

impl AwsKmsProvider {
    /// A provider with credentials from the standard AWS chain
    /// (`aws_config::defaults(BehaviorVersion::latest())`).
    pub async fn new(config: AwsKmsConfig) -> Result<Self, ProviderError> {
        config.validate()?;
        // Every KMS client takes its region from the key ARN, so the SDK's default region
        // only matters for STS. Set it explicitly: the default region chain ends with an
        // instance-metadata lookup (a network call at start-up, on any machine).
        let region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .iter()
            .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
            .map_or_else(|| Region::from_static(FALLBACK_STS_REGION), Region::new);
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .load()
            .await;
        Self::with_sdk_config(config, sdk).await
    }

    /// A provider on an explicit SDK configuration (its credentials provider, region default,
    /// HTTP client), e.g. static test credentials. `sdk` must come from an
    /// [`aws_config::ConfigLoader`] (`aws_config::defaults(…).….load()`), which supplies the time
    /// source and async sleep that timeouts, retries and `AssumeRole` need.
    ///
    /// The timeouts and retries of `config` replace those of `sdk`.
    pub async fn with_sdk_config(
        config: AwsKmsConfig,
        sdk: SdkConfig,
    ) -> Result<Self, ProviderError> {
        config.validate()?;
        if sdk.time_source().is_none() || sdk.sleep_impl().is_none() {
            return Err(ProviderError::new(
                ErrorKind::Misconfigured,
                "the AWS SDK configuration has no time source or sleep implementation; build it \
                 with aws_config::defaults(BehaviorVersion::latest()).load()",
            ));
        }
        // Explicit, so that an SDK upgrade cannot change them silently (docs/providers/aws.md,
        // "Retries, deadlines and quotas"): standard mode (jittered exponential backoff and the
        // client-wide retry quota that stops retry storms), a deadline per attempt and one for the
        // whole call.
        let timeouts = TimeoutConfig::builder()
            .operation_attempt_timeout(config.attempt_timeout())
            .operation_timeout(config.operation_timeout())
            .connect_timeout(config.connect_timeout())
            .build();
        let retries = RetryConfig::standard()
            .with_max_attempts(config.max_attempts)
            .with_initial_backoff(config.initial_backoff())
            .with_max_backoff(config.max_backoff());
        let sdk = sdk
            .into_builder()
            .timeout_config(timeouts)
            .retry_config(retries)
            .build();
        let mut sts = sdk.to_builder();
        if let Some(url) = &config.sts_endpoint_url {
            sts.set_endpoint_url(Some(url.clone()));
        }
        if sdk.region().is_none() {
            sts.set_region(Some(Region::from_static(FALLBACK_STS_REGION)));
        }
        Ok(Self {
            sts_sdk: sts.build(),
            config,
            sdk,
            clients: Mutex::new(HashMap::new()),
            retry_partition: RetryPartition::custom("keyward-aws-kms").build(),
            caller: tokio::sync::Mutex::new(None),
        })
    }

    /// The configuration this provider was built with.
    pub fn config(&self) -> &AwsKmsConfig {
        &self.config
    }

    fn parse(&self, kek: &KeyRef) -> Result<AwsKeyRef, ProviderError> {
        if kek.kind() != ProviderKind::AwsKms {
            return Err(ProviderError::new(
                ErrorKind::Misconfigured,
                format!("the AWS KMS provider cannot use key reference '{kek}'"),
            ));
        }
        Ok(kek.id().parse::<AwsKeyRef>()?)
    }

    /// The KMS client for the key's region and role, built on first use.
    async fn client(&self, key: &AwsKeyRef) -> aws_sdk_kms::Client {
        let map_key = (key.region.clone(), key.role.clone());
        if let Some(client) = self.lock_clients().get(&map_key) {
            return client.clone();
        }
        let region = Region::new(key.region.clone());
        let mut conf = aws_sdk_kms::config::Builder::from(&self.sdk)
            .region(region.clone())
            .retry_partition(self.retry_partition.clone());
        if let Some(url) = &self.config.endpoint_url {
            conf = conf.endpoint_url(url);
        }
        if let Some(role) = &key.role {
            let credentials = AssumeRoleProvider::builder(&role.role_arn)
                .external_id(&role.external_id)
                .session_name(SESSION_NAME)
                .region(region)
                .configure(&self.sts_sdk)
                .build()
                .await;
            conf = conf.credentials_provider(credentials);
        }
        let client = aws_sdk_kms::Client::from_conf(conf.build());
        // Two callers may have built a client concurrently; keep the first, drop the other.
        self.lock_clients().entry(map_key).or_insert(client).clone()
    }

    fn lock_clients(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, Option<AssumeRole>), aws_sdk_kms::Client>> {
        // The map is only ever inserted into; a panic elsewhere cannot leave it inconsistent.
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `DescribeKey`, with the returned key ARN checked against the requested account and region.
    async fn describe_metadata(&self, key: &AwsKeyRef) -> Result<KeyMetadata, ProviderError> {
        let out = self
            .client(key)
            .await
            .describe_key()
            .key_id(key.arn())
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) => return Err(self.failed(Op::DescribeKey, key, e).await),
        };
        let meta = out.key_metadata.ok_or_else(|| {
            ProviderError::new(
                ErrorKind::Unavailable,
                format!("DescribeKey for {} returned no key metadata", key.arn()),
            )
        })?;
        check_described(key, &meta)?;
        Ok(meta)
    }
}

#[async_trait]
impl KeyProvider for AwsKmsProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::AwsKms
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::default();
        c.generates_keys = true;
        c.reports_key_state = true;
        c.production_grade = true;
        c
    }

    async fn wrap(
        &self,
        kek: &KeyRef,
        key: &SecretKey,
        ctx: &WrapContext,
    ) -> Result<WrappedKey, ProviderError> {
        let aws = self.parse(kek)?;
        // The request owns a copy of the key; it is serialized (base64, in the TLS-protected
        // body) and dropped by the SDK, which does not zeroize it. See the ADR.
        let out = self
            .client(&aws)
            .await
            .encrypt()
            .key_id(aws.arn())
            .plaintext(Blob::new(key.expose_secret().to_vec()))
            .set_encryption_context(Some(context(ctx)))
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) => return Err(self.failed(Op::Encrypt, &aws, e).await),
        };
        wrapped_from(out.ciphertext_blob, Op::Encrypt, &aws)
    }

    async fn unwrap(
        &self,
        kek: &KeyRef,
        wrapped: &WrappedKey,
        ctx: &WrapContext,
    ) -> Result<SecretKey, ProviderError> {
        let aws = self.parse(kek)?;
        let bytes = wrapped.as_bytes();
        if bytes.is_empty() || bytes.len() > MAX_CIPHERTEXT_LEN {
            return Err(invalid_ciphertext(
                &aws,
                "its length is outside 1..=6144 bytes",
            ));
        }
        // KeyId pinned to the registered key: KMS refuses (IncorrectKeyException) a ciphertext
        // made under any other key, so the ciphertext can never choose the key.
        let out = self
            .client(&aws)
            .await
            .decrypt()
            .key_id(aws.arn())
            .ciphertext_blob(Blob::new(bytes.to_vec()))
            .set_encryption_context(Some(context(ctx)))
            .send()
            .await;
        let mut out = match out {
            Ok(out) => out,
            Err(e) => return Err(self.failed(Op::Decrypt, &aws, e).await),
        };
        let plaintext = Zeroizing::new(
            out.plaintext
                .take()
                .map(Blob::into_inner)
                .unwrap_or_default(),
        );
        if !aws.is_alias() && out.key_id() != Some(aws.arn().as_str()) {
            // Defence in depth: with KeyId pinned, AWS never decrypts under another key.
            return Err(invalid_ciphertext(
                &aws,
                "KMS reports it was decrypted under another key",
            ));
        }
        if plaintext.len() != KEY_LEN {
            return Err(invalid_ciphertext(
                &aws,
                "it does not decrypt to a 32-byte key",
            ));
        }
        SecretKey::try_from_slice(&plaintext).map_err(|e| {
            invalid_ciphertext(&aws, "it does not decrypt to a 32-byte key").with_source(e)
        })
    }

    async fn describe(&self, kek: &KeyRef) -> Result<KeyStatus, ProviderError> {
        let aws = self.parse(kek)?;
        let meta = self.describe_metadata(&aws).await?;
        check_spec(&aws, &meta)?;
        Ok(key_status(&aws, &meta))
    }

    async fn canonicalize(&self, kek: &KeyRef) -> Result<KeyRef, ProviderError> {
        let aws = self.parse(kek)?;
        let meta = self.describe_metadata(&aws).await?;
        let key_arn = meta.arn().unwrap_or_default();
        let mut canonical: AwsKeyRef = key_arn.parse().map_err(|e| {
            ProviderError::new(
                ErrorKind::Unavailable,
                format!("DescribeKey for {} returned an unusable key ARN", aws.arn()),
            )
            .with_source(e)
        })?;
        canonical.role = aws.role;
        Ok(KeyRef::new(ProviderKind::AwsKms, canonical.to_string()))
    }

    async fn generate(
        &self,
        kek: &KeyRef,
        ctx: &WrapContext,
    ) -> Result<(SecretKey, WrappedKey), ProviderError> {
        let aws = self.parse(kek)?;
        let out = self
            .client(&aws)
            .await
            .generate_data_key()
            .key_id(aws.arn())
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(context(ctx)))
            .send()
            .await;
        let mut out = match out {
            Ok(out) => out,
            Err(e) => return Err(self.failed(Op::GenerateDataKey, &aws, e).await),
        };
        // Move the SDK's plaintext buffer out of the response and zeroize it when dropped; the
        // copies made while decoding the HTTP body are beyond our reach (see the ADR).
        let plaintext = Zeroizing::new(
            out.plaintext
                .take()
                .map(Blob::into_inner)
                .unwrap_or_default(),
        );
        let key = SecretKey::try_from_slice(&plaintext).map_err(|e| {
            ProviderError::new(
                ErrorKind::Unavailable,
                format!(
                    "GenerateDataKey on {} returned a {}-byte key, expected 32",
                    aws.arn(),
                    plaintext.len()
                ),
            )
            .with_source(e)
        })?;
        let wrapped = wrapped_from(out.ciphertext_blob.take(), Op::GenerateDataKey, &aws)?;
        Ok((key, wrapped))
    }
}

/// The encryption context of every call: names the tenant, the tenant key and the purpose.
fn context(ctx: &WrapContext) -> HashMap<String, String> {
    let pairs: BTreeMap<String, String> = ctx.pairs();
    pairs.into_iter().collect()
}

fn wrapped_from(blob: Option<Blob>, op: Op, key: &AwsKeyRef) -> Result<WrappedKey, ProviderError> {
    match blob.map(Blob::into_inner) {
        Some(bytes) if !bytes.is_empty() => Ok(WrappedKey::new(bytes)),
        _ => Err(ProviderError::new(
            ErrorKind::Unavailable,
            format!("{} on {} returned no ciphertext", op.action(), key.arn()),
        )),
    }
}

/// Deliberately coarse, like every unwrap failure: the reason goes in the message, not the kind.
fn invalid_ciphertext(key: &AwsKeyRef, why: &str) -> ProviderError {
    ProviderError::new(
        ErrorKind::InvalidCiphertext,
        format!("the wrapped key is not valid under {}: {why}", key.arn()),
    )
}
