//! mailgate: a sendmail-compatible drop-in that identifies the sending account, counts its
//! mail under file locks and relays it, keeps it, or refuses it with a clear exit code.
//!
//! Under a name containing "sendmail" the binary is purely sendmail(1). As `mailgate`, a first
//! argument naming an admin subcommand selects it; anything else is sendmail mode.
//!
//! # The privilege contract (as Postfix's postdrop.c states its own)
//!
//! The binary is installed set-gid `mailgate`, never set-uid. Group `mailgate` alone may write
//! the state directory; the caller may be any local user, and is assumed hostile. A process
//! that runs with privileges the caller lacks (`identity::is_privileged`):
//!
//! - trusts only the kernel for identity: the real uid (`getuid`), never `USER`, `LOGNAME` or a
//!   header; the account is `--account`/the account variable only when the configuration
//!   binds the caller to it;
//! - empties its environment before any library reads it (`identity::clean_env`; the account
//!   variable is read from a private copy) and sets its own umask;
//! - ignores every caller override: `--config`, `MAILGATE_CONFIG`, the state directory, the
//!   test clock `MAILGATE_NOW`; reads the configuration only from /etc/mailgate;
//! - never opens a path that argv names; opens state files relative to a directory it opened
//!   itself, with `O_NOFOLLOW|O_NONBLOCK`, and uses them only if they are regular files;
//! - treats argv, stdin, headers, the working directory and inherited descriptors as data:
//!   bounded (`bounded`), escaped before any log line or terminal, never markup;
//! - holds a state lock for microseconds and waits for one at most a deadline: a caller who
//!   stops her own process holding it delays others by that deadline, and root's queue run
//!   ends such a stopped holder (`state::lock`);
//! - hands mail only to a relay whose end of the connection a trusted owner holds
//!   (`relay::sockdiag`, the lane's socket credentials).
//!
//! Root's admin commands and queue run (real uid 0) may read everything; a customer's admin
//! command sees only her own accounts.

// The process entry is mailgate's own (`main` below), not std's runtime: see `start`.
#![cfg_attr(not(test), no_main)]

/// `println!` that never panics: a closed or broken stdout (`mailgate status | head -1`, EBADF)
/// must not turn into an abort, nor change the exit code that reports the message's fate.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that never panics, for the same reason (PHP may close the pipe it reads).
/// The line is formatted first and written at once: unbuffered stderr would otherwise take
/// one system call per piece, and concurrent writers could interleave them.
macro_rules! err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut line = format!($($arg)*);
        line.push('\n');
        let _ = std::io::stderr().write_all(line.as_bytes());
    }};
}

mod admin;
mod bounded;
mod config;
mod delivery;
mod dispatch;
mod exit;
mod glob;
mod identity;
mod limits;
mod log;
mod message;
mod pipeline;
mod queue;
mod relay;
mod runtime;
mod script;
mod sendmail;
mod spelling;
mod spool;
mod state;
mod stats;
mod status;

use std::ffi::OsString;

/// On musl, dlmalloc in place of musl's allocator (Cargo.toml says why).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

/// The process entry, in place of std's `fn main` start-up. std's start-up also installs a
/// stack-overflow guard: `pthread_getattr_np` reading /proc/self/maps, an alternate signal
/// stack, handlers for SIGSEGV and SIGBUS — 17 system calls and a tenth of a refused
/// message's instructions (docs/PERFORMANCE.md, "The floor") for a process that lives a
/// millisecond; a stack overflow is now a plain SIGSEGV. The rest of std's start-up, which
/// mailgate relies on, is `start`'s. The arguments are taken from here: std's
/// `env::args_os` learns them from glibc's init_array, which musl does not call with them.
#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    start();
    // SAFETY: the C runtime passes argc and an argv of argc NUL-terminated strings.
    let argv = unsafe { arguments(argc, argv) };
    run(argv)
}

