//! The password database, read without glibc's NSS.
//!
//! The shipped binary is linked statically, against musl where pkg/build.sh can
//! (docs/DESIGN-CHOICES.md): no dynamic loader and no shared objects at start-up, which is most
//! of what a refused message costs. musl loads no NSS module at all, and a statically linked
//! glibc would `dlopen` the ones `nsswitch.conf` names — built for whatever glibc is installed,
//! loaded into a process of another — so mailgate never calls `getpwuid`. It reads
//! `/etc/passwd` itself (what NSS's `files` source answers, first on every Debian system) and
//! asks the system's own `getent` only for a key that file does not hold: the users that LDAP,
//! sssd or extrausers know. `getent` runs with the caller's own group and an empty
//! environment: it needs no privilege of mailgate's.

use std::io::{self, BufRead, Read};
use std::process::{Command, Stdio};

/// The file NSS's `files` source reads.
const PASSWD_FILE: &str = "/etc/passwd";
/// The system's NSS client (package libc-bin, essential on Debian).
const GETENT: &str = "/usr/bin/getent";
/// Where NSS is told which sources answer for `passwd`.
const NSSWITCH: &str = "/etc/nsswitch.conf";
/// More than any password entry; what `getent` may make mailgate read.
const MAX_ANSWER: u64 = 64 * 1024;

/// One line of the password database: the fields mailgate uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub uid: u32,
    pub gecos: String,
}

/// What a lookup asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    Uid(u32),
    Name(&'a str),
}

impl Key<'_> {
    fn matches(&self, line: &Fields<'_>) -> bool {
        match self {
            Key::Uid(uid) => line.uid == *uid,
            Key::Name(name) => line.name == *name,
        }
    }

    /// Whether a database could hold this key at all (a login has no `:`, no line break, no
    /// NUL, and is not empty): anything else is answered "unknown" without asking anyone.
    fn is_plausible(&self) -> bool {
        match self {
            Key::Uid(_) => true,
            Key::Name(name) => {
                !name.is_empty()
                    && name.len() <= 256
                    && !name.bytes().any(|b| matches!(b, b':' | b'\n' | b'\0'))
            }
        }
    }
}

/// A lookup that could not be answered: the database was there but could not be read, or
/// `getent` could not run. Never the same as "no such user".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unanswered(pub String);

/// The fields of a password-file line (`name:password:uid:gid:gecos:home:shell`) that mailgate
/// uses, borrowed: a scan compares every line's and copies only the one that answers (a file
/// of hundreds of users costs no allocation per line).
struct Fields<'a> {
    name: &'a str,
    uid: u32,
    gecos: &'a [u8],
}

impl<'a> Fields<'a> {
    /// `None` for a comment, an NIS `+`/`-` line or anything malformed.
    fn of(line: &'a [u8]) -> Option<Fields<'a>> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        if line.is_empty() || matches!(line[0], b'#' | b'+' | b'-') {
            return None;
        }
        let mut fields = line.split(|&b| b == b':');
        let name = std::str::from_utf8(fields.next()?).ok()?;
        let _password = fields.next()?;
        let uid = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
        let _gid = fields.next()?;
        let gecos = fields.next().unwrap_or_default();
        if name.is_empty() {
            return None;
        }
        Some(Fields { name, uid, gecos })
    }

    fn entry(&self) -> Entry {
        Entry {
            name: self.name.to_string(),
            uid: self.uid,
            gecos: String::from_utf8_lossy(self.gecos).into_owned(),
        }
    }
}

/// The first entry in `file` that `key` matches, reading no further than that line.
pub fn find_in(file: impl BufRead, key: Key) -> io::Result<Option<Entry>> {
    Ok(find_all_in(file, &[key])?.pop().flatten())
}

/// For each key the first entry in `file` that it matches, reading no further than the line
/// that answers the last of them: one pass for several names (the relay's trusted owners).
pub fn find_all_in(file: impl BufRead, keys: &[Key]) -> io::Result<Vec<Option<Entry>>> {
    let mut file = file;
    let mut found: Vec<Option<Entry>> = vec![None; keys.len()];
    let mut missing = keys.len();
    let mut line = Vec::with_capacity(128);
    while missing > 0 {
        line.clear();
        if file.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let Some(fields) = Fields::of(&line) else {
            continue;
        };
        for (key, slot) in keys.iter().zip(found.iter_mut()) {
            if slot.is_none() && key.matches(&fields) {
                *slot = Some(fields.entry());
                missing -= 1;
            }
        }
    }
    Ok(found)
}

