#!/usr/bin/env bash
# Through the installed chain, not a sink: install.sh --with-postfix (the relay instance
# relaying to an smtp-sink), then mailgate's own lane (Unix socket, no postfwd) against the
# lane it replaced (TCP 127.0.0.1:825 with postfwd's policy lookup on every RCPT), and
# Postfix's own sendmail into the same chain, in the same run: accepted latency (hyperfine
# median) and 8 parallel senders' throughput. Prints a Markdown section.
#
#   sudo bench/chain.sh          # bench/run.sh calls it unless CHAIN=0
#
# It installs and uninstalls the chain, so it refuses to run over an existing install.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-200}
[ "$(id -u)" = 0 ] || { echo "bench/chain.sh: run as root (it installs the chain)" >&2; exit 1; }
if [ -e /etc/mailgate ] || [ -e /etc/postfix-postfwd ] || [ -e /usr/sbin/mailgate ]; then
    echo "bench/chain.sh: mailgate or its chain is installed here; this benchmark installs and removes its own, not over a real one" >&2
    exit 1
fi
for tool in hyperfine smtp-sink postmulti postfwd python3; do
    command -v "$tool" >/dev/null || { echo "bench/chain.sh: $tool is missing (sudo bench/run.sh installs it)" >&2; exit 1; }
done

BIN=$(pkg/build.sh --quiet)   # the shipped binary: static, release
work=$(mktemp -d /tmp/mailgate-chain-bench.XXXXXX)
chmod 755 "$work"
pids=()
group_existed=0; getent group mailgate >/dev/null && group_existed=1
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    postsuper -c /etc/postfix-postfwd -d ALL >/dev/null 2>&1 || true
    postsuper -d ALL >/dev/null 2>&1 || true
    ./install.sh --uninstall >/dev/null 2>&1 || echo "bench/chain.sh: install.sh --uninstall failed" >&2
    rm -rf /etc/mailgate /var/lib/mailgate /var/log/mailgate-chain-bench "$work"
    [ $group_existed = 1 ] || groupdel mailgate 2>/dev/null || true
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
. bench/lib.sh
mkdir -p /var/log/mailgate-chain-bench
start_sink
# postfwd must not refuse the old lane's messages during the run: its limits out of reach.
./install.sh --binary "$BIN" --with-postfix --relayhost "[127.0.0.1]:$SINK_PORT" --postfix-log /var/log/mailgate-chain-bench \
    --postfwd-hourly 1000000000 --postfwd-daily 1000000000 --postfwd-server 1000000000 >"$work/install.log" 2>&1 ||
    { cat "$work/install.log" >&2; exit 1; }
LANE=/var/spool/postfix-postfwd/mailgate/smtpd
for _ in $(seq 200); do [ -S "$LANE" ] && (exec 3<>/dev/tcp/127.0.0.1/825) 2>/dev/null && break; sleep 0.05; done

python3 - "$work" <<'PY'
import sys
hdr = ("To: Customer <customer@example.net>\nSubject: Your order #4711 at shop.example.org\n"
       "From: Shop <shop@example.org>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n"
       "X-PHP-Originating-Script: 33:checkout.php\n\n")
