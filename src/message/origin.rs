//! The host's names, derived the way Postfix derives them so that mailgate and the relay agree
//! on what "local" is: `myhostname` is the kernel's host name, with `.localdomain` appended
//! when it has no dot (Postfix's `check_myhostname`); `myorigin` is `/etc/mailname` where it
//! exists (Debian's `myorigin = /etc/mailname`), else `myhostname`. install.sh gives the
//! relay instance exactly these names in `mydestination`.

/// The domain Postfix appends to a host name without a dot (`DEF_MYDOMAIN`).
const DEFAULT_DOMAIN: &str = "localdomain";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNames {
    /// Fully qualified host name: EHLO, Received, Message-ID.
    pub hostname: String,
    /// Domain of bare local parts (`root` → `root@origin`), the default sender and alerts.
    pub origin: String,
}

impl LocalNames {
    /// From the configured names, else `/etc/mailname` and the kernel's host name.
    pub fn of_this_host(hostname: Option<&str>, origin: Option<&str>) -> LocalNames {
        let mailname = std::fs::read_to_string("/etc/mailname").ok();
        LocalNames::derive(hostname, origin, mailname.as_deref(), &kernel_host_name())
    }

    /// Pure: configured names win; then the mail name; then the kernel's name made FQDN.
    pub fn derive(
        hostname: Option<&str>,
        origin: Option<&str>,
        mailname_file: Option<&str>,
        kernel_hostname: &str,
    ) -> LocalNames {
        let hostname = match hostname.map(str::trim).filter(|h| !h.is_empty()) {
            Some(h) => h.to_string(),
            None => fully_qualified(kernel_hostname),
        };
        let mailname = mailname_file
            .and_then(|text| text.lines().next())
            .map(str::trim)
            .filter(|n| !n.is_empty());
        let origin = origin
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .or(mailname)
            .map_or_else(|| hostname.clone(), str::to_string);
        LocalNames { hostname, origin }
    }

    /// `user` → `user@origin`; anything with an `@` stays.
    pub fn qualify(&self, addr: &str) -> String {
        if addr.contains('@') {
            addr.to_string()
        } else {
            format!("{addr}@{}", self.origin)
        }
    }
}

/// `vm` → `vm.localdomain`; `mail.example.com` stays; an empty name becomes `localhost.localdomain`.
fn fully_qualified(name: &str) -> String {
    let name = name.trim().trim_end_matches('.');
    let name = if name.is_empty() { "localhost" } else { name };
    if name.contains('.') {
        name.to_string()
    } else {
        format!("{name}.{DEFAULT_DOMAIN}")
    }
}

fn kernel_host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length; gethostname NUL-terminates within it or fails.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_name_without_a_dot_gets_localdomain_like_postfix() {
        let n = LocalNames::derive(None, None, None, "vm");
        assert_eq!(n.hostname, "vm.localdomain");
        assert_eq!(n.origin, "vm.localdomain");
        assert_eq!(n.qualify("root"), "root@vm.localdomain");
        assert_eq!(n.qualify("a@x"), "a@x");
    }

    #[test]
    fn host_name_with_a_dot_stays() {
        let n = LocalNames::derive(None, None, None, "web1.example.net");
        assert_eq!(n.hostname, "web1.example.net");
        assert_eq!(n.origin, "web1.example.net");
        assert_eq!(
            LocalNames::derive(None, None, None, "").hostname,
            "localhost.localdomain"
        );
    }

    #[test]
    fn mailname_sets_the_origin_not_the_host_name() {
        let n = LocalNames::derive(None, None, Some("example.net\n"), "vm");
        assert_eq!(n.hostname, "vm.localdomain");
        assert_eq!(n.origin, "example.net");
        // An empty /etc/mailname is ignored, as Postfix ignores it.
        let n = LocalNames::derive(None, None, Some("\n"), "vm");
        assert_eq!(n.origin, "vm.localdomain");
    }

    #[test]
    fn configured_names_win() {
        let n = LocalNames::derive(
            Some("mx.example.org"),
            Some("example.org"),
            Some("other.example"),
            "vm",
        );
        assert_eq!(n.hostname, "mx.example.org");
        assert_eq!(n.origin, "example.org");
        let n = LocalNames::derive(Some("mx.example.org"), None, None, "vm");
        assert_eq!(n.origin, "mx.example.org");
    }
}
