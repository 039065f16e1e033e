//! What a failed AWS call tells the customer: the provider error of an SDK error (classified
//! once, in `classify.rs`), with a remediation ("To fix it") where we know one: the key policy
//! statement to paste for the principal that was denied (Keyward's own, from
//! `GetCallerIdentity`, or the assumed role), the role's trust policy, the commands that enable a
//! disabled key or cancel its deletion.

use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use keyward_kms::ProviderError;

use super::AwsKmsProvider;
use crate::classify::{Denial, Op, classify};
use crate::key_ref::AwsKeyRef;
use crate::policy::{cross_account_trust_policy, key_policy_statement, principal_for_caller};

impl AwsKmsProvider {
    /// Turns an SDK error into the provider error, with a remediation where we know one.
    pub(super) async fn failed<E>(
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

/// "To fix it" for a disabled key (`DisabledException`, or `DescribeKey` saying `Disabled`).
pub(super) fn disabled_remediation(arn: &str) -> String {
    format!(
        "The key is disabled. If that was not meant as a revocation, enable it (in the key's \
         account):\n  aws kms enable-key --key-id {arn}"
    )
}

/// "To fix it" for a key `DescribeKey` reports pending deletion, with the scheduled date (AWS
/// puts a key whose deletion is cancelled in the `Disabled` state, hence the second command).
pub(super) fn pending_deletion_remediation(arn: &str, deletion_date: Option<&str>) -> String {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    const KEY: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

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
}
