//! Property tests of the framed envelope (docs/envelope-format.md §10): round trips over random
//! plaintext sizes (0 to 200 KiB), frame sizes (1 to 64 KiB) and writers' cuts, read back
//! through `parse_framed_header` and `FrameSplitter` in random chunkings (down to one byte at a
//! time); and that any single random mutation of a valid envelope fails, whole and streamed,
//! unless it left the bytes unchanged.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use keyward_envelope::framed::{
    self, FRAME_OVERHEAD, FRAMED_HEADER_FIXED_LEN, FrameOpener, FrameSealer, FrameSplitter,
    parse_framed_header,
};
use keyward_envelope::{EncryptionContext, EnvelopeError, KeyId, SecretKey, TenantId};
use proptest::prelude::*;

/// Deterministic bytes from `seed` (xorshift64*): large plaintexts without proptest building
/// (and shrinking) a value tree per byte.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

fn context() -> EncryptionContext {
    EncryptionContext::try_from_map([("purpose".into(), "properties".into())].into()).unwrap()
}

/// Seals `plaintext` frame by frame; with `empty_final`, a message that is an exact multiple of
/// the frame size ends with an empty final frame (a writer that learns of the end late).
/// Returns the envelope and its number of frames.
fn seal(
    dek: &SecretKey,
    tenant: &TenantId,
    frame_size: u32,
    plaintext: &[u8],
    empty_final: bool,
) -> (Vec<u8>, usize) {
    let (mut sealer, mut out) = FrameSealer::new(
        dek,
        tenant,
        &KeyId::from_bytes([9; 16]),
        &context(),
        frame_size,
    )
    .unwrap();
    let f = frame_size as usize;
    let mut frames = 0;
    let mut at = 0;
    loop {
        let rest = plaintext.len() - at;
        let (len, last) = if rest > f || (rest == f && empty_final) {
            (f, false)
        } else {
            (rest, true)
        };
        sealer
            .seal_frame(&plaintext[at..at + len], last, &mut out)
            .unwrap();
        frames += 1;
        at += len;
        if last {
            break;
        }
    }
    assert!(sealer.is_finished());
    (out, frames)
}

/// Reads `envelope` as a stream in chunks of the sizes `chunks` gives in turn (cycling): the
/// plaintext, or the first error. Checks on the way that the splitter never holds more than one
/// incomplete frame once drained, and that frames come out in order.
fn stream(
    envelope: &[u8],
    dek: &SecretKey,
    ctx: &EncryptionContext,
    chunks: &[usize],
) -> Result<Vec<u8>, EnvelopeError> {
    let mut pieces = Vec::new();
    let mut at = 0;
    for size in chunks.iter().cycle() {
        if at >= envelope.len() {
            break;
        }
        let end = (at + (*size).max(1)).min(envelope.len());
        pieces.push(&envelope[at..end]);
        at = end;
    }
    let mut pieces = pieces.into_iter();
    let mut head = Vec::new();
    let header = loop {
        if let Some(h) = parse_framed_header(&head)? {
            break h;
        }
        match pieces.next() {
            Some(p) => head.extend_from_slice(p),
            None => return Err(EnvelopeError::Malformed("truncated in the header")),
        }
    };
    assert!(header.encoded_len() <= head.len());
    let mut opener = FrameOpener::new(&header, dek, ctx)?;
    let mut splitter = FrameSplitter::new(&header);
    splitter.push(&head[header.encoded_len()..]);
    let mut plaintext = Vec::new();
    let bound = FRAME_OVERHEAD + header.frame_size() as usize;
    loop {
        while let Some(frame) = splitter.next_frame()? {
            let (part, last) = opener.open_frame(frame)?;
            assert_eq!(last, opener.is_finished());
            plaintext.extend_from_slice(&part);
        }
        assert!(splitter.buffered() < bound, "more than one frame buffered");
        match pieces.next() {
            Some(p) => splitter.push(p),
            None => break,
        }
    }
    framed::finish(&opener, &splitter)?;
    assert_eq!(opener.plaintext_len(), plaintext.len() as u64);
    Ok(plaintext)
}

/// Frame sizes from 1 byte to 64 KiB, small ones as likely as large ones.
fn frame_size() -> impl Strategy<Value = u32> {
    prop_oneof![1u32..=16, 17u32..=1024, 1025u32..=65_536]
}

