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

    pub fn log(&self, severity: Severity, line: &str) {
        let line = line.replace(['\r', '\n'], " ");
        if let Some(path) = &self.file {
            if append(path, &line).is_ok() {
                return;
            }
        } else if syslog(&self.syslog_socket, severity, &line).is_ok() {
            return;
        }
        if append(&self.fallback, &line).is_err() {
            // Last resort; never reached in -bs mode unless both syslog and the state directory
            // failed, and then the decision is worth more than a quiet stderr.
            eprintln!("mailgate: {line}");
        }
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

fn append(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    let stamp = chrono::Local::now().format("%Y-%m-%dT%H:%M:%S%.3f%:z");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    // One write per line: O_APPEND keeps concurrent writers' lines whole.
    f.write_all(format!("{stamp} mailgate[{}]: {line}\n", std::process::id()).as_bytes())
}

/// Builds `key=value` pairs, quoting values that contain spaces, quotes or `=`.
#[derive(Default)]
pub struct Fields(String);

impl Fields {
    pub fn add(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Fields {
        let v = value.to_string();
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
