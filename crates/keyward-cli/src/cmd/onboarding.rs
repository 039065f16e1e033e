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
    }
}
