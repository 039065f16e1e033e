//! Framed envelopes (envelope format version 2, docs/envelope-format.md §10) from an export:
//! `open_stream` writes each frame as soon as it opens, before the input has been read to its
//! end, and says how much it wrote when the envelope stops part-way; the `keyward-open` binary
//! and the Python reference (tools/exit/keyward_open.py, run with `KEYWARD_TEST_PYTHON`) open
//! one from a file or stdin, and on a failure part-way remove `--out` or say that stdout is
//! incomplete. The export is built here with the local development provider, as in exports.rs.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::cell::Cell;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;

use base64::Engine as _;
use keyward_envelope::{
    EncryptionContext, KeyId, SecretKey, TenantId, dek_wrap_aad, framed, wrap_key,
};
use keyward_kms::{KeyProvider as _, KeyRef, ProviderKind, local::LocalProvider};
use keyward_open::{
    ExportInfo, ExportWriter, OpenError, ProviderSettings,
    format::{AuditRefs, DataKeyEntry, TenantKeyEntry, tenant_key_context},
    open_envelope, open_stream,
};

const FRAME: u32 = 4096;

struct Fixture {
    temp: tempfile::TempDir,
    kms_dir: PathBuf,
    dir: PathBuf,
    /// A framed envelope of [`FRAMES`] frames of [`FRAME`] bytes (the last one shorter).
    envelope: Vec<u8>,
    plaintext: Vec<u8>,
}

/// 300 KiB + 5 bytes: 75 full frames and a final one of 5 bytes.
const PLAINTEXT_LEN: usize = 300 * 1024 + 5;

fn ctx() -> EncryptionContext {
    EncryptionContext::try_from_map([("conversation".into(), "42".into())].into()).unwrap()
}

impl Fixture {
    async fn new() -> Self {
        let temp = tempfile::tempdir().unwrap();
        let kms_dir = temp.path().join("local-kms");
        let kms = LocalProvider::open(&kms_dir).unwrap();
        let tenant: TenantId = "acme".parse().unwrap();
        let dir = temp.path().join("export");
        let mut writer = ExportWriter::create(&dir, &tenant).unwrap();
        let tk_id = KeyId::generate().unwrap();
        let (tk, wrapped) = kms
            .generate(
                &KeyRef::new(ProviderKind::Local, "default"),
                &tenant_key_context(&tenant, &tk_id),
            )
            .await
            .unwrap();
        writer.tenant_key(TenantKeyEntry::new(
            &tenant,
            &tk_id,
            1000,
            ProviderKind::Local,
            "default",
            1,
            "active",
            wrapped.as_bytes(),
        ));
        let dek_id = KeyId::generate().unwrap();
        let dek = SecretKey::generate().unwrap();
        let wrapped_dek =
            wrap_key(&tk, &dek, &dek_wrap_aad(&tenant, "docs", &dek_id).unwrap()).unwrap();
        writer
            .data_key(
                &DataKeyEntry::new(
                    &tenant,
                    &dek_id,
                    &tk_id,
                    "docs",
                    2000,
                    None,
                    wrapped_dek.as_bytes(),
                )
                .unwrap(),
            )
            .unwrap();
        writer
            .finish(ExportInfo {
                exported_at: "2026-12-07T10:00:00.000Z".to_owned(),
                exported_at_ms: 1_796_637_600_000,
                audit: AuditRefs {
                    head_seq: 1,
                    head_hash: "00".repeat(32),
                    export_record_seq: 2,
                },
            })
            .unwrap();
        let plaintext: Vec<u8> = (0..PLAINTEXT_LEN)
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        let envelope =
            framed::seal_framed(&dek, &tenant, &dek_id, &ctx(), FRAME, &plaintext).unwrap();
        Self {
            temp,
            kms_dir,
            dir,
            envelope,
            plaintext,
        }
    }

    fn settings(&self) -> ProviderSettings {
        ProviderSettings {
            local_kms_dir: Some(self.kms_dir.clone()),
            ..ProviderSettings::default()
        }
    }

    /// The envelope cut after `frames` whole frames (no final frame).
    fn cut_after(&self, frames: usize) -> Vec<u8> {
        let header = framed::parse_framed_header(&self.envelope)
            .unwrap()
            .unwrap()
            .encoded_len();
        self.envelope[..header + frames * (FRAME as usize + framed::FRAME_OVERHEAD)].to_vec()
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.temp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

/// A reader that hands out at most 1000 bytes per read and counts what it handed out.
struct Trickle<'a> {
    rest: &'a [u8],
    consumed: Rc<Cell<usize>>,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(1000).min(self.rest.len());
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        self.consumed.set(self.consumed.get() + n);
        Ok(n)
    }
}

