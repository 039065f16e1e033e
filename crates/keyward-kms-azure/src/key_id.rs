//! [`AzureKeyId`]: a validated Key Vault or Managed HSM key identifier.

use std::fmt;

/// What hosts a key: a Key Vault (RSA keys) or a Managed HSM (RSA or AES keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VaultKind {
    /// `https://{vault}.vault.azure.net` (and sovereign-cloud suffixes).
    KeyVault,
    /// `https://{hsm}.managedhsm.azure.net` (and sovereign-cloud suffixes).
    ManagedHsm,
}

impl VaultKind {
    /// The resource that Key Vault names in its bearer-token challenge for this kind of host in
    /// the public cloud; the SDK derives the token scope `<resource>/.default` from it.
    pub fn public_resource(self) -> &'static str {
        match self {
            VaultKind::KeyVault => "https://vault.azure.net",
            VaultKind::ManagedHsm => "https://managedhsm.azure.net",
        }
    }
}

/// DNS suffixes of Key Vault hosts: public cloud, Azure China, Azure US Government.
const VAULT_SUFFIXES: [&str; 3] = [
    ".vault.azure.net",
    ".vault.azure.cn",
    ".vault.usgovcloudapi.net",
];
/// DNS suffixes of Managed HSM hosts: public cloud, Azure China, Azure US Government.
const HSM_SUFFIXES: [&str; 3] = [
    ".managedhsm.azure.net",
    ".managedhsm.azure.cn",
    ".managedhsm.usgovcloudapi.net",
];

/// The accepted forms, quoted in every parse error.
pub const EXPECTED_FORM: &str = "https://{vault}.vault.azure.net/keys/{name}[/{version}] or \
     https://{hsm}.managedhsm.azure.net/keys/{name}[/{version}] (Azure China and US Government \
     suffixes .vault.azure.cn, .vault.usgovcloudapi.net, .managedhsm.azure.cn and \
     .managedhsm.usgovcloudapi.net are accepted too), as printed by \
     `az keyvault key show --vault-name <vault> --name <name> --query key.kid -o tsv`";

/// A key id that is not of the accepted form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Azure key id '{id}': {reason}; expected {EXPECTED_FORM}")]
pub struct InvalidAzureKeyId {
    id: String,
    reason: String,
}

impl InvalidAzureKeyId {
    fn new(id: &str, reason: impl Into<String>) -> Self {
        Self {
            id: id.to_owned(),
            reason: reason.into(),
        }
    }

    /// Why the id was rejected (without the expected form).
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// A Key Vault or Managed HSM key identifier:
/// `https://{vault}.vault.azure.net/keys/{name}[/{version}]` or
/// `https://{hsm}.managedhsm.azure.net/keys/{name}[/{version}]`.
///
/// Without a version, the key's current version is used for new wraps and the version actually
/// used is recorded in each wrapped key (so rotation in Key Vault never strands a wrapped key).
/// With a version, exactly that version is used.
///
/// Parsing is strict: https only, no port, user info, query or fragment; the vault name is 3–24
/// letters, digits and single hyphens starting with a letter; the key name 1–127 letters, digits
/// and hyphens; the version 32 hexadecimal digits. The host is lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AzureKeyId {
    host: String,
    kind: VaultKind,
    name: String,
    version: Option<String>,
}

