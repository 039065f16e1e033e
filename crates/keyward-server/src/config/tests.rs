//! The loader's and resolver's tests.

#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
use super::*;
use crate::test_support::test_registry;

#[test]
fn defaults_resolve() {
    let s = Config::default().resolve().unwrap();
    assert_eq!(s.listen.to_string(), "127.0.0.1:50051");
    assert_eq!(s.database_path, PathBuf::from("./keyward-data/keyward.db"));
    assert_eq!(s.local_kms_dir, PathBuf::from("./keyward-data/local-kms"));
    assert_eq!(s.cache.ttl, Duration::from_secs(300));
    let q = s.kms_quota.unwrap();
    assert_eq!((q.requests_per_second, q.burst), (50.0, 100));
    assert_eq!(q.max_wait, Duration::from_millis(1000));
}

#[test]
fn envelope_write_suite_defaults_to_the_newest_and_is_validated() {
    use keyward_envelope::Suite;
    assert_eq!(
        Config::default().resolve().unwrap().write_suite,
        Suite::SEAL
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyward.toml");
    std::fs::write(&path, "[envelope]\nwrite_suite = 1\n").unwrap();
    let c = Config::load(Some(&path), &test_registry()).unwrap();
    assert_eq!(
        c.resolve().unwrap().write_suite,
        Suite::Aes256GcmHkdfSha512Committing
    );
    for bad in [0, 3, 0x0478] {
        let c = Config {
            envelope: EnvelopeConfig { write_suite: bad },
            ..Config::default()
        };
        assert!(
            matches!(c.resolve(), Err(ConfigError::Invalid(m)) if m.contains("envelope.write_suite is")),
            "accepted {bad}"
        );
    }
}

#[test]
fn kms_quota_can_be_disabled_and_is_validated() {
    let mut c = Config::default();
    c.kms_quota.requests_per_second = 0;
    assert!(c.resolve().unwrap().kms_quota.is_none());
    for bad in [
        KmsQuotaConfig {
            burst: 0,
            ..KmsQuotaConfig::default()
        },
        KmsQuotaConfig {
            max_wait_ms: 120_000,
            ..KmsQuotaConfig::default()
        },
    ] {
        let c = Config {
            kms_quota: bad,
            ..Config::default()
        };
        assert!(
            matches!(c.resolve(), Err(ConfigError::Invalid(m)) if m.contains("kms_quota")),
            "accepted"
        );
    }
}

#[test]
fn every_config_section_can_come_from_the_environment() {
    use figment::Provider as _;
    let data = Figment::from(Serialized::defaults(Config::default()))
        .data()
        .unwrap();
    let mut keys: Vec<&str> = data
        .values()
        .flat_map(|d| d.keys())
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut sections = CONFIG_SECTIONS.to_vec();
    sections.sort_unstable();
    assert_eq!(keys, sections);
}

#[test]
fn file_values_override_defaults_and_unknown_keys_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyward.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\n[cache]\nttl_seconds = 7\n",
    )
    .unwrap();
    let c = Config::load(Some(&path), &test_registry()).unwrap();
    assert_eq!(c.cache.ttl_seconds, 7);
    assert_eq!(c.listen.port(), 0);

    std::fs::write(&path, "lisen = \"127.0.0.1:0\"\n").unwrap();
    let err = Config::load(Some(&path), &test_registry())
        .unwrap_err()
        .to_string();
    assert!(err.contains("lisen"), "{err}");
}

#[test]
fn toml_text_is_read_like_a_file() {
    let text = "listen = \"127.0.0.1:0\"\n[cache]\nttl_seconds = 7\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyward.toml");
    std::fs::write(&path, text).unwrap();
    let from_text = Config::from_toml_str(text, &test_registry()).unwrap();
    assert_eq!(
        from_text,
        Config::load(Some(&path), &test_registry()).unwrap()
    );
    assert_eq!(from_text.cache.ttl_seconds, 7);
    let err = Config::from_toml_str("lisen = \"127.0.0.1:0\"\n", &test_registry())
        .unwrap_err()
        .to_string();
    assert!(err.contains("lisen"), "{err}");
}

