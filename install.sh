#!/usr/bin/env bash
# install.sh: install mailgate, and optionally the seed's Postfix + postfwd chain and the PHP
# wiring. Idempotent: a second run changes nothing. Every file it changes is backed up first and
# restored by --uninstall.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: sudo ./install.sh [OPTIONS]

Installs /usr/sbin/mailgate (root:mailgate 2755, setgid, never setuid), group mailgate,
/etc/mailgate/mailgate.toml (only if absent), /var/lib/mailgate (root:mailgate 0770, its
subdirectories root:mailgate 2770), and the queue runner for `mailgate queue run` every minute:
a systemd timer where systemd runs, else a cron job plus a running cron daemon (the cron
package is installed and started when missing). It checks the runner is in place and exits
non-zero when it cannot be.

Options:
  --with-postfix         install postfix + postfwd and configure the seed's chain with postmulti:
                         primary instance as null client relaying to 127.0.0.1:825, a second
                         instance "postfix-postfwd" there that checks postfwd on the Unix socket
                         /var/lib/postfwd/policy (only Postfix may connect)
  --php                  point sendmail_path of every installed PHP SAPI at mailgate (conf.d
                         snippet) through /usr/lib/mailgate/sendmail
  --as-sendmail          make mailgate /usr/sbin/sendmail and /usr/lib/sendmail (dpkg-divert
                         --rename of Postfix's binary), so Symfony Mailer, Laravel, Drupal,
                         PHPMailer isSendmail() and cron go through it too
  --binary PATH          install this binary instead of building one with cargo
  --prefix DIR           install under DIR (tests, packaging); also taken from DESTDIR
  --postfwd-hourly N     fixed per-sender limits for postfwd (mail that bypasses mailgate) per
  --postfwd-daily N      hour and per day, instead of the rules generated from mailgate.toml
                         (`mailgate postfwd-rules`: for each window the strictest limit any
                         account has); check-config warns where they are more generous
  --postfwd-server N     postfwd's server-wide limit per hour when [server] sets none
                         (default 5000)
  --postfwd-action A     reject | defer | hold: what postfwd does over its limits (default defer)
  --relayhost HOST:PORT  where the postfix-postfwd instance sends outbound mail (default: direct
                         delivery by MX); tests point it at a local smtp-sink
  --postfix-log DIR      Postfix logs to DIR/postfix.log and DIR/postfix-postfwd.log (maillog_file)
                         instead of syslog; the default on hosts without a syslog daemon
                         (no /dev/log) is /var/log
  --dry-run              print every change, change nothing
  --uninstall            remove what install.sh installed, restore the backed-up files and stop
                         the daemons it started (config and state under /etc/mailgate and
                         /var/lib/mailgate stay)
  -h, --help             this text
EOF
}

with_postfix=0 php=0 as_sendmail=0 dry_run=0 uninstall=0 binary="" prefix="${DESTDIR:-}"
pf_hourly=200 pf_daily=1000 pf_fixed=0 pf_server=5000 pf_action=defer relayhost="" postfix_log=""
while [ $# -gt 0 ]; do
    case "$1" in
        --with-postfix) with_postfix=1 ;;
        --php) php=1 ;;
        --as-sendmail) as_sendmail=1 ;;
        --binary) binary=${2:?--binary needs a path}; shift ;;
        --prefix) prefix=${2:?--prefix needs a directory}; shift ;;
        --postfwd-hourly) pf_hourly=${2:?}; pf_fixed=1; shift ;;
        --postfwd-daily) pf_daily=${2:?}; pf_fixed=1; shift ;;
        --postfwd-server) pf_server=${2:?}; shift ;;
        --postfwd-action) pf_action=${2:?}; shift ;;
        --relayhost) relayhost=${2:?}; shift ;;
        --postfix-log) postfix_log=${2:?}; shift ;;
        --dry-run) dry_run=1 ;;
        --uninstall) uninstall=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
    esac
    shift
done
for n in "$pf_hourly" "$pf_daily" "$pf_server"; do
    [[ $n =~ ^[0-9]+$ ]] || { echo "install.sh: postfwd limits must be numbers" >&2; exit 64; }
done
case "$pf_action" in
    reject) pf_verb="REJECT" ;;
    defer) pf_verb="450 4.7.1" ;;
    hold) pf_verb="HOLD" ;;
    *) echo "install.sh: --postfwd-action must be reject, defer or hold" >&2; exit 64 ;;