impl AzureKeyId {
    /// Parses and validates a key id.
    pub fn parse(id: &str) -> Result<Self, InvalidAzureKeyId> {
        let bad = |reason: &str| InvalidAzureKeyId::new(id, reason);
        let rest = id
            .strip_prefix("https://")
            .ok_or_else(|| bad("it must start with https://"))?;
        if rest.contains(['?', '#', '@']) {
            return Err(bad("it must not contain a query, fragment or user info"));
        }
        let (host, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("it has no /keys/{name} path"))?;
        if host.contains(':') {
            return Err(bad("it must not name a port"));
        }
        let host = host.to_ascii_lowercase();
        let (vault, kind) = VAULT_SUFFIXES
            .iter()
            .map(|s| (s, VaultKind::KeyVault))
            .chain(HSM_SUFFIXES.iter().map(|s| (s, VaultKind::ManagedHsm)))
            .find_map(|(suffix, kind)| host.strip_suffix(suffix).map(|v| (v, kind)))
            .ok_or_else(|| {
                bad("the host is not a Key Vault (*.vault.azure.net) or Managed HSM (*.managedhsm.azure.net) host")
            })?;
        if !valid_vault_name(vault) {
            return Err(bad(
                "the vault or HSM name must be 3-24 letters, digits and single hyphens, starting with a letter and not ending with a hyphen",
            ));
        }
        let segments: Vec<&str> = path.split('/').collect();
        let (name, version) = match segments.as_slice() {
            ["keys", name] => (*name, None),
            ["keys", name, version] => (*name, Some(*version)),
            _ => {
                return Err(bad(
                    "the path must be /keys/{name} or /keys/{name}/{version}",
                ));
            }
        };
        if name.is_empty()
            || name.len() > 127
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(bad(
                "the key name must be 1-127 letters, digits and hyphens",
            ));
        }
        if let Some(v) = version
            && (v.len() != 32 || !v.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(bad("the key version must be 32 hexadecimal digits"));
        }
        Ok(Self {
            host,
            kind,
            name: name.to_owned(),
            version: version.map(str::to_owned),
        })
    }

    /// The vault's host name, lower-cased (e.g. `contoso.vault.azure.net`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The vault (or HSM) name: the first label of the host.
    pub fn vault_name(&self) -> &str {
        self.host.split('.').next().unwrap_or(&self.host)
    }

    /// Key Vault or Managed HSM.
    pub fn kind(&self) -> VaultKind {
        self.kind
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key version, when the id names one.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The vault endpoint the SDK client is built for: `https://{host}/`.
    pub fn endpoint(&self) -> String {
        format!("https://{}/", self.host)
    }

    /// The same key with `version`.
    #[must_use]
    pub fn with_version(&self, version: Option<&str>) -> Self {
        Self {
            version: version.map(str::to_owned),
            ..self.clone()
        }
    }
}

fn valid_vault_name(v: &str) -> bool {
    (3..=24).contains(&v.len())
        && v.starts_with(|c: char| c.is_ascii_alphabetic())
        && !v.ends_with('-')
        && !v.contains("--")
        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl fmt::Display for AzureKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}/keys/{}", self.host, self.name)?;
        if let Some(v) = &self.version {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for AzureKeyId {
    type Err = InvalidAzureKeyId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    const V: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn accepts_vault_and_hsm_ids() {
        let k = AzureKeyId::parse("https://Contoso-1.vault.azure.net/keys/kek").unwrap();
        assert_eq!(k.host(), "contoso-1.vault.azure.net");
        assert_eq!(k.vault_name(), "contoso-1");
        assert_eq!(
            (k.kind(), k.name(), k.version()),
            (VaultKind::KeyVault, "kek", None)
        );
        assert_eq!(k.endpoint(), "https://contoso-1.vault.azure.net/");
        assert_eq!(k.to_string(), "https://contoso-1.vault.azure.net/keys/kek");

        let id = format!("https://hsm1.managedhsm.azure.net/keys/my-kek/{V}");
        let k = AzureKeyId::parse(&id).unwrap();
        assert_eq!((k.kind(), k.version()), (VaultKind::ManagedHsm, Some(V)));
        assert_eq!(k.to_string(), id);
        assert_eq!(k.with_version(None).version(), None);

        for host in [
            "x01.vault.azure.cn",
            "x01.vault.usgovcloudapi.net",
            "x01.managedhsm.azure.cn",
        ] {
            AzureKeyId::parse(&format!("https://{host}/keys/k")).unwrap();
        }
    }

    #[test]
    fn rejects_everything_else_naming_the_expected_form() {
        for (id, why) in [
            ("http://contoso.vault.azure.net/keys/k", "https://"),
            ("https://contoso.vault.azure.net:443/keys/k", "port"),
            ("https://contoso.vault.azure.net/keys/k?x=1", "query"),
            ("https://contoso.example.com/keys/k", "not a Key Vault"),
            ("https://contoso.vault.azure.net/secrets/k", "path"),
            ("https://contoso.vault.azure.net/keys/", "key name"),
            ("https://contoso.vault.azure.net/keys/k/v/x", "path"),
            ("https://contoso.vault.azure.net/keys/k_1", "key name"),
            (
                "https://contoso.vault.azure.net/keys/k/123",
                "32 hexadecimal",
            ),
            ("https://ab.vault.azure.net/keys/k", "3-24"),
            ("https://1ab.vault.azure.net/keys/k", "3-24"),
            ("https://a--b.vault.azure.net/keys/k", "3-24"),
            ("https://contoso.vault.azure.net", "no /keys"),
            ("", "https://"),
        ] {
            let e = AzureKeyId::parse(id).unwrap_err();
            assert!(e.reason().contains(why), "{id}: {e}");
            assert!(
                e.to_string()
                    .contains("https://{vault}.vault.azure.net/keys/{name}[/{version}]"),
                "{e}"
            );
        }
    }
}
