//! [`AwsKmsConfig`]: the `[aws_kms]` section of the server configuration.

use std::time::Duration;

use keyward_kms::{ErrorKind, ProviderError};

/// How Keyward reaches AWS KMS. Credentials are not configured here: they come from the
/// standard AWS chain (environment, profile, web identity, ECS/EC2 instance roles).
///
/// Every field has a default, so an empty `[aws_kms]` section is valid.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsKmsConfig {
    /// Overrides the KMS endpoint (a FIPS or VPC endpoint, or an emulator in tests). `None`: the
    /// SDK's regional endpoint for the region in each key ARN.
    pub endpoint_url: Option<String>,
    /// Overrides the STS endpoint used for `AssumeRole` and `GetCallerIdentity`.
    pub sts_endpoint_url: Option<String>,
    /// Timeout of one attempt (connect + request + response), in milliseconds. Default 2000.
    pub attempt_timeout_ms: u64,
    /// Timeout for establishing a connection, in milliseconds. Default 1000.
    pub connect_timeout_ms: u64,
    /// Attempts per call, including the first, with the SDK's standard jittered exponential
    /// backoff between them (and its retry quota). Default 3; 1 disables retries.
    pub max_attempts: u32,
    /// Upper bound of the first backoff, in milliseconds: before retry `n` (1-based) the SDK
    /// waits a uniformly random time in `[0, initial_backoff × 2^(n-1)]` ("full jitter"),
    /// capped by `max_backoff_ms`. Default 200.
    pub initial_backoff_ms: u64,
    /// Cap of any one backoff, in milliseconds. Default 2000.
    pub max_backoff_ms: u64,
    /// Budget of one whole call (every attempt and backoff), in milliseconds: when it runs out
    /// the call fails with a timeout (`UNAVAILABLE`), whatever attempts remain. Must be at least
    /// `attempt_timeout_ms`. Default 5000.
    pub operation_timeout_ms: u64,
}

impl Default for AwsKmsConfig {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            sts_endpoint_url: None,
            attempt_timeout_ms: 2000,
            connect_timeout_ms: 1000,
            max_attempts: 3,
            initial_backoff_ms: 200,
            max_backoff_ms: 2000,
            operation_timeout_ms: 5000,
        }
    }
}

impl AwsKmsConfig {
    /// Checks the values that the SDK would otherwise reject late or silently misuse.
    pub(crate) fn validate(&self) -> Result<(), ProviderError> {
        let bad = |msg: String| Err(ProviderError::new(ErrorKind::Misconfigured, msg));
        for (name, url) in [
            ("aws_kms.endpoint_url", &self.endpoint_url),
            ("aws_kms.sts_endpoint_url", &self.sts_endpoint_url),
        ] {
            if let Some(url) = url
                && !(url.starts_with("https://") || url.starts_with("http://"))
            {
                return bad(format!(
                    "{name} '{url}' is not an http(s) URL, e.g. https://kms-fips.us-east-1.amazonaws.com"
                ));
            }
        }
        if self.attempt_timeout_ms == 0 || self.connect_timeout_ms == 0 {
            return bad(
                "aws_kms.attempt_timeout_ms and aws_kms.connect_timeout_ms must be positive"
                    .to_owned(),
            );
        }
        if !(1..=10).contains(&self.max_attempts) {
            return bad(format!(
                "aws_kms.max_attempts is {}; it must be 1 to 10",
                self.max_attempts
            ));
        }
        if self.initial_backoff_ms == 0 || self.initial_backoff_ms > self.max_backoff_ms {
            return bad(format!(
                "aws_kms.initial_backoff_ms is {}; it must be positive and at most \
                 aws_kms.max_backoff_ms ({})",
                self.initial_backoff_ms, self.max_backoff_ms
            ));
        }
        if self.max_backoff_ms > 60_000 {
            return bad(format!(
                "aws_kms.max_backoff_ms is {}; it must be at most 60000",
                self.max_backoff_ms
            ));
        }
        if self.operation_timeout_ms < self.attempt_timeout_ms {
            return bad(format!(
                "aws_kms.operation_timeout_ms ({}) must be at least aws_kms.attempt_timeout_ms ({})",
                self.operation_timeout_ms, self.attempt_timeout_ms
            ));
        }
        Ok(())
    }

    pub(crate) fn initial_backoff(&self) -> Duration {
        Duration::from_millis(self.initial_backoff_ms)
    }

    pub(crate) fn max_backoff(&self) -> Duration {
        Duration::from_millis(self.max_backoff_ms)
    }

    pub(crate) fn operation_timeout(&self) -> Duration {
        Duration::from_millis(self.operation_timeout_ms)
    }

    pub(crate) fn attempt_timeout(&self) -> Duration {
        Duration::from_millis(self.attempt_timeout_ms)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let c = AwsKmsConfig::default();
        assert_eq!(
            (c.attempt_timeout_ms, c.connect_timeout_ms, c.max_attempts),
            (2000, 1000, 3)
        );
        assert_eq!(
            (
                c.initial_backoff_ms,
                c.max_backoff_ms,
                c.operation_timeout_ms
            ),
            (200, 2000, 5000)
        );
        c.validate().unwrap();
        let c: AwsKmsConfig = serde_json::from_str(r#"{"max_attempts": 5}"#).unwrap();
        assert_eq!((c.attempt_timeout_ms, c.max_attempts), (2000, 5));
        assert!(serde_json::from_str::<AwsKmsConfig>(r#"{"region": "x"}"#).is_err());

        for bad in [
            AwsKmsConfig {
                max_attempts: 0,
                ..Default::default()
            },
            AwsKmsConfig {
                attempt_timeout_ms: 0,
                ..Default::default()
            },
            AwsKmsConfig {
                endpoint_url: Some("kms.local:4566".into()),
                ..Default::default()
            },
            AwsKmsConfig {
                initial_backoff_ms: 0,
                ..Default::default()
            },
            AwsKmsConfig {
                initial_backoff_ms: 3000,
                ..Default::default()
            },
            AwsKmsConfig {
                max_backoff_ms: 120_000,
                ..Default::default()
            },
            AwsKmsConfig {
                operation_timeout_ms: 1000,
                ..Default::default()
            },
        ] {
            assert_eq!(bad.validate().unwrap_err().kind(), ErrorKind::Misconfigured);
        }
    }
}
