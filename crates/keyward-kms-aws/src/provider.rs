//! [`AwsKmsProvider`]: the [`KeyProvider`] on AWS KMS.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kms::config::retry::RetryPartition;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::types::{DataKeySpec, KeyMetadata, KeySpec, KeyUsageType};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::Blob;
use keyward_envelope::{KEY_LEN, SecretKey, WrappedKey};
use keyward_kms::{
    Capabilities, ErrorKind, KeyProvider, KeyRef, KeyState, KeyStatus, ProviderError, ProviderKind,
    WrapContext,
};
use zeroize::Zeroizing;

use crate::AwsKmsConfig;
use crate::classify::{Denial, Op, classify};
use crate::key_ref::{AssumeRole, AwsKeyRef};
use crate::policy::{cross_account_trust_policy, key_policy_statement, principal_for_caller};

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

    /// Turns an SDK error into the provider error, with a remediation where we know one.
    async fn failed<E>(
        &self,
        op: Op,
        key: &AwsKeyRef,
        err: SdkError<E, HttpResponse>,
    ) -> ProviderError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let c = classify(&err);
        let code = c
            .code
            .as_deref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        let message = format!(
            "{} on {} failed{code}: {}",
            op.action(),
            key.arn(),
            c.reason
        );
        tracing::debug!(kind = %c.kind, action = op.action(), key = %key.arn(), code = c.code.as_deref(), "AWS KMS call failed");
        let remediation = match (c.denial, c.code.as_deref()) {
            (Some(Denial::Kms), _) => Some(self.kms_denied_remediation(op, key).await),
            (Some(Denial::AssumeRole), _) => Some(self.assume_role_remediation(key).await),
            (None, Some("DisabledException")) => Some(disabled_remediation(&key.arn())),
            (None, Some("KMSInvalidStateException")) => Some(invalid_state_remediation(&key.arn())),
            (None, Some("NotFoundException")) => Some(format!(
                "Check the key ARN: account {} and region {} must be where the key is; \
                 `aws kms describe-key --key-id <ARN>` run in that account shows the key ARN",
                key.account, key.region
            )),
            _ => None,
        };
        let e = ProviderError::new(c.kind, message).with_source(err);
        match remediation {
            Some(r) => e.with_remediation(r),
            None => e,
        }
    }

    async fn kms_denied_remediation(&self, op: Op, key: &AwsKeyRef) -> String {
        let (principal, who) = match &key.role {
            Some(role) => (role.role_arn.clone(), format!("role {}", role.role_arn)),
            None => match self.caller_principal().await {
                Some(p) => (p.clone(), format!("Keyward's principal {p}")),
                None => (
                    "<Keyward's IAM principal ARN>".to_owned(),
                    "Keyward's principal (GetCallerIdentity failed; ask your Keyward operator for the ARN)".to_owned(),
                ),
            },
        };
        access_denied_remediation(&key.arn(), op.action(), &who, &principal)
    }

    async fn assume_role_remediation(&self, key: &AwsKeyRef) -> String {
        let Some(role) = &key.role else {
            return String::new();
        };
        let principal = self
            .caller_principal()
            .await
            .unwrap_or_else(|| "<Keyward's IAM principal ARN>".to_owned());
        format!(
            "STS refused to let {principal} assume {role_arn} with external id '{external_id}'. \
             The role's trust policy must be (aws iam update-assume-role-policy --role-name <name> \
             --policy-document file://trust.json):\n{trust}\nand Keyward's own IAM policy must allow \
             sts:AssumeRole on {role_arn}.",
            role_arn = role.role_arn,
            external_id = role.external_id,
            trust = cross_account_trust_policy(&principal, &role.external_id),
        )
    }

    /// Keyward's own principal for policies, from `GetCallerIdentity` (cached once it succeeds).
    async fn caller_principal(&self) -> Option<String> {
        let mut cached = self.caller.lock().await;
        if cached.is_none() {
            let sts = aws_sdk_sts::Client::new(&self.sts_sdk);
            match sts.get_caller_identity().send().await {
                Ok(out) => *cached = out.arn().map(principal_for_caller),
                Err(e) => {
                    tracing::warn!(error = %aws_sdk_sts::error::DisplayErrorContext(&e), "GetCallerIdentity failed")
                }
            }
        }
        cached.clone()
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

/// Checks the key ARN `DescribeKey` returned against the key asked for: same region and account.
fn check_described(key: &AwsKeyRef, meta: &KeyMetadata) -> Result<(), ProviderError> {
    let returned = meta.arn().unwrap_or_default();
    let parsed: AwsKeyRef = returned.parse().map_err(|e| {
        ProviderError::new(
            ErrorKind::Unavailable,
            format!("DescribeKey for {} returned an unusable key ARN", key.arn()),
        )
        .with_source(e)
    })?;
    check_region(key, &parsed)?;
    check_account(key, &parsed)
}

/// "To fix it" for a disabled key (`DisabledException`, or `DescribeKey` saying `Disabled`).
fn disabled_remediation(arn: &str) -> String {
    format!(
        "The key is disabled. If that was not meant as a revocation, enable it (in the key's \
         account):\n  aws kms enable-key --key-id {arn}"
    )
}

/// "To fix it" for a key `DescribeKey` reports pending deletion, with the scheduled date (AWS
/// puts a key whose deletion is cancelled in the `Disabled` state, hence the second command).
fn pending_deletion_remediation(arn: &str, deletion_date: Option<&str>) -> String {
    let when = deletion_date.map_or_else(
        || "It is scheduled for deletion".to_owned(),
        |date| format!("It is scheduled for deletion on {date}"),
    );
    format!(
        "{when}: after that date it and everything under it are gone for good. If that was not \
         meant as a revocation, cancel the deletion before then and enable the key (in the key's \
         account):\n  aws kms cancel-key-deletion --key-id {arn}\n  aws kms enable-key --key-id {arn}"
    )
}

/// "To fix it" for `KMSInvalidStateException` on a call: the state is not in the error, so both
/// likely fixes are given, with the command that tells them apart.
fn invalid_state_remediation(arn: &str) -> String {
    format!(
        "The key is not usable in its current state; `aws kms describe-key --key-id {arn}` shows \
         its KeyState (and DeletionDate). If it is pending deletion and that was not meant as a \
         revocation, cancel the deletion and enable the key:\n  aws kms cancel-key-deletion \
         --key-id {arn}\n  aws kms enable-key --key-id {arn}"
    )
}

/// "To fix it" for `AccessDeniedException`: the statement to add, and the case adding it cannot fix
/// (an explicit Deny wins over every Allow in AWS's policy evaluation).
fn access_denied_remediation(arn: &str, action: &str, who: &str, principal: &str) -> String {
    format!(
        "The key policy of {arn} does not allow {action} for {who}. Add these statements \
         to the key's policy (Statement array), e.g. in the console or with \
         `aws kms put-key-policy --key-id {arn} --policy-name default --policy file://policy.json`:\n{policy}\n\
         If the key policy already allows it, an explicit Deny is the likely cause: a Deny \
         statement in the key policy, an IAM policy, a permissions boundary or an SCP of the \
         organization overrides every Allow, so adding Allow statements cannot fix it; remove \
         or narrow the Deny.",
        policy = key_policy_statement(principal, Some(arn)),
    )
}

/// The key ARN `DescribeKey` returns must be in the account the customer named: an endpoint
/// override (a proxy, a KMS-compatible service) could otherwise answer with a key of another
/// account, and Keyward would wrap the tenant's keys under a key the customer never named.
fn check_account(requested: &AwsKeyRef, returned: &AwsKeyRef) -> Result<(), ProviderError> {
    if requested.account == returned.account {
        return Ok(());
    }
    Err(ProviderError::new(
        ErrorKind::Misconfigured,
        format!(
            "account mismatch: the key {} is in account {}, but KMS answered with key {} of \
             account {}",
            requested.arn(),
            requested.account,
            returned.arn(),
            returned.account,
        ),
    )
    .with_remediation(format!(
        "Register the key ARN exactly as `aws kms describe-key --key-id <ARN>` prints it when run \
         in the key's own account ({}); if aws_kms.endpoint_url is set, it must be a KMS endpoint \
         that answers for that account.",
        requested.account
    )))
}

/// With an endpoint override (a VPC endpoint in another region, say) KMS may answer for a region
/// other than the ARN's; without one the client's region *is* the ARN's, so this never fires.
fn check_region(requested: &AwsKeyRef, returned: &AwsKeyRef) -> Result<(), ProviderError> {
    if requested.region == returned.region {
        return Ok(());
    }
    Err(ProviderError::new(
        ErrorKind::Misconfigured,
        format!(
            "region mismatch: the key reference {} is in {}, but the KMS endpoint answered for \
             key {} in {}; the configured aws_kms.endpoint_url must be an endpoint of the key's \
             region ({})",
            requested.arn(),
            requested.region,
            returned.arn(),
            returned.region,
            requested.region
        ),
    )
    .with_remediation(format!(
        "Set aws_kms.endpoint_url to a KMS endpoint in {} (or unset it), or register the key \
         ARN of the region the endpoint serves.",
        requested.region
    )))
}

fn check_spec(key: &AwsKeyRef, meta: &KeyMetadata) -> Result<(), ProviderError> {
    let spec = meta.key_spec();
    let usage = meta.key_usage();
    // AWS always reports KeyUsage; some KMS-compatible services (moto for keys created without
    // an explicit usage) omit it. A symmetric key without a stated usage is accepted here: the
    // live generate + unwrap round trip at registration proves it can encrypt and decrypt.
    if spec == Some(&KeySpec::SymmetricDefault)
        && matches!(usage, None | Some(&KeyUsageType::EncryptDecrypt))
    {
        return Ok(());
    }
    let name = |s: Option<&str>| s.unwrap_or("<unknown>").to_owned();
    Err(ProviderError::new(
        ErrorKind::Misconfigured,
        format!(
            "key {} is {}/{}; Keyward needs a symmetric encryption key (SYMMETRIC_DEFAULT, \
             ENCRYPT_DECRYPT): create one with `aws kms create-key --key-spec SYMMETRIC_DEFAULT \
             --key-usage ENCRYPT_DECRYPT`",
            meta.arn().unwrap_or(&key.arn()),
            name(spec.map(KeySpec::as_str)),
            name(usage.map(KeyUsageType::as_str)),
        ),
    ))
}

/// AWS key states → Keyward's. PendingImport (no key material yet) and Unavailable (custom key
/// store disconnected) are reported `Disabled`: the key refuses every cryptographic call
/// (KMSInvalidStateException) until the customer acts. Creating/Updating are passing states of
/// multi-Region keys: Updating keys are usable, Creating ones are not yet (Unknown).
fn key_status(key: &AwsKeyRef, meta: &KeyMetadata) -> KeyStatus {
    use aws_sdk_kms::types::KeyState as Aws;
    let aws_state = meta.key_state();
    let state = match aws_state {
        Some(Aws::Enabled | Aws::Updating) => KeyState::Enabled,
        Some(Aws::Disabled | Aws::PendingImport | Aws::Unavailable) => KeyState::Disabled,
        Some(Aws::PendingDeletion | Aws::PendingReplicaDeletion) => KeyState::PendingDeletion,
        _ => KeyState::Unknown,
    };
    let arn = meta.arn().map_or_else(|| key.arn(), str::to_owned);
    let mut detail = format!(
        "AWS KMS key state {} in {}",
        aws_state.map(Aws::as_str).unwrap_or("<none>"),
        key.region
    );
    let deletion_date = meta.deletion_date().map(ToString::to_string);
    if let Some(date) = &deletion_date {
        detail.push_str(&format!(", deletion scheduled for {date}"));
    }
    let status = KeyStatus::new(state).with_detail(detail);
    match aws_state {
        Some(Aws::Disabled) => status.with_remediation(disabled_remediation(&arn)),
        Some(Aws::PendingDeletion | Aws::PendingReplicaDeletion) => {
            status.with_remediation(pending_deletion_remediation(&arn, deletion_date.as_deref()))
        }
        _ => status,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;
    use aws_sdk_kms::types::KeyState as Aws;

    const KEY: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    #[test]
    fn region_mismatch_is_misconfigured_and_explained() {
        let requested: AwsKeyRef = KEY.parse().unwrap();
        check_region(&requested, &requested).unwrap();
        let returned: AwsKeyRef = KEY.replace("eu-west-1", "us-west-2").parse().unwrap();
        let e = check_region(&requested, &returned).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Misconfigured);
        assert!(e.message().contains("region mismatch"), "{e}");
        assert!(
            e.message().contains("is in eu-west-1") && e.message().contains("in us-west-2"),
            "{e}"
        );
        assert!(e.remediation().unwrap().contains("aws_kms.endpoint_url"));
    }

    #[test]
    fn account_mismatch_is_misconfigured_and_explained() {
        let requested: AwsKeyRef = KEY.parse().unwrap();
        let described = |arn: &str| KeyMetadata::builder().key_id("k").arn(arn).build().unwrap();
        check_described(&requested, &described(KEY)).unwrap();
        // What DescribeKey of an endpoint answering for another account would return (the
        // emulator cannot: it answers for whatever account the ARN names).
        let other = KEY.replace("111122223333", "444455556666");
        let e = check_described(&requested, &described(&other)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Misconfigured);
        assert!(
            e.message().contains("is in account 111122223333")
                && e.message().contains("account 444455556666"),
            "{e}"
        );
        assert!(e.remediation().unwrap().contains("(111122223333)"));
    }

    #[test]
    fn disabled_and_pending_deletion_keys_say_how_to_fix_them() {
        let key: AwsKeyRef = KEY.parse().unwrap();
        let meta = |state: Aws| {
            KeyMetadata::builder()
                .key_id("k")
                .arn(KEY)
                .key_state(state)
                .deletion_date(aws_smithy_types::DateTime::from_secs(1_800_000_000))
                .build()
                .unwrap()
        };
        let disabled = key_status(&key, &meta(Aws::Disabled));
        assert_eq!(
            disabled.remediation.as_deref(),
            Some(&*format!(
                "The key is disabled. If that was not meant as a revocation, enable it (in the key's account):\n  aws kms enable-key --key-id {KEY}"
            ))
        );
        let pending = key_status(&key, &meta(Aws::PendingDeletion));
        let fix = pending.remediation.unwrap();
        assert!(
            fix.starts_with("It is scheduled for deletion on 2027-01-15T08:00:00Z:"),
            "{fix}"
        );
        assert!(
            fix.ends_with(&format!(
                "aws kms cancel-key-deletion --key-id {KEY}\n  aws kms enable-key --key-id {KEY}"
            )),
            "{fix}"
        );
        assert!(key_status(&key, &meta(Aws::Enabled)).remediation.is_none());
    }

    #[test]
    fn access_denied_says_an_explicit_deny_may_be_the_cause() {
        let fix = access_denied_remediation(
            KEY,
            "kms:Decrypt",
            "role r",
            "arn:aws:iam::111122223333:role/r",
        );
        assert!(
            fix.starts_with(&format!(
                "The key policy of {KEY} does not allow kms:Decrypt for role r."
            )),
            "{fix}"
        );
        assert!(
            fix.contains("explicit Deny") && fix.contains("cannot fix it"),
            "{fix}"
        );
    }

    #[test]
    fn key_states_map_to_keyward_states() {
        let key: AwsKeyRef = KEY.parse().unwrap();
        for (aws, ours) in [
            (Aws::Enabled, KeyState::Enabled),
            (Aws::Updating, KeyState::Enabled),
            (Aws::Disabled, KeyState::Disabled),
            (Aws::PendingImport, KeyState::Disabled),
            (Aws::Unavailable, KeyState::Disabled),
            (Aws::PendingDeletion, KeyState::PendingDeletion),
            (Aws::PendingReplicaDeletion, KeyState::PendingDeletion),
            (Aws::Creating, KeyState::Unknown),
            (Aws::from("SomeFutureState"), KeyState::Unknown),
        ] {
            let meta = KeyMetadata::builder()
                .key_id("k")
                .key_state(aws.clone())
                .build()
                .unwrap();
            let status = key_status(&key, &meta);
            assert_eq!(status.state, ours, "{aws:?}");
            assert!(status.detail.unwrap().contains(aws.as_str()));
        }
    }

    #[test]
    fn spec_check_names_spec_and_usage() {
        let key: AwsKeyRef = KEY.parse().unwrap();
        let meta = |spec: KeySpec, usage: KeyUsageType| {
            KeyMetadata::builder()
                .key_id("k")
                .arn(KEY)
                .key_spec(spec)
                .key_usage(usage)
                .build()
                .unwrap()
        };
        check_spec(
            &key,
            &meta(KeySpec::SymmetricDefault, KeyUsageType::EncryptDecrypt),
        )
        .unwrap();
        let e = check_spec(&key, &meta(KeySpec::Rsa4096, KeyUsageType::SignVerify)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Misconfigured);
        assert!(
            e.message()
                .starts_with(&format!("key {KEY} is RSA_4096/SIGN_VERIFY; Keyward needs")),
            "{e}"
        );
    }
}
