//! The `keyward` command's exit codes (docs/errors.md, "Exit codes of the `keyward` command"),
//! and the typed error that carries one out of a command.
//!
//! Commands return `anyhow::Error`s; the ones that need a code other than
//! [`Exit::Local`] wrap their error in a [`Failure`] with [`problems`], [`refused`] or
//! [`unreachable`]. [`Exit::of`] finds it in the error's chain (or classifies a connection
//! error that was not wrapped).

use std::fmt;

use tonic::Code;
use tonic_types::StatusExt as _;

/// What a `keyward` exit status means. Stable: scripts depend on these numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// 1: the command ran and found problems: `audit verify` (or `audit report
    /// --from-export`) found the export tampered with or incomplete, `policy check` had
    /// failing cases.
    Problems = 1,
    /// 2: the command line is invalid (reported by the argument parser before anything runs;
    /// also `--public-key` text that is not a public key).
    Usage = 2,
    /// 3: the server answered and refused the request (a gRPC status with its reason:
    /// KEY_REVOKED, NOT_FOUND, PERMISSION_DENIED, …).
    Refused = 3,
    /// 4: the server could not be reached, or the connection failed during the call.
    Unreachable = 4,
    /// 5: a local problem: a file cannot be read or written, or the input is invalid (a
    /// malformed file or envelope, a tenant no audit record names, a configuration that does
    /// not load).
    Local = 5,
}

impl Exit {
    /// The process exit status.
    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    /// The exit code for `error`: the [`Failure`] in its chain; else a transport error in its
    /// chain means the server was not reached; anything else is local.
    pub(crate) fn of(error: &anyhow::Error) -> Exit {
        for cause in error.chain() {
            if let Some(failure) = cause.downcast_ref::<Failure>() {
                return failure.exit;
            }
            if cause.downcast_ref::<tonic::transport::Error>().is_some() {
                return Exit::Unreachable;
            }
        }
        Exit::Local
    }
}

/// An error with the exit code it ends the command with. Displays as the error it wraps
/// (with its causes).
pub(crate) struct Failure {
    exit: Exit,
    error: anyhow::Error,
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} (exit {})", self.error, self.exit.code())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Failure {}

fn with(exit: Exit, error: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(Failure { exit, error })
}

/// The command found problems (exit 1).
pub(crate) fn problems(error: anyhow::Error) -> anyhow::Error {
    with(Exit::Problems, error)
}

/// A local problem (exit 5), for errors whose chain would otherwise suggest another code.
pub(crate) fn local(error: anyhow::Error) -> anyhow::Error {
    with(Exit::Local, error)
}

/// A gRPC status from a call, rendered by [`crate::client::status_error`]: the server refused
/// (exit 3), unless the status is the client's own report of a broken or unreachable
/// connection (exit 4).
pub(crate) fn refused(status: tonic::Status) -> anyhow::Error {
    let exit = status_exit(&status);
    with(exit, crate::client::status_error(status))
}

/// A status the server sends always carries its reason (ErrorInfo); tonic's own statuses for
/// a connection that failed carry none: UNAVAILABLE, CANCELLED, DEADLINE_EXCEEDED, and, for a
/// connection that broke during the call (the server died), UNKNOWN or INTERNAL made from the
/// transport error, which tonic keeps as the status's source (a status decoded from a response
/// never has one).
fn status_exit(status: &tonic::Status) -> Exit {
    if status.get_details_error_info().is_some() {
        return Exit::Refused;
    }
    let made_by_tonic = std::error::Error::source(status).is_some();
    match status.code() {
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded => Exit::Unreachable,
        _ if made_by_tonic => Exit::Unreachable,
        _ => Exit::Refused,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use anyhow::Context as _;
    use tonic_types::{ErrorDetails, StatusExt as _};

    use super::*;

    #[test]
    fn the_code_survives_context_added_on_top() {
        let e = problems(anyhow::anyhow!("2 problems")).context("verifying audit.jsonl");
        assert_eq!(Exit::of(&e), Exit::Problems);
        assert_eq!(format!("{e:#}"), "verifying audit.jsonl: 2 problems");
        let io = std::fs::read("/nonexistent/keyward-test").context("cannot read");
        assert_eq!(Exit::of(&io.unwrap_err()), Exit::Local);
    }

    #[test]
    fn statuses_from_the_server_are_refusals_and_transport_statuses_are_not() {
        let with_reason = tonic::Status::with_error_details(
            Code::Unavailable,
            "the KMS did not answer",
            ErrorDetails::with_error_info(
                "KMS_UNAVAILABLE",
                "keyward.v1",
                std::collections::HashMap::new(),
            ),
        );
        assert_eq!(status_exit(&with_reason), Exit::Refused);
        let transport = tonic::Status::new(Code::Unavailable, "tcp connect error");
        assert_eq!(status_exit(&transport), Exit::Unreachable);
        let not_found = tonic::Status::new(Code::NotFound, "no such tenant");
        assert_eq!(status_exit(&not_found), Exit::Refused);
        assert_eq!(Exit::of(&refused(not_found)), Exit::Refused);
    }

    /// A server killed during a call: tonic reports the broken connection as UNKNOWN
    /// ("transport error"), made from the transport error (its source). Not a refusal.
    #[test]
    fn a_connection_broken_during_the_call_is_unreachable_not_refused() {
        let broken = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        )));
        assert_eq!(broken.code(), Code::Unknown);
        assert_eq!(status_exit(&broken), Exit::Unreachable);
        assert_eq!(Exit::of(&refused(broken)), Exit::Unreachable);
        // The same code sent by a server (decoded from its trailers: no source) is its answer.
        let answered = tonic::Status::new(Code::Unknown, "a server's own error");
        assert_eq!(status_exit(&answered), Exit::Refused);
    }
}
