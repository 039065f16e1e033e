//! The AWS KMS key reference: the id of a `aws-kms:` [`keyward_kms::KeyRef`].
//!
//! ```text
//! arn:<partition>:kms:<region>:<account>:key/<key-id>
//! arn:<partition>:kms:<region>:<account>:alias/<alias-name>
//!   optionally followed by
//! ?role_arn=arn:<partition>:iam::<account>:role/<name>&external_id=<id>
//! ```
//!
//! Parsing is strict, so that a typo is reported at registration with the exact part that is
//! wrong, instead of as a `NotFoundException` (or worse, a call to the wrong region) later.

use std::fmt;
use std::str::FromStr;

use keyward_kms::{ErrorKind, ProviderError};

/// The partitions AWS KMS exists in (`aws-iso-e`/`-f` are left out until someone needs them).
const PARTITIONS: [&str; 5] = ["aws", "aws-cn", "aws-us-gov", "aws-iso", "aws-iso-b"];

/// The expected form, shown in parse errors of the key ARN: only the ARN a customer writes. The
/// `?role_arn=…&external_id=…` suffix is Keyward's own storage syntax (customers give the role in
/// its own fields, `--role-arn` / `--external-id`), so no error ends with it.
pub const EXPECTED_FORM: &str = "arn:<partition>:kms:<region>:<12-digit account>:key/<key id> \
     (or …:alias/<alias name>), e.g. \
     arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

/// The expected form of the role to assume, for errors in it.
pub const EXPECTED_ROLE_FORM: &str = "a role ARN arn:<partition>:iam::<12-digit account>:role/<role name> \
     with an external id of 2 to 1224 characters from letters, digits and _ + = , . @ : / -";

/// A parsed, validated AWS KMS key reference. Displays in canonical form; `parse(display(x)) == x`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AwsKeyRef {
    /// `aws`, `aws-cn`, `aws-us-gov`, `aws-iso` or `aws-iso-b`.
    pub partition: String,
    /// The key's region, e.g. `eu-west-1`; Keyward calls KMS in this region.
    pub region: String,
    /// The 12-digit account that owns the key.
    pub account: String,
    /// The key or the alias.
    pub resource: KeyResource,
    /// Cross-account access through STS `AssumeRole`, if any.
    pub role: Option<AssumeRole>,
}

/// What the ARN names: a key, or an alias that points to one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyResource {
    /// `key/<id>`: a key id (a UUID, or `mrk-` and 32 hex digits for a multi-Region key).
    Key(String),
    /// `alias/<name>`: resolved to a key ARN at registration (`canonicalize`).
    Alias(String),
}

/// The role Keyward assumes (with an external id) to use a key in the customer's account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AssumeRole {
    /// `arn:<partition>:iam::<account>:role/<path/><name>`.
    pub role_arn: String,
    /// The `sts:ExternalId` the role's trust policy requires: AWS's confused-deputy guard.
    pub external_id: String,
}

impl AwsKeyRef {
    /// The key or alias ARN, without the role suffix: the `KeyId` sent to KMS.
    pub fn arn(&self) -> String {
        let resource = match &self.resource {
            KeyResource::Key(id) => format!("key/{id}"),
            KeyResource::Alias(name) => format!("alias/{name}"),
        };
        format!(
            "arn:{}:kms:{}:{}:{resource}",
            self.partition, self.region, self.account
        )
    }

    /// Whether this names an alias rather than a key.
    pub fn is_alias(&self) -> bool {
        matches!(self.resource, KeyResource::Alias(_))
    }
}

impl fmt::Display for AwsKeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn())?;
        if let Some(role) = &self.role {
            write!(
                f,
                "?role_arn={}&external_id={}",
                role.role_arn, role.external_id
            )?;
        }
        Ok(())
    }
}

