//! `keyward onboarding …`: help a customer set up their key.

#[cfg(not(feature = "aws"))]
use anyhow::bail;

use crate::cli::{OnboardingCommand, PolicyProvider};

pub(crate) fn onboarding(cmd: OnboardingCommand) -> anyhow::Result<()> {
    match cmd {
        OnboardingCommand::Policy {
            provider: PolicyProvider::Aws,
            principal,
            key_arn,
        } => {
            #[cfg(feature = "aws")]
            {
                println!(
                    "{}",
                    keyward_kms_aws::key_policy_statement(&principal, key_arn.as_deref())
                );
                Ok(())
            }
            #[cfg(not(feature = "aws"))]
            {
                let _ = (principal, key_arn);
                bail!("this keyward was built without AWS support (cargo feature `aws`)")
            }
        }
        OnboardingCommand::Events {
            provider: PolicyProvider::Aws,
            queue_arn,
            customer_account,
        } => {
            #[cfg(feature = "aws")]
            {
                use anyhow::{Context as _, bail};
                let queue: keyward_kms_aws::events::QueueArn = queue_arn
                    .parse()
                    .map_err(anyhow::Error::msg)
                    .context("--queue-arn")?;
                if let Some(account) = &customer_account
                    && (account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()))
                {
                    bail!("--customer-account: '{account}' is not a 12-digit AWS account id");
                }
                print!(
                    "{}",
                    keyward_kms_aws::events::eventbridge_setup(&queue, customer_account.as_deref())
                );
                Ok(())
            }
            #[cfg(not(feature = "aws"))]
            {
                let _ = (queue_arn, customer_account);
                bail!("this keyward was built without AWS support (cargo feature `aws`)")
            }
        }
    }
}
