//! `kms_aws`: the AWS provider's key reference ([`keyward_kms_aws::AwsKeyRef`]:
//! `arn:…:kms:…:key/…` or `…:alias/…`, optionally `?role_arn=…&external_id=…`). AWS wrapped
//! keys are KMS ciphertext blobs that only KMS reads; Keyward checks nothing in them but the size.
//!
//! Invariants: an accepted reference displays in canonical form that parses back to itself (the
//! type's documented `parse(display(x)) == x`), its ARN is the display without the role suffix;
//! a rejection names a part and a problem.

use keyward_kms_aws::AwsKeyRef;

pub fn run(data: &[u8]) {
    let Some(text) = crate::text(data) else {
        return;
    };
    match text.parse::<AwsKeyRef>() {
        Ok(key) => {
            let shown = key.to_string();
            assert_eq!(
                shown.parse::<AwsKeyRef>().unwrap(),
                key,
                "{shown:?} does not parse back"
            );
            assert!(shown.starts_with(&key.arn()));
            assert_eq!(key.role.is_none(), shown == key.arn());
        }
        Err(e) => assert!(!e.problem().is_empty()),
    }
}
