//! What `keyward-test-support`'s moto harness (`crates/keyward-test-support/src/aws.rs`) needs
//! from inside this crate. Not part of the API: hidden from the documentation, and it changes
//! with the harness.

pub use crate::policy::principal_for_caller;
