//! Generates `docs/envelope/vectors-v2-framed.json`, the test vectors of the framed envelope
//! (envelope format version 2, docs/envelope-format.md §10).
//!
//! ```text
//! cargo run -p keyward-envelope --example gen_framed_vectors > docs/envelope/vectors-v2-framed.json
//! ```
//!
//! Valid vectors use fixed keys and salts (`FrameSealer::fixed_salt_for_test_vectors`; production
//! code always draws a random salt), so the output is deterministic: regenerating must give a
//! byte-identical file unless the format changed. Every valid envelope is also built a second
//! time by [`Spec`], a direct transcription of §10 (HMAC-SHA-512 and the raw AES-256-GCM), and
//! the two must agree. `Spec` also seals the invalid vectors that need *authentic* frames that
//! break a rule (a short non-final frame, a frame longer than the frame size, a frame after the
//! final one), which the crate's sealer refuses to write. Every invalid vector's expected error
//! and released byte count are checked here against `framed::open_framed` and the streaming
//! reader before the file is written. `tests/framed_vectors.rs` replays the file.

#![allow(
    clippy::print_stdout,
    reason = "the generator writes the vectors file to stdout"
)]
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a generator with fixed inputs; failing loudly is right"
)]

use std::collections::BTreeMap;

use aws_lc_rs::hmac;
use keyward_envelope::framed::{
    self, FRAME_OVERHEAD, FRAMED_VERSION, FrameOpener, FrameSealer, FrameSplitter, MAX_FRAME_SIZE,
};
use keyward_envelope::{
    EncryptionContext, EnvelopeError, KeyId, Sealer, SecretKey, Suite, TenantId, aead,
};
use serde_json::{Value, json};

/// Deterministic filler: byte i is (i * mul + add) mod 256.
fn pattern(len: usize, mul: usize, add: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * mul + add) % 256) as u8).collect()
}

fn arr<const N: usize>(mul: usize, add: usize) -> [u8; N] {
    pattern(N, mul, add).try_into().unwrap()
}

fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn context(map: &BTreeMap<String, String>) -> EncryptionContext {
    EncryptionContext::with_reserved(map.clone()).unwrap()
}

const FINAL: u32 = 1 << 31;

/// §10 written out from the document, independently of `framed.rs`: the header, the keys, and
/// one frame for any (sequence number, word, plaintext), whether or not the word obeys the
/// rules.
struct Spec {
    header: Vec<u8>,
    message_key: SecretKey,
    context: Vec<u8>,
}

impl Spec {
    fn new(v: &Valid, frame_size: u32) -> Spec {
        // OKM = HMAC-SHA-512(DEK, "KEYWARD-V2-FRAMEKEYS" || 00 02 || salt || 01)
        let mut info = b"KEYWARD-V2-FRAMEKEYS".to_vec();
        info.extend_from_slice(&[0x00, 0x02]);
        info.extend_from_slice(&v.salt);
        info.push(0x01);
        let okm = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA512, &v.dek), &info);
        let okm = okm.as_ref();
        let mut header = b"KW".to_vec();
        header.push(0x02);
        header.extend_from_slice(&[0x00, 0x02]);
        header.push(u8::try_from(v.tenant.len()).unwrap());
        header.extend_from_slice(v.tenant.as_bytes());
        header.extend_from_slice(&v.dek_id);
        header.extend_from_slice(&v.salt);
        header.extend_from_slice(&okm[32..64]);
        header.extend_from_slice(&frame_size.to_be_bytes());
        Spec {
            header,
            message_key: SecretKey::try_from_slice(&okm[..32]).unwrap(),
            context: context(&v.context).canonical_bytes(),
        }
    }

    /// word || AES-256-GCM(message key, 00000000 || seq, header || context || seq || word, pt).
    fn frame(&self, seq: u64, word: u32, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&seq.to_be_bytes());
        let mut aad = self.header.clone();
        aad.extend_from_slice(&self.context);
        aad.extend_from_slice(&seq.to_be_bytes());
        aad.extend_from_slice(&word.to_be_bytes());
        let mut out = word.to_be_bytes().to_vec();
        out.extend(aead::seal(&self.message_key, &nonce, &aad, plaintext).unwrap());
        out
    }

    /// A whole message, frame by frame as `lengths` cuts `plaintext` (the last one final).
    fn message(&self, plaintext: &[u8], lengths: &[usize]) -> Vec<u8> {
        let mut out = self.header.clone();
        let mut at = 0;
        for (seq, &len) in lengths.iter().enumerate() {
            let last = seq + 1 == lengths.len();
            let word = u32::try_from(len).unwrap() | if last { FINAL } else { 0 };
            out.extend(self.frame(seq as u64, word, &plaintext[at..at + len]));
            at += len;
        }
        assert_eq!(at, plaintext.len());
        out
    }
}

