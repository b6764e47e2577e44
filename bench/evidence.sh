#!/usr/bin/env bash
# The cost of the evidence issue's bounds on the hot path, in counts that do not drift:
# system calls (strace -f -c) and instructions (valgrind --tool=callgrind) of one accepted
# message (relayed to a loopback server that answers "queued as", so the hand-over record is
# written) and one refused message, for two binaries on the same configuration.
#
#   bench/evidence.sh OLD_BINARY [NEW_BINARY]     (NEW defaults to the binary pkg/build.sh builds)
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:?usage: bench/evidence.sh OLD_BINARY [NEW_BINARY]}
new=${2:-$(pkg/build.sh --quiet)}
for tool in strace valgrind python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done
work=$(mktemp -d /tmp/mailgate-evidence.XXXXXX)
server_pid=""
cleanup() { [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# A relay that takes every message and names a queue id, as Postfix does.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 - "$port" <<'PY' &
import socket, sys, threading, itertools
n = itertools.count(1)
def serve(c):
    f = c.makefile("rb")
    c.sendall(b"220 bench ESMTP\r\n")
    for line in f:
        u = line.upper()
        if u.startswith(b"EHLO"):
            c.sendall(b"250-bench\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        elif u.startswith(b"DATA"):
            c.sendall(b"354 go\r\n")
            for l in f:
                if l == b".\r\n":
                    break
            c.sendall(b"250 2.0.0 Ok: queued as BENCH%06d\r\n" % next(n))
        elif u.startswith(b"QUIT"):
            c.sendall(b"221 bye\r\n"); break
        else:
            c.sendall(b"250 ok\r\n")
    c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(64)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
server_pid=$!
sleep 0.5

: >"$work/relay.log"
cat >"$work/mailgate.toml" <<TOML
origin = "example.org"
state_dir = "$work/state"
[relay]
port = $port
trusted_owners = []
[log]
file = "$work/mailgate.log"
[alerts]
admin = ""
[outcomes]
relay_log = "$work/relay.log"
[defaults]
limits = [ { window = "1h", messages = 1000000 } ]
[accounts.refused]
users = ["root"]
limits = [ { window = "1h", messages = 1 } ]
TOML
mkdir -p "$work/state"
msg=$'To: customer@example.net\nSubject: order\nX-PHP-Originating-Script: 33:checkout.php\n\nThank you.\n'

run() { # binary account
    MAILGATE_CONFIG=$work/mailgate.toml MAILGATE_ACCOUNT=$2 "$1" --account "$2" -i customer@example.net <<<"$msg"
}
# The refused account used up its one message.
run "$new" refused || true

syscalls() { # binary account
    MAILGATE_CONFIG="$work/mailgate.toml" strace -f -c -o "$work/strace" "$1" --account "$2" -i customer@example.net <<<"$msg" >/dev/null 2>&1 || true
    awk '/^-+/ {n++} n == 2 && /total/ {print $4}' "$work/strace" | tail -1
}
instructions() { # binary account
    MAILGATE_CONFIG="$work/mailgate.toml" valgrind --tool=callgrind --callgrind-out-file="$work/cg" "$1" --account "$2" -i customer@example.net <<<"$msg" >/dev/null 2>"$work/vg" || true
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$work/vg" | tail -1
}
printf '| path | binary | system calls | instructions |\n|---|---|---|---|\n'
for path in accepted:root refused:refused; do
    for b in old:"$old" new:"$new"; do
        # warm-up, then the counted run
        run "${b#*:}" "${path#*:}" >/dev/null 2>&1 || true
        printf '| %s | %s | %s | %s |\n' "${path%%:*}" "${b%%:*}" \
            "$(syscalls "${b#*:}" "${path#*:}")" "$(instructions "${b#*:}" "${path#*:}")"
    done
done
