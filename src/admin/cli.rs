//! The admin command line's schema: one clap definition that `--help`, dispatch
//! (`admin::SUBCOMMANDS`, checked against it by a test), the man page `mailgate(8)` and the bash completion are all
//! generated from, so that none of them can drift from the others.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mailgate",
    version,
    about = "Counts and limits outgoing mail per account; sendmail-compatible.",
    long_about = "Counts and limits outgoing mail per account; sendmail-compatible.\n\n\
        Without a subcommand (or when installed under a name containing \"sendmail\") mailgate \
        is sendmail(1): it reads a message on stdin and relays it to the configured SMTP relay."
)]
pub struct Cli {
    /// Configuration file (ignored when running setgid).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Show each account's windows (limit, used, remaining, refused, next possible message)
    /// and its held, deferred and queued messages.
    Status {
        /// Only this account.
        account: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Who sends how much: accounts and their scripts, largest first.
    ///
    /// Within each account, its scripts (or the working directory when a message names no
    /// script), with sent, queued, deferred, held and refused counts and recipients. Root sees
    /// every account, a customer their own.
    Top {
        /// How far back: 1h is exact to 5 minutes, longer spans to the hour; at most 25h.
        #[arg(long, default_value = "1h", value_name = "SPAN")]
        since: String,
        /// Only this account.
        #[arg(long, value_name = "ACCOUNT")]
        account: Option<String>,
        /// Show the N accounts with the most messages; the rest are summed in one line.
        #[arg(short = 'n', long = "limit", value_name = "N", default_value_t = 20)]
        limit: usize,
        /// Show every account that sent in the span.
        #[arg(long, conflicts_with = "limit")]
        all: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print Prometheus metrics (node_exporter textfile format).
    ///
    /// Messages and recipients by account and outcome, window use, kept messages and bytes,
    /// queue age, lock waits, relay errors.
    Metrics,
    /// One message's whole way: caller, script, decision, spool stops, the relay's hand-over
    /// and each recipient's outcome with the receiving server's reply.
    ///
    /// ID is mailgate's id, the relay's queue id or the Message-ID. Customers trace their
    /// own messages.
    Trace {
        id: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The scripts that send for each account: standing (new, known, approved, blocked), first
    /// and last seen, sent and bounced in the last 24 hours, and the signs of a dropper each
    /// showed. `approve` and `block` decide about one.
    ///
    /// Customers see their own accounts' scripts (and decide about them when the admin set
    /// `[scripts] customer_approve`).
    #[command(args_conflicts_with_subcommands = true)]
    Scripts {
        #[command(subcommand)]
        action: Option<ScriptsAction>,
        /// Only this account.
        account: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Messages kept over a limit (action hold) or from a locked account.
    ///
    /// Customers list, show and delete their own (and release them when `customer_release`
    /// is set).
    Hold {
        #[command(subcommand)]
        action: HoldAction,
    },
    /// Messages waiting for the relay, and deferred ones waiting for room in their account.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Empty an account's counters ("server" for the server-wide cap).
    Reset { account: String },
    /// Hold everything an account sends until `mailgate unlock`.
    Lock {
        account: String,
        #[arg(long, default_value = "locked by the admin")]
        reason: String,
    },
    /// Let a locked account send again.
    Unlock { account: String },
    /// Validate a configuration file; errors name file and line (exit 78).
    CheckConfig { path: Option<String> },
    /// Print postfwd rules for the bypass lane, never more generous than mailgate's limits.
    ///
    /// Per envelope sender, for each window, the strictest limit any account (or the
    /// defaults) has; per client address the server's limits. install.sh --with-postfix
    /// writes them to /etc/postfix/postfwd.cf; mailgate's own mail takes its own lane
    /// ([relay] socket) and does not meet them.
    PostfwdRules {
        /// What postfwd does with mail over a rule.
        #[arg(long, value_enum, default_value = "defer")]
        action: crate::admin::lanes::Verdict,
        /// Server-wide messages per hour when [server] sets no limits.
        #[arg(long, value_name = "N", default_value_t = 5000)]
        server: u64,
    },
}

/// Who may run a command: its permission, beside its definition. Every command is named (no
/// catch-all), so a new one cannot be added without deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// Root, or a member of the group the binary runs setgid to.
    Admin,
    /// Anyone; a customer sees and handles only their own accounts' data and mail.
    Customer,
}

impl Command {
    pub fn who(&self) -> Who {
        match self {
            Command::Status { .. }
            | Command::Top { .. }
            | Command::Trace { .. }
            | Command::Scripts { .. }
            | Command::Hold { .. } => Who::Customer,
            // check-config reads files a path names: a customer could probe through setgid.
            Command::CheckConfig { .. }
            | Command::Metrics
            | Command::Queue { .. }
            | Command::Reset { .. }
            | Command::Lock { .. }
            | Command::Unlock { .. }
            | Command::PostfwdRules { .. } => Who::Admin,
        }
    }
}

#[derive(Subcommand)]
pub enum ScriptsAction {
    /// Let a script send: its signs no longer hold its mail and the new-script budget no
    /// longer applies (the account's limits and the script's own still do).
    Approve { account: String, script: String },
    /// Hold everything a script sends until it is approved.
    Block { account: String, script: String },
}

#[derive(Subcommand)]
pub enum HoldAction {
    /// List held messages.
    List {
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Envelope and headers of a held message (the body with --body).
    Show {
        id: String,
        #[arg(long)]
        body: bool,
    },
    /// Deliver held messages now, bypassing limits.
    Release {
        ids: Vec<String>,
        #[arg(long, conflicts_with = "ids")]
        account: Option<String>,
        #[arg(long, conflicts_with_all = ["ids", "account"])]
        all: bool,
    },
    /// Delete held messages.
    Delete {
        ids: Vec<String>,
        #[arg(long, conflicts_with = "ids")]
        account: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum QueueAction {
    /// List queued and deferred messages.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Deliver due queued messages and release deferred ones that fit (run it from a timer).
    Run {
        /// Then stay for SPAN (at most 1h) and learn each line the relay logs within half a
        /// second of its writing, so that a bounce reaches the triggers within seconds. The
        /// shipped timer and cron entry run `queue run --follow 55s` every minute.
        #[arg(long, value_name = "SPAN")]
        follow: Option<String>,
    },
    /// Try every queued message now, ignoring the retry backoff (like `postqueue -f`).
    Flush,
    /// Envelope and headers of a queued or deferred message (the body with --body).
    Show {
        id: String,
        #[arg(long)]
        body: bool,
    },
    /// Delete queued or deferred messages.
    Delete { ids: Vec<String> },
}
