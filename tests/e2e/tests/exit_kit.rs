//! The exit kit end to end (issue #22, item 3; docs/exit.md), through the real binaries: a
//! tenant on a customer key in the AWS KMS emulator (moto) and one on a local development key,
//! envelopes in several scopes, one scope shredded, `keyward export` of each; then the server is
//! stopped and its database deleted, and the envelopes are opened from the exports alone, with
//! the customer's own KMS access, by `keyward-open` and by the Python reference
//! (tools/exit/keyward_open.py, run with `KEYWARD_TEST_PYTHON`, which has boto3 and
//! cryptography). A shredded envelope says shredded, a wrong context fails, a tampered export is
//! refused naming the file, a disabled KMS key refuses, and both decryptors agree on every case.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stderr,
    reason = "tests"
)]

mod support;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use keyward_proto::v1 as pb;
use keyward_test_support::aws::MotoServer;
use support::{Server, context, keyward_open_bin};

/// One envelope written through the server: what it takes to open it again.
struct Sealed {
    tenant: &'static str,
    scope: &'static str,
    context: HashMap<String, String>,
    plaintext: Vec<u8>,
    file: PathBuf,
}

fn context_args(ctx: &HashMap<String, String>) -> Vec<String> {
    let mut pairs: Vec<_> = ctx.iter().collect();
    pairs.sort();
    pairs
        .into_iter()
        .flat_map(|(k, v)| ["--context".to_owned(), format!("{k}={v}")])
        .collect()
}

/// The environment of the decryptors: the emulator's fake credentials, nothing from this
/// machine's AWS configuration, no instance metadata.
fn customer_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent/keyward-test"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/keyward-test"),
    ]
}