/// The entry `key` names: `/etc/passwd` first, then the system's NSS through `getent`.
/// `Ok(None)` when no database knows the key.
pub fn lookup(key: Key) -> Result<Option<Entry>, Unanswered> {
    lookup_all(&[key]).pop().unwrap_or(Ok(None))
}

/// `lookup` for several keys, each answered on its own, with one read of `/etc/passwd` (and
/// of `nsswitch.conf` when some key is not in it).
pub fn lookup_all(keys: &[Key]) -> Vec<Result<Option<Entry>, Unanswered>> {
    let in_file = match std::fs::File::open(PASSWD_FILE) {
        Ok(file) => find_all_in(io::BufReader::with_capacity(16 * 1024, file), keys)
            .map_err(|e| Unanswered(format!("cannot read {PASSWD_FILE}: {e}"))),
        // A system without the file still has NSS: ask it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(vec![None; keys.len()]),
        Err(e) => Err(Unanswered(format!("cannot open {PASSWD_FILE}: {e}"))),
    };
    let found = match in_file {
        Ok(found) => found,
        Err(why) => return keys.iter().map(|_| Err(why.clone())).collect(),
    };
    let asks_nss = found
        .iter()
        .zip(keys)
        .any(|(entry, key)| entry.is_none() && key.is_plausible())
        && other_sources(&std::fs::read_to_string(NSSWITCH).unwrap_or_default());
    found
        .into_iter()
        .zip(keys)
        .map(|(entry, key)| match entry {
            Some(entry) => Ok(Some(entry)),
            None if asks_nss && key.is_plausible() => ask_getent(*key),
            None => Ok(None),
        })
        .collect()
}

/// Whether `nsswitch.conf` names a `passwd` source beyond the file just read: `files` is that
/// file, and `systemd` answers only for root, nobody and services' DynamicUser accounts,
/// which send no customer's mail. Without the file NSS uses `files` only. A miss is then
/// final without a `getent` process — `check-config` over 10,000 accounts asks about as
/// many unknown names.
fn other_sources(nsswitch: &str) -> bool {
    nsswitch
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .find_map(|l| l.trim_start().strip_prefix("passwd:"))
        .is_some_and(|sources| {
            sources
                .split_whitespace()
                .filter(|s| !s.starts_with('['))
                .any(|s| !matches!(s, "files" | "systemd"))
        })
}

