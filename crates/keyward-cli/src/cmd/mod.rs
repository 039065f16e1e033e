//! One module per command group; each takes its parsed arguments from [`crate::cli`].

pub(crate) mod audit;
pub(crate) mod crypto;
pub(crate) mod export;
pub(crate) mod key;
pub(crate) mod key_history;
pub(crate) mod onboarding;
pub(crate) mod policy;
pub(crate) mod rekey;
pub(crate) mod serve;
pub(crate) mod shred;
pub(crate) mod store;
pub(crate) mod stream;
pub(crate) mod tenant;
