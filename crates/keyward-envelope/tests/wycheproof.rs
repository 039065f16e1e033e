//! Project Wycheproof AES-GCM vectors against `keyward_envelope::aead`.
//!
//! Only the parameters Keyward uses apply: 256-bit keys, 96-bit nonces, 128-bit tags. Every
//! applicable case is run in both directions: valid cases must seal to the expected bytes and
//! open back; invalid cases must fail to open.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]
#![allow(clippy::panic, reason = "tests fail loudly")]

use keyward_envelope::{SecretKey, aead};
use wycheproof::TestResult;
use wycheproof::aead::{TestName, TestSet};

#[test]
fn wycheproof_aes_256_gcm() {
    let set = TestSet::load(TestName::AesGcm).unwrap();
    let (mut valid, mut invalid, mut skipped) = (0usize, 0usize, 0usize);
    for group in &set.test_groups {
        if group.key_size != 256 || group.nonce_size != 96 || group.tag_size != 128 {
            skipped += group.tests.len();
            continue;
        }
        for t in &group.tests {
            let id = t.tc_id;
            let key = SecretKey::try_from_slice(&t.key).unwrap();
            let nonce: [u8; aead::NONCE_LEN] = t.nonce.as_slice().try_into().unwrap();
            let mut ct_and_tag = t.ct.to_vec();
            ct_and_tag.extend_from_slice(&t.tag);

            match t.result {
                TestResult::Valid | TestResult::Acceptable => {
                    let sealed = aead::seal(&key, &nonce, &t.aad, &t.pt).unwrap();
                    assert_eq!(sealed, ct_and_tag, "tcId {id}: seal output");
                    let opened = aead::open(&key, &nonce, &t.aad, &ct_and_tag)
                        .unwrap_or_else(|e| panic!("tcId {id}: open failed: {e}"));
                    assert_eq!(&opened[..], &t.pt[..], "tcId {id}: plaintext");
                    valid += 1;
                }
                TestResult::Invalid => {
                    assert!(
                        aead::open(&key, &nonce, &t.aad, &ct_and_tag).is_err(),
                        "tcId {id}: invalid case opened ({})",
                        t.comment
                    );
                    invalid += 1;
                }
            }
        }
    }
    // wycheproof 0.7.0's aes_gcm_test.json has 39 valid and 27 invalid cases with a 256-bit
    // key, 96-bit nonce and 128-bit tag. A filter that silently matches nothing (for example
    // after an upgrade renames a field) must fail the test rather than pass vacuously.
    assert!(valid >= 39, "only {valid} valid AES-256-GCM cases ran");
    assert!(
        invalid >= 27,
        "only {invalid} invalid AES-256-GCM cases ran"
    );
    assert!(skipped > 0, "the filter should skip other key/nonce sizes");
}
