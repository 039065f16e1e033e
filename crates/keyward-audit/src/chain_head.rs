//! [`ChainHead`]: the end of the hash chain, which a record follows and a checkpoint signs
//! (`docs/audit-format.md` §3, §4). Its own module, below both, so that neither `record` nor
//! `checkpoint` imports the other.

/// The end of the chain: the last record's sequence number and hash.
///
/// The store reads it inside the transaction that appends the next record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainHead {
    /// The last record's `seq` (0 for the empty chain).
    pub seq: u64,
    /// The last record's hash (all zero for the empty chain).
    pub hash: [u8; 32],
}

impl ChainHead {
    /// The head of the empty chain: seq 0, hash all zero. The first record (seq 1) points to it.
    pub const GENESIS: ChainHead = ChainHead {
        seq: 0,
        hash: [0u8; 32],
    };
}