struct Valid {
    name: &'static str,
    dek: [u8; 32],
    tenant: String,
    dek_id: [u8; 16],
    salt: [u8; 32],
    context: BTreeMap<String, String>,
    frame_size: u32,
    plaintext: Vec<u8>,
    /// The plaintext length of each frame, the last one final; `None`: as a writer that knows
    /// where the input ends cuts it (full frames, then a final one of 1 ..= F bytes; one empty
    /// final frame for an empty message).
    frame_lengths: Option<Vec<usize>>,
}

impl Valid {
    fn lengths(&self) -> Vec<usize> {
        if let Some(l) = &self.frame_lengths {
            return l.clone();
        }
        let f = self.frame_size as usize;
        if self.plaintext.is_empty() {
            return vec![0];
        }
        self.plaintext.chunks(f).map(<[u8]>::len).collect()
    }

    /// Sealed by the crate, frame by frame; checked against [`Spec`].
    fn seal(&self) -> Vec<u8> {
        let tenant: TenantId = self.tenant.parse().unwrap();
        let (mut sealer, mut out) = FrameSealer::fixed_salt_for_test_vectors(
            &SecretKey::from_bytes(self.dek),
            &tenant,
            &KeyId::from_bytes(self.dek_id),
            &context(&self.context),
            self.frame_size,
            &self.salt,
        )
        .unwrap();
        let lengths = self.lengths();
        let mut at = 0;
        for (i, &len) in lengths.iter().enumerate() {
            let last = i + 1 == lengths.len();
            sealer
                .seal_frame(&self.plaintext[at..at + len], last, &mut out)
                .unwrap();
            at += len;
        }
        let spec = Spec::new(self, self.frame_size).message(&self.plaintext, &lengths);
        assert_eq!(out, spec, "{}: the crate and the spec disagree", self.name);
        if self.frame_lengths.is_none() {
            let whole = framed::seal_framed_with_salt(
                &SecretKey::from_bytes(self.dek),
                &tenant,
                &KeyId::from_bytes(self.dek_id),
                &context(&self.context),
                self.frame_size,
                &self.plaintext,
                &self.salt,
            )
            .unwrap();
            assert_eq!(out, whole, "{}: seal_framed cuts differently", self.name);
        }
        out
    }

    fn to_json(&self) -> Value {
        json!({
            "case": self.name,
            "dek": hex::encode(self.dek),
            "tenant": self.tenant,
            "dek_id": hex::encode(self.dek_id),
            "salt": hex::encode(self.salt),
            "context": self.context,
            "frame_size": self.frame_size,
            "frame_lengths": self.lengths(),
            "plaintext": hex::encode(&self.plaintext),
            "envelope": hex::encode(self.seal()),
        })
    }
}

/// How the crate's readers answer `envelope`: the stage that fails ("parse" or "open"), the
/// error kind, and the plaintext bytes a streaming reader released before the failure (whole
/// input at once, and one byte at a time: they must agree).
fn outcome(
    envelope: &[u8],
    dek: &[u8; 32],
    ctx: &BTreeMap<String, String>,
) -> (String, String, u64) {
    let dek = SecretKey::from_bytes(*dek);
    let ctx = context(ctx);
    let whole = framed::open_framed(envelope, &dek, &ctx);
    let answers: Vec<(String, String, u64)> = [envelope.len().max(1), 1]
        .into_iter()
        .map(|chunk| {
            let (stage, result, released) = stream(envelope, &dek, &ctx, chunk);
            let error = result.expect_err("an invalid vector opened");
            (stage.to_owned(), kind(&error).to_owned(), released)
        })
        .collect();
    assert_eq!(answers[0], answers[1], "chunking changes the outcome");
    assert_eq!(
        answers[0].1,
        kind(&whole.expect_err("open_framed accepted an invalid vector")),
        "open_framed and the streaming reader disagree"
    );
    answers[0].clone()
}

