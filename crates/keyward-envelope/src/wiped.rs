//! [`Wiped`]: a plaintext buffer cleared at memory speed when dropped.
//!
//! `zeroize` clears a `Vec<u8>` with one volatile store per byte, about a byte per cycle: for a
//! 1 KiB Encrypt that was ≈ 1.7k instructions per call, and for large buffers it runs at a
//! fraction of memory speed (issue #26). [`wipe`] clears with `fill` (a `memset`) and then hands
//! the buffer to `std::hint::black_box`, which the compiler must assume reads it, so the stores
//! cannot be removed as dead before the buffer is freed: the same construction as AWS-LC's
//! `OPENSSL_cleanse` (memset, then an empty `asm` that takes the pointer and clobbers memory).

use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};

/// Clears `buf` and the spare capacity behind it.
pub fn wipe(buf: &mut Vec<u8>) {
    buf.fill(0);
    buf.spare_capacity_mut().fill(MaybeUninit::new(0));
    std::hint::black_box(buf.as_mut_ptr());
}

/// A byte buffer (plaintext) that is [`wipe`]d when dropped. Its `Debug` shows the length only.
#[derive(Default)]
pub struct Wiped(Vec<u8>);

impl std::fmt::Debug for Wiped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wiped").field("len", &self.0.len()).finish()
    }
}

impl Wiped {
    /// Takes ownership of `buf`, to be wiped when dropped.
    pub fn new(buf: Vec<u8>) -> Self {
        Self(buf)
    }

    /// The buffer, no longer to be wiped by this wrapper (for handing it to a response that
    /// takes ownership of it).
    pub fn into_inner(mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

impl Deref for Wiped {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Wiped {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for Wiped {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wipe_clears_the_contents_and_keeps_the_length() {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&[0xa5; 48]);
        buf.truncate(16); // old plaintext now sits in the spare capacity too
        wipe(&mut buf);
        assert_eq!(buf, [0u8; 16]);
        // (The spare capacity cannot be read without `unsafe`; `wipe` writes it through
        // `spare_capacity_mut`, the same way.)
    }

    #[test]
    fn into_inner_hands_the_buffer_over_unwiped() {
        let wiped = Wiped::new(b"hello".to_vec());
        assert_eq!(&**wiped, b"hello");
        assert_eq!(wiped.into_inner(), b"hello");
    }
}
