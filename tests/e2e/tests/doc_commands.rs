//! Every `keyward …` command in the code blocks of README.md, docs/onboarding/*.md and the task
//! guides (docs/deleting-data.md, docs/rewrap.md, docs/rekey.md, docs/exit.md), run
//! against the real binary, so that the docs cannot drift from it (issue #18, item 12).
//!
//! - The README's quickstart runs for real, in order, as a new user runs it: `keyward serve` with
//!   its defaults from a fresh directory (only its addresses and the monitor interval are set,
//!   through `KEYWARD_*` variables), every command from that directory with its pipes and
//!   redirections, and each `# error: … reason R)` comment under a command checked as that
//!   command's failure. `sleep N` becomes a bounded retry of the command after it.
//! - The guides' walkthroughs run for real too, each as one bash script: docs/onboarding/aws.md
//!   against the AWS emulator (the emulator, a key made with boto3, the server, onboarding,
//!   revoke at the KMS and restore), docs/onboarding/pkcs11.md against SoftHSM2 (a token, a key
//!   made with `pkcs11-tool`, the server configured for it, onboarding, break glass, restore).
//! - Every other command (the cloud onboarding guides, which need the customer's cloud account,
//!   and the Docker Compose lines) is checked through argument parsing only: run against an
//!   endpoint where nothing listens, it must get past clap (to the connection attempt, or for an
//!   offline command to its work), never stop at a usage error. `serve` gets `--help` appended so
//!   that it parses without starting.

#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::{Server, free_port, keyward_bin};

/// A command line of a code block: where it is, and its words after `keyward`.
#[derive(Debug, Clone)]
struct DocCommand {
    place: String,
    words: Vec<Word>,
}

/// A shell word, or an unquoted operator (`|`, `<`, `>`, `&`, `&&`, `;`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    Text(String),
    Op(String),
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The logical lines (backslash continuations joined) inside fenced code blocks, with the number
/// of their first line; each block separately.
fn code_blocks(text: &str) -> Vec<Vec<(usize, String)>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<(usize, String)>> = None;
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with("```") {
            match current.take() {
                Some(block) => blocks.push(block),
                None => current = Some(Vec::new()),
            }
            continue;
        }
        let Some(block) = current.as_mut() else {
            continue;
        };
        let (start, mut joined) = pending.take().unwrap_or((i + 1, String::new()));
        joined.push_str(line.strip_prefix("$ ").unwrap_or(line));
        match joined.strip_suffix('\\') {
            Some(open) => pending = Some((start, format!("{open} "))),
            None => block.push((start, joined)),
        }
    }
    blocks
}

/// Splits a shell line into words and operators; an unquoted `#` after a blank ends it.
fn words(line: &str) -> Vec<Word> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            } else {
                word.get_or_insert_default().push(c);
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                word.get_or_insert_default();
            }
            '#' if word.is_none() => break,
            c if c.is_whitespace() => out.extend(word.take().map(Word::Text)),
            '|' | '<' | '>' | ';' | '&' => {
                out.extend(word.take().map(Word::Text));
                let mut op = c.to_string();
                if c == '&' && chars.peek() == Some(&'&') {
                    op.push(chars.next().unwrap_or('&'));
                }
                out.push(Word::Op(op));
            }
            c => word.get_or_insert_default().push(c),
        }
    }
    out.extend(word.map(Word::Text));
    out
}

fn text(w: &Word) -> Option<&str> {
    match w {
        Word::Text(t) => Some(t),
        Word::Op(_) => None,
    }
}

/// The `keyward` invocation of one pipeline segment, as its words after the program: `keyward …`,
/// `target/debug/keyward …` (after `VAR=value` assignments), `docker compose exec [-T] keyward
/// keyward …` and `cargo run … --bin keyward -- …`.
fn invocation(segment: &[Word]) -> Option<Vec<Word>> {
    let texts: Vec<&str> = segment.iter().map_while(text).collect();
    let start = texts.iter().position(|w| !w.contains('='))?;
    let program = texts[start];
    let after = if program == "keyward" || program.ends_with("/keyward") {
        start + 1
    } else if texts[start..].starts_with(&["docker", "compose", "exec"]) {
        start + texts[start..].iter().rposition(|w| *w == "keyward")? + 1
    } else if texts[start..].starts_with(&["cargo", "run"]) && texts.contains(&"--bin") {
        start + texts[start..].iter().position(|w| *w == "--")? + 1
    } else {
        return None;
    };
    Some(segment[after..].to_vec())
}