/// (exit code, stdout, stderr) of a finished process.
fn finish(mut cmd: Command) -> (i32, Vec<u8>, String) {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The two decryptors, with the same settings.
#[derive(Clone, Copy, Debug)]
enum Decryptor {
    KeywardOpen,
    Python,
}

struct Customer {
    moto_endpoint: String,
    local_kms_dir: PathBuf,
}

impl Customer {
    fn decrypt(
        &self,
        which: Decryptor,
        export: &Path,
        envelope: &Path,
        ctx: &HashMap<String, String>,
    ) -> (i32, Vec<u8>, String) {
        let mut cmd = match which {
            Decryptor::KeywardOpen => {
                let mut cmd = Command::new(keyward_open_bin());
                cmd.arg("decrypt");
                cmd
            }
            Decryptor::Python => {
                let python = std::env::var("KEYWARD_TEST_PYTHON").expect(
                    "KEYWARD_TEST_PYTHON: a Python with boto3 and cryptography (scripts/test \
                     exports it)",
                );
                let mut cmd = Command::new(python);
                cmd.arg(repo_root().join("tools/exit/keyward_open.py"));
                cmd
            }
        };
        cmd.arg("--export")
            .arg(export)
            .arg("--envelope")
            .arg(envelope)
            .args(context_args(ctx))
            .args(["--aws-endpoint-url", &self.moto_endpoint])
            .arg("--local-kms-dir")
            .arg(&self.local_kms_dir);
        for (k, v) in customer_env() {
            cmd.env(k, v);
        }
        finish(cmd)
    }

    /// Both decryptors fail on `envelope` with exit `code` and a message containing `says`.
    fn both_fail(
        &self,
        export: &Path,
        envelope: &Path,
        ctx: &HashMap<String, String>,
        code: i32,
        says: &str,
    ) {
        for which in [Decryptor::KeywardOpen, Decryptor::Python] {
            let (status, out, err) = self.decrypt(which, export, envelope, ctx);
            assert_eq!(status, code, "{which:?} on {}: {err}", export.display());
            assert!(out.is_empty(), "{which:?}: no plaintext on a failure");
            assert!(err.contains(says), "{which:?} should say {says:?}: {err}");
        }
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    // The manifest's digest, recomputed the way a customer's tool would: `sha256sum`.
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// Makes `manifest.json` agree with `file` again, as someone who edits both would.
fn rehash(export: &Path, file: &str) {
    let bytes = std::fs::read(export.join(file)).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(export.join("manifest.json")).unwrap()).unwrap();
    manifest["files"][file]["sha256"] = sha256_hex(&bytes).into();
    manifest["files"][file]["bytes"] = bytes.len().into();
    std::fs::write(
        export.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
}

// Multi-threaded: the dropped clients' connections close (on a runtime thread) while the test
// thread waits for the server to exit, so the server's graceful shutdown has nothing to wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_opens_without_keyward_with_the_customers_own_kms_key() {
    let moto = MotoServer::start();
    let key_arn = moto.create_symmetric_key().await;
    let server = Server::start_with_aws(&moto.endpoint, &[]);
    let local_kms_dir = server.local_kms_dir();
    let work = tempfile::tempdir().unwrap();

    // acme on its AWS key; globex on the local development key.
    let mut tenants = server.tenants().await;
    for tenant in ["acme", "globex"] {
        support::create_tenant(&mut tenants, tenant).await;
    }
    tenants
        .register_key(pb::RegisterKeyRequest {
            tenant_id: "acme".into(),
            key: Some(pb::register_key_request::Key::AwsKms(pb::AwsKmsKey {
                key_arn: key_arn.clone(),
                role_arn: String::new(),
                external_id: String::new(),
            })),
        })
        .await
        .unwrap();
    tenants
        .register_key(support::local_key("globex", "default"))
        .await
        .unwrap();

    // Envelopes in several scopes (two in one), one scope to be shredded.
    let mut crypto = server.crypto().await;
    let mut sealed = Vec::new();
    for (i, (tenant, scope)) in [
        ("acme", "conv-1"),
        ("acme", "conv-1"),
        ("acme", "user-7"),
        ("acme", "default"),
        ("acme", "conv-2"),
        ("globex", "ledger"),
    ]
    .into_iter()
    .enumerate()
    {
        let ctx = context(&[
            ("conversation", &i.to_string()),
            ("purpose", "chat-history"),
        ]);
        let plaintext = format!("prompt {i} of {tenant} in {scope}").into_bytes();
        let envelope = crypto
            .encrypt(pb::EncryptRequest {
                tenant_id: tenant.into(),
                plaintext: plaintext.clone(),
                encryption_context: ctx.clone(),
                scope: scope.into(),
                justification: None,
            })
            .await
            .unwrap()
            .into_inner()
            .envelope;
        let file = work.path().join(format!("envelope-{i}.kw"));
        std::fs::write(&file, &envelope).unwrap();
        sealed.push(Sealed {
            tenant,
            scope,
            context: ctx,
            plaintext,
            file,
        });
    }
    tenants
        .shred_scope(pb::ShredScopeRequest {
            tenant_id: "acme".into(),
            scope: "conv-2".into(),
            reason: "erasure request 7".into(),
            requested_by: "ana".into(),
        })
        .await
        .unwrap();

    // The exports, through the CLI.
    let acme_export = work.path().join("acme-export");
    let globex_export = work.path().join("globex-export");
    for (tenant, dir) in [("acme", &acme_export), ("globex", &globex_export)] {
        let (ok, out, err) = server.cli(
            &["export", "--tenant", tenant, "--out", dir.to_str().unwrap()],
            b"",
        );
        assert!(ok, "keyward export --tenant {tenant}: {err}");
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("No key is in clear"), "{out}");
        assert!(out.contains("key_hierarchy_exported"), "{out}");
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(acme_export.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "keyward-export");
    assert_eq!(manifest["format_version"], 1);
    assert_eq!(manifest["tenant"], "acme");
    assert_eq!(manifest["counts"]["tenant_keys"], 1);
    assert_eq!(manifest["counts"]["tombstones"], 1);
    let data_keys = manifest["counts"]["data_keys"].as_u64().unwrap();
    assert_eq!(data_keys, 3, "conv-1, user-7, default");
    let tenant_keys: serde_json::Value =
        serde_json::from_slice(&std::fs::read(acme_export.join("tenant_keys.json")).unwrap())
            .unwrap();
    assert_eq!(tenant_keys["tenant_keys"][0]["provider"], "aws-kms");
    assert_eq!(tenant_keys["tenant_keys"][0]["key_ref"], key_arn.as_str());
    // The export is in the signed log, with its counts, under the seq the manifest names.
    let (ok, out, err) = server.cli(
        &[
            "audit",
            "events",
            "--tenant",
            "acme",
            "--type",
            "key_hierarchy_exported",
        ],
        b"",
    );
    assert!(ok, "{err}");
    let out = String::from_utf8(out).unwrap();
    let seq = manifest["audit"]["export_record_seq"].as_u64().unwrap();
    assert!(out.starts_with(&format!("{seq}\t")), "{out}");
    assert!(
        out.contains(&format!(
            "\"complete\":true,\"data_keys\":{data_keys},\"tenant\":\"acme\",\"tenant_keys\":1,\"tombstones\":1"
        )),
        "{out}"
    );
    // Nothing in clear: no plaintext in the export's files.
    for entry in std::fs::read_dir(&acme_export).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        for s in &sealed {
            assert!(!bytes.windows(s.plaintext.len()).any(|w| w == s.plaintext));
        }
    }

    // Keyward goes away: the server stopped, its database deleted (the local key directory,
    // which stands for globex's KMS, stays).
    let database = server.database();
    drop((tenants, crypto));
    let mut server = server;
    server.terminate();
    assert!(
        server
            .wait_exit(std::time::Duration::from_secs(30))
            .is_some()
    );
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{suffix}", database.display()));
        if path.exists() {
            std::fs::remove_file(&path).unwrap();
        }
    }
    assert!(!database.exists());

    let customer = Customer {
        moto_endpoint: moto.endpoint.clone(),
        local_kms_dir,
    };
    let export_of = |tenant: &str| {
        if tenant == "acme" {
            &acme_export
        } else {
            &globex_export
        }
    };
    // Every envelope not shredded opens, with both decryptors.
    for s in sealed.iter().filter(|s| s.scope != "conv-2") {
        for which in [Decryptor::KeywardOpen, Decryptor::Python] {
            let (status, out, err) =
                customer.decrypt(which, export_of(s.tenant), &s.file, &s.context);
            assert_eq!(status, 0, "{which:?}, {} {}: {err}", s.tenant, s.scope);
            assert_eq!(out, s.plaintext, "{which:?}");
        }
    }
    // The shredded one says so.
    let shredded = sealed.iter().find(|s| s.scope == "conv-2").unwrap();
    customer.both_fail(
        &acme_export,
        &shredded.file,
        &shredded.context,
        3,
        "shredded",
    );
    customer.both_fail(
        &acme_export,
        &shredded.file,
        &shredded.context,
        3,
        "erasure request 7",
    );
    // A wrong context does not open.
    let first = &sealed[0];
    let wrong = context(&[("conversation", "99"), ("purpose", "chat-history")]);
    customer.both_fail(&acme_export, &first.file, &wrong, 5, "encryption context");
    // Another tenant's envelope does not open from this export.
    let globex = sealed.iter().find(|s| s.tenant == "globex").unwrap();
    customer.both_fail(
        &acme_export,
        &globex.file,
        &globex.context,
        5,
        "tenant globex",
    );

    // Tampered exports are refused, naming the file.
    let tampered = |name: &str, edit: &dyn Fn(&Path)| {
        let dir = work.path().join(name);
        copy_dir(&acme_export, &dir);
        edit(&dir);
        dir
    };
    let flipped = tampered("flipped", &|dir| {
        let path = dir.join("data_keys.jsonl");
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() / 3;
        bytes[at] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
    });
    customer.both_fail(&flipped, &first.file, &first.context, 1, "data_keys.jsonl");
    let rescoped = |rehashed: bool| {
        move |dir: &Path| {
            let path = dir.join("data_keys.jsonl");
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(
                &path,
                text.replace("\"scope\":\"conv-1\"", "\"scope\":\"user-7\""),
            )
            .unwrap();
            if rehashed {
                rehash(dir, "data_keys.jsonl");
            }
        }
    };
    let moved = tampered("rescoped", &rescoped(false));
    customer.both_fail(&moved, &first.file, &first.context, 1, "data_keys.jsonl");
    let moved = tampered("rescoped-rehashed", &rescoped(true));
    customer.both_fail(&moved, &first.file, &first.context, 1, "data_keys.jsonl");
    let recounted = tampered("recounted", &|dir| {
        let path = dir.join("manifest.json");
        let mut m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        m["counts"]["data_keys"] = (data_keys - 1).into();
        std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    });
    customer.both_fail(
        &recounted,
        &first.file,
        &first.context,
        1,
        "manifest.json says",
    );
    let versioned = tampered("versioned", &|dir| {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("\"format_version\": 1", "\"format_version\": 2"),
        )
        .unwrap();
    });
    customer.both_fail(&versioned, &first.file, &first.context, 1, "manifest.json");
    let unfinished = tampered("unfinished", &|dir| {
        std::fs::remove_file(dir.join("manifest.json")).unwrap();
    });
    customer.both_fail(&unfinished, &first.file, &first.context, 1, "manifest.json");
    let (status, _, err) = finish({
        let mut cmd = Command::new(keyward_open_bin());
        cmd.args(["verify", "--export"]).arg(&flipped);
        cmd
    });
    assert_eq!(status, 1, "{err}");
    assert!(
        err.contains("data_keys.jsonl: does not match its SHA-256"),
        "{err}"
    );
    let (status, out, err) = finish({
        let mut cmd = Command::new(keyward_open_bin());
        cmd.args(["verify", "--export"]).arg(&acme_export);
        cmd
    });
    assert_eq!(status, 0, "{err}");
    assert!(
        String::from_utf8_lossy(&out).contains(&format!("wrapped by aws-kms {key_arn}")),
        "{}",
        String::from_utf8_lossy(&out)
    );

    // The customer's KMS decides: with the key disabled, nothing opens (the KMS refuses).
    moto.disable_key(&key_arn).await;
    customer.both_fail(
        &acme_export,
        &first.file,
        &first.context,
        4,
        "was not unwrapped",
    );
    moto.enable_key(&key_arn).await;
    let (status, out, err) = customer.decrypt(
        Decryptor::KeywardOpen,
        &acme_export,
        &first.file,
        &first.context,
    );
    assert_eq!(status, 0, "{err}");
    assert_eq!(out, first.plaintext);
}

