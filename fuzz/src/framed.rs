//! `framed`: the framed envelope's streaming reader (envelope format version 2,
//! docs/envelope-format.md §10) on arbitrary bytes: [`parse_framed_header`], [`FrameSplitter`]
//! and [`FrameOpener`] with a fixed DEK and context (those of the framed vectors' base message,
//! "several frames with a context", docs/envelope/vectors-v2-framed.json), the input cut into
//! chunks chosen by its first byte (0: whole; 1: one byte at a time; else sizes drawn from a
//! generator seeded by it), and the same input read whole by [`framed::open_framed`].
//!
//! Invariants: the header parser fails only with `Malformed`, `UnsupportedVersion` or
//! `UnsupportedSuite` and its header is the input's first `90 + T` bytes; opening fails only
//! with `DecryptFailed` or `Malformed`; once drained, the splitter never holds a whole frame
//! (bounded memory whatever the lengths say); the chunking changes nothing (the same outcome,
//! error kind and released plaintext as reading it whole, and `open_framed` agrees); a frame
//! is released only after it opened, and a message that opens is exactly what sealing its
//! frames again with its salt, tenant, DEK id and frame size gives.

use keyward_envelope::framed::{
    self, FRAME_OVERHEAD, FRAMED_HEADER_FIXED_LEN, FrameOpener, FrameSealer, FrameSplitter,
    FramedHeader, parse_framed_header,
};
use keyward_envelope::{EncryptionContext, EnvelopeError, SecretKey};

/// The DEK of the framed vectors' base message (`seeds` checks it against the file).
pub const DEK: [u8; 32] = [
    0x09, 0x26, 0x43, 0x60, 0x7d, 0x9a, 0xb7, 0xd4, 0xf1, 0x0e, 0x2b, 0x48, 0x65, 0x82, 0x9f, 0xbc,
    0xd9, 0xf6, 0x13, 0x30, 0x4d, 0x6a, 0x87, 0xa4, 0xc1, 0xde, 0xfb, 0x18, 0x35, 0x52, 0x6f, 0x8c,
];
/// Its context.
pub const CONTEXT: [(&str, &str); 2] = [("purpose", "docs"), ("user", "u-42")];

pub fn context() -> EncryptionContext {
    EncryptionContext::try_from_map(
        CONTEXT
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
    .unwrap()
}

/// What a reader did: where it stopped, its error, the plaintext of each frame that opened
/// (with its final flag).
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    stage: &'static str,
    error: Option<String>,
    frames: Vec<(Vec<u8>, bool)>,
}

fn kind(e: &EnvelopeError) -> String {
    match e {
        EnvelopeError::Malformed(_) => "Malformed".to_owned(),
        EnvelopeError::UnsupportedVersion(_) => "UnsupportedVersion".to_owned(),
        EnvelopeError::UnsupportedSuite(_) => "UnsupportedSuite".to_owned(),
        EnvelopeError::DecryptFailed => "DecryptFailed".to_owned(),
        other => panic!("an error no reader may give: {other:?}"),
    }
}