/// Every `keyward` command in the code blocks of `file` (relative to the repository root).
fn commands_in(file: &str) -> Vec<DocCommand> {
    let doc = std::fs::read_to_string(repo_root().join(file)).expect("read doc");
    let mut found = Vec::new();
    for block in code_blocks(&doc) {
        for (line, content) in block {
            if content.starts_with("alias ") {
                continue;
            }
            let all = words(&content);
            for segment in all.split(|w| matches!(w, Word::Op(op) if op != "<" && op != ">")) {
                if let Some(words) = invocation(segment) {
                    found.push(DocCommand {
                        place: format!("{file}:{line}: {content}"),
                        words,
                    });
                }
            }
        }
    }
    found
}

/// The arguments of a command without its redirections (`< file`, `> file`).
fn arguments(words: &[Word]) -> Vec<String> {
    let mut args = Vec::new();
    let mut iter = words.iter();
    while let Some(w) = iter.next() {
        match w {
            Word::Text(t) => args.push(t.clone()),
            Word::Op(_) => {
                iter.next();
            }
        }
    }
    args
}

/// The file after the redirection operator `op` (`<` or `>`), if any.
fn redirection(words: &[Word], op: &str) -> Option<String> {
    let at = words.iter().position(|w| *w == Word::Op(op.to_owned()))?;
    words.get(at + 1).and_then(text).map(str::to_owned)
}

/// Runs `keyward args` from `dir` with `stdin`; returns (success, stdout, stderr).
fn run(dir: &Path, env: &[(&str, &str)], args: &[String], stdin: &[u8]) -> (bool, Vec<u8>, String) {
    let (code, out, err) = support::run_keyward(Some(dir), env, args, stdin);
    (code == Some(0), out, err)
}

/// The reason of a `# error: … (status …, reason R)` comment line.
fn expected_reason(comment: &str) -> Option<String> {
    let rest = comment.trim().strip_prefix("# error:")?;
    let at = rest.rfind("reason ")? + "reason ".len();
    let reason: String = rest[at..]
        .chars()
        .take_while(|c| c.is_ascii_uppercase() || *c == '_')
        .collect();
    (!reason.is_empty()).then_some(reason)
}

