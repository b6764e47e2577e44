//! Who may see and act on what: the admin test (root, or the setgid group), a customer's view
//! of their own accounts, the answer to "not yours", and the log line of every admin action.

use crate::config::Config;
use crate::exit::{Exit, Failure};
use crate::identity::{self, Caller};
use crate::log::{Fields, Severity};
use crate::runtime::Runtime;

/// What a customer hears about an account or message that is not theirs (exit 77).
pub(crate) fn not_yours(what: &str) -> Failure {
    Failure::new(
        Exit::NoPerm,
        format!("{what}: you may not see it (it is not yours)"),
    )
}

/// Which accounts the caller may see and act on: an admin every one, a customer the ones
/// they may send as.
pub(crate) struct Viewer<'a> {
    pub admin: bool,
    pub caller: &'a Caller,
    pub config: &'a Config,
}

impl Viewer<'_> {
    pub fn may_see(&self, account: &str) -> bool {
        self.admin
            || account == self.caller.login
            || identity::resolve_account(self.caller, Some(account), None, self.config).is_ok()
    }

    /// A customer may release held mail only where the admin allows it.
    pub fn may_release(&self) -> bool {
        self.admin || self.config.spool.customer_release
    }
}

pub(super) fn checked(account: &str) -> Result<&str, Failure> {
    crate::config::validate_account_name(account).map_err(|why| Failure::new(Exit::Usage, why))?;
    Ok(account)
}

pub(super) fn log_admin(rt: &Runtime, what: &str, target: &str, detail: &str) {
    let mut f = Fields::default();
    f.add("admin", what)
        .add("target", target)
        .add("by", &rt.caller.login)
        .add("uid", rt.caller.uid);
    if !detail.is_empty() {
        f.add("detail", detail);
    }
    rt.logger.log(Severity::Info, f.as_str());
}

/// Changing state needs root or membership in the group the binary runs setgid to.
pub(super) fn require_admin(caller: &Caller, privileged: bool) -> Result<(), Failure> {
    // SAFETY: getegid cannot fail; getgroups writes at most groups.len() entries.
    let egid = unsafe { libc::getegid() };
    if !privileged || caller.uid == 0 {
        return Ok(());
    }
    let mut groups = vec![0 as libc::gid_t; 256];
    let n = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
    if n > 0 && groups[..n as usize].contains(&egid) {
        return Ok(());
    }
    Err(Failure::new(
        Exit::NoPerm,
        "this command needs root or membership in group mailgate",
    ))
}
