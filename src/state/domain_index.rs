//! Which account of `accounts.d/` owns a sender domain, without reading every account file
//! per message: the domains named literally in the drop-in files' `allowed_senders`, compiled
//! into `domains.index` in the state directory (like a `postmap` table, sorted lines searched
//! by bisection, so one lookup reads a few hundred bytes whatever the number of accounts).
//!
//! The index is never trusted when it may be stale: its first line carries the identity of
//! `accounts.d/` (device, inode, modification time), which every file renamed into, created
//! in or removed from the directory changes. A mismatch, a damaged file or a stamp taken
//! within 100 ms of a change (a later change in the same clock tick would not show, as in
//! git's "racy" index) means this message builds the table itself, logs it, and publishes it
//! for the next ones (write, rename; concurrent builders produce the same). A build lists
//! `accounts.d/` and parses only the files whose identity (inode, size, times) differs from
//! the previous build's `domains.files`: after a panel replaced one file, the next message
//! pays one directory listing and one parse, not a parse of every account.
//! Accounts in the main file are not indexed: `Config::domain_owner` sees them directly.

use crate::config::{self, Config};
use crate::log::{Fields, Logger, Severity};
use crate::state::{StateDir, flags};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

const FILE: &str = "domains.index";
const MAGIC: &str = "mailgate-domains 1";
/// A line is `domain account\n`: a domain of at most 255 bytes, an account of at most 128.
const MAX_LINE: usize = 255 + 1 + 128 + 1;
/// How long after a change of `accounts.d/` its stamp is not trusted (`stamp_of`).
const RACY: std::time::Duration = std::time::Duration::from_millis(100);
/// Below this span the rest is read at once and scanned.
const SCAN: u64 = 4096;

