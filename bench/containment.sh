#!/usr/bin/env bash
# How fast a hacked script is held, through the installed chain (install.sh --with-postfix): the
# relay instance hands everything to a receiving server (in this script) that answers 550 to
# every recipient whose local part starts with "dead". Four workloads at once, each in an
# account of its own, at each rate of RATES messages per second for DURATION seconds:
#
#   planted     a script in wp-content/uploads, 60 % dead recipients (a harvested list)
#   bouncing    an old script of the site that starts bouncing, 60 % dead
#   newsletter  2 % dead at the same rate
#   contact     a contact form right after a plugin update touched every file, no dead ones
#
# with the recommended trigger (1 h window, at least 5 bounces and 20 %, hold), `[scripts]` at
# its defaults, and the outcomes followed as the shipped timer and cron line do
# (`queue run --follow`). Per workload it prints: messages relayed before the hold, seconds from
# its first bounce (the receiver's 550) to the hold (the trigger's log line), and false holds
# (held messages of an honest workload). Then the follower's CPU: idle, and per message learnt.
#
#   sudo bench/containment.sh                  # RATES="1 10" DURATION=60
#
# It installs and uninstalls the chain, so it refuses to run over an existing install.
set -euo pipefail
cd "$(dirname "$0")/.."
RATES=${RATES:-"1 10"}
DURATION=${DURATION:-60}
[ "$(id -u)" = 0 ] || { echo "bench/containment.sh: run as root (it installs the chain)" >&2; exit 1; }
if [ -e /etc/mailgate ] || [ -e /etc/postfix-postfwd ] || [ -e /usr/sbin/mailgate ]; then
    echo "bench/containment.sh: mailgate or its chain is installed here; this benchmark installs and removes its own, not over a real one" >&2
    exit 1
fi
for tool in postmulti postfwd python3; do
    command -v "$tool" >/dev/null || { echo "bench/containment.sh: $tool is missing (sudo bench/run.sh installs it)" >&2; exit 1; }
done

BIN=$(pkg/build.sh --quiet)   # the shipped binary: static, release
# Not under /tmp: the sites must look like a web server's (mailgate distrusts /tmp).
work=$(mktemp -d /srv/mailgate-containment.XXXXXX)
chmod 755 "$work"
logdir=/var/log/mailgate-containment-bench
pids=()
group_existed=0; getent group mailgate >/dev/null && group_existed=1
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    postsuper -c /etc/postfix-postfwd -d ALL >/dev/null 2>&1 || true
    postsuper -d ALL >/dev/null 2>&1 || true
    ./install.sh --uninstall >/dev/null 2>&1 || echo "bench/containment.sh: install.sh --uninstall failed" >&2
    rm -rf /etc/mailgate /var/lib/mailgate "$logdir" "$work"
    [ $group_existed = 1 ] || groupdel mailgate 2>/dev/null || true
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
. bench/lib.sh

# The receiving server: 550 for dead*, 250 otherwise; one line per RCPT in receiver.log.
RCV_PORT=$(free_port)
python3 - "$RCV_PORT" "$work/receiver.log" <<'PY' &
import socket, sys, threading, time
port, out = int(sys.argv[1]), open(sys.argv[2], "a", buffering=1)
lock = threading.Lock()
def serve(c):
    f = c.makefile("rb")
    c.sendall(b"220 receiver ESMTP\r\n")
    data = False
    for raw in f:
        line = raw.decode("latin-1").rstrip("\r\n")
        if data:
            if line == ".":
                data = False
                c.sendall(b"250 2.0.0 Ok: queued\r\n")
            continue
        verb = line[:4].upper()
        if verb in ("EHLO", "HELO"):
            c.sendall(b"250 receiver\r\n")
        elif verb == "RCPT":
            rcpt = line.split(":", 1)[1].strip().strip("<>").split(">")[0]
            dead = rcpt.startswith("dead")
            with lock:
                out.write("%.3f %s %s\n" % (time.time(), 550 if dead else 250, rcpt))
            c.sendall(b"550 5.1.1 user unknown\r\n" if dead else b"250 2.1.5 Ok\r\n")
        elif verb == "DATA":
            data = True
            c.sendall(b"354 go ahead\r\n")
        elif verb == "QUIT":
            c.sendall(b"221 bye\r\n")
            break
        else:
            c.sendall(b"250 Ok\r\n")
    c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
pids+=($!)
wait_port "$RCV_PORT"

mkdir -p "$logdir"
./install.sh --binary "$BIN" --with-postfix --relayhost "[127.0.0.1]:$RCV_PORT" --postfix-log "$logdir" \
    --postfwd-hourly 1000000000 --postfwd-daily 1000000000 --postfwd-server 1000000000 >"$work/install.log" 2>&1 ||
    { cat "$work/install.log" >&2; exit 1; }
LANE=/var/spool/postfix-postfwd/mailgate/smtpd
for _ in $(seq 200); do [ -S "$LANE" ] && break; sleep 0.05; done
RELAY_LOG=$logdir/postfix-postfwd.log
# Bounces come back quickly: the relay retries nothing here, and answers at once.
postconf -c /etc/postfix-postfwd -e "smtp_connection_cache_on_demand = yes" >/dev/null
postmulti -i postfix-postfwd -p reload >/dev/null 2>&1 || true

accounts=""
for r in $RATES; do
    for w in planted bouncing newsletter contact; do accounts="$accounts