/// Which part of an AWS key reference is malformed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefPart {
    /// Not `arn:…:kms:…` with six `:`-separated fields.
    Shape,
    /// The partition (`aws`, `aws-cn`, …).
    Partition,
    /// The service (must be `kms`).
    Service,
    /// The region (`eu-west-1`).
    Region,
    /// The 12-digit account.
    Account,
    /// The resource (`key/…` or `alias/…`).
    Resource,
    /// The key id.
    KeyId,
    /// The alias name.
    AliasName,
    /// The `?…` suffix (unknown or repeated parameters, a role without an external id).
    Query,
    /// The `role_arn` parameter.
    RoleArn,
    /// The `external_id` parameter.
    ExternalId,
}

/// A malformed AWS key reference: which part, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid AWS KMS key reference '{input}': {problem}; expected {}", self.expected())]
pub struct InvalidAwsKeyRef {
    part: KeyRefPart,
    input: String,
    problem: String,
}

impl InvalidAwsKeyRef {
    fn new(part: KeyRefPart, input: &str, problem: impl Into<String>) -> Self {
        Self {
            part,
            input: input.to_owned(),
            problem: problem.into(),
        }
    }

    /// The part that is wrong.
    pub fn part(&self) -> KeyRefPart {
        self.part
    }

    /// The form the wrong part should have: the key ARN's, or the role's for an error in the
    /// role or external id ([`EXPECTED_FORM`], [`EXPECTED_ROLE_FORM`]).
    pub fn expected(&self) -> &'static str {
        match self.part {
            KeyRefPart::Query | KeyRefPart::RoleArn | KeyRefPart::ExternalId => EXPECTED_ROLE_FORM,
            _ => EXPECTED_FORM,
        }
    }

    /// What is wrong with it, without the input and the expected form.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl From<InvalidAwsKeyRef> for ProviderError {
    fn from(e: InvalidAwsKeyRef) -> Self {
        ProviderError::new(ErrorKind::Misconfigured, e.to_string())
    }
}

impl FromStr for AwsKeyRef {
    type Err = InvalidAwsKeyRef;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = |part, problem: String| InvalidAwsKeyRef::new(part, input, problem);
        let (arn, query) = match input.split_once('?') {
            Some((arn, query)) => (arn, Some(query)),
            None => (input, None),
        };
        let fields: Vec<&str> = arn.splitn(6, ':').collect();
        let [prefix, partition, service, region, account, resource] = fields[..] else {
            return Err(bad(
                KeyRefPart::Shape,
                format!(
                    "an ARN has six ':'-separated fields, this has {}",
                    fields.len()
                ),
            ));
        };
        if prefix != "arn" {
            return Err(bad(
                KeyRefPart::Shape,
                format!("it must start with 'arn:', not '{prefix}:'"),
            ));
        }
        if !PARTITIONS.contains(&partition) {
            return Err(bad(
                KeyRefPart::Partition,
                format!(
                    "partition '{partition}' is not one of {}",
                    PARTITIONS.join(", ")
                ),
            ));
        }
        if service != "kms" {
            return Err(bad(
                KeyRefPart::Service,
                format!("service '{service}' is not 'kms': this is not a KMS key ARN"),
            ));
        }
        if !is_region(region) {
            return Err(bad(
                KeyRefPart::Region,
                format!("region '{region}' is not a region name like eu-west-1"),
            ));
        }
        if !is_account(account) {
            return Err(bad(
                KeyRefPart::Account,
                format!("account '{account}' is not 12 digits"),
            ));
        }
        let resource = parse_resource(resource).map_err(|(part, problem)| bad(part, problem))?;
        let role = match query {
            None => None,
            Some(q) => {
                Some(parse_role(q, partition).map_err(|(part, problem)| bad(part, problem))?)
            }
        };
        Ok(AwsKeyRef {
            partition: partition.to_owned(),
            region: region.to_owned(),
            account: account.to_owned(),
            resource,
            role,
        })
    }
}

type PartError = (KeyRefPart, String);