/// A writer that notes how much input had been consumed at its first write, and its largest
/// write.
struct Watch {
    out: Vec<u8>,
    consumed: Rc<Cell<usize>>,
    consumed_at_first_write: Option<usize>,
    largest_write: usize,
}

impl Write for Watch {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.consumed_at_first_write
            .get_or_insert(self.consumed.get());
        self.largest_write = self.largest_write.max(buf.len());
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn open_stream_writes_each_frame_as_it_opens_before_the_input_ends() {
    let fx = Fixture::new().await;
    let consumed = Rc::new(Cell::new(0));
    let mut input = Trickle {
        rest: &fx.envelope,
        consumed: consumed.clone(),
    };
    let mut output = Watch {
        out: Vec::new(),
        consumed,
        consumed_at_first_write: None,
        largest_write: 0,
    };
    let n = open_stream(&fx.dir, &mut input, &mut output, &ctx(), &fx.settings())
        .await
        .unwrap();
    assert_eq!(n, PLAINTEXT_LEN as u64);
    assert_eq!(output.out, fx.plaintext);
    // The first frame was written after a few KiB of a 300 KiB envelope had been read: the
    // header, the first frame, and what the last read brought with it.
    let first = output.consumed_at_first_write.unwrap();
    assert!(
        first < 2 * (FRAME as usize + framed::FRAME_OVERHEAD) + 200,
        "the first frame was written after {first} of {} input bytes",
        fx.envelope.len()
    );
    assert_eq!(output.largest_write, FRAME as usize, "one frame per write");
    // In memory too.
    let plaintext = open_envelope(&fx.dir, &fx.envelope, &ctx(), &fx.settings())
        .await
        .unwrap();
    assert_eq!(&plaintext[..], &fx.plaintext[..]);
}

#[tokio::test]
async fn a_framed_envelope_that_stops_part_way_says_how_much_was_written() {
    let fx = Fixture::new().await;
    let open = |envelope: Vec<u8>, ctx: EncryptionContext| {
        let fx = &fx;
        async move {
            let mut out = Vec::new();
            let result = open_stream(
                &fx.dir,
                &mut envelope.as_slice(),
                &mut out,
                &ctx,
                &fx.settings(),
            )
            .await;
            (result, out)
        }
    };
    // Cut after 10 frames: the 10 frames are written, then it is incomplete.
    let (result, out) = open(fx.cut_after(10), ctx()).await;
    match result {
        Err(ref e @ OpenError::Incomplete { written, ref error }) => {
            assert_eq!(written, 10 * u64::from(FRAME));
            assert!(error.contains("before its final frame"), "{error}");
            assert_eq!(e.exit_code(), 5);
            assert!(e.to_string().contains("authentic"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(out, fx.plaintext[..10 * FRAME as usize]);
    // A bit flipped in frame 20's ciphertext: frames 0 to 19 are written.
    let mut tampered = fx.envelope.clone();
    let at = fx.cut_after(20).len() + 4 + 100;
    tampered[at] ^= 0x04;
    let (result, out) = open(tampered, ctx()).await;
    assert!(
        matches!(result, Err(OpenError::Incomplete { written, .. }) if written == 20 * u64::from(FRAME)),
        "{result:?}"
    );
    assert_eq!(out, fx.plaintext[..20 * FRAME as usize]);
    // A wrong context: the first frame does not open, nothing is written.
    let wrong =
        EncryptionContext::try_from_map([("conversation".into(), "43".into())].into()).unwrap();
    let (result, out) = open(fx.envelope.clone(), wrong).await;
    match result {
        Err(OpenError::Envelope(message)) => {
            assert!(message.contains("encryption context"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(out.is_empty());
    // Bytes after the final frame.
    let mut longer = fx.envelope.clone();
    longer.push(0);
    let (result, out) = open(longer, ctx()).await;
    assert!(
        matches!(&result, Err(OpenError::Incomplete { error, .. }) if error.contains("after the final frame")),
        "{result:?}"
    );
    assert_eq!(out, fx.plaintext);
    // Cut inside the header.
    let (result, out) = open(fx.envelope[..50].to_vec(), ctx()).await;
    assert!(
        matches!(&result, Err(OpenError::Envelope(m)) if m.contains("not a Keyward envelope")),
        "{result:?}"
    );
    assert!(out.is_empty());
}

/// The two decryptors of the exit kit.
#[derive(Clone, Copy, Debug)]
enum Decryptor {
    KeywardOpen,
    Python,
}

impl Decryptor {
    fn command(self, fx: &Fixture) -> Command {
        let mut cmd = match self {
            Decryptor::KeywardOpen => {
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyward-open"));
                cmd.arg("decrypt");
                cmd
            }
            Decryptor::Python => {
                let python = std::env::var("KEYWARD_TEST_PYTHON").expect(
                    "KEYWARD_TEST_PYTHON: a Python with cryptography (scripts/test exports it); \
                     this test is never skipped",
                );
                let mut cmd = Command::new(python);
                cmd.arg(
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/exit/keyward_open.py"),
                );
                cmd
            }
        };
        cmd.arg("--export")
            .arg(&fx.dir)
            .arg("--local-kms-dir")
            .arg(&fx.kms_dir);
        cmd
    }

    /// (exit status, stdout, stderr) with `args` and `stdin`, and the context
    /// `conversation=42` unless `args` has one.
    fn run(self, fx: &Fixture, args: &[&std::ffi::OsStr], stdin: &[u8]) -> (i32, Vec<u8>, String) {
        let mut cmd = self.command(fx);
        if !args.iter().any(|a| *a == "--context") {
            cmd.args(["--context", "conversation=42"]);
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        let stdin = stdin.to_vec();
        // Written from another thread: the decryptor writes plaintext while it reads.
        let feeder = std::thread::spawn(move || {
            let _ = pipe.write_all(&stdin);
        });
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        (
            out.status.code().unwrap_or(-1),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[tokio::test]
async fn both_decryptors_open_a_framed_envelope_and_never_leave_an_incomplete_one_looking_whole() {
    let fx = Fixture::new().await;
    let whole = fx.file("whole.kw", &fx.envelope);
    let cut = fx.file("cut.kw", &fx.cut_after(10));
    let b64 = fx.file(
        "whole.b64",
        base64::engine::general_purpose::STANDARD
            .encode(&fx.envelope)
            .as_bytes(),
    );
    for which in [Decryptor::KeywardOpen, Decryptor::Python] {
        let out = fx.temp.path().join(format!("{which:?}.out"));
        let os = |s: &str| std::ffi::OsStr::new(s).to_owned();
        // From a file to --out, from stdin to stdout, and base64.
        let (status, _, err) = which.run(
            &fx,
            &[
                &os("--envelope"),
                whole.as_os_str(),
                &os("--out"),
                out.as_os_str(),
            ],
            b"",
        );
        assert_eq!(status, 0, "{which:?}: {err}");
        assert_eq!(std::fs::read(&out).unwrap(), fx.plaintext, "{which:?}");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{which:?}");
        std::fs::remove_file(&out).unwrap();
        let (status, stdout, err) = which.run(&fx, &[], &fx.envelope);
        assert_eq!(status, 0, "{which:?}: {err}");
        assert!(stdout == fx.plaintext, "{which:?}: stdin to stdout");
        let (status, stdout, err) = which.run(
            &fx,
            &[&os("--envelope"), b64.as_os_str(), &os("--base64")],
            b"",
        );
        assert_eq!(status, 0, "{which:?}: {err}");
        assert!(stdout == fx.plaintext, "{which:?}: base64");

        // Cut short: --out is removed; stdout has the authentic prefix and the status says
        // it is incomplete.
        let (status, _, err) = which.run(
            &fx,
            &[
                &os("--envelope"),
                cut.as_os_str(),
                &os("--out"),
                out.as_os_str(),
            ],
            b"",
        );
        assert_eq!(status, 5, "{which:?}: {err}");
        assert!(!out.exists(), "{which:?}: an incomplete --out is removed");
        assert!(err.contains("was removed"), "{which:?}: {err}");
        let (status, stdout, err) = which.run(&fx, &[], &fx.cut_after(10));
        assert_eq!(status, 5, "{which:?}: {err}");
        assert!(err.contains("incomplete"), "{which:?}: {err}");
        assert!(
            stdout == fx.plaintext[..10 * FRAME as usize],
            "{which:?}: the frames before the cut, {} bytes",
            stdout.len()
        );
        // A wrong context: nothing written.
        let (status, stdout, err) = which.run(
            &fx,
            &[
                &os("--envelope"),
                whole.as_os_str(),
                &os("--context"),
                &os("conversation=43"),
            ],
            b"",
        );
        assert_eq!(status, 5, "{which:?}: {err}");
        assert!(err.contains("encryption context"), "{which:?}: {err}");
        assert!(stdout.is_empty(), "{which:?}");
    }
}