esac
if [ "$(id -u)" != 0 ] && [ $dry_run = 0 ]; then
    echo "install.sh: must run as root (it creates group mailgate, a setgid binary and system config); nothing was changed" >&2
    exit 77
fi

here=$(cd "$(dirname "$0")" && pwd)
P=${prefix%/}
SBIN=$P/usr/sbin/mailgate
LINKDIR=$P/usr/lib/mailgate
ETC=$P/etc/mailgate
STATE=$P/var/lib/mailgate
BACKUP=$STATE/install-backup
changes=0

say() { printf 'install.sh: %s\n' "$*"; }
# Run a command that changes the system, or print it in a dry run.
act() {
    changes=$((changes + 1))
    if [ $dry_run = 1 ]; then printf 'would run: %s\n' "$*"; return 0; fi
    printf '+ %s\n' "$*"
    "$@"
}
# Remember a file's state before the first change, for --uninstall.
declare -A backed_up=()
backup() {
    local f=$1 key
    key=$BACKUP/$(printf '%s' "${f#"$P"}" | sed 's|/|%|g')
    [ -n "${backed_up[$key]:-}" ] && return 0
    backed_up[$key]=1
    [ -e "$key" ] || [ -e "$key.absent" ] && return 0
    [ $dry_run = 1 ] && { printf 'would back up: %s\n' "$f"; return 0; }
    mkdir -p "$BACKUP"
    if [ -e "$f" ] || [ -L "$f" ]; then cp -a "$f" "$key"; else : >"$key.absent"; fi
}
# Write CONTENT to FILE with MODE and OWNER unless it already has exactly that.
put_file() { # file mode owner content
    local f=$1 mode=$2 owner=$3 content=$4
    if [ -f "$f" ] && [ "$(cat "$f")" = "$content" ] &&
       [ "$(stat -c '%a %U:%G' "$f")" = "$mode $owner" ]; then return 0; fi
    backup "$f"
    changes=$((changes + 1))
    if [ $dry_run = 1 ]; then printf 'would write: %s (%s %s)\n' "$f" "$mode" "$owner"; return 0; fi
    printf '+ write %s (%s %s)\n' "$f" "$mode" "$owner"
    mkdir -p "$(dirname "$f")"
    printf '%s\n' "$content" >"$f.tmp.$$"
    chown "$owner" "$f.tmp.$$"
    chmod "$mode" "$f.tmp.$$"
    mv -f "$f.tmp.$$" "$f"
}
put_link() { # link target
    [ "$(readlink "$1" 2>/dev/null)" = "$2" ] && return 0
    backup "$1"
    act mkdir -p "$(dirname "$1")"
    act ln -sfn "$2" "$1"
}
# Remove every line that is exactly LINE, keeping the file's inode, mode and owner.
drop_line() { # file line
    local kept
    kept=$(grep -vxF -- "$2" "$1" || true)
    printf '%s\n' "$kept" >"$1"
}
put_dir() { # dir mode owner
    if [ -d "$1" ] && [ "$(stat -c '%a %U:%G' "$1")" = "$2 $3" ]; then return 0; fi
    act mkdir -p "$1"
    act chown "$3" "$1"
    act chmod "$2" "$1"
}
have_systemd() { [ -z "$P" ] && [ -d /run/systemd/system ]; }
# Daemons that were not running before install.sh started them; --uninstall stops them again.
STARTED=$BACKUP/started-daemons
TEXTFILE_DIR=$P/var/lib/prometheus/node-exporter
POLICY_DIR=/var/lib/postfwd
POLICY=$POLICY_DIR/policy
# mailgate's own lane into the relay instance (see "mailgate's own lane" below).
LANE_QUEUE=/var/spool/postfix-postfwd
LANE_DIR=$LANE_QUEUE/mailgate
LANE=$LANE_DIR/smtpd
LANE_LINE="socket = \"$LANE\"   # the mailgate lane into the relay (install.sh --with-postfix)"
LANE_SERVICE="../mailgate/smtpd unix n - n - - smtpd -o syslog_name=postfix-postfwd/mailgate -o smtpd_client_restrictions= -o smtpd_helo_restrictions= -o smtpd_sender_restrictions= -o smtpd_recipient_restrictions= -o smtpd_relay_restrictions=permit_mynetworks,reject_unauth_destination -o smtpd_client_connection_count_limit=0 -o smtpd_client_connection_rate_limit=0"
remember_started() {
    [ $dry_run = 1 ] && return 0
    mkdir -p "$BACKUP"
    grep -qx "$1" "$STARTED" 2>/dev/null || printf '%s\n' "$1" >>"$STARTED"
}
was_started() { grep -qx "$1" "$STARTED" 2>/dev/null; }
cron_running() { pgrep -x cron >/dev/null 2>&1; }
postfwd_running() { [ -s /var/run/postfwd.pid ] && kill -0 "$(cat /var/run/postfwd.pid)" 2>/dev/null; }
# Debian's /etc/init.d/postfwd cannot stop postfwd: start-stop-daemon refuses its pid file,
# which belongs to the postfw user ("matching only on non-root pidfile is insecure").
stop_postfwd() {
    local pid i
    pid=$(cat /var/run/postfwd.pid 2>/dev/null) || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f /var/run/postfwd.pid
}
# The names Postfix gives this host, derived as mailgate derives them (src/origin.rs):
# myhostname is the kernel's name, with .localdomain when it has no dot; the origin is
# /etc/mailname if present. hostname/origin set in mailgate.toml win there, so here too.
host_short=$(cat /proc/sys/kernel/hostname 2>/dev/null || hostname)
case "$host_short" in *.*) host_fqdn=$host_short ;; *) host_fqdn=$host_short.localdomain ;; esac
cfg_value() { [ -f "$ETC/mailgate.toml" ] || return 0; sed -n "s/^$1[[:space:]]*=[[:space:]]*\"\(.*\)\".*/\1/p" "$ETC/mailgate.toml" | head -n1; }
[ -z "$(cfg_value hostname)" ] || host_fqdn=$(cfg_value hostname)
origin=$(cfg_value origin)
[ -n "$origin" ] || [ ! -f /etc/mailname ] || origin=$(head -n1 /etc/mailname | tr -d '[:space:]')
[ -n "$origin" ] || origin=$host_fqdn

