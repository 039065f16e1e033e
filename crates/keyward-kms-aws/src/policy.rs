//! The IAM policy documents a customer pastes to let Keyward use their key.
//!
//! Printed by `keyward onboarding policy --provider aws --principal ARN` and attached as the
//! remediation of an `AccessDeniedException`.

use keyward_kms::WrapContext;
use serde_json::json;

/// The key-policy statements that let `principal_arn` use a key for Keyward: pretty JSON of a
/// two-element array, to add to the key policy's `Statement` array.
///
/// 1. `AllowKeywardUseOfTheKey`: `kms:Encrypt`, `kms:Decrypt`, `kms:GenerateDataKey`, only
///    with an encryption context made of Keyward's three keys (`keyward:tenant`,
///    `keyward:tenant-key-id`, `keyward:purpose`) — least privilege: the principal cannot use
///    the key for anything that is not a Keyward tenant key. The `Null` condition makes the
///    context mandatory (`ForAllValues` alone is also true for a request without a context).
/// 2. `AllowKeywardDescribeKey`: `kms:DescribeKey`, which takes no encryption context.
///
/// `Resource`: in a key policy `"*"` means "this key" (AWS's convention, used when `key_arn` is
/// `None`). With `Some(key ARN)` the statements name that key instead, which is equivalent in its
/// own key policy and makes a statement pasted into the wrong key's policy grant nothing. An
/// alias ARN is not a key ARN (policies never match aliases), so it falls back to `"*"`.
pub fn key_policy_statement(principal_arn: &str, key_arn: Option<&str>) -> String {
    let resource = match key_arn {
        Some(arn) if arn.contains(":key/") => arn,
        _ => "*",
    };
    let statements = json!([
        {
            "Sid": "AllowKeywardUseOfTheKey",
            "Effect": "Allow",
            "Principal": { "AWS": principal_arn },
            "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"],
            "Resource": resource,
            "Condition": {
                "ForAllValues:StringEquals": {
                    "kms:EncryptionContextKeys": [
                        WrapContext::TENANT,
                        WrapContext::TENANT_KEY_ID,
                        WrapContext::PURPOSE,
                    ]
                },
                "Null": { "kms:EncryptionContextKeys": "false" }
            }
        },
        {
            "Sid": "AllowKeywardDescribeKey",
            "Effect": "Allow",
            "Principal": { "AWS": principal_arn },
            "Action": "kms:DescribeKey",
            "Resource": resource
        }
    ]);
    pretty(&statements)
}

/// The identity-policy statement that Keyward's own principal needs when the key is in another
/// account and Keyward uses it directly (without `AssumeRole`): a cross-account key is usable only
/// when both the key policy and the caller's IAM policy allow it.
pub fn principal_iam_policy_statement(key_arn: &str) -> String {
    pretty(&json!({
        "Sid": "AllowKeywardUseOfCustomerKey",
        "Effect": "Allow",
        "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"],
        "Resource": key_arn
    }))
}

/// The trust policy of the role a customer creates for cross-account access: only
/// `keyward_principal_arn` may assume it, and only with `external_id` (AWS's confused-deputy
/// guard: another Keyward customer cannot make Keyward use this role).
///
/// The role then needs the key-policy statements of [`key_policy_statement`] with the *role*
/// ARN as principal.
pub fn cross_account_trust_policy(keyward_principal_arn: &str, external_id: &str) -> String {
    pretty(&json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "AllowKeywardToAssumeThisRole",
            "Effect": "Allow",
            "Principal": { "AWS": keyward_principal_arn },
            "Action": "sts:AssumeRole",
            "Condition": { "StringEquals": { "sts:ExternalId": external_id } }
        }]
    }))
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).expect("invariant: a serde_json::Value always serializes")
}

/// The IAM principal to put into a policy for a caller identity ARN from `GetCallerIdentity`:
/// an assumed-role session `arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION` becomes the role
/// `arn:aws:iam::ACCOUNT:role/NAME` (a key policy cannot name a session; a role with a path
/// needs the path added by hand, `GetCallerIdentity` does not report it).
pub fn principal_for_caller(caller_arn: &str) -> String {
    let fields: Vec<&str> = caller_arn.splitn(6, ':').collect();
    if let [_, partition, "sts", _, account, resource] = fields[..]
        && let Some(rest) = resource.strip_prefix("assumed-role/")
        && let Some((role, _session)) = rest.split_once('/')
    {
        return format!("arn:{partition}:iam::{account}:role/{role}");
    }
    caller_arn.to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    #[test]
    fn key_policy_has_the_two_statements() {
        let p = "arn:aws:iam::999988887777:role/keyward";
        let text = key_policy_statement(p, None);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v[0]["Sid"], "AllowKeywardUseOfTheKey");
        assert_eq!(v[0]["Principal"]["AWS"], p);
        assert_eq!(
            v[0]["Action"],
            json!(["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"])
        );
        assert_eq!(
            v[0]["Condition"]["ForAllValues:StringEquals"]["kms:EncryptionContextKeys"],
            json!(["keyward:tenant", "keyward:tenant-key-id", "keyward:purpose"])
        );
        assert_eq!(
            v[0]["Condition"]["Null"]["kms:EncryptionContextKeys"],
            "false"
        );
        assert_eq!(v[1]["Action"], "kms:DescribeKey");
        assert!(v[1].get("Condition").is_none());
        assert!(text.contains('\n'), "pretty-printed");
        assert_eq!(v[0]["Resource"], "*");
        assert_eq!(
            key_policy_statement(p, Some("arn:aws:kms:eu-west-1:111122223333:alias/x")),
            text
        );
        let k = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let v: serde_json::Value = serde_json::from_str(&key_policy_statement(p, Some(k))).unwrap();
        assert_eq!(
            (&v[0]["Resource"], &v[1]["Resource"]),
            (&json!(k), &json!(k))
        );
    }

    #[test]
    fn trust_policy_requires_the_external_id() {
        let v: serde_json::Value = serde_json::from_str(&cross_account_trust_policy(
            "arn:aws:iam::999988887777:role/keyward",
            "acme-1",
        ))
        .unwrap();
        assert_eq!(
            v["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"],
            "acme-1"
        );
        assert_eq!(v["Statement"][0]["Action"], "sts:AssumeRole");
        let v: serde_json::Value = serde_json::from_str(&principal_iam_policy_statement(
            "arn:aws:kms:eu-west-1:1:key/k",
        ))
        .unwrap();
        assert_eq!(v["Resource"], "arn:aws:kms:eu-west-1:1:key/k");
    }

    #[test]
    fn assumed_role_sessions_become_roles() {
        assert_eq!(
            principal_for_caller("arn:aws:sts::999988887777:assumed-role/keyward-prod/i-0abc"),
            "arn:aws:iam::999988887777:role/keyward-prod"
        );
        assert_eq!(
            principal_for_caller("arn:aws:iam::999988887777:user/ci"),
            "arn:aws:iam::999988887777:user/ci"
        );
    }
}