/// Chunk sizes a transport might deliver: one byte at a time, a few bytes, or up to 70 KiB.
fn chunking() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        Just(vec![1]),
        proptest::collection::vec(1usize..=64, 1..6),
        proptest::collection::vec(1usize..=70_000, 1..6),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random sizes and frame sizes round-trip through the streaming reader in any chunking,
    /// with the expected number of frames and length.
    #[test]
    fn round_trip_in_any_chunking(
        (frame_size, len) in frame_size().prop_flat_map(|f| {
            // At most ~2048 frames per case (a frame size of 1 byte gives up to 2 KiB).
            let max = (f as usize * 2048).min(200 * 1024);
            (Just(f), 0..=max)
        }),
        seed in any::<u64>(),
        empty_final in any::<bool>(),
        dek in any::<[u8; 32]>(),
        chunks in chunking(),
    ) {
        let dek = SecretKey::from_bytes(dek);
        let tenant: TenantId = "acme".parse().unwrap();
        let plaintext = bytes(seed, len);
        let (envelope, frames) = seal(&dek, &tenant, frame_size, &plaintext, empty_final);
        let f = frame_size as usize;
        let expected_frames = if len == 0 { 1 } else { len.div_ceil(f) + usize::from(empty_final && len % f == 0) };
        prop_assert_eq!(frames, expected_frames);
        prop_assert_eq!(
            envelope.len(),
            FRAMED_HEADER_FIXED_LEN + 4 + len + frames * FRAME_OVERHEAD
        );
        let opened = stream(&envelope, &dek, &context(), &chunks).unwrap();
        prop_assert!(opened == plaintext, "plaintext differs");
        prop_assert!(framed::open_framed(&envelope, &dek, &context()).unwrap()[..] == plaintext[..]);
        if !empty_final {
            // A writer that knows where its input ends produces exactly seal_framed's cut.
            let header = parse_framed_header(&envelope).unwrap().unwrap();
            prop_assert_eq!(frames, if len == 0 { 1 } else { len.div_ceil(f) });
            prop_assert_eq!(header.frame_size(), frame_size);
        }
    }
}

/// One random change to `envelope`.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit { at: usize, bit: u8 },
    SetByte { at: usize, value: u8 },
    Truncate { len: usize },
    Remove { at: usize, len: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Duplicate { at: usize, len: usize, to: usize },
    SwapRanges { a: usize, b: usize, len: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Positions are fractions of the length, mapped in `apply`.
    let pos = any::<u16>().prop_map(usize::from);
    prop_oneof![
        (pos.clone(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (pos.clone(), any::<u8>()).prop_map(|(at, value)| Mutation::SetByte { at, value }),
        pos.clone().prop_map(|len| Mutation::Truncate { len }),
        (pos.clone(), 1usize..64).prop_map(|(at, len)| Mutation::Remove { at, len }),
        (pos.clone(), proptest::collection::vec(any::<u8>(), 1..48))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (pos.clone(), 1usize..64, pos.clone()).prop_map(|(at, len, to)| Mutation::Duplicate {
            at,
            len,
            to
        }),
        (pos.clone(), pos, 1usize..48).prop_map(|(a, b, len)| Mutation::SwapRanges { a, b, len }),
    ]
}

fn apply(envelope: &[u8], m: &Mutation) -> Vec<u8> {
    let n = envelope.len();
    let place = |p: usize| p * n / 65_536;
    let mut out = envelope.to_vec();
    match m {
        Mutation::FlipBit { at, bit } => out[place(*at)] ^= 1 << bit,
        Mutation::SetByte { at, value } => out[place(*at)] = *value,
        Mutation::Truncate { len } => out.truncate(place(*len)),
        Mutation::Remove { at, len } => {
            let start = place(*at);
            out.drain(start..(start + len).min(n));
        }
        Mutation::Insert { at, bytes } => {
            let at = place(*at) + usize::from(*at == 65_535);
            out.splice(at.min(n)..at.min(n), bytes.iter().copied());
        }
        Mutation::Duplicate { at, len, to } => {
            let start = place(*at);
            let run = envelope[start..(start + len).min(n)].to_vec();
            let to = place(*to);
            out.splice(to..to, run);
        }
        Mutation::SwapRanges { a, b, len } => {
            let (a, b) = (place(*a).min(place(*b)), place(*a).max(place(*b)));
            let len = (*len).min(b - a).min(n - b);
            for i in 0..len {
                out.swap(a + i, b + i);
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any single mutation of a valid envelope makes it fail, whole and streamed, unless the
    /// mutation left the bytes as they were (then it opens to the same plaintext).
    #[test]
    fn any_single_mutation_fails_unless_the_bytes_are_unchanged(
        frame_size in 1u32..=64,
        len in 0usize..600,
        seed in any::<u64>(),
        empty_final in any::<bool>(),
        m in mutation(),
        chunks in chunking(),
    ) {
        let dek = SecretKey::from_bytes([0x42; 32]);
        let tenant: TenantId = "t-1".parse().unwrap();
        let plaintext = bytes(seed, len);
        let (envelope, _) = seal(&dek, &tenant, frame_size, &plaintext, empty_final);
        let mutated = apply(&envelope, &m);
        let whole = framed::open_framed(&mutated, &dek, &context());
        let streamed = stream(&mutated, &dek, &context(), &chunks);
        if mutated == envelope {
            prop_assert!(whole.unwrap()[..] == plaintext[..]);
            prop_assert!(streamed.unwrap() == plaintext);
        } else {
            prop_assert!(whole.is_err(), "{:?} opened (whole)", m);
            prop_assert!(streamed.is_err(), "{:?} opened (streamed)", m);
            // Both readers agree on the kind of failure.
            let kind = |e: &EnvelopeError| std::mem::discriminant(e);
            prop_assert_eq!(kind(&whole.unwrap_err()), kind(&streamed.unwrap_err()));
        }
    }
}
