//! `envelope`: [`keyward_envelope::parse`] on arbitrary bytes, then `open` with a fixed DEK and
//! context (those of the first valid test vector, docs/envelope/vectors-v1.json).
//!
//! Invariants: parse fails only with `Malformed`, `UnsupportedVersion` or `UnsupportedSuite`; an
//! accepted envelope's header bytes are exactly the re-encoding of its parsed fields, and header,
//! ciphertext and tag account for every input byte; open fails only with the coarse
//! `DecryptFailed`; an envelope that opens is exactly what sealing its plaintext again with its
//! suite, salt, tenant and DEK id produces.

use keyward_envelope::{
    EncryptionContext, EnvelopeError, FORMAT_VERSION, MAGIC, SecretKey, aead::TAG_LEN,
    Sealer,
};

/// The DEK of the first valid vector ("empty plaintext, empty context").
pub const DEK: [u8; 32] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
];

pub fn run(data: &[u8]) {
    let envelope = match keyward_envelope::parse(data) {
        Ok(envelope) => envelope,
        Err(
            EnvelopeError::Malformed(_)
            | EnvelopeError::UnsupportedVersion(_)
            | EnvelopeError::UnsupportedSuite(_),
        ) => return,
        Err(other) => panic!("parse failed with an error that is not a parse error: {other:?}"),
    };
    let header = envelope.header();
    let tenant = header.tenant().as_str().as_bytes();
    let mut encoded = Vec::new();
    encoded.extend_from_slice(&MAGIC);
    encoded.push(FORMAT_VERSION);
    encoded.extend_from_slice(&header.suite().id().to_be_bytes());
    encoded.push(u8::try_from(tenant.len()).unwrap());
    encoded.extend_from_slice(tenant);
    encoded.extend_from_slice(header.dek_id().as_bytes());
    encoded.extend_from_slice(header.salt());
    encoded.extend_from_slice(header.commitment());
    assert_eq!(header.version(), FORMAT_VERSION);
    assert_eq!(
        envelope.header_bytes(),
        &encoded[..],
        "header bytes are not the fields' encoding"
    );
    assert_eq!(header.encoded_len(), encoded.len());
    assert_eq!(
        encoded.len() + envelope.plaintext_len() + TAG_LEN,
        data.len(),
        "header, ciphertext and tag do not account for the input"
    );

    let dek = SecretKey::from_bytes(DEK);
    let ctx = EncryptionContext::empty();
    match envelope.open(&dek, &ctx) {
        Ok(plaintext) => {
            let again = Sealer::new(&dek, header.tenant(), header.dek_id()).suite(header.suite()).fixed_salt_for_test_vectors(header.salt()).seal(&ctx, &plaintext)
            .unwrap();
            assert_eq!(
                again, data,
                "an envelope that opens is not what sealing it again gives"
            );
        }
        Err(EnvelopeError::DecryptFailed) => {}
        Err(other) => panic!("open failed with a detailed error (an oracle): {other:?}"),
    }
}
