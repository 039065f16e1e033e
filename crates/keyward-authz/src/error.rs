//! [`LoadError`]: why the policies, the schema, the identity mapping or the test cases could not
//! be loaded, with the file and (where known) the line and column of every problem.

use std::fmt;
use std::path::{Path, PathBuf};

/// What was being loaded when a [`LoadError`] happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LoadErrorKind {
    /// A file or directory could not be read (or a required file is missing).
    Io,
    /// `schema.cedarschema` does not parse, or has warnings.
    Schema,
    /// A `*.cedar` file does not parse, or its policies are not acceptable (duplicate `@id`,
    /// templates).
    PolicySyntax,
    /// The policies do not validate against the schema in strict mode (errors or warnings).
    PolicyValidation,
    /// The identity mapping is malformed or inconsistent.
    Identities,
    /// A policy test case file is malformed.
    Cases,
}

/// One problem at one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) path: PathBuf,
    /// 1-based line and column (in characters).
    pub(crate) position: Option<(usize, usize)>,
    pub(crate) message: String,
}

impl Problem {
    /// A problem at byte `offset` of `text` (the contents of `path`), if the offset is known.
    pub(crate) fn new(
        path: &Path,
        text: &str,
        offset: Option<usize>,
        message: impl Into<String>,
    ) -> Self {
        Problem {
            path: path.to_owned(),
            position: offset.map(|o| line_column(text, o)),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Policies, schema, identity mapping or test cases could not be loaded.
///
/// `Display` prints one line per problem, each starting with the file and, where known, the
/// line and column: `policies/services.cedar:12:5: unexpected token ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    kind: LoadErrorKind,
    /// Never empty; the first is the primary problem.
    problems: Vec<Problem>,
}

impl LoadError {
    pub(crate) fn new(kind: LoadErrorKind, problem: Problem) -> Self {
        LoadError {
            kind,
            problems: vec![problem],
        }
    }

    /// `problems` must not be empty (callers only build this from a failed check).
    pub(crate) fn many(kind: LoadErrorKind, problems: Vec<Problem>) -> Self {
        LoadError { kind, problems }
    }

    pub(crate) fn io(path: &Path, what: &str, err: &std::io::Error) -> Self {
        LoadError::new(
            LoadErrorKind::Io,
            Problem {
                path: path.to_owned(),
                position: None,
                message: format!("cannot read {what}: {err}"),
            },
        )
    }

    /// A problem in `path` with no position.
    pub(crate) fn in_file(kind: LoadErrorKind, path: &Path, message: impl Into<String>) -> Self {
        LoadError::new(
            kind,
            Problem {
                path: path.to_owned(),
                position: None,
                message: message.into(),
            },
        )
    }

    /// What was being loaded.
    pub fn kind(&self) -> LoadErrorKind {
        self.kind
    }

    /// The file (or directory) of the first problem.
    pub fn path(&self) -> &Path {
        self.problems
            .first()
            .map_or_else(|| Path::new(""), |p| p.path.as_path())
    }

    /// The 1-based line of the first problem, when known.
    pub fn line(&self) -> Option<usize> {
        self.problems
            .first()
            .and_then(|p| p.position)
            .map(|(l, _)| l)
    }

    /// The 1-based column (in characters) of the first problem, when known.
    pub fn column(&self) -> Option<usize> {
        self.problems
            .first()
            .and_then(|p| p.position)
            .map(|(_, c)| c)
    }

    /// How many problems were found (all of them are in `Display`).
    pub fn problem_count(&self) -> usize {
        self.problems.len()
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

/// `s` on one line: lines joined with `: `, runs of whitespace collapsed.
pub(crate) fn one_line(s: &str) -> String {
    s.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

/// 1-based line and column (counted in characters) of byte `offset` in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one_in_characters() {
        let text = "ab\ncé\nx";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 2), (1, 3));
        assert_eq!(line_column(text, 3), (2, 1));
        // 'é' is two bytes; the offset after it is column 3.
        assert_eq!(line_column(text, 6), (2, 3));
        // Inside a character: its start.
        assert_eq!(line_column(text, 5), (2, 2));
        assert_eq!(line_column(text, 100), (3, 2));
    }

    #[test]
    fn display_prefixes_every_problem_with_its_place() {
        let err = LoadError::many(
            LoadErrorKind::PolicySyntax,
            vec![
                Problem::new(Path::new("p/a.cedar"), "x\ny", Some(2), "bad"),
                Problem::new(Path::new("p/b.cedar"), "", None, "worse"),
            ],
        );
        assert_eq!(err.to_string(), "p/a.cedar:2:1: bad\np/b.cedar: worse");
        assert_eq!(err.line(), Some(2));
        assert_eq!(err.column(), Some(1));
        assert_eq!(err.path(), Path::new("p/a.cedar"));
        assert_eq!(err.problem_count(), 2);
    }
}
