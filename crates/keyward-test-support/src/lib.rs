//! The key providers' test doubles, for tests and the bench only; one module, and one feature,
//! per provider:
//!
//! - [`aws`] (feature `aws`): the moto AWS KMS emulator with AWS's key-state and policy
//!   enforcement (`tests/kms-emulator/keyward_moto.py`), SDK helpers to drive it, and
//!   [`aws::fault_proxy`], a fault-injecting HTTP proxy in front of it;
//! - [`pkcs11`] (feature `pkcs11`): a private SoftHSM2 token per test;
//! - [`gcp`] (feature `gcp`): a Cloud KMS test double on 127.0.0.1 (there is no emulator);
//! - [`azure`] (feature `azure`): a Key Vault / Managed HSM test double over HTTPS on 127.0.0.1
//!   (there is no emulator).
//!
//! Users: each provider crate's `tests/` (a dev-dependency; cargo allows the cycle, and the
//! integration tests see one copy of the provider crate), `keyward-server`'s tests, the
//! end-to-end tests (`tests/e2e`), and `keyward-bench`, which starts moto to measure. A double a
//! test needs must be there: a missing emulator or SoftHSM2 fails the test, it never skips it.
#![forbid(unsafe_code)]

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "azure")]
pub mod azure;
#[cfg(feature = "gcp")]
pub mod gcp;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
