//! Where `encrypt` and `decrypt` read and write: stdin or a file in, stdout or a file out.
//!
//! A file is written into a temporary file beside it and renamed over it only once complete
//! ([`Pending::persist`]): a command that fails (a refused call, a stream cut midway, Ctrl-C)
//! leaves no partial file behind, and an existing file is replaced only by a complete one.
//! Stdout cannot be taken back; there a non-zero exit status means the output is incomplete
//! (docs/streaming.md, "From the CLI").

use std::{
    fs::File,
    io::{BufWriter, Read, Seek as _, Write as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::Context as _;

/// Bytes buffered before a write reaches the file or stdout.
const WRITE_BUFFER: usize = 256 * 1024;

/// The input of `encrypt` or `decrypt`: stdin or a file, read in bounded pieces.
pub(crate) struct Input {
    reader: Box<dyn Read + Send>,
    /// "stdin" or the file's path, for errors.
    name: String,
    /// Bytes left to read, when known: a regular file (named, or redirected to stdin).
    size: Option<u64>,
    /// Bytes read so far (the progress line reads it from another task).
    read: Arc<AtomicU64>,
}

impl Input {
    /// `path`, or stdin when `None` or `-`.
    pub(crate) fn open(path: Option<&Path>) -> anyhow::Result<Input> {
        let Some(path) = path.filter(|p| *p != Path::new("-")) else {
            return Ok(Input {
                reader: Box::new(std::io::stdin()),
                name: "stdin".to_owned(),
                size: stdin_size(),
                read: Arc::default(),
            });
        };
        let name = path.display().to_string();
        let file = File::open(path).with_context(|| format!("cannot read {name}"))?;
        let size = file
            .metadata()
            .ok()
            .filter(std::fs::Metadata::is_file)
            .map(|m| m.len());
        Ok(Input {
            reader: Box::new(file),
            name,
            size,
            read: Arc::default(),
        })
    }

    /// An input over `reader` (tests).
    #[cfg(test)]
    pub(crate) fn from_reader(reader: impl Read + Send + 'static, size: Option<u64>) -> Input {
        Input {
            reader: Box::new(reader),
            name: "test input".to_owned(),
            size,
            read: Arc::default(),
        }
    }

    /// "stdin" or the file's path.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Bytes the input held when opened, when known.
    pub(crate) fn size(&self) -> Option<u64> {
        self.size
    }

    /// The count of bytes read so far, shared.
    pub(crate) fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.read)
    }

    /// Reads until `buf` is full or the input ends; the number of bytes read (less than
    /// `buf.len()` only at the end).
    pub(crate) fn fill(&mut self, buf: &mut [u8]) -> anyhow::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    self.read.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", self.name)),
            }
        }
        Ok(filled)
    }

    /// Up to `limit` bytes: fewer only if the input ended.
    pub(crate) fn read_up_to(&mut self, limit: usize) -> anyhow::Result<Vec<u8>> {
        let mut buf = vec![0; limit];
        let n = self.fill(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Everything left, appended to `buf`.
    pub(crate) fn read_rest(&mut self, buf: &mut Vec<u8>) -> anyhow::Result<()> {
        let n = self
            .reader
            .read_to_end(buf)
            .with_context(|| format!("cannot read {}", self.name))?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// The bytes left on stdin when it is a regular file (`keyward encrypt < big.bin`), for the
/// progress line's total; `None` for a pipe or a terminal.
fn stdin_size() -> Option<u64> {
    use std::os::fd::AsFd as _;
    // A duplicate of the descriptor: its metadata and offset are stdin's (reading the offset
    // does not move it).
    let mut file = File::from(std::io::stdin().as_fd().try_clone_to_owned().ok()?);
    let metadata = file.metadata().ok()?;
    if !metadata.is_file() {
        return None;
    }
    let offset = file.stream_position().ok()?;
    Some(metadata.len().saturating_sub(offset))
}

/// Where the output goes as it is written: stdout, or the temporary file beside the target.
pub(crate) enum Sink {
    Stdout(BufWriter<std::io::Stdout>),
    File {
        writer: BufWriter<File>,
        name: String,
    },
}

impl Sink {
    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match self {
            Sink::Stdout(out) => out.write_all(bytes).context("cannot write stdout"),
            Sink::File { writer, name } => writer
                .write_all(bytes)
                .with_context(|| format!("cannot write {name}")),
        }
    }

    /// Flushes everything written; a file is also synced to disk, so that the rename that
    /// publishes it ([`Pending::persist`]) never exposes a file whose data is not there yet.
    pub(crate) fn finish(self) -> anyhow::Result<()> {
        match self {
            Sink::Stdout(mut out) => out.flush().context("cannot write stdout"),
            Sink::File { writer, name } => {
                let file = writer
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .with_context(|| format!("cannot write {name}"))?;
                file.sync_all()
                    .with_context(|| format!("cannot write {name}"))
            }
        }
    }

    pub(crate) fn is_stdout(&self) -> bool {
        matches!(self, Sink::Stdout(_))
    }
}

/// A file output not yet in place: the temporary file is removed when this is dropped without
/// [`Pending::persist`].
pub(crate) struct Pending {
    temp: tempfile::TempPath,
    target: PathBuf,
}

impl Pending {
    /// Renames the complete temporary file to the target (replacing it if it exists).
    pub(crate) fn persist(self) -> anyhow::Result<()> {
        let target = self.target;
        self.temp
            .persist(&target)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot write {}", target.display()))
    }
}

/// The output: stdout when `path` is `None` or `-`; else a temporary file created beside
/// `path` now (so a directory that cannot be written fails before any call), readable by its
/// owner only, with the [`Pending`] rename that puts it in place.
pub(crate) fn create_output(path: Option<&Path>) -> anyhow::Result<(Sink, Option<Pending>)> {
    let Some(target) = path.filter(|p| *p != Path::new("-")) else {
        return Ok((
            Sink::Stdout(BufWriter::with_capacity(WRITE_BUFFER, std::io::stdout())),
            None,
        ));
    };
    let name = target.display().to_string();
    let file_name = target
        .file_name()
        .with_context(|| format!("cannot write {name}: not a file name"))?;
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(file_name);
    prefix.push(".");
    let temp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".partial")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write {name}"))?;
    let (file, temp) = temp.into_parts();
    Ok((
        Sink::File {
            writer: BufWriter::with_capacity(WRITE_BUFFER, file),
            name,
        },
        Some(Pending {
            temp,
            target: target.to_owned(),
        }),
    ))
}

/// Writes `bytes` to the output as a whole (the unary commands).
pub(crate) fn write_output(path: Option<&Path>, bytes: &[u8]) -> anyhow::Result<()> {
    let (mut sink, pending) = create_output(path)?;
    sink.write_all(bytes)?;
    sink.finish()?;
    pending.map_or(Ok(()), Pending::persist)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_file_appears_only_when_complete_and_an_abandoned_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.kw");
        std::fs::write(&target, b"old").unwrap();

        let (mut sink, pending) = create_output(Some(&target)).unwrap();
        sink.write_all(b"partial").unwrap();
        let names = entries(dir.path());
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(
            names[0].starts_with(".out.kw.") && names[0].ends_with(".partial"),
            "{names:?}"
        );
        // Abandoned: the old file is untouched and the temporary one is gone.
        drop(sink);
        drop(pending);
        assert_eq!(entries(dir.path()), ["out.kw"]);
        assert_eq!(std::fs::read(&target).unwrap(), b"old");

        let (mut sink, pending) = create_output(Some(&target)).unwrap();
        sink.write_all(b"complete").unwrap();
        sink.finish().unwrap();
        pending.unwrap().persist().unwrap();
        assert_eq!(entries(dir.path()), ["out.kw"]);
        assert_eq!(std::fs::read(&target).unwrap(), b"complete");
    }

    #[test]
    fn an_output_in_a_missing_directory_fails_at_once_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("missing").join("out.kw");
        let err = create_output(Some(&target)).err().unwrap();
        assert!(
            format!("{err:#}").starts_with(&format!("cannot write {}", target.display())),
            "{err:#}"
        );
    }

    #[test]
    fn an_input_is_read_in_full_pieces_and_counted() {
        // A reader that returns at most 3 bytes per read, like a pipe.
        struct Trickle(std::io::Cursor<Vec<u8>>);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(3);
                self.0.read(&mut buf[..n])
            }
        }
        let mut input =
            Input::from_reader(Trickle(std::io::Cursor::new(b"0123456789".to_vec())), None);
        let counter = input.counter();
        assert_eq!(input.read_up_to(8).unwrap(), b"01234567");
        assert_eq!(counter.load(Ordering::Relaxed), 8);
        let mut rest = Vec::new();
        input.read_rest(&mut rest).unwrap();
        assert_eq!(rest, b"89");
        assert_eq!(counter.load(Ordering::Relaxed), 10);
        assert_eq!(input.read_up_to(8).unwrap(), b"");
    }

    #[test]
    fn a_named_file_knows_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in");
        std::fs::write(&path, vec![7u8; 1000]).unwrap();
        let input = Input::open(Some(&path)).unwrap();
        assert_eq!(input.size(), Some(1000));
        assert_eq!(input.name(), path.display().to_string());
        let err = Input::open(Some(&dir.path().join("nope"))).err().unwrap();
        assert!(format!("{err:#}").starts_with("cannot read "), "{err:#}");
    }
}