fn parse_resource(resource: &str) -> Result<KeyResource, PartError> {
    if let Some(id) = resource.strip_prefix("key/") {
        if is_key_id(id) {
            return Ok(KeyResource::Key(id.to_owned()));
        }
        return Err((
            KeyRefPart::KeyId,
            format!(
                "key id '{id}' is neither a UUID (1234abcd-12ab-34cd-56ef-1234567890ab) nor a \
                 multi-Region key id (mrk- followed by 32 hex digits)"
            ),
        ));
    }
    if let Some(name) = resource.strip_prefix("alias/") {
        if name.starts_with("aws/") {
            return Err((
                KeyRefPart::AliasName,
                format!(
                    "alias/{name} names an AWS managed key, whose key policy cannot grant \
                     Keyward access; create a customer managed key"
                ),
            ));
        }
        // AWS: 1 to 256 characters including the "alias/" prefix, from [a-zA-Z0-9/_-].
        let valid_chars = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'));
        if !name.is_empty() && name.len() <= 250 && valid_chars {
            return Ok(KeyResource::Alias(name.to_owned()));
        }
        return Err((
            KeyRefPart::AliasName,
            format!(
                "alias name '{name}' must be 1 to 250 characters from a-z, A-Z, 0-9, '/', '_' and '-'"
            ),
        ));
    }
    Err((
        KeyRefPart::Resource,
        format!("resource '{resource}' is neither key/<key id> nor alias/<alias name>"),
    ))
}

fn parse_role(query: &str, key_partition: &str) -> Result<AssumeRole, PartError> {
    let (mut role_arn, mut external_id) = (None, None);
    for param in query.split('&') {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        let slot = match name {
            "role_arn" => &mut role_arn,
            "external_id" => &mut external_id,
            _ => {
                return Err((
                    KeyRefPart::Query,
                    format!(
                        "unknown parameter '{name}': only role_arn and external_id are allowed"
                    ),
                ));
            }
        };
        if slot.replace(value).is_some() {
            return Err((
                KeyRefPart::Query,
                format!("parameter '{name}' appears twice"),
            ));
        }
    }
    let Some(role_arn) = role_arn else {
        return Err((
            KeyRefPart::Query,
            "external_id given without role_arn".to_owned(),
        ));
    };
    let Some(external_id) = external_id else {
        return Err((
            KeyRefPart::Query,
            "role_arn given without external_id: a cross-account role must require an \
             sts:ExternalId (the confused-deputy guard)"
                .to_owned(),
        ));
    };
    validate_role_arn(role_arn, key_partition)?;
    // AWS: ExternalId is 2 to 1224 characters of [\w+=,.@:/-].
    let valid_chars = external_id.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'_' | b'+' | b'=' | b',' | b'.' | b'@' | b':' | b'/' | b'-'
            )
    });
    if !(2..=1224).contains(&external_id.len()) || !valid_chars {
        return Err((
            KeyRefPart::ExternalId,
            format!(
                "external_id '{external_id}' must be 2 to 1224 characters from letters, digits \
                 and _ + = , . @ : / -"
            ),
        ));
    }
    Ok(AssumeRole {
        role_arn: role_arn.to_owned(),
        external_id: external_id.to_owned(),
    })
}

fn validate_role_arn(role_arn: &str, key_partition: &str) -> Result<(), PartError> {
    let bad = |problem: String| {
        Err((
            KeyRefPart::RoleArn,
            format!(
                "role_arn '{role_arn}' {problem}; expected arn:{key_partition}:iam::<12-digit account>:role/<role name>"
            ),
        ))
    };
    let fields: Vec<&str> = role_arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = fields[..] else {
        return bad("is not an ARN".to_owned());
    };
    if prefix != "arn" || service != "iam" {
        return bad("is not an IAM ARN".to_owned());
    }
    if partition != key_partition {
        return bad(format!(
            "is in partition '{partition}' but the key is in '{key_partition}'"
        ));
    }
    if !region.is_empty() {
        return bad("has a region, IAM ARNs have none".to_owned());
    }
    if !is_account(account) {
        return bad(format!("has account '{account}', which is not 12 digits"));
    }
    let Some(path_and_name) = resource.strip_prefix("role/") else {
        return bad("does not name a role (role/<name>)".to_owned());
    };
    // IAM: name 1 to 64 of [\w+=,.@-]; an optional path of /-separated segments before it.
    let name = path_and_name.rsplit('/').next().unwrap_or_default();
    let iam_char = |b: u8| {
        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'=' | b',' | b'.' | b'@' | b'-')
    };
    let path_ok =
        path_and_name.bytes().all(|b| b == b'/' || iam_char(b)) && path_and_name.len() <= 576;
    if name.is_empty() || name.len() > 64 || !path_ok {
        return bad(
            "has an invalid role name: 1 to 64 characters from letters, digits and _ + = , . @ -"
                .to_owned(),
        );
    }
    Ok(())
}