# The Debian package installed mailgate itself (README "Install"): then this script only wires
# the chain and PHP, and --uninstall leaves the package's files to dpkg.
packaged=0
if [ -z "$P" ] && dpkg-query -W -f='${Status}' mailgate 2>/dev/null | grep -q 'ok installed'; then packaged=1; fi

# ---------------------------------------------------------------------------- uninstall ----
# Every decision is made from the state before the first change, so that a dry run lists
# exactly the changes the real run makes.
if [ $uninstall = 1 ]; then
    started_before_uninstall=$(cat "$STARTED" 2>/dev/null || true)
    was_started() { grep -qx "$1" <<<"$started_before_uninstall"; }
    if [ -z "$P" ] && [ "$(dpkg-divert --listpackage /usr/sbin/sendmail 2>/dev/null)" = LOCAL ]; then
        for f in /usr/sbin/sendmail /usr/lib/sendmail; do
            if [ "$(dpkg-divert --listpackage "$f" 2>/dev/null)" = LOCAL ]; then
                act rm -f "$f"
                act dpkg-divert --local --rename --remove "$f"
            fi
        done
    fi
    if [ -z "$P" ] && command -v postmulti >/dev/null && postmulti -l 2>/dev/null | grep -q '^postfix-postfwd '; then
        sec_dirs="$(postconf -c /etc/postfix-postfwd -h queue_directory data_directory 2>/dev/null | tr '\n' ' ')"
        act postmulti -i postfix-postfwd -p stop || true
        act postmulti -i postfix-postfwd -e disable
        if act postmulti -i postfix-postfwd -e destroy; then
            # destroy leaves pid files and empty queue folders behind.
            for d in $sec_dirs; do
                case "$d" in /var/spool/postfix-postfwd|/var/lib/postfix-postfwd) act rm -rf "$d" ;; esac
            done
        else
            say "postfix-postfwd not destroyed (mail still in its queue: postqueue -c /etc/postfix-postfwd -p); it stays disabled"
        fi
    fi
    if [ -z "$P" ] && grep -qxF "$LANE_LINE" "$ETC/mailgate.toml" 2>/dev/null; then
        act drop_line "$ETC/mailgate.toml" "$LANE_LINE"
    fi
    if [ -z "$P" ] && was_started postfwd; then
        if have_systemd; then act systemctl disable --now postfwd; else act stop_postfwd; fi
    fi
    # A primary Postfix that install.sh started is stopped before its config goes back.
    if [ -z "$P" ] && was_started postfix; then
        act postfix stop || true
    fi
    if [ -z "$P" ] && was_started cron; then
        act /etc/init.d/cron stop
    fi
    # install.sh's own files; one with a backup record is handled by the restore below.
    own_files=()
    own=("$SBIN" "$LINKDIR/sendmail" "$P/etc/cron.d/mailgate" "$TEXTFILE_DIR/mailgate.prom" \
         "$P/etc/systemd/system/mailgate-queue.service" "$P/etc/systemd/system/mailgate-queue.timer")
    [ $packaged = 0 ] || own=("$TEXTFILE_DIR/mailgate.prom")
    for f in "${own[@]}"; do
        key=$BACKUP/$(printf '%s' "${f#"$P"}" | sed 's|/|%|g')
        if [ -e "$key" ] || [ -e "$key.absent" ]; then continue; fi
        if [ -e "$f" ] || [ -L "$f" ]; then own_files+=("$f"); fi
    done
    linkdir_is_ours=0
    [ $packaged = 1 ] || [ "$(ls -A "$LINKDIR" 2>/dev/null)" != sendmail ] || linkdir_is_ours=1
    if [ -d "$BACKUP" ]; then
        for key in "$BACKUP"/*; do
            [ -e "$key" ] || continue
            name=$(basename "$key")
            case "$name" in
                started-daemons) ;;
                *.absent) f=$P$(printf '%s' "${name%.absent}" | sed 's|%|/|g'); act rm -rf "$f" ;;
                *) f=$P$(printf '%s' "$name" | sed 's|%|/|g'); act rm -rf "$f"; act cp -a "$key" "$f" ;;
            esac
        done
        act rm -rf "$BACKUP"
    fi
    for f in "${own_files[@]}"; do act rm -f "$f"; done
    [ $linkdir_is_ours = 0 ] || act rmdir "$LINKDIR"
    if have_systemd; then act systemctl daemon-reload; fi
    # A primary Postfix that ran before install.sh runs on, with its restored config.
    if [ -z "$P" ] && ! was_started postfix && command -v postfix >/dev/null && postfix status >/dev/null 2>&1; then
        if have_systemd; then act systemctl restart postfix; else act postfix reload; fi
    fi
    say "uninstalled ($changes changes); $ETC and $STATE were kept"
    exit 0
fi

# ----------------------------------------------------------------------------- mailgate ----
if [ $packaged = 1 ]; then
    say "the Debian package mailgate is installed: binary, config, state directory and queue runner are its own; wiring the rest"
else
if [ -z "$binary" ]; then
    if [ $dry_run = 1 ]; then
        binary=$here/target/release/mailgate
        printf 'would run: cargo build --release (in %s)\n' "$here"
    else
        (cd "$here" && cargo build --release --quiet)
        binary=$here/target/release/mailgate
    fi
fi
[ $dry_run = 1 ] || [ -x "$binary" ] || { echo "install.sh: $binary is not an executable" >&2; exit 66; }

if ! getent group mailgate >/dev/null; then act groupadd --system mailgate; fi
if [ ! -f "$SBIN" ] || ! cmp -s "$binary" "$SBIN" || [ "$(stat -c '%a %U:%G' "$SBIN")" != "2755 root:mailgate" ]; then
    act install -D -o root -g mailgate -m 2755 "$binary" "$SBIN"
fi
put_dir "$ETC" 755 root:root
# One file per account (NAME.toml), written by the hosting panel; see README "Accounts".
put_dir "$ETC/accounts.d" 755 root:root
if [ ! -f "$ETC/mailgate.toml" ]; then
    # The admin's configuration from now on: --uninstall keeps it.
    act install -o root -g root -m 644 "$here/mailgate.toml.example" "$ETC/mailgate.toml"
fi
put_dir "$STATE" 770 root:mailgate
# Made here, owned by root: a customer's sender must never be the first to create them.
for sub in accounts queue defer hold failed tmp pending stats spooled; do
    put_dir "$STATE/$sub" 2770 root:mailgate
done
if [ ! -f "$STATE/mailgate.log" ] || [ "$(stat -c '%a %U:%G' "$STATE/mailgate.log")" != "660 root:mailgate" ]; then
    act touch "$STATE/mailgate.log"
    act chown root:mailgate "$STATE/mailgate.log"
    act chmod 660 "$STATE/mailgate.log"
fi
put_link "$LINKDIR/sendmail" /usr/sbin/mailgate
# node_exporter's textfile collector (Debian's prometheus-node-exporter reads this directory):
# every queue run writes mailgate's metrics there. An admin's own [metrics] section stays.
if [ -d "$TEXTFILE_DIR" ] && ! grep -q '^\[metrics\]' "$ETC/mailgate.toml" 2>/dev/null; then
    current=$(cat "$ETC/mailgate.toml" 2>/dev/null || cat "$here/mailgate.toml.example")
    put_file "$ETC/mailgate.toml" 644 root:root "$current

[metrics]
textfile = \"$TEXTFILE_DIR/mailgate.prom\"      # node_exporter's textfile collector"
fi
# Man pages and the bash completion, generated from the code (src/docs.rs).
put_file "$P/usr/share/man/man8/mailgate.8" 644 root:root "$(cat "$here/man/mailgate.8")"
put_file "$P/usr/share/man/man5/mailgate.toml.5" 644 root:root "$(cat "$here/man/mailgate.toml.5")"
put_file "$P/usr/share/bash-completion/completions/mailgate" 644 root:root "$(cat "$here/completions/mailgate.bash")"

if have_systemd; then
    put_file "$P/etc/systemd/system/mailgate-queue.service" 644 root:root "[Unit]
Description=mailgate: deliver queued mail and release deferred mail

[Service]
Type=oneshot
ExecStart=/usr/sbin/mailgate queue run"
    put_file "$P/etc/systemd/system/mailgate-queue.timer" 644 root:root "[Unit]
Description=mailgate queue run every minute

[Timer]
OnBootSec=1min
OnUnitActiveSec=1min

[Install]
WantedBy=timers.target"
    if ! systemctl is-enabled --quiet mailgate-queue.timer 2>/dev/null; then
        act systemctl daemon-reload
        act systemctl enable --now mailgate-queue.timer
    fi
    runner="systemd timer mailgate-queue.timer (every minute)"
    if [ $dry_run = 0 ] && ! systemctl is-active --quiet mailgate-queue.timer; then
        echo "install.sh: mailgate-queue.timer is not active: queued mail would never be retried" >&2
        exit 1
    fi
else
    put_file "$P/etc/cron.d/mailgate" 644 root:root "# mailgate: deliver queued mail and release deferred mail (install.sh)
* * * * * root /usr/sbin/mailgate queue run >/dev/null"
    runner="cron job $P/etc/cron.d/mailgate (every minute)"
    if [ -z "$P" ]; then
        # No systemd: the cron job needs a cron daemon, which a bare host may lack.
        if ! command -v cron >/dev/null; then
            act env DEBIAN_FRONTEND=noninteractive apt-get install -y -q cron
        fi
        if ! cron_running; then
            act /etc/init.d/cron start
            remember_started cron
        fi
        if [ $dry_run = 0 ] && ! cron_running; then
            echo "install.sh: the cron daemon is not running, so queued mail would never be retried; start it (/etc/init.d/cron start) and run install.sh again" >&2
            exit 1
        fi
        [ $dry_run = 1 ] || runner="$runner, run by the cron daemon (pid $(pgrep -x cron | head -n1))"
    else
        runner="$runner; the target system needs a running cron daemon"
    fi
fi
say "queue runner: $runner"

fi # packaged

# -------------------------------------------------------------------------------- PHP ----
if [ $php = 1 ]; then
    found=0
    for confd in "$P"/etc/php/*/*/conf.d; do
        [ -d "$confd" ] || continue
        found=1
        put_file "$confd/99-mailgate.ini" 644 root:root "$(cat "$here/php-ini-snippets/99-mailgate.ini")"
    done
    if [ $found = 0 ]; then
        say "no PHP installation found under $P/etc/php (no */*/conf.d): nothing was wired."
        say "install PHP (e.g. apt-get install php-cli php-fpm), then run install.sh --php again."
    else
    cat <<EOF
