//! HMAC-SHA-512 with the key's schedule computed once and kept with the key (suite `0x0002`'s
//! derivation and the framed format's, both `HMAC-SHA-512(DEK, short message)`).
//!
//! HMAC spends two SHA-512 compressions on the key alone (`K ^ ipad` and `K ^ opad`, one block
//! each) before the message's two. Their results, the two SHA-512 states after those blocks, are
//! the same for every message under one key: [`HmacSchedule`] keeps them (128 bytes, zeroized
//! on drop), so a message costs 2 compressions instead of 4. aws-lc-rs exposes no SHA-512
//! midstate, so the compression function comes from RustCrypto's `sha2` (its `compress512`,
//! which picks AVX2 at run time); a property test pins the output to `aws_lc_rs::hmac`
//! (docs/adr/0018-per-call-costs.md).

use sha2::digest::generic_array::GenericArray;
use zeroize::{Zeroize, Zeroizing};

use crate::error::CryptoError;
use crate::key::KEY_LEN;

/// SHA-512 block length.
const BLOCK_LEN: usize = 128;
/// SHA-512 output length.
pub(crate) const OUTPUT_LEN: usize = 64;
/// Longest message [`HmacSchedule::mac`] takes: one block less the `0x80` byte and the 128-bit
/// length.
pub(crate) const MAX_MESSAGE_LEN: usize = BLOCK_LEN - 1 - 16;

/// SHA-512's initial state (FIPS 180-4 §5.3.5).
const IV: [u64; 8] = [
    0x6a09_e667_f3bc_c908,
    0xbb67_ae85_84ca_a73b,
    0x3c6e_f372_fe94_f82b,
    0xa54f_f53a_5f1d_36f1,
    0x510e_527f_ade6_82d1,
    0x9b05_688c_2b3e_6c1f,
    0x1f83_d9ab_fb41_bd6b,
    0x5be0_cd19_137e_2179,
];

/// The SHA-512 states after `K ^ ipad` and after `K ^ opad`, for one 256-bit key.
pub(crate) struct HmacSchedule {
    inner: [u64; 8],
    outer: [u64; 8],
}

impl Drop for HmacSchedule {
    fn drop(&mut self) {
        self.inner.zeroize();
        self.outer.zeroize();
    }
}

fn compress(state: &mut [u64; 8], block: &[u8; BLOCK_LEN]) {
    sha2::compress512(
        state,
        core::slice::from_ref(GenericArray::from_slice(block)),
    );
}

/// Writes the final block of a message whose last `tail.len()` bytes are `tail` and whose total
/// length, counting the key block, is `BLOCK_LEN + tail.len()` bytes.
fn final_block(block: &mut [u8; BLOCK_LEN], tail: &[u8]) {
    block.fill(0);
    block[..tail.len()].copy_from_slice(tail);
    block[tail.len()] = 0x80;
    let bits = ((BLOCK_LEN + tail.len()) as u128) * 8;
    block[BLOCK_LEN - 16..].copy_from_slice(&bits.to_be_bytes());
}

impl HmacSchedule {
    /// The schedule of `key` (shorter than a block, so zero-padded, RFC 2104).
    pub(crate) fn new(key: &[u8; KEY_LEN]) -> Box<Self> {
        let mut schedule = Box::new(HmacSchedule {
            inner: IV,
            outer: IV,
        });
        let mut block = Zeroizing::new([0u8; BLOCK_LEN]);
        for (pad, state) in [(0x36u8, &mut schedule.inner), (0x5c, &mut schedule.outer)] {
            block.fill(pad);
            for (b, k) in block.iter_mut().zip(key) {
                *b ^= k;
            }
            compress(state, &block);
        }
        schedule
    }

    /// `HMAC-SHA-512(key, message)` into `out`, for a message of at most [`MAX_MESSAGE_LEN`]
    /// bytes: two compressions.
    pub(crate) fn mac(
        &self,
        message: &[u8],
        out: &mut [u8; OUTPUT_LEN],
    ) -> Result<(), CryptoError> {
        if message.len() > MAX_MESSAGE_LEN {
            return Err(CryptoError::Kdf);
        }
        let mut block = Zeroizing::new([0u8; BLOCK_LEN]);
        final_block(&mut block, message);
        let mut state = Zeroizing::new(self.inner);
        compress(&mut state, &block);
        let mut inner_hash = Zeroizing::new([0u8; OUTPUT_LEN]);
        write_state(&state, &mut inner_hash);
        final_block(&mut block, inner_hash.as_slice());
        *state = self.outer;
        compress(&mut state, &block);
        write_state(&state, out);
        Ok(())
    }
}

fn write_state(state: &[u64; 8], out: &mut [u8; OUTPUT_LEN]) {
    for (chunk, word) in out.chunks_exact_mut(8).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use aws_lc_rs::hmac;
    use proptest::prelude::*;

    use super::*;

    fn reference(key: &[u8; KEY_LEN], message: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA512, key), message)
            .as_ref()
            .to_vec()
    }

    #[test]
    fn rfc_4231_style_edges_match_aws_lc() {
        for len in [0, 1, 53, 67, MAX_MESSAGE_LEN] {
            let key = [0x0bu8; KEY_LEN];
            let message = vec![0xa5u8; len];
            let mut out = [0u8; OUTPUT_LEN];
            HmacSchedule::new(&key).mac(&message, &mut out).unwrap();
            assert_eq!(
                out.to_vec(),
                reference(&key, &message),
                "message of {len} bytes"
            );
        }
    }

    #[test]
    fn longer_messages_are_refused_not_miscomputed() {
        let mut out = [0u8; OUTPUT_LEN];
        assert!(
            HmacSchedule::new(&[1; KEY_LEN])
                .mac(&[0; MAX_MESSAGE_LEN + 1], &mut out)
                .is_err()
        );
    }

    proptest! {
        #[test]
        fn equals_aws_lc_hmac_sha512(
            key in any::<[u8; KEY_LEN]>(),
            message in proptest::collection::vec(any::<u8>(), 0..=MAX_MESSAGE_LEN),
        ) {
            let schedule = HmacSchedule::new(&key);
            let mut out = [0u8; OUTPUT_LEN];
            schedule.mac(&message, &mut out).unwrap();
            prop_assert_eq!(out.to_vec(), reference(&key, &message));
            // The schedule is reusable: a second message under the same key.
            let mut again = [0u8; OUTPUT_LEN];
            schedule.mac(&message[..message.len() / 2], &mut again).unwrap();
            prop_assert_eq!(again.to_vec(), reference(&key, &message[..message.len() / 2]));
        }
    }
}
