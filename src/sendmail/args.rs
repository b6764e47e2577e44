//! The sendmail(1) command line, parsed exactly like Postfix's `sendmail` does with getopt and
//! the option string `+A:B:C:F:GIL:N:O:R:UV:X:b:ce:f:h:imno:p:r:q:tvx`: attached or separate
//! values, combined flags, `--`, and the POSIX stop at the first operand. Pure code: no I/O.
//!
//! mailgate adds two long options that only an admin's `sendmail_path` uses: `--account NAME`
//! (space separated, because `=` breaks inside FPM's `PHP_ADMIN_VALUE`) and `--config PATH`.
//! Neither `-C` nor `-X` is ever opened: they are the classic injection vector through
//! `mail()`'s fifth parameter (CVE-2016-10033).

/// What the caller asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Read a message from stdin and deliver it (`-bm`, the default).
    Deliver,
    /// Speak SMTP on stdin/stdout (`-bs`).
    Smtp,
    /// `-bp`, `mailq`: list the spools in Postfix's `mailq` layout.
    ListQueue,
    /// `-q`: try every queued message now (Postfix's `postqueue -f`).
    Flush,
    /// `-bi`, `-I`, `newaliases`: aliases are the relay's business; one line says so.
    Aliases,
    /// An operation with nothing to do (`-bv`, `-ba`): exit 0, print nothing.
    NoOp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub mode: Mode,
    /// `-t`: add the header recipients to the operands.
    pub extract_recipients: bool,
    /// `-i` / `-oi`: a line with a single dot does not end the message.
    pub ignore_dots: bool,
    /// `-f` / `-r`, the last one given, unparsed.
    pub sender: Option<String>,
    /// `-F`: full name for a From: header that mailgate adds.
    pub full_name: Option<String>,
    /// `--account NAME` from the admin's `sendmail_path`.
    pub account: Option<String>,
    /// `--config PATH`; honoured only when not running setgid.
    pub config: Option<String>,
    /// Recipient operands, each an address list.
    pub recipients: Vec<String>,
}

/// A command line that sendmail would refuse (exit 64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

/// Options that take a value, per Postfix's getopt string.
const WITH_VALUE: &[u8] = b"ABCFLNORVXbefhopqr";
/// Options without a value, per Postfix's getopt string.
const FLAGS: &[u8] = b"GIUcimntvx";

/// One pass over argv, as Postfix's getopt loop does. Long on purpose: one arm per option
/// keeps sendmail's grammar readable in one place.
pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Invocation, UsageError> {
    let mut inv = Invocation {
        mode: Mode::Deliver,
        extract_recipients: false,
        ignore_dots: false,
        sender: None,
        full_name: None,
        account: None,
        config: None,
        recipients: Vec::new(),
    };
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_ref();
        i += 1;
        if arg == "--" {
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, attached) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            if !matches!(name, "account" | "config") {
                return Err(UsageError(format!(
                    "unknown option --{name} (mailgate's own options are --account and --config)"
                )));
            }
            let value = match attached {
                Some(v) => v,
                None => {
                    let v = args.get(i).map(|s| s.as_ref().to_string());
                    i += 1;
                    v.ok_or_else(|| UsageError(format!("option --{name} requires a value")))?
                }
            };
            match name {
                // The admin's sendmail_path comes first; mail()'s fifth parameter is appended
                // after it. A second --account can only be a script trying to switch accounts.
                "account" if inv.account.is_some() => {
                    return Err(UsageError(
                        "--account given twice (a script may not choose its account)".into(),
                    ));
                }
                "account" => inv.account = Some(value),
                "config" => inv.config = Some(value),
                _ => return Err(UsageError(format!("unknown option --{name}"))),
            }
            continue;
        }
        if !arg.starts_with('-') || arg == "-" {
            // POSIX: the first operand ends option processing.
            i -= 1;
            break;
        }
        let bytes = arg.as_bytes();
        let mut pos = 1;
        while pos < bytes.len() {
            let opt = bytes[pos];
            pos += 1;
            if FLAGS.contains(&opt) {
                apply_flag(&mut inv, opt);
                continue;
            }
            if !WITH_VALUE.contains(&opt) {
                return Err(UsageError(format!(
                    "unknown option -{}",
                    char_of(arg, pos - 1)
                )));
            }
            let value = if pos < bytes.len() {
                // `-fuser`: the rest of this argument. Options are ASCII, so `pos` is a char
                // boundary.
                arg[pos..].to_string()
            } else if let Some(next) = args.get(i) {
                i += 1;
                next.as_ref().to_string()
            } else if opt == b'q' {
                // `sendmail -q` (flush the queue) is commonly given without a value.
                String::new()
            } else {
                return Err(UsageError(format!(
                    "option -{} requires a value",
                    opt as char
                )));
            };
            apply_value(&mut inv, opt, value)?;
            break;
        }
    }
    inv.recipients.extend(
        args[i.min(args.len())..]
            .iter()
            .map(|s| s.as_ref().to_string()),
    );
    Ok(inv)
}

