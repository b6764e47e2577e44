#!/usr/bin/env bash
# mailgate benchmark: mailgate vs Postfix's sendmail vs msmtp, same message, same sink
# (Postfix's smtp-sink on loopback), same machine, same run. Prints a Markdown report and
# writes it to bench/results.md.
#
#   sudo bench/run.sh            # installs what it needs (Debian), runs everything
#   RUNS=100 bench/run.sh        # fewer repetitions
#
# It configures the local Postfix (main.cf is backed up and restored) as a null client that
# relays to the sink, because "Postfix sendmail" is only meaningful with a running Postfix.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-300}
[ "$(id -u)" = 0 ] || { echo "bench: run as root (it starts Postfix and smtp-sink)" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
need=()
for p in hyperfine:hyperfine msmtp:msmtp smtp-sink:postfix /usr/bin/time:time python3:python3 redis-server:redis-server; do
    command -v "${p%%:*}" >/dev/null || need+=("${p#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -q && apt-get install -y -q --no-install-recommends "${need[@]}"
fi

BIN=$(pkg/build.sh --quiet)   # the shipped binary: static, release
work=$(mktemp -d /tmp/mailgate-bench.XXXXXX)
chmod 755 "$work"
pids=()
main_cf_backup=""
# The bench's null-client Postfix stopped and main.cf as it was.
restore_postfix() {
    postfix stop >/dev/null 2>&1 || true
    if [ -n "$main_cf_backup" ]; then
        if [ "$main_cf_backup" = none ]; then rm -f /etc/postfix/main.cf; else mv "$main_cf_backup" /etc/postfix/main.cf; fi
    fi
    main_cf_backup=""
}
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    restore_postfix
    rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
. bench/lib.sh

# --- the sink -----------------------------------------------------------------------------
start_sink

# --- the messages: a typical 4 KiB PHP mail, and 10 MiB ------------------------------------
python3 - "$work" <<'PY'
import sys, base64, os
w = sys.argv[1]
hdr = ("To: Customer <customer@example.net>\nSubject: Your order #4711 at shop.example.org\n"
       "From: Shop <shop@example.org>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n"
       "X-PHP-Originating-Script: 33:checkout.php\n\n")
line = "Thank you for your order. We will ship it as soon as possible, usually within 24 hours.\n"
body = line * (4096 // len(line))
open(f"{w}/small.eml", "w").write(hdr + body)
big = base64.encodebytes(os.urandom(7_700_000)).decode()
open(f"{w}/large.eml", "w").write(hdr.replace("text/plain", "application/octet-stream") + big)
PY
small_size=$(stat -c %s "$work/small.eml"); large_size=$(stat -c %s "$work/large.eml")

# --- Postfix as a null client relaying to the sink -----------------------------------------
if [ -f /etc/postfix/main.cf ]; then main_cf_backup="$work/main.cf.orig"; cp -p /etc/postfix/main.cf "$main_cf_backup"; else main_cf_backup=none; fi
cat >/etc/postfix/main.cf <<CF
compatibility_level = 3.6
myhostname = bench.example.org
mydestination =
inet_interfaces = loopback-only
master_service_disable = inet
relayhost = [127.0.0.1]:$SINK_PORT
smtp_tls_security_level = none
message_size_limit = 52428800
CF
[ -f /etc/postfix/master.cf ] || cp /usr/share/postfix/master.cf.dist /etc/postfix/master.cf
postfix stop >/dev/null 2>&1 || true
postfix start >/dev/null 2>&1 || { echo "bench: postfix start failed:" >&2; postfix start; exit 1; }
postfix status >/dev/null 2>&1 || { echo "bench: postfix did not start" >&2; exit 1; }

# --- mailgate configs: accepted (room for everything) and refused (account full) ------------
mkconf() { # name limit
    mkdir -p "$work/$1/state"
    cat >"$work/$1/mailgate.toml" <<TOML
origin = "example.org"
hostname = "bench.example.org"
state_dir = "$work/$1/state"
[relay]
port = $SINK_PORT
trusted_owners = ["root", "nobody"]   # smtp-sink accepts as nobody
[spool]
account_max_messages = 1000000
account_max_bytes = 100000000000
[log]
file = "$work/$1/mailgate.log"
[alerts]
admin = ""
[defaults]
limits = [ { window = "1m", messages = $2 }, { window = "1h", messages = $2 }, { window = "1d", messages = $2, recipients = $2 } ]
[accounts.root]
exempt = false
TOML
}
mkconf accepted 100000000
# mailgate's own lane (install.sh --with-postfix): the same sink on a Unix socket.
smtp-sink -u nobody "unix:$work/lane.sock" 256 >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 200); do [ -S "$work/lane.sock" ] && break; sleep 0.05; done
[ -S "$work/lane.sock" ] || { echo "bench: smtp-sink did not create $work/lane.sock" >&2; exit 1; }
mkconf accepted-lane 100000000
sed -i "s|^port = .*|socket = \"$work/lane.sock\"|" "$work/accepted-lane/mailgate.toml"
mkconf accepted-redis 100000000
REDIS_PORT=$(free_port)
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no >/dev/null 2>&1 &
pids+=($!)
wait_port "$REDIS_PORT"
cat >>"$work/accepted-redis/mailgate.toml" <<TOML
[store]
kind = "redis"
url = "redis://127.0.0.1:$REDIS_PORT/0"
TOML
mkconf refused 1
mkconf concurrency 1000
mkconf accepted-conc 100000000
MAILGATE_CONFIG=$work/refused/mailgate.toml "$BIN" -t -i <"$work/small.eml"   # fills the account

cat >"$work/msmtprc" <<RC
defaults
auth off
tls off
account default
host 127.0.0.1
port $SINK_PORT
from root@example.org
RC
chmod 600 "$work/msmtprc"

hf() { # name command...
    hyperfine -N -i --style none --warmup 20 --runs "$RUNS" --export-json "$work/$1.json" "${@:2}" >/dev/null 2>&1 || \
    hyperfine -i --style none --warmup 20 --runs "$RUNS" --export-json "$work/$1.json" "${@:2}" >/dev/null
}

# Paired runs (bench/paired.py): each round runs every command once in a shuffled order, no
# shell in between, stdin from the message file; ratios are medians of per-round ratios.
paired() { # name args...
    python3 bench/paired.py --runs "$RUNS" --warmup 20 "${@:2}" >"$work/$1.json"
}
field() { # name command key: the median of wall_ms (or of ratio_to_first)
    python3 -c "import json; d=json.load(open('$work/$1.json'))['$2']; print('%.3f' % d['$3']['median'])"
}
spread() { # name command: q1–q3 of its ratio to the first
    python3 -c "import json; r=json.load(open('$work/$1.json'))['$2']['ratio_to_first']; print('%.2f–%.2f' % (r['q1'], r['q3']))"
}

# Postfix's queue directories: sendmail's message is delivered in the background, and each
# run waits for that to finish before the next command starts (bench/paired.py --settle).
settle=(--settle /var/spool/postfix/maildrop --settle /var/spool/postfix/incoming --settle /var/spool/postfix/active)
echo "bench: accepted path ($RUNS paired rounds; mailgate's lane, then TCP)..." >&2
paired accepted --stdin "$work/small.eml" "${settle[@]}" \
    --env-for mailgate "MAILGATE_CONFIG=$work/accepted-lane/mailgate.toml" \
    "mailgate=$BIN -t -i" \
    "sendmail=/usr/sbin/sendmail -t -i" \
    "msmtp=msmtp -C $work/msmtprc -t" \
    "true=/bin/true" \
    "shtrue=sh -c 'exec true'"
mg_acc=$(field accepted mailgate wall_ms); pf_acc=$(field accepted sendmail wall_ms)
ms_acc=$(field accepted msmtp wall_ms); true_acc=$(field accepted true wall_ms); shtrue_acc=$(field accepted shtrue wall_ms)
acc_pf_ratio=$(field accepted sendmail ratio_to_first); acc_pf_spread=$(spread accepted sendmail)
acc_ms_ratio=$(field accepted msmtp ratio_to_first)
paired accepted-tcp --stdin "$work/small.eml" "${settle[@]}" \
    --env-for mailgate "MAILGATE_CONFIG=$work/accepted/mailgate.toml" \
    "mailgate=$BIN -t -i" \
    "sendmail=/usr/sbin/sendmail -t -i"
mg_tcp=$(field accepted-tcp mailgate wall_ms); pf_tcp=$(field accepted-tcp sendmail wall_ms)
tcp_pf_ratio=$(field accepted-tcp sendmail ratio_to_first); tcp_pf_spread=$(spread accepted-tcp sendmail)

echo "bench: accepted path, Redis store vs file store..." >&2
hf store \
    "sh -c 'MAILGATE_CONFIG=$work/accepted-redis/mailgate.toml $BIN -t -i < $work/small.eml'" \
    "sh -c 'MAILGATE_CONFIG=$work/accepted/mailgate.toml $BIN -t -i < $work/small.eml'"
read -r mg_redis mg_files <<<"$(median_ms "$work/store.json")"

echo "bench: refused path ($RUNS paired rounds; empty stdin, recipient on argv)..." >&2
# An empty message to an argv recipient is refused exactly like a 4 KiB one.
paired refused --env "MAILGATE_CONFIG=$work/refused/mailgate.toml" \
    "mailgate=$BIN -i customer@example.net" "true=/bin/true" "shtrue=sh -c 'exec true'"
mg_ref=$(field refused mailgate wall_ms); true_ref=$(field refused true wall_ms); shtrue_ref=$(field refused shtrue wall_ms)
ref_ratio=$(field refused true ratio_to_first); ref_spread=$(spread refused true)

echo "bench: large message..." >&2
LRUNS=$(( RUNS / 10 > 5 ? RUNS / 10 : 5 ))
hyperfine --style none --warmup 2 --runs "$LRUNS" --export-json "$work/large.json" \
    "sh -c 'MAILGATE_CONFIG=$work/accepted/mailgate.toml $BIN -t -i < $work/large.eml'" \
    "sh -c '/usr/sbin/sendmail -t -i < $work/large.eml'" >/dev/null
read -r mg_large pf_large <<<"$(median_ms "$work/large.json")"
rss_kb=$(MAILGATE_CONFIG=$work/accepted/mailgate.toml /usr/bin/time -f %M "$BIN" -t -i <"$work/large.eml" 2>&1 >/dev/null | tail -1)

# A sink that dumps each message to a file, for counting. Started here, not in a subshell,
# so that cleanup knows its pid.
start_dump_sink() { # config-name
    local sinkdir="$work/$1/sink" port
    mkdir -m 777 "$sinkdir"
    port=$(free_port)
    smtp-sink -u nobody -d "$sinkdir/%Y%m%d%H%M%S." "127.0.0.1:$port" 256 >/dev/null 2>&1 &
    pids+=($!)
    wait_port "$port"
    sed -i "s/^port = .*/port = $port/" "$work/$1/mailgate.toml"
}
# 8 parallel senders x 250 messages against one account; prints "accepted refused sunk secs p50 p99".
concurrency() { # config-name
    local start end
    start=$(date +%s.%N)
    seq 8 | xargs -P 8 -I{} sh -c "for i in \$(seq 250); do MAILGATE_CONFIG=$work/$1/mailgate.toml $BIN -t -i < $work/small.eml 2>/dev/null; echo \$? ; done" >"$work/$1/codes"
    end=$(date +%s.%N)
    python3 - "$start" "$end" "$work/$1" <<'PY'
import sys, re, os
start, end, d = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
codes = open(f"{d}/codes").read().split()
waits = sorted(int(m.group(1)) for m in (re.search(r"lock_wait_us=(\d+)", l) for l in open(f"{d}/mailgate.log")) if m)
q = lambda p: waits[min(len(waits)-1, int(p*len(waits)))] / 1000
print(codes.count("0"), codes.count("69"), len(os.listdir(f"{d}/sink")), f"{end-start:.2f}", f"{q(0.5):.2f}", f"{q(0.99):.2f}")
PY
}
start_dump_sink accepted-conc
start_dump_sink concurrency
echo "bench: concurrency (8 senders x 250 messages; unlimited, then limited to 1000)..." >&2
read -r t_acc _ t_sunk t_secs p50 p99 <<<"$(concurrency accepted-conc)"
thr=$(python3 -c "print('%.0f' % ($t_acc/$t_secs))")
read -r accepted refused sunk _ _ _ <<<"$(concurrency concurrency)"
exact=no; [ "$accepted" = 1000 ] && [ "$sunk" = "$accepted" ] && [ "$refused" = 1000 ] && exact=yes

# A dead relay and 1,000 queued entries: one queue run must cost one timeout, not 1,000.
echo "bench: queue run against a dead relay (1000 entries)..." >&2
mkconf deadrelay 100000000
refused_port=$(free_port)   # nothing listens there: queueing is instant
sed -i "s/^port = .*/port = $refused_port\ntimeout = \"2s\"/" "$work/deadrelay/mailgate.toml"
for _ in $(seq 1000); do MAILGATE_CONFIG=$work/deadrelay/mailgate.toml "$BIN" -t -i <"$work/small.eml" 2>/dev/null; done
queued=$(find "$work/deadrelay/state/queue" -mindepth 1 -maxdepth 1 | wc -l)
python3 -c 'import socket,time; s=socket.socket(); s.bind(("127.0.0.1",0)); s.listen(4096); print(s.getsockname()[1], flush=True); time.sleep(3600)' >"$work/silent.port" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/silent.port" ] && break; sleep 0.05; done
silent_port=$(cat "$work/silent.port")
queue_run_secs() { # port
    sed -i "s/^port = .*/port = $1/" "$work/deadrelay/mailgate.toml"
    local start end
    start=$(date +%s.%N)
    MAILGATE_CONFIG=$work/deadrelay/mailgate.toml MAILGATE_NOW=$(( $(date +%s) + 86400 )) "$BIN" queue run >/dev/null 2>&1 || true
    end=$(date +%s.%N)
    python3 -c "print('%.2f' % ($end - $start))"
}
dead_silent=$(queue_run_secs "$silent_port")
dead_refused=$(queue_run_secs "$refused_port")

size=$(stat -c %s "$BIN")
# The shipped binary is static: no shared object at all (file(1) says "static-pie linked").
libs=$(file -b "$BIN" | grep -o 'static[-a-z]* linked' || ldd "$BIN" | awk '{print $1}' | grep -v vdso | tr '\n' ' ')
openssl=no; strings "$BIN" | grep -qE '^OpenSSL [0-9]|libssl\.so' && openssl=YES
state_size=$(stat -c %s "$work/accepted/state/accounts/root")

report=$(cat <<MD
### Benchmark $(date -u +%Y-%m-%d) on $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), Postfix $(postconf -h mail_version), $(msmtp --version | head -1)

| case | mailgate | Postfix sendmail | msmtp | /bin/true; \`sh -c 'exec true'\` | mailgate ratio (paired median, quartiles) | target |
|---|---|---|---|---|---|---|
| accepted, ${small_size} B, 1 rcpt, mailgate's lane (Unix socket) | ${mg_acc} ms | ${pf_acc} ms | ${ms_acc} ms | ${true_acc} ms; ${shtrue_acc} ms | ${acc_pf_ratio} (${acc_pf_spread}) x sendmail, ${acc_ms_ratio} x msmtp | <= 0.2 x sendmail |
| accepted, the same over TCP (loopback) | ${mg_tcp} ms | ${pf_tcp} ms | | | ${tcp_pf_ratio} (${tcp_pf_spread}) x sendmail | |
| refused, account over its limit | ${mg_ref} ms | | | ${true_ref} ms; ${shtrue_ref} ms | ${ref_ratio} (${ref_spread}) x /bin/true | <= 1.3 x /bin/true |
| large, ${large_size} B (median) | ${mg_large} ms | ${pf_large} ms | | | $(ratio "$mg_large" "$pf_large") x sendmail | <= 2 |
| accepted, Redis store (median) | ${mg_redis} ms | | | | $(ratio "$mg_redis" "$mg_files") x file store (${mg_files} ms) | |

- Concurrency, 8 senders x 250 messages to one account: unlimited, ${t_acc} accepted (${t_sunk} at the sink) in
  ${t_secs} s = **${thr} accepted messages/s** (target >= 500); lock wait p50 ${p50} ms, p99 ${p99} ms
  (target p99 <= 20 ms; from the lock_wait_us log field). Limited to 1000: ${accepted} accepted, ${refused}
  refused, ${sunk} at the sink (exact: ${exact}).
- Dead relay, ${queued} queued entries: one \`queue run\` against a relay that accepts connections and never
  answers (timeout 2 s) took ${dead_silent} s; against refused connections ${dead_refused} s. The first entry
  finds the relay dead, the rest wait for the next run (before: one timeout per entry, ${queued} x 2 s).
- Large message peak RSS: ${rss_kb} KiB for a $((large_size / 1024)) KiB message ($(ratio "$rss_kb*1024" "$large_size") x message size; target <= 3).
- Footprint: stripped binary ${size} bytes; linked: ${libs}; OpenSSL linked: ${openssl};
  state file per account with three windows: ${state_size} bytes.
- The accepted and refused rows are paired (bench/paired.py: every round runs each command once, shuffled,
  no shell, stdin from the message file; after each run the next waits until Postfix's queue has
  delivered what sendmail dropped, so no command pays for another's background work); the large row
  runs as \`sh -c '... < message'\` under hyperfine. The relay is Postfix's smtp-sink: on a Unix socket
  for mailgate's lane (what \`install.sh --with-postfix\` configures), on loopback TCP for the other row.
MD
)
echo "$report"
echo "$report" >bench/results.md

# The rows at a hosting server's size (1, 1,000 and 10,000 accounts); SCALE=0 leaves them out.
if [ "${SCALE:-1}" = 1 ]; then
    scale=$(RUNS=$(( RUNS < 100 ? RUNS : 100 )) bench/scale.sh)
    echo "$scale"
    printf '\n%s\n' "$scale" >>bench/results.md
fi
# The counter store's ways in (file, redis://, Sentinel, rediss:// + ACL); STORE=0 leaves them out.
if [ "${STORE:-1}" = 1 ]; then
    store=$(RUNS=$(( RUNS < 200 ? RUNS : 200 )) bench/store.sh)
    echo "$store"
    printf '\n%s\n' "$store" >>bench/results.md
fi
# The rows through the installed chain (mailgate's lane against the TCP lane it replaced);
# CHAIN=0 leaves them out. The chain's install.sh sets Postfix up itself.
if [ "${CHAIN:-1}" = 1 ]; then
    restore_postfix
    chain=$(RUNS=$(( RUNS < 200 ? RUNS : 200 )) bench/chain.sh)
    echo "$chain"
    printf '%s\n' "$chain" >>bench/results.md
fi