type Streamed = (&'static str, Result<(), EnvelopeError>, u64);

/// The streaming reader of §10.4 over `envelope` in chunks of `chunk` bytes.
fn stream(envelope: &[u8], dek: &SecretKey, ctx: &EncryptionContext, chunk: usize) -> Streamed {
    let mut chunks = envelope.chunks(chunk);
    let mut head = Vec::new();
    let header = loop {
        match framed::parse_framed_header(&head) {
            Ok(Some(h)) => break h,
            Ok(None) => match chunks.next() {
                Some(c) => head.extend_from_slice(c),
                None => return ("parse", Err(EnvelopeError::Malformed("truncated")), 0),
            },
            Err(e) => return ("parse", Err(e), 0),
        }
    };
    let mut released = 0u64;
    let mut opener = match FrameOpener::new(&header, dek, ctx) {
        Ok(o) => o,
        Err(e) => return ("open", Err(e), 0),
    };
    let mut splitter = FrameSplitter::new(&header);
    splitter.push(&head[header.encoded_len()..]);
    loop {
        loop {
            match splitter.next_frame() {
                Ok(Some(frame)) => match opener.open_frame(frame) {
                    Ok((plaintext, _)) => released += plaintext.len() as u64,
                    Err(e) => return ("open", Err(e), released),
                },
                Ok(None) => break,
                Err(e) => return ("open", Err(e), released),
            }
        }
        match chunks.next() {
            Some(c) => splitter.push(c),
            None => break,
        }
    }
    ("open", framed::finish(&opener, &splitter), released)
}

fn kind(e: &EnvelopeError) -> &'static str {
    match e {
        EnvelopeError::Malformed(_) => "Malformed",
        EnvelopeError::UnsupportedVersion(_) => "UnsupportedVersion",
        EnvelopeError::UnsupportedSuite(_) => "UnsupportedSuite",
        EnvelopeError::DecryptFailed => "DecryptFailed",
        other => panic!("unexpected error {other:?}"),
    }
}

struct Invalids {
    cases: Vec<Value>,
}

impl Invalids {
    /// Adds a case, checking that the crate answers exactly (`stage`, `error`, `released`).
    #[allow(clippy::too_many_arguments, reason = "one row of the table")]
    fn add(
        &mut self,
        name: &str,
        envelope: &[u8],
        dek: &[u8; 32],
        ctx: &BTreeMap<String, String>,
        stage: &str,
        error: &str,
        released: u64,
    ) {
        let got = outcome(envelope, dek, ctx);
        assert_eq!(
            got,
            (stage.to_owned(), error.to_owned(), released),
            "{name}: the crate's answer differs from the expected one"
        );
        self.cases.push(json!({
            "case": name,
            "envelope": hex::encode(envelope),
            "dek": hex::encode(dek),
            "context": ctx,
            "stage": stage,
            "error": error,
            "released": released,
        }));
    }
}

/// (start, end) of each frame of a well-formed `envelope` whose header is `header_len` bytes.
fn frame_ranges(envelope: &[u8], header_len: usize) -> Vec<(usize, usize)> {
    let mut at = header_len;
    let mut out = Vec::new();
    while at < envelope.len() {
        let word = u32::from_be_bytes(envelope[at..at + 4].try_into().unwrap());
        let end = at + FRAME_OVERHEAD + (word & !FINAL) as usize;
        out.push((at, end));
        at = end;
    }
    assert_eq!(at, envelope.len());
    out
}