/// `xx-name(-name)*-N`: e.g. `us-east-1`, `us-gov-west-1`, `cn-north-1`, `us-isob-east-1`.
pub(crate) fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let [first, middle @ .., last] = &parts[..] else {
        return false;
    };
    !middle.is_empty()
        && first.len() == 2
        && first.bytes().all(|b| b.is_ascii_lowercase())
        && middle
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && (1..=2).contains(&last.len())
        && last.bytes().all(|b| b.is_ascii_digit())
}

fn is_account(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// A UUID (8-4-4-4-12 hex digits) or `mrk-` followed by 32 hex digits.
fn is_key_id(s: &str) -> bool {
    if let Some(hex) = s.strip_prefix("mrk-") {
        return hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    const KEY: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    const ROLE: &str =
        "?role_arn=arn:aws:iam::111122223333:role/keyward-access&external_id=keyward-acme-7f3a";

    #[test]
    fn valid_references_round_trip() {
        for s in [
            KEY.to_owned(),
            format!("{KEY}{ROLE}"),
            "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab".to_owned(),
            "arn:aws:kms:us-east-1:111122223333:alias/keyward/acme_prod-1".to_owned(),
            "arn:aws-us-gov:kms:us-gov-west-1:111122223333:alias/k".to_owned(),
            "arn:aws-cn:kms:cn-north-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
                .to_owned(),
            "arn:aws-iso-b:kms:us-isob-east-1:111122223333:alias/x?role_arn=arn:aws-iso-b:iam::444455556666:role/path/to/r&external_id=a=b:c/d".to_owned(),
        ] {
            let parsed: AwsKeyRef = s.parse().unwrap();
            assert_eq!(parsed.to_string(), s);
            assert_eq!(parsed.to_string().parse::<AwsKeyRef>().unwrap(), parsed);
        }
        let parsed: AwsKeyRef = format!("{KEY}{ROLE}").parse().unwrap();
        assert_eq!(parsed.region, "eu-west-1");
        assert_eq!(parsed.account, "111122223333");
        assert_eq!(parsed.arn(), KEY);
        assert!(!parsed.is_alias());
        let role = parsed.role.unwrap();
        assert_eq!(
            role.role_arn,
            "arn:aws:iam::111122223333:role/keyward-access"
        );
        assert_eq!(role.external_id, "keyward-acme-7f3a");
    }

    #[test]
    fn query_parameters_may_come_in_any_order() {
        let s = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab?external_id=xy&role_arn=arn:aws:iam::111122223333:role/r";
        let parsed: AwsKeyRef = s.parse().unwrap();
        assert!(
            parsed
                .to_string()
                .ends_with("?role_arn=arn:aws:iam::111122223333:role/r&external_id=xy")
        );
    }

    #[test]
    fn malformed_references_name_the_bad_part() {
        let k = "1234abcd-12ab-34cd-56ef-1234567890ab";
        let cases: &[(String, KeyRefPart, &str)] = &[
            (
                "1234abcd-12ab-34cd-56ef-1234567890ab".into(),
                KeyRefPart::Shape,
                "six ':'-separated fields",
            ),
            (
                format!("arm:aws:kms:eu-west-1:111122223333:key/{k}"),
                KeyRefPart::Shape,
                "must start with 'arn:'",
            ),
            (
                format!("arn:amazon:kms:eu-west-1:111122223333:key/{k}"),
                KeyRefPart::Partition,
                "partition 'amazon'",
            ),
            (
                format!("arn:aws:s3:eu-west-1:111122223333:key/{k}"),
                KeyRefPart::Service,
                "service 's3'",
            ),
            (
                format!("arn:aws:kms:euwest1:111122223333:key/{k}"),
                KeyRefPart::Region,
                "region 'euwest1'",
            ),
            (
                format!("arn:aws:kms:EU-west-1:111122223333:key/{k}"),
                KeyRefPart::Region,
                "region 'EU-west-1'",
            ),
            (
                format!("arn:aws:kms:eu-west-1:11112222333:key/{k}"),
                KeyRefPart::Account,
                "account '11112222333' is not 12 digits",
            ),
            (
                "arn:aws:kms:eu-west-1:111122223333:key/not-a-key".into(),
                KeyRefPart::KeyId,
                "key id 'not-a-key'",
            ),
            (
                "arn:aws:kms:eu-west-1:111122223333:keys/abc".into(),
                KeyRefPart::Resource,
                "resource 'keys/abc'",
            ),
            (
                "arn:aws:kms:eu-west-1:111122223333:alias/".into(),
                KeyRefPart::AliasName,
                "alias name ''",
            ),
            (
                "arn:aws:kms:eu-west-1:111122223333:alias/my key".into(),
                KeyRefPart::AliasName,
                "alias name 'my key'",
            ),
            (
                "arn:aws:kms:eu-west-1:111122223333:alias/aws/ebs".into(),
                KeyRefPart::AliasName,
                "AWS managed key",
            ),
            (
                format!("{KEY}?role_arn=arn:aws:iam::111122223333:role/r"),
                KeyRefPart::Query,
                "without external_id",
            ),
            (
                format!("{KEY}?external_id=abc"),
                KeyRefPart::Query,
                "without role_arn",
            ),
            (
                format!("{KEY}?region=us-east-1"),
                KeyRefPart::Query,
                "unknown parameter 'region'",
            ),
            (
                format!("{KEY}?role_arn=arn:aws:iam::111122223333:user/bob&external_id=ab"),
                KeyRefPart::RoleArn,
                "does not name a role",
            ),
            (
                format!("{KEY}?role_arn=arn:aws-cn:iam::111122223333:role/r&external_id=ab"),
                KeyRefPart::RoleArn,
                "partition 'aws-cn'",
            ),
            (
                format!("{KEY}?role_arn=arn:aws:iam::111122223333:role/r&external_id=a"),
                KeyRefPart::ExternalId,
                "external_id 'a'",
            ),
            (
                format!("{KEY}?role_arn=arn:aws:iam::111122223333:role/r&external_id=a b c"),
                KeyRefPart::ExternalId,
                "external_id 'a b c'",
            ),
        ];
        for (input, part, needle) in cases {
            let e = input.parse::<AwsKeyRef>().unwrap_err();
            assert_eq!(e.part(), *part, "{input}: {e}");
            let msg = e.to_string();
            assert!(
                msg.contains(needle),
                "{input}: message lacks {needle:?}: {msg}"
            );
            // The expected form is the customer's, never the internal `?role_arn=` grammar.
            let expected = e.expected();
            assert!(msg.ends_with(&format!("expected {expected}")), "{msg}");
            assert!(!expected.contains("role_arn="), "{expected}");
            let role_part = matches!(
                part,
                KeyRefPart::Query | KeyRefPart::RoleArn | KeyRefPart::ExternalId
            );
            assert_eq!(expected == EXPECTED_ROLE_FORM, role_part, "{msg}");
            let pe = ProviderError::from(e);
            assert_eq!(pe.kind(), ErrorKind::Misconfigured);
        }
    }
}
