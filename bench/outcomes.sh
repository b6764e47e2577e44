#!/usr/bin/env bash
# What learning the delivery outcomes costs one `queue run`: the relay's log read from the
# remembered position, each line parsed, the hand-over records of the messages it names read
# and appended to, per-account statistics and the trigger updated. Synthetic but in Postfix
# 3.7's own line format: per message ten lines (smtpd connect, cleanup, qmgr from=, two smtp
# to= lines (one delivered, one bounced), qmgr removed, four of the primary instance), over
# 100 accounts with 3 scripts each. Each size is measured on a fresh copy of the state.
#
#   bench/outcomes.sh                 # 10,000 / 100,000 / 1,000,000 lines
#   SIZES="100000" bench/outcomes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"10000 100000 1000000"}
RUNS=${RUNS:-5}
command -v hyperfine >/dev/null || { echo "bench/outcomes.sh: hyperfine is missing (apt-get install hyperfine)" >&2; exit 1; }
BIN=$(pkg/build.sh --quiet)   # the shipped binary: static, release
work=$(mktemp -d /tmp/mailgate-outcomes-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo
echo "### Learning outcomes per queue run ($(date -u +%Y-%m-%d), $(nproc) cores)"
echo
echo "| log lines read | messages (records) | queue run, median | per 100,000 lines |"
echo "|---|---|---|---|"
for lines in $SIZES; do
    d="$work/$lines"
    mkdir -p "$d/pristine/delivery"
    python3 - "$d" "$lines" <<'PY'
import json, sys
d, lines = sys.argv[1], int(sys.argv[2])
messages = lines // 10
log = open(f"{d}/relay.log", "w")
for m in range(messages):
    q = "4S%012X" % m
    acct = "site%03d" % (m % 100)
    script = "1%03d:/var/www/%s/%s.php" % (m % 100, acct, ["contact", "news", "cart"][m % 3])
    rec = {"id": "%020X" % m, "account": acct, "uid": 1000 + m % 100, "user": acct,
           "script": script, "cwd": f"/var/www/{acct}", "pool": acct,
           "sender": f"{acct}@example.org", "recipients": ["a@example.net", "b@example.net"],
           "message_id": f"<{m}@web1>", "subject": "order", "size": 4096, "time": 1900000000,
           "handed": 1900000000, "route": "direct", "relay_id": q,
           "reply": f"250 2.0.0 Ok: queued as {q}"}
    open(f"{d}/pristine/delivery/{q}", "w").write(json.dumps(rec) + "\n")
    t = "Dec  3 13:20:01 web1"
    log.write(f"{t} postfix-postfwd/mailgate/smtpd[100]: connect from localhost\n")
    log.write(f"{t} postfix-postfwd/cleanup[101]: {q}: message-id=<{m}@web1>\n")
    log.write(f"{t} postfix-postfwd/qmgr[99]: {q}: from=<{acct}@example.org>, size=4400, nrcpt=2 (queue active)\n")
    log.write(f"{t} postfix-postfwd/smtp[102]: {q}: to=<a@example.net>, relay=mx.example.net[192.0.2.1]:25, delay=0.2, delays=0.01/0.01/0.1/0.08, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 77F1A)\n")
    log.write(f"{t} postfix-postfwd/smtp[102]: {q}: to=<b@example.net>, relay=mx.example.net[192.0.2.1]:25, delay=0.2, delays=0.01/0.01/0.1/0.08, dsn=5.1.1, status=bounced (host mx.example.net[192.0.2.1] said: 550 5.1.1 <b@example.net>: user unknown (in reply to RCPT TO command))\n")
    log.write(f"{t} postfix-postfwd/qmgr[99]: {q}: removed\n")
    for k in range(4):
        log.write(f"{t} postfix/smtp[200]: 9{m:09X}: to=<x@example.net>, relay=127.0.0.1[127.0.0.1]:825, delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status=sent (250 ok)\n")
PY
    cat >"$d/mailgate.toml" <<TOML
state_dir = "$d/state"
[log]
file = "$d/mailgate.log"
[alerts]
admin = ""
[outcomes]
relay_log = "$d/relay.log"
max_read = 1000000000
[defaults.trigger]
action = "notify"
TOML
    hyperfine --style none --runs "$RUNS" --export-json "$d/h.json" \
        --prepare "rm -rf $d/state && cp -a $d/pristine $d/state" \
        "MAILGATE_CONFIG=$d/mailgate.toml MAILGATE_NOW=1900000060 $BIN queue run" >/dev/null
    ms=$(python3 -c "import json; print('%.0f' % (json.load(open('$d/h.json'))['results'][0]['median']*1000))")
    per=$(python3 -c "print('%.0f' % ($ms * 100000 / $lines))")
    printf '| %s | %s | %s ms | %s ms |\n' "$lines" "$((lines / 10))" "$ms" "$per"
    rm -rf "$d"
done
echo
echo "Reproduce: \`bench/outcomes.sh\`. The position is remembered, so a run reads only what was logged since the last"
echo "(a minute's worth); \`[outcomes] max_read\` (64 MiB, about 300,000 lines) bounds one run."
