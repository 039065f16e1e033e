//! [`AwsKmsFactory`]: how the server learns of this provider (docs/adr/0010-provider-factories.md):
//! the `[aws_kms]` section, the registration syntax `key_arn` + optional `role_arn`/`external_id`,
//! and building an [`AwsKmsProvider`].

use std::sync::Arc;

use async_trait::async_trait;
use keyward_kms::{
    ConfigSection, ConfigSectionError, ConfiguredProvider, InvalidKeyRef, KeyProvider, KeyRef,
    KeyRefFields, ProviderError, ProviderFactory, ProviderKind,
};

use crate::{AwsKeyRef, AwsKmsConfig, AwsKmsProvider};

/// AWS KMS, as the server's provider registry sees it. Always configured: an absent `[aws_kms]`
/// section means the SDK's defaults (credentials from the standard chain).
#[derive(Debug, Clone, Copy, Default)]
pub struct AwsKmsFactory;

impl ProviderFactory for AwsKmsFactory {
    fn kind(&self) -> ProviderKind {
        ProviderKind::AwsKms
    }

    fn config_section(&self) -> &'static str {
        "aws_kms"
    }

    fn configure(
        &self,
        section: Option<&ConfigSection>,
    ) -> Result<Option<Arc<dyn ConfiguredProvider>>, ConfigSectionError> {
        let config = match section {
            Some(section) => section.deserialize::<AwsKmsConfig>()?,
            None => AwsKmsConfig::default(),
        };
        Ok(Some(Arc::new(config)))
    }

    /// `key_arn[?role_arn=…&external_id=…]` (docs/providers/aws.md) from the `AwsKmsKey` fields.
    fn parse_key_ref(&self, fields: &KeyRefFields<'_>) -> Result<KeyRef, InvalidKeyRef> {
        let key_arn = fields.get("key_arn");
        let role_arn = fields.get("role_arn");
        let external_id = fields.get("external_id");
        if key_arn.is_empty() {
            return Err(InvalidKeyRef::field("key_arn", "must not be empty"));
        }
        // AWS's own bounds (KMS KeyId, IAM role ARN, STS ExternalId), checked first so that no
        // error message below echoes more than that back.
        for (field, value, max) in [
            ("key_arn", key_arn, 2048),
            ("role_arn", role_arn, 2048),
            ("external_id", external_id, 1224),
        ] {
            if value.len() > max {
                return Err(InvalidKeyRef::field(
                    field,
                    format!("{} bytes; at most {max} are allowed", value.len()),
                ));
            }
        }
        // The role goes in its own fields: a query inside the ARN field would be read as one.
        if key_arn.contains('?') {
            return Err(InvalidKeyRef::field(
                "key_arn",
                "a key ARN has no '?': give role_arn and external_id in their own fields",
            ));
        }
        let id = match (role_arn.is_empty(), external_id.is_empty()) {
            (true, true) => key_arn.to_owned(),
            (false, false) => {
                format!("{key_arn}?role_arn={role_arn}&external_id={external_id}")
            }
            (true, false) => {
                return Err(InvalidKeyRef::field(
                    "role_arn",
                    "external_id is only used with role_arn: set both or neither",
                ));
            }
            (false, true) => {
                return Err(InvalidKeyRef::field(
                    "external_id",
                    "a role to assume needs the ExternalId its trust policy requires",
                ));
            }
        };
        if let Err(e) = id.parse::<AwsKeyRef>() {
            // The problem names the bad part; the whole input is not repeated back, and the
            // expected form is the one of the part the customer filled in (never the stored
            // `?role_arn=` syntax).
            return Err(InvalidKeyRef::whole(format!(
                "{}; expected {}",
                e.problem(),
                e.expected()
            )));
        }
        Ok(KeyRef::new(ProviderKind::AwsKms, id))
    }
}

#[async_trait]
impl ConfiguredProvider for AwsKmsConfig {
    async fn build(&self) -> Result<Arc<dyn KeyProvider>, ProviderError> {
        Ok(Arc::new(AwsKmsProvider::new(self.clone()).await?))
    }
}
