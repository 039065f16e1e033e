//! The hasher of the maps and caches looked up on every call: the tenant gates, the key
//! caches, the usage and access meters, the authorization memo, the metric labels and the
//! concurrency limits (issue #26: SipHash cost ≈ 5k instructions per call there).
//!
//! `foldhash`'s `RandomState` is seeded at random per map, so a caller cannot precompute keys
//! that collide in this process; it is not a cryptographic PRF, and nothing here relies on it
//! being one (every map compares whole keys, and the authorization memo compares the remembered
//! request with the new one before trusting a hit). docs/adr/0018-per-call-costs.md.

/// The `BuildHasher` of the per-call maps.
pub(crate) type FastState = foldhash::fast::RandomState;

/// A `HashMap` with [`FastState`].
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, FastState>;
