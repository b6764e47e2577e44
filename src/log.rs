//! One line per message, facility mail, in Postfix's key=value spirit. Goes to syslog
//! (`/dev/log`), or to the file named in `[log] file`. When syslog cannot take the line it is
//! appended to `mailgate.log` in the state directory, so no decision goes unrecorded.

use std::fmt::Write as _;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warning,
}

pub struct Logger {
    file: Option<PathBuf>,
    syslog_socket: PathBuf,
    fallback: PathBuf,
}

impl Logger {
    pub fn new(config: &crate::config::Log, state_dir: &std::path::Path) -> Logger {
        Logger {
            file: config.file.clone(),
            syslog_socket: config.syslog_socket.clone(),
            fallback: state_dir.join("mailgate.log"),
        }
    }

    /// Write one line; `false` when it reached neither the log file, syslog nor the
    /// fallback file (only stderr).
    pub fn log(&self, severity: Severity, line: &str) -> bool {
        let line = line.replace(['\r', '\n'], " ");
        if let Some(path) = &self.file {
            if append(path, &line).is_ok() {
                return true;
            }
        } else if syslog(&self.syslog_socket, severity, &line).is_ok() {
            return true;
        }
        if append(&self.fallback, &line).is_ok() {
            return true;
        }
        // Last resort; never reached in -bs mode unless both syslog and the state directory
        // failed, and then the decision is worth more than a quiet stderr.
        err!("mailgate: {line}");
        false
    }
}

fn syslog(socket: &std::path::Path, severity: Severity, line: &str) -> std::io::Result<()> {
    const LOG_MAIL: u8 = 2 << 3;
    let pri = LOG_MAIL
        | match severity {
            Severity::Info => 6,
            Severity::Warning => 4,
        };
    let stamp = chrono::Local::now().format("%b %e %H:%M:%S");
    let msg = format!("<{pri}>{stamp} mailgate[{}]: {line}", std::process::id());
    let sock = UnixDatagram::unbound()?;
    sock.send_to(msg.as_bytes(), socket)?;
    Ok(())
}

/// The fallback log file is rotated to `NAME.1` past this size, so that no caller can fill
/// the state filesystem through it.
const MAX_LOG_FILE: u64 = 16 * 1024 * 1024;

fn append(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    let stamp = chrono::Local::now().format("%Y-%m-%dT%H:%M:%S%.3f%:z");
    let mut f = open_log(path)?;
    if f.metadata()?.len() > MAX_LOG_FILE {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        // Two writers may both rotate; the second rename moves a nearly empty file. Either
        // way the size stays bounded and no line is written into a file that is gone.
        let _ = std::fs::rename(path, old);
        f = open_log(path)?;
    }
    // One write per line: O_APPEND keeps concurrent writers' lines whole.
    f.write_all(format!("{stamp} mailgate[{}]: {line}\n", std::process::id()).as_bytes())
}

/// The log file for appending, created when missing. Never blocks on a FIFO put in its
/// place; anything but a regular file is refused.
fn open_log(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    Ok(f)
}

/// Longest value of one logged field; a longer one is cut and marked, so one line stays a
/// few KiB whatever a caller puts into a header.
pub const MAX_FIELD: usize = 256;

/// `text` safe for a log line or an admin's terminal: control characters (ESC, BEL, CR, LF,
/// NUL ...) become `\xNN` escapes, the Unicode line and paragraph separators and the
/// bidirectional overrides (which break or reorder what the admin reads) `\u{NNNN}`, and at
/// most `max` bytes are kept, marked when cut.
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 16);
    for (i, c) in text.char_indices() {
        if out.len() >= max {
            let _ = write!(out, "...[{} more bytes]", text.len() - i);
            break;
        }
        if c.is_control() {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else if is_layout_control(c) {
            let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters that are not control characters but end a line or reorder text on a terminal.
fn is_layout_control(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Builds `key=value` pairs, quoting values that contain spaces, quotes or `=`. Values are
/// escaped and length-capped (`printable`).
#[derive(Default)]
pub struct Fields(String);

impl Fields {
    pub fn add(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Fields {
        let v = printable(&value.to_string(), MAX_FIELD);
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if v.is_empty() || v.contains([' ', '"', '=', '\t']) {
            let _ = write!(
                self.0,
                "{key}=\"{}\"",
                v.replace('\\', "\\\\").replace('"', "\\\"")
            );
        } else {
            let _ = write!(self.0, "{key}={v}");
        }
        self
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_escaped_and_capped() {
        let mut f = Fields::default();
        f.add("script", "a\x1b[2J\x07b\r\nc");
        assert_eq!(f.as_str(), "script=a\\x1b[2J\\x07b\\x0d\\x0ac");
        let mut f = Fields::default();
        f.add("script", "x".repeat(45_000_000 / 1000));
        assert!(f.as_str().len() < MAX_FIELD + 64, "{}", f.as_str().len());
        assert!(
            f.as_str().ends_with("...[44744 more bytes]\""),
            "{}",
            f.as_str()
        );
    }

    #[test]
    fn line_separators_and_bidi_overrides_are_escaped() {
        assert_eq!(
            printable("a\u{2028}b\u{2029}c\u{202e}d\u{2066}e", 256),
            "a\\u{2028}b\\u{2029}c\\u{202e}d\\u{2066}e"
        );
    }

    #[test]
    fn printable_keeps_text_and_cuts_on_a_char_boundary() {
        assert_eq!(printable("Jörg Müller", 256), "Jörg Müller");
        let cut = printable(&"ü".repeat(300), 10);
        assert!(cut.starts_with("üüüüü...["), "{cut}");
    }

    #[test]
    fn fields_quote_when_needed() {
        let mut f = Fields::default();
        f.add("account", "example.com")
            .add("relay", "250 2.0.0 Ok")
            .add("script", "");
        assert_eq!(
            f.as_str(),
            "account=example.com relay=\"250 2.0.0 Ok\" script=\"\""
        );
    }
}
