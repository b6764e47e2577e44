//! The exit-code contract (sysexits.h) and the one error type that carries it.
//!
//! Exit 75 (EX_TEMPFAIL) is deliberately absent: PHP >= 8.5's `mail()` reports it as success,
//! so a 75 would lose the message silently. Temporary trouble is either kept in a spool (exit 0)
//! or reported with a code that PHP treats as failure.

use std::fmt;

/// A sysexits code that mailgate may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// EX_USAGE: bad command line, no recipients.
    Usage = 64,
    /// EX_DATAERR: the message itself is unusable.
    DataErr = 65,
    /// EX_NOUSER: a recipient address is malformed.
    NoUser = 67,
    /// EX_UNAVAILABLE: refused (limit with action reject, relay 5xx, relay unreachable without spool).
    Unavailable = 69,
    /// EX_SOFTWARE: internal error.
    Software = 70,
    /// EX_OSERR: the system failed us (state file corrupt or unreadable, lock deadline).
    OsErr = 71,
    /// EX_IOERR: reading input or writing a spool failed.
    IoErr = 74,
    /// EX_NOPERM: account binding, sender policy, locked account, admin command without rights.
    NoPerm = 77,
    /// EX_CONFIG: the configuration is broken.
    Config = 78,
}

impl Exit {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// An error that ends the run: what to tell the caller, and which exit code to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
    /// What went wrong, where a caller decides by it (never by searching the message).
    pub kind: FailureKind,
}

/// The kinds of failure a caller treats differently from the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureKind {
    #[default]
    Other,
    /// A lock another process held past the deadline: news for the admin, not damage.
    Busy,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Failure {
        Failure {
            exit,
            message: message.into(),
            kind: FailureKind::Other,
        }
    }

    /// A counter or file another process holds locked (`limits::crate::state::lock::Busy::describe`).
    pub fn busy(message: impl Into<String>) -> Failure {
        Failure {
            kind: FailureKind::Busy,
            ..Failure::new(Exit::OsErr, message)
        }
    }

    /// An I/O error with the path or action it concerns, e.g. "cannot lock /var/lib/...: ...".
    pub fn io(exit: Exit, what: impl fmt::Display, err: &std::io::Error) -> Failure {
        Failure::new(exit, format!("{what}: {err}"))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}
