//! `server_config`: the server's configuration loader on TOML text
//! ([`keyward_server::config::Config::from_toml_str`]: defaults, then the text, as
//! `Config::load` reads a file), then [`Config::resolve`], with every provider section built in.
//!
//! Invariants: an accepted configuration, written back as TOML, loads as the same
//! configuration; `resolve` either gives settings or `ConfigError::Invalid` with a message.

use keyward_server::config::{Config, ConfigError};

pub fn run(data: &[u8]) {
    let Some(text) = crate::text(data) else {
        return;
    };
    let registry = crate::provider_registry();
    let config = match Config::from_toml_str(text, &registry) {
        Ok(config) => config,
        Err(ConfigError::Load(e)) => {
            assert!(!e.to_string().is_empty());
            return;
        }
        // An unknown section, or a provider section its crate refuses.
        Err(ConfigError::Invalid(message)) => {
            assert!(!message.is_empty());
            return;
        }
    };
    let written = toml::to_string(&config).unwrap();
    let again = Config::from_toml_str(&written, &registry)
        .unwrap_or_else(|e| panic!("the written configuration does not load: {e}\n{written}"));
    assert_eq!(
        again, config,
        "the written configuration loads differently:\n{written}"
    );
    match config.resolve() {
        Ok(_) => {}
        Err(ConfigError::Invalid(message)) => assert!(!message.is_empty()),
        Err(other) => panic!("resolve failed with {other:?}, not an invalid value"),
    }
}
