//! The exit kit's format and decryptor on exports built here with the local development provider
//! (no server, no KMS): what `keyward export` writes verifies and opens; every kind of tampering
//! or incompleteness is refused naming the file; a shredded data key says so; a wrong context,
//! another tenant's envelope, a key the export does not have and a KEK the customer cannot use
//! each fail with their own error and exit status. The end-to-end test through the real binaries
//! and a real AWS KMS emulator is tests/e2e/tests/exit_kit.rs.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::path::PathBuf;

use keyward_envelope::{
    EncryptionContext, KeyId, Sealer, SecretKey, TenantId, dek_wrap_aad, wrap_key,
};
use keyward_kms::{KeyProvider as _, KeyRef, ProviderKind, local::LocalProvider};
use keyward_open::{
    ExportInfo, ExportWriter, Lookup, OpenError, ProviderSettings,
    format::{
        AuditRefs, DATA_KEYS, DataKeyEntry, MANIFEST, Manifest, TENANT_KEYS, TOMBSTONES,
        TenantKeyEntry, TombstoneEntry, tenant_key_context,
    },
    open_envelope, verify,
};

struct Fixture {
    _temp: tempfile::TempDir,
    kms_dir: PathBuf,
    dir: PathBuf,
    tenant: TenantId,
    /// (envelope, its DEK id, plaintext), sealed with [`ctx`].
    envelopes: Vec<(Vec<u8>, KeyId, Vec<u8>)>,
    /// An envelope whose data key is shredded.
    shredded: Vec<u8>,
}

fn ctx() -> EncryptionContext {
    EncryptionContext::try_from_map([("conversation".into(), "42".into())].into()).unwrap()
}

fn info() -> ExportInfo {
    ExportInfo {
        exported_at: "2026-12-01T10:00:00.000Z".to_owned(),
        exported_at_ms: 1_796_119_200_000,
        audit: AuditRefs {
            head_seq: 41,
            head_hash: "ab".repeat(32),
            export_record_seq: 57,
        },
    }
}

impl Fixture {
    /// Tenant `acme`: two tenant keys (local keys `default` and `second`), data keys in three
    /// scopes, one envelope per data key, one more data key shredded.
    async fn new() -> Self {
        let temp = tempfile::tempdir().unwrap();
        let kms_dir = temp.path().join("local-kms");
        let kms = LocalProvider::open(&kms_dir).unwrap();
        kms.create_key("second").unwrap();
        let tenant: TenantId = "acme".parse().unwrap();
        let dir = temp.path().join("export");
        let mut writer = ExportWriter::create(&dir, &tenant).unwrap();

        let mut tenant_keys = Vec::new();
        for (i, kek) in ["default", "second"].into_iter().enumerate() {
            let id = KeyId::generate().unwrap();
            let (key, wrapped) = kms
                .generate(
                    &KeyRef::new(ProviderKind::Local, kek),
                    &tenant_key_context(&tenant, &id),
                )
                .await
                .unwrap();
            writer.tenant_key(TenantKeyEntry::new(
                &tenant,
                &id,
                1000 + i as i64,
                ProviderKind::Local,
                kek,
                i as i64 + 1,
                "active",
                wrapped.as_bytes(),
            ));
            tenant_keys.push((id, key));
        }
        let mut deks = Vec::new();
        for (n, scope) in ["conv-1", "conv-2", "default", "conv-1"]
            .into_iter()
            .enumerate()
        {
            let (tk_id, tk) = &tenant_keys[n % 2];
            let id = KeyId::generate().unwrap();
            let dek = SecretKey::generate().unwrap();
            let wrapped = wrap_key(tk, &dek, &dek_wrap_aad(&tenant, scope, &id).unwrap()).unwrap();
            let plaintext = format!("message {n} in {scope}").into_bytes();
            let envelope = Sealer::new(&dek, &tenant, &id)
                .seal(&ctx(), &plaintext)
                .unwrap();
            deks.push((
                DataKeyEntry::new(&tenant, &id, tk_id, scope, 2000, None, wrapped.as_bytes())
                    .unwrap(),
                (envelope, id, plaintext),
            ));
        }
        deks.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let mut envelopes = Vec::new();
        for (entry, sealed) in deks {
            writer.data_key(&entry).unwrap();
            envelopes.push(sealed);
        }
        // A shredded one: its envelope exists, its data key only as a tombstone.
        let gone = KeyId::generate().unwrap();
        let shredded = Sealer::new(&SecretKey::generate().unwrap(), &tenant, &gone)
            .seal(&ctx(), b"gone")
            .unwrap();
        writer
            .tombstone(&TombstoneEntry {
                id: gone.to_string(),
                tenant_key_id: tenant_keys[0].0.to_string(),
                scope_hmac: "hmac-sha256:00".to_owned(),
                created_at_ms: 1500,
                shredded_at_ms: 3000,
                shredded_by: "TenantAdmin::\"acme-secops\"".to_owned(),
                reason: "erasure request 7".to_owned(),
            })
            .unwrap();
        let manifest = writer.finish(info()).unwrap();
        assert_eq!(manifest.counts.tenant_keys, 2);
        assert_eq!(manifest.counts.data_keys, 4);
        assert_eq!(manifest.counts.tombstones, 1);
        Self {
            _temp: temp,
            kms_dir,
            dir,
            tenant,
            envelopes,
            shredded,
        }
    }