/// `getent passwd KEY`: exit 0 with the entry, 2 when no database knows the key.
fn ask_getent(key: Key) -> Result<Option<Entry>, Unanswered> {
    let arg = match key {
        Key::Uid(uid) => uid.to_string(),
        Key::Name(name) => name.to_string(),
    };
    let mut command = Command::new(GETENT);
    command
        .args(["passwd", "--", &arg])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // The child keeps only the caller's own group: mailgate's setgid group is no business of
    // an NSS module's.
    // SAFETY: getgid and setresgid are async-signal-safe; nothing else runs in the child.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            let gid = libc::getgid();
            if libc::setresgid(gid, gid, gid) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let unanswered = |what: &str| Unanswered(format!("cannot look up {arg} with {GETENT}: {what}"));
    let mut child = command.spawn().map_err(|e| unanswered(&e.to_string()))?;
    let mut answer = Vec::new();
    let read = child
        .stdout
        .take()
        .map(|out| out.take(MAX_ANSWER).read_to_end(&mut answer));
    let status = child.wait().map_err(|e| unanswered(&e.to_string()))?;
    if let Some(Err(e)) = read {
        return Err(unanswered(&e.to_string()));
    }
    match status.code() {
        Some(0) => Ok(find_in(&answer[..], key).unwrap_or(None)),
        Some(2) => Ok(None),
        Some(code) => Err(unanswered(&format!("exit {code}"))),
        None => Err(unanswered("killed by a signal")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FILE: &str = "root:x:0:0:root:/root:/bin/bash\n\
                        # a comment\n\
                        +nisuser::::::\n\
                        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                        bad:x:notanumber:1::/:/bin/sh\n\
                        alice:x:1000:1000:Alice Example,,,:/home/alice:/bin/bash\n\
                        twin:x:1000:1000:second line with uid 1000:/:/bin/sh\n\
                        nogecos:x:1001:1001";

    fn find(key: Key) -> Option<Entry> {
        find_in(FILE.as_bytes(), key).unwrap()
    }

    /// A file whose lines after `FILE` cannot be read: a lookup that reads past what it
    /// needs fails.
    fn file_then_error() -> impl BufRead {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("read past the answer"))
            }
        }
        io::BufReader::with_capacity(16, FILE.as_bytes().chain(Broken))
    }

    #[test]
    fn several_names_are_answered_in_one_pass_that_stops_at_the_last_answer() {
        let found = find_all_in(
            file_then_error(),
            &[Key::Name("daemon"), Key::Uid(1000), Key::Name("root")],
        )
        .unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|e| e.as_ref().unwrap().name.as_str())
            .collect();
        assert_eq!(
            names,
            ["daemon", "alice", "root"],
            "each key its own first line"
        );
        assert!(
            find_all_in(file_then_error(), &[Key::Name("root"), Key::Name("nobody")]).is_err(),
            "an unknown name reads on to the end"
        );
        assert_eq!(
            find_all_in(FILE.as_bytes(), &[Key::Name("nobody"), Key::Uid(1001)]).unwrap(),
            vec![
                None,
                Some(Entry {
                    name: "nogecos".into(),
                    uid: 1001,
                    gecos: String::new()
                })
            ]
        );
    }

    #[test]
    fn finds_by_uid_and_by_name_the_first_matching_line() {
        let alice = find(Key::Uid(1000)).unwrap();
        assert_eq!(
            alice.name, "alice",
            "the first line with the uid wins, as in NSS"
        );
        assert_eq!(alice.gecos, "Alice Example,,,");
        assert_eq!(find(Key::Name("daemon")).unwrap().uid, 1);
        assert_eq!(find(Key::Uid(0)).unwrap().name, "root");
        assert_eq!(
            find(Key::Name("twin")).unwrap().gecos,
            "second line with uid 1000"
        );
    }

    #[test]
    fn comments_nis_lines_and_malformed_lines_are_no_entries() {
        assert_eq!(find(Key::Name("# a comment")), None);
        assert_eq!(find(Key::Name("+nisuser")), None);
        assert_eq!(find(Key::Name("bad")), None, "a uid that is not a number");
        assert_eq!(find(Key::Uid(4242)), None);
    }

    #[test]
    fn a_line_without_gecos_or_final_newline_still_counts() {
        let e = find(Key::Uid(1001)).unwrap();
        assert_eq!((e.name.as_str(), e.gecos.as_str()), ("nogecos", ""));
    }

    #[test]
    fn implausible_names_are_unknown_without_asking_anyone() {
        for name in ["", "a:b", "a\nb", "a\0b"] {
            assert!(!Key::Name(name).is_plausible(), "{name:?}");
        }
        assert_eq!(lookup(Key::Name("root:x")), Ok(None));
        assert!(Key::Name("alice").is_plausible());
    }

    #[test]
    fn only_sources_beyond_the_file_send_a_miss_to_getent() {
        assert!(!other_sources(
            "passwd:         files systemd\ngroup: files sss\n"
        ));
        assert!(!other_sources("# passwd: sss\npasswd: files\n"));
        assert!(!other_sources(""), "no nsswitch.conf: files only");
        assert!(other_sources("passwd:         files systemd extrausers\n"));
        assert!(other_sources("passwd: files [NOTFOUND=return] sss\n"));
        assert!(other_sources("passwd: ldap\n"));
        assert!(
            other_sources("passwd: compat\n"),
            "compat's + lines pull in NIS"
        );
    }

    #[test]
    fn the_system_file_answers_root() {
        // Every Linux system has root in /etc/passwd; this runs the real I/O half.
        let root = lookup(Key::Uid(0)).unwrap().unwrap();
        assert_eq!(root.name, "root");
        assert_eq!(lookup(Key::Name("root")).unwrap().unwrap().uid, 0);
    }

    proptest! {
        #[test]
        fn parse_line_never_panics_and_round_trips(
            name in "[a-z_][a-z0-9_.-]{0,30}",
            uid in any::<u32>(),
            gecos in "[^:\n]{0,40}",
            junk in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let _ = Fields::of(&junk);
            let line = format!("{name}:x:{uid}:{uid}:{gecos}:/home/{name}:/bin/sh\n");
            let e = Fields::of(line.as_bytes()).unwrap().entry();
            prop_assert_eq!(e, Entry { name, uid, gecos });
        }
    }
}
