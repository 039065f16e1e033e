//! How a provider crate describes itself to the server (docs/adr/0010-provider-factories.md).
//!
//! The server names no KMS. Each provider crate exports one [`ProviderFactory`] value: its
//! [`ProviderKind`], the section of `keyward.toml` that configures it (typed, deserialized and
//! checked by the provider crate: [`ProviderFactory::configure`]), the syntax of its key
//! references as a customer registers them ([`ProviderFactory::parse_key_ref`]), and how to build
//! the [`KeyProvider`] ([`ConfiguredProvider::build`]). The application (the `keyward` binary)
//! hands the server a [`ProviderRegistry`] of the factories it was compiled with, as an
//! application picks a rustls `CryptoProvider`.

use std::{fmt, sync::Arc};

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use crate::{KeyEventSourceFactory, KeyProvider, KeyRef, ProviderError, ProviderKind};

/// One top-level section of the configuration (`[aws_kms]`, `[gcp]`, …) as the loader read it
/// from the file and the `KEYWARD_<SECTION>__*` environment variables, not yet typed.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigSection {
    name: String,
    value: serde_json::Value,
}

impl ConfigSection {
    /// The section `name` holding `value` (a table).
    pub fn new(name: impl Into<String>, value: serde_json::Value) -> Self {
        Self {
            name: name.into(),
            value,
        }
    }

    /// The section's name, as written in the file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The section as the provider's typed configuration; an unknown key or a value of the wrong
    /// type is an error naming the section.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ConfigSectionError> {
        serde_json::from_value(self.value.clone())
            .map_err(|e| ConfigSectionError::new(&self.name, e.to_string()))
    }
}

/// A provider's configuration section was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[{section}]: {message}")]
pub struct ConfigSectionError {
    /// The section (`aws_kms`, `gcp`, …).
    pub section: String,
    /// What is wrong, naming the key where there is one.
    pub message: String,
}

impl ConfigSectionError {
    pub fn new(section: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            section: section.into(),
            message: message.into(),
        }
    }
}

/// The fields of one key reference as the customer filled them in at registration: the fields of
/// one message of `RegisterKeyRequest.key` (e.g. `key_arn`, `role_arn`, `external_id`), by name.
/// A field the customer left empty reads as `""`.
#[derive(Debug, Clone, Copy)]
pub struct KeyRefFields<'a> {
    fields: &'a [(&'a str, &'a str)],
}

impl<'a> KeyRefFields<'a> {
    pub fn new(fields: &'a [(&'a str, &'a str)]) -> Self {
        Self { fields }
    }

    /// The value of `name`, `""` when it is not set.
    pub fn get(&self, name: &str) -> &'a str {
        self.fields
            .iter()
            .find(|(field, _)| *field == name)
            .map_or("", |(_, value)| value)
    }
}

/// A key reference the provider's syntax refuses: the server answers `INVALID_ARGUMENT` naming
/// the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}")]
pub struct InvalidKeyRef {
    /// The field at fault, relative to the provider's registration message (`role_arn`);
    /// `None` when the reference as a whole is at fault.
    pub field: Option<&'static str>,
    /// What is wrong and what was expected (never the whole input repeated back).
    pub problem: String,
}

impl InvalidKeyRef {
    /// `field` is wrong.
    pub fn field(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field: Some(field),
            problem: problem.into(),
        }
    }

    /// The reference as a whole is wrong.
    pub fn whole(problem: impl Into<String>) -> Self {
        Self {
            field: None,
            problem: problem.into(),
        }
    }
}

/// What a provider crate exports so that a server can offer its KMS without naming it.
pub trait ProviderFactory: Send + Sync + fmt::Debug {
    /// The kind of key references this provider serves.
    fn kind(&self) -> ProviderKind;

    /// The top-level section of `keyward.toml` that configures this provider (also the prefix of
    /// its environment variables: `KEYWARD_<SECTION>__<KEY>`).
    fn config_section(&self) -> &'static str;

    /// Reads and checks the section (`None`: absent from the file and the environment). `Ok(None)`
    /// means the provider is not configured: the server then offers no provider of this kind.
    fn configure(
        &self,
        section: Option<&ConfigSection>,
    ) -> Result<Option<Arc<dyn ConfiguredProvider>>, ConfigSectionError>;

    /// The key reference a customer registers, from the fields of the provider's registration
    /// message, in the canonical form the store keeps; checked here so that a malformed reference
    /// is an invalid argument naming the field, not a provider failure later.
    fn parse_key_ref(&self, fields: &KeyRefFields<'_>) -> Result<KeyRef, InvalidKeyRef>;
}

/// [`ProviderFactory::configure`] for a provider that runs only when its section is present: the
/// section typed as `T` (which builds the provider), or `None` without a section.
pub fn configure_if_present<T>(
    section: Option<&ConfigSection>,
) -> Result<Option<Arc<dyn ConfiguredProvider>>, ConfigSectionError>
where
    T: DeserializeOwned + ConfiguredProvider + 'static,
{
    match section {
        Some(section) => Ok(Some(Arc::new(section.deserialize::<T>()?))),
        None => Ok(None),
    }
}

/// A provider's checked configuration, ready to build the provider.
#[async_trait]
pub trait ConfiguredProvider: Send + Sync + fmt::Debug {
    /// Builds the provider (SDK clients, sessions); a failure stops the server's start.
    async fn build(&self) -> Result<Arc<dyn KeyProvider>, ProviderError>;
}

/// The provider factories an application was built with, at most one per kind, and the
/// key-event sources it offers (docs/adr/0013-key-event-sources.md), at most one per section.
#[derive(Debug, Clone, Default)]
pub struct ProviderRegistry {
    factories: Vec<Arc<dyn ProviderFactory>>,
    event_sources: Vec<Arc<dyn KeyEventSourceFactory>>,
}

impl ProviderRegistry {
    /// Adds `factory`, replacing any earlier one of the same kind.
    #[must_use]
    pub fn with(mut self, factory: Arc<dyn ProviderFactory>) -> Self {
        self.factories.retain(|f| f.kind() != factory.kind());
        self.factories.push(factory);
        self
    }