/// The process's arguments as the C runtime hands them to `main`.
///
/// # Safety
/// `argv` holds `argc` pointers to NUL-terminated strings.
#[cfg(not(test))]
unsafe fn arguments(argc: libc::c_int, argv: *const *const libc::c_char) -> Vec<OsString> {
    use std::os::unix::ffi::OsStrExt;
    (0..usize::try_from(argc).unwrap_or(0))
        .map(|i| {
            // SAFETY: i < argc, and each of those pointers is a NUL-terminated string.
            let arg = unsafe { std::ffi::CStr::from_ptr(*argv.add(i)) };
            std::ffi::OsStr::from_bytes(arg.to_bytes()).to_owned()
        })
        .collect()
}

/// What std's start-up does that mailgate needs: descriptors 0, 1 and 2 open (a caller who
/// closed stdout must not have the next state file opened as descriptor 1 and written to by
/// an error line; /dev/null takes the place, as std and Postfix do), and SIGPIPE ignored (a
/// reader that went away is an error to report, not a death between the relay's 250 and the
/// log line).
#[cfg_attr(test, allow(dead_code))]
fn start() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: poll reads and writes the three pollfd structs it is given.
    let polled = unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } >= 0;
    for pfd in fds {
        let closed = if polled {
            pfd.revents & libc::POLLNVAL != 0
        } else {
            // SAFETY: fcntl F_GETFD only inspects the descriptor.
            let flags = unsafe { libc::fcntl(pfd.fd, libc::F_GETFD) };
            flags == -1
        };
        // The lowest free descriptor is the closed one: open fills the gaps in order.
        // SAFETY: the path is a NUL-terminated literal.
        if closed && unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) } == -1 {
            std::process::abort();
        }
    }
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // The heap of a process that lives a millisecond: grown in one step and never given back.
    // glibc's defaults grow it by what each allocation needs (four `brk` calls per message)
    // and hand the top back to the kernel when the SMTP buffers are freed (a fifth `brk`,
    // whose unmapping is 2–3 % of an accepted message's time: `perf record`,
    // docs/PERFORMANCE.md). Untouched pages of the pad cost nothing.
    // SAFETY: mallopt only sets parameters of glibc's allocator; no allocation is in flight.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_TOP_PAD, HEAP_PAD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// What the heap grows by beyond an allocation: more than a message's peak without its body.
#[cfg(target_env = "gnu")]
#[cfg_attr(test, allow(dead_code))]
const HEAP_PAD: libc::c_int = 1 << 20;

/// Everything after start-up; the exit code is the process's.
#[cfg_attr(test, allow(dead_code))]
fn run(argv: Vec<OsString>) -> ! {
    // State files must come out 0660 whatever umask the (untrusted) caller left us.
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0o007) };
    identity::clean_env();
    // A caller's `ulimit -f` must make a write fail (EFBIG, handled), not kill the process
    // between the relay's 250 and the log line.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let program = argv
        .first()
        .and_then(|p| std::path::Path::new(p).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rest: Vec<String> = argv
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // With mailgate installed as /usr/sbin/sendmail, Debian's mailq and newaliases links point
    // at it too: they are `sendmail -bp` and `sendmail -bi`.
    if program == "mailq" {
        std::process::exit(admin::mailq(None).code());
    }
    if program == "newaliases" {
        std::process::exit(admin::newaliases().code());
    }
    // SAFETY: isatty only inspects the descriptor.
    let stdin_is_tty = unsafe { libc::isatty(0) } == 1;
    let exit = match dispatch::route(
        &program,
        &rest,
        admin::SUBCOMMANDS,
        stdin_is_tty,
        &identity::is_login,
    ) {
        dispatch::Route::Admin => admin::run(&argv),
        dispatch::Route::Sendmail(parsed) => sendmail::run(parsed),
        dispatch::Route::Typo(why) => {
            err!("mailgate: {why}");
            exit::Exit::Usage
        }
    };
    std::process::exit(exit.code());
}
