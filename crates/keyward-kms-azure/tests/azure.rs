//! The provider against the Key Vault test double: onboarding failures and their messages,
//! revocation by key attributes, classification through the real SDK, and the double's own
//! behaviour (it rejects what Key Vault rejects).
#![allow(clippy::unwrap_used, reason = "test code fails loudly on purpose")]
