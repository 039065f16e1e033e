//! `docker-compose.yml` (the alternative quick start) and the `Dockerfile`, checked without a
//! container engine (none is available in CI, nor are the base images; docs/operations.md):
//! the compose file's structure; that the image it builds runs the command it gives with the
//! paths, user and variables it expects; that every `KEYWARD_*` variable of either file is a
//! configuration key the real binary accepts; that the `keyward` CLI commands the compose file
//! and README document run, as written, against the real server; and that the KMS emulator's
//! command and healthcheck work against the real launcher.
//!
//! The YAML is parsed by PyYAML in the Python that has moto (`KEYWARD_MOTO_PYTHON`, exported by
//! `scripts/test`; default `python3`). Without PyYAML or moto these tests fail; they are never
//! skipped. Not checked: that the images build and start (the base images and their tools, e.g.
//! `pg_isready`), and the network between the containers.
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

/// The value of `key`; the last one when it is set twice (a service's over its image's).
fn get<'a>(env: &'a [(String, String)], key: &str) -> &'a str {
    env.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("{key} is not set"))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| panic!("not a string: {v}")))
        .collect()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The Dockerfile's last stage: the image docker-compose.yml runs.
fn runtime_stage() -> String {
    let dockerfile = read("Dockerfile");
    let (_, last) = dockerfile.rsplit_once("\nFROM ").expect("a FROM line");
    format!("FROM {last}")
}

/// The value of the runtime stage's last `INSTRUCTION …` line.
fn instruction<'a>(stage: &'a str, name: &str) -> &'a str {
    stage
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .next_back()
        .unwrap_or_else(|| panic!("no {name} in the runtime stage"))
        .trim()
}

/// An instruction in exec form (`["a", "b"]`), as a list.
fn exec_form(stage: &str, name: &str) -> Vec<String> {
    let value = instruction(stage, name);
    serde_json::from_str(value)
        .unwrap_or_else(|e| panic!("{name} {value} is not in exec form (a JSON list): {e}"))
}