#[test]
fn a_provider_section_is_read_by_its_crate_and_one_no_provider_claims_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyward.toml");
    let gcp = "[gcp]\ncredentials = { kind = \"service-account\", file = \"/etc/keyward/sa.json\" }\ncall_timeout_ms = 900\n";
    std::fs::write(&path, gcp).unwrap();
    let s = Config::load(Some(&path), &test_registry())
        .unwrap()
        .resolve()
        .unwrap();
    let gcp: keyward_kms_gcp::GcpKmsConfig = s.providers["gcp"].deserialize().unwrap();
    assert_eq!(gcp.call_timeout_ms, 900);
    assert_eq!(
        gcp.credentials,
        Some(keyward_kms_gcp::GcpCredentials::ServiceAccount {
            file: "/etc/keyward/sa.json".into()
        })
    );
    assert!(Config::default().resolve().unwrap().providers.is_empty());

    // The same section in a build without the Cloud KMS provider: an unknown key.
    let err = Config::load(Some(&path), &ProviderRegistry::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `gcp`"), "{err}");
    assert!(!err.contains("`aws_kms`"), "{err}");
    let err = Config::from_toml_str("lisen = 1\n", &test_registry())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`aws_kms`, `pkcs11`, `gcp`, `azure`"), "{err}");

    // The provider crate checks its section when the configuration is loaded.
    std::fs::write(
        &path,
        "[gcp]\ncredentials = { kind = \"metadata-server\" }\n",
    )
    .unwrap();
    let err = Config::load(Some(&path), &test_registry())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[gcp]") && err.contains("metadata-server"),
        "{err}"
    );
    std::fs::write(&path, "[aws_kms]\nattempt_timeout_msx = 1\n").unwrap();
    let err = Config::load(Some(&path), &test_registry())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[aws_kms]") && err.contains("attempt_timeout_msx"),
        "{err}"
    );
}

#[test]
fn the_store_is_sqlite_by_default_or_a_sqlite_path_or_a_postgres_url() {
    let s = Config::default().resolve().unwrap();
    assert_eq!(
        s.store,
        StoreLocation::Sqlite(PathBuf::from("./keyward-data/keyward.db"))
    );
    let c = Config {
        store: Some("sqlite:/var/lib/keyward/k.db".into()),
        ..Config::default()
    };
    assert_eq!(
        c.resolve().unwrap().store,
        StoreLocation::Sqlite(PathBuf::from("/var/lib/keyward/k.db"))
    );
    for url in [
        "postgres://keyward@db:5432/keyward",
        "postgresql://keyward:pw@db/keyward?sslmode=require",
    ] {
        let mut c = Config {
            store: Some(url.into()),
            replica_id: Some("r-1".into()),
            ..Config::default()
        };
        c.postgres.statement_timeout_seconds = 0;
        let s = c.resolve().unwrap();
        assert_eq!(s.replica_id, "r-1");
        let StoreLocation::Postgres {
            url: got, options, ..
        } = s.store
        else {
            panic!("not postgres");
        };
        assert_eq!(got, url);
        assert_eq!(options.statement_timeout, None);
        assert_eq!(options.max_connections, 10);
    }
}

#[test]
fn an_invalid_store_is_a_precise_error_without_the_password() {
    for (store, expected) in [
        ("mysql://u:secret@h/db", "is neither"),
        ("sqlite:", "needs a path"),
        ("postgres://u:secret@h:port/db", "invalid PostgreSQL URL"),
        ("postgres://u:secret@h:5432", "names no database"),
        ("postgres:///db", "names no host"),
    ] {
        let c = Config {
            store: Some(store.into()),
            ..Config::default()
        };
        let err = c.resolve().unwrap_err().to_string();
        assert!(err.contains(expected), "{store}: {err}");
        assert!(!err.contains("secret"), "{store}: {err}");
    }
    let mut c = Config {
        store: Some("postgres://h/db".into()),
        ..Config::default()
    };
    c.postgres.max_connections = 0;
    assert!(
        c.resolve()
            .unwrap_err()
            .to_string()
            .contains("postgres.max_connections")
    );
    let c = Config {
        replica_id: Some("no spaces".into()),
        ..Config::default()
    };
    assert!(c.resolve().unwrap_err().to_string().contains("replica_id"));
    assert_eq!(
        redact_url("postgres://u:pw@h/db?password=x&sslmode=require"),
        "postgres://u:***@h/db?password=***&sslmode=require"
    );
}