[accounts.$w-$r]
users = [0]"; done
done
cat >"$work/mailgate.toml" <<TOML
origin = "example.org"
state_dir = "$work/state"
[relay]
socket = "$LANE"
[spool]
account_max_messages = 1000000
account_max_bytes = 100000000000
[log]
file = "$work/mailgate.log"
[alerts]
admin = ""
[outcomes]
relay_log = "$RELAY_LOG"
[defaults]
limits = [ { window = "1h", messages = 100000000 } ]
[defaults.trigger]
window = "1h"
min_failures = 5
percent = 20
action = "hold"
$accounts
TOML
mkdir -p "$work/state"
export MAILGATE_CONFIG=$work/mailgate.toml

# The sites: an honest contact form, a newsletter, an old script, and the planted one.
for r in $RATES; do
    mkdir -p "$work/www/$r/shop/wp-content/uploads/2026/12" "$work/www/$r/news" "$work/www/$r/old" "$work/www/$r/contact"
    echo '<?php' >"$work/www/$r/shop/wp-content/uploads/2026/12/x.php"
    echo '<?php' >"$work/www/$r/old/order.php"
    echo '<?php' >"$work/www/$r/news/send.php"
    echo '<?php' >"$work/www/$r/contact/contact.php"
    touch -d '30 days ago' "$work/www/$r/old/order.php" "$work/www/$r/news/send.php"
    # The plugin update: every file changed a moment ago.
    touch "$work/www/$r/contact/contact.php"
done

"$BIN" queue run --follow "$(( (DURATION + 60) * $(wc -w <<<"$RATES") ))s" >"$work/follow.out" 2>&1 &
follower=$!
pids+=("$follower")
sleep 2
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }
idle_start=$(cpu_of "$follower"); sleep 10; idle_end=$(cpu_of "$follower")

for r in $RATES; do
    python3 - "$BIN" "$work" "$r" "$DURATION" <<'PY'
import json, os, subprocess, sys, threading, time
bin_, work, rate, duration = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
www = f"{work}/www/{rate}"
loads = {
    "planted": (f"{www}/shop/wp-content/uploads/2026/12", "x.php", 60),
    "bouncing": (f"{www}/old", "order.php", 60),
    "newsletter": (f"{www}/news", "send.php", 2),
    "contact": (f"{www}/contact", "contact.php", 0),
}
results = {w: [] for w in loads}
def run(w):
    cwd, script, dead = loads[w]
    account = f"{w}-{rate}"
    t0 = time.time()
    for i in range(rate * duration):
        due = t0 + i / rate
        time.sleep(max(0, due - time.time()))
        # `dead` in every hundred, spread evenly.
        local = "dead" if dead and (i * dead) % 100 < dead else "ok"
        rcpt = f"{local}-{account}-{i}@bench.test"
        msg = f"X-PHP-Originating-Script: 33:{script}\nTo: {rcpt}\nSubject: {w} {i}\n\nhello\n"
        p = subprocess.run([bin_, "--account", account, "-i", rcpt], input=msg.encode(),
                           cwd=cwd, capture_output=True)
        results[w].append((time.time(), p.returncode, b"held" in p.stderr))
threads = [threading.Thread(target=run, args=(w,)) for w in loads]
for t in threads: t.start()
for t in threads: t.join()
json.dump(results, open(f"{work}/results-{rate}.json", "w"))
PY
done
sleep 15
busy_end=$(cpu_of "$follower")

python3 - "$work" "$RATES" "$DURATION" "$idle_start" "$idle_end" "$busy_end" "$(getconf CLK_TCK)" <<'PY'
import json, re, sys
work, rates, duration = sys.argv[1], sys.argv[2].split(), int(sys.argv[3])
idle_ticks, busy_ticks, hz = int(sys.argv[5]) - int(sys.argv[4]), int(sys.argv[6]) - int(sys.argv[5]), int(sys.argv[7])
rcv = [l.split() for l in open(f"{work}/receiver.log")]
log = open(f"{work}/mailgate.log").read().splitlines()
print()
print(f"### Containment through the installed chain (DURATION={duration} s per rate)")
print()
print("| workload | rate | relayed before the hold | first bounce → hold | false holds | delivered |")
print("|---|---|---|---|---|---|")
for rate in rates:
    res = json.load(open(f"{work}/results-{rate}.json"))
    for w, sends in res.items():
        account = f"{w}-{rate}"
        held = [s for s in sends if s[1] == 0 and s[2]]
        first_held = held[0][0] if held else None
        relayed = [s for s in sends if s[1] == 0 and not s[2]]
        before = len([s for s in relayed if first_held is None or s[0] < first_held])
        bounces = [float(t) for t, code, r in rcv if code == "550" and f"-{account}-" in r]
        got = [r for t, code, r in rcv if code == "250" and f"-{account}-" in r]
        hold_line = None
        for i, l in enumerate(log):
            if f"account={account} trigger=hold" in l:
                hold_line = i
                break
        # The hold's time: the first message the sender saw held after the trigger's line.
        delay = "—"
        if bounces and first_held is not None:
            delay = "%.1f s" % max(0.0, first_held - min(bounces))
        honest = w in ("newsletter", "contact")
        print(f"| {w} | {rate}/s | {before if held else str(before) + ' (never held)'} | {delay if w != 'planted' else 'held at its first message' if before == 0 else delay} | {len(held) if honest else '—'} | {len(got)} of {len(relayed)} |")
relayed_total = sum(1 for t, code, r in rcv)
print()
print(f"Follower CPU while idle: {idle_ticks * 1000 // hz} ms over 10 s "
      f"({idle_ticks * 1000 * 360 // hz} ms per hour); while the workloads ran: "
      f"{busy_ticks * 1000 // hz} ms for {relayed_total} recipient outcomes "
      f"({busy_ticks * 1000000 // hz // max(1, relayed_total)} µs each).")
PY