#[test]
fn the_readme_quickstart_runs_as_written() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README");
    let block = code_blocks(&readme)
        .into_iter()
        .find(|b| b.iter().any(|(_, l)| l.starts_with("alias keyward=")))
        .expect("the README's quickstart block (the one with `alias keyward=`)");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_in_working_dir(
        dir.path(),
        &[("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "1")],
    );
    let endpoint = server.endpoint();
    let env = [("KEYWARD_ENDPOINT", endpoint.as_str())];
    // (line, pipeline, expected failure reason, retry budget)
    let mut steps: Vec<(usize, Vec<Word>, Option<String>, Duration)> = Vec::new();
    let mut budget = Duration::ZERO;
    for (line, content) in &block {
        if let Some(reason) = expected_reason(content) {
            let last = steps
                .last_mut()
                .expect("an `# error:` comment follows a command");
            last.2 = Some(reason);
            continue;
        }
        let all = words(content);
        match all.first().and_then(text) {
            None | Some("alias") => {}
            Some("sleep") => {
                // The monitor runs every second here: half the documented wait is plenty.
                let secs: u64 = all
                    .get(1)
                    .and_then(text)
                    .and_then(|s| s.parse().ok())
                    .expect("sleep N");
                budget = Duration::from_secs(secs / 2);
            }
            Some(_) => {
                steps.push((*line, all, None, budget));
                budget = Duration::ZERO;
            }
        }
    }
    assert!(
        steps.len() >= 12,
        "the quickstart has fewer commands than expected: {steps:?}"
    );
    for (line, pipeline, expected, budget) in steps {
        let segments: Vec<&[Word]> = pipeline.split(|w| *w == Word::Op("|".into())).collect();
        let (stdin, command) = match segments.as_slice() {
            [one] => (Vec::new(), *one),
            [echo, command] => {
                let echoed: Vec<&str> = echo.iter().filter_map(text).skip(1).collect();
                assert_eq!(
                    echo.first().and_then(text),
                    Some("echo"),
                    "README.md:{line}"
                );
                (format!("{}\n", echoed.join(" ")).into_bytes(), *command)
            }
            _ => panic!("README.md:{line}: a pipeline this test does not know"),
        };
        let words = invocation(command)
            .unwrap_or_else(|| panic!("README.md:{line}: not a keyward command"));
        let stdin = match redirection(&words, "<") {
            Some(file) => std::fs::read(dir.path().join(&file))
                .unwrap_or_else(|e| panic!("README.md:{line}: {file}: {e}")),
            None => stdin,
        };
        let args = arguments(&words);
        let deadline = Instant::now() + budget;
        let (ok, out, err) = loop {
            let (ok, out, err) = run(dir.path(), &env, &args, &stdin);
            let as_documented = match &expected {
                None => ok,
                Some(reason) => !ok && err.contains(&format!("reason {reason})")),
            };
            if as_documented || Instant::now() >= deadline {
                break (ok, out, err);
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        match &expected {
            None => assert!(ok, "README.md:{line}: keyward {args:?} failed: {err}"),
            Some(reason) => assert!(
                !ok && err.contains(&format!("reason {reason})")),
                "README.md:{line}: keyward {args:?} should fail with {reason}; ok={ok}, stderr: {err}"
            ),
        }
        if let Some(file) = redirection(&words, ">") {
            std::fs::write(dir.path().join(file), out).expect("write stdout");
        }
    }
}

/// docs/onboarding/aws.md, "Trying it against the emulator": the whole block run by bash as a
/// reader pastes it (see [`run_walkthrough`]), against the AWS emulator it starts itself.
#[test]
fn the_aws_emulator_walkthrough_runs_as_written() {
    let python = std::env::var("KEYWARD_MOTO_PYTHON").unwrap_or_else(|_| {
        panic!("KEYWARD_MOTO_PYTHON: the Python with moto[server] (scripts/test sets it)")
    });
    let moto = free_port();
    let (stdout, stderr) = run_walkthrough(
        "docs/onboarding/aws.md",
        "## Trying it against the emulator",
        &[
            ("4566", moto.to_string()),
            ("target/test-venv/bin/python", python),
        ],
        moto,
    );
    assert!(
        stdout.contains("arn:aws:kms:us-east-1:123456789012:key/"),
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().filter(|l| *l == "hello").count(),
        3,
        "decrypted before and after the restore, and after the re-key with the old key \
         disabled and pending deletion:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("re-key done"), "{stdout}");
    assert!(
        stdout.contains("its KMS key may be disabled"),
        "the key history says the old key may go:\n{stdout}"
    );
}

/// docs/onboarding/pkcs11.md, "Trying it with SoftHSM2": a token, a key generated on it with
/// `pkcs11-tool`, the server configured for it, onboarding, break glass and restore.
#[test]
fn the_softhsm_walkthrough_runs_as_written() {
    let (stdout, stderr) = run_walkthrough(
        "docs/onboarding/pkcs11.md",
        "## Trying it with SoftHSM2",
        &[],
        0,
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let hello: Vec<usize> = (0..lines.len()).filter(|&i| lines[i] == "hello").collect();
    let refused = lines
        .iter()
        .position(|l| *l == "refused, as it must be")
        .unwrap_or_else(|| panic!("the revoked decrypt was not refused:\n{stdout}\n{stderr}"));
    assert!(
        hello.len() == 2 && hello[0] < refused && refused < hello[1],
        "decrypted, refused after revoke-key, decrypted after restore-key:\n{stdout}\n{stderr}"
    );
    assert!(stderr.contains("reason KEY_REVOKED"), "{stderr}");
}

/// Runs the first code block after `heading` in `guide` with bash, as a reader pastes it, from
/// the repository root, with only what a test must change: the `replacements` (ports, paths of
/// tools), a temp dir instead of `/tmp`, the binary under test for `target/debug/keyward`, the
/// `cargo build` lines skipped (the binary is built, with every feature), the server's address
/// chosen by the test (`KEYWARD_LISTEN`, `KEYWARD_ENDPOINT`), a wait after each `… &` line until
/// its port answers (`serve`: the server's; anything else: `background_port`) as a person typing
/// the next line would give it, and the background processes killed at the end. Fails unless the
/// script exits 0 within 180 s; returns its stdout and stderr.
fn run_walkthrough(
    guide: &str,
    heading: &str,
    replacements: &[(&str, String)],
    background_port: u16,
) -> (String, String) {
    let text = std::fs::read_to_string(repo_root().join(guide)).unwrap();
    let section = &text[text
        .find(heading)
        .unwrap_or_else(|| panic!("{guide}: no {heading:?}"))..];
    let block = code_blocks(section)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{guide}: no code block under {heading:?}"));
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().to_str().unwrap();
    let listen = free_port();
    let bin = keyward_bin();
    let mut script = String::from(
        "set -eo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n\
         wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done; echo \"nothing on port $1\" >&2; exit 1; }\n",
    );
    let mut skipped_build = false;
    for (_, line) in &block {
        if line.trim_start().starts_with("cargo build ") {
            skipped_build = true;
            continue;
        }
        let mut line = line
            .replace("/tmp/", &format!("{tmp}/"))
            .replace("target/debug/keyward", bin.to_str().unwrap());
        for (from, to) in replacements {
            line = line.replace(from, to);
        }
        script.push_str(&line);
        script.push('\n');
        if line.trim_end().ends_with('&') {
            let port = if line.contains(" serve ") {
                listen
            } else {
                background_port
            };
            script.push_str(&format!("wait_port {port}\n"));
        }
    }
    assert!(
        skipped_build,
        "{guide}: the block no longer builds the CLI: update this test"
    );
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(&script)
        .current_dir(repo_root())
        .env("KEYWARD_LISTEN", format!("127.0.0.1:{listen}"))
        .env("KEYWARD_ADMIN__LISTEN", "127.0.0.1:0")
        .env("KEYWARD_ENDPOINT", format!("http://127.0.0.1:{listen}"))
        .env("KEYWARD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().expect("bash");
    let pid = child.id();
    // Bounded: a walkthrough takes seconds; kill its process group if it hangs.
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(Duration::from_secs(180)).is_err() {
            let _ = Command::new("kill")
                .args(["-9", &format!("-{pid}")])
                .status();
        }
    });
    let out = child.wait_with_output().expect("wait");
    let _ = done.send(());
    watchdog.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{guide}: the walkthrough failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\nscript:\n{script}",
        out.status
    );
    (stdout, stderr)
}

/// The task guides whose commands are checked here (not walked through for real).
const TASK_GUIDES: &[&str] = &[
    "docs/deleting-data.md",
    "docs/rewrap.md",
    "docs/rekey.md",
    "docs/exit.md",
    "docs/streaming.md",
];

#[test]
fn every_other_documented_command_parses() {
    let mut commands = commands_in("README.md");
    let mut onboarding: Vec<PathBuf> = std::fs::read_dir(repo_root().join("docs/onboarding"))
        .expect("docs/onboarding")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    onboarding.sort();
    assert!(onboarding.len() >= 4, "{onboarding:?}");
    for path in &onboarding {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("file name");
        let found = commands_in(&format!("docs/onboarding/{name}"));
        assert!(
            !found.is_empty(),
            "no keyward command found in docs/onboarding/{name}"
        );
        commands.extend(found);
    }
    for guide in TASK_GUIDES {
        let found = commands_in(guide);
        assert!(!found.is_empty(), "no keyward command found in {guide}");
        commands.extend(found);
    }
    assert!(
        commands.len() >= 25,
        "fewer commands than expected: {}",
        commands.len()
    );
    // Nothing listens on port 1: a command that parses fails connecting, an offline one runs.
    let scratch = tempfile::tempdir().expect("tempdir");
    let data_dir = scratch.path().join("data");
    let data_dir = data_dir.to_str().expect("utf-8");
    let env = [
        ("KEYWARD_ENDPOINT", "http://127.0.0.1:1"),
        ("KEYWARD_DATA_DIR", data_dir),
    ];
    for command in commands {
        let mut args = arguments(&command.words);
        if args.first().map(String::as_str) == Some("serve") {
            args.push("--help".to_owned());
        }
        let (_, _, err) = run(scratch.path(), &env, &args, b"");
        assert!(
            !err.contains("For more information, try '--help'"),
            "{}\nis not a valid keyward command line: {err}",
            command.place
        );
    }
}

#[test]
fn the_extractor_finds_what_a_reader_sees() {
    let blocks = code_blocks(
        "text\n```sh\n$ keyward tenant show acme   # a comment\necho 'a b' \\\n  | keyward encrypt --tenant acme > out.kw\nKEYWARD_X=1 \\\n  target/debug/keyward serve --data-dir /tmp/d &\n```\n`keyward inline` is not in a block\n",
    );
    assert_eq!(blocks.len(), 1);
    let lines: Vec<&str> = blocks[0].iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(
        arguments(&invocation(&words(lines[0])).expect("keyward")),
        ["tenant", "show", "acme"]
    );
    let pipeline = words(lines[1]);
    let segments: Vec<&[Word]> = pipeline.split(|w| *w == Word::Op("|".into())).collect();
    assert_eq!(
        segments[0],
        [Word::Text("echo".into()), Word::Text("a b".into())]
    );
    let encrypt = invocation(segments[1]).expect("keyward");
    assert_eq!(arguments(&encrypt), ["encrypt", "--tenant", "acme"]);
    assert_eq!(redirection(&encrypt, ">").as_deref(), Some("out.kw"));
    let serve = invocation(&words(lines[2])).expect("keyward");
    assert_eq!(arguments(&serve), ["serve", "--data-dir", "/tmp/d"]);
    assert_eq!(
        expected_reason("# error: x (status Y, reason KEY_REVOKED)").as_deref(),
        Some("KEY_REVOKED")
    );
}
