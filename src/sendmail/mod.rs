//! Sendmail mode: what `/usr/sbin/sendmail` callers get. Turns argv and stdin into a
//! submission, runs the pipeline, and maps the outcome to an exit code and at most one stderr
//! line, written only after stdin was read to its end. stdout stays empty.
//!
//! It must not decide anything itself: argv and stdin in, the pipeline's report out.

pub mod args;
pub mod bs;

use crate::config::Config;
use crate::exit::{Exit, Failure};
use crate::identity::{self, Caller};
use crate::message::address;
use crate::message::{self, ReadError, Terminator};
use crate::pipeline::{Pipeline, Submission};
use crate::runtime::Runtime;
use args::{Invocation, Mode};
use std::io::{self, BufReader, Read};

/// `parsed`: argv as `dispatch` parsed it (once, for both).
pub fn run(parsed: Result<Invocation, args::UsageError>) -> Exit {
    let stdin = io::stdin();
    let mut input = BufReader::with_capacity(64 * 1024, stdin.lock());
    let inv = match parsed {
        Ok(inv) => inv,
        Err(args::UsageError(why)) => {
            drain_unless_tty(&mut input);
            return fail(&Failure::new(Exit::Usage, why));
        }
    };
    match inv.mode {
        Mode::NoOp => Exit::Ok,
        Mode::ListQueue => crate::admin::mailq(inv.config.as_deref()),
        Mode::Flush => crate::admin::flush(inv.config.as_deref()),
        Mode::Aliases => crate::admin::newaliases(),
        Mode::Smtp => {
            drop(input);
            smtp_session(&inv)
        }
        Mode::Deliver => deliver(&inv, &mut input),
    }
}

/// stdin that fails with `TimedOut` when the client sends nothing for `idle`, so that a `-bs`
/// client that hangs cannot keep mailgate (and a PHP-FPM worker) waiting for ever.
struct IdleStdin {
    idle: std::time::Duration,
}

impl Read for IdleStdin {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut pfd = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = self.idle.as_millis().min(i32::MAX as u128) as libc::c_int;
        loop {
            // SAFETY: pfd is one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc > 0 {
                break;
            }
            if rc == 0 {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "client idle"));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        // Straight from fd 0: std's stdin keeps its own buffer (which poll cannot see) and its
        // lock is already held by `run`.
        loop {
            // SAFETY: buf is writable for its length.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

fn fail(f: &Failure) -> Exit {
    err!("mailgate: {}", f.message);
    f.exit
}

fn drain_unless_tty<R: Read>(input: &mut R) {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(0) } == 0 {
        message::drain(input);
    }
}

/// Config, caller and account: everything needed before a message can be decided on.
fn setup(inv: &Invocation) -> Result<Pipeline, Failure> {
    let privileged = identity::is_privileged();
    let mut config = crate::runtime::load_config(inv.config.as_deref(), privileged)?;
    let caller = Caller::current()?;
    let env_account = identity::caller_env(&config.identity.account_env)
        .filter(|_| !config.identity.account_env.is_empty());
    let option = inv.account.as_deref();
    let (requested, _) = identity::requested_account(&caller, option, env_account.as_deref());
    // Only this account's drop-in file is read: the cost does not grow with the server.
    if let Err(e) = config.load_account(&requested) {
        let mut fields = crate::log::Fields::default();
        fields.add("account", &requested).add("config-error", &e.0);
        crate::log::Logger::new(&config.log, &config.state_dir)
            .log(crate::log::Severity::Warning, fields.as_str());
        return Err(Failure::new(Exit::Config, e.0));
    }
    let account = identity::resolve_account(&caller, option, env_account.as_deref(), &config)?;
    Ok(Pipeline::new(
        Runtime::start(config, caller, privileged),
        account,
    ))
}