/// Reads at an offset: a file, or a byte slice in tests.
pub trait ReadAt {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = (offset as usize).min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// The index is damaged: a line longer than any line the builder writes, or no line end.
#[derive(Debug, PartialEq, Eq)]
pub struct Damaged;

fn read_span(src: &(impl ReadAt + ?Sized), offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    let mut got = 0;
    while got < len {
        let n = src.read_at(&mut buf[got..], offset + got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    Ok(buf)
}

/// The owner of `domain` in the sorted lines between `start` and `end` (both line starts),
/// by bisection: O(log n) reads of at most `MAX_LINE` bytes (look(1)'s algorithm).
pub fn look(
    src: &(impl ReadAt + ?Sized),
    mut lo: u64,
    mut hi: u64,
    domain: &str,
) -> io::Result<Result<Option<String>, Damaged>> {
    let key = domain.as_bytes();
    while hi - lo > SCAN {
        let mid = lo + (hi - lo) / 2;
        // The first line that starts at or after mid.
        let probe = read_span(src, mid - 1, 2 * MAX_LINE)?;
        let Some(nl) = probe.iter().position(|&b| b == b'\n') else {
            return Ok(Err(Damaged));
        };
        let line_start = mid + nl as u64;
        let rest = &probe[nl + 1..];
        let Some(len) = rest.iter().position(|&b| b == b'\n') else {
            return Ok(Err(Damaged));
        };
        let Some((d, owner)) = split_line(&rest[..len]) else {
            return Ok(Err(Damaged));
        };
        match d.cmp(key) {
            std::cmp::Ordering::Less => lo = line_start + len as u64 + 1,
            std::cmp::Ordering::Equal => return Ok(Ok(Some(owner))),
            std::cmp::Ordering::Greater => hi = line_start,
        }
    }
    let rest = read_span(src, lo, (hi - lo) as usize)?;
    if rest.len() as u64 != hi - lo || rest.last().is_some_and(|&b| b != b'\n') {
        return Ok(Err(Damaged));
    }
    for line in rest.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Some((d, owner)) = split_line(line) else {
            return Ok(Err(Damaged));
        };
        if d == key {
            return Ok(Ok(Some(owner)));
        }
    }
    Ok(Ok(None))
}

fn split_line(line: &[u8]) -> Option<(&[u8], String)> {
    let sp = line.iter().position(|&b| b == b' ')?;
    let owner = std::str::from_utf8(&line[sp + 1..]).ok()?;
    Some((&line[..sp], owner.to_string()))
}

/// The index's text: its header, then `domain account` lines sorted by domain.
pub fn render(stamp: &str, owners: &BTreeMap<String, String>) -> Vec<u8> {
    let mut body = Vec::with_capacity(owners.len() * 32);
    for (domain, account) in owners {
        body.extend_from_slice(format!("{domain} {account}\n").as_bytes());
    }
    let mut out = format!("{MAGIC} {stamp} {}\n", body.len()).into_bytes();
    out.extend_from_slice(&body);
    out
}

/// The domains an account names literally in `allowed_senders` (lower case): what it owns.
pub fn owned_domains(account: &config::Account) -> impl Iterator<Item = String> + '_ {
    account
        .allowed_senders
        .iter()
        .filter_map(|p| p.rsplit_once('@').map(|(_, d)| d))
        .filter(|d| {
            !d.is_empty()
                && d.len() <= 255
                && !d.contains('*')
                && d.bytes().all(|b| b.is_ascii_graphic() && b != b',')
        })
        .map(crate::message::address::canonical_domain)
}

/// The identity of `accounts.d/`, or `None` when there is no such directory. A stamp taken
/// within `RACY` of the directory's last change is not trusted later (`racy`): a second
/// change within the same clock tick (file times advance by the kernel's tick, up to 10 ms)
/// would leave the same stamp. A modification time ahead of the clock (the clock was set
/// back) is not racy: a later change then gets an earlier, different time.
fn stamp_of(dir: &std::path::Path) -> io::Result<Option<(String, bool)>> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let changed_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    let age = (now.as_nanos() as i128) - changed_ns;
    let racy = (0..RACY.as_nanos() as i128).contains(&age);
    let stamp = format!(
        "{}:{}:{}.{:09}",
        meta.dev(),
        meta.ino(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    Ok(Some((stamp, racy)))
}

/// What the builder knew of one drop-in file: its identity and the domains it owns
/// (`domains.files`, so that a rebuild parses only the files that changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub identity: String,
    /// `None`: the file did not load (it owns nothing until it is fixed).
    pub domains: Option<Vec<String>>,
}

/// `name identity domain,domain…` lines (`!` for a file that did not load, `-` for none).
pub fn render_files(files: &BTreeMap<String, FileEntry>) -> String {
    let mut out = String::with_capacity(files.len() * 64);
    for (name, f) in files {
        let domains = match &f.domains {
            None => "!".to_string(),
            Some(d) if d.is_empty() => "-".to_string(),
            Some(d) => d.join(","),
        };
        out.push_str(&format!("{name} {} {domains}\n", f.identity));
    }
    out
}

/// The table `render_files` wrote; lines that are not its own are dropped (they are parsed
/// again).
pub fn parse_files(text: &str) -> BTreeMap<String, FileEntry> {
    let mut files = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.split(' ');
        let (Some(name), Some(identity), Some(domains), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let domains = match domains {
            "!" => None,
            "-" => Some(Vec::new()),
            d => Some(d.split(',').map(str::to_string).collect()),
        };
        files.insert(
            name.to_string(),
            FileEntry {
                identity: identity.to_string(),
                domains,
            },
        );
    }
    files
}

/// Domain → the first account (by name) that names it, as `Config::domain_owner` decides.
pub fn owners_of(files: &BTreeMap<String, FileEntry>) -> BTreeMap<String, String> {
    let mut owners = BTreeMap::new();
    for (name, f) in files {
        for domain in f.domains.iter().flatten() {
            owners.entry(domain.clone()).or_insert_with(|| name.clone());
        }
    }
    owners
}

const FILES: &str = "domains.files";

/// Looks up domain owners among the drop-in accounts.
pub struct DomainIndex<'a> {
    pub config: &'a Config,
    pub state: &'a StateDir,
    pub logger: &'a Logger,
    /// The table this process built, when the published one could not be used: the other
    /// addresses of the same message use it too.
    pub built: std::cell::OnceCell<BTreeMap<String, String>>,
}