/// One row per rule of [`Config::resolve`]: the value just past the bound is refused with
/// exactly this message, and the value at the bound (`edge`) is accepted, so that deleting a
/// rule or moving its bound by one fails a row.
#[test]
fn each_out_of_range_value_is_refused_with_its_precise_error() {
    type Edit = fn(&mut Config);
    const PG: &str = "postgres://keyward@db:5432/keyward";
    let rows: &[(&str, Edit, Edit, &str)] = &[
        (
            "max_plaintext_bytes = 0",
            |c| c.max_plaintext_bytes = 0,
            |c| c.max_plaintext_bytes = 1,
            "max_plaintext_bytes must be between 1 and 64 MiB",
        ),
        (
            "max_plaintext_bytes over 64 MiB",
            |c| {
                c.max_plaintext_bytes = MAX_PLAINTEXT_CEILING + 1;
                c.rotation.max_bytes = u64::MAX;
            },
            |c| {
                c.max_plaintext_bytes = MAX_PLAINTEXT_CEILING;
                c.rotation.max_bytes = u64::MAX;
            },
            "max_plaintext_bytes must be between 1 and 64 MiB",
        ),
        (
            "cache.ttl_seconds = 0",
            |c| c.cache.ttl_seconds = 0,
            |c| c.cache.ttl_seconds = 1,
            "cache.ttl_seconds must be at least 1",
        ),
        (
            "cache.max_tenant_keys = 0",
            |c| c.cache.max_tenant_keys = 0,
            |c| c.cache.max_tenant_keys = 1,
            "cache.max_tenant_keys and cache.max_deks must be at least 1",
        ),
        (
            "cache.max_deks = 0",
            |c| c.cache.max_deks = 0,
            |c| c.cache.max_deks = 1,
            "cache.max_tenant_keys and cache.max_deks must be at least 1",
        ),
        (
            "rotation.max_age_seconds = 0",
            |c| c.rotation.max_age_seconds = 0,
            |c| c.rotation.max_age_seconds = 1,
            "rotation.max_age_seconds and rotation.max_messages must be at least 1",
        ),
        (
            "rotation.max_messages = 0",
            |c| c.rotation.max_messages = 0,
            |c| c.rotation.max_messages = 1,
            "rotation.max_age_seconds and rotation.max_messages must be at least 1",
        ),
        (
            "rotation.max_messages over 2^40",
            |c| c.rotation.max_messages = MAX_MESSAGES_PER_DEK + 1,
            |c| c.rotation.max_messages = MAX_MESSAGES_PER_DEK,
            "rotation.max_messages must be at most 2^40 (the envelope format's bound)",
        ),
        (
            "rotation.max_bytes below max_plaintext_bytes",
            |c| c.rotation.max_bytes = c.max_plaintext_bytes as u64 - 1,
            |c| c.rotation.max_bytes = c.max_plaintext_bytes as u64,
            "rotation.max_bytes must be at least max_plaintext_bytes",
        ),
        (
            "revocation.monitor_max_checks_per_second = 0",
            |c| c.revocation.monitor_max_checks_per_second = 0,
            |c| c.revocation.monitor_max_checks_per_second = 1,
            "revocation.monitor_max_checks_per_second must be at least 1",
        ),
        (
            "revocation.monitor_max_concurrent_checks = 0",
            |c| c.revocation.monitor_max_concurrent_checks = 0,
            |c| c.revocation.monitor_max_concurrent_checks = 1,
            "revocation.monitor_max_concurrent_checks must be 1 to 1024",
        ),
        (
            "revocation.monitor_max_concurrent_checks = 1025",
            |c| c.revocation.monitor_max_concurrent_checks = 1025,
            |c| c.revocation.monitor_max_concurrent_checks = 1024,
            "revocation.monitor_max_concurrent_checks must be 1 to 1024",
        ),
        (
            "envelope.write_suite = 3",
            |c| c.envelope.write_suite = 3,
            |c| c.envelope.write_suite = 2,
            "envelope.write_suite is 3; it must be 1 or 2 (the envelope suites this build implements)",
        ),
        (
            "audit.checkpoint_interval_seconds = 0",
            |c| c.audit.checkpoint_interval_seconds = 0,
            |c| c.audit.checkpoint_interval_seconds = 1,
            "audit.checkpoint_interval_seconds must be at least 1",
        ),
        (
            "tls.reload_interval_seconds = 0",
            |c| c.tls.reload_interval_seconds = 0,
            |c| c.tls.reload_interval_seconds = 1,
            "tls.reload_interval_seconds must be at least 1",
        ),
        (
            "kms_quota.burst = 0",
            |c| c.kms_quota.burst = 0,
            |c| c.kms_quota.burst = 1,
            "kms_quota.burst and kms_quota.max_keys must be at least 1 and kms_quota.max_wait_ms at most 60000",
        ),
        (
            "kms_quota.max_keys = 0",
            |c| c.kms_quota.max_keys = 0,
            |c| c.kms_quota.max_keys = 1,
            "kms_quota.burst and kms_quota.max_keys must be at least 1 and kms_quota.max_wait_ms at most 60000",
        ),
        (
            "kms_quota.max_wait_ms over 60000",
            |c| c.kms_quota.max_wait_ms = 60_001,
            |c| c.kms_quota.max_wait_ms = 60_000,
            "kms_quota.burst and kms_quota.max_keys must be at least 1 and kms_quota.max_wait_ms at most 60000",
        ),
        (
            "limits.max_in_flight_per_caller = 0",
            |c| c.limits.max_in_flight_per_caller = 0,
            |c| c.limits.max_in_flight_per_caller = 1,
            "limits.max_in_flight_per_caller must be between 1 and 1000000",
        ),
        (
            "limits.max_in_flight_per_caller over the ceiling",
            |c| c.limits.max_in_flight_per_caller = 1_000_001,
            |c| c.limits.max_in_flight_per_caller = 1_000_000,
            "limits.max_in_flight_per_caller must be between 1 and 1000000",
        ),
        (
            "admin listener off loopback",
            |c| c.admin.listen = "0.0.0.0:9000".parse().unwrap(),
            |c| {
                c.admin.listen = "0.0.0.0:9000".parse().unwrap();
                c.admin.allow_remote = true;
            },
            "refusing to serve the admin listener (plain HTTP, no authentication) on 0.0.0.0:9000, \
             which is not a loopback address: set admin.allow_remote = true if the network in \
             front of it restricts who can reach it, or listen on 127.0.0.1",
        ),
        (
            "metrics.max_tenant_labels over the ceiling",
            |c| c.metrics.max_tenant_labels = MAX_TENANT_LABELS_CEILING + 1,
            |c| c.metrics.max_tenant_labels = MAX_TENANT_LABELS_CEILING,
            "metrics.max_tenant_labels must be at most 100000",
        ),
        (
            "shutdown_grace_seconds over an hour",
            |c| c.shutdown_grace_seconds = 3601,
            |c| c.shutdown_grace_seconds = 3600,
            "shutdown_grace_seconds must be at most 3600",
        ),
        (
            "otlp.endpoint without a scheme",
            |c| c.otlp.endpoint = Some("127.0.0.1:4317".into()),
            |c| c.otlp.endpoint = Some("https://127.0.0.1:4317".into()),
            "otlp.endpoint must be an http:// or https:// URL (OTLP/gRPC, e.g. \
             http://127.0.0.1:4317), not \"127.0.0.1:4317\"",
        ),
        (
            "postgres.max_connections = 0",
            |c| {
                c.store = Some(PG.into());
                c.postgres.max_connections = 0;
            },
            |c| {
                c.store = Some(PG.into());
                c.postgres.max_connections = 1;
            },
            "postgres.max_connections must be at least 1",
        ),
        (
            "postgres.acquire_timeout_seconds = 0",
            |c| {
                c.store = Some(PG.into());
                c.postgres.acquire_timeout_seconds = 0;
            },
            |c| {
                c.store = Some(PG.into());
                c.postgres.acquire_timeout_seconds = 1;
            },
            "postgres.acquire_timeout_seconds must be at least 1",
        ),
        (
            "postgres.reconcile_interval_seconds = 0",
            |c| {
                c.store = Some(PG.into());
                c.postgres.reconcile_interval_seconds = 0;
            },
            |c| {
                c.store = Some(PG.into());
                c.postgres.reconcile_interval_seconds = 1;
            },
            "postgres.reconcile_interval_seconds and postgres.health_check_interval_seconds must be at least 1",
        ),
        (
            "postgres.health_check_interval_seconds = 0",
            |c| {
                c.store = Some(PG.into());
                c.postgres.health_check_interval_seconds = 0;
            },
            |c| {
                c.store = Some(PG.into());
                c.postgres.health_check_interval_seconds = 1;
            },
            "postgres.reconcile_interval_seconds and postgres.health_check_interval_seconds must be at least 1",
        ),
        (
            "replica_id empty",
            |c| c.replica_id = Some(String::new()),
            |c| c.replica_id = Some("r".into()),
            "replica_id must be 1 to 40 characters of A-Z, a-z, 0-9, '-', '_' and '.'",
        ),
        (
            "replica_id of 41 characters",
            |c| c.replica_id = Some("r".repeat(41)),
            |c| c.replica_id = Some("r".repeat(40)),
            "replica_id must be 1 to 40 characters of A-Z, a-z, 0-9, '-', '_' and '.'",
        ),
        (
            "replica_id with a '/'",
            |c| c.replica_id = Some("eu/1".into()),
            |c| c.replica_id = Some("eu-1_a.B".into()),
            "replica_id must be 1 to 40 characters of A-Z, a-z, 0-9, '-', '_' and '.'",
        ),
    ];
    for (name, refused, accepted, message) in rows {
        let mut c = Config::default();
        refused(&mut c);
        match c.resolve() {
            Err(ConfigError::Invalid(m)) => assert_eq!(m, *message, "{name}"),
            Err(other) => panic!("{name}: {other}"),
            Ok(_) => panic!("{name}: accepted"),
        }
        let mut c = Config::default();
        accepted(&mut c);
        if let Err(e) = c.resolve() {
            panic!("{name}: the value at the bound is refused: {e}");
        }
    }
}