fn char_of(arg: &str, byte_pos: usize) -> char {
    arg[byte_pos..].chars().next().unwrap_or('?')
}

fn apply_flag(inv: &mut Invocation, opt: u8) {
    match opt {
        b't' => inv.extract_recipients = true,
        b'i' => inv.ignore_dots = true,
        b'I' => inv.mode = Mode::Aliases,
        // -G -U -c -m -n -v -x: accepted and ignored, as Postfix does.
        _ => {}
    }
}

fn apply_value(inv: &mut Invocation, opt: u8, value: String) -> Result<(), UsageError> {
    match opt {
        b'f' | b'r' => inv.sender = Some(value),
        b'F' => inv.full_name = Some(value),
        b'b' => match value.as_str() {
            "m" => inv.mode = Mode::Deliver,
            "s" => inv.mode = Mode::Smtp,
            "p" => inv.mode = Mode::ListQueue,
            "i" => inv.mode = Mode::Aliases,
            "v" | "a" => inv.mode = Mode::NoOp,
            other => {
                return Err(UsageError(format!("unsupported mode -b{other}")));
            }
        },
        b'q' => inv.mode = Mode::Flush,
        b'o' if value == "i" => {
            inv.ignore_dots = true;
        }
        // -C and -X name files; they are never opened (CVE-2016-10033). -A -B -L -N -O -R -V -e
        // -h -p are accepted and ignored.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Invocation {
        parse(args).expect("valid command line")
    }

    #[test]
    fn attached_separate_and_combined() {
        let a = p(&["-fuser@x", "-ti", "a@x"]);
        assert_eq!(a.sender.as_deref(), Some("user@x"));
        assert!(a.extract_recipients && a.ignore_dots);
        assert_eq!(a.recipients, ["a@x"]);
        let b = p(&["-f", "user@x", "-t", "-i"]);
        assert_eq!(b.sender.as_deref(), Some("user@x"));
        let c = p(&["-tif", "s@x", "r@x"]);
        assert_eq!(c.sender.as_deref(), Some("s@x"));
        assert_eq!(c.recipients, ["r@x"]);
    }

    #[test]
    fn last_sender_wins_and_r_is_f() {
        assert_eq!(p(&["-fa@x", "-r", "b@x"]).sender.as_deref(), Some("b@x"));
        assert_eq!(p(&["-f", ""]).sender.as_deref(), Some(""));
    }

    #[test]
    fn posix_stop_and_double_dash() {
        let a = p(&["a@x", "-t"]);
        assert!(!a.extract_recipients);
        assert_eq!(a.recipients, ["a@x", "-t"]);
        let b = p(&["-oem", "-oi", "--", "-a@x", "b@x"]);
        assert!(b.ignore_dots);
        assert_eq!(b.recipients, ["-a@x", "b@x"]);
    }

    #[test]
    fn only_oi_means_ignore_dots() {
        assert!(p(&["-oi", "a@x"]).ignore_dots);
        assert!(!p(&["-oem", "a@x"]).ignore_dots);
        assert!(!p(&["-o", "e", "a@x"]).ignore_dots);
    }

    #[test]
    fn own_long_options_and_errors_name_the_option() {
        let inv = p(&["--config", "/tmp/m.toml", "--account=shop", "a@x"]);
        assert_eq!(inv.config.as_deref(), Some("/tmp/m.toml"));
        assert_eq!(inv.account.as_deref(), Some("shop"));
        assert_eq!(p(&["--config=/x", "a@x"]).config.as_deref(), Some("/x"));
        let UsageError(why) = parse(&["-Z", "a@x"]).unwrap_err();
        assert!(why.contains("-Z"), "{why}");
        let UsageError(why) = parse(&["-ti\u{e9}"]).unwrap_err();
        assert!(why.contains('\u{e9}'), "{why}");
    }

    #[test]
    fn modes() {
        assert_eq!(p(&["-bs"]).mode, Mode::Smtp);
        assert_eq!(p(&["-bm", "a@x"]).mode, Mode::Deliver);
        for (args, mode) in [
            (&["-bp"][..], Mode::ListQueue),
            (&["-q"], Mode::Flush),
            (&["-q1h"], Mode::Flush),
            (&["-bi"], Mode::Aliases),
            (&["-I"], Mode::Aliases),
            (&["-bv", "a@x"], Mode::NoOp),
            (&["-ba"], Mode::NoOp),
        ] {
            assert_eq!(p(args).mode, mode, "{args:?}");
        }
        assert!(parse(&["-bd"]).is_err());
    }

    #[test]
    fn ignored_options_and_cve_paths() {
        let a = p(&[
            "-FCronDaemon",
            "-i",
            "-B8BITMIME",
            "-oem",
            "-X",
            "/tmp/log.php",
            "-C/etc/x",
            "-Ox=y",
            "-N",
            "never",
            "-R",
            "hdrs",
            "-V",
            "id",
            "-L",
            "tag",
            "-h",
            "5",
            "-U",
            "-Ax",
            "-G",
            "-m",
            "-c",
            "-x",
            "-e",
            "m",
            "-p",
            "proto",
            "-n",
            "-v",
            "root",
        ]);
        assert_eq!(a.full_name.as_deref(), Some("CronDaemon"));
        assert!(a.ignore_dots);
        assert_eq!(a.recipients, ["root"]);
    }

    #[test]
    fn account_option_and_errors() {
        let a = p(&["--account", "example.com", "-t", "-i"]);
        assert_eq!(a.account.as_deref(), Some("example.com"));
        assert!(a.extract_recipients);
        assert!(parse(&["-k"]).is_err());
        assert!(parse(&["-f"]).is_err());
        assert!(parse(&["--account"]).is_err());
        assert!(parse(&["--bogus", "x"]).is_err());
        assert!(parse(&["--account", "a", "-t", "--account", "b"]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(args in proptest::collection::vec(".{0,12}", 0..8)) {
            let _ = parse(&args);
        }

        /// Arguments as a hostile caller writes them: option clusters with attached values in
        /// any script, long options, separate values, lone dashes.
        #[test]
        fn never_panics_on_option_clusters(
            args in proptest::collection::vec(
                proptest::prop_oneof![
                    "-[A-Za-z]{1,4}.{0,6}",
                    "--[a-z]{0,8}(=.{0,6})?",
                    "-[fFrRoOBbNpqVXCeLhA]",
                    ".{0,8}",
                    proptest::strategy::Just("--".to_string()),
                    proptest::strategy::Just("-".to_string()),
                ],
                0..8,
            )
        ) {
            let _ = parse(&args);
        }

        #[test]
        fn attached_and_separate_values_agree(
            opt in proptest::sample::select(vec!['f', 'F', 'r']),
            value in "[^-\\s][^\\s]{0,10}",
        ) {
            let attached = parse(&[format!("-{opt}{value}"), "x@y".to_string()]);
            let separate = parse(&[format!("-{opt}"), value.clone(), "x@y".to_string()]);
            proptest::prop_assert_eq!(attached, separate);
        }

        #[test]
        fn the_last_sender_wins(a in "[a-z]{1,5}@[a-z]{1,5}", b in "[a-z]{1,5}@[a-z]{1,5}") {
            let inv = parse(&["-f", &a, "-r", &b, "x@y"]).unwrap();
            proptest::prop_assert_eq!(inv.sender.as_deref(), Some(b.as_str()));
            proptest::prop_assert_eq!(inv.recipients, vec!["x@y".to_string()]);
        }

        #[test]
        fn flag_clusters_equal_separate_flags(flags in proptest::collection::vec(proptest::sample::select(vec!['t', 'i', 'G', 'U', 'n', 'v', 'x', 'm', 'c']), 1..6)) {
            let cluster = format!("-{}", flags.iter().collect::<String>());
            let separate: Vec<String> = flags.iter().map(|f| format!("-{f}")).collect();
            proptest::prop_assert_eq!(parse(&[cluster]), parse(&separate));
        }
    }
}
