#!/usr/bin/env bash
# mailgate at a hosting server's size: does one message cost the same with 1, 1,000 and 10,000
# accounts (one accounts.d file each, as a panel writes them), with 10,000 messages of its own
# account queued, with 10,000 of another account deferred? And how long do the admin commands
# take over 10,000 accounts with counters and statistics? Prints a Markdown report (bench/run.sh
# appends it to bench/results.md).
#
#   sudo bench/scale.sh          # RUNS=100 by default
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-100}
[ "$(id -u)" = 0 ] || { echo "bench: run as root (smtp-sink drops to nobody)" >&2; exit 1; }
for tool in hyperfine smtp-sink python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install hyperfine postfix python3)" >&2; exit 1; }
done
BIN=$(pkg/build.sh --quiet)   # the shipped binary: static, release
# shellcheck source=bench/lib.sh
. bench/lib.sh
scratch_dir scale
start_sink
DEAD_PORT=$(free_port)   # nothing listens: every message is queued

python3 - "$work" <<'PY'
import sys
w = sys.argv[1]
line = "Thank you for your order. We will ship it as soon as possible, usually within 24 hours.\n"
for site in (1, 2, 5000, 9999):
    hdr = (f"To: Customer <customer@example.net>\nSubject: Your order\nFrom: Shop <shop@site{site}.example>\n"
           "X-PHP-Originating-Script: 33:checkout.php\n\n")
    open(f"{w}/site{site}.eml", "w").write(hdr + line * (4096 // len(line)))
# Without From: (mailgate adds the account's own sender), for senders of many accounts.
open(f"{w}/plain.eml", "w").write("To: Customer <customer@example.net>\nSubject: Your order\n\n" + line * (4096 // len(line)))
PY

# mkconf NAME ACCOUNTS PORT PER_HOUR: a main file and ACCOUNTS drop-in files, as a panel writes them.
mkconf() {
    local d="$work/$1"
    mkdir -p "$d/state" "$d/accounts.d"
    cat >"$d/mailgate.toml" <<TOML
origin = "example.org"
hostname = "bench.example.org"
state_dir = "$d/state"
[relay]
port = $3
timeout = "2s"
trusted_owners = ["root", "nobody"]
[spool]
account_max_messages = 1000000
account_max_bytes = 100000000000
[log]
file = "$d/mailgate.log"
[alerts]
admin = ""
TOML
    python3 - "$d/accounts.d" "$2" "$4" <<'PY'
import sys
d, n, per_hour = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for i in range(1, n + 1):
    open(f"{d}/site{i}.toml", "w").write(
        f'users = ["web{i}"]\nnotify = ["owner@site{i}.example"]\n'
        f'allowed_senders = ["*@site{i}.example"]\ndefault_sender = "www@site{i}.example"\n'
        f'limits = [ {{ window = "1h", messages = {per_hour} }}, {{ window = "1d", messages = 100000000 }} ]\n')
PY
}
send() { # config account message
    MAILGATE_CONFIG=$work/$1/mailgate.toml "$BIN" --account "$2" -t -i <"$work/$3.eml"
}

rows=""
# Filled by the loop (printf -v acc_$n ...) for each account count.
acc_1="" acc_10000="" ref_1="" ref_10000=""
for n in 1 1000 10000; do
    echo "bench: $n accounts..." >&2
    mkconf "acc$n" "$n" "$SINK_PORT" 100000000
    mkconf "ref$n" "$n" "$SINK_PORT" 1
    send "acc$n" site1 site1 && send "ref$n" site1 site1   # refused account full
    sleep 0.2   # accounts.d/ has been still long enough for its index to be trusted
    send "acc$n" site1 site1 && (send "ref$n" site1 site1 || true)   # index built
    hyperfine -i --style none --warmup 10 --runs "$RUNS" --export-json "$work/acc$n.json" \
        "sh -c 'MAILGATE_CONFIG=$work/acc$n/mailgate.toml $BIN --account site1 -t -i < $work/site1.eml'" >/dev/null
    MAILGATE_CONFIG=$work/ref$n/mailgate.toml hyperfine -N -i --style none --warmup 10 --runs "$RUNS" \
        --export-json "$work/ref$n.json" "$BIN --account site1 -i customer@example.net" "/bin/true" >/dev/null
    read -r acc <<<"$(median_ms "$work/acc$n.json")"
    read -r ref tru <<<"$(median_ms "$work/ref$n.json")"
    printf -v "acc_$n" %s "$acc"; printf -v "ref_$n" %s "$ref"
    rows+="| $n | $acc ms | $ref ms ($(ratio "$ref" "$tru") x /bin/true, $tru ms) |"$'\n'
done

# 8 parallel senders, each its own account, 250 messages each: 8 accounts of 8 vs of 10,000.
parallel() { # config
    local start end
    start=$(date +%s.%N)
    seq 8 | xargs -P 8 -I{} sh -c "for i in \$(seq 250); do MAILGATE_CONFIG=$work/$1/mailgate.toml $BIN --account site\$((({} - 1) * 1111 % $2 + 1)) -i customer@example.net < $work/plain.eml >/dev/null 2>&1 || true; done"
    end=$(date +%s.%N)
    python3 -c "print('%.0f' % (2000 / ($end - $start)))"
}
echo "bench: 8 parallel senders..." >&2
mkconf par8 8 "$SINK_PORT" 100000000
thr_8=$(parallel par8 8)
thr_10000=$(parallel acc10000 10000)

# One message while 10,000 of the same account are queued (relay down), and one message of
# site1 while site2 has 10,000 deferred (its 1h window is full, action defer).
echo "bench: 10,000 queued of the same account..." >&2
mkconf queued 2 "$DEAD_PORT" 100000000
mkconf queued-empty 2 "$DEAD_PORT" 100000000
for _ in $(seq 10000); do send queued site1 site1 2>/dev/null; done
send queued-empty site1 site1 2>/dev/null
hyperfine -i --style none --warmup 5 --runs "$RUNS" --export-json "$work/queued.json" \
    "sh -c 'MAILGATE_CONFIG=$work/queued-empty/mailgate.toml $BIN --account site1 -t -i < $work/site1.eml 2>/dev/null'" \
    "sh -c 'MAILGATE_CONFIG=$work/queued/mailgate.toml $BIN --account site1 -t -i < $work/site1.eml 2>/dev/null'" >/dev/null
read -r q_empty q_full <<<"$(median_ms "$work/queued.json")"
q_count=$(find "$work/queued/state/queue" -mindepth 1 -maxdepth 1 | wc -l)

echo "bench: another account with 10,000 deferred..." >&2
mkconf deferred 2 "$SINK_PORT" 100000000
mkconf deferred-empty 2 "$SINK_PORT" 100000000
sed -i 's/messages = 100000000 }, { window = "1d"/messages = 1, action = "defer" }, { window = "1d"/' "$work/deferred/accounts.d/site2.toml"
echo 'max_deferred = 100000' >>"$work/deferred/accounts.d/site2.toml"
for _ in $(seq 10001); do send deferred site2 site2 2>/dev/null; done
d_count=$(find "$work/deferred/state/defer" -mindepth 1 -maxdepth 1 | wc -l)
hyperfine -i --style none --warmup 5 --runs "$RUNS" --export-json "$work/deferred.json" \
    "sh -c 'MAILGATE_CONFIG=$work/deferred-empty/mailgate.toml $BIN --account site1 -t -i < $work/site1.eml'" \
    "sh -c 'MAILGATE_CONFIG=$work/deferred/mailgate.toml $BIN --account site1 -t -i < $work/site1.eml'" >/dev/null
read -r d_empty d_full <<<"$(median_ms "$work/deferred.json")"

# Admin commands over 10,000 accounts with counters and statistics (acc10000 has sent one
# message per account below), and the domain index: a full build, and the rebuild after a
# panel replaced one file.
echo "bench: admin commands over 10,000 accounts..." >&2
seq 8 | xargs -P 8 -I{} sh -c "for i in \$(seq {} 8 10000); do MAILGATE_CONFIG=$work/acc10000/mailgate.toml $BIN --account site\$i -i customer@example.net < $work/plain.eml >/dev/null 2>&1 || true; done"
admin_ms() { # args...
    local start end
    start=$(date +%s%N)
    MAILGATE_CONFIG=$work/acc10000/mailgate.toml "$BIN" "$@" >/dev/null 2>&1 || true
    end=$(date +%s%N)
    echo $(( (end - start) / 1000000 ))
}
t_status=$(admin_ms status); t_status1=$(admin_ms status site5000); t_top=$(admin_ms top)
t_topall=$(admin_ms top --all); t_metrics=$(admin_ms metrics); t_run=$(admin_ms queue run)
t_check=$(admin_ms check-config)
idx() {
    local start end
    start=$(date +%s%N)
    send acc10000 site9999 site9999 >/dev/null 2>&1
    end=$(date +%s%N)
    echo $(( (end - start) / 1000000 ))
}
rm -f "$work/acc10000/state/domains."*
t_index_full=$(idx)
sleep 1.1
cp "$work/acc10000/accounts.d/site77.toml" "$work/acc10000/accounts.d/.new" && mv "$work/acc10000/accounts.d/.new" "$work/acc10000/accounts.d/site77.toml"
sleep 1.1
t_index_one=$(idx)
t_index_fresh=$(idx)

cat <<MD
#### Scale: 1, 1,000 and 10,000 accounts (accounts.d, one file each), $(date -u +%Y-%m-%d), ${RUNS} runs

| accounts | accepted, 4 KiB (median, with sh) | refused (median, no shell) |
|---|---|---|
${rows}
- With 10,000 accounts against one: accepted $(ratio "$acc_10000" "$acc_1") x, refused $(ratio "$ref_10000" "$ref_1") x (target <= 1.15).
- 8 parallel senders, each its own account, 2,000 messages: ${thr_8} msg/s over 8 accounts, ${thr_10000} msg/s over 8 of 10,000 ($(ratio "$thr_10000" "$thr_8") x; target >= 0.9).
- One message queued (relay down) with ${q_count} of the same account already queued: ${q_full} ms, with an empty queue ${q_empty} ms ($(ratio "$q_full" "$q_empty") x).
- One message of account A while account B has ${d_count} deferred: ${d_full} ms, with none deferred ${d_empty} ms ($(ratio "$d_full" "$d_empty") x).
- Admin commands over 10,000 accounts with counters and statistics: status ${t_status} ms, status ACCOUNT ${t_status1} ms, top ${t_top} ms, top --all ${t_topall} ms, metrics ${t_metrics} ms, queue run ${t_run} ms, check-config ${t_check} ms.
- Domain index at 10,000 accounts, one message that needs it: full build ${t_index_full} ms, after a panel replaced one file ${t_index_one} ms, index fresh ${t_index_fresh} ms.
MD