fn deliver<R: io::BufRead>(inv: &Invocation, input: &mut R) -> Exit {
    let pipeline = setup(inv);
    let max_size = pipeline
        .as_ref()
        .map_or(Config::default().max_message_size, |c| {
            c.runtime.config.max_message_size
        });
    let terminator = if inv.ignore_dots {
        Terminator::Eof
    } else {
        Terminator::DotLine
    };
    let read = message::read_message(input, terminator, max_size);
    // Whatever happens next, the caller's pipe is read to its end first.
    message::drain(input);
    let mut pipeline = match pipeline {
        Ok(c) => c,
        Err(f) => return fail(&f),
    };
    let message = match read {
        Ok(m) => m,
        Err(ReadError::TooBig { limit }) => {
            return fail(&Failure::new(
                Exit::DataErr,
                format!("message larger than max_message_size ({limit} bytes)"),
            ));
        }
        Err(ReadError::Io(e)) => {
            return fail(&Failure::io(
                Exit::IoErr,
                "cannot read the message from stdin",
                &e,
            ));
        }
    };
    let submission = match envelope(inv, &pipeline, message) {
        Ok(s) => s,
        Err(f) => return fail(&f),
    };
    let report = pipeline.submit(submission);
    if let Some(line) = &report.line {
        err!("mailgate: {line}");
    }
    report.exit
}

/// Sender and recipients from argv (and the headers with `-t`).
fn envelope(
    inv: &Invocation,
    pipeline: &Pipeline,
    message: message::Message,
) -> Result<Submission, Failure> {
    let sender = inv
        .sender
        .as_deref()
        .map(address::parse_sender)
        .transpose()?;
    for op in &inv.recipients {
        address::check_raw_address(op).map_err(|why| {
            Failure::new(Exit::NoUser, format!("invalid recipient {op:?}: {why}"))
        })?;
    }
    let mut recipients: Vec<String> = inv
        .recipients
        .iter()
        .flat_map(|op| address::parse_list(op))
        .collect();
    if inv.extract_recipients {
        recipients.extend(message.header_recipients());
    }
    let mut unique = Vec::with_capacity(recipients.len());
    for r in recipients {
        address::check_address(&r)
            .map_err(|why| Failure::new(Exit::NoUser, format!("invalid recipient {r:?}: {why}")))?;
        let r = pipeline.runtime.qualify(&r);
        if !unique.contains(&r) {
            unique.push(r);
        }
    }
    if unique.is_empty() {
        return Err(Failure::new(
            Exit::Usage,
            "no recipients: name them as arguments or use -t to read them from To:/Cc:/Bcc:",
        ));
    }
    Ok(Submission {
        sender,
        recipients: unique,
        full_name: inv.full_name.clone(),
        message,
    })
}

/// `-bs`: one SMTP session on stdin and stdout. The configuration is loaded once, by `setup`;
/// its idle timeout bounds every wait for the client.
fn smtp_session(inv: &Invocation) -> Exit {
    let stdout = io::stdout();
    let mut output = io::BufWriter::new(stdout.lock());
    let (mut pipeline, unavailable) = match setup(inv) {
        Ok(p) => (Some(p), None),
        Err(f) => (None, Some(f)),
    };
    let idle = pipeline
        .as_ref()
        .map_or(Config::default().smtp.idle_timeout, |p| {
            p.runtime.config.smtp.idle_timeout
        })
        .secs();
    let mut input = BufReader::with_capacity(
        64 * 1024,
        IdleStdin {
            idle: std::time::Duration::from_secs(idle),
        },
    );
    let hostname = pipeline.as_ref().map_or_else(
        || "localhost".to_string(),
        |c| c.runtime.names.hostname.clone(),
    );
    let max_size = pipeline
        .as_ref()
        .map_or(Config::default().max_message_size, |c| {
            c.runtime.config.max_message_size
        });
    let server = bs::Server {
        hostname: &hostname,
        max_size,
        unavailable: unavailable.as_ref().map(|f| f.message.clone()),
    };
    let result = server.run(&mut input, &mut output, &mut |mut sub: Submission| {
        let Some(pipeline) = pipeline.as_mut() else {
            return "554 5.3.5 mailgate is not available".into();
        };
        if let Some(Some(s)) = &sub.sender {
            sub.sender = Some(Some(pipeline.runtime.qualify(s)));
        }
        sub.recipients = sub
            .recipients
            .iter()
            .map(|r| pipeline.runtime.qualify(r))
            .collect();
        pipeline.submit(sub).smtp
    });
    match (result, unavailable) {
        (_, Some(f)) => f.exit,
        (Err(_), None) => Exit::IoErr,
        (Ok(()), None) => Exit::Ok,
    }
}
