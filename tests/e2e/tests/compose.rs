//! `docker-compose.yml` (the alternative quick start) without Docker: its structure, and every
//! `KEYWARD_*` variable it sets is a configuration key the real binary accepts.
//!
//! The YAML is parsed by PyYAML in the Python that has moto (`KEYWARD_MOTO_PYTHON`, exported by
//! `scripts/test`; default `python3`). Without PyYAML this test fails; it is never skipped. The
//! Dockerfile itself is not built here.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// docker-compose.yml as JSON, through PyYAML.
fn compose() -> Value {
    let python = std::env::var("KEYWARD_MOTO_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let out = Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(repo_root().join("docker-compose.yml"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {python} ({e}): set KEYWARD_MOTO_PYTHON (scripts/test does)")
        });
    assert!(
        out.status.success(),
        "{python} could not parse docker-compose.yml (PyYAML is needed: run through scripts/test): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn env_of(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                let (k, v) = i.as_str().unwrap().split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        Value::Null => Vec::new(),
        other => panic!("environment must be a map or a list: {other}"),
    }
}

fn get<'a>(env: &'a [(String, String)], key: &str) -> &'a str {
    env.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("{key} is not set"))
}

#[test]
fn the_compose_file_wires_keyward_postgres_and_the_kms_emulator() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    for name in ["keyward", "postgres", "kms"] {
        assert!(services.contains_key(name), "service {name} is missing");
    }
    let (keyward, postgres, kms) = (
        &services["keyward"],
        &services["postgres"],
        &services["kms"],
    );

    // Keyward is built from the repository's Dockerfile.
    let build = &keyward["build"];
    let context = build["context"].as_str().unwrap_or(".");
    let dockerfile = build["dockerfile"].as_str().unwrap_or("Dockerfile");
    let dockerfile = repo_root().join(context).join(dockerfile);
    assert!(
        dockerfile.exists(),
        "{} does not exist",
        dockerfile.display()
    );
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    assert!(
        text.contains("cargo build --release --locked --bin keyward"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("USER ") && !l.contains("root")),
        "non-root user"
    );

    // Keyward starts after healthy dependencies.
    for dep in ["postgres", "kms"] {
        assert_eq!(
            keyward["depends_on"][dep]["condition"], "service_healthy",
            "keyward must wait for a healthy {dep}"
        );
        assert!(
            services[dep]["healthcheck"]["test"].is_array(),
            "{dep} needs a healthcheck"
        );
    }

    // Development mode listens on loopback: publishing a port would reach nothing.
    let env = env_of(keyward);
    let listen = get(&env, "KEYWARD_LISTEN");
    assert!(listen.starts_with("127.0.0.1:"), "{listen}");
    assert!(
        keyward["ports"].is_null(),
        "keyward publishes no port in development mode"
    );

    // The store URL names the postgres service with its user, password and database.
    let pg_env = env_of(postgres);
    let store = get(&env, "KEYWARD_STORE");
    let expected = format!(
        "postgres://{}:{}@postgres:5432/{}",
        get(&pg_env, "POSTGRES_USER"),
        get(&pg_env, "POSTGRES_PASSWORD"),
        get(&pg_env, "POSTGRES_DB")
    );
    assert_eq!(store, expected);

    // The AWS KMS endpoint is the emulator, on the port it binds, on every interface.
    assert_eq!(
        get(&env, "KEYWARD_AWS_KMS__ENDPOINT_URL"),
        "http://kms:5000"
    );
    let command = kms["command"].to_string();
    assert!(command.contains("moto[server]==5.2.5"), "{command}");
    assert!(
        command.contains("keyward_moto.py --host 0.0.0.0 --port 5000"),
        "{command}"
    );
    assert!(
        kms["expose"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "5000"),
        "kms exposes 5000"
    );
    for volume in kms["volumes"].as_array().unwrap() {
        let source = volume.as_str().unwrap().split(':').next().unwrap();
        assert!(repo_root().join(source).exists(), "{source} does not exist");
    }

    // Replicas share the audit keys and the local KEK directory through one named volume.
    let shared = keyward["volumes"].as_array().unwrap()[0].as_str().unwrap();
    let (volume, mount) = shared.split_once(':').unwrap();
    assert!(
        compose["volumes"].get(volume).is_some(),
        "volume {volume} is not declared"
    );
    assert!(get(&env, "KEYWARD_AUDIT__KEYS_DIR").starts_with(mount));
    assert!(get(&env, "KEYWARD_LOCAL_KMS__DIR").starts_with(mount));
}

/// Every `KEYWARD_*` variable of the keyward service is loaded and resolved by the real binary:
/// it gets past configuration (unknown keys and bad values are configuration errors) and fails
/// only where it needs the compose network (the `postgres` host).
#[test]
fn every_keyward_variable_in_the_compose_file_is_a_configuration_key() {
    let compose = compose();
    let env = env_of(&compose["services"]["keyward"]);
    let temp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(support::keyward_bin());
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut seen = 0;
    for (key, value) in &env {
        if !key.starts_with("KEYWARD_") {
            continue;
        }
        seen += 1;
        // Same keys; paths moved into a temporary directory so nothing outside it is touched.
        let value = if value.starts_with("/var/lib/keyward") {
            temp.path()
                .join(value.trim_start_matches('/'))
                .display()
                .to_string()
        } else {
            value.clone()
        };
        cmd.env(key, value);
    }
    assert!(seen >= 5, "only {seen} KEYWARD_ variables");
    let child = cmd.spawn().unwrap();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "it cannot reach the `postgres` host here: {stderr}"
    );
    assert!(
        !stderr.contains("invalid configuration")
            && !stderr.contains("could not read configuration"),
        "the compose file's KEYWARD_ variables are not a valid configuration: {stderr}"
    );
    assert!(stderr.contains("cannot open the store"), "{stderr}");
}