#[tokio::test]
async fn an_export_of_an_unknown_tenant_or_into_a_used_directory_writes_nothing() {
    let server = Server::start(&[]);
    server.onboard("acme").await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("nobody");
    let (code, _, err) = server.cli_code(
        &[
            "export",
            "--tenant",
            "nobody",
            "--out",
            out.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(code, Some(3), "refused by the server: {err}");
    assert!(
        err.contains("NOT_FOUND") || err.contains("does not exist"),
        "{err}"
    );
    assert!(!out.exists(), "nothing left behind");
    let used = work.path().join("used");
    std::fs::create_dir(&used).unwrap();
    std::fs::write(used.join("keep.txt"), "mine").unwrap();
    let (code, _, err) = server.cli_code(
        &[
            "export",
            "--tenant",
            "acme",
            "--out",
            used.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(std::fs::read_dir(&used).unwrap().count(), 1);
}

/// Every `keyward-open …` command in docs/exit.md's code blocks parses (the `keyward …` ones are
/// checked by doc_commands.rs): run against a directory that is no export and an envelope that
/// is none, each must get past argument parsing to its work (exit 1, the export refused, or 5,
/// the envelope; never 2, a usage error).
#[test]
fn the_documented_keyward_open_commands_parse() {
    let doc = std::fs::read_to_string(repo_root().join("docs/exit.md")).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut found = 0;
    let mut in_block = false;
    let mut pending = String::new();
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        pending.push_str(line.trim());
        if let Some(open) = pending.strip_suffix('\\') {
            pending = format!("{open} ");
            continue;
        }
        let command = std::mem::take(&mut pending);
        let Some(rest) = command.strip_prefix("keyward-open ") else {
            continue;
        };
        // Up to a redirection or comment; the export and envelope replaced by scratch paths.
        let words: Vec<String> = rest
            .split_whitespace()
            .take_while(|w| !w.starts_with('>') && !w.starts_with('#') && *w != "|")
            .map(|w| match w {
                w if w.ends_with("-export") && !w.starts_with("--") => {
                    scratch.path().display().to_string()
                }
                w if w.ends_with(".kw") => scratch.path().join("e.kw").display().to_string(),
                w => w.to_owned(),
            })
            .collect();
        std::fs::write(scratch.path().join("e.kw"), b"x").unwrap();
        let (status, _, err) = finish({
            let mut cmd = Command::new(keyward_open_bin());
            cmd.args(&words);
            cmd
        });
        assert!(
            status == 1 && err.contains("manifest.json")
                || status == 5 && err.contains("not a Keyward envelope"),
            "docs/exit.md: keyward-open {rest}: exit {status}: {err}"
        );
        found += 1;
    }
    assert!(
        found >= 2,
        "keyward-open commands found in docs/exit.md: {found}"
    );
}
