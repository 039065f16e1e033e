//! `--output base64` / `--input base64` on a streamed envelope: standard base64 (one line, as
//! the unary commands write it) encoded and decoded piece by piece, so that a large envelope
//! is never held whole. The concatenation of the pieces is exactly what the engine would
//! make of the whole.

use anyhow::bail;
use base64::Engine as _;

const ENGINE: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Encodes bytes given in pieces of any size.
#[derive(Default)]
pub(crate) struct Base64Encoder {
    /// The last 0 to 2 bytes, waiting for a full group of three.
    carry: Vec<u8>,
}

impl Base64Encoder {
    /// Appends the text of every complete group of three bytes to `out`.
    pub(crate) fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.carry.extend_from_slice(bytes);
        let whole = self.carry.len() / 3 * 3;
        push_encoded(&self.carry[..whole], out);
        self.carry.drain(..whole);
    }

    /// The rest, padded, and the line's end.
    pub(crate) fn finish(self, out: &mut Vec<u8>) {
        push_encoded(&self.carry, out);
        out.push(b'\n');
    }
}

fn push_encoded(bytes: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + bytes.len().div_ceil(3) * 4, 0);
    let written = ENGINE
        .encode_slice(bytes, &mut out[start..])
        .unwrap_or_default();
    out.truncate(start + written);
}

/// Decodes text given in pieces of any size; ASCII whitespace anywhere is skipped.
#[derive(Default)]
pub(crate) struct Base64Decoder {
    /// The last 0 to 3 characters, waiting for a full group of four.
    carry: Vec<u8>,
    /// A padded group was decoded: the text must end there.
    padded: bool,
}

impl Base64Decoder {
    /// Appends the bytes of every complete group of four characters to `out`.
    pub(crate) fn push(&mut self, text: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
        self.carry
            .extend(text.iter().copied().filter(|c| !c.is_ascii_whitespace()));
        if self.carry.is_empty() {
            return Ok(());
        }
        if self.padded {
            bail!("text after the base64 padding");
        }
        let whole = self.carry.len() / 4 * 4;
        if whole == 0 {
            return Ok(());
        }
        let group = &self.carry[..whole];
        self.padded = group.ends_with(b"=");
        ENGINE.decode_vec(group, out)?;
        self.carry.drain(..whole);
        Ok(())
    }

    /// Checks that the text ended with a complete group.
    pub(crate) fn finish(self) -> anyhow::Result<()> {
        if !self.carry.is_empty() {
            bail!("the base64 text ends inside a group of four characters");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    /// 0, 1, 2, ... 255, 0, ...: every byte value, any length.
    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// `data` split at every `step` bytes.
    fn pieces(data: &[u8], step: usize) -> impl Iterator<Item = &[u8]> {
        data.chunks(step.max(1))
    }

    #[test]
    fn pieces_encode_to_the_whole_line() {
        for len in [0, 1, 2, 3, 4, 5, 100, 1000] {
            let data = bytes(len);
            let whole = format!("{}\n", ENGINE.encode(&data));
            for step in [1, 2, 3, 4, 7, 64, 1000] {
                let mut encoder = Base64Encoder::default();
                let mut out = Vec::new();
                for piece in pieces(&data, step) {
                    encoder.push(piece, &mut out);
                }
                encoder.finish(&mut out);
                assert_eq!(out, whole.as_bytes(), "len {len} step {step}");
            }
        }
    }

    #[test]
    fn pieces_decode_to_the_whole_and_whitespace_is_skipped() {
        for len in [0, 1, 2, 3, 4, 5, 100, 1000] {
            let data = bytes(len);
            let text = format!("{}\n", ENGINE.encode(&data));
            for step in [1, 2, 3, 5, 64, 1000] {
                let mut decoder = Base64Decoder::default();
                let mut out = Vec::new();
                for piece in pieces(text.as_bytes(), step) {
                    decoder.push(piece, &mut out).unwrap();
                }
                decoder.finish().unwrap();
                assert_eq!(out, data, "len {len} step {step}");
            }
        }
        let mut decoder = Base64Decoder::default();
        let mut out = Vec::new();
        decoder.push(b"aGVs\r\n bG8=\n", &mut out).unwrap();
        decoder.finish().unwrap();
        assert_eq!(out, b"hello");
    }

    #[test]
    fn invalid_text_is_refused_wherever_the_pieces_are_cut() {
        // A character outside the alphabet, text after the padding, a truncated group.
        for text in [&b"aGVs*G8="[..], b"aGVsbG8=aGVs", b"aGVsbG8"] {
            for step in [1, 3, 4, 100] {
                let mut decoder = Base64Decoder::default();
                let mut out = Vec::new();
                let result = pieces(text, step)
                    .try_for_each(|p| decoder.push(p, &mut out))
                    .and_then(|()| decoder.finish());
                assert!(result.is_err(), "{text:?} step {step} decoded to {out:?}");
            }
        }
    }
}