fn main() {
    let valid = [
        Valid {
            name: "empty message: one empty final frame (default frame size, empty context)",
            dek: arr(1, 0),
            tenant: "acme".into(),
            dek_id: arr(3, 1),
            salt: arr(5, 2),
            context: BTreeMap::new(),
            frame_size: framed::DEFAULT_FRAME_SIZE,
            plaintext: Vec::new(),
            frame_lengths: None,
        },
        Valid {
            name: "shorter than a frame: one final frame",
            dek: arr(7, 3),
            tenant: "acme".into(),
            dek_id: arr(11, 4),
            salt: arr(13, 5),
            context: map(&[("purpose", "chat")]),
            frame_size: 16,
            plaintext: b"hello, keyward".to_vec(),
            frame_lengths: None,
        },
        Valid {
            name: "exact multiple of the frame size: the last full frame is final",
            dek: arr(17, 6),
            tenant: "t-1".into(),
            dek_id: arr(19, 7),
            salt: arr(23, 8),
            context: BTreeMap::new(),
            frame_size: 8,
            plaintext: pattern(32, 5, 1),
            frame_lengths: None,
        },
        Valid {
            name: "exact multiple of the frame size ending with an empty final frame (a writer that learns of the end after a full frame)",
            dek: arr(17, 6),
            tenant: "t-1".into(),
            dek_id: arr(19, 7),
            salt: arr(59, 16),
            context: BTreeMap::new(),
            frame_size: 8,
            plaintext: pattern(16, 5, 1),
            frame_lengths: Some(vec![8, 8, 0]),
        },
        Valid {
            name: "two frames (the annotated example of docs/envelope-format.md section 10.8)",
            dek: arr(61, 17),
            tenant: "acme".into(),
            dek_id: arr(67, 18),
            salt: arr(71, 19),
            context: map(&[("purpose", "chat")]),
            frame_size: 8,
            plaintext: b"hello, keyward!".to_vec(),
            frame_lengths: None,
        },
        // The base of the invalid vectors: 4 full frames and a final one of 7 bytes.
        Valid {
            name: "several frames with a context",
            dek: arr(29, 9),
            tenant: "acme".into(),
            dek_id: arr(31, 10),
            salt: arr(37, 11),
            context: map(&[("purpose", "docs"), ("user", "u-42")]),
            frame_size: 16,
            plaintext: pattern(71, 3, 200),
            frame_lengths: None,
        },
        Valid {
            name: "frame size 1",
            dek: arr(41, 12),
            tenant: "0".into(),
            dek_id: [0u8; 16],
            salt: [0u8; 32],
            context: map(&[("k", "")]),
            frame_size: 1,
            plaintext: b"keyward".to_vec(),
            frame_lengths: None,
        },
        Valid {
            name: "64 KiB frames (the default frame size): one full frame and a final one of 17 bytes",
            dek: arr(43, 13),
            tenant: "acme".into(),
            dek_id: arr(47, 14),
            salt: arr(53, 15),
            context: map(&[("conversation", "42")]),
            frame_size: framed::DEFAULT_FRAME_SIZE,
            plaintext: pattern(65_536 + 17, 31, 7),
            frame_lengths: None,
        },
        Valid {
            name: "frame size 2^20 (the largest), 64-character tenant, unicode context",
            dek: [0xffu8; 32],
            tenant: "t.1_x-".repeat(10) + "9abc",
            dek_id: [0xffu8; 16],
            salt: [0xffu8; 32],
            context: map(&[("région", "île-de-France"), ("emoji", "🔑"), ("z", "last")]),
            frame_size: MAX_FRAME_SIZE,
            plaintext: pattern(100, 7, 3),
            frame_lengths: None,
        },
    ];
    let valid_json: Vec<Value> = valid.iter().map(Valid::to_json).collect();

    // Invalid vectors, derived from "several frames with a context": tenant "acme" (T = 4),
    // frame size 16, 71 bytes of plaintext in frames 0..=3 (16 bytes each, 36 bytes on the
    // wire) and the final frame 4 (7 bytes, 27 on the wire). Header: magic 0..2, version 2,
    // suite 3..5, tenant length 5, tenant 6..10, DEK id 10..26, salt 26..58, commitment
    // 58..90, frame size 90..94.
    let base = &valid[5];
    let env = base.seal();
    let h = 94;
    assert_eq!(env.len(), h + 4 * 36 + 27);
    let fr = frame_ranges(&env, h);
    assert_eq!(fr.len(), 5);
    let spec = Spec::new(base, base.frame_size);
    let dek = &base.dek;
    let ctx = &base.context;
    let piece = |i: usize| &env[fr[i].0..fr[i].1];
    let frames = |order: &[usize]| {
        let mut v = env[..h].to_vec();
        for &i in order {
            v.extend_from_slice(piece(i));
        }
        v
    };
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut e = env.clone();
        f(&mut e);
        e
    };
    // Byte offsets inside frame i.
    let word = |i: usize| fr[i].0;
    let ciphertext = |i: usize| fr[i].0 + 4;
    let tag = |i: usize| fr[i].1 - 16;
    let (p, o, mal, df) = ("parse", "open", "Malformed", "DecryptFailed");
    let mut inv = Invalids { cases: Vec::new() };
    let mut add = |name: &str, e: &[u8], stage: &str, error: &str, released: u64| {
        inv.add(name, e, dek, ctx, stage, error, released);
    };

    // Reordered, duplicated, dropped frames.
    add(
        "reorder: frames 0 and 1 swapped",
        &frames(&[1, 0, 2, 3, 4]),
        o,
        df,
        0,
    );
    add(
        "reorder: frames 2 and 3 swapped",
        &frames(&[0, 1, 3, 2, 4]),
        o,
        df,
        32,
    );
    add(
        "reorder: the final frame moved before frame 3",
        &frames(&[0, 1, 2, 4, 3]),
        o,
        df,
        48,
    );
    add(
        "duplicate: frame 0 twice",
        &frames(&[0, 0, 1, 2, 3, 4]),
        o,
        df,
        16,
    );
    add(
        "duplicate: frame 2 twice",
        &frames(&[0, 1, 2, 2, 3, 4]),
        o,
        df,
        48,
    );
    add(
        "duplicate: the final frame twice (bytes after the final frame)",
        &frames(&[0, 1, 2, 3, 4, 4]),
        o,
        mal,
        71,
    );
    add("drop: the first frame", &frames(&[1, 2, 3, 4]), o, df, 0);
    add(
        "drop: a middle frame (2)",
        &frames(&[0, 1, 3, 4]),
        o,
        df,
        32,
    );
    add(
        "drop: the final frame (truncated at the last frame boundary)",
        &frames(&[0, 1, 2, 3]),
        o,
        mal,
        64,
    );
    // Truncated at every other frame boundary.
    for n in 0..4 {
        let what = if n == 0 {
            "after the header (no frame)".to_owned()
        } else {
            format!("after frame {}", n - 1)
        };
        add(
            &format!("truncated at a frame boundary: {what}"),
            &env[..fr.get(n).map_or(h, |r| r.0)],
            o,
            mal,
            16 * n as u64,
        );
    }
    // Truncated inside the header and inside a frame.
    for (name, at) in [
        ("truncated in the header: empty input", 0),
        ("truncated in the header: inside the magic", 1),
        ("truncated in the header: before the suite id", 3),
        ("truncated in the header: inside the tenant id", 8),
        ("truncated in the header: inside the DEK id", 20),
        ("truncated in the header: inside the salt", 40),
        ("truncated in the header: inside the commitment", 70),
        ("truncated in the header: before the frame size", 90),
        ("truncated in the header: inside the frame size", 92),
    ] {
        add(name, &env[..at], p, mal, 0);
    }
    add(
        "truncated inside a frame: in frame 1's word",
        &env[..word(1) + 2],
        o,
        mal,
        16,
    );
    add(
        "truncated inside a frame: in frame 2's ciphertext",
        &env[..ciphertext(2) + 5],
        o,
        mal,
        32,
    );
    add(
        "truncated inside a frame: in frame 3's tag",
        &env[..tag(3) + 8],
        o,
        mal,
        48,
    );
    add(
        "truncated inside a frame: the final frame's last byte missing",
        &env[..env.len() - 1],
        o,
        mal,
        64,
    );
    add(
        "truncated inside a frame: the final frame's tag missing",
        &env[..tag(4)],
        o,
        mal,
        64,
    );

    // Extended after the final frame.
    add(
        "extend: one byte after the final frame",
        &with(&|e| e.push(0)),
        o,
        mal,
        71,
    );
    add(
        "extend: a copy of frame 1 after the final frame",
        &frames(&[0, 1, 2, 3, 4, 1]),
        o,
        mal,
        71,
    );
    let next = spec.frame(5, FINAL, b"more");
    add(
        "extend: an authentic frame (sequence number 5, final) after the final frame",
        &with(&|e| e.extend_from_slice(&next)),
        o,
        mal,
        71,
    );

    // One bit flipped in each region.
    add("flip a bit: magic", &with(&|e| e[0] ^= 0x01), p, mal, 0);
    add(
        "flip a bit: version (2 -> 3)",
        &with(&|e| e[2] ^= 0x01),
        p,
        "UnsupportedVersion",
        0,
    );
    add(
        "flip a bit: suite id (0x0002 -> 0x0003)",
        &with(&|e| e[4] ^= 0x01),
        p,
        "UnsupportedSuite",
        0,
    );
    add(
        "flip a bit: tenant id length (4 -> 0)",
        &with(&|e| e[5] ^= 0x04),
        p,
        mal,
        0,
    );
    add(
        "flip a bit: tenant id (\"acme\" -> \"abme\": a valid tenant, but not the sealed one)",
        &with(&|e| e[7] ^= 0x01),
        o,
        df,
        0,
    );
    add(
        "flip a bit: tenant id (\"acme\" -> \"Acme\": not a tenant id)",
        &with(&|e| e[6] ^= 0x20),
        p,
        mal,
        0,
    );
    add("flip a bit: DEK id", &with(&|e| e[17] ^= 0x40), o, df, 0);
    add(
        "flip a bit: salt (the commitment no longer matches)",
        &with(&|e| e[40] ^= 0x02),
        o,
        df,
        0,
    );
    add(
        "flip a bit: commitment",
        &with(&|e| e[89] ^= 0x80),
        o,
        df,
        0,
    );
    add(
        "flip a bit: frame size (16 -> 48: frame 0 breaks the length rule)",
        &with(&|e| e[93] ^= 0x20),
        o,
        mal,
        0,
    );
    add(
        "flip a bit: frame size (16 -> 2^24 + 16: over the largest)",
        &with(&|e| e[90] ^= 0x01),
        p,
        mal,
        0,
    );
    add(
        "flip a bit: word's final flag on frame 0 (a full frame claiming to be final)",
        &with(&|e| e[word(0)] ^= 0x80),
        o,
        df,
        0,
    );
    add(
        "flip a bit: word's final flag on the final frame (a short frame claiming not to be final)",
        &with(&|e| e[word(4)] ^= 0x80),
        o,
        mal,
        64,
    );
    add(
        "flip a bit: word's length on frame 1 (16 -> 17, longer than the frame size)",
        &with(&|e| e[word(1) + 3] ^= 0x01),
        o,
        mal,
        16,
    );
    add(
        "flip a bit: word's length on frame 1 (16 -> 0, a short non-final frame)",
        &with(&|e| e[word(1) + 3] ^= 0x10),
        o,
        mal,
        16,
    );
    add(
        "flip a bit: word's length on the final frame (7 -> 6)",
        &with(&|e| e[word(4) + 3] ^= 0x01),
        o,
        df,
        64,
    );
    add(
        "flip a bit: word's length on frame 2 (high bits: 16 -> 2^16 + 16)",
        &with(&|e| e[word(2) + 1] ^= 0x01),
        o,
        mal,
        32,
    );
    add(
        "flip a bit: ciphertext of frame 2",
        &with(&|e| e[ciphertext(2) + 3] ^= 0x08),
        o,
        df,
        32,
    );
    add(
        "flip a bit: ciphertext of the final frame",
        &with(&|e| e[ciphertext(4)] ^= 0x01),
        o,
        df,
        64,
    );
    add(
        "flip a bit: tag of frame 0",
        &with(&|e| e[tag(0)] ^= 0x01),
        o,
        df,
        0,
    );
    add(
        "flip a bit: tag of the final frame",
        &with(&|e| e[env.len() - 1] ^= 0x80),
        o,
        df,
        64,
    );

    // Authentic frames (sealed by Spec with the message key) that break a rule: only the rule
    // stops them.
    let authentic = |lengths: &[(usize, bool)]| {
        let mut out = env[..h].to_vec();
        let mut at = 0;
        for (seq, &(len, last)) in lengths.iter().enumerate() {
            let word = u32::try_from(len).unwrap() | if last { FINAL } else { 0 };
            out.extend(spec.frame(seq as u64, word, &base.plaintext[at..at + len]));
            at += len;
        }
        out
    };
    add(
        "rule: an authentic non-final frame shorter than the frame size (10 of 16)",
        &authentic(&[(16, false), (10, false), (16, false), (7, true)]),
        o,
        mal,
        16,
    );
    add(
        "rule: an authentic empty non-final frame",
        &authentic(&[(16, false), (0, false), (16, false), (7, true)]),
        o,
        mal,
        16,
    );
    add(
        "rule: an authentic frame longer than the frame size (17 of 16, final)",
        &authentic(&[(16, false), (16, false), (17, true)]),
        o,
        mal,
        32,
    );
    add(
        "rule: an authentic frame longer than the frame size (32 of 16, non-final)",
        &authentic(&[(32, false), (16, false), (7, true)]),
        o,
        mal,
        0,
    );
    // The frame size outside 1 ..= 2^20 in a header whose commitment is right.
    let sized = |frame_size: u32| {
        let s = Spec::new(base, frame_size);
        let mut e = s.header.clone();
        e.extend(s.frame(0, FINAL, b"x"));
        e
    };
    add("frame size 0", &sized(0), p, mal, 0);
    add("frame size 2^20 + 1", &sized(MAX_FRAME_SIZE + 1), p, mal, 0);
    // A message of one frame whose frame size changed (16 -> 48): the rules still hold, only
    // authentication (the header is in every frame's AAD) catches it.
    let short = &valid[1];
    let mut short_env = short.seal();
    short_env[93] ^= 0x20;
    inv.add(
        "flip a bit: frame size of a one-frame message (16 -> 48; the header is authenticated)",
        &short_env,
        &short.dek,
        &short.context,
        o,
        df,
        0,
    );

    // Wrong context, wrong DEK, and envelopes of another version.
    let mut other_ctx = ctx.clone();
    other_ctx.insert("user".into(), "u-43".into());
    inv.add(
        "wrong context: one value changed",
        &env,
        dek,
        &other_ctx,
        o,
        df,
        0,
    );
    inv.add(
        "wrong context: empty",
        &env,
        dek,
        &BTreeMap::new(),
        o,
        df,
        0,
    );
    let mut wrong_dek = *dek;
    wrong_dek[0] ^= 1;
    inv.add(
        "wrong DEK (one bit different): the commitment does not match",
        &env,
        &wrong_dek,
        ctx,
        o,
        df,
        0,
    );
    let v1 = Sealer::new(
        &SecretKey::from_bytes(*dek),
        &"acme".parse().unwrap(),
        &KeyId::from_bytes(base.dek_id),
    )
    .suite(Suite::Aes256GcmHkdfExpandSha512Committing)
    .fixed_salt_for_test_vectors(&base.salt)
    .seal(&context(ctx), &base.plaintext)
    .unwrap();
    inv.add(
        "a version 1 envelope (not a framed one)",
        &v1,
        dek,
        ctx,
        p,
        "UnsupportedVersion",
        0,
    );
    inv.add(
        "version 2 relabelled as version 1 (to a framed reader)",
        &with(&|e| e[2] = 1),
        dek,
        ctx,
        p,
        "UnsupportedVersion",
        0,
    );
    assert_eq!(env[2], FRAMED_VERSION);

    let doc = json!({
        "description": "Keyward framed envelope (envelope format version 2) test vectors \
            (docs/envelope-format.md section 10). Valid cases: sealing `plaintext` with (dek, \
            tenant, dek_id, context, frame_size) and the fixed `salt`, cut into frames of \
            `frame_lengths` plaintext bytes (the last one final), must produce exactly \
            `envelope`, and opening it with (dek, context) must return `plaintext`. Invalid \
            cases: with stage \"parse\", reading the header fails with `error` (a header still \
            incomplete at the end of the input is Malformed); with stage \"open\", the header \
            parses and opening fails with `error`, after a streaming reader has released \
            exactly `released` plaintext bytes (the frames that opened before the failure). \
            Error kinds: Malformed, UnsupportedVersion, UnsupportedSuite, DecryptFailed. All \
            byte strings are lowercase hex; contexts are string maps.",
        "regenerate": "cargo run -p keyward-envelope --example gen_framed_vectors > docs/envelope/vectors-v2-framed.json",
        "format_version": FRAMED_VERSION,
        "suite": Suite::Aes256GcmHkdfExpandSha512Committing.id(),
        "valid": valid_json,
        "invalid": inv.cases,
    });
    println!("{}", serde_json::to_string_pretty(&doc).unwrap());
}
