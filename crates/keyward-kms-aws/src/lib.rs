//! AWS KMS as a Keyward key-encryption-key provider.
//!
//! [`AwsKmsProvider`] implements [`keyward_kms::KeyProvider`] with the official SDK:
//! `GenerateDataKey` for new tenant keys (`docs/adr/0004-aws-generate-data-key.md`), `Encrypt`
//! to wrap, `Decrypt` pinned to the registered key ARN to unwrap, `DescribeKey` for key state
//! and validation. Every call carries the tenant's encryption context. Key references are
//! [`AwsKeyRef`]s: a key or alias ARN, optionally with a role to assume (with an external id)
//! for cross-account keys. Errors are classified once, from typed AWS error codes
//! (`docs/providers/aws.md` has the table).
//!
//! Its tests run the moto KMS emulator with AWS's key-state enforcement
//! (`tests/kms-emulator/keyward_moto.py`), started by `keyward-test-support`'s `aws` module.
#![forbid(unsafe_code)]

mod classify;
mod config;
pub mod events;
mod factory;
#[doc(hidden)]
pub mod for_test_support;
mod key_ref;
mod policy;
mod provider;

pub use config::AwsKmsConfig;
pub use events::{AwsEventsConfig, AwsEventsFactory};
pub use factory::AwsKmsFactory;
pub use key_ref::{
    AssumeRole, AwsKeyRef, EXPECTED_FORM, EXPECTED_ROLE_FORM, InvalidAwsKeyRef, KeyRefPart,
    KeyResource,
};
pub use policy::{
    cross_account_trust_policy, key_policy_statement, principal_iam_policy_statement,
};
pub use provider::AwsKmsProvider;