/// The runtime stage's `ENV K=V …` pairs.
fn image_env(stage: &str) -> Vec<(String, String)> {
    stage
        .lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .flat_map(str::split_whitespace)
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("ENV {pair}: write ENV KEY=value"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// What the keyward container runs: the image's ENTRYPOINT, then the service's `command` (or,
/// without one, the image's CMD).
fn keyward_argv(compose: &Value) -> Vec<String> {
    let stage = runtime_stage();
    let mut argv = exec_form(&stage, "ENTRYPOINT");
    match &compose["services"]["keyward"]["command"] {
        Value::Null => argv.extend(exec_form(&stage, "CMD")),
        Value::String(s) => argv.extend(s.split_whitespace().map(str::to_owned)),
        command => argv.extend(strings(command).into_iter().map(str::to_owned)),
    }
    argv
}

/// Runs the built `keyward` with `args`; (success, stdout, stderr).
fn keyward(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(support::keyward_bin())
        .args(args)
        .env("KEYWARD_LOG", "error")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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

/// Every `KEYWARD_*` variable of the keyward service and of the image is loaded and resolved by
/// the real binary, run with the container's arguments: it gets past configuration (unknown
/// keys and bad values are configuration errors) and fails only where it needs the compose
/// network (the `postgres` host).
#[test]
fn every_keyward_variable_in_the_compose_file_is_a_configuration_key() {
    let compose = compose();
    // The service's environment overrides the image's.
    let mut env = image_env(&runtime_stage());
    env.extend(env_of(&compose["services"]["keyward"]));
    let argv = keyward_argv(&compose);
    let temp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(support::keyward_bin());
    cmd.args(&argv[1..])
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
    assert!(seen >= 6, "only {seen} KEYWARD_ variables");
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

/// The image runs the compose command with the binary it builds, as its non-root user, and the
/// paths the compose file uses are the image's and writable by that user.
#[test]
fn the_image_runs_the_compose_command_with_its_paths_and_user() {
    let compose = compose();
    let keyward_service = &compose["services"]["keyward"];
    let stage = runtime_stage();

    // The workspace's `keyward` binary target, installed on PATH, is the entrypoint.
    assert!(
        read("crates/keyward-cli/Cargo.toml").contains("[[bin]]\nname = \"keyward\""),
        "the Dockerfile builds --bin keyward"
    );
    assert!(
        stage.contains("COPY --from=build /usr/local/bin/keyward /usr/local/bin/keyward"),
        "{stage}"
    );
    assert_eq!(exec_form(&stage, "ENTRYPOINT"), ["keyward"]);

    // The build stage's toolchain is at least the workspace's rust-version.
    let version = |s: &str| -> (u32, u32) {
        let mut parts = s.split('.').map(|p| p.parse::<u32>().unwrap());
        (parts.next().unwrap(), parts.next().unwrap())
    };
    let dockerfile = read("Dockerfile");
    let image = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .expect("a rust build stage");
    let manifest = read("Cargo.toml");
    let required = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .expect("workspace rust-version")
        .trim_end_matches('"');
    let toolchain = image.split('-').next().unwrap();
    assert!(
        version(toolchain) >= version(required),
        "FROM rust:{image} is older than rust-version {required}"
    );

    // The command the container runs, and the image's default one, are real subcommands.
    let argv = keyward_argv(&compose);
    let cmd = exec_form(&stage, "CMD");
    for args in [&argv[1..], &cmd[..]] {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.push("--help");
        let (ok, out, err) = keyward(&args);
        assert!(ok, "keyward {args:?}: {err}");
        assert!(out.contains("Usage: keyward serve"), "{out}");
    }

    // One data directory: the service's, the image's, its working directory and the user's home.
    let data_dir = get(&env_of(keyward_service), "KEYWARD_DATA_DIR").to_owned();
    assert_eq!(get(&image_env(&stage), "KEYWARD_DATA_DIR"), data_dir);
    assert_eq!(instruction(&stage, "WORKDIR"), data_dir);
    let useradd = stage
        .lines()
        .find(|l| l.contains("useradd "))
        .expect("the image creates its user");
    assert!(
        useradd.contains(&format!("--home-dir {data_dir} ")),
        "{useradd}"
    );

    // The user the image runs as is the one it creates; not root.
    let (user, group) = instruction(&stage, "USER").split_once(':').unwrap();
    assert!(
        useradd.trim_end().ends_with(&format!(" {user} \\")),
        "{useradd}"
    );
    assert!(
        stage.lines().any(|l| l.contains("groupadd ")
            && l.trim_end_matches([' ', '\\'])
                .ends_with(&format!(" {group}"))),
        "the image creates no group {group}: {stage}"
    );
    assert_ne!(user, "root");

    // The shared volume's mount point exists in the image, owned by that user, so a new named
    // volume mounted there is writable by it (Docker copies the directory's ownership).
    let shared = strings(&keyward_service["volumes"])[0];
    let (_, mount) = shared.split_once(':').unwrap();
    let mount = mount.trim_end_matches(":ro");
    let install = stage
        .lines()
        .find(|l| l.contains("install -d"))
        .expect("the image creates its directories");
    assert!(
        install.contains(&format!("-o {user} -g {group}"))
            && install.split_whitespace().any(|w| w == mount),
        "{mount} is not created for {user}: {install}"
    );
}

/// Command lines of `text` (comments and code blocks) that run `docker compose exec`, alone or
/// at the end of a pipe; prose that mentions it is not a command.
fn exec_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter(|l| {
            l.split_once("docker compose exec ")
                .is_some_and(|(before, _)| before.is_empty() || before.ends_with("| "))
        })
        .map(str::to_owned)
        .collect()
}

/// Runs documented `docker compose exec … keyward keyward …` lines as one shell script, with
/// the real `keyward` in place of the container and the keyward service's environment, against
/// `server`; returns the script's stdout. Commands that read stdin or write stdout through the
/// shell must use `-T` (no TTY), or binary envelopes would be mangled.
fn run_documented(server: &support::Server, lines: &[String], env: &[(String, String)]) -> String {
    let mut script = String::new();
    for line in lines {
        let (before, after) = line.split_once("docker compose exec ").unwrap();
        let (tty, rest) = match after.strip_prefix("-T ") {
            Some(rest) => (false, rest),
            None => (true, after),
        };
        let args = rest
            .strip_prefix("keyward keyward ")
            .unwrap_or_else(|| panic!("not the keyward service's keyward: {line}"));
        let shell_io = before.contains('|') || args.contains('<') || args.contains('>');
        assert!(
            !(tty && shell_io),
            "uses stdin/stdout through the shell without -T: {line}"
        );
        script.push_str(&format!("{before}\"$KEYWARD_CLI\" {args}\n"));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("sh");
    cmd.args(["-e", "-c", &script])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .env("KEYWARD_CLI", support::keyward_bin())
        .env("KEYWARD_ENDPOINT", server.endpoint())
        .env("KEYWARD_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "documented commands failed:\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `keyward` commands the compose file's comments and README's compose quick start give run
/// as written against the real server, with the keyward service's environment, and reach the
/// server the container runs: the CLI's default endpoint is the service's listen address.
#[test]
fn the_documented_compose_commands_run_against_the_real_server() {
    let compose = compose();
    // The container's environment: the image's, overridden by the service's.
    let mut env = image_env(&runtime_stage());
    env.extend(env_of(&compose["services"]["keyward"]));
    let listen = get(&env, "KEYWARD_LISTEN");
    assert!(
        env.iter().all(|(k, _)| k != "KEYWARD_ENDPOINT"),
        "the CLI in the container uses its default endpoint"
    );
    let (ok, help, err) = keyward(&["--help"]);
    assert!(ok, "{err}");
    assert!(
        help.contains(&format!("[default: http://{listen}]")),
        "the CLI's default endpoint is not http://{listen}: {help}"
    );

    // The compose file's own usage comments.
    let lines = exec_lines(&read("docker-compose.yml"));
    assert!(!lines.is_empty(), "docker-compose.yml documents no command");
    let server = support::Server::start(&[]);
    run_documented(&server, &lines, &env);

    // README's quick start: create, register the key, encrypt, decrypt.
    let readme = read("README.md");
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Alternative quick start: Docker Compose"))
        .expect("README has the Docker Compose quick start");
    let lines = exec_lines(section);
    assert!(lines.len() >= 4, "{lines:?}");
    let server = support::Server::start(&[]);
    let out = run_documented(&server, &lines, &env);
    assert!(
        out.contains("key state:    active"),
        "the key is registered: {out}"
    );
    assert!(
        out.ends_with("\nhello\n"),
        "the quick start's decrypt: {out}"
    );
}

/// The KMS emulator: the moto pin is scripts/test's, the launcher is the mounted file, its
/// arguments are ones it accepts, the port is the one exposed and used by Keyward, and the
/// healthcheck passes against the real launcher (on a free port on 127.0.0.1 here). PostgreSQL's
/// healthcheck names the user and database the service creates.
#[test]
fn the_emulator_and_database_commands_and_healthchecks_fit() {
    let compose = compose();
    let services = &compose["services"];
    let kms = &services["kms"];
    let command = strings(&kms["command"]);
    assert_eq!(command[..2], ["sh", "-c"]);
    let script = command[2];
    let tests = read("scripts/test");
    let moto = tests
        .lines()
        .find_map(|l| l.strip_prefix("MOTO_VERSION="))
        .expect("MOTO_VERSION in scripts/test");
    assert!(
        script.contains(&format!("'moto[server]=={moto}'")),
        "{script}"
    );

    let (_, run) = script
        .split_once("exec python ")
        .expect("the emulator is exec'd");
    let mut words = run.split_whitespace();
    let launcher = words.next().unwrap();
    let args: Vec<&str> = words.collect();
    let host_path = strings(&kms["volumes"])
        .into_iter()
        .find_map(|v| {
            let mut parts = v.split(':');
            let (source, target) = (parts.next()?, parts.next()?);
            let rest = launcher.strip_prefix(target)?;
            Some(repo_root().join(source).join(rest.trim_start_matches('/')))
        })
        .unwrap_or_else(|| panic!("{launcher} is on no mounted volume"));
    assert_eq!(
        host_path.canonicalize().unwrap(),
        keyward_test_support::aws::launcher_path()
            .canonicalize()
            .unwrap()
    );
    let python = std::env::var("KEYWARD_MOTO_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let help = Command::new(&python)
        .arg(&host_path)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        help.status.success(),
        "{python} {} --help (moto is needed: run scripts/test): {}",
        host_path.display(),
        String::from_utf8_lossy(&help.stderr)
    );
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(flag), "the launcher has no {flag}: {help}");
    }
    let port = args
        .windows(2)
        .find(|w| w[0] == "--port")
        .map(|w| w[1])
        .expect("--port");
    assert!(
        strings(&kms["expose"]).contains(&port),
        "port {port} not exposed"
    );
    assert_eq!(
        get(
            &env_of(&services["keyward"]),
            "KEYWARD_AWS_KMS__ENDPOINT_URL"
        ),
        format!("http://kms:{port}")
    );

    // The healthcheck's own command, against the running launcher.
    let check = strings(&kms["healthcheck"]["test"]);
    assert_eq!(check[..3], ["CMD", "python", "-c"], "{check:?}");
    let emulator = keyward_test_support::aws::MotoServer::start();
    let code = check[3].replace(
        &format!("127.0.0.1:{port}"),
        emulator.endpoint.trim_start_matches("http://"),
    );
    assert_ne!(code, check[3], "the healthcheck does not ask port {port}");
    let out = Command::new(&python).args(["-c", &code]).output().unwrap();
    assert!(
        out.status.success(),
        "the kms healthcheck fails against the launcher: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // PostgreSQL's healthcheck asks for the database and user the service creates.
    let postgres = &services["postgres"];
    let pg_env = env_of(postgres);
    let check = strings(&postgres["healthcheck"]["test"]);
    assert_eq!(check[0], "CMD-SHELL");
    assert_eq!(
        check[1],
        format!(
            "pg_isready -U {} -d {}",
            get(&pg_env, "POSTGRES_USER"),
            get(&pg_env, "POSTGRES_DB")
        )
    );
}