install.sh: PHP now sends through mailgate, counted per Unix user. To give each site its own account:
  PHP-FPM pool:  php_admin_value[sendmail_path] = /usr/lib/mailgate/sendmail --account example.com -t -i
                 env[MAILGATE_ACCOUNT] = example.com
  Apache vhost:  php_admin_value sendmail_path "/usr/lib/mailgate/sendmail --account example.com -t -i"
  and declare it in $ETC/mailgate.toml:  [accounts."example.com"]  users = ["web1"]
  Examples: $here/php-ini-snippets/
EOF
    fi
fi

# ----------------------------------------------------------------------- as /usr/sbin/sendmail ----
if [ $as_sendmail = 1 ]; then
    if [ -n "$P" ]; then
        put_link "$P/usr/sbin/sendmail" /usr/sbin/mailgate
    else
        for f in /usr/sbin/sendmail /usr/lib/sendmail; do
            if [ "$(dpkg-divert --listpackage "$f" 2>/dev/null)" != LOCAL ]; then
                act dpkg-divert --local --rename --divert "$f.postfix" --add "$f"
            fi
            # No backup: removing the diversion is what restores Postfix's file.
            if [ "$(readlink "$f" 2>/dev/null)" != /usr/sbin/mailgate ]; then act ln -sfn /usr/sbin/mailgate "$f"; fi
        done
    fi