    fn settings(&self) -> ProviderSettings {
        ProviderSettings {
            local_kms_dir: Some(self.kms_dir.clone()),
            ..ProviderSettings::default()
        }
    }

    async fn open(&self, envelope: &[u8]) -> Result<Vec<u8>, OpenError> {
        open_envelope(&self.dir, envelope, &ctx(), &self.settings())
            .await
            .map(|p| p.to_vec())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Replaces `name` by `edit` of its text.
    fn edit(&self, name: &str, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(self.path(name)).unwrap();
        std::fs::write(self.path(name), edit(text)).unwrap();
    }

    /// Makes the manifest agree with `name` again (an editor who also edits the manifest).
    fn rehash(&self, name: &str) {
        let bytes = std::fs::read(self.path(name)).unwrap();
        let mut manifest: Manifest =
            serde_json::from_slice(&std::fs::read(self.path(MANIFEST)).unwrap()).unwrap();
        let entry = manifest.files.get_mut(name).unwrap();
        entry.sha256 = hex::encode(sha256(&bytes));
        entry.bytes = bytes.len() as u64;
        std::fs::write(
            self.path(MANIFEST),
            serde_json::to_vec_pretty(&manifest).unwrap(),
        )
        .unwrap();
    }

    /// The refusal of opening the first envelope, which must name `file`.
    async fn refused(&self, file: &str) -> String {
        match self.open(&self.envelopes[0].0).await {
            Err(OpenError::Refused(refused)) => {
                assert_eq!(refused.file, file, "{refused}");
                refused.to_string()
            }
            other => panic!("expected the export to be refused naming {file}, got {other:?}"),
        }
    }
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn an_export_verifies_and_opens_every_envelope_with_the_customers_key() {
    let fx = Fixture::new().await;
    let export = verify(&fx.dir, None).unwrap();
    assert_eq!(export.tenant, fx.tenant);
    assert_eq!(export.tenant_keys.len(), 2);
    assert!(export.lookup.is_none());
    for (envelope, id, plaintext) in &fx.envelopes {
        assert!(matches!(
            verify(&fx.dir, Some(id)).unwrap().lookup,
            Some(Lookup::DataKey(ref k)) if k.id == *id
        ));
        assert_eq!(&fx.open(envelope).await.unwrap(), plaintext);
    }
    // Files and directory are private to their owner.
    use std::os::unix::fs::PermissionsExt as _;
    for name in [MANIFEST, TENANT_KEYS, DATA_KEYS, TOMBSTONES] {
        let mode = std::fs::metadata(fx.path(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
}

#[tokio::test]
async fn a_shredded_data_key_says_so_with_its_tombstone() {
    let fx = Fixture::new().await;
    let err = fx.open(&fx.shredded).await.unwrap_err();
    assert_eq!(err.exit_code(), 3);
    let message = err.to_string();
    assert!(message.contains("was shredded"), "{message}");
    assert!(message.contains("erasure request 7"), "{message}");
}

#[tokio::test]
async fn a_wrong_context_another_tenant_and_an_unknown_data_key_do_not_open() {
    let fx = Fixture::new().await;
    let wrong =
        EncryptionContext::try_from_map([("conversation".into(), "43".into())].into()).unwrap();
    let err = open_envelope(&fx.dir, &fx.envelopes[0].0, &wrong, &fx.settings())
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 5);
    assert!(err.to_string().contains("encryption context"), "{err}");

    let globex: TenantId = "globex".parse().unwrap();
    let id = KeyId::generate().unwrap();
    let foreign = Sealer::new(&SecretKey::generate().unwrap(), &globex, &id)
        .seal(&ctx(), b"x")
        .unwrap();
    let err = fx.open(&foreign).await.unwrap_err();
    assert_eq!(err.exit_code(), 5);
    assert!(err.to_string().contains("tenant globex's"), "{err}");

    let later = Sealer::new(&SecretKey::generate().unwrap(), &fx.tenant, &id)
        .seal(&ctx(), b"x")
        .unwrap();
    let err = fx.open(&later).await.unwrap_err();
    assert_eq!(err.exit_code(), 5);
    assert!(err.to_string().contains("is not in this export"), "{err}");

    let err = fx.open(b"not an envelope").await.unwrap_err();
    assert_eq!(err.exit_code(), 5);
    assert!(err.to_string().contains("not a Keyward envelope"), "{err}");
}

#[tokio::test]
async fn a_kek_the_customer_cannot_use_is_its_own_failure() {
    let fx = Fixture::new().await;
    // No key directory given.
    let err = open_envelope(
        &fx.dir,
        &fx.envelopes[0].0,
        &ctx(),
        &ProviderSettings::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.exit_code(), 4);
    assert!(err.to_string().contains("--local-kms-dir"), "{err}");
    // The key disabled: the KEK refuses.
    let kms = LocalProvider::open_existing(&fx.kms_dir).unwrap();
    kms.set_enabled("default", false).unwrap();
    kms.set_enabled("second", false).unwrap();
    let err = fx.open(&fx.envelopes[0].0).await.unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(matches!(err, OpenError::Kms { .. }), "{err:?}");
}

#[tokio::test]
async fn a_changed_byte_in_any_file_is_refused_naming_it() {
    for name in [TENANT_KEYS, DATA_KEYS, TOMBSTONES] {
        let fx = Fixture::new().await;
        let mut bytes = std::fs::read(fx.path(name)).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        std::fs::write(fx.path(name), bytes).unwrap();
        let message = fx.refused(name).await;
        assert!(message.contains("does not match its SHA-256"), "{message}");
    }
    // Truncated, and missing.
    let fx = Fixture::new().await;
    let bytes = std::fs::read(fx.path(DATA_KEYS)).unwrap();
    std::fs::write(fx.path(DATA_KEYS), &bytes[..bytes.len() - 10]).unwrap();
    fx.refused(DATA_KEYS).await;
    std::fs::remove_file(fx.path(TOMBSTONES)).unwrap();
    // (data_keys.jsonl is checked first.)
    std::fs::write(fx.path(DATA_KEYS), &bytes).unwrap();
    let message = fx.refused(TOMBSTONES).await;
    assert!(message.contains("missing"), "{message}");
}

#[tokio::test]
async fn a_consistent_edit_of_a_scope_or_a_key_still_fails_where_the_key_is_unwrapped() {
    // The scope changed and the manifest re-hashed: the entry's AAD no longer matches ...
    let fx = Fixture::new().await;
    let scope_of_first = {
        let text = std::fs::read_to_string(fx.path(DATA_KEYS)).unwrap();
        let first: DataKeyEntry = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first.id, fx.envelopes[0].1.to_string());
        first.scope
    };
    fx.edit(DATA_KEYS, |t| {
        t.replacen(
            &format!("\"scope\":\"{scope_of_first}\""),
            "\"scope\":\"conv-9\"",
            1,
        )
    });
    fx.rehash(DATA_KEYS);
    let message = fx.refused(DATA_KEYS).await;
    assert!(message.contains("wrap_aad is not the AAD"), "{message}");
    // ... and with the AAD recomputed too, the data key does not unwrap under it.
    fx.edit(DATA_KEYS, |t| {
        let mut lines: Vec<String> = t.lines().map(str::to_owned).collect();
        let mut first: DataKeyEntry = serde_json::from_str(&lines[0]).unwrap();
        let id: KeyId = first.id.parse().unwrap();
        first.wrap_aad =
            keyward_open::format::b64(&dek_wrap_aad(&fx.tenant, "conv-9", &id).unwrap());
        lines[0] = serde_json::to_string(&first).unwrap();
        lines.join("\n") + "\n"
    });
    fx.rehash(DATA_KEYS);
    let message = fx.refused(DATA_KEYS).await;
    assert!(
        message.contains("does not unwrap under tenant key"),
        "{message}"
    );

    // A tenant key's wrapped bytes swapped for the other's, manifest re-hashed: the KEK (the
    // customer's) refuses to unwrap it under this tenant key's context.
    let fx = Fixture::new().await;
    fx.edit(TENANT_KEYS, |t| {
        let mut body: serde_json::Value = serde_json::from_str(&t).unwrap();
        let other = body["tenant_keys"][1]["wrapped"].clone();
        body["tenant_keys"][0]["wrapped"] = other;
        body["tenant_keys"][0]["key_ref"] = "second".into();
        serde_json::to_string_pretty(&body).unwrap()
    });
    fx.rehash(TENANT_KEYS);
    // An envelope whose data key is under the edited (first) tenant key.
    let first_tk = verify(&fx.dir, None).unwrap().tenant_keys[0].id;
    let (envelope, _, _) = fx
        .envelopes
        .iter()
        .find(|(_, id, _)| {
            matches!(
                verify(&fx.dir, Some(id)).unwrap().lookup,
                Some(Lookup::DataKey(ref key)) if key.tenant_key_id == first_tk
            )
        })
        .unwrap();
    match fx.open(envelope).await {
        Err(OpenError::Refused(r)) => {
            assert_eq!(r.file, TENANT_KEYS);
            assert!(r.problem.contains("does not unwrap under its KEK"), "{r}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_edited_or_missing_manifest_is_refused() {
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit); 7] = [
        ("holds 4 data keys; manifest.json says 5", |m| {
            m["counts"]["data_keys"] = 5.into()
        }),
        ("format_version 2", |m| m["format_version"] = 2.into()),
        ("is of tenant \"acme\"", |m| m["tenant"] = "globex".into()),
        ("does not match its SHA-256", |m| {
            m["files"]["tombstones.jsonl"]["bytes"] = 1.into()
        }),
        ("lists the files", |m| {
            m["files"]
                .as_object_mut()
                .unwrap()
                .remove("tombstones.jsonl");
        }),
        ("unknown field", |m| m["signed_by"] = "nobody".into()),
        ("not \"keyward-export\"", |m| m["format"] = "other".into()),
    ];
    for (expected, edit) in edits {
        let fx = Fixture::new().await;
        fx.edit(MANIFEST, |t| {
            let mut m: serde_json::Value = serde_json::from_str(&t).unwrap();
            edit(&mut m);
            serde_json::to_string_pretty(&m).unwrap()
        });
        let err = verify(&fx.dir, None).unwrap_err();
        assert!(err.to_string().contains(expected), "{expected}: {err}");
        assert!(
            [MANIFEST, TENANT_KEYS, DATA_KEYS, TOMBSTONES].contains(&err.file.as_str()),
            "{err}"
        );
    }
    let fx = Fixture::new().await;
    std::fs::remove_file(fx.path(MANIFEST)).unwrap();
    let message = fx.refused(MANIFEST).await;
    assert!(message.contains("the export is incomplete"), "{message}");
}

#[tokio::test]
async fn entries_that_break_the_format_are_refused_with_their_line() {
    type Edit = fn(&Fixture);
    let cases: [(&str, &str, Edit); 6] = [
        (DATA_KEYS, "line 2: data key", |fx| {
            // Two lines swapped: out of id order.
            fx.edit(DATA_KEYS, |t| {
                let mut lines: Vec<&str> = t.lines().collect();
                lines.swap(0, 1);
                lines.join("\n") + "\n"
            });
        }),
        (DATA_KEYS, "line 1: unknown field", |fx| {
            fx.edit(DATA_KEYS, |t| t.replacen("{\"id\"", "{\"x\":1,\"id\"", 1));
        }),
        (DATA_KEYS, "which tenant_keys.json does not have", |fx| {
            fx.edit(DATA_KEYS, |t| {
                let first: DataKeyEntry = serde_json::from_str(t.lines().next().unwrap()).unwrap();
                t.replacen(&first.tenant_key_id, &"ff".repeat(16), 1)
            });
        }),
        (TENANT_KEYS, "wrap_context is not this tenant key's", |fx| {
            fx.edit(TENANT_KEYS, |t| {
                t.replacen("\"tenant-key\"", "\"canary\"", 1)
            });
        }),
        (TOMBSTONES, "does not end with a newline", |fx| {
            fx.edit(TOMBSTONES, |t| t.trim_end().to_owned());
        }),
        (DATA_KEYS, "line 2 is longer than 65536 bytes", |fx| {
            // A line no export writes (an entry is under 1 KiB): refused without being kept.
            fx.edit(DATA_KEYS, |t| {
                let mut lines: Vec<String> = t.lines().map(str::to_owned).collect();
                lines.insert(1, format!("{{\"pad\":\"{}\"}}", "x".repeat(1 << 20)));
                lines.join("\n") + "\n"
            });
        }),
    ];
    for (file, expected, edit) in cases {
        let fx = Fixture::new().await;
        edit(&fx);
        fx.rehash(file);
        let err = verify(&fx.dir, None).unwrap_err();
        assert_eq!(err.file, file, "{err}");
        assert!(err.problem.contains(expected), "{expected}: {err}");
    }
}

#[tokio::test]
async fn the_writer_refuses_a_non_empty_directory_and_leaves_nothing_when_it_does_not_finish() {
    let temp = tempfile::tempdir().unwrap();
    let tenant: TenantId = "acme".parse().unwrap();
    std::fs::write(temp.path().join("notes.txt"), "mine").unwrap();
    let err = ExportWriter::create(temp.path(), &tenant).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(
        std::fs::read_to_string(temp.path().join("notes.txt")).unwrap(),
        "mine"
    );

    let dir = temp.path().join("new");
    let mut writer = ExportWriter::create(&dir, &tenant).unwrap();
    let id = KeyId::generate().unwrap();
    writer
        .data_key(&DataKeyEntry::new(&tenant, &id, &id, "s", 1, None, &[1; 61]).unwrap())
        .unwrap();
    assert!(dir.join(DATA_KEYS).exists());
    drop(writer);
    assert!(!dir.exists(), "an unfinished export leaves nothing");

    // An existing empty directory is used, and kept when the export does not finish.
    let empty = temp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    drop(ExportWriter::create(&empty, &tenant).unwrap());
    assert!(empty.exists());
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
}