line = "Thank you for your order. We will ship it as soon as possible, usually within 24 hours.\n"
open(f"{sys.argv[1]}/small.eml", "w").write(hdr + line * (4096 // len(line)))
PY

mkconf() { # name relay-keys
    mkdir -p "$work/$1/state"
    cat >"$work/$1/mailgate.toml" <<TOML
origin = "example.org"
state_dir = "$work/$1/state"
[relay]
$2
[spool]
account_max_messages = 1000000
account_max_bytes = 100000000000
[log]
file = "$work/$1/mailgate.log"
[alerts]
admin = ""
[defaults]
limits = [ { window = "1h", messages = 100000000 } ]
[accounts.root]
exempt = false
TOML
}
mkconf tcp $'host = "127.0.0.1"\nport = 825'
mkconf lane "socket = \"$LANE\""
# The lane with delivery outcomes on: each hand-over also writes its record (delivery/QUEUEID).
mkconf outcomes "socket = \"$LANE\""
printf '[outcomes]\nrelay_log = "/var/log/mailgate-chain-bench/postfix-postfwd.log"\n' >>"$work/outcomes/mailgate.toml"

echo "bench/chain.sh: accepted latency through the chain ($RUNS runs each)..." >&2
hyperfine -i --style none --warmup 20 --runs "$RUNS" --export-json "$work/latency.json" \
    "sh -c 'MAILGATE_CONFIG=$work/tcp/mailgate.toml $BIN -t -i < $work/small.eml'" \
    "sh -c 'MAILGATE_CONFIG=$work/outcomes/mailgate.toml $BIN -t -i < $work/small.eml'" \
    "sh -c 'MAILGATE_CONFIG=$work/lane/mailgate.toml $BIN -t -i < $work/small.eml'" \
    "sh -c '/usr/sbin/sendmail -t -i < $work/small.eml'" >/dev/null
read -r tcp_ms outcomes_ms lane_ms pf_ms <<<"$(median_ms "$work/latency.json")"

# 8 parallel senders x 250 messages; prints "sent-by-the-relay seconds".
throughput() { # config-name
    local start end
    : >"$work/$1/mailgate.log"
    start=$(date +%s.%N)
    seq 8 | xargs -P 8 -I{} sh -c "for i in \$(seq 250); do MAILGATE_CONFIG=$work/$1/mailgate.toml $BIN -t -i < $work/small.eml 2>/dev/null; done"
    end=$(date +%s.%N)
    python3 -c "print($(grep -c 'status=sent' "$work/$1/mailgate.log" || true), '%.2f' % ($end - $start))"
}
echo "bench/chain.sh: 8 senders x 250 messages, each lane..." >&2
read -r tcp_sent tcp_secs <<<"$(throughput tcp)"
# Where the lane's time goes: CPU samples of the whole machine by process name while the lane
# runs (perf record -a; left out when perf is missing).
profile="(perf is not installed: no profile)"
if command -v perf >/dev/null; then
    perf record -q -a -F 999 -o "$work/lane.perf" >/dev/null 2>&1 &
    perf_pid=$!
    sleep 0.5
fi
read -r lane_sent lane_secs <<<"$(throughput lane)"
if command -v perf >/dev/null; then
    kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
    profile=$(perf report -i "$work/lane.perf" --sort comm --stdio 2>/dev/null | awk '/^ +[0-9.]+%/ && $1+0 >= 1 {printf "%s%s %s", sep, $2, $1; sep=", "}')
fi
tcp_rate=$(python3 -c "print('%.0f' % ($tcp_sent / $tcp_secs))")
lane_rate=$(python3 -c "print('%.0f' % ($lane_sent / $lane_secs))")
# What an admin can change on Postfix's side, measured: in_flow_delay (cleanup waits up to a
# second per message for the queue manager when mail arrives faster than it leaves).
postconf -c /etc/postfix-postfwd -e in_flow_delay=0s && postfix -c /etc/postfix-postfwd reload >/dev/null 2>&1
for _ in $(seq 100); do [ -S "$LANE" ] && break; sleep 0.05; done
read -r flow_sent flow_secs <<<"$(throughput lane)"
postconf -c /etc/postfix-postfwd -X in_flow_delay && postfix -c /etc/postfix-postfwd reload >/dev/null 2>&1
flow_rate=$(python3 -c "print('%.0f' % ($flow_sent / $flow_secs))")

cat <<MD

### Through the installed chain ($(date -u +%Y-%m-%d), Postfix $(postconf -h mail_version), postfwd $(postfwd --version 2>/dev/null | head -1 | awk '{print $2}'))

| lane into the relay instance | accepted, 4 KiB (median) | 8 senders x 250: relayed | messages/s |
|---|---|---|---|
| before: TCP 127.0.0.1:825, postfwd on every RCPT | ${tcp_ms} ms | ${tcp_sent} in ${tcp_secs} s | ${tcp_rate} |
| mailgate's lane: Unix socket, no postfwd | ${lane_ms} ms | ${lane_sent} in ${lane_secs} s | ${lane_rate} |
| Postfix's own sendmail (into its queue only) | ${pf_ms} ms | | |
| mailgate's lane with delivery outcomes on (hand-over record) | ${outcomes_ms} ms | | |
| mailgate's lane, relay instance with \`in_flow_delay = 0s\` | | ${flow_sent} in ${flow_secs} s | ${flow_rate} |

- The lane: $(ratio "$lane_ms" "$tcp_ms") x the latency and $(ratio "$lane_rate" "$tcp_rate") x the throughput of the TCP lane
  (goal: <= 0.5 and >= 2); $(ratio "$lane_ms" "$pf_ms") x Postfix's own sendmail.
- CPU by process while the lane ran (perf record -a, share of all samples, >= 1 %): ${profile}.
- Delivery outcomes on: $(ratio "$outcomes_ms" "$lane_ms") x the lane's latency (one more small file per message;
  measured before the lane without it, so the relay's backlog of the earlier runs weighs on it, not on the lane).
MD