#[test]
fn missing_file_is_an_error() {
    let err = Config::load(
        Some(Path::new("/nonexistent/keyward.toml")),
        &test_registry(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not exist"));
}

#[test]
fn invalid_values_are_rejected_with_the_field_named() {
    let mut c = Config::default();
    c.cache.ttl_seconds = 0;
    assert!(
        c.resolve()
            .unwrap_err()
            .to_string()
            .contains("cache.ttl_seconds")
    );
    let mut c = Config::default();
    c.rotation.max_bytes = 10;
    assert!(
        c.resolve()
            .unwrap_err()
            .to_string()
            .contains("rotation.max_bytes")
    );
    let mut c = Config::default();
    c.rotation.max_messages = (1 << 40) + 1;
    assert!(c.resolve().unwrap_err().to_string().contains("2^40"));
}

#[test]
fn plaintext_is_refused_off_loopback_and_tls_files_go_together() {
    let mut c = Config {
        listen: "0.0.0.0:50051".parse().unwrap(),
        ..Config::default()
    };
    let err = c.resolve().unwrap_err().to_string();
    assert!(
        err.contains("refusing to serve plaintext on 0.0.0.0:50051"),
        "{err}"
    );
    c.listen = "[::1]:50051".parse().unwrap();
    assert!(c.resolve().unwrap().tls.is_none());

    c.tls.cert_file = Some("server.pem".into());
    let err = c.resolve().unwrap_err().to_string();
    assert!(err.contains("must be set together"), "{err}");
    c.tls.key_file = Some("server.key".into());
    c.tls.client_ca_file = Some("ca.pem".into());
    c.listen = "0.0.0.0:50051".parse().unwrap();
    let s = c.resolve().unwrap();
    assert_eq!(s.tls.unwrap().client_ca_file, PathBuf::from("ca.pem"));
    assert_eq!(
        s.policy_files.identities_file,
        PathBuf::from("policies/identities.toml")
    );
}

#[test]
fn an_event_source_section_is_read_by_its_crate_and_refused_without_it() {
    let text = "[aws_events]\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/111122223333/keyward-key-events\"\nwait_seconds = 5\n";
    let s = Config::from_toml_str(text, &test_registry())
        .unwrap()
        .resolve()
        .unwrap();
    assert!(s.providers.contains_key("aws_events"));
    let err = Config::from_toml_str(text, &ProviderRegistry::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `aws_events`"), "{err}");
    let err = Config::from_toml_str("lisen = 1\n", &test_registry())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`azure`, `aws_events`"), "{err}");
    // Checked by keyward-kms-aws when the configuration is loaded, naming the key.
    let bad = text.replace("wait_seconds = 5", "max_messages = 11");
    let err = Config::from_toml_str(&bad, &test_registry())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[aws_events]: max_messages is 11; it must be 1 to 10"),
        "{err}"
    );
}
