//! What `DescribeKey` returns, checked and read: the key ARN it answers with must be in the
//! account and region of the key asked for, the key must be a symmetric encryption key, and
//! AWS's key states map to Keyward's [`KeyState`] (with a remediation for a disabled key or one
//! pending deletion).

use aws_sdk_kms::types::{KeyMetadata, KeySpec, KeyUsageType};
use keyward_kms::{ErrorKind, KeyState, KeyStatus, ProviderError};

use super::remediation::{disabled_remediation, pending_deletion_remediation};
use crate::key_ref::AwsKeyRef;

/// Checks the key ARN `DescribeKey` returned against the key asked for: same region and account.
pub(super) fn check_described(key: &AwsKeyRef, meta: &KeyMetadata) -> Result<(), ProviderError> {
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

pub(super) fn check_spec(key: &AwsKeyRef, meta: &KeyMetadata) -> Result<(), ProviderError> {
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
pub(super) fn key_status(key: &AwsKeyRef, meta: &KeyMetadata) -> KeyStatus {
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