    /// The factory of `kind`, if this build has one.
    pub fn get(&self, kind: ProviderKind) -> Option<&Arc<dyn ProviderFactory>> {
        self.factories.iter().find(|f| f.kind() == kind)
    }

    /// The factory configured by the section `name`, if any.
    pub fn by_section(&self, name: &str) -> Option<&Arc<dyn ProviderFactory>> {
        self.factories.iter().find(|f| f.config_section() == name)
    }

    /// Every factory, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn ProviderFactory>> {
        self.factories.iter()
    }

    /// The configuration sections of every factory: the providers', then the event sources'.
    pub fn sections(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.factories
            .iter()
            .map(|f| f.config_section())
            .chain(self.event_sources.iter().map(|f| f.config_section()))
    }

    /// Adds a key-event source, replacing any earlier one with the same section.
    #[must_use]
    pub fn with_event_source(mut self, factory: Arc<dyn KeyEventSourceFactory>) -> Self {
        self.event_sources
            .retain(|f| f.config_section() != factory.config_section());
        self.event_sources.push(factory);
        self
    }

    /// Every key-event source, in the order they were added.
    pub fn event_sources(&self) -> impl Iterator<Item = &Arc<dyn KeyEventSourceFactory>> {
        self.event_sources.iter()
    }

    /// The key-event source configured by the section `name`, if any.
    pub fn event_source_by_section(&self, name: &str) -> Option<&Arc<dyn KeyEventSourceFactory>> {
        self.event_sources
            .iter()
            .find(|f| f.config_section() == name)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[derive(Debug)]
    struct Fake(ProviderKind, &'static str);

    impl ProviderFactory for Fake {
        fn kind(&self) -> ProviderKind {
            self.0
        }
        fn config_section(&self) -> &'static str {
            self.1
        }
        fn configure(
            &self,
            _: Option<&ConfigSection>,
        ) -> Result<Option<Arc<dyn ConfiguredProvider>>, ConfigSectionError> {
            Ok(None)
        }
        fn parse_key_ref(&self, fields: &KeyRefFields<'_>) -> Result<KeyRef, InvalidKeyRef> {
            Ok(KeyRef::new(self.0, fields.get("id")))
        }
    }

    #[test]
    fn the_registry_keeps_one_factory_per_kind_and_finds_it_by_kind_or_section() {
        let registry = ProviderRegistry::default()
            .with(Arc::new(Fake(ProviderKind::AwsKms, "old")))
            .with(Arc::new(Fake(ProviderKind::GcpKms, "gcp")))
            .with(Arc::new(Fake(ProviderKind::AwsKms, "aws_kms")));
        assert_eq!(registry.sections().collect::<Vec<_>>(), ["gcp", "aws_kms"]);
        assert_eq!(
            registry.get(ProviderKind::AwsKms).unwrap().config_section(),
            "aws_kms"
        );
        assert!(registry.by_section("old").is_none());
        assert_eq!(
            registry.by_section("gcp").unwrap().kind(),
            ProviderKind::GcpKms
        );
        assert!(registry.get(ProviderKind::Pkcs11).is_none());
    }

    #[derive(Debug)]
    struct FakeEvents(&'static str);

    impl KeyEventSourceFactory for FakeEvents {
        fn config_section(&self) -> &'static str {
            self.0
        }
        fn configure(
            &self,
            _: Option<&ConfigSection>,
        ) -> Result<Option<Arc<dyn crate::ConfiguredEventSource>>, ConfigSectionError> {
            Ok(None)
        }
    }

    #[test]
    fn event_sources_add_their_sections_after_the_providers_and_are_found_by_section() {
        let registry = ProviderRegistry::default()
            .with_event_source(Arc::new(FakeEvents("aws_events")))
            .with(Arc::new(Fake(ProviderKind::AwsKms, "aws_kms")))
            .with_event_source(Arc::new(FakeEvents("aws_events")));
        assert_eq!(
            registry.sections().collect::<Vec<_>>(),
            ["aws_kms", "aws_events"]
        );
        assert_eq!(registry.event_sources().count(), 1);
        assert!(registry.event_source_by_section("aws_events").is_some());
        assert!(registry.event_source_by_section("aws_kms").is_none());
        assert!(registry.by_section("aws_events").is_none());
    }

    #[test]
    fn fields_left_empty_read_as_empty_and_sections_name_themselves_in_errors() {
        let fields = [("key_arn", "arn:x"), ("role_arn", "")];
        let fields = KeyRefFields::new(&fields);
        assert_eq!(fields.get("key_arn"), "arn:x");
        assert_eq!(fields.get("role_arn"), "");
        assert_eq!(fields.get("external_id"), "");

        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code, reason = "only deserialized")]
        struct Typed {
            timeout_ms: u64,
        }
        let section = ConfigSection::new("gcp", serde_json::json!({ "timeout_msx": 5 }));
        let err = section.deserialize::<Typed>().unwrap_err();
        assert_eq!(err.section, "gcp");
        assert!(
            err.to_string()
                .starts_with("[gcp]: unknown field `timeout_msx`"),
            "{err}"
        );
    }
}