/// Chunk sizes chosen by `selector`.
fn chunks(selector: u8, len: usize) -> Vec<usize> {
    match selector {
        0 => vec![len.max(1)],
        1 => vec![1; len],
        s => {
            let mut x = u64::from(s).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut sizes = Vec::new();
            let mut total = 0;
            while total < len {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                let size = 1
                    + (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as usize % (usize::from(s) * 8);
                sizes.push(size);
                total += size;
            }
            sizes
        }
    }
}

fn read(input: &[u8], sizes: &[usize], dek: &SecretKey, ctx: &EncryptionContext) -> Outcome {
    let mut pieces = Vec::new();
    let mut at = 0;
    for &size in sizes {
        if at >= input.len() {
            break;
        }
        let end = (at + size).min(input.len());
        pieces.push(&input[at..end]);
        at = end;
    }
    let mut pieces = pieces.into_iter();
    let stop = |stage, e: EnvelopeError, frames| Outcome {
        stage,
        error: Some(kind(&e)),
        frames,
    };
    let mut head = Vec::new();
    let header: FramedHeader = loop {
        match parse_framed_header(&head) {
            Ok(Some(h)) => break h,
            Ok(None) => match pieces.next() {
                Some(p) => head.extend_from_slice(p),
                None => {
                    return stop("header", EnvelopeError::Malformed("truncated"), Vec::new());
                }
            },
            Err(e) => {
                assert!(
                    !matches!(e, EnvelopeError::DecryptFailed),
                    "the header parser answered DecryptFailed"
                );
                return stop("header", e, Vec::new());
            }
        }
    };
    let tenant_len = header.tenant().as_str().len();
    assert_eq!(header.encoded_len(), FRAMED_HEADER_FIXED_LEN + tenant_len);
    assert_eq!(header.as_bytes(), &input[..header.encoded_len()]);
    let mut opener = match FrameOpener::new(&header, dek, ctx) {
        Ok(o) => o,
        Err(e) => return stop("open", e, Vec::new()),
    };
    let mut splitter = FrameSplitter::new(&header);
    splitter.push(&head[header.encoded_len()..]);
    let bound = FRAME_OVERHEAD + header.frame_size() as usize;
    let mut frames = Vec::new();
    loop {
        loop {
            match splitter.next_frame() {
                Ok(Some(frame)) => match opener.open_frame(frame) {
                    Ok((plaintext, last)) => frames.push((plaintext.to_vec(), last)),
                    Err(e) => return stop("open", e, frames),
                },
                Ok(None) => break,
                Err(e) => return stop("open", e, frames),
            }
        }
        assert!(
            splitter.buffered() < bound,
            "the splitter holds {} bytes after draining (frame size {})",
            splitter.buffered(),
            header.frame_size()
        );
        match pieces.next() {
            Some(p) => splitter.push(p),
            None => break,
        }
    }
    match framed::finish(&opener, &splitter) {
        Ok(()) => Outcome {
            stage: "open",
            error: None,
            frames,
        },
        Err(e) => stop("open", e, frames),
    }
}

pub fn run(data: &[u8]) {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let dek = SecretKey::from_bytes(DEK);
    let ctx = context();
    let chunked = read(input, &chunks(selector, input.len()), &dek, &ctx);
    let whole = read(input, &[input.len().max(1)], &dek, &ctx);
    assert_eq!(chunked, whole, "the chunking changed the outcome");
    if chunked.stage == "open" {
        if let Some(error) = &chunked.error {
            assert!(
                error == "DecryptFailed" || error == "Malformed",
                "opening failed with {error}"
            );
        }
    }
    // Only the last frame released may be final, and only if the message opened.
    for (i, (_, last)) in chunked.frames.iter().enumerate() {
        assert!(
            !last || i + 1 == chunked.frames.len(),
            "a frame after the final one"
        );
    }
    let in_memory = framed::open_framed(input, &dek, &ctx);
    match (&chunked.error, in_memory) {
        (None, Ok(plaintext)) => {
            let released: Vec<u8> = chunked.frames.iter().flat_map(|(p, _)| p.clone()).collect();
            assert_eq!(&plaintext[..], &released[..], "open_framed disagrees");
            assert!(chunked.frames.last().is_some_and(|(_, last)| *last));
            reseal_is_identity(input, &chunked.frames, &dek, &ctx);
        }
        (Some(error), Err(e)) => assert_eq!(error, &kind(&e), "open_framed disagrees"),
        (streamed, in_memory) => panic!(
            "the streaming reader ({streamed:?}) and open_framed ({:?}) disagree",
            in_memory.map(|p| p.len())
        ),
    }
}

/// A message that opened, sealed again frame by frame from its header's fields: the same bytes.
fn reseal_is_identity(
    input: &[u8],
    frames: &[(Vec<u8>, bool)],
    dek: &SecretKey,
    ctx: &EncryptionContext,
) {
    let header = parse_framed_header(input).unwrap().unwrap();
    let t = header.tenant().as_str().len();
    let salt: [u8; 32] = header.as_bytes()[22 + t..54 + t].try_into().unwrap();
    let (mut sealer, mut out) = FrameSealer::fixed_salt_for_test_vectors(
        dek,
        header.tenant(),
        header.dek_id(),
        ctx,
        header.frame_size(),
        &salt,
    )
    .unwrap();
    for (plaintext, last) in frames {
        sealer.seal_frame(plaintext, *last, &mut out).unwrap();
    }
    assert_eq!(
        out, input,
        "a message that opens is not what sealing it again gives"
    );
}