fi

# ------------------------------------------------------------------ Postfix + postfwd chain ----
if [ $with_postfix = 1 ]; then
    [ -z "$P" ] || { echo "install.sh: --with-postfix configures the system Postfix and cannot be combined with --prefix" >&2; exit 64; }
    missing=()
    dpkg -s postfix >/dev/null 2>&1 || missing+=(postfix)
    dpkg -s postfwd >/dev/null 2>&1 || missing+=(postfwd)
    if [ ${#missing[@]} -gt 0 ]; then
        act sh -c "echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections"
        act env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    fi
    [ -f /etc/postfix/master.cf ] || { backup /etc/postfix/master.cf; act cp /usr/share/postfix/master.cf.dist /etc/postfix/master.cf; }
    [ -f /etc/postfix/main.cf ] || { backup /etc/postfix/main.cf; act cp /usr/share/postfix/main.cf.debian /etc/postfix/main.cf; }

    # postconf_set INSTANCE-ARGS -- key value: set a parameter only if it differs.
    pset() { # config-dir key value
        local dir=$1 key=$2 value=$3
        [ $dry_run = 0 ] || [ -f "$dir/main.cf" ] || { changes=$((changes + 1)); printf 'would set %s in %s/main.cf\n' "$key = $value" "$dir"; return 0; }
        if [ "$(postconf -c "$dir" -h "$key" 2>/dev/null)" != "$value" ]; then
            # The second instance is install.sh's own (destroyed by --uninstall): no backup.
            [ "$dir" != /etc/postfix ] || backup "$dir/main.cf"
            act postconf -c "$dir" -e "$key = $value"
        fi
    }
    # One domain for "local": the names mailgate derives (src/origin.rs) are the ones the
    # relay instance delivers locally, in both spellings (vm and vm.localdomain).
    local_domains=$origin
    for d in "$host_fqdn" "$host_short" localhost.localdomain localhost; do
        case ", $local_domains, " in *", $d, "*) ;; *) local_domains="$local_domains, $d" ;; esac
    done
    # Without a syslog daemon Postfix's log lines would go nowhere.
    if [ -z "$postfix_log" ] && [ ! -S /dev/log ]; then postfix_log=/var/log; fi
    [ -z "$postfix_log" ] || say "Postfix logs to $postfix_log/postfix.log and $postfix_log/postfix-postfwd.log"
    primary_was_running=0
    postfix status >/dev/null 2>&1 && primary_was_running=1
    # The primary instance: a null client that relays everything to the second instance.
    if [ "$(postconf -h multi_instance_enable 2>/dev/null)" != yes ]; then
        backup /etc/postfix/main.cf
        act postmulti -e init
    fi
    pset /etc/postfix master_service_disable inet
    pset /etc/postfix mydestination ""
    pset /etc/postfix local_transport "error:5.1.1 Mailbox unavailable"
    pset /etc/postfix alias_database ""
    pset /etc/postfix alias_maps ""
    pset /etc/postfix local_recipient_maps ""
    pset /etc/postfix relayhost "[127.0.0.1]:825"
    pset /etc/postfix inet_interfaces loopback-only
    pset /etc/postfix myhostname "$host_fqdn"
    pset /etc/postfix myorigin "$origin"
    if [ -n "$postfix_log" ]; then
        pset /etc/postfix maillog_file "$postfix_log/postfix.log"
    fi

    # The second instance: smtpd on 127.0.0.1:825 only (below 1024: no customer can listen
    # there while it is down), postfwd before anything permits.
    SEC=/etc/postfix-postfwd
    if ! postmulti -l 2>/dev/null | grep -q '^postfix-postfwd '; then
        act postmulti -I postfix-postfwd -G mta -e create
    fi
    pset $SEC master_service_disable ""
    pset $SEC authorized_submit_users root
    pset $SEC inet_interfaces loopback-only
    pset $SEC myhostname "$host_fqdn"
    pset $SEC mydestination "$local_domains"
    pset $SEC myorigin "$origin"
    pset $SEC smtpd_sender_restrictions "check_policy_service unix:$POLICY"
    pset $SEC smtpd_relay_restrictions "permit_mynetworks, reject_unauth_destination"
    pset $SEC mynetworks "127.0.0.0/8 [::1]/128"
    pset $SEC relayhost "$relayhost"
    pset $SEC message_size_limit 52428800
    pset $SEC mailbox_size_limit 0
    if [ -n "$postfix_log" ]; then
        pset $SEC maillog_file "$postfix_log/postfix-postfwd.log"
    fi
    pset $SEC alias_maps ""
    pset $SEC alias_database ""
    if [ -f $SEC/master.cf ]; then
        # No smtpd on port 25 (inbound mail is not this chain's business); one on 825; no
        # chroot (the relayhost and local delivery need nothing from inside a jail).
        if [ -n "$(postconf -c $SEC -M smtp/inet 2>/dev/null)" ]; then
            act postconf -c $SEC -M# smtp/inet
        fi
        if [ -z "$(postconf -c $SEC -M 127.0.0.1:825/inet 2>/dev/null)" ]; then
            act postconf -c $SEC -Me "127.0.0.1:825/inet = 127.0.0.1:825 inet n - n - - smtpd"
        fi
        if postconf -c $SEC -F '*/*/chroot' 2>/dev/null | grep -q '= y$'; then
            act postconf -c $SEC -F '*/*/chroot = n'
        fi
    else
        printf 'would configure %s/master.cf: no smtpd on port 25, smtpd on 127.0.0.1:825\n' "$SEC"
    fi
    # mailgate's own lane: an smtpd on a Unix socket in a directory only group mailgate may
    # enter (mode 0710 postfix:mailgate; the setgid binary and root's queue run get in, a
    # customer's own process gets EACCES), without postfwd: mail that mailgate counted and
    # decided is not counted a second time. The TCP listener above stays for everything
    # that bypasses mailgate and keeps postfwd. Postfix names a unix service by its path
    # under the public/ or private/ class directory, hence "../"; its smtpd processes take
    # turns on an accept lock named pid/unix.<service name>, which needs a directory too.
    if [ -f $SEC/master.cf ]; then
        lane_entry=$(postconf -c $SEC -M 2>/dev/null | awk '$1 == "../mailgate/smtpd"' | tr -s ' ')
        if [ "$lane_entry" != "$(printf '%s' "$LANE_SERVICE" | tr -s ' ')" ]; then
            act sed -i '\|^\.\./mailgate/smtpd[[:space:]]|,/^[^[:space:]]/{\|^\.\./mailgate/smtpd[[:space:]]|d;/^[[:space:]]/d}' $SEC/master.cf
            act sh -c "printf '%s\n' '$LANE_SERVICE' >>$SEC/master.cf"
        fi
    else
        printf 'would add to %s/master.cf: %s\n' "$SEC" "$LANE_SERVICE"
    fi
    put_dir "$LANE_DIR" 710 postfix:mailgate
    put_dir "$LANE_QUEUE/pid/unix.../mailgate" 700 root:root
    # mailgate.toml names the lane (one marked line, which --uninstall removes again). An
    # admin's own `socket =` is left as it is.
    if ! grep -Eq '^[[:space:]]*socket[[:space:]]*=' "$ETC/mailgate.toml" 2>/dev/null; then
        if grep -q '^\[relay\][[:space:]]*$' "$ETC/mailgate.toml" 2>/dev/null; then
            act sed -i "/^\[relay\][[:space:]]*\$/a $LANE_LINE" "$ETC/mailgate.toml"
        else
            act sh -c "printf '\n[relay]\n%s\n' '$LANE_LINE' >>'$ETC/mailgate.toml'"
        fi
    elif ! grep -qxF "$LANE_LINE" "$ETC/mailgate.toml"; then
        say "$ETC/mailgate.toml sets its own [relay] socket; mailgate's lane is $LANE"
    fi
    if [ "$(postmulti -l 2>/dev/null | awk '$1 == "postfix-postfwd" {print $3}')" != y ]; then
        act postmulti -i postfix-postfwd -e enable
    fi

    # postfwd's rules, for the bypass lane only (mailgate's mail takes its own lane): generated
    # from mailgate's configuration, so that bypassing mailgate never allows more than mailgate
    # does; run install.sh again after changing limits (check-config warns until then).
    if [ $pf_fixed = 1 ]; then
        rules="# postfwd rules (install.sh --postfwd-hourly/--postfwd-daily): mail that bypasses mailgate