impl DomainIndex<'_> {
    /// The drop-in account that owns `domain`, if any.
    pub fn owner(&self, domain: &str) -> Option<String> {
        let domain = crate::message::address::canonical_domain(domain);
        if let Some(owners) = self.built.get() {
            return owners.get(&domain).cloned();
        }
        let dir = self.config.accounts_dir.as_deref()?;
        let (stamp, racy) = match stamp_of(dir) {
            Ok(Some(s)) => s,
            Ok(None) => {
                // No drop-in directory: no owner for the other addresses either.
                let _ = self.built.set(BTreeMap::new());
                return None;
            }
            Err(e) => {
                self.note(&format!("cannot stat {}: {e}", dir.display()));
                return None;
            }
        };
        let why = match self.lookup(&stamp, &domain) {
            Ok(found) => return found,
            Err(why) => why,
        };
        let (files, parsed) = self.build(dir);
        let owners = owners_of(&files);
        // A racy stamp is published as such: the next lookup builds again (parsing only what
        // changed), until the directory has been still for `RACY`.
        let published = if racy { "racy" } else { stamp.as_str() };
        let top = self.state.top();
        let saved = top
            .replace(FILES, render_files(&files).as_bytes())
            .and_then(|()| top.replace(FILE, &render(published, &owners)));
        self.note(&format!(
            "{FILE} {why}: rebuilt from {} ({} files, {parsed} read again, {} domains){}",
            dir.display(),
            files.len(),
            owners.len(),
            match saved {
                Ok(()) => String::new(),
                Err(e) => format!("; not saved: {e}"),
            }
        ));
        let found = owners.get(&domain).cloned();
        let _ = self.built.set(owners);
        found
    }

    /// The owner from the published index, or why the index cannot be used.
    fn lookup(&self, stamp: &str, domain: &str) -> Result<Option<String>, &'static str> {
        let file = match self.state.top().open_file(FILE, flags::READ) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err("missing"),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err("not a regular file"),
            Err(_) => return Err("unreadable"),
        };
        let meta = file.metadata().map_err(|_| "unreadable")?;
        let head = read_span(&file, 0, 256).map_err(|_| "unreadable")?;
        let Some(nl) = head.iter().position(|&b| b == b'\n') else {
            return Err("damaged");
        };
        let header = std::str::from_utf8(&head[..nl]).map_err(|_| "damaged")?;
        let mut parts = header.rsplitn(3, ' ');
        let (Some(len), Some(their_stamp), Some(magic)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err("damaged");
        };
        if magic != MAGIC {
            return Err("damaged");
        }
        if their_stamp != stamp {
            return Err("stale");
        }
        let start = nl as u64 + 1;
        let end = meta.len();
        if len.parse::<u64>().ok() != Some(end - start) {
            return Err("damaged");
        }
        match look(&file, start, end, domain) {
            Ok(Ok(found)) => Ok(found),
            _ => Err("damaged"),
        }
    }

    /// Every drop-in file's entry: from the previous build when the file is the same file
    /// (inode, size, modification time), else read and parsed now. Returns the table and how
    /// many files were parsed. A file that does not load is logged and owns nothing.
    fn build(&self, dir: &std::path::Path) -> (BTreeMap<String, FileEntry>, usize) {
        let previous = self.read_previous();
        let mut errors = Vec::new();
        let mut files = BTreeMap::new();
        let mut parsed = 0;
        for name in config::account_file_names(Some(dir), &mut errors) {
            let path = dir.join(format!("{name}.toml"));
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue; // removed meanwhile
            };
            let identity = format!(
                "{}:{}:{}.{:09}:{}",
                meta.ino(),
                meta.size(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ctime_nsec()
            );
            if let Some(known) = previous.get(&name).filter(|f| f.identity == identity) {
                files.insert(name, known.clone());
                continue;
            }
            parsed += 1;
            let domains = std::fs::read_to_string(&path)
                .map_err(|e| config::ConfigError(format!("cannot read {}: {e}", path.display())))
                .and_then(|text| config::parse_account(&text, &path.display().to_string(), &name))
                .map(|account| owned_domains(&account).collect::<Vec<_>>());
            let domains = match domains {
                Ok(d) => Some(d),
                Err(e) => {
                    errors.push(e);
                    None
                }
            };
            files.insert(name, FileEntry { identity, domains });
        }
        for e in errors {
            self.note(&e.0);
        }
        (files, parsed)
    }

    fn read_previous(&self) -> BTreeMap<String, FileEntry> {
        use std::io::Read;
        let Ok(mut file) = self.state.top().open_file(FILES, flags::READ) else {
            return BTreeMap::new();
        };
        let mut text = String::new();
        if file.read_to_string(&mut text).is_err() {
            return BTreeMap::new();
        }
        parse_files(&text)
    }

    fn note(&self, what: &str) {
        let mut fields = Fields::default();
        fields.add("domain-index", what);
        self.logger.log(Severity::Warning, fields.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table(pairs: &[(&str, &str)]) -> (Vec<u8>, u64) {
        let owners: BTreeMap<String, String> = pairs
            .iter()
            .map(|(d, a)| (d.to_string(), a.to_string()))
            .collect();
        let text = render("s", &owners);
        let start = text.iter().position(|&b| b == b'\n').unwrap() as u64 + 1;
        (text, start)
    }

    #[test]
    fn finds_each_domain_and_nothing_else() {
        let (text, start) = table(&[("a.example", "alice"), ("b.example", "bob")]);
        let end = text.len() as u64;
        let find = |d: &str| look(text.as_slice(), start, end, d).unwrap().unwrap();
        assert_eq!(find("a.example"), Some("alice".into()));
        assert_eq!(find("b.example"), Some("bob".into()));
        assert_eq!(find("c.example"), None);
        assert_eq!(find("a.exampl"), None);
    }

    #[test]
    fn a_line_without_end_is_damage() {
        let text = b"a.example alice\nb.example bob".to_vec();
        let got = look(text.as_slice(), 0, text.len() as u64, "x").unwrap();
        assert_eq!(got, Err(Damaged));
        let long = vec![b'x'; 3 * SCAN as usize];
        let got = look(long.as_slice(), 0, long.len() as u64, "x").unwrap();
        assert_eq!(got, Err(Damaged));
    }

    #[test]
    fn the_file_table_round_trips() {
        let mut files = BTreeMap::new();
        files.insert(
            "alice".to_string(),
            FileEntry {
                identity: "1:2:3.000000004:5".into(),
                domains: Some(vec!["a.example".into(), "b.example".into()]),
            },
        );
        files.insert(
            "broken".to_string(),
            FileEntry {
                identity: "9:9:9.000000009:9".into(),
                domains: None,
            },
        );
        files.insert(
            "none".to_string(),
            FileEntry {
                identity: "7:7:7.000000007:7".into(),
                domains: Some(Vec::new()),
            },
        );
        assert_eq!(parse_files(&render_files(&files)), files);
        assert!(parse_files("junk\nx y\n").is_empty());
        let owners = owners_of(&files);
        assert_eq!(owners.get("b.example").map(String::as_str), Some("alice"));
        assert_eq!(owners.len(), 2);
    }

    #[test]
    fn owned_domains_are_the_literal_ones_in_lower_case() {
        let account = config::Account {
            allowed_senders: vec![
                "*@Alice.Example".into(),
                "news-*@list.alice.example".into(),
                "*@*.alice.example".into(),
                "nodomain".into(),
            ],
            ..Default::default()
        };
        let got: Vec<String> = owned_domains(&account).collect();
        assert_eq!(got, ["alice.example", "list.alice.example"]);
    }

    proptest! {
        /// Bisection finds exactly what a map lookup finds, at every table size (the scan
        /// threshold is crossed from about a hundred lines on).
        #[test]
        fn bisection_agrees_with_the_map(
            domains in proptest::collection::btree_set("[a-z0-9.-]{1,40}", 0..600),
            probes in proptest::collection::vec("[a-z0-9.-]{1,40}", 1..20),
        ) {
            let owners: BTreeMap<String, String> = domains
                .iter()
                .enumerate()
                .map(|(i, d)| (d.clone(), format!("acct{i}")))
                .collect();
            let text = render("s", &owners);
            let start = text.iter().position(|&b| b == b'\n').unwrap() as u64 + 1;
            let end = text.len() as u64;
            for d in owners.keys().chain(probes.iter()) {
                let got = look(text.as_slice(), start, end, d).unwrap().unwrap();
                prop_assert_eq!(got, owners.get(d).cloned());
            }
        }
    }
}