# (direct SMTP to 127.0.0.1:825, Postfix's own sendmail), per envelope sender and server-wide.
id=RATE_HOURLY; action=rate(sender/$pf_hourly/3600/$pf_verb only $pf_hourly messages per hour for \$\$sender)
id=RATE_DAILY; action=rate(sender/$pf_daily/86400/$pf_verb only $pf_daily messages per day for \$\$sender)
id=RATE_SERVER; action=rate(client_address/$pf_server/3600/$pf_verb only $pf_server messages per hour from this server)"
    elif [ -x "$SBIN" ]; then
        rules=$("$SBIN" postfwd-rules --action "$pf_action" --server "$pf_server") || {
            echo "install.sh: cannot derive postfwd's rules from $ETC/mailgate.toml (see: mailgate check-config)" >&2
            exit 78
        }
    else
        rules="(generated by mailgate postfwd-rules)"
    fi
    put_file /etc/postfix/postfwd.cf 644 root:root "$rules"
    # postfwd answers on a Unix socket in a directory only postfw and the postfix group may
    # enter: no customer can listen in its place while it is down and answer DUNNO to every
    # policy request (on 127.0.0.1:10040 anyone could; postfwd binds after dropping root, so a
    # port below 1024 is not possible). The setgid directory gives the socket group postfix.
    if [ ! -d "$POLICY_DIR" ]; then backup "$POLICY_DIR"; fi
    put_dir "$POLICY_DIR" 2750 postfw:postfix
    defaults=$(cat /etc/default/postfwd 2>/dev/null || true)
    new_defaults=$(printf '%s\n' "$defaults" | sed -E "s|^STARTUP=.*|STARTUP=1|; s|^PORT=.*|PORT=$POLICY|; s|^INET=.*|INET=127.0.0.1|")
    grep -q "^PORT=$POLICY" <<<"$new_defaults" || new_defaults=$(printf '%s\nPORT=%s' "$new_defaults" "$POLICY")
    grep -q -- '--proto=unix' <<<"$new_defaults" ||
        new_defaults=$(printf '%s\n' "$new_defaults" | sed -E 's|^ARGS="(.*)"|ARGS="\1 --proto=unix --server_umask=0117"|')
    grep -q '^STARTUP=1' <<<"$new_defaults" || new_defaults=$(printf '%s\nSTARTUP=1' "$new_defaults")
    [ "$new_defaults" = "$defaults" ] || put_file /etc/default/postfwd 644 root:root "$new_defaults"

    if [ $changes -gt 0 ] || [ ! -S "$POLICY" ] || [ ! -S "$LANE" ] || ! (exec 3<>/dev/tcp/127.0.0.1/825) 2>/dev/null; then
        if have_systemd; then
            systemctl is-active --quiet postfwd || remember_started postfwd
            [ $primary_was_running = 1 ] || remember_started postfix
            act systemctl enable postfwd
            act systemctl restart postfwd
            act systemctl restart postfix
        else
            # A restart, not `postfwd --reload`: after a HUP postfwd cannot bind its socket
            # again (it runs as postfw by then) and the policy server dies.
            if postfwd_running; then
                act stop_postfwd
            else
                remember_started postfwd
            fi
            act /etc/init.d/postfwd start
            # Each instance on its own: "postfix status" fails while either one is down.
            for instance in - postfix-postfwd; do
                if postmulti -i "$instance" -p status >/dev/null 2>&1; then
                    act postmulti -i "$instance" -p reload
                else
                    act postmulti -i "$instance" -p start
                    [ "$instance" != - ] || [ $primary_was_running = 1 ] || remember_started postfix
                fi
            done
        fi
    fi
fi

if [ $with_postfix = 1 ]; then
    say "lanes: mailgate's mail -> $LANE (mailgate's limits only); everything else -> 127.0.0.1:825 (postfwd's rules in /etc/postfix/postfwd.cf)"
fi
if [ $dry_run = 1 ]; then
    say "dry run: $changes changes would be made"
else
    say "done: $changes changes"
fi
